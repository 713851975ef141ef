"""Resolve a registry entry to a verified local weight file: cache first, then each source in order."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import sources
from .errors import ChecksumError, OfflineError, WeightsError
from .integrity import sha256_file, verify_file
from .registry import ModelEntry


@dataclass(frozen=True)
class ResolvedWeights:
    path: Path
    sha256: str
    source: str  # describe() of the source, or the local path
    key_maps: tuple[str, ...]


def resolve(entry: ModelEntry, *, weights: str | os.PathLike | None = None, progress: bool = True) -> ResolvedWeights:
    """Find (or download) `entry`'s weights and check their sha256."""
    key_maps = tuple(dict.fromkeys(["identity"] + [s.key_map for s in entry.weights]))
    if weights is not None:
        p = Path(os.path.expanduser(weights))
        if not p.is_file():
            raise WeightsError(f"weights={str(weights)!r}: no such file")
        return ResolvedWeights(p, sha256_file(p), str(p), tuple(dict.fromkeys([s.key_map for s in entry.weights] + ["identity"])))
    # Cached copies first, so a machine without network never waits on one.
    for src in entry.weights:
        p = sources.cached_path(src)
        if p is not None:
            digest = verify_file(p, sources.source_key(src), src.sha256)
            return ResolvedWeights(p, digest, src.describe(), (src.key_map,))
    failures: list[str] = []
    for src in entry.weights:
        if isinstance(src, (sources.PackageSource, sources.FileSource)):
            continue  # not cached above means absent; nothing to download
        try:
            p, digest = sources.fetch(src, progress=progress)
            return ResolvedWeights(p, digest, src.describe(), (src.key_map,))
        except ChecksumError:
            raise
        except WeightsError as exc:
            failures.append(str(exc))
    tried = "; ".join(failures) or "no downloadable source"
    raise OfflineError(
        f"weights for {entry.name!r} are not in the cache and could not be downloaded ({tried}). "
        f"On a connected machine run `convhub pull {entry.name}` (and copy the cache, $CONVHUB_CACHE), "
        f"or pass a local file: hub.load({entry.name!r}, weights=PATH)."
    )
