"""conv2d legalization with pre-packed weights: HWIO -> (K/P, kh, kw, C, P), P = tk x lanes of the register tile.

With plain HWIO the P output channels one input channel feeds sit at a stride of K floats, so a deep layer's
weights stream from L3 in half-used cache lines. Packed, the reduction reads one contiguous slab per channel
block. The packing is its own kernel that depends only on the weights: LiftTransformParams moves it to
`transform_params`, so it runs once when an artifact loads.
"""
from __future__ import annotations

from tvm import te, topi
from tvm.target import Target

from .bf16 import EXTERN, depthwise_from_bf16, depthwise_reads_bf16, from_bf16_bits, pack_weight_bf16, round_to_bf16
from .cpu_rules import (isa_for_channels, pixel_row, static_extent, static_shape, tile_choices, tile_isa,
                        vector_isa)
from .winograd import legalize as legalize_winograd, use_winograd


def pack_weight(weight: te.Tensor, block: int) -> te.Tensor:
    """HWIO -> (K // block, kh, kw, C, block)."""
    kh, kw, c, k = weight.shape
    return te.compute((k // block, kh, kw, c, block), lambda o, r, s, ci, i: weight[r, s, ci, o * block + i],
                      name="conv_weight_pack")


def conv2d_nhwc_packed(data: te.Tensor, wp: te.Tensor, strides, padding, dilation,
                       channels_first: bool = False) -> te.Tensor:
    """conv2d writing NHWC against packed weights; the block is named like TOPI's so the schedule rule finds it.
    `channels_first`: the input is NCHW (a stem reading the model's input, compile.cpu_pipeline._stem_reads_nchw).
    6-D `wp` (compile.schedules.bf16.pack_weight_bf16): `data` holds bf16 bits, the input channels are reduced in
    pairs (an innermost reduction of 2, the VDPBF16PS step) and the sum is fp32."""
    if channels_first:
        n, c, h, w = data.shape
    else:
        n, h, w, c = data.shape
    bf16 = len(wp.shape) == 6
    ko, kh, kw, _, block = wp.shape[:5]
    sh, sw = (int(v) for v in strides)
    dh, dw = (int(v) for v in dilation)
    pt, pl, pb, pr = (int(v) for v in padding)
    if pt or pl or pb or pr:
        before, after = ([0, 0, pt, pl], [0, 0, pb, pr]) if channels_first else ([0, pt, pl, 0], [0, pb, pr, 0])
        data = topi.nn.pad(data, before, after, name="pad_temp")
    oh = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    ow = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")
    rc = te.reduce_axis((0, c // 2 if bf16 else c), name="rc")
    rj = te.reduce_axis((0, 2), name="rj") if bf16 else None  # the input channel within a bf16 pair

    def pixel(b, y, x):
        ci = rc * 2 + rj if bf16 else rc
        v = data[b, ci, y, x] if channels_first else data[b, y, x, ci]
        return from_bf16_bits(v) if bf16 else v

    def weight(k):
        i = (k // block, ry, rx, rc, k % block)
        return from_bf16_bits(wp[(*i, rj)]) if bf16 else wp[i]

    return te.compute(
        (n, oh, ow, ko * block),
        lambda b, y, x, k: te.sum(pixel(b, y * sh + ry * dh, x * sw + rx * dw) * weight(k),
                                  axis=[ry, rx, rc] + ([rj] if bf16 else [])),
        name="conv2d_nhwc")


def conv2d_pixels_packed(data: te.Tensor, wp: te.Tensor, row: int) -> te.Tensor:
    """A 1x1 stride-1 conv over one row of `row` >= H*W pixels per image: the NHWC memory viewed as (N, 1, H*W, C),
    so the schedule's register tiles run over pixels whatever the row width (cpu_rules.pixel_row). Pixels past
    H*W read the last pixel again; their results are computed and never stored."""
    n, h, w, c = data.shape
    last = h * w - 1
    pixels = te.compute((n, 1, row, c), lambda b, _, p, ch: data[b, te.min(p, last) // w, te.min(p, last) % w, ch],
                        name="pixel_row")
    out = conv2d_nhwc_packed(pixels, wp, (1, 1), (0, 0, 0, 0), (1, 1))
    return te.compute((n, h, w, out.shape[3]), lambda b, y, x, k: out[b, 0, y * w + x, k], name="pixel_rows")


def legalize_conv2d(bb, call, precision: str = "fp32", bf16_taken: list | None = None):
    """Regular fp32 NHWC/HWIO convs with static weight/width shapes -> pack + packed conv, or Winograd for 3x3
    stride-1 ones (compile.schedules.winograd); others -> TOPI.
    `precision` "bf16": such convs on NHWC input with an even channel count read their input rounded to bf16
    (compile.schedules.bf16) against bf16 weights, depthwise convs on large maps their input only (fp32 math), and
    both are appended to `bf16_taken`; the stems reading NCHW (3 channels) stay fp32."""
    import tvm
    a = call.attrs
    default = tvm.ir.Op.get("relax.nn.conv2d").get_attr("FLegalize")
    data, weight = call.args
    w_info, o_info = weight.ty, call.ty
    wshape = static_shape(w_info.shape)
    channels_first = a.data_layout == "NCHW"  # a stem reading the model input (cpu_pipeline._stem_reads_nchw)
    if precision == "bf16" and depthwise_reads_bf16(a, wshape, w_info.dtype, data.ty.shape):
        if bf16_taken is not None:
            bf16_taken.append(call)
        bits = bb.emit_te(round_to_bf16, data, primfunc_name_hint="bf16_bits")
        return bb.call_te(depthwise_from_bf16, bits, weight, a.strides, a.padding, a.dilation, int(a.groups),
                          primfunc_name_hint="conv2d")
    if (a.data_layout not in ("NHWC", "NCHW") or a.kernel_layout != "HWIO" or a.out_layout != "NHWC"
            or int(a.groups) != 1 or w_info.dtype != "float32" or wshape is None
            or static_extent(o_info.shape[2]) is None):
        return default(bb, call)
    k = wshape[3]
    target_isa = vector_isa(Target.current())
    isa = isa_for_channels(target_isa, k)
    if isa is None:
        return default(bb, call)
    tile = use_winograd(a, wshape, o_info.shape.values, w_info.dtype, target_isa) if precision == "fp32" else 0
    if tile:  # 3x3 stride-1 (compile.schedules.winograd); bf16 builds keep their bf16 direct convs (faster)
        return legalize_winograd(bb, data, weight, o_info.shape.values, tile, target_isa)
    height, width = static_extent(o_info.shape[1]), int(o_info.shape[2])
    pointwise = (not channels_first and wshape[:2] == [1, 1] and all(int(v) == 1 for v in a.strides)
                 and not any(int(v) for v in a.padding))
    row = pixel_row(height, width, k, isa) if pointwise and height is not None else None
    _, tk = tile_choices(row or width, k, tile_isa(isa, channels_first))
    block = tk * isa.lanes
    if precision == "bf16" and not channels_first and wshape[2] % 2 == 0 and isa.lanes in EXTERN:
        if bf16_taken is not None:
            bf16_taken.append(call)
        data = bb.emit_te(round_to_bf16, data, primfunc_name_hint="bf16_bits")
        wp = bb.emit_te(pack_weight_bf16, weight, block, primfunc_name_hint="conv_weight_pack_bf16")
    else:
        wp = bb.emit_te(pack_weight, weight, block, primfunc_name_hint="conv_weight_pack")
    if row:
        return bb.call_te(conv2d_pixels_packed, data, wp, row, primfunc_name_hint="conv2d")
    return bb.call_te(conv2d_nhwc_packed, data, wp, a.strides, a.padding, a.dilation, channels_first,
                      primfunc_name_hint="conv2d")
