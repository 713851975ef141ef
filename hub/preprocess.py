"""The preprocessing that belongs to a model's weights: PIL image -> normalized CHW float tensor."""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2 as T

from .errors import HubError
from .registry import Preprocess

_INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
           "nearest": T.InterpolationMode.NEAREST}


class ImagePreprocess:
    """Resize the short side, center-crop, scale to [0, 1], normalize. Accepts PIL images (any mode)."""

    def __init__(self, spec: Preprocess):
        self.spec = spec
        self._tf = T.Compose([
            T.ToImage(),
            T.Resize(spec.resize, interpolation=_INTERP[spec.interpolation], antialias=True),
            T.CenterCrop(spec.input_size),
            T.ToDtype(torch.float32, scale=True),
            T.Normalize(list(spec.mean), list(spec.std)),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            raise HubError(f"expected a PIL.Image.Image, got {type(image).__name__}; open files with PIL.Image.open(path)")
        return self._tf(image.convert("RGB"))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (3, self.spec.input_size, self.spec.input_size)

    def __repr__(self) -> str:
        s = self.spec
        return (f"ImagePreprocess(resize={s.resize}, crop={s.input_size}, interpolation={s.interpolation}, "
                f"mean={list(s.mean)}, std={list(s.std)})")
