"""Checkpoints are never unpickled beyond tensors: a malicious pickle is refused and never runs."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

import hub
from hub.checkpoint import load_state_dict
from hub.errors import UnsafeCheckpointError, WeightsError


class _Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_torch_checkpoint_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": _Exploit(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        hub.load("efficientnet-lite0", weights=path)
    assert not marker.exists()


def test_malicious_raw_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises((UnsafeCheckpointError, WeightsError)):
        load_state_dict(path)
    assert not marker.exists()


def test_local_weights_path_and_key_mapping(tmp_path):
    # the shipped lukemelas-keyed checkpoint, given as a local path, maps onto our architecture
    src = hub.pull("efficientnet-lite0").path
    m = hub.load("efficientnet-lite0", weights=src)
    assert m.weights_source == str(src)
    # a safetensors copy with our own key names loads too (identity key map)
    from safetensors.torch import save_file

    from layers.key_maps import lukemelas_efficientnet

    st = tmp_path / "lite0.safetensors"
    sd = {k: v.contiguous() for k, v in lukemelas_efficientnet(load_state_dict(src)).items()}
    save_file(sd, str(st))
    m2 = hub.load("efficientnet-lite0", weights=st)
    x = torch.randn(1, 3, 224, 224)
    for k in m(x):
        assert torch.equal(m(x)[k], m2(x)[k])


def test_wrong_weights_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"foo.weight": torch.zeros(3)}, str(path))
    with pytest.raises(WeightsError, match="do not fit convhub.efficientnet_lite0"):
        hub.load("efficientnet-lite0", weights=path)
    with pytest.raises(WeightsError, match="no such file"):
        hub.load("efficientnet-lite0", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="not a readable"):
        hub.load("efficientnet-lite0", weights=tmp_path / "junk.pth")
