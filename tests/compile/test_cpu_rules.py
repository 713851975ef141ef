"""convhub's CPU schedule rules: every conv kernel gets the register-blocked schedule, and the numbers stay right.

Small real conv nets (the shapes that occur in the hub's backbones: stem, 1x1, depthwise 3x3/5x5 with stride 2,
residual add, ReLU6, hardswish) go through torch.export -> Relax -> compile.cpu_pipeline and are compared with PyTorch.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from compile.schedules.cpu_rules import (VectorISA, blocked_depthwise_tile, l1_set_conflicts, pixel_row, static_extent,
                                         tile_choices)


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


def _relax_sized(net, batch: int, size: int, channels: int = 64):
    from compile.tuning import export_relax
    return export_relax(net, (batch, channels, size, size), "dw")


def test_tile_fits_registers_and_divides_the_loops():
    for isa in (VectorISA(8, 16), VectorISA(16, 32), VectorISA(16, 32, acc_target=24), VectorISA(4, 32)):
        for width in (7, 14, 28, 56, 112, 13):
            for ch in (16, 24, 32, 40, 96, 112, 144, 672, 1152):
                if ch % isa.lanes:
                    continue
                tw, tk = tile_choices(width, ch, isa)
                assert width % tw == 0 and (ch // isa.lanes) % tk == 0
                assert tw * tk + tk + 1 <= isa.registers  # accumulators + weights + broadcast: no spill
                if width % 2 == 0 and ch // isa.lanes % 2 == 0:
                    assert tw * tk >= isa.acc_target  # enough independent FMA chains when the shape allows
    # depthwise on channel-blocked input: one vector, at most acc_target columns, dividing the width
    for width, want in ((112, 8), (56, 8), (28, 7), (14, 7), (7, 7)):
        assert blocked_depthwise_tile(width, VectorISA(8, 16)) == (want, 1)
        assert blocked_depthwise_tile(width, VectorISA(16, 32, acc_target=24)) == (want, 1)  # not wider on AVX-512
    # the measured best AVX2 tiles: 4 columns x 2 vectors on wide maps, 2 x 4 on 14-wide, 7 x 1 on 7-wide
    assert tile_choices(56, 144, VectorISA(8, 16)) == (4, 2)
    assert tile_choices(14, 672, VectorISA(8, 16)) == (2, 4)
    assert tile_choices(7, 512, VectorISA(8, 16)) == (7, 1)


@pytest.mark.parametrize("preset", ["x86-64-avx2", "x86-64-avx512"])
def test_every_conv_kernel_is_scheduled_with_parallel_vector_loops(tiny, preset):
    """On AVX-512 the 24- and 40-channel convs (multiples of 8, not of 16) use 8-lane vectors; they once fell
    through every rule there (mobilenet_v3_large batch 8: 180 ms instead of 28)."""
    from compile.cpu_pipeline import schedule_module
    from compile.targets import get_preset
    from tvm import tirx

    mod, _ = _relax(tiny, 1)
    target = get_preset(preset).tvm_target()
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
    # regular convs read weights packed per channel block, packed in transform_params (once, at load)
    assert any("conv_weight_pack" in n for n in names), names
    assert "conv_weight_pack" in sched["transform_params"].script()
    assert "conv_weight_pack" not in sched["main"].script()


@pytest.mark.parametrize("preset", ["x86-64-avx2", "x86-64-avx512"])
def test_depthwise_convs_read_and_write_channel_blocks(tiny, preset):
    """A conv kernel's output that only depthwise or 1x1 convs read as their input, or conv epilogues read as a
    residual, is stored as (N, C/v, H, W, v): written so by its producer, read so by every reader, carried blocked
    by the Relax graph; the model's own inputs and outputs stay as they were. (The numbers are checked end to end
    by test_rules_build_matches_pytorch.)"""
    from compile.cpu_pipeline import schedule_module
    from compile.schedules.cpu_rules import vector_isa
    from compile.targets import get_preset
    from tvm import tirx

    mod, _ = _relax(tiny, 1)
    target = get_preset(preset).tvm_target()
    lanes = vector_isa(target).lanes  # every blocked tensor here has 16, 96 or 144 channels: full vectors
    sched = schedule_module(mod, target)
    prims = {gv.name_hint: f for gv, f in sched.functions_items() if isinstance(f, tirx.PrimFunc)}
    blocked = {n: f for n, f in prims.items() if re.search(r"_blk\d+$", n)}
    sides = {n: (len(f.params[0].shape) == 5, len(f.params[-1].shape) == 5) for n, f in blocked.items()}
    depthwise = [n for n, f in blocked.items() if "group_conv2d_nhwc" in f.script()]
    # the tiny net's two blocks: expand -> depthwise -> project each; block 1 adds the stem's output back
    assert len(depthwise) == 2 and all(sides[n] == (True, True) for n in depthwise), sides
    others = sorted(v for n, v in sides.items() if n not in depthwise)
    # the stem and block 2's expansion write blocks; block 1's expansion reads the stem's blocks and writes its
    # own; the two projections read blocks and write NHWC (s1 and the head's input are not only conv inputs)
    assert others == [(False, True), (False, True), (True, False), (True, False), (True, True)], sides

    def activation_blocks(f) -> int:  # blocked (1, C/v, H, W, v) operands at the output's height and width
        out_hw = [int(d) for d in f.params[-1].shape[1:3]]
        return sum(1 for p in f.params[:-1] if len(p.shape) == 5 and int(p.shape[-1]) == lanes
                   and int(p.shape[0]) == 1 and [int(d) for d in p.shape[2:4]] == out_hw)

    residual = [n for n, f in blocked.items() if sides[n] == (True, False) and activation_blocks(f) == 2]
    assert len(residual) == 1, "block 1's projection reads its input and the residual in blocks"
    for n in depthwise:
        assert int(prims[n].params[0].shape[-1]) == lanes
        assert prims[n].script().count("T.parallel") == 1  # one loop nest: no streaming variant for blocked input
    main = sched["main"].script()
    blocked_calls = re.findall(rf"out_ty=R\.Tensor\(\((?:\d+, ){{4}}{lanes}\)", main)
    assert len(blocked_calls) == 5, "blocked tensors: the stem's output, two expansion and two depthwise outputs"
    assert "def main(x: R.Tensor((1, 3, 56, 56)" in main  # the model's input is untouched


def _scheduled_prims(net, preset: str = "x86-64-avx2", batch: int = 1) -> dict:
    """The scheduled kernels for a fixed target preset (scheduling needs no such CPU), so the structure asserted
    does not depend on the machine the suite runs on. `batch` > 1: a dynamic batch of 1..batch, as artifacts."""
    from compile.cpu_pipeline import schedule_module
    from compile.targets import get_preset
    from tvm import tirx

    mod, _ = _relax(net, batch)
    sched = schedule_module(mod, get_preset(preset).tvm_target())
    return {gv.name_hint: f for gv, f in sched.functions_items() if isinstance(f, tirx.PrimFunc)}


def test_pointwise_convs_tile_pixels_where_rows_are_too_narrow(tiny):
    """A 1x1 stride-1 conv whose row width allows only a poor register tile runs over all pixels of an image as one
    row (a matrix product); the others keep tiles within rows. (Numbers: test_rules_build_matches_pytorch.)"""
    avx2 = VectorISA(8, 16)
    assert pixel_row(14, 14, 112, avx2) == 196  # within a row: 14 columns x 1 vector, all 16 registers live
    assert pixel_row(14, 14, 24, avx2) == 196
    assert pixel_row(14, 14, 672, avx2) is None  # 2 x 4 within a row is as good as any pixel tile
    assert pixel_row(56, 56, 24, avx2) is None
    assert pixel_row(7, 7, 192, avx2) == 52  # 49 pixels have no divisor but 7: padded to 52 for 4 x 2 tiles
    assert pixel_row(1, 14, 112, avx2) is None
    # AVX-512: 112 channels are 7 vectors; 196 pixels allow only 14 x 1 tiles, 198 (1 % more) allow 3 x 7
    avx512 = VectorISA(16, 32, acc_target=24)
    assert pixel_row(14, 14, 112, avx512) == 198 and tile_choices(198, 112, avx512) == (3, 7)
    assert pixel_row(7, 7, 512, avx512) == 52  # 13 x 2 either way: the multiple of 4 is tried first
    for h, k in ((7, 192), (7, 1280), (14, 112), (14, 80), (7, 24)):
        tw, tk = tile_choices(pixel_row(h, h, k, avx2), k, avx2)
        assert tw * tk >= avx2.acc_target and tw * tk + tk + 1 <= avx2.registers
    prims = _scheduled_prims(tiny)
    # the conv's accumulators in a kernel that tiles pixels live in a (1, 1, H*W, C) buffer
    row_kernels = sorted(n for n, f in prims.items() if "conv2d" in n and re.search(
        r"conv2d_nhwc_local = T\.sblock_alloc_buffer\(\(T\.int64\(1\), T\.int64\(1\),", f.script()))
    # of the tiny net's 1x1 convs only the 96 -> 24 projection at 14x14 has too narrow rows
    assert len(row_kernels) == 1, row_kernels
    f = prims[row_kernels[0]]
    # (its input comes from the depthwise conv in channel blocks: 96 channels at 14x14)
    assert [int(d) for d in f.params[0].shape] == [1, 96 // 8, 14, 14, 8]
    assert int(f.params[-1].shape[-1]) == 24
    assert "T.parallel" in f.script() and "T.vectorized" in f.script()


def test_transposes_walk_the_input_in_its_own_order(tiny):
    """NHWC -> NCHW of a stage output in the model: tiles through a local buffer (channel vectors in, pixel vectors
    out; in the output's order every channel re-read the whole input with stride-C gathers)."""
    for preset in ("x86-64-avx2", "x86-64-avx512"):
        prims = _scheduled_prims(tiny, preset)
        to_nchw = [f for f in prims.values() if [int(d) for d in f.params[-1].shape] == [1, 16, 28, 28]
                   and [int(d) for d in f.params[0].shape] == [1, 28, 28, 16]]
        assert len(to_nchw) == 1
        text = to_nchw[0].script()
        assert 'scope="local"' in text and "T.parallel" in text, preset


@pytest.mark.parametrize("shape, tiled", [((2, 112, 112, 16), True), ((1, 7, 7, 2048), True),
                                          ((2, 28, 28, 40), True), ((1, 14, 14, 12), True),
                                          ((2, 29, 29, 24), False), ((1, 8, 8, 6), False)])
def test_nhwc_to_nchw_tiles_match_numpy(shape, tiled):
    """Row tiles (width divisible by 8), fused-pixel tiles (7/14/28 wide) and the untiled fallback (no tile divides
    the pixels or the channels) all transpose exactly, built and run on this machine."""
    import tvm
    from tvm import s_tir, te

    from compile.schedules.cpu_rules import schedule_plain_loops
    from compile.targets import get_preset

    n, h, w, c = shape
    a = te.placeholder(shape, "float32", name="a")
    b = te.compute((n, c, h, w), lambda i, k, y, x: a[i, y, x, k], name="T_transpose")
    sch = s_tir.Schedule(te.create_prim_func([a, b]))
    schedule_plain_loops(sch, sch.get_sblock("T_transpose"), 16)
    assert ('scope="local"' in sch.mod.script()) == tiled
    lib = tvm.tirx.build(sch.mod, target=tvm.target.Target(get_preset("host").tvm_target()))
    x = np.random.RandomState(0).rand(*shape).astype("float32")
    out = tvm.runtime.tensor(np.zeros((n, c, h, w), "float32"))
    lib["main"](tvm.runtime.tensor(x), out)
    np.testing.assert_array_equal(out.numpy(), x.transpose(0, 3, 1, 2))


class _ResNetStem(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU())

    def forward(self, x):
        return self.stem(x)


def test_small_stems_read_the_nchw_input_and_large_ones_keep_the_transpose(tiny):
    """A 3x3 3 -> 16 stem reads the model's NCHW input itself with its padding inlined (no transpose kernel, no pad
    pass: 3.2 -> 0.8 ms for mobilenet_v3_large's stem at batch 8); ResNet's 7x7 3 -> 64 stem ran slower that way
    and keeps both (cpu_pipeline.STEM_MAX_WORK)."""
    def stem_and_transposes(net):
        prims = _scheduled_prims(net)
        # the one conv on 3 channels, whichever layout it reads them in
        stems = [f for n, f in prims.items() if "conv2d" in n and 3 in (int(f.params[0].shape[1]),
                                                                         int(f.params[0].shape[-1]))]
        from_input = [f for f in prims.values() if [int(d) for d in f.params[0].shape] == [1, 3, 56, 56]]
        return stems, from_input

    stems, from_input = stem_and_transposes(tiny)
    assert len(stems) == 1 and len(from_input) == 1 and from_input[0].same_as(stems[0])  # no transpose kernel
    text = stems[0].script()
    assert "pad_temp" not in text and text.count("T.parallel") == 1, "padding inlined: one loop nest"
    assert "for rx in T.unroll(3)" in text.replace("T.int64(3)", "3")

    stems, from_input = stem_and_transposes(_ResNetStem().eval())
    assert len(stems) == 1 and [int(d) for d in stems[0].params[0].shape] == [1, 56, 56, 3]  # NHWC, as before
    assert len(from_input) == 1 and not from_input[0].same_as(stems[0])  # the transpose kernel
    assert [int(d) for d in from_input[0].params[-1].shape] == [1, 56, 56, 3]


def test_small_stems_read_the_nchw_input_at_a_dynamic_batch_too(tiny):
    """Artifacts built with --max-batch N have a symbolic batch in `main`: its stem must read NCHW as well as the
    static batch-1 entry's (it did not, so batch 8 still paid the input transpose: 0.62 ms of mobilenet_v3_large's
    23.6 on a Zen 4 VM)."""
    from tvm import tirx

    prims = _scheduled_prims(tiny, batch=8)
    from_input = [(n, f) for n, f in prims.items()
                  if len(f.params[0].shape) == 4 and [static_extent(d) for d in f.params[0].shape[1:]] == [3, 56, 56]]
    dynamic = [n for n, f in from_input if not isinstance(f.params[0].shape[0], tirx.IntImm)]
    assert len(from_input) == 2 and dynamic, "one kernel per entry reads the input: main (dynamic) and main_batch1"
    assert all("conv2d" in n for n, _ in from_input), f"a transpose reads the input: {[n for n, _ in from_input]}"


def _tile_of(prim) -> tuple[int, int]:
    """(columns, channel vectors) of a scheduled conv kernel's register tile."""
    text = prim.script()
    cols = int(re.search(r"for x_1_init in T.unroll\((?:T.int64\()?(\d+)", text).group(1))
    vecs = int(re.search(r"for k_1_init in T.unroll\((?:T.int64\()?(\d+)", text).group(1))
    return cols, vecs


def test_nchw_stems_keep_their_register_tile_small():
    """A stem reading NCHW keeps its inlined bounds checks and unrolled kernel columns next to the accumulators:
    on AVX-512 its tile aims for STEM_ACC_TARGET accumulators, not 24 (lite0's 3 -> 32 stem: 14 x 2 ran 1.25x
    slower than 7 x 2). Convs on the NHWC path keep the full target."""
    def tile(net):
        prims = _scheduled_prims(net.eval(), "x86-64-avx512")
        (stem,) = [f for n, f in prims.items() if "conv2d" in n and "pack" not in n]
        cols, vecs = _tile_of(stem)
        return [static_extent(d) for d in stem.params[0].shape], cols * vecs

    shape, acc = tile(nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6()))
    assert shape == [1, 3, 56, 56] and 8 <= acc <= 16, (shape, acc)  # 7 x 2 at this width
    shape, acc = tile(_ResNetStem())  # the NHWC path (7x7 on 64 channels): AVX-512's 24-accumulator target
    assert shape == [1, 56, 56, 3] and acc >= 24, (shape, acc)


