"""dlight-style CPU schedule rules: a good schedule for every kernel of a conv net, with no search.

The apache-tvm wheel has no CPU conv schedules (the Relay-era TOPI x86 templates are gone), so an untuned
build runs scalar, single-threaded loops. These rules give each fused PrimFunc a fixed schedule:

- `ConvNHWC`: conv2d / depthwise conv2d in NHWC with HWIO weights (see compile.cpu_pipeline) plus its fused
  epilogue (folded BatchNorm, ReLU/ReLU6/hardswish, residual add). Register tile of `tw` output columns x
  `tk` vectors of output channels held in registers while the whole reduction (kh, kw, cin) runs; the
  epilogue is applied when the tile is written back, so the conv output never goes to memory unfused.
  Depthwise convs whose data streams from memory get 1-column tiles instead; with a dynamic batch the kernel
  holds both tilings and picks by the batch at run time. A depthwise conv whose input is stored in channel blocks
  (compile.schedules.channel_blocks) walks it block by block, one vector per tile; a 1x1 conv reading blocks
  walks its reduction block by block. A 1x1 stride-1 conv whose
  rows are too narrow for a good tile runs over all pixels of an image as one row (`pixel_row`; 7x7 padded to 52).
  Large-weight convs put images outside the channel blocks when a batch of 8 images' input exceeds L2. A stem
  reading the model's NCHW input (compile.cpu_pipeline._stem_reads_nchw) inlines its padding and walks each input
  plane's kernel columns, unrolled. A bf16 conv (compile.schedules.bf16, `--precision bf16`) keeps the same tile and
  tensorizes its innermost step (a vector of output channels x a pair of input channels) into VDPBF16PS.
- `Injective`: transposes, pads, elementwise ops: parallel outer loops, vectorized inner loop; transposes walk the
  input in its own axis order.
- Pooling: compile.schedules.pool_rules (channels-last means and windowed pools); dlight's CPU `Reduction` for the rest.

They are the design space a search would start from; `tile_choices` is where a tuner would plug in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import tvm
from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

CONV_BLOCKS = ("conv2d_nhwc", "group_conv2d_nhwc")
# weights up to this size are re-read from L1/L2 for every column tile (see the loop order in _schedule_conv)
SMALL_WEIGHT_BYTES = 128 * 1024
L2_BYTES = 512 * 1024  # per core on Zen 3 and most current x86/Arm cores
BATCH_FOR_ORDER = 8  # the batch the loop order of large-weight convs is chosen for (artifacts take 1..16)
STREAMING_BYTES = 8 << 20  # a conv's input + output beyond this VM's effective cache (~5-8 MB measured)
DUAL_NEST_MAX_BATCH = 8  # dynamic batch: a streaming nest only for kernels that stream from this batch on
STREAM_MIN_TK = 3  # a 1-column streaming tile needs this many channel vectors to keep the FMA pipes busy
DEPTHWISE_MAX_COLUMNS = 8  # columns of a depthwise tile on channel-blocked input (blocked_depthwise_tile)
PIXEL_PAD_MAX = 0.07  # a 1x1 conv's pixels may be padded by this fraction for a better register tile (pixel_row)
BLOCKED_OUT_MIN_CHANNELS = 256  # blocked outputs this wide take the large-weight loop order (see _schedule_conv)
STEM_ACC_TARGET = 12  # accumulators a stem tile reading NCHW aims for (tile_isa)
TRANSPOSE_CHANNEL_TILES = (16, 8, 4)  # channels per NHWC -> NCHW tile (_tile_nhwc_to_nchw), first that divides
TRANSPOSE_ROW_TILE = 8  # pixels per tile along a row whose width it divides ...
TRANSPOSE_PIXEL_TILES = (7, 14, 16, 8)  # ... else of the fused rows x columns, first that divides
# L1d geometry for tile_choices' set-conflict limit: 64 sets of 64-byte lines (32 KB 8-way on Zen 3/4, 48 KB 12-way
# on Sapphire Rapids: both 64 sets); 8 ways is the smaller of the two
L1_SETS, L1_LINE, L1_WAYS = 64, 64, 8


@dataclass(frozen=True)
class VectorISA:
    """fp32 lanes per vector register, the number of vector registers, and how many accumulators a register tile
    aims for: at least 8 keep both FMA pipes busy (latency 4 x 2 pipes on Zen 3, Intel cores and Cortex-A76); with
    32 registers more of them also cut the loads per FMA (see vector_isa)."""

    lanes: int
    registers: int
    acc_target: int = 8


def vector_isa(target: Target) -> VectorISA:
    """AVX-512: 16 lanes, 32 zmm, tiles of ~24 accumulators; AVX2: 8 lanes, 16 ymm; NEON (aarch64): 4 lanes, 32 q
    registers.

    AVX-512's 24 (measured on a 2-core Sapphire Rapids VM, whole models A/B in one process): resnet-conv batch 1
    0.62 of the build with 8 (16: 0.68), batch 8 the same within 1 % for 20, 24 and 28; mobilenet_v3_large batch 8
    0.89. NEON keeps 8: its speed cannot be measured here (aarch64 builds are only verified under qemu)."""
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "") or "")
    feats = " ".join(str(a) for a in (attrs.get("mattr", None) or []))
    triple = str(attrs.get("mtriple", "") or "")
    if "aarch64" in triple or "arm" in triple:
        return VectorISA(4, 32)
    if "avx512" in feats or mcpu in ("skylake-avx512", "cascadelake", "icelake-server", "sapphirerapids",
                                     "znver4", "znver5", "cooperlake", "tigerlake", "icelake-client", "x86-64-v4"):
        return VectorISA(16, 32, acc_target=24)
    return VectorISA(8, 16)


def channel_lanes(channels: int, lanes: int) -> int:
    """The widest vector of at most `lanes` fp32 lanes (and at least 4) whose width divides `channels`; 0 if none."""
    while lanes >= 4 and channels % lanes:
        lanes //= 2
    return lanes if lanes >= 4 else 0


def isa_for_channels(isa: VectorISA, channels: int) -> VectorISA | None:
    """The vector shape a kernel over `channels` output channels uses; None when no vector of 4+ lanes divides them.

    AVX-512 has 16 lanes, but mobilenet_v3_large's 24-200-channel layers (and lite0's) are multiples of 8 only: those
    kernels use 8-lane (ymm) vectors, which AVX-512VL gives all 32 registers. Declining them (the rules' first
    form) left them unscheduled: mobilenet_v3_large batch 8 took 180 ms on a Sapphire Rapids VM.
    """
    lanes = channel_lanes(channels, isa.lanes)
    if not lanes:
        return None
    return isa if lanes == isa.lanes else replace(isa, lanes=lanes)


def tile_isa(isa: VectorISA, channels_first: bool) -> VectorISA:
    """The ISA a regular conv sizes its register tile for; conv_packing (the weight block) and _schedule_conv
    (the tile) both ask here, so the two agree. A stem reading the NCHW input (`channels_first`) aims for at most
    STEM_ACC_TARGET accumulators: its inlined padding and unrolled kernel columns keep 2 tw + 1 broadcast input
    values and their bounds checks live next to the accumulators; at AVX-512's 24-accumulator target lite0's
    3 -> 32 stem took 14 x 2 tiles and ran 1.25x slower than with 7 x 2 (batch 8, kernel alone on a Zen 4 VM;
    4 x 2 the same, 2 x 2 slower); mobilenet_v3_large's 3 -> 16 stem: 16 x 1 and 14 x 1 equal, 8 x 1 1.1x slower."""
    if not channels_first:
        return isa
    return replace(isa, acc_target=min(isa.acc_target, STEM_ACC_TARGET))


