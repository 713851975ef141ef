"""Winograd F(m x m, 3 x 3) for 3x3 stride-1 convs: the same result from 2.25x (m = 2) or 4x (m = 4) fewer multiplies.

A 3x3 conv over an (m + 2) x (m + 2) input tile gives an m x m output tile. Winograd's minimal filtering
(Lavin & Gray 2015) computes it as A^T [(G g G^T) * (B^T d B)] A: both the tile d and the filter g are taken to an
(m + 2)^2-point transform domain, where the conv is one elementwise product per point, summed over the input
channels. Summed over channels, each of the (m + 2)^2 points is a matrix product (tiles x C) @ (C x K), so the
conv becomes three kernels:

1. `winograd_input`: each input tile (zero padding applied on the way) to V[point, n, tile, C] = B^T d B;
2. `winograd_gemm`: M[point] = V[point] @ U[point] for every point, U = G g G^T the weights' transform, packed per
   channel block like a regular conv's weights (compile.schedules.conv_packing) and computed once, when an artifact
   loads (it depends on the weights only: LiftTransformParams moves it to `transform_params`);
3. `winograd_output`: Y = A^T M A per tile, cut to the output size, with the conv's epilogue (folded BatchNorm,
   ReLU, residual add) fused into the write.

The transforms are written out as sums of their non-zero terms (their matrices are mostly zeros and small integers), selected by
the transform point; unrolled over the points, each tile's input (or M) vectors are loaded once into registers.
Numerics: fp32 throughout; the transforms' rounding makes results differ from the direct conv by ~1e-6 (m = 2)
to ~1e-5 (m = 4) relative, far inside compile.verify's cosine bar. Taken by every fp32 3x3 stride-1 conv that
`use_winograd` accepts (ResNet's 3x3 convs: a third of resnet-conv's time at batch 8 before, docs/performance.md).
"""
from __future__ import annotations

import math

import numpy as np
from tvm import s_tir, te, tirx
from tvm.s_tir.dlight.base import ScheduleRule
from tvm.target import Target

from .cpu_rules import (VectorISA, isa_for_channels, schedule_plain_loops, static_extent, tile_choices,
                        unroll_tile_loops, vector_isa)

INPUT, GEMM, OUTPUT, WEIGHT = "winograd_input", "winograd_gemm", "winograd_output", "winograd_weight"
INPUT_TILE = "winograd_tile"  # the padded input tiles the input transform reads (kept in registers)
TILE = 4  # m: output tile side (F(4x4, 3x3)); 2 is F(2x2, 3x3)
ROW_PAD_MAX = 0.15  # a point's tile rows may be padded by this fraction for a better GEMM register tile

