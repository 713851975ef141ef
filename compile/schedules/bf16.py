"""bf16 convs on AVX512_BF16: activations and weights rounded to bfloat16, products summed in fp32 by VDPBF16PS.

One VDPBF16PS multiplies 16 pairs of bf16 values and adds each pair's sum into an fp32 lane: twice the multiply-adds
of an fp32 FMA per instruction (Zen 4, Sapphire Rapids), and half the bytes per activation and weight. The conv
keeps the fp32 register tile of compile.schedules.cpu_rules (tw columns x tk vectors, the whole reduction in
registers); only its innermost step changes: the input channels go in pairs, one 32-bit broadcast of a pixel's
two bf16 channels against one vector of 16 output channels x 2 input channels of packed weights.

Storage: bf16 tensors are uint16 tensors holding the bf16 bits (round to nearest even), so TVM's bf16 legalization
passes (which would widen every bf16 value to fp32) leave them alone. The producer of a conv input writes those
bits in its epilogue; the weights are packed to (K/P, kh, kw, C/2, P, 2) once, in `transform_params`. Depthwise
convs on large maps (DEPTHWISE_BF16_MIN_SIDE) read bf16 input as well, widened to fp32 as it is loaded: they are
memory-bound, and half the bytes is what they need.

LLVM 22 declares the intrinsic over `<32 x bfloat>`, a type TVM's codegen does not emit; the kernels call a
three-line LLVM function (`LLVM_IR`) that bitcasts the i32 vectors and calls the intrinsic, linked into each
kernel's module with TVM's `pragma_import_llvm` and inlined (always_inline) by LLVM.
"""
from __future__ import annotations

from tvm import te, tirx

EXTERN = {16: "convhub_dpbf16ps_512", 8: "convhub_dpbf16ps_256"}  # fp32 lanes -> the LLVM helper
LLVM_IR = r"""
define internal <16 x float> @convhub_dpbf16ps_512(<16 x float> %acc, <16 x i32> %a, <16 x i32> %b) #0 {
  %x = bitcast <16 x i32> %a to <32 x bfloat>
  %y = bitcast <16 x i32> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %x, <32 x bfloat> %y)
  ret <16 x float> %r
}
define internal <8 x float> @convhub_dpbf16ps_256(<8 x float> %acc, <8 x i32> %a, <8 x i32> %b) #0 {
  %x = bitcast <8 x i32> %a to <16 x bfloat>
  %y = bitcast <8 x i32> %b to <16 x bfloat>
  %r = call <8 x float> @llvm.x86.avx512bf16.dpbf16ps.256(<8 x float> %acc, <16 x bfloat> %x, <16 x bfloat> %y)
  ret <8 x float> %r
}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
declare <8 x float> @llvm.x86.avx512bf16.dpbf16ps.256(<8 x float>, <16 x bfloat>, <16 x bfloat>)
attributes #0 = { alwaysinline }
"""
# x86 CPUs with AVX512_BF16 (LLVM -mcpu names); other targets get the feature from -mattr=+avx512bf16
BF16_MCPUS = ("cooperlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d", "znver4",
              "znver5", "diamondrapids")


def supports_bf16(target) -> bool:
    """Whether an llvm target has AVX512_BF16 (its -mcpu, or +avx512bf16 in -mattr)."""
    attrs = target.attrs
    mcpu = str(attrs.get("mcpu", "") or "")
    mattr = [str(a) for a in (attrs.get("mattr", None) or [])]
    return target.kind.name == "llvm" and (mcpu in BF16_MCPUS or "+avx512bf16" in mattr)


def to_bf16_bits(x: tirx.PrimExpr) -> tirx.PrimExpr:
    """fp32 -> the uint16 bits of the nearest bfloat16 (ties to even)."""
    u = tirx.reinterpret("uint32", x)
    one, half = tirx.const(1, "uint32"), tirx.const(0x7FFF, "uint32")
    return tirx.Cast("uint16", (u + half + ((u >> tirx.const(16, "uint32")) & one)) >> tirx.const(16, "uint32"))


def from_bf16_bits(b: tirx.PrimExpr) -> tirx.PrimExpr:
    """uint16 bf16 bits -> fp32 (exact)."""
    return tirx.reinterpret("float32", tirx.Cast("uint32", b) << tirx.const(16, "uint32"))


def round_to_bf16(data: te.Tensor) -> te.Tensor:
    """An fp32 tensor as bf16 bits (uint16), elementwise: fused into its producer's epilogue by FuseOps."""
    return te.compute(data.shape, lambda *i: to_bf16_bits(data(*i)), name="bf16_bits")


