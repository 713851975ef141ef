"""What a quantized edge file or a bf16 artifact costs: drift against fp32 PyTorch and, where the checkpoint carries
its ImageNet classifier, the top-1 agreement of that classifier between fp32 and the reduced-precision run."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# registry architecture -> (weight key, bias key) of the checkpoint's own classifier over the last stage, pooled
CLASSIFIER_KEYS = {"convhub.efficientnet_lite0": ("_fc.weight", "_fc.bias")}


@dataclass(frozen=True)
class ClassifierHead:
    """The checkpoint's linear ImageNet classifier: logits = mean_hw(last stage) @ weight.T + bias."""

    weight: np.ndarray  # classes x channels
    bias: np.ndarray

    def logits(self, features: np.ndarray) -> np.ndarray:
        pooled = features.mean((2, 3)) if features.ndim == 4 else features
        return pooled.astype(np.float64) @ self.weight.T.astype(np.float64) + self.bias

    def top1(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(1)


def classifier_head(model_name: str) -> ClassifierHead | None:
    """The classifier shipped in `model_name`'s checkpoint, or None when the registry knows none for it."""
    import hub
    from hub.checkpoint import load_state_dict

    entry = hub.info(model_name)
    keys = CLASSIFIER_KEYS.get(entry.architecture)
    if keys is None:
        return None
    state = load_state_dict(hub.pull(entry.name, progress=False).path)
    w, b = (state[k].detach().float().numpy() for k in keys)
    return ClassifierHead(w, b)


def head_input(outputs: dict[str, np.ndarray], module: torch.nn.Module, head: ClassifierHead) -> np.ndarray | None:
    """The output the classifier reads (the model's last stage, pooled or not), or None if not exported."""
    last = module.feature_info[-1]
    key = "pooled" if "pooled" in outputs else last.name
    x = outputs.get(key)
    if x is None or x.shape[1] != head.weight.shape[1]:
        return None
    return x


def top1_agreement(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], module: torch.nn.Module,
                   head: ClassifierHead) -> float | None:
    """Share of images whose top-1 class is the same under `reference` and `got` outputs (None: not applicable)."""
    a, b = head_input(reference, module, head), head_input(got, module, head)
    if a is None or b is None:
        return None
    return float((head.top1(a) == head.top1(b)).mean())


VIEW_CROPS = ((0.0, 0.0, 1.0), (0.0, 0.0, 0.75), (0.25, 0.0, 0.75), (0.0, 0.25, 0.75), (0.25, 0.25, 0.75),
              (0.2, 0.2, 0.6))  # (left, top, side) as fractions of the image: whole, four corners, centre


def photo_views(model_name: str) -> tuple[list[str], np.ndarray]:
    """Every real photo the installed packages ship (hub.samples.all_photos), each as VIEW_CROPS crops and their
    mirror images, preprocessed for `model_name`: (names, float32 (N, 3, S, S)). ~20 photos x 12 views: enough
    images that a top-1 agreement of 99 % means something, all of them real photographs."""
    from PIL import ImageOps

    from hub.api import transforms
    from hub.samples import all_photos
    tf = transforms(model_name)
    names, arrays = [], []
    for photo in all_photos():
        img = photo.open()
        w, h = img.size
        for left, top, side in VIEW_CROPS:
            crop = img.crop((int(left * w), int(top * h), int((left + side) * w), int((top + side) * h)))
            for mirror in (False, True):
                names.append(f"{photo.name}[{left},{top},{side}{',mirror' if mirror else ''}]")
                arrays.append(tf(ImageOps.mirror(crop) if mirror else crop).numpy())
    return names, np.stack(arrays)
