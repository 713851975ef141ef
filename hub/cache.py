"""Where convhub keeps downloaded weights, and how it writes there (atomically, under a lock)."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

CACHE_ENV = "CONVHUB_CACHE"


def cache_dir() -> Path:
    """$CONVHUB_CACHE, else $XDG_CACHE_HOME/convhub, else ~/.cache/convhub."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "convhub"


def hf_cache_dir() -> Path:
    """huggingface_hub keeps its own (atomic, locked) cache layout under ours."""
    return cache_dir() / "hf"


def url_cache_path(url: str) -> Path:
    """Stable cache location for a URL: a folder per URL hash, the file keeps its basename."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "weights"
    return cache_dir() / "url" / digest / name


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder and os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
