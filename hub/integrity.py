"""Checksums and the trust-on-first-use lock file.

Registry entries with a known sha256 are verified against it. For sources without one, the first
successful download records the file's full sha256 in a lock file; every later load must match it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from filelock import FileLock

from .cache import atomic_write_bytes, cache_dir
from .errors import ChecksumError

LOCK_ENV = "CONVHUB_LOCKFILE"
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Full sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def lockfile_path() -> Path:
    """$CONVHUB_LOCKFILE, or weights.lock.json inside the cache."""
    return Path(os.environ.get(LOCK_ENV) or cache_dir() / "weights.lock.json")


def read_lock() -> dict[str, str]:
    p = lockfile_path()
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ChecksumError(str(p), "a JSON object of source -> sha256", f"unreadable lock file ({exc})") from None
    return dict(data.get("sha256", {}))


def record_lock(source_key: str, digest: str) -> str:
    """Record `digest` for `source_key` unless one is recorded already; return the recorded digest."""
    p = lockfile_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(p) + ".lck"):
        entries = read_lock()
        if source_key in entries:
            return entries[source_key]
        entries[source_key] = digest
        atomic_write_bytes(p, json.dumps({"version": 1, "sha256": dict(sorted(entries.items()))}, indent=2).encode())
        return digest


def expected_sha256(source_key: str, pinned: str | None) -> str | None:
    """The registry pin if any, else what the lock file recorded on first use."""
    return pinned or read_lock().get(source_key)


def verify_file(path: str | os.PathLike, source_key: str, pinned: str | None) -> str:
    """Hash `path`; compare with the pin or the lock entry (recording it on first use). Returns the digest."""
    return check_digest(path, sha256_file(path), source_key, pinned)


def check_digest(path: str | os.PathLike, actual: str, source_key: str, pinned: str | None) -> str:
    """Compare an already computed digest of `path` with the pin or the lock entry (recording it on first use)."""
    expected = expected_sha256(source_key, pinned)
    if expected is None:
        expected = record_lock(source_key, actual)
    if actual != expected:
        raise ChecksumError(str(path), expected, actual, source_key)
    return actual
