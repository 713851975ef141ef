"""Hand TensorIR schedule for conv2d in NCHW[x]c on x86 (AVX2 / AVX-512), fp32: a single-layer kernel.

Layout: data N, C/c, H+2p, W+2p, c (pre-padded); weight K/k, C/c, R, S, c, k (OIHW[c]i[k]o, packed once);
out N, K/k, H, W, k. Register tile: `tw` output columns x `tk` channel blocks of `lanes` (AVX2: 7 x 2 x 8
-> 14 ymm accumulators, weights as FMA memory operands, one broadcast register). The reduction over input
channels runs inside the tile so the accumulators stay in registers; the lanes axis is vectorized.
"""
from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def conv_nchwc_func(c_in: int, k_out: int, hw: int, ksize: int = 3, lanes: int = 8, relu: bool = True):
    """TE conv2d (stride 1, 'same' padding on pre-padded data) + ReLU as a PrimFunc."""
    from tvm import te, tirx

    pad = ksize // 2
    C, K = c_in // lanes, k_out // lanes
    data = te.placeholder((1, C, hw + 2 * pad, hw + 2 * pad, lanes), name="data")
    weight = te.placeholder((K, C, ksize, ksize, lanes, lanes), name="weight")
    c = te.reduce_axis((0, c_in), name="c")
    r = te.reduce_axis((0, ksize), name="r")
    s = te.reduce_axis((0, ksize), name="s")
    conv = te.compute((1, K, hw, hw, lanes), lambda n, ko, h, w, ki: te.sum(
        data[n, c // lanes, h + r, w + s, c % lanes] * weight[ko, c // lanes, r, s, c % lanes, ki], axis=[c, r, s]),
        name="conv")
    out = te.compute(conv.shape, lambda *i: tirx.max(conv(*i), tirx.const(0, "float32")) if relu else conv(*i),
                     name="relu")
    return te.create_prim_func([data, weight, out])


def schedule_conv_nchwc(sch, tw: int = 7, tk: int = 2, lanes: int = 8):
    """Apply the register-blocked schedule to a Schedule of conv_nchwc_func's PrimFunc (in place)."""
    conv = sch.get_sblock("conv")
    relu = sch.get_sblock("relu")
    n, ko, h, w, ki, c, r, s = sch.get_loops(conv)
    ko_o, ko_i = sch.split(ko, [None, tk])
    w_o, w_i = sch.split(w, [None, tw])
    c_o, c_i = sch.split(c, [None, lanes])
    # per input channel: one broadcast per column, reused by the tk weight vectors (the register budget)
    sch.reorder(n, ko_o, h, w_o, c_o, r, s, c_i, w_i, ko_i, ki)
    acc = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(acc, w_o, preserve_unit_loops=True)
    sch.reverse_compute_inline(relu)
    par = sch.fuse(n, ko_o, h)
    sch.parallel(par)
    sch.vectorize(ki)  # before decompose_reduction: the update block alone no longer counts as a reduction
    # Only the register tile is unrolled: unrolling c_i/s too let LLVM hoist broadcasts across them,
    # and the extra live values spilled the accumulators to the stack (measured: 3-6x slower).
    sch.unroll(ko_i)
    sch.unroll(w_i)
    init = sch.decompose_reduction(conv, c_o)
    # init and write-back of the tile: lanes vectorized, the rest unrolled
    for blk in (init, acc):
        loops = sch.get_loops(blk)
        sch.vectorize(loops[-1])
        for lp in loops[-4:-1]:
            sch.unroll(lp)
    return sch
