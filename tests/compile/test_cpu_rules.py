"""convhub's CPU schedule rules: every conv kernel gets the register-blocked schedule, and the numbers stay right.

Small real conv nets (the shapes that occur in the hub's backbones: stem, 1x1, depthwise 3x3/5x5 with stride 2,
residual add, ReLU6, hardswish) go through torch.export -> Relax -> compile.cpu_pipeline and are compared with PyTorch.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compile.schedules.cpu_rules import VectorISA, tile_choices


class _Block(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project, residual when shapes allow."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int):
        super().__init__()
        mid = c_in * 6
        self.expand = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(mid, c_out, 1, bias=False), nn.BatchNorm2d(c_out))
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class _TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b1 = _Block(16, 16, 3, 1)
        self.b2 = _Block(16, 24, 5, 2)
        self.head = nn.Sequential(nn.Conv2d(24, 40, 3, 1, 1), nn.Hardswish())  # an epilogue reading the conv twice

    def forward(self, x):
        s1 = self.b1(self.stem(x))
        return {"s1": s1, "s2": self.head(self.b2(s1))}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = _TinyNet().eval()
    for m in net.modules():  # non-trivial BatchNorm statistics, so a wrong epilogue cannot hide
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net


def _relax(net, batch: int, size: int = 56):
    from compile.tuning import export_relax
    return export_relax(net, (batch, 3, size, size), "tiny")


def test_tile_fits_registers_and_divides_the_loops():
    for isa in (VectorISA(8, 16), VectorISA(16, 32), VectorISA(4, 32)):
        for width in (7, 14, 28, 56, 112, 13):
            for ch in (16, 24, 32, 40, 96, 112, 144, 672, 1152):
                if ch % isa.lanes:
                    continue
                tw, tk = tile_choices(width, ch, isa)
                assert width % tw == 0 and (ch // isa.lanes) % tk == 0
                assert tw * tk + tk + 1 <= isa.registers  # accumulators + weights + broadcast: no spill
                if width % 2 == 0 and ch // isa.lanes % 2 == 0:
                    assert tw * tk >= isa.acc_target  # enough independent FMA chains when the shape allows
    # the measured best AVX2 tiles: 4 columns x 2 vectors on wide maps, 2 x 4 on 14-wide, 7 x 1 on 7-wide
    assert tile_choices(56, 144, VectorISA(8, 16)) == (4, 2)
    assert tile_choices(14, 672, VectorISA(8, 16)) == (2, 4)
    assert tile_choices(7, 512, VectorISA(8, 16)) == (7, 1)


def test_every_conv_kernel_is_scheduled_with_parallel_vector_loops(tiny):
    from compile.cpu_pipeline import schedule_module
    from compile.targets import get_preset
    from tvm import tirx

    mod, _ = _relax(tiny, 1)
    target = get_preset("host").tvm_target()
    sched = schedule_module(mod, target)
    convs = {gv.name_hint: f for gv, f in sched.functions_items()
             if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint}
    assert len(convs) >= 7, sorted(convs)  # stem, 2 x (expand, dw, project), head
    for name, f in convs.items():
        text = f.script()
        assert f.attrs.get("tirx.is_scheduled"), f"{name} fell through every rule"
        assert "T.parallel" in text and "T.vectorized" in text, name
        assert 'scope="local"' in text or "scope='local'" in text or '"local"' in text, f"{name}: no register tile"
    # ReLU6 became max/min and fused into the conv kernels: no kernel is a bare clip between layout transposes
    names = [gv.name_hint for gv, _ in sched.functions_items()]
    assert not any("clip" in n for n in names), names
    assert any("maximum" in n and "conv2d" in n for n in names), names
    # regular convs read weights packed per channel block, packed in main_transform_params (once, at load)
    assert any("conv_weight_pack" in n for n in names), names
    assert "conv_weight_pack" in sched["main_transform_params"].script()
    assert "conv_weight_pack" not in sched["main"].script()


@pytest.mark.parametrize("batch", [1, 3])
def test_rules_build_matches_pytorch(tiny, batch):
    from compile.targets import get_preset
    from compile.tuning import build

    mod, params = _relax(tiny, batch)
    compiled = build(mod, params, get_preset("host").tvm_target(), schedule="rules")
    x = np.random.RandomState(batch).randn(batch, 3, 56, 56).astype("float32")
    outs = compiled.run_numpy(x)
    with torch.no_grad():
        ref = tiny(torch.from_numpy(x))
    for got, want in zip(outs, ref.values()):
        want = want.numpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v3_large", "regnet_y_800mf", "densenet121", "resnet18"])
def test_registry_backbones_build_with_rules_and_match(name):
    """Architectures beyond the tiny net: SE + hardswish, group convs, concatenation, plain ResNet blocks."""
    import hub
    from compile.targets import get_preset
    from compile.tuning import build, export_relax

    torch.manual_seed(0)
    net = hub.load(name, pretrained=False, progress=False).eval()  # no network here; speed/numerics need no weights
    mod, params = export_relax(net, (1, 3, 224, 224), name)
    compiled = build(mod, params, get_preset("host").tvm_target(), schedule="rules")
    x = np.random.RandomState(0).rand(1, 3, 224, 224).astype("float32")
    outs = compiled.run_numpy(x)
    with torch.no_grad():
        ref = list(net(torch.from_numpy(x)).values())
    for got, want in zip(outs, ref):
        a, b = got.ravel(), want.numpy().ravel()
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.9999
