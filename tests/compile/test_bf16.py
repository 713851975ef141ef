"""`--precision bf16`: which convs go bf16, how they are scheduled (VDPBF16PS register tiles), that they compute
what PyTorch computes on bf16-rounded inputs and weights, and that a CPU without AVX512_BF16 is refused clearly.

The structure tests schedule for a Zen 4 target and need no such CPU; the numeric ones run where the host has
AVX512_BF16 (Zen 4, Sapphire Rapids) and skip elsewhere.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compile.errors import CompileError
from compile.targets import get_preset, missing_cpu_flags

needs_bf16 = pytest.mark.skipif(bool(missing_cpu_flags(["avx512_bf16"])), reason="this CPU has no AVX512_BF16")


class _Net(nn.Module):
    """1x1 expansion (ReLU6), a 3x3 depthwise conv on the 28x28 map (ReLU6: reads bf16, computes fp32), 3x3 stride-2
    conv to 40 channels (8-lane vectors on AVX-512, ReLU), a linear 1x1 projection (an output of its own), and a 1x1
    conv whose residual add comes before its ReLU (as resnet's)."""

    def __init__(self):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(16, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(64, 64, 3, 1, 1, groups=64, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.down = nn.Sequential(nn.Conv2d(64, 40, 3, 2, 1, bias=False), nn.BatchNorm2d(40), nn.ReLU())
        self.project = nn.Sequential(nn.Conv2d(40, 32, 1, bias=False), nn.BatchNorm2d(32))
        self.residual = nn.Sequential(nn.Conv2d(40, 40, 1, bias=False), nn.BatchNorm2d(40))

    def forward(self, x, emulate_bf16: bool = False):
        def conv(seq, v):  # the bf16 path: inputs and weights rounded to bf16, sums and BatchNorm in fp32
            if not emulate_bf16:
                return seq[0](v)
            c = seq[0]
            w = c.weight if c.groups > 1 else c.weight.bfloat16().float()  # depthwise: bf16 input, fp32 weights
            return nn.functional.conv2d(v.bfloat16().float(), w, None, c.stride, c.padding, groups=c.groups)

        a = self.expand[2](self.expand[1](conv(self.expand, x)))
        a = self.dw[2](self.dw[1](conv(self.dw, a)))
        b = self.down[2](self.down[1](conv(self.down, a)))
        p = self.project(b)  # linear: stays fp32
        return {"project": p, "residual": torch.relu(self.residual[1](conv(self.residual, b)) + b)}


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    n = _Net().eval()
    for m in n.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return n


def _scheduled(net, target, batch: int = 1, stats: dict | None = None) -> dict:
    import tvm
    from tvm import tirx

    from compile.cpu_pipeline import scheduling_passes
    from compile.tuning import export_relax
    mod, _ = export_relax(net, (batch, 16, 28, 28), "bf16net")
    with target:
        sched = tvm.transform.Sequential(scheduling_passes(target, "bf16", stats))(mod)
    return {gv.name_hint: f for gv, f in sched.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_activated_convs_run_bf16_and_linear_ones_stay_fp32(net):
    """expand / down / residual (their outputs reach a ReLU) are bf16 kernels: uint16 input, VDPBF16PS calls on
    16- and 8-lane vectors, the LLVM helper imported; the depthwise conv reads uint16 (channel blocks) and computes
    in fp32; the linear projection is an fp32 kernel."""
    from tvm.target import Target
    stats: dict = {}
    prims = _scheduled(net, Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2}), stats=stats)
    assert stats == {"convs": 5, "bf16_convs": 4}  # what `convhub compile` logs and records in the manifest
    convs = {n: f for n, f in prims.items() if "conv2d" in n and "pack" not in n}
    assert len(convs) == 5, sorted(convs)
    (dw,) = [f for f in convs.values() if "convhub_dpbf16ps" not in f.script() and f.params[0].dtype == "uint16"]
    assert [int(d) for d in dw.params[0].shape] == [1, 64 // 16, 28, 28, 16]  # bf16 bits in channel blocks
    assert "T.reinterpret" in dw.script()  # widened to fp32 as loaded
    convs = {n: f for n, f in convs.items() if f is not dw}
    bf16 = {n: f for n, f in convs.items() if f.params[0].dtype == "uint16"}
    fp32 = [n for n in convs if n not in bf16]
    assert len(bf16) == 3 and len(fp32) == 1, (sorted(bf16), fp32)
    assert int(convs[fp32[0]].params[-1].shape[-1]) == 32  # the projection 40 -> 32
    assert convs[fp32[0]].params[0].dtype == "float32"
    externs = set()
    for f in bf16.values():
        text = f.script()
        assert "pragma_import_llvm" in text and "T.parallel" in text
        externs |= {e for e in ("convhub_dpbf16ps_512", "convhub_dpbf16ps_256") if e in text}
    assert externs == {"convhub_dpbf16ps_512", "convhub_dpbf16ps_256"}  # 64 and 32 channels: 16 lanes; 40: 8
    # the producer of a bf16 conv's input writes bf16 bits in its epilogue (expand's output feeds `down`)
    writers = [n for n, f in prims.items() if f.params[-1].dtype == "uint16"]
    assert writers, "no kernel writes bf16 bits"


def test_fp32_builds_are_untouched(net):
    from tvm.target import Target

    from compile.cpu_pipeline import schedule_module
    from compile.tuning import export_relax
    mod, _ = export_relax(net, (1, 16, 28, 28), "bf16net")
    sched = schedule_module(mod, Target({"kind": "llvm", "mcpu": "znver4", "num-cores": 2}))
    assert "convhub_dpbf16ps" not in sched.script() and "uint16" not in sched.script()


@needs_bf16
@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_build_matches_pytorch_on_bf16_rounded_operands(net, batch):
    """Against PyTorch computing the same convs on bf16-rounded inputs and weights in fp32 (round to nearest even,
    as torch's .bfloat16()): equal up to fp32 summation order; against plain fp32 within bf16's precision."""
    from compile.tuning import build, export_relax
    mod, params = export_relax(net, (batch, 16, 28, 28), "bf16net")
    compiled = build(mod, params, get_preset("host").target, precision="bf16")
    x = np.random.default_rng(1).standard_normal((batch, 16, 28, 28)).astype("float32")
    out = compiled.run_numpy(x)
    with torch.no_grad():
        emulated = net(torch.from_numpy(x), emulate_bf16=True)
        fp32 = net(torch.from_numpy(x))
    for i, name in enumerate(("project", "residual")):  # outputs in the exported dict's order
        got, want, plain = out[i], emulated[name].numpy(), fp32[name].numpy()
        scale = np.abs(want).max()
        # measured on a Zen 4: max 7e-5, mean 5e-8 of the scale from the emulation, against 2e-3 / 2e-4 from fp32 (a
        # later conv's input may round to the other bf16 neighbour where the fp32 sums differ in the last bit)
        assert np.abs(got - want).max() <= 5e-4 * scale, name
        assert np.mean(np.abs(got - want)) <= 1e-6 * scale, name
        cos = float((got * plain).sum() / np.linalg.norm(got) / np.linalg.norm(plain))
        assert 0.999 < cos < 1.0 - 1e-9, (name, cos)  # close to fp32, and visibly not fp32


def test_bf16_is_refused_where_the_target_cannot_run_it(tmp_path):
    from compile.build import compile_model
    with pytest.raises(CompileError, match="AVX512_BF16") as e:
        compile_model("efficientnet-lite0", target="x86-64-avx2", out=tmp_path / "a", precision="bf16")
    assert "x86-64-avx2" in str(e.value) and not (tmp_path / "a").exists()
    with pytest.raises(CompileError, match="--precision must be one of fp32, bf16"):
        compile_model("efficientnet-lite0", out=tmp_path / "b", precision="int4")


@needs_bf16
def test_bf16_is_refused_for_a_model_with_no_qualifying_conv(tmp_path):
    """convnext's pointwise layers are Linear layers and its convs depthwise or the 4x4 stem on 3 channels: a bf16
    artifact would be an fp32 one labelled bf16, so the compile stops and says why."""
    from compile.build import compile_model
    with pytest.raises(CompileError, match="no conv of convnext_tiny qualifies"):
        compile_model("convnext_tiny", out=tmp_path / "c", max_batch=1, pretrained=False, precision="bf16",
                      log=lambda m: None)
    assert not (tmp_path / "c").exists()


@needs_bf16
def test_lite0_bf16_artifact_keeps_the_classifier_agreeing(tmp_path):
    """The real efficientnet-lite0 weights in bf16: verified at cosine >= 0.999 and the checkpoint's classifier
    agrees with fp32 PyTorch on >= 99 % of 240 views of real photos; `convhub verify` re-checks the same bars."""
    from compile.build import compile_model
    from compile.verify import AGREEMENT_MIN_BF16, verify_artifact
    r = compile_model("efficientnet-lite0", out=tmp_path / "bf16", max_batch=4, precision="bf16", log=lambda m: None)
    v = r.manifest["verification"]
    assert r.manifest["precision"] == "bf16" and v["status"] == "passed" and v["threshold"] == 0.999
    # the 15 expansions, the 1280-channel head and the 6 depthwise convs on maps of 28x28 and larger
    assert r.manifest["convs"] == {"convs": 49, "bf16_convs": 22}
    assert v["agreement_images"] >= 200 and v["top1_agreement"] >= AGREEMENT_MIN_BF16
    assert min(o["cosine"] for o in v["outputs"].values()) < 0.99999  # bf16 really ran
    again = verify_artifact(tmp_path / "bf16", log=lambda m: None)
    assert again.ok and again.threshold == 0.999 and again.top1_agreement == v["top1_agreement"]
