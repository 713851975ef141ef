"""Pooling over the spatial axes of a channels-last tensor: global means (SE blocks' squeeze, the final pooled
output) and windowed pools (ResNet's 3x3 stride-2 max pool, its padding inlined).

dlight's CPU `Reduction` rule parallelises over the outputs, one (image, channel) each, and reduces each one as a
scalar loop over the pixels, reading 4 bytes of every pixel at a stride of the whole pixel: mobilenet_v3_large's
SE means took 2.5 ms of its batch-8 run that way. Here each task takes a chunk of channels of one image and walks
the pixels in memory order, adding whole vectors into accumulators held in registers. A windowed pool is the same
loop nest with one output pixel per task (resnet-conv's max pool, 0.8 ms of a batch-1 run under dlight: the model
0.991 / 0.984 at batch 1 / 8).
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .cpu_rules import channel_lanes, static_extent, vector_isa

MAX_CHUNK_VECTORS = 8  # accumulators per task: enough to hide the add latency, few enough for the registers


def channel_chunk(channels: int, lanes: int) -> int | None:
    """Channels per task: the largest multiple of `lanes` dividing `channels`, at most MAX_CHUNK_VECTORS vectors;
    None when `channels` is not a multiple of `lanes`."""
    if channels % lanes:
        return None
    return max(m for m in range(lanes, min(channels, MAX_CHUNK_VECTORS * lanes) + 1, lanes) if channels % m == 0)


def _reduces_middle_axes(block) -> bool:
    """A reduction (sum, max) whose innermost spatial variable indexes the innermost axis of the one tensor it
    reads, with every spatial variable before every reduction variable."""
    kinds = [iv.iter_type for iv in block.iter_vars]
    spatial = [iv.var for iv in block.iter_vars if iv.iter_type == tirx.IterVar.DataPar]
    if not spatial or tirx.IterVar.CommReduce not in kinds or len(block.reads) != 1:
        return False
    first_reduce = kinds.index(tirx.IterVar.CommReduce)
    if any(k != tirx.IterVar.CommReduce for k in kinds[first_reduce:]):
        return False
    last = block.reads[0].region[-1]
    return static_extent(last.extent) == 1 and last.min.same_as(spatial[-1])


@ScheduleRule.from_callable("ChannelsLastPool")
def channels_last_pool(func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
    """A reduction over the middle axes of an (N, ..., C) tensor, plus an elementwise epilogue (the mean's divide);
    a pad in front is inlined."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    # a pad in front (max pooling): inlined, the window's reads go through its condition
    while len(blocks) > 1 and all(iv.iter_type == tirx.IterVar.DataPar for iv in sch.get(blocks[0]).iter_vars):
        try:
            sch.compute_inline(blocks[0])
        except Exception:  # noqa: BLE001 - not a plain producer: not a pattern this rule knows
            return None
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    if not 1 <= len(blocks) <= 2 or not _reduces_middle_axes(sch.get(blocks[0])):
        return None
    try:
        return _schedule(sch, blocks, vector_isa(target).lanes)
    except Exception:  # noqa: BLE001 - TVM raises ScheduleError for an epilogue it cannot inline: dlight's turn
        return None


def _schedule(sch: s_tir.Schedule, blocks: list, lanes: int) -> s_tir.Schedule | None:
    red = blocks[0]
    loops = sch.get_loops(red)
    ivs = sch.get(red).iter_vars
    if len(loops) != len(ivs):
        return None
    spatial = [lp for lp, iv in zip(loops, ivs) if iv.iter_type == tirx.IterVar.DataPar]
    reduction = [lp for lp, iv in zip(loops, ivs) if iv.iter_type == tirx.IterVar.CommReduce]
    channels = static_extent(sch.get(spatial[-1]).extent)
    lanes = channel_lanes(channels, lanes) if channels else 0
    chunk = channel_chunk(channels, lanes) if lanes else None
    if chunk is None:
        return None
    c_o, c_v, c_l = sch.split(spatial[-1], [None, chunk // lanes, lanes])
    sch.reorder(*spatial[:-1], c_o, *reduction, c_v, c_l)
    task = sch.fuse(*spatial[:-1], c_o)
    sch.parallel(task)
    acc = sch.cache_write(red, 0, "local")
    sch.reverse_compute_at(acc, task, preserve_unit_loops=True)
    if len(blocks) == 2:
        sch.reverse_compute_inline(blocks[1])  # the divide, applied as the accumulators are written out
    sch.unroll(c_v)
    sch.vectorize(c_l)
    init = sch.decompose_reduction(red, reduction[0])
    init_v, init_l = sch.get_loops(init)[-2:]
    sch.unroll(init_v)
    sch.vectorize(init_l)
    acc_v, acc_l = sch.split(sch.get_loops(acc)[-1], [None, lanes])  # the chunk's channels
    sch.unroll(acc_v)
    sch.vectorize(acc_l)
    return sch
