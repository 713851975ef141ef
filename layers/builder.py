"""Build a FrozenFeatures module from a registry entry and a state_dict."""
from __future__ import annotations

from typing import Sequence

import torch

from hub.errors import IncompatibleWeightsError, StageError
from hub.registry import ModelEntry

from . import architectures
from .extractor import FeatureInfo, FrozenFeatures, Output, StageInfo
from .frozen import freeze_batchnorm, set_trainable
from .key_maps import KEY_MAPS


def select_stages(entry: ModelEntry, stages: Sequence[str] | str | None) -> list[str]:
    """Validate a stage selection; returns names in shallow-to-deep order."""
    valid = entry.stage_names
    if stages is None:
        return valid
    if isinstance(stages, str):  # "a, b" from a command line
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in valid]
    if bad or not stages:
        raise StageError(f"{entry.name}: invalid stage(s) {bad or '(none given)'}; valid stages are {valid}")
    return [s for s in valid if s in set(stages)]


def load_weights(entry: ModelEntry, model: torch.nn.Module, state_dict: dict, key_maps: Sequence[str]) -> str:
    """Load `state_dict` strictly, trying each key map; returns the one that fit."""
    errors = []
    for km in dict.fromkeys(key_maps):
        mapped = KEY_MAPS[km](state_dict)
        missing = sorted(set(model.state_dict()) - set(mapped))
        unexpected = sorted(set(mapped) - set(model.state_dict()))
        if missing or unexpected:
            errors.append(f"key map {km!r}: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
            continue
        try:
            model.load_state_dict(mapped, strict=True)
        except RuntimeError as exc:
            errors.append(f"key map {km!r}: {str(exc).splitlines()[1] if len(str(exc).splitlines()) > 1 else exc}")
            continue
        return km
    raise IncompatibleWeightsError(f"{entry.name}: the weights do not fit {entry.architecture}: " + "; ".join(errors))


def build_frozen_features(entry: ModelEntry, state_dict: dict | None, *, stages=None, output: Output = "features",
                          trainable_stages: int = 0, key_maps: Sequence[str] = ("identity",)) -> FrozenFeatures:
    """Architecture + weights -> frozen multi-stage feature extractor."""
    if output not in ("features", "pooled"):
        raise ValueError(f"output must be 'features' or 'pooled', got {output!r}")
    chosen = select_stages(entry, stages)
    if not isinstance(trainable_stages, int) or not 0 <= trainable_stages <= len(chosen):
        raise StageError(f"trainable_stages must be an int from 0 to {len(chosen)} (the selected stages), got {trainable_stages!r}")
    model = architectures.build(entry.architecture)
    if state_dict is not None:
        load_weights(entry, model, state_dict, key_maps)
    model.eval()
    freeze_batchnorm(model)
    modules = architectures.trunk_modules(entry.architecture, model)
    names = [n for n, _ in modules]
    specs = {s.name: s for s in entry.stages}
    for s in chosen:
        if specs[s].node not in names:
            raise StageError(f"{entry.name}: stage {s!r} points at module {specs[s].node!r}, not in the trunk {names}")
    taps = {specs[s].node: s for s in chosen}
    info = FeatureInfo(StageInfo(s, specs[s].channels, specs[s].stride) for s in chosen)
    module = FrozenFeatures(modules, taps, info, output, model_name=entry.name, min_size=max(32, info[-1].stride))
    set_trainable([module], False)
    if trainable_stages:
        # unfreeze the modules from just after the (N+1)-th deepest chosen stage's tap to the deepest tap
        tap_idx = [module.node_names.index(specs[s].node) for s in chosen]
        start = tap_idx[-trainable_stages - 1] + 1 if trainable_stages < len(chosen) else 0
        set_trainable(list(module.body)[start:], True)
    return module.eval()