@pytest.mark.parametrize("c_in, c_out, size, stride, cols", [
    (1024, 512, 14, 1, 7),  # 4 KB per input pixel: 14 columns would be 14 streams in one 8-way L1 set
    (512, 1024, 28, 2, 7),  # 2 KB per pixel at stride 2: the same 4 KB apart
    (256, 512, 14, 1, 14),  # 1 KB apart: 14 columns spread over 4 sets, the 24-accumulator tile stays
])
def test_tiles_keep_their_input_streams_out_of_one_l1_set(c_in, c_out, size, stride, cols):
    """Each reduction step broadcasts one value of every tile column's input pixel; where those pixels lie a multiple
    of 4 KB apart they share an L1 set, and more columns than its 8 ways evict each other on every step (resnet-conv's
    1024 -> 512 1x1 at 14x14: 13.8 ms with 14 x 2 tiles, 7.8 with 7 x 2, batch 8 on a Zen 4 VM)."""
    from compile.cpu_pipeline import schedule_module
    from compile.targets import get_preset
    from compile.tuning import export_relax
    from tvm import tirx

    assert [l1_set_conflicts(14, b) for b in (4096, 8192, 2048, 1024, 4096 + 64)] == [14, 14, 7, 4, 1]
    avx512 = VectorISA(16, 32, acc_target=24)
    assert tile_choices(14, 512, avx512, 2, pixel_bytes=4096) == (7, 2)
    assert tile_choices(14, 512, avx512, 2, pixel_bytes=2048) == (14, 2)
    assert tile_choices(14, 512, avx512, 2) == (14, 2)  # without a stride (channel-blocked input): no cap
    net = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.ReLU()).eval()
    mod, _ = export_relax(net, (1, c_in, size, size), "pw")
    sched = schedule_module(mod, get_preset("x86-64-avx512").tvm_target())
    (conv,) = [f for gv, f in sched.functions_items()
               if isinstance(f, tirx.PrimFunc) and "conv2d" in gv.name_hint and "pack" not in gv.name_hint]
    assert _tile_of(conv) == (cols, 2)


