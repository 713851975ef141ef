"""convhub's hub: pretrained convolutional backbones as frozen feature layers.

    import hub
    m = hub.load('resnet-conv')            # ResNet-50 trunk, frozen, four stages
    feats = m(hub.transforms('resnet-conv')(img)[None])
"""
from __future__ import annotations

from .api import info, list, load, pull, transforms, verify
from .errors import (ChecksumError, HubError, IncompatibleWeightsError, InputShapeError, OfflineError, RegistryError,
                     StageError, UnknownModelError, UnsafeCheckpointError, WeightsError)
from .registry import ModelEntry, load_registry

__all__ = ["load", "list", "info", "transforms", "pull", "verify", "load_registry", "ModelEntry", "HubError",
           "RegistryError", "UnknownModelError", "WeightsError", "ChecksumError", "UnsafeCheckpointError",
           "OfflineError", "IncompatibleWeightsError", "InputShapeError", "StageError"]
__version__ = "0.1.0"