def pack_weight_bf16(weight: te.Tensor, block: int) -> te.Tensor:
    """HWIO fp32 -> (K // block, kh, kw, C // 2, block, 2) bf16 bits: for each pair of input channels, the
    block's output channels with the pair interleaved, as one VDPBF16PS operand."""
    kh, kw, c, k = weight.shape
    return te.compute((k // block, kh, kw, c // 2, block, 2),
                      lambda o, r, s, c2, i, j: to_bf16_bits(weight[r, s, c2 * 2 + j, o * block + i]),
                      name="conv_weight_pack_bf16")


ACTIVATIONS = ("relax.nn.relu", "relax.maximum", "relax.minimum", "relax.clip", "relax.nn.silu", "relax.nn.gelu",
               "relax.sigmoid", "relax.nn.relu6")
ELEMENTWISE = ("relax.multiply", "relax.add", "relax.subtract", "relax.divide")
ACTIVATION_DEPTH = 6  # elementwise ops (BatchNorm's two, a residual add, hardswish's +3 ...) before the activation


def activated_convs(func) -> list:
    """The conv2d calls of Relax function `func` whose output reaches an activation (ReLU, ReLU6 as maximum /
    minimum, hardswish's clamp, SiLU ...) through at most ACTIVATION_DEPTH elementwise ops: the convs the bf16
    precision computes in bf16. The others are linear: the projections of inverted residual blocks, whose outputs
    are added into the residual stream unclamped. On efficientnet-lite0 (240 views of 20 real photos, the
    checkpoint's classifier): top-1 agreement with fp32 97.9 % with every conv in bf16, 99.6 % with the linear
    ones in fp32 (batch 1 / 8 at 0.66 / 0.57 and 0.81 / 0.72 of ONNX Runtime fp32 on a Zen 4 VM)."""
    import tvm
    from tvm import relax
    users: dict = {}
    convs = []
    for block in func.body.blocks:
        for b in block.bindings:
            v = b.value
            if not isinstance(v, relax.Call) or not isinstance(v.op, tvm.ir.Op):
                continue
            if v.op.name == "relax.nn.conv2d":
                convs.append((b.var, v))
            for a in v.args:
                if isinstance(a, relax.Var):
                    users.setdefault(a, []).append((b.var, v.op.name))

    def reaches(var, depth: int) -> bool:
        for user, op in users.get(var, []):
            if op in ACTIVATIONS or (op in ELEMENTWISE and depth > 0 and reaches(user, depth - 1)):
                return True
        return False

    return [call for var, call in convs if reaches(var, ACTIVATION_DEPTH)]


# depthwise convs on maps at least this wide read their input as bf16 (halving the traffic of these memory-bound
# layers; the math stays fp32): lite0 batch 8 / 1 at 0.79-0.83 / 0.81-0.83 of ORT fp32 against 0.87 / 0.87 with every
# depthwise conv in fp32, top-1 agreement unchanged (99.6 %); every depthwise conv in bf16 (0.80 / 0.80) left 99.2 %
DEPTHWISE_BF16_MIN_SIDE = 28


def depthwise_reads_bf16(attrs, wshape: list[int] | None, wdtype: str, data_shape) -> bool:
    """Whether a (Relax conv2d) depthwise conv in NHWC/HWIO with these attributes and shapes reads bf16 input."""
    from .cpu_rules import static_extent
    side = static_extent(data_shape[2]) if data_shape is not None and len(data_shape) == 4 else None
    return (attrs.data_layout == "NHWC" and attrs.kernel_layout == "HWIO" and attrs.out_layout == "NHWC"
            and wshape is not None and wdtype == "float32" and int(attrs.groups) > 1 and wshape[2] == 1
            and int(attrs.groups) == wshape[3] and side is not None and side >= DEPTHWISE_BF16_MIN_SIDE)


def depthwise_from_bf16(bits: te.Tensor, weight: te.Tensor, strides, padding, dilation, groups: int) -> te.Tensor:
    """TOPI's NHWC depthwise conv on an input given as bf16 bits, widened to fp32 as it is read (the schedule inlines
    the widening into the conv's loads)."""
    from tvm import topi
    x = te.compute(bits.shape, lambda *i: from_bf16_bits(bits(*i)), name="bf16_to_f32")
    return topi.nn.group_conv2d_nhwc(x, weight, strides, padding, dilation, groups, out_dtype="float32")


_REGISTERED: set[int] = set()


def dot_intrin(lanes: int) -> str:
    """The name of the tensor intrinsic C[lanes] += sum_j A[j] * B[lanes, j] (j < 2, bf16 bits in, fp32 out),
    registered on first use (TVMScript parsing is slow once torch is imported)."""
    name = f"convhub_dpbf16_{lanes}x2"
    if lanes in _REGISTERED:
        return name
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    extern, vec = EXTERN[lanes], f"float32x{lanes}"

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((2,), "uint16", offset_factor=1), b: T.Buffer((lanes, 2), "uint16", offset_factor=1),
             c: T.Buffer((lanes,), "float32", offset_factor=1, scope="local")):
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:2], b[0:lanes, 0:2])
            T.writes(c[0:lanes])
            for i, k in T.grid(lanes, 2):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.reinterpret("float32", T.shift_left(T.Cast("uint32", a[vk]), T.uint32(16))) \
                        * T.reinterpret("float32", T.shift_left(T.Cast("uint32", b[vi, vk]), T.uint32(16)))

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2,), "uint16", offset_factor=1), b: T.Buffer((lanes, 2), "uint16", offset_factor=1),
             c: T.Buffer((lanes,), "float32", offset_factor=1, scope="local")):
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:2], b[0:lanes, 0:2])
            T.writes(c[0:lanes])
            c[T.ramp(0, 1, lanes)] = T.call_pure_extern(
                vec, extern, c.vload([0], vec),
                T.broadcast(T.reinterpret("int32", a.vload([0], "uint16x2")), lanes),
                T.reinterpret(f"int32x{lanes}", b.vload([0, 0], f"uint16x{2 * lanes}")))

    TensorIntrin.register(name, desc, impl)
    _REGISTERED.add(lanes)
    return name
