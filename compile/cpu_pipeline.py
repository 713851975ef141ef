"""The convhub CPU Relax pipeline: NHWC layout, weights packed once, every kernel scheduled by our rules.

Steps, each for a measured reason (docs/performance.md):
1. `clip` -> `maximum`/`minimum`: relax.clip has no layout-inference rule, so ConvertLayout would wrap every
   ReLU6 in a pair of transposes and break conv+epilogue fusion; min/max are layout-aware.
2. ConvertLayout conv2d to NHWC/HWIO: output channels innermost in activations and weights, which is what
   the register-blocked rule vectorizes over; layout transforms remain only at the input and the outputs. A stem
   with little work per input value (3x3 on 3 channels) then reads the NCHW input itself (`_stem_reads_nchw`).
3. Constants (BatchNorm statistics) folded with numpy, then Legalize, with regular convs against weights packed
   per channel block (compile.schedules.conv_packing), 3x3 stride-1 ones as Winograd F(4x4, 3x3)
   (compile.schedules.winograd).
4. LiftTransformParams: weight transposes and packing (and folded BatchNorm constants) move to
   `transform_params`, run once when an artifact loads (compile.artifact), not on every call. A dynamic-batch
   `main` is compiled twice, as itself and with the batch bound to 1 (`main_batch1`); both share that transform.
5. The standard CPU fuse passes; depthwise and 1x1 convs fed by a conv kernel get that input in channel blocks of
   one vector (compile.schedules.channel_blocks); then compile.schedules.cpu_rules on every fused kernel.
compile.parallel_build then generates the kernels' code in parallel threads.
"""
from __future__ import annotations

import math

import numpy as np

from ._tvm import relax, tvm

PARAMS_TRANSFORM = "transform_params"  # one weight transform shared by `main` and BATCH1_ENTRY
BATCH1_ENTRY = "main_batch1"  # `main` with the batch bound to 1, where `main`'s batch is dynamic


def _scalar(expr) -> float | None:
    v = getattr(expr, "value", None)
    v = getattr(v, "value", v)
    return None if v is None else float(v)


def _rewrite_relax_functions(mod: "tvm.IRModule", rewriter_cls) -> "tvm.IRModule":
    """A copy of `mod` with every Relax function passed through `rewriter_cls(mod).visit_expr` (a module pass
    returns a new module; the caller's stays as it was)."""
    mod = mod.clone()
    rewriter = rewriter_cls(mod)
    for gv, func in list(mod.functions_items()):
        if isinstance(func, relax.Function):
            mod[gv] = rewriter.visit_expr(func)
    return mod


