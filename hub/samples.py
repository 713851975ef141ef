"""Real photos for checks and demos, read from scikit-image's installed data folder (no download).

Each comes with the ImageNet classes a good classifier should rank first: used to prove that
weights and key mappings are right, and as calibration/verification inputs for compiled artifacts.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .errors import HubError


@dataclass(frozen=True)
class Photo:
    name: str
    path: Path
    expected: frozenset[int]  # acceptable ImageNet-1k class ids
    description: str

    def open(self) -> Image.Image:
        return Image.open(self.path).convert("RGB")


# ImageNet ids: 281-285 domestic cats; 967 espresso, 968 cup, 504 coffee mug; 872 tripod, 759 reflex camera;
# 657 missile, 744 projectile, 812 space shuttle; 603 horse cart, 339 sorrel (horse)
_PHOTOS = [
    ("chelsea", "chelsea.png", {281, 282, 283, 284, 285}, "a tabby cat"),
    ("coffee", "coffee.png", {967, 968, 504}, "a cup of coffee on a saucer"),
    ("camera", "camera.png", {872, 759, 732}, "a man with a camera on a tripod (grayscale)"),
    ("rocket", "rocket.jpg", {657, 744, 812}, "a rocket on a launch pad"),
    ("astronaut", "astronaut.png", set(), "a portrait of an astronaut (no single class)"),
    ("motorcycle", "motorcycle_left.png", {670, 665}, "a motorcycle (stereo left view)"),
]


# the other photographs in scikit-image's data folder (no single ImageNet class): inputs for agreement checks
_UNLABELLED = ["brick.png", "cell.png", "clock_motion.png", "coins.png", "grass.png", "gravel.png",
               "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png", "motorcycle_right.png",
               "page.png", "retina.jpg"]


def data_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise HubError("the sample photos come from scikit-image: `pip install scikit-image`")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def sample_photos(*, labelled_only: bool = False) -> list[Photo]:
    """The photos that ship with scikit-image, with the ImageNet classes each should get."""
    base = data_dir()
    photos = [Photo(n, base / f, frozenset(e), d) for n, f, e, d in _PHOTOS if (base / f).is_file()]
    return [p for p in photos if p.expected] if labelled_only else photos


def all_photos() -> list[Photo]:
    """Every real photograph the installed packages ship: scikit-image's (labelled ones first) and matplotlib's
    sample portrait when matplotlib is installed. For measuring agreement between two runs of a model, where no
    labels are needed."""
    base = data_dir()
    photos = sample_photos() + [Photo(Path(f).stem, base / f, frozenset(), "scikit-image sample photo")
                                for f in _UNLABELLED if (base / f).is_file()]
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        hopper = Path(list(spec.submodule_search_locations)[0]) / "mpl-data" / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            photos.append(Photo("grace_hopper", hopper, frozenset(), "a portrait (matplotlib sample data)"))
    return photos
