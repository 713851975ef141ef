"""Shared fixtures for the export tests: the default model, real photos, a cosine measure."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hub.api import transforms  # hub.transforms can be shadowed by the submodule of that name once imported
from hub.samples import sample_photos

MODEL = "efficientnet-lite0"


@pytest.fixture(scope="session")
def photo_batch() -> torch.Tensor:
    """All sample photos (scikit-image's), preprocessed as the default model's weights expect."""
    tf = transforms(MODEL)
    photos = sample_photos()
    assert len(photos) >= 3, "scikit-image's sample photos are missing"
    return torch.stack([tf(p.open()) for p in photos])


@pytest.fixture(scope="session")
def features_model() -> torch.nn.Module:
    import hub
    return hub.load(MODEL).eval()


def cosine(a, b) -> float:
    """Cosine similarity of two arrays, flattened per sample; returns the worst sample's."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float((num / den).min())


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory):
    """The sample photos saved as JPEG in a folder: int8 calibration data as a user would give it."""
    d = tmp_path_factory.mktemp("calibration")
    for p in sample_photos():
        p.open().save(d / f"{p.name}.jpg", quality=92)
    return d