# (A^T, B^T, G) for r = 3 and interpolation points 0, -1, 1 (m = 2) or 0, -1, 1, -2, 2 (m = 4), as in Lavin & Gray
_MATRICES = {
    2: ([[1, 1, 1, 0], [0, 1, -1, -1]],
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
    4: ([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
}


def transform_matrices(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, B^T, G) of F(m, 3) as float64 arrays: shapes (m, m+2), (m+2, m+2), (m+2, 3)."""
    if m not in _MATRICES:
        raise ValueError(f"Winograd tile size must be one of {sorted(_MATRICES)}, got {m}")
    return tuple(np.array(x, dtype=np.float64) for x in _MATRICES[m])


def tiles(height: int, width: int, m: int) -> tuple[int, int]:
    """Tiles per column and per row of an output map."""
    return -(-height // m), -(-width // m)


def gemm_rows(tile_count: int, out_channels: int, isa: VectorISA) -> int:
    """Tile rows per image in V and M: `tile_count` padded (by at most ROW_PAD_MAX) to the count whose GEMM register
    tile does the most useful work, as compile.schedules.cpu_rules.pixel_row does for 1x1 convs (49 tiles allow only
    7 x 2 = 14 accumulators, 52 allow 13 x 2; 4 tiles stay 4: 6 would allow 6 x 4 but half the rows would be padding)."""
    def quality(rows: int) -> tuple[float, int]:
        # accumulators (up to the target) per row computed, counting only the rows that are real tiles
        tw, tk = tile_choices(rows, out_channels, isa)
        return min(tw * tk, isa.acc_target) * tile_count / rows, -rows
    pad = max(3, int(tile_count * ROW_PAD_MAX))
    return max(range(tile_count, tile_count + pad + 1), key=quality)


def use_winograd(attrs, weight_shape, out_shape, dtype: str, isa: VectorISA) -> int:
    """The tile size m for a conv2d call (NHWC / HWIO), or 0 for the direct conv: a 3x3, stride-1, dilation-1,
    ungrouped fp32 conv with padding 1, vector-divisible channels and a static map size.

    Taken at every batch: the transformed weights are 4x the direct conv's, but even ResNet's 7x7x512 layer at
    batch 1 (4 tiles per image, 37.7 MB of transformed weights) ran faster this way (a 1x1 -> 3x3 -> 1x1 block,
    Zen 4 VM, A/B in one process: 1.31 -> 1.13 ms; 14x14x256 batch 1 1.34 -> 0.77 ms). The choice must not depend
    on the batch anyway: a dynamic-batch `main` and its batch-1 copy share one weight transform
    (LiftTransformParams(shared_transform=True) lifts only what both compute)."""
    if (attrs.data_layout != "NHWC" or attrs.kernel_layout != "HWIO" or attrs.out_layout != "NHWC"
            or int(attrs.groups) != 1 or dtype != "float32" or weight_shape is None or weight_shape[:2] != [3, 3]
            or any(int(v) != 1 for v in attrs.strides) or any(int(v) != 1 for v in attrs.dilation)
            or [int(v) for v in attrs.padding] != [1, 1, 1, 1]):
        return 0
    c, k = weight_shape[2:]
    if isa_for_channels(isa, c) is None or isa_for_channels(isa, k) is None:
        return 0
    if static_extent(out_shape[1]) is None or static_extent(out_shape[2]) is None:
        return 0
    return TILE


def _sum_terms(terms) -> tirx.PrimExpr:
    """sum of coef * value over (coef, value) pairs, with +-1 as additions / subtractions."""
    out = None
    for coef, value in terms:
        if coef == 1:
            t, neg = value, False
        elif coef == -1:
            t, neg = value, True
        else:
            t, neg = value * tirx.const(abs(coef), value.dtype), coef < 0
        out = (-t if neg else t) if out is None else (out - t if neg else out + t)
    return out


def _select(index: tirx.PrimExpr, exprs: list) -> tirx.PrimExpr:
    """exprs[index] as a Select chain; unrolled over `index`, the chain folds to one expression per iteration."""
    out = exprs[-1]
    for i in range(len(exprs) - 2, -1, -1):
        out = tirx.Select(index == i, exprs[i], out)
    return out


def _two_sided(mat: np.ndarray, p: int, q: int, value) -> tirx.PrimExpr:
    """(mat X mat^T)[p, q] = sum over i, j of mat[p, i] mat[q, j] X[i, j], non-zero terms only."""
    return _sum_terms((mat[p, i] * mat[q, j], value(i, j)) for i in range(mat.shape[1]) for j in range(mat.shape[1])
                      if mat[p, i] and mat[q, j])


def weight_transform(weight: te.Tensor, m: int, block: int) -> te.Tensor:
    """HWIO 3x3 weights -> U = G g G^T per transform point, packed (points, K // block, C, block)."""
    from tvm.topi.utils import const_matrix
    _, _, c, k = (int(d) for d in weight.shape)
    a = m + 2
    g = const_matrix(transform_matrices(m)[2].astype("float32"), "winograd_G")
    r = te.reduce_axis((0, 3), name="r")
    s = te.reduce_axis((0, 3), name="s")
    return te.compute((a * a, k // block, c, block),
                      lambda e, o, ci, i: te.sum(g[e // a, r] * weight[r, s, ci, o * block + i] * g[e % a, s],
                                                 axis=[r, s]),
                      name=WEIGHT)


def input_transform(data: te.Tensor, m: int, rows: int) -> te.Tensor:
    """NHWC input -> V (points, N, rows, C): each (m+2)^2 tile (padding 1 on every side, zeros past the edges) in
    the transform domain; tile rows past the map's tiles are zeros."""
    n, h, w, c = data.shape
    h, w = int(h), int(w)
    a = m + 2
    nh, nw = tiles(h, w, m)
    bt = transform_matrices(m)[1]
    tile = te.compute(
        (n, rows, a, a, c),
        lambda b, t, i, j, ch: tirx.if_then_else(
            tirx.all(t < nh * nw, (t // nw) * m + i >= 1, (t // nw) * m + i <= h,
                     (t % nw) * m + j >= 1, (t % nw) * m + j <= w),
            data[b, (t // nw) * m + i - 1, (t % nw) * m + j - 1, ch], tirx.const(0, data.dtype)),
        name=INPUT_TILE)

    def value(e, b, t, ch):
        return _select(e, [_two_sided(bt, p, q, lambda i, j: tile[b, t, i, j, ch]) for p in range(a) for q in range(a)])

    return te.compute((a * a, n, rows, c), value, name=INPUT)


def batched_gemm(v: te.Tensor, u: te.Tensor) -> te.Tensor:
    """M[point, n, row, K] = sum over C of V[point, n, row, C] U[point, K // block, C, K % block]."""
    points, n, rows, c = v.shape
    _, ko, _, block = u.shape
    rc = te.reduce_axis((0, c), name="rc")
    return te.compute((points, n, rows, ko * block),
                      lambda e, b, t, k: te.sum(v[e, b, t, rc] * u[e, k // block, rc, k % block], axis=[rc]),
                      name=GEMM)


def output_transform(mm: te.Tensor, m: int, height: int, width: int) -> te.Tensor:
    """M -> NHWC output (N, height, width, K): A^T M A per tile, cut to the map."""
    _, n, _, k = mm.shape
    a = m + 2
    _, nw = tiles(height, width, m)
    at = transform_matrices(m)[0]

    def value(b, y, x, ch):
        t = (y // m) * nw + x // m
        return _select((y % m) * m + x % m,
                       [_two_sided(at, p, q, lambda i, j: mm[i * a + j, b, t, ch]) for p in range(m) for q in range(m)])

    return te.compute((n, height, width, k), value, name=OUTPUT)


def legalize(bb, data, weight, out_shape, m: int, isa: VectorISA):
    """Emit the three kernels (and the weight transform) for a conv2d call that use_winograd accepted."""
    k = int(weight.ty.shape.values[3])
    height, width = int(out_shape[1]), int(out_shape[2])
    kisa = isa_for_channels(isa, k)
    nh, nw = tiles(height, width, m)
    rows = gemm_rows(nh * nw, k, kisa)
    _, tk = tile_choices(rows, k, kisa)
    u = bb.emit_te(weight_transform, weight, m, tk * kisa.lanes, primfunc_name_hint=WEIGHT)
    v = bb.emit_te(input_transform, data, m, rows, primfunc_name_hint=INPUT)
    mm = bb.emit_te(batched_gemm, v, u, primfunc_name_hint=GEMM)
    return bb.call_te(output_transform, mm, m, height, width, primfunc_name_hint=OUTPUT)


# ---- schedules ----

def _root_blocks(sch: s_tir.Schedule):
    return sch.get_child_blocks(sch.get_sblock("root"))


def _schedule_input(sch: s_tir.Schedule, isa: VectorISA) -> None:
    """Per tile and channel vector: the (m+2)^2 input vectors into registers (a local tile), then every point's
    sum of them, stored point by point."""
    *producers, tile_blk, blk = _root_blocks(sch)
    for b in producers:  # a transpose of the model's input, say
        sch.compute_inline(b)
    e, n, t, c = sch.get_loops(blk)
    lanes = isa_for_channels(isa, _ext(sch, c)).lanes
    c_o, c_l = sch.split(c, [None, lanes])
    sch.reorder(n, t, c_o, e, c_l)
    sch.set_scope(tile_blk, 0, "local")
    sch.compute_at(tile_blk, c_o)
    i, j, cl = sch.get_loops(tile_blk)[-3:]
    sch.unroll(i)
    sch.unroll(j)
    sch.vectorize(cl)
    sch.unroll(e)
    sch.vectorize(c_l)
    sch.parallel(sch.fuse(n, t))


def _schedule_gemm(sch: s_tir.Schedule, isa: VectorISA) -> None:
    """The conv rule's register tile (tw rows x tk channel vectors, whole reduction in registers) per point."""
    (blk,) = _root_blocks(sch)
    e, n, t, k, rc = sch.get_loops(blk)
    rows, out_ch = _ext(sch, t), _ext(sch, k)
    kisa = isa_for_channels(isa, out_ch)
    u = sch.get(blk).reads[1].source
    tk = static_extent(u.shape[3]) // kisa.lanes
    tw, _ = tile_choices(rows, out_ch, kisa, tk)
    t_o, t_i = sch.split(t, [None, tw])
    k_o, k_t, k_l = sch.split(k, [None, tk, kisa.lanes])
    # one channel block of one point's weights (C x tk vectors: 16-128 KB) stays in L1/L2 for every image's rows;
    # images outside the blocks re-read all of U[point] (up to 1 MB) per image from L3
    sch.reorder(e, k_o, n, t_o, rc, t_i, k_t, k_l)
    acc = sch.cache_write(blk, 0, "local")
    sch.reverse_compute_at(acc, t_o, preserve_unit_loops=True)
    sch.parallel(sch.fuse(e, k_o))
    sch.vectorize(k_l)
    sch.unroll(k_t)
    sch.unroll(t_i)
    init = sch.decompose_reduction(blk, rc)
    unroll_tile_loops(sch, ((init, 2), (acc, 3)), kisa.lanes)


def _schedule_output(sch: s_tir.Schedule, isa: VectorISA) -> None:
    """Per tile and channel vector: the (m+2)^2 M vectors into registers, then the m x m outputs with the epilogue.
    Blocks after the last one that writes the (N, H, W, K) output (a transpose to the model's NCHW output) run as
    loops of their own over that NHWC result: inlined into a transpose, the tile's loops would walk the transposed
    axes, and the Winograd conv ran 2x slower than the direct one (1x1 -> 3x3 model, 28x28x128, batch 8)."""
    blocks = _root_blocks(sch)
    (out,) = [b for b in blocks if sch.get(b).name_hint == OUTPUT]
    m = math.isqrt(static_extent(sch.get(out).reads[0].source.shape[0])) - 2
    def image_shape(block) -> list[int | None]:
        return [static_extent(d) for d in sch.get(block).writes[0].source.shape[1:]]

    nhwc = image_shape(out)
    last_i = max(i for i, b in enumerate(blocks) if image_shape(b) == nhwc)
    last, after = blocks[last_i], blocks[last_i + 1:]
    for b in blocks[:last_i]:
        sch.compute_inline(b)
    lanes = isa_for_channels(isa, nhwc[-1]).lanes
    for b in after:
        schedule_plain_loops(sch, b, isa.lanes)
    n, y, x, k = sch.get_loops(last)
    ty, a = sch.split(y, [None, m])
    tx, b = sch.split(x, [None, m])
    k_o, k_l = sch.split(k, [None, lanes])
    sch.reorder(n, ty, tx, k_o, a, b, k_l)
    mm = [i for i, r in enumerate(sch.get(last).reads)
          if len(r.source.shape) == 4 and static_extent(r.source.shape[0]) == (m + 2) ** 2]
    cache = sch.cache_read(last, mm[0], "local")
    sch.compute_at(cache, k_o)
    cl = sch.get_loops(cache)
    sch.vectorize(cl[-1])
    for lp in cl[4:-1]:
        sch.unroll(lp)
    sch.unroll(a)
    sch.unroll(b)
    sch.vectorize(k_l)
    sch.parallel(sch.fuse(n, ty, tx))


def _ext(sch: s_tir.Schedule, loop) -> int | None:
    return static_extent(sch.get(loop).extent)


@ScheduleRule.from_callable("Winograd")
def winograd(func: tirx.PrimFunc, target: Target, tunable: bool) -> s_tir.Schedule | None:
    """The schedules of the three Winograd kernels (recognised by their block names); None for anything else."""
    if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
        return None
    sch = s_tir.Schedule(func)
    names = [sch.get(b).name_hint for b in _root_blocks(sch)]
    isa = vector_isa(target)
    try:
        if INPUT in names and names[-1] == INPUT and names[-2] == INPUT_TILE:
            _schedule_input(sch, isa)
        elif names == [GEMM]:
            _schedule_gemm(sch, isa)
        elif OUTPUT in names:
            _schedule_output(sch, isa)
        else:
            return None
    except Exception:  # noqa: BLE001 - TVM's ScheduleError / InternalError: the generic rules take the kernel
        return None
    return sch
