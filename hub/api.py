"""The public API: load, list, info, transforms, pull, verify."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Sequence

from . import sources
from .errors import ChecksumError
from .integrity import verify_file
from .registry import ModelEntry, load_registry
from .weights import ResolvedWeights, resolve

if TYPE_CHECKING:  # torch/torchvision are imported on first use: `import hub` and `convhub list` stay fast
    import torch

    from .preprocess import ImagePreprocess


def load(name: str, *, stages: Sequence[str] | str | None = None, output: Literal["features", "pooled"] = "features",
         pretrained: bool = True, weights: str | os.PathLike | None = None, device: "str | torch.device | None" = None,
         dtype: "torch.dtype | None" = None, trainable_stages: int = 0, progress: bool = True) -> "torch.nn.Module":
    """A frozen multi-stage feature extractor for registry model `name`.

    output="features": forward(x) -> {stage: NCHW tensor}, shallow to deep; "pooled": (N, C) global
    average of the last chosen stage. Weights come from the cache, the registry's sources, or `weights=PATH`.
    """
    from layers.builder import build_frozen_features  # the hub facade sits on top of layers/

    from .checkpoint import load_state_dict

    entry = info(name)
    resolved: ResolvedWeights | None = None
    state = None
    if pretrained or weights is not None:
        resolved = resolve(entry, weights=weights, progress=progress)
        state = load_state_dict(resolved.path)
    module = build_frozen_features(entry, state, stages=stages, output=output, trainable_stages=trainable_stages,
                                   key_maps=resolved.key_maps if resolved else ("identity",))
    module.weights_sha256 = resolved.sha256 if resolved else None
    module.weights_source = resolved.source if resolved else None
    module.preprocess = entry.preprocess
    if device is not None or dtype is not None:
        module.to(device=device, dtype=dtype)
    return module


def list(pattern: str | None = None, tag: str | None = None) -> "list[str]":  # noqa: A001 - the design card's name
    """Registry names (aliases included) matching a glob/substring `pattern` and/or carrying `tag`."""
    return [e.name for e in load_registry().search(pattern, tag)]


def info(name: str) -> ModelEntry:
    """The registry entry for `name` (aliases resolved); UnknownModelError suggests close names."""
    return load_registry().get(name)


def transforms(name: str) -> "ImagePreprocess":
    """Callable: PIL image -> normalized CHW float tensor, as `name`'s weights expect."""
    from .preprocess import ImagePreprocess

    return ImagePreprocess(info(name).preprocess)


def pull(name: str, *, progress: bool = True) -> ResolvedWeights:
    """Download (or find in the cache) and verify `name`'s weights without building the model."""
    return resolve(info(name), progress=progress)


def verify(name: str | None = None) -> "list[tuple[str, str, str]]":
    """Re-hash cached weight files: [(model, source, 'ok' | 'missing' | error message)]."""
    reg = load_registry()
    names = [name] if name else reg.names(include_aliases=False)
    rows = []
    for n in names:
        entry = reg.get(n)
        for src in entry.weights:
            p = sources.cached_path(src)
            if p is None:
                rows.append((entry.name, src.describe(), "missing"))
                continue
            try:
                verify_file(p, sources.source_key(src), src.sha256)
                rows.append((entry.name, src.describe(), "ok"))
            except ChecksumError as exc:
                rows.append((entry.name, src.describe(), f"BAD: expected {exc.expected[:12]}..., got {exc.actual[:12]}..."))
    return rows