def l1_set_conflicts(tw: int, pixel_bytes: int) -> int:
    """The most of `tw` input pixels `pixel_bytes` apart whose same-offset values fall into one L1 set."""
    sets = [(i * pixel_bytes // L1_LINE) % L1_SETS for i in range(tw)]
    return max(sets.count(s) for s in sets)


def tile_choices(width: int, out_channels: int, isa: VectorISA, tk: int | None = None,
                 pixel_bytes: int | None = None) -> tuple[int, int]:
    """(tw output columns, tk channel vectors) of the register tile.

    The tile must fit the register file with its operands (tw*tk accumulators + tk weight vectors + one
    broadcast): one spilled accumulator put a store/load on its FMA chain and cost 30-40 % (measured,
    14 vs 8 accumulators on a 28x28x128 3x3 conv: 62 vs 94 GFLOP/s). Past `acc_target` accumulators more
    gives nothing, so the smallest such tile wins, then tk closest to 2 (one full 64-byte weight line per
    input channel with AVX2). tw divides the width and tk the channel vectors: no loop tails.

    `pixel_bytes` (an NHWC input: bytes between the input pixels that neighbouring output columns read) caps tw so
    that at most L1_WAYS - 1 of the tile's broadcast streams share an L1 set. Each reduction step reads one value
    of every tile column's input pixel; at 1024 channels (4 KB per pixel, or 512 at stride 2) all 14 columns of a
    14 x 2 tile map to one 8-way set and evict each other on every step: resnet-conv's 1024 -> 512 1x1 at 14x14,
    batch 8, kernel alone on a Zen 4 VM, 13.8 ms with 14 x 2 and 7.8 ms with 7 x 2 (ORT's whole module 8.5 ms).
    """
    vecs = out_channels // isa.lanes
    best, best_key = (1, 1), None
    for k in ([tk] if tk else range(1, vecs + 1)):
        if vecs % k:
            continue
        for tw in range(1, min(width, 16) + 1):
            acc = tw * k
            if width % tw or acc + k + 1 > isa.registers:
                continue
            if pixel_bytes and l1_set_conflicts(tw, pixel_bytes) >= L1_WAYS:
                continue
            key = (min(acc, isa.acc_target), -acc, -abs(k - 2))
            if best_key is None or key > best_key:
                best, best_key = (tw, k), key
    return best


def depthwise_tile(out_channels: int, isa: VectorISA) -> tuple[int, int]:
    """Depthwise conv streaming from memory: (1 output column, tk channel vectors), tk the largest divisor of
    the channel vectors up to acc_target."""
    vecs = out_channels // isa.lanes
    return 1, max(d for d in range(1, min(vecs, isa.acc_target) + 1) if vecs % d == 0)


def blocked_depthwise_tile(width: int, isa: VectorISA) -> tuple[int, int]:
    """Depthwise conv on channel-blocked input: (tw columns, 1 vector), tw the largest divisor of the width up to
    DEPTHWISE_MAX_COLUMNS. Wider tiles (tile_choices allows 14 accumulators at 14- and 28-wide maps) spill once the
    unrolled kernel columns keep their input vectors live: on AVX2 lite0 batch 1 0.973, mobilenet_v3_large 0.979 with
    this cap; on AVX-512 (32 registers, acc_target 24) the cap still pays: lite0 batch 8 0.970 / 0.978 against 1.000 /
    0.996 uncapped, mobilenet_v3_large batch 1 0.986-0.994 (A/B, one process)."""
    return max(d for d in range(1, min(width, DEPTHWISE_MAX_COLUMNS) + 1) if width % d == 0), 1


def pixel_row(height: int, width: int, out_channels: int, isa: VectorISA) -> int | None:
    """How many pixels a 1x1 stride-1 conv should tile as one row per image, or None to tile within rows.

    Such a conv is a matrix product over pixels. Tiles within a row must divide the width: at 14-wide maps with
    80-112 output channels that left 14 columns x 1 vector (16 live registers) where all 196 pixels allow 4 x 2
    (lite0's 14x14 projections went from 1.8-1.9x ORT's time to ~1.1x). A 7x7 map has no good divisor at all
    (7 x 1: 7 accumulators, 8 loads per 7 FMAs): its 49 pixels are padded to 52, the 3 extra ones reading the
    last pixel again and never written (4 x 2 tiles: 1.2-1.3x faster kernels, 6 % more work). Where rows give a
    tile as good, rows stay (pixel rows cost index arithmetic; 56x56 layers were slower with them). Any padding up to
    PIXEL_PAD_MAX is considered: with AVX-512, 112 output channels are 7 vectors, and 196 pixels allow only 14 x 1
    tiles where 198 allow 3 x 7."""
    if height <= 1:
        return None

    def quality(w: int) -> tuple[int, int]:
        tw, tk = tile_choices(w, out_channels, isa)
        return min(tw * tk, isa.acc_target), -tw * tk

    pixels, rows = height * width, quality(width)
    candidates = [pixels]
    if rows[0] < isa.acc_target:
        # padded: to a multiple of 4 first (the measured 7x7 -> 52), then the fewest pixels up to PIXEL_PAD_MAX
        to4 = -(-pixels // 4) * 4
        candidates += [to4] + [p for p in range(pixels + 1, pixels + max(3, int(pixels * PIXEL_PAD_MAX)) + 1) if p != to4]
    best = max(candidates, key=quality)  # the first of the best: max keeps the earliest among equals
    return best if quality(best) > rows else None


def conv_block_name(func: tirx.PrimFunc) -> str | None:
    """The name of the one conv block (CONV_BLOCKS) in a fused kernel; None when it has none or several."""
    sch = s_tir.Schedule(func)
    convs = [n for n in (sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root")))
             if n in CONV_BLOCKS]
    return convs[0] if len(convs) == 1 else None


def static_extent(extent) -> int | None:
    """The int value of a loop extent or shape dimension, or None when it is symbolic."""
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def static_shape(shape) -> list[int] | None:
    """The int dimensions of a TIR buffer shape or a Relax shape (ShapeExpr), or None when any is symbolic or the
    shape is unknown."""
    if shape is None:
        return None
    dims = [static_extent(d) for d in getattr(shape, "values", shape)]
    return None if None in dims else dims


def _extent(sch: s_tir.Schedule, loop) -> int | None:
    return static_extent(sch.get(loop).extent)


def _channels_first(data: tirx.Buffer, in_channels: int | None) -> bool:
    """Whether a conv reads `data` (its activation input, padded or not) as NCHW: axis 1 holds the input channels
    and the last axis does not (a conv writing NHWC from the model's NCHW input, see conv_packing)."""
    return (len(data.shape) == 4 and in_channels is not None and static_extent(data.shape[1]) == in_channels
            and static_extent(data.shape[3]) != in_channels)


def _pixel_bytes(data: tirx.Buffer, out_width: int, kernel_width: int | None) -> int | None:
    """Bytes between the NHWC input pixels that neighbouring output columns of a conv read (channels x 4 x the
    stride, the stride taken from the input's and the output's widths); None when a dimension is symbolic."""
    in_width, channels = static_extent(data.shape[2]), static_extent(data.shape[3])
    if in_width is None or channels is None or kernel_width is None:
        return None
    stride = max(1, (in_width - kernel_width) // (out_width - 1)) if out_width > 1 else 1
    return channels * data.dtype.bits // 8 * stride


def _is_copy(sch: s_tir.Schedule, block) -> bool:
    """A block that only copies (a pad with zero padding): inlining it costs nothing."""
    body = sch.get(block).body
    return isinstance(body, tirx.BufferStore) and type(body.value).__name__ in ("BufferLoad", "TensorLoad")


def _read_order(sch: s_tir.Schedule, block) -> list[int] | None:
    """For a block that only copies one buffer with its axes permuted (a transpose): the input axis each of its
    loops walks; None for anything else."""
    blk = sch.get(block)
    if not _is_copy(sch, block) or len(sch.get_loops(block)) != len(blk.iter_vars):
        return None
    index = list(blk.body.value.indices)
    pos = []
    for iv in blk.iter_vars:
        hits = [i for i, e in enumerate(index) if e.same_as(iv.var)]
        if len(hits) != 1:
            return None
        pos.append(hits[0])
    return pos


def _tile_nhwc_to_nchw(sch: s_tir.Schedule, block) -> bool:
    """NHWC -> NCHW (the stage outputs) in tiles: each tile's channels x pixels are loaded as whole channel vectors
    into a local buffer and stored as whole pixel vectors of each channel, so LLVM transposes in registers. Where
    the width takes 8-pixel tiles, tiles walk a row; otherwise (7, 14, 28 wide) rows and columns are fused into one
    pixel axis. False (and nothing changed) for anything else, or where no tile divides the channels or pixels.

    Timed alone on a Zen 4 VM against the loop order of schedule_plain_loops (stride-C gathers), batch 8:
    112x112x16 0.36 -> 0.18 ms, 56x56x24 0.24 -> 0.11, 28x28x40 0.09 -> 0.05, 7x7x960 0.20 -> 0.07; batch 1
    56x56x256 0.35 -> 0.10, 7x7x2048 0.08 -> 0.03."""
    loops = sch.get_loops(block)
    if len(loops) != 4 or _read_order(sch, block) != [0, 3, 1, 2]:
        return False
    n, c, h, w = loops
    channels, height, width = _extent(sch, c), _extent(sch, h), _extent(sch, w)
    if None in (channels, height, width):
        return False
    tc = next((t for t in TRANSPOSE_CHANNEL_TILES if channels % t == 0), None)
    rows = width % TRANSPOSE_ROW_TILE == 0
    tw = TRANSPOSE_ROW_TILE if rows else next((t for t in TRANSPOSE_PIXEL_TILES if height * width % t == 0), None)
    if tc is None or tw is None:
        return False
    c_o, c_i = sch.split(c, [None, tc])
    if rows:
        w_o, w_i = sch.split(w, [None, tw])
        sch.reorder(n, h, c_o, w_o, c_i, w_i)
        outer, tile_loop = [n, h], w_o
    else:
        # channel tiles outside: at a few pixels per image, pixel tiles outside left too few parallel chunks and
        # each wrote into every channel plane (1x7x7x2048: 0.08 -> 0.03 ms; 8x28x28x512: 0.73x the time)
        p_o, w_i = sch.split(sch.fuse(h, w), [None, tw])
        sch.reorder(n, c_o, p_o, c_i, w_i)
        outer, tile_loop = [n, c_o], p_o
    cache = sch.cache_read(block, 0, "local")
    sch.compute_at(cache, tile_loop)
    cache_loops = sch.get_loops(cache)
    sch.vectorize(cache_loops[-1])
    sch.unroll(cache_loops[-2])
    sch.unroll(c_i)
    sch.vectorize(w_i)
    sch.parallel(sch.fuse(*outer))
    return True


def schedule_plain_loops(sch: s_tir.Schedule, block, vector_lanes: int) -> None:
    """Parallel over everything but the innermost loop, which is vectorized when it divides evenly (NHWC -> NCHW
    transposes go in register tiles instead, _tile_nhwc_to_nchw).

    A transpose keeps its output's innermost loop (contiguous writes) and walks the other loops in the input's
    axis order, so each stretch of work reads one small contiguous piece of the input: NHWC -> NCHW of a
    112x112x16 map in the output's order read the whole input once per channel (0.29 ms at batch 1)."""
    loops = sch.get_loops(block)
    if not loops or _tile_nhwc_to_nchw(sch, block):
        return
    order = _read_order(sch, block)
    if order is not None and len(loops) > 2:
        outer = sorted(range(len(loops) - 1), key=lambda i: order[i])
        sch.reorder(*[loops[i] for i in outer], loops[-1])
        loops = [loops[i] for i in outer] + [loops[-1]]
    inner = loops[-1]
    ext = _extent(sch, inner)
    # 8 lanes where the target's 16 do not divide (AVX-512 at 24-200 channels); no narrower: a 4-lane transpose
    # is gathers, and the AVX2 schedules were measured without them
    lanes = channel_lanes(ext, vector_lanes) if ext is not None else 0
    if lanes >= min(8, vector_lanes):
        outer_i, inner = sch.split(inner, [None, lanes])
        loops = [*loops[:-1], outer_i]
        sch.vectorize(inner)
    else:
        loops = loops[:-1]
    if loops:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


@ScheduleRule.from_callable("ConvNHWC")
def conv_nhwc(func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
    """Register-blocked NHWC conv2d (regular, grouped, depthwise) with its epilogue fused into the write-back.

    An epilogue that cannot be inlined into the write-back (one that reads the conv output twice, such as
    hardswish) runs per tile right after it, while the tile is in L1; failing that, as loops of its own.
    """
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    try:
        stream_from = _depthwise_streaming_batch(func, vector_isa(target))
    except Exception:  # noqa: BLE001 - a function the schedule cannot parse is declined below as well
        stream_from = None
    for fuse_epilogue in ("inline", "tile", "separate"):
        try:
            return _schedule_by_batch(func, target, fuse_epilogue, stream_from)
        except Exception:  # noqa: BLE001 - TVM raises ScheduleError or InternalError; try the plainer variant
            continue
    return None


def _schedule_by_batch(func: tirx.PrimFunc, target: Target, fuse_epilogue: str,
                       stream_from: tuple | None) -> s_tir.Schedule | None:
    """Depthwise convs whose input + output exceed STREAMING_BYTES stream from memory, where 1-column tiles
    over more channels are ~2x faster (lite0's 56x56x144 depthwise at batch 8: 6.5 -> 3.3 ms) but ~25 %
    slower on cached data. A static batch picks one; a dynamic batch gets both, chosen at run time by the
    batch size (one `if` around two loop nests)."""
    if stream_from is None:
        return _schedule_conv(func, target, fuse_epilogue)
    batch, threshold = stream_from
    if isinstance(batch, int):
        return _schedule_conv(func, target, fuse_epilogue, streaming=batch >= threshold)
    if threshold <= 1 or threshold > DUAL_NEST_MAX_BATCH:
        # one nest: every batch streams, or (a second nest costs LLVM time) only batches few artifacts serve do
        return _schedule_conv(func, target, fuse_epilogue, streaming=threshold <= 1)
    cached = _schedule_conv(func, target, fuse_epilogue, streaming=False)
    streaming = _schedule_conv(func, target, fuse_epilogue, streaming=True)
    if cached is None or streaming is None:
        return cached
    return s_tir.Schedule(_branch_on(batch >= threshold, streaming.mod["main"], cached.mod["main"]))


def _image_bytes(buf) -> int:
    """fp32 bytes of one image (all but the batch axis) of a buffer; 0 when a size is symbolic."""
    return 4 * math.prod(static_extent(d) or 0 for d in buf.shape[1:])


def _depthwise_streaming_batch(func: tirx.PrimFunc, isa: VectorISA):
    """(batch extent, the batch from which input + output exceed STREAMING_BYTES) for a depthwise conv with
    static image sizes; None for anything else, and for convs with too few channels for a streaming tile: at 16
    channels its 1 x 2 vectors are two dependent FMA chains, and the cached 4 x 2 tile reads whole pixels
    anyway (mobilenet_v3_large's 112x112x16 depthwise at batch 8: 3.6 ms against ORT's 0.9; the model 0.97)."""
    sch = s_tir.Schedule(func)
    convs = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint == "group_conv2d_nhwc"]
    if len(convs) != 1:
        return None
    if len(func.params[0].shape) == 5:  # input in channel blocks: contiguous planes, no streaming tiles
        return None
    block = sch.get(convs[0])
    bufs = [r.source for r in block.reads if len(r.source.shape) == 4][:1] + [w.source for w in block.writes]
    per_image = [_image_bytes(b) for b in bufs]
    if len(bufs) != 2 or not all(per_image):
        return None
    out_ch = static_extent(bufs[1].shape[-1])
    isa = isa_for_channels(isa, out_ch) if out_ch is not None else None
    if isa is None or depthwise_tile(out_ch, isa)[1] < STREAM_MIN_TK:
        return None
    batch = static_extent(bufs[0].shape[0])
    return (bufs[0].shape[0] if batch is None else batch), -(-STREAMING_BYTES // sum(per_image))


def _branch_on(cond, then_func: tirx.PrimFunc, else_func: tirx.PrimFunc) -> tirx.PrimFunc:
    """One PrimFunc running `then_func`'s loop nest when `cond` holds, else `else_func`'s. Both are schedules of
    the same function, so they share its parameters and buffers; only their root blocks' bodies differ."""
    from tvm.s_tir import stmt as sstmt
    a, b = else_func.body.block, then_func.body.block
    root = sstmt.SBlock(a.iter_vars, a.reads, a.writes, a.name_hint, tirx.IfThenElse(cond, b.body, a.body), a.init,
                        list(a.alloc_buffers) + list(b.alloc_buffers), a.match_buffers, a.annotations)
    merged = else_func.with_body(sstmt.SBlockRealize(else_func.body.iter_values, else_func.body.predicate, root))
    # both nests define the same loop and block variables, and TIR wants one definition each: printing and
    # parsing the function back gives every definition a variable of its own
    return tvm.script.from_source(merged.script())


def _schedule_conv(func: tirx.PrimFunc, target: Target, fuse_epilogue: str,
                   streaming: bool = False) -> s_tir.Schedule | None:
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    convs = [i for i, n in enumerate(names) if n in CONV_BLOCKS]
    if len(convs) != 1:
        return None
    ci = convs[0]
    conv = blocks[ci]
    loops = sch.get_loops(conv)
    # 8 loops: a bf16 conv (compile.schedules.bf16), its input channels reduced in pairs by the innermost loop
    if len(loops) not in (7, 8):
        return None
    pairs = len(loops) == 8
    width, out_ch = _extent(sch, loops[2]), _extent(sch, loops[3])
    isa = isa_for_channels(vector_isa(target), out_ch) if out_ch is not None else None
    if width is None or isa is None:
        return None
    # Producers (the pad): copies are inlined, real padding is one parallel vectorized pass.
    # Depthwise: the zero padding is inlined (a separate pad pass doubled its memory traffic: 2-4x slower,
    # measured); regular convs keep the pass (inlined, the broadcast loads get a branch each: 1.4x slower).
    depthwise = names[ci] == "group_conv2d_nhwc"
    # a 1x1 conv legalized over the pixels of an image as one row (compile.schedules.conv_packing)
    one_row = not depthwise and _extent(sch, loops[1]) == 1
    # a stem reading the model's NCHW input (compile.cpu_pipeline._stem_reads_nchw): padding inlined, like depthwise
    channels_first = (not depthwise and not pairs
                      and _channels_first(sch.get(conv).reads[0].source, _extent(sch, loops[6])))
    for b in blocks[:ci]:
        if _is_copy(sch, b) or depthwise or channels_first:
            sch.compute_inline(b)
        else:
            schedule_plain_loops(sch, b, isa.lanes)
    # Epilogue chain: inline all but the last into their consumers; the last goes into the tile write-back.
    epilogue = blocks[ci + 1:]
    if fuse_epilogue != "separate":
        for b in epilogue[:-1]:
            sch.compute_inline(b)
    else:
        for b in epilogue:
            schedule_plain_loops(sch, b, isa.lanes)
    # 5-D reads: an input stored in channel blocks of one vector (compile.schedules.channel_blocks), or a regular
    # conv's packed weights (compile.conv_packing), whose block fixes tk
    reads = [r.source for r in sch.get(conv).reads]
    data = reads[0]  # the activation input (the compute's first operand)
    blocked_input = len(data.shape) == 5
    blocked_output = len(func.params[-1].shape) == 5  # written for the next kernel (channel_blocks)
    packed = [b for b in reads[1:] if len(b.shape) in (5, 6)]
    if blocked_input and depthwise:
        tw, tk = blocked_depthwise_tile(width, isa)
    elif depthwise and streaming:
        tw, tk = depthwise_tile(out_ch, isa)
    else:
        tk = static_extent(packed[0].shape[4]) // isa.lanes if packed else None
        pixel_bytes = None if blocked_input or channels_first else _pixel_bytes(data, width, _extent(sch, loops[5]))
        tw, tk = tile_choices(width, out_ch, tile_isa(isa, channels_first), tk, pixel_bytes)
    n, h, w, f, ry, rx, rc = loops[:7]
    f_o, f_k, f_l = sch.split(f, [None, tk, isa.lanes])
    w_o, w_i = sch.split(w, [None, tw])
    # the register tile's loops; a bf16 conv's channel pair goes inside the vector lanes (one VDPBF16PS)
    tile = [w_i, f_k, f_l, loops[7]] if pairs else [w_i, f_k, f_l]
    # Loop order by weight size. Small weights (depthwise, early 1x1 convs): rows, column tiles, then every
    # channel block, so a tile reads and writes whole pixels (contiguous memory) while all the weights stay in
    # L1/L2. In the VM run this was 1.5-4x faster on the 56x56-112x112 layers than channel blocks outside rows,
    # which walked the whole activation once per block at a 64-byte-per-pixel stride (lite0 batch 1, TVM/ORT
    # 1.54 -> 1.25 in benchmarks/tvm_cpu.py with the depthwise unroll below). Large weights keep channel blocks
    # outside rows: one block's weights then stay in L2 for every row (rows outside re-streamed all weights per
    # row: 7x7x512 3x3 went from 12 to 30 GFLOP/s that way).
    weight_bytes = 4 * out_ch * _extent(sch, ry) * _extent(sch, rx) * _extent(sch, rc)  # bf16: rc is C / 2
    # A wide output in channel blocks is written block by block even with small weights: a tile walking every block
    # of a few pixels writes into 32+ planes at once (resnet-conv's 56x56 64 -> 256 convs: 2.5-2.8x ORT that way;
    # block by block resnet-conv batch 8 0.952 / 0.964, batch 1 0.994, mobilenet_v3_large batch 8 0.984).
    small_weights = weight_bytes <= SMALL_WEIGHT_BYTES and not (blocked_output and out_ch >= BLOCKED_OUT_MIN_CHANNELS)
    red = [rc]
    if blocked_input and not depthwise:
        # a channel-blocked input: the reduction walks one block's channels (contiguous), then the next plane
        red = list(sch.split(rc, [None, static_extent(data.shape[-1])]))
    if blocked_input and depthwise:
        # one channel block's rows are contiguous planes: walk a row of one block, then the next block
        sch.reorder(n, h, f_o, w_o, ry, rx, *red, *tile)
        tile_loop = w_o
    elif small_weights and channels_first:
        # input channels are planes apart in NCHW: each kernel row walks one plane's columns (unrolled below)
        sch.reorder(n, h, w_o, f_o, ry, rc, rx, *tile)
        tile_loop = f_o
    elif small_weights:
        sch.reorder(n, h, w_o, f_o, ry, rx, *red, *tile)
        tile_loop = f_o
    elif _image_bytes(data) * BATCH_FOR_ORDER > L2_BYTES:
        # images outside the channel blocks: each image's input is read once per block from L2 and the weights
        # once per image. (Blocks outside the batch re-read a batch's input from L3 for every block: lite0's
        # 7x7 and 14x14 1x1 convs at batch 8 took 1.4-1.7x ORT's time. Splitting the batch into chunks that fit
        # L2 needs a tail at a dynamic batch, and the tail's predicate blew the register tile up to the batch.)
        sch.reorder(n, f_o, h, w_o, ry, rx, *red, *tile)
        tile_loop = w_o
    else:
        # batch inside the channel blocks: a block's weights are read once for all images of a batch
        sch.reorder(f_o, n, h, w_o, ry, rx, *red, *tile)
        tile_loop = w_o
    acc = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(acc, tile_loop, preserve_unit_loops=True)
    if epilogue and fuse_epilogue == "inline":
        sch.reverse_compute_inline(epilogue[-1])
    elif epilogue and fuse_epilogue == "tile":
        sch.reverse_compute_at(epilogue[-1], tile_loop, preserve_unit_loops=True)
        _, e_v = sch.split(sch.get_loops(epilogue[-1])[-1], [None, isa.lanes])
        sch.vectorize(e_v)
    # one row of pixels: too few parallel chunks unless the tile loop joins them
    parallel = sch.fuse(*sch.get_loops(conv)[:3 + (one_row and tile_loop == w_o)])
    sch.parallel(parallel)
    if not pairs:
        sch.vectorize(f_l)
    # Only the register tile is unrolled: unrolling the reduction too lets LLVM hoist broadcasts across it,
    # and the extra live values spill the accumulators (measured 3-6x slower in the NCHWc experiment).
    sch.unroll(f_k)
    sch.unroll(w_i)
    if channels_first:
        # stride-2 kernel columns of neighbouring outputs share input values: unrolled, LLVM loads each once
        sch.unroll(rx)
    if depthwise:
        # Depthwise has no cin reduction to amortise loads over: with the kernel columns unrolled too, LLVM can
        # reuse each input vector for the neighbouring output columns of the tile (stride 1: tw + 2 loads
        # per kernel row instead of 3 tw). 10-20 % on lite0's depthwise layers in the VM run; unrolling the kernel
        # rows as well made LLVM take over 15 minutes on lite0 and was abandoned.
        sch.unroll(rx)
    init = sch.decompose_reduction(conv, ry)
    # the tile's own loops: the init's w, f_k, f_l; the write-back's n, h, w, f (unit n, h)
    unroll_tile_loops(sch, ((init, 3), (acc, 4)), isa.lanes)
    if pairs:
        from .bf16 import LLVM_IR, dot_intrin
        sch.tensorize(f_l, dot_intrin(isa.lanes))
        sch.annotate(parallel, "pragma_import_llvm", LLVM_IR)  # the intrinsic's LLVM helper, linked once per kernel
    return sch


def unroll_tile_loops(sch: s_tir.Schedule, blocks, lanes: int) -> None:
    """For (block, n) pairs of a register tile's init and write-back: the innermost loop vectorized by `lanes`, the
    n loops around it unrolled."""
    for blk, own in blocks:
        _, v = sch.split(sch.get_loops(blk)[-1], [None, lanes])
        sch.vectorize(v)
        for lp in sch.get_loops(blk)[-own - 1:-1]:
            sch.unroll(lp)


@ScheduleRule.from_callable("Injective")
def injective(func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
    """Spatial-only functions (transposes, pads, elementwise): inline chains, parallel + vectorize outputs."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    for b in blocks:
        if any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(b).iter_vars):
            return None
    for b in blocks[:-1]:
        try:
            sch.compute_inline(b)
        except Exception:  # noqa: BLE001 - a block that cannot be inlined simply stays a loop nest of its own
            schedule_plain_loops(sch, b, vector_isa(target).lanes)
    schedule_plain_loops(sch, blocks[-1], vector_isa(target).lanes)
    return sch