@pytest.mark.parametrize("size", [56, 29])
def test_stems_match_pytorch_on_both_paths(size):
    """Odd input sizes put the padded border on one side only; both stem paths must agree with PyTorch."""
    from compile.targets import get_preset
    from compile.tuning import build

    torch.manual_seed(1)
    for net in (nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6()), _ResNetStem()):
        net = net.eval()
        mod, params = _relax(net, 2, size)
        compiled = build(mod, params, get_preset("host").tvm_target(), schedule="rules")
        x = np.random.RandomState(size).randn(2, 3, size, size).astype("float32")
        got = compiled.run_numpy(x)
        got = got[0] if isinstance(got, list) else got
        with torch.no_grad():
            want = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.mark.parametrize("batch, size", [(1, 56), (3, 56), (3, 28)])
def test_rules_build_matches_pytorch(tiny, batch, size):
    """size 28: the second block's projection runs at 7x7, where 1x1 convs tile 49 pixels padded to 52."""
    from compile.targets import get_preset
    from compile.tuning import build

    mod, params = _relax(tiny, batch, size)
    compiled = build(mod, params, get_preset("host").tvm_target(), schedule="rules")
    x = np.random.RandomState(batch).randn(batch, 3, size, size).astype("float32")
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


def test_batchnorm_constants_fold_in_numpy():
    """BatchNorm statistics are constants in the exported graph (compile.export keeps buffers as constants):
    their arithmetic is evaluated in numpy before legalization, so no kernel and no FoldConstant JIT build is
    spent on them, and the folded graph computes what the original does."""
    from compile._tvm import relax, tvm
    from compile.cpu_pipeline import _fold_constants_numpy

    rng = np.random.RandomState(0)
    var = rng.rand(4).astype("float32") + 0.5
    gamma = rng.rand(4).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            inv = bb.emit(relax.op.rsqrt(relax.op.add(relax.const(var), relax.const(1e-5, "float32"))))
            scale = bb.emit(relax.op.reshape(relax.op.multiply(inv, relax.const(gamma)), (1, 4, 1, 1)))
            shift = bb.emit(relax.op.permute_dims(relax.const(rng.rand(1, 1, 4, 1).astype("float32")), [0, 2, 1, 3]))
            out = bb.emit_output(relax.op.add(relax.op.multiply(x, scale), shift))
        bb.emit_func_output(out)
    mod = bb.get()
    folded = _fold_constants_numpy()(mod)
    text = folded["main"].script()
    for op in ("R.rsqrt", "R.reshape", "R.permute_dims"):
        assert op in mod["main"].script() and op not in text, op
    assert text.count("R.multiply") == 1 and text.count("R.add") == 1  # only the ops that read x remain
    xs = rng.randn(1, 4, 8, 8).astype("float32")
    got = []
    for m in (mod, folded):
        ex = tvm.compile(m, target=tvm.target.Target({"kind": "llvm"}))
        got.append(relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xs)).numpy())
    np.testing.assert_allclose(got[1], got[0], rtol=1e-6, atol=1e-6)