def _op_rewrite_pass(name: str, op_name: str, rewrite) -> tvm.transform.Pass:
    """A module pass replacing each call to Relax op `op_name` by `rewrite(mutator, call)` (which may return the
    call unchanged); bindings left unused afterwards are dropped."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Rewrite(PyExprMutator):
        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == op_name:
                return rewrite(self, call)
            return call

    @tvm.transform.module_pass(opt_level=0, name=name)
    def _pass(mod, _ctx):
        return relax.transform.DeadCodeElimination()(_rewrite_relax_functions(mod, _Rewrite))

    return _pass


def _clip_to_min_max() -> tvm.transform.Pass:
    def rewrite(_mutator, call):
        x = call.args[0]
        lo, hi = _scalar(call.args[1]), _scalar(call.args[2])
        if lo is None or hi is None:
            return call
        dtype = x.ty.dtype
        if math.isfinite(lo):
            x = relax.op.maximum(x, relax.const(lo, dtype))
        if math.isfinite(hi):
            x = relax.op.minimum(x, relax.const(hi, dtype))
        return x

    return _op_rewrite_pass("ConvhubClipToMinMax", "relax.clip", rewrite)


STEM_MAX_CHANNELS = 4  # input channels up to which a conv on the transposed model input reads NCHW itself
STEM_MAX_WORK = 512  # ... and output channels x kernel height x kernel width up to which that pays


def _stem_reads_nchw() -> tvm.transform.Pass:
    """conv2d(permute_dims(x, NCHW -> NHWC)) on an input of at most STEM_MAX_CHANNELS channels becomes one conv
    reading NCHW and writing NHWC (compile.schedules.conv_packing `channels_first`; its padding is inlined and each
    kernel row walks one input plane, compile.schedules.cpu_rules). The stem broadcasts single input values
    anyway, so reading them from NCHW costs little, while the transpose kernel it replaces rewrote the whole input
    with a 3-float innermost axis no vector fits, and the pad pass rewrote it again. Alone, at batch 8 on a
    Sapphire Rapids VM: mobilenet_v3_large's 3x3 3 -> 16 stem 3.2 -> 0.8 ms, lite0's 3 -> 32 3.9 -> 2.2 ms (batch 1:
    0.31 -> 0.23). Only where the conv's work per input value is small (STEM_MAX_WORK): ResNet's 7x7 3 -> 64 stem
    ran 1.3-2.4x slower reading NCHW with inlined padding, so it keeps the transpose and the pad pass."""
    from .schedules.cpu_rules import static_extent, static_shape

    def rewrite(mutator, call):
        a, data = call.attrs, call.args[0]
        if a.data_layout != "NHWC" or int(a.groups) != 1 or not isinstance(data, relax.Var):
            return call
        src = mutator.lookup_binding(data)
        if not (isinstance(src, relax.Call) and isinstance(src.op, tvm.ir.Op)
                and src.op.name == "relax.permute_dims" and src.attrs.axes is not None
                and [int(i) for i in src.attrs.axes] == [0, 2, 3, 1]):
            return call
        x = src.args[0]
        # the batch may be symbolic (a dynamic-batch `main`): only the channels and the kernel need to be known
        shape = getattr(getattr(x.ty, "shape", None), "values", None)
        channels = static_extent(shape[1]) if shape is not None and len(shape) == 4 else None
        kernel = static_shape(getattr(call.args[1].ty, "shape", None))  # HWIO
        if (channels is None or kernel is None or len(kernel) != 4
                or channels > STEM_MAX_CHANNELS or kernel[0] * kernel[1] * kernel[3] > STEM_MAX_WORK):
            return call
        return relax.op.nn.conv2d(x, call.args[1], strides=a.strides, padding=a.padding, dilation=a.dilation,
                                  groups=a.groups, data_layout="NCHW", kernel_layout=a.kernel_layout,
                                  out_layout=a.out_layout, out_dtype=a.out_dtype)

    return _op_rewrite_pass("ConvhubStemReadsNCHW", "relax.nn.conv2d", rewrite)


_NUMPY_OPS = {
    "relax.add": np.add, "relax.subtract": np.subtract, "relax.multiply": np.multiply, "relax.divide": np.divide,
    "relax.sqrt": np.sqrt, "relax.rsqrt": lambda x: 1 / np.sqrt(x),
}


def _fold_constants_numpy() -> tvm.transform.Pass:
    """Evaluate arithmetic, reshapes and transposes whose inputs are all constants (BatchNorm statistics: the
    exported graph keeps buffers as constants) with numpy. relax.transform.FoldConstant would JIT-compile one
    LLVM kernel per distinct shape to do the same: 40 s of lite0's 2-minute build, ~0.1 s this way."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    from .schedules.cpu_rules import static_shape

    @mutator
    class _Rewrite(PyExprMutator):
        def _value(self, expr) -> np.ndarray | None:
            if isinstance(expr, relax.Var):
                expr = self.lookup_binding(expr)
            return expr.value.numpy() if isinstance(expr, tvm.ir.expr.Constant) else None

        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            name = call.op.name
            if name in _NUMPY_OPS:
                args = [self._value(a) for a in call.args]
                if any(a is None for a in args):
                    return call
                out = _NUMPY_OPS[name](*args)
            elif name in ("relax.reshape", "relax.permute_dims"):
                x = self._value(call.args[0])
                if x is None:
                    return call
                if name == "relax.reshape":
                    shape = static_shape(call.args[1]) if isinstance(call.args[1], relax.ShapeExpr) else None
                    if shape is None:
                        return call
                    out = x.reshape(shape)
                else:
                    axes = call.attrs.axes
                    out = np.transpose(x, None if axes is None else [int(i) for i in axes])
            else:
                return call
            return relax.const(np.ascontiguousarray(out).astype(str(call.ty.dtype)))

    @tvm.transform.module_pass(opt_level=0, name="ConvhubFoldConstantsNumpy")
    def _pass(mod, _ctx):
        return relax.transform.DeadCodeElimination()(_rewrite_relax_functions(mod, _Rewrite))

    return _pass


def _batch_one_entry() -> tvm.transform.Pass:
    """A `main` with a dynamic batch gets a copy with the batch bound to 1, `main_batch1`, compiled alongside it
    (compile.artifact calls it for single images). Static shapes let every kernel drop its symbolic index
    arithmetic and run-time tile choice, and the VM its shape computations: A/B in one process at batch 1,
    efficientnet-lite0 4.42 vs 4.58 ms (ORT 4.13), mobilenet_v3_large 3.44 vs 3.69 ms (ORT 3.02). Both functions
    take the same weights through one shared transform (LiftTransformParams(shared_transform=True))."""

    @tvm.transform.module_pass(opt_level=0, name="ConvhubBatchOneEntry")
    def _pass(mod, _ctx):
        names = {gv.name_hint for gv in mod.get_global_vars()}
        if "main" not in names or BATCH1_ENTRY in names or not isinstance(mod["main"], relax.Function):
            return mod
        main = mod["main"]
        batch = main.params[0].ty.shape[0] if main.params and hasattr(main.params[0].ty, "shape") else None
        lower = (main.attrs.get("tir_var_lower_bound") or {}) if main.attrs else {}
        if not isinstance(batch, tvm.tirx.Var) or int(lower.get(batch.name, 1)) > 1:
            return mod
        one = main.bind_symbolic_vars({batch: 1}).with_attr("global_symbol", BATCH1_ENTRY)
        mod = mod.clone()
        mod[BATCH1_ENTRY] = one
        return mod

    return _pass


