"""Image bytes -> the model's input tensor: sniff, guard against bombs and truncation, preprocess."""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import InvalidImage, PayloadTooLarge, UnsupportedMediaType

IMAGE_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
ACCEPTED = "JPEG, PNG or WebP"
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated upload must be an error, never half an image


def decode(data: bytes, *, max_pixels: int, label: str = "image") -> Image.Image:
    """Decode JPEG/PNG/WebP bytes to an RGB image; size is checked from the header before decoding."""
    if not data:
        raise InvalidImage(f"{label} is empty; send the bytes of a {ACCEPTED} file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=list(IMAGE_TYPES.values()))
    except UnidentifiedImageError:
        raise InvalidImage(f"{label} is not a {ACCEPTED} image ({len(data)} bytes starting {data[:8]!r})",
                           code="not_an_image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"{label} has too many pixels (decompression bomb guard); at most {max_pixels} "
                              "pixels are accepted", code="image_too_large") from None
    w, h = im.size
    if w * h > max_pixels:
        # a few KB of PNG can declare gigapixels: refuse from the header, before allocating anything
        raise PayloadTooLarge(f"{label} is {w}x{h} = {w * h} pixels; at most {max_pixels} pixels are accepted "
                              "(limits.max_pixels)", code="image_too_large")
    try:
        im.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken streams
        raise InvalidImage(f"{label} could not be decoded as {im.format} ({exc}); the file is truncated or corrupt",
                           code="corrupt_image") from None
    return im.convert("RGB")


def check_content_type(content_type: str | None) -> None:
    """Raw uploads must say which image type they are."""
    base = (content_type or "").split(";")[0].strip().lower()
    if base not in IMAGE_TYPES:
        raise UnsupportedMediaType(f"unsupported Content-Type {base or '(none)'!r}; send one image as "
                                   f"{', '.join(IMAGE_TYPES)}, or several as multipart/form-data")


def to_input(image: Image.Image, preprocess) -> np.ndarray:
    """The model's own preprocessing (hub.transforms) -> CHW float32 array."""
    return preprocess(image).numpy()