def test_parallel_codegen_splits_kernels_and_matches_one_module(tiny):
    """compile.parallel_build: kernels code-generated as several LLVM modules (imported by the first) run
    exactly as the single-module build does."""
    from compile import parallel_build
    from compile._tvm import relax, tvm
    from compile.cpu_pipeline import cpu_pipeline
    from compile.targets import get_preset

    mod, params = _relax(tiny, 1)
    target = get_preset("host").tvm_target()
    x = np.random.RandomState(7).randn(1, 3, 56, 56).astype("float32")
    outs = []
    for jobs in (1, 3):
        ex = parallel_build.build(mod, target, cpu_pipeline(target), jobs=jobs)
        if jobs == 3:
            lib = ex.mod.imports[0]
            assert len(lib.imports) == 2, "the first kernel module imports the other two"
        vm = relax.VirtualMachine(ex, tvm.cpu())
        dev_params = [tvm.runtime.tensor(p.numpy() if hasattr(p, "numpy") else p) for p in params]
        dev_params = list(vm["transform_params"](dev_params))
        res = vm["main"](tvm.runtime.tensor(x), *dev_params)
        outs.append([r.numpy() for r in res])
    for a, b in zip(*outs):
        np.testing.assert_array_equal(a, b)


def test_split_kernels_balances_and_keeps_every_kernel(tiny):
    from compile.parallel_build import split_kernels
    from compile._tvm import tvm

    mod, _ = _relax(tiny, 1)
    prims = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    if not prims:  # the imported module is high-level Relax: legalize to get kernels
        from compile._tvm import relax
        mod = relax.transform.LegalizeOps()(mod)
        prims = {gv: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}
    tir = tvm.IRModule(prims)
    parts = split_kernels(tir, 3)
    assert len(parts) == 3
    names = sorted(gv.name_hint for p in parts for gv in p.get_global_vars())
    assert names == sorted(gv.name_hint for gv in prims)  # each kernel exactly once
    sizes = [sum(len(f.script()) for f in p.functions.values()) for p in parts]
    assert max(sizes) <= sum(sizes) / 3 + max(len(f.script()) for f in prims.values())
    assert len(split_kernels(tir, 10 ** 6)) == len(prims)  # never an empty module


