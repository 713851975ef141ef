"""Frozen feature extractors: stage metadata, freezing, selection, pooling, real weights on real photos, export."""
from __future__ import annotations

import pytest
import torch

import hub
from hub.checkpoint import load_state_dict
from hub.errors import InputShapeError, StageError
from hub.samples import sample_photos
from tests.hub.test_registry import REQUIRED


@pytest.fixture(scope="module")
def lite0():
    return hub.load("efficientnet-lite0")


@pytest.fixture(scope="module")
def photos():
    tf = hub.transforms("efficientnet-lite0")
    ph = sample_photos(labelled_only=True)
    return ph, torch.stack([tf(p.open()) for p in ph])


@pytest.mark.parametrize("name", REQUIRED)
def test_feature_info_matches_real_outputs(name):
    m = hub.load(name, pretrained=False)
    size = 64
    with torch.inference_mode():
        out = m(torch.randn(2, 3, size, size))
    assert list(out) == m.feature_info.names == hub.info(name).stage_names
    for info, (stage, t) in zip(m.feature_info, out.items()):
        assert t.shape == (2, info.channels, size // info.stride, size // info.stride), (stage, t.shape)
    assert all(not p.requires_grad for p in m.parameters())
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def test_pooled_lite0_is_its_classifier_input_and_classifies_real_photos(lite0, photos):
    ph, x = photos
    pooled = hub.load("efficientnet-lite0", output="pooled")
    sd = load_state_dict(hub.pull("efficientnet-lite0").path)  # the checkpoint's own classifier (_fc)
    with torch.inference_mode():
        emb = pooled(x)
        feats = lite0(x)
        logits = emb @ sd["_fc.weight"].T + sd["_fc.bias"]
    assert emb.shape == (len(ph), 1280)
    torch.testing.assert_close(emb, feats["stage5"].mean((2, 3)))
    top1 = logits.argmax(1).tolist()
    for p, c in zip(ph, top1):
        assert c in p.expected, f"{p.name}: predicted ImageNet class {c}, expected one of {sorted(p.expected)}"
    assert len(ph) >= 4


def test_batchnorm_and_dropout_stay_frozen_in_train_mode(lite0, photos):
    _, x = photos
    m = hub.load("efficientnet-lite0", output="pooled")
    with torch.no_grad():
        ref = m(x)
    buffers = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    with torch.no_grad():
        again = m(x)
        again2 = m(x[:2])
    torch.testing.assert_close(again, ref)
    torch.testing.assert_close(again2, ref[:2])
    for k, v in m.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    assert not any(p.requires_grad for p in m.parameters())


def test_trainable_stages_unfreezes_only_the_last(photos):
    _, x = photos
    m = hub.load("efficientnet-lite0", trainable_stages=1)
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.split(".")[1] in {"12", "13", "14", "15", "16", "17"} for n in trainable)
    before = {k: v.detach().clone() for k, v in m(x[:2]).items()}
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    m.train()
    m(x[:2])["stage5"].pow(2).mean().backward()
    opt.step()
    after = m(x[:2])
    assert torch.equal(after["stage4"], before["stage4"])  # frozen part untouched
    assert not torch.equal(after["stage5"], before["stage5"])  # trainable part moved
    with pytest.raises(StageError, match="trainable_stages"):
        hub.load("efficientnet-lite0", trainable_stages=9)


def test_stage_selection(lite0, photos):
    _, x = photos
    m = hub.load("efficientnet-lite0", stages=["stage3", "stage2"])
    assert m.feature_info.names == ["stage2", "stage3"]
    assert len(m.body) < len(lite0.body)  # modules after the deepest chosen stage are dropped
    with torch.inference_mode():
        out, full = m(x[:1]), lite0(x[:1])
    assert list(out) == ["stage2", "stage3"]
    torch.testing.assert_close(out["stage3"], full["stage3"])
    with pytest.raises(StageError) as err:
        hub.load("efficientnet-lite0", stages=["stage3", "layer9"])
    assert "layer9" in str(err.value) and "stage1" in str(err.value) and "stage5" in str(err.value)
    assert isinstance(err.value, ValueError)


def test_bad_inputs_get_clear_errors(lite0):
    cases = [
        (torch.zeros(3, 224, 224), "add a batch dimension"),
        (torch.zeros(1, 1, 224, 224), "shape"),
        (torch.zeros(1, 3, 224, 224, dtype=torch.uint8), "dtype"),
        (torch.zeros(1, 3, 8, 8), "spatial size"),
        ([[1.0]], "got list"),
        (torch.zeros(1, 3, 224, 224, dtype=torch.float64), "does not match"),
    ]
    for x, words in cases:
        with pytest.raises(InputShapeError, match=words):
            lite0(x)
    with pytest.raises(ValueError, match="output must be"):
        hub.load("efficientnet-lite0", output="logits")


def test_transforms_follow_the_registry():
    tf = hub.transforms("resnet-conv")
    img = sample_photos()[0].open()
    t = tf(img)
    assert t.shape == (3, 224, 224) and t.dtype == torch.float32 and tf.input_shape == (3, 224, 224)
    assert -3 < float(t.min()) < 0 < float(t.max()) < 3  # normalized, not [0, 255]
    gray = img.convert("L")
    assert tf(gray).shape == (3, 224, 224)
    with pytest.raises(hub.HubError, match="PIL"):
        tf(torch.zeros(3, 10, 10))


def test_dtype_argument():
    m = hub.load("efficientnet-lite0", stages=["stage2"], output="pooled", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    with torch.inference_mode():
        assert m(torch.zeros(1, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64


def test_torch_export_with_dynamic_batch(lite0, photos):
    _, x = photos
    batch = torch.export.Dim("batch", min=1, max=16)
    ep = torch.export.export(lite0, (x[:2],), dynamic_shapes=({0: batch},))
    run = ep.module()
    with torch.inference_mode():
        for n in (1, 3):
            got, ref = run(x[:n]), lite0(x[:n])
            assert list(got) == list(ref)
            for k in ref:
                torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4)
