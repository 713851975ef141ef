"""compile.schedules.winograd: 3x3 stride-1 convs as Winograd F(m x m, 3 x 3).

The transform matrices against a direct 1-D correlation; which convs take it; and real builds through
compile.cpu_pipeline (static batch 1 and a dynamic batch) against PyTorch, with map sizes the tiles do not divide,
the weight transform lifted out of `main`, and every Winograd kernel scheduled by our rule.
"""
from __future__ import annotations

import numpy as np
import pytest

from compile._tvm import relax, tvm
from compile.schedules import winograd


@pytest.mark.parametrize("m", [2, 4])
def test_transform_matrices_compute_a_3_tap_correlation(m):
    at, bt, g = winograd.transform_matrices(m)
    rng = np.random.default_rng(m)
    d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
    direct = np.array([d[i:i + 3] @ w for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), direct, rtol=1e-12, atol=1e-12)
    # and in 2-D, as the kernels use them: A^T [(G w G^T) * (B^T d B)] A
    d2, w2 = rng.standard_normal((m + 2, m + 2)), rng.standard_normal((3, 3))
    direct2 = np.array([[(d2[i:i + 3, j:j + 3] * w2).sum() for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(at @ ((g @ w2 @ g.T) * (bt @ d2 @ bt.T)) @ at.T, direct2, rtol=1e-10, atol=1e-10)


def test_unknown_tile_size_is_refused():
    with pytest.raises(ValueError, match="tile size must be one of"):
        winograd.transform_matrices(3)


def _attrs(**kw):
    base = dict(data_layout="NHWC", kernel_layout="HWIO", out_layout="NHWC", groups=1, strides=[1, 1],
                dilation=[1, 1], padding=[1, 1, 1, 1])
    base.update(kw)
    return type("Attrs", (), base)()


@pytest.mark.parametrize("change, weight, taken", [
    ({}, [3, 3, 64, 64], True),
    ({"strides": [2, 2]}, [3, 3, 64, 64], False),
    ({"dilation": [2, 2]}, [3, 3, 64, 64], False),
    ({"groups": 2}, [3, 3, 32, 64], False),
    ({"padding": [0, 0, 0, 0]}, [3, 3, 64, 64], False),
    ({}, [5, 5, 64, 64], False),
    ({}, [3, 3, 3, 64], False),  # 3 input channels: no vector divides them
    ({"data_layout": "NCHW"}, [3, 3, 64, 64], False),
])
def test_which_convs_take_winograd(change, weight, taken):
    isa = winograd.VectorISA(16, 32, 24)
    shape = [tvm.tirx.Var("n", "int64")] + [tvm.tirx.IntImm("int64", d) for d in (28, 28, 64)]
    assert bool(winograd.use_winograd(_attrs(**change), weight, shape, "float32", isa)) == taken
    assert not winograd.use_winograd(_attrs(**change), weight, shape, "bfloat16", isa)


def test_gemm_rows_pad_to_a_full_register_tile():
    isa = winograd.VectorISA(16, 32, 24)
    assert winograd.gemm_rows(49, 128, isa) == 52  # 49 tiles allow only 7 x 2; 52 allow 13 x 2
    assert winograd.gemm_rows(196, 64, isa) == 196  # 14 x 2 already
    assert winograd.gemm_rows(4, 512, isa) == 4  # 6 x 4 tiles would compute 50 % padding
    rows = winograd.gemm_rows(16, 256, isa)
    assert 16 <= rows <= 16 + 3


def _net(torch, nn, channels: int, last_3x3: bool = False):
    class Net(nn.Module):
        """1x1 -> 3x3 (BatchNorm, ReLU, residual) -> 3x3 -> 1x1: Winograd convs between regular kernels; with
        `last_3x3` the model ends on the 3x3 conv (its output transform then feeds the NHWC -> NCHW transpose)."""

        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(channels, channels, 1)
            self.b = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(channels)
            self.c = nn.Conv2d(channels, 2 * channels, 3, 1, 1)
            self.d = nn.Conv2d(2 * channels, channels, 1)

        def forward(self, x):
            y = torch.relu(self.a(x))
            y = torch.relu(self.bn(self.b(y)) + y)
            y = torch.relu(self.c(y))
            return y if last_3x3 else self.d(y)

    torch.manual_seed(channels)
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.mark.parametrize("channels, size, last_3x3", [(32, (10, 10), False), (16, (7, 7), False),
                                                     (16, (6, 9), True)])
def test_winograd_build_matches_pytorch(channels, size, last_3x3):
    """Maps of 10x10, 7x7 and 6x9 (tiles of 4 overhang the edge), static batch 1 and a dynamic batch of 3."""
    import torch
    from torch import nn

    from compile import parallel_build
    from compile.cpu_pipeline import cpu_pipeline, schedule_module
    from compile.targets import get_preset
    from compile.tuning import export_relax

    net = _net(torch, nn, channels, last_3x3)
    target = get_preset("host").tvm_target()
    mod, params = export_relax(net, (3, channels, *size), "wino")  # batch 1..3, and main_batch1
    scheduled = schedule_module(mod, target)
    kernels = {gv.name_hint: f for gv, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    for kind in (winograd.INPUT, winograd.GEMM, winograd.OUTPUT):
        names = [n for n in kernels if kind in n]
        assert names, f"no {kind} kernel in {sorted(kernels)}"
        for n in names:
            assert kernels[n].attrs and kernels[n].attrs.get("tirx.is_scheduled"), f"{n} is not scheduled"
    # ... by the Winograd rule itself, not by a generic fallback (one that took the output transform ahead of the
    # model's NCHW transpose ran 2x slower than the direct conv)
    from compile.cpu_pipeline import scheduling_passes
    with target:
        fused = tvm.transform.Sequential(scheduling_passes(target)[:-1])(mod)
    for gv, f in fused.functions_items():
        if isinstance(f, tvm.tirx.PrimFunc) and any(k in gv.name_hint for k in (winograd.INPUT, winograd.GEMM,
                                                                                   winograd.OUTPUT)):
            assert winograd.winograd.apply(f, target, False) is not None, f"the rule declined {gv.name_hint}"
    main_calls = scheduled["main"].script()
    assert winograd.WEIGHT not in main_calls, "the weight transform runs on every call"
    assert winograd.WEIGHT in scheduled["transform_params"].script()

    ex = parallel_build.build(mod, target, cpu_pipeline(target), jobs=1)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    dev = list(vm["transform_params"]([tvm.runtime.tensor(p.numpy() if hasattr(p, "numpy") else p)
                                        for p in params]))
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, channels, *size)).astype(np.float32)
        entry = "main_batch1" if batch == 1 else "main"
        res = vm[entry](tvm.runtime.tensor(x), *dev)
        out = res.numpy() if hasattr(res, "numpy") else res[0].numpy()
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        scale = np.abs(ref).max()
        np.testing.assert_allclose(out, ref, rtol=0, atol=2e-5 * scale, err_msg=f"batch {batch}")


def test_aarch64_build_with_winograd_matches_pytorch_under_qemu(tmp_path_factory):
    """ResNet's first stage (three 3x3 stride-1 convs at 56x56x64) for a NEON target: 4-lane tiles, verified by
    running the artifact under qemu against PyTorch (random seeded weights)."""
    from .conftest import build, require_aarch64_tools

    require_aarch64_tools()
    res = build(tmp_path_factory, "aarch64-cortex-a53", model="resnet-conv", stages=["layer1"], max_batch=1,
                photos=1, pretrained=False)
    v = res.manifest["verification"]
    assert v["status"] == "passed" and v["method"] == "qemu-aarch64"
    assert v["outputs"]["layer1"]["cosine"] >= 0.9999
    assert winograd.GEMM.encode() in (res.path / "model.so").read_bytes(), "no Winograd kernel in the library"