def _bindings(func: "relax.Function"):
    return [b for block in func.body.blocks for b in block.bindings]


def _is_op(value, name: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == name


def _legalize(precision: str, stats: dict | None = None) -> tvm.transform.Pass:
    """LegalizeOps with our conv2d legalization; under "bf16" the convs that compile.schedules.bf16.activated_convs
    picks (per Relax function, before legalization) read bf16 inputs and weights. `stats` gets "convs" and
    "bf16_convs" (per entry function: main and its batch-1 copy hold the same convs)."""
    from .schedules.bf16 import activated_convs
    from .schedules.conv_packing import legalize_conv2d

    @tvm.transform.module_pass(opt_level=0, name="ConvhubLegalize")
    def _pass(mod, _ctx):
        chosen, taken, convs, entries = [], [], 0, 0
        for _, func in mod.functions_items():
            if isinstance(func, relax.Function):
                n = sum(1 for b in _bindings(func) if _is_op(b.value, "relax.nn.conv2d"))
                convs, entries = convs + n, entries + (n > 0)
                if precision == "bf16":
                    chosen += activated_convs(func)

        def conv2d(bb, call):
            bf16 = any(call.same_as(c) or (call.args[0].same_as(c.args[0]) and call.args[1].same_as(c.args[1]))
                       for c in chosen)
            return legalize_conv2d(bb, call, "bf16" if bf16 else "fp32", taken)
        mod = relax.transform.LegalizeOps(customize_legalize_map={"relax.nn.conv2d": conv2d})(mod)
        if stats is not None:
            stats.update(convs=convs // max(entries, 1), bf16_convs=len(taken) // max(entries, 1))
        return mod

    return _pass


def schedule_rules():
    """Our rules first; dlight's CPU reduction rule for other reductions."""
    from tvm.s_tir import dlight
    from .schedules.cpu_rules import conv_nhwc, injective
    from .schedules.pool_rules import channels_last_pool
    from .schedules.winograd import winograd
    return [winograd, conv_nhwc, injective, channels_last_pool, dlight.cpu.Reduction()]


def scheduling_passes(target: "tvm.target.Target", precision: str = "fp32", stats: dict | None = None) -> list:
    """Steps 1-4: from the imported Relax module to fused, scheduled PrimFuncs (before lowering). `precision`
    "bf16": regular convs compute on bf16-rounded inputs and weights (compile.schedules.bf16)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu
    from tvm.s_tir import dlight
    from .schedules.channel_blocks import block_channels
    from .schedules.cpu_rules import vector_isa
    return [
        _batch_one_entry(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.CanonicalizeBindings(),
        _clip_to_min_max(),
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]}),
        _stem_reads_nchw(),
        *cpu.library_dispatch_passes(target),
        _fold_constants_numpy(),
        _legalize(precision, stats),
        relax.transform.LiftTransformParams(shared_transform=True),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        block_channels(vector_isa(target).lanes),
        dlight.ApplyDefaultSchedule(*schedule_rules()),
    ]


def schedule_module(mod: "tvm.IRModule", target: "tvm.target.Target", precision: str = "fp32") -> "tvm.IRModule":
    """The scheduled module, for inspection (which kernels got which schedule) and per-kernel timing."""
    with target:
        return tvm.transform.Sequential(scheduling_passes(target, precision))(mod)


def cpu_pipeline(target: "tvm.target.Target", precision: str = "fp32", stats: dict | None = None
                 ) -> tvm.transform.Pass:
    """Relax pipeline for llvm targets (x86 and aarch64); use as tvm.compile(..., relax_pipeline=...). `stats`, when
    given, receives how many convs the model has and how many run in bf16 (`precision` "bf16")."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="ConvhubCPUPipeline")
    def _pipeline(mod, _ctx):
        with target:
            return tvm.transform.Sequential([*scheduling_passes(target, precision, stats),
                                             *cpu.dataflow_lower_passes(target),
                                             *cpu.finalize_passes(target)])(mod)

    return _pipeline