class _Depthwise(nn.Module):
    """A depthwise conv big enough to stream from memory from batch 2 on (112x112x64: 3.2 MB in, 3.2 MB out)."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.dw = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False),
                                nn.BatchNorm2d(channels), nn.ReLU6())

    def forward(self, x):
        return {"s": self.dw(x)}


def test_depthwise_picks_tiles_by_batch_at_run_time():
    """A dynamic-batch depthwise kernel holds two loop nests (cache-sized tiles, 1-column streaming tiles) and
    picks by the batch it is called with; both give PyTorch's numbers."""
    from compile._tvm import tvm
    from compile.cpu_pipeline import schedule_module
    from compile.schedules.cpu_rules import STREAMING_BYTES
    from compile.targets import get_preset
    from compile.tuning import build

    torch.manual_seed(0)
    net = _Depthwise().eval()
    net.dw[1].running_var.uniform_(0.5, 2.0)
    mod, params = _relax_sized(net, 4, 112)
    target = get_preset("host").tvm_target()
    sched = schedule_module(mod, target)
    kernels = [sched[gv] for gv in sched.get_global_vars() if "conv2d" in gv.name_hint and "pack" not in gv.name_hint]

    def static_batch(f) -> bool:
        return isinstance(f.params[0].shape[0], tvm.tirx.IntImm)

    dw = [f.script() for f in kernels if not static_batch(f)]
    one = [f.script() for f in kernels if static_batch(f)]  # the batch-1 entry's copy (compile.cpu_pipeline)
    per_image = 2 * 112 * 112 * 64 * 4
    threshold = -(-STREAMING_BYTES // (per_image + 4 * 114 * 114 * 64 - 4 * 112 * 112 * 64))
    assert len(dw) == 1 and dw[0].count("T.parallel") == 2, "two loop nests, one per tile shape"
    assert len(one) == 1 and one[0].count("T.parallel") == 1, "batch 1 is below the threshold: cached tiles only"
    assert f">= {threshold}" in dw[0].replace("T.int64(", "").replace(")", ""), "chosen by the batch at run time"
    compiled = build(mod, params, target, schedule="rules")
    for batch in (1, 3):  # below and above the threshold
        x = np.random.RandomState(batch).randn(batch, 64, 112, 112).astype("float32")
        got = compiled.run_numpy(x)
        got = got[0] if isinstance(got, list) else got
        with torch.no_grad():
            want = net(torch.from_numpy(x))["s"].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


def test_depthwise_with_few_channels_never_streams():
    """16 channels give a 1-column streaming tile of only 2 vectors (two dependent FMA chains), while the cached
    tile reads whole pixels already: one loop nest at every batch, however much data the kernel streams."""
    from compile.cpu_pipeline import schedule_module
    from compile.targets import get_preset

    mod, _ = _relax_sized(_Depthwise(16).eval(), 16, 112, channels=16)  # 16 x 1.6 MB: far past STREAMING_BYTES
    sched = schedule_module(mod, get_preset("host").tvm_target())
    dw = [sched[gv].script() for gv in sched.get_global_vars() if "conv2d" in gv.name_hint]
    # main's kernel and its batch-1 entry's copy (compile.cpu_pipeline)
    assert len(dw) == 2 and all(d.count("T.parallel") == 1 for d in dw)
