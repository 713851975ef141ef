"""A tensor that a conv kernel passes to depthwise or 1x1 convs (as their input) and to conv epilogues (as a residual),
and that nothing else reads, is stored in channel blocks of one vector (NCHW[x]c), written so by its producer and
read so by its readers.

A depthwise conv that follows a 1x1 expansion reads a tensor the expansion has just written (4.8 MB at lite0's
112x112x96). Inside the model run that data is no longer in cache, and NHWC tiles read 64 bytes out of every
384-byte pixel, which the hardware prefetchers do not follow: the pair ran 2-4x slower than the same two kernels
called alone. With the intermediate stored as (N, C/v, H, W, v), each channel block is a contiguous plane the
depthwise conv walks row by row (a hand-written NCHWc8 pair: 1.35-1.8x faster than NHWC once caches are not
hot; docs/performance.md). The depthwise conv's own output then goes out the same way: in NHWC its one-vector
tiles wrote 32 bytes per pixel at a stride of the whole pixel, in blocks they write contiguous runs, and the 1x1
projection after it reads each block's channels of a pixel tile as one contiguous piece (mobilenet_v3_large
batch 8: 0.91-0.95 of the build that blocked only depthwise inputs).

Residual operands (session 9): resnet-conv's bottleneck outputs feed the next block's first 1x1 conv and its
last conv's residual add. In NHWC the 1x1 expansions that wrote them (256-2048 channels) and read them back ran at
1.4-1.85x ONNX Runtime's time at batch 8 (the same conv without the residual: 1.1x); blocked on every side, resnet-conv
batch 8 0.971 (two A/B runs), mobilenet_v3_large batch 8 0.977, lite0 batch 8 0.991, batch 1 1.002-1.005.

The layout changes only between the kernels: the producer's PrimFunc writes its output buffer through the
index map and the consumer's PrimFunc reads it through the same map (`transform_layout` on both), and the Relax
call's output type changes to the blocked shape. Nothing else sees the tensor, so no layout-transform kernel
is needed. The schedule rule (cpu_rules.conv_nhwc) recognises blocked inputs and tiles them by block.
"""
from __future__ import annotations

from .._tvm import relax, tvm
from .cpu_rules import channel_lanes, conv_block_name, static_extent


def _kind(func) -> str | None:
    """'conv' for a fused regular NHWC conv kernel, 'pointwise' for a 1x1 one reading its input unpadded,
    'depthwise' for a fused depthwise one, else None."""
    if not isinstance(func, tvm.tirx.PrimFunc):
        return None
    try:
        name = conv_block_name(func)
        if name == "group_conv2d_nhwc":
            return "depthwise"
        return None if name is None else "pointwise" if _pointwise(func, name) else "conv"
    except Exception:  # noqa: BLE001 - a function the schedule cannot parse is not ours to change
        return None


def _pointwise(func, conv: str) -> bool:
    """A 1x1 conv whose input reaches it through copies only (no padding)."""
    from tvm import s_tir
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    i = names.index(conv)
    reduce = [iv for iv in sch.get(blocks[i]).iter_vars if iv.iter_type == tvm.tirx.IterVar.CommReduce]
    return (len(reduce) == 3 and all(static_extent(iv.dom.extent) == 1 for iv in reduce[:2])
            and all(n == "pixel_row" for n in names[:i]))


def _blocked(func: "tvm.tirx.PrimFunc", param: int, lanes: int) -> "tvm.tirx.PrimFunc":
    """`func` with NHWC parameter `param` (0: the activation input, -1: the output) stored as
    (N, C/lanes, H, W, lanes); every access to it goes through the index map."""
    from tvm import s_tir
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    name = func.params[param].name
    if param == -1:  # the last epilogue block writes the output
        block, kind = blocks[-1], "write"
    else:  # the first block reading it: the pad (or the conv) for the input, an epilogue for a residual operand
        block, kind = next(b for b in blocks if any(r.source.name == name for r in sch.get(b).reads)), "read"
    bufs = sch.get(block).reads if kind == "read" else sch.get(block).writes
    index = [r.source.name for r in bufs].index(name)
    sch.transform_layout(block, (kind, index), lambda n, h, w, c: (n, c // lanes, h, w, c % lanes))
    return sch.mod["main"]


def _uses(func: "relax.Function") -> dict:
    """How often each variable is read in `func`'s body."""
    uses: dict = {}

    def visit(e):
        if isinstance(e, relax.Var):
            uses[e] = uses.get(e, 0) + 1
    relax.analysis.post_order_visit(func.body, visit)
    return uses


def block_channels(lanes: int) -> tvm.transform.Pass:
    """Module pass (after FuseTIR): a conv kernel's output that only depthwise / 1x1 convs read as their input and
    conv epilogues read as a same-shaped operand (a residual) is passed in channel blocks of one vector: `lanes`
    (the target's vector width), or the narrower vector the kernels over that many channels use
    (cpu_rules.channel_lanes: 8 for AVX-512 at 24-200 channels)."""

    @tvm.transform.module_pass(opt_level=0, name="ConvhubChannelBlocks")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions_items()):
            if isinstance(func, relax.Function):
                mod = _rewrite(mod, gv, func, lanes)
        return mod

    return _pass


def _is_call_tir(v) -> bool:
    return isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op) and v.op.name == "relax.call_tir"


def _takes_blocks(arg, j: int, k: str | None, out) -> bool:
    """Whether `arg`, argument `j` of a call to a kernel of kind `k` whose result is `out`, can be read in channel
    blocks: the activation input of a depthwise or 1x1 conv, or a conv epilogue's operand of the output's own
    shape (a residual)."""
    if j == 0:
        return k in ("depthwise", "pointwise")
    shape, out_shape = getattr(arg.ty, "shape", None), getattr(out.ty, "shape", None)
    return (k is not None and shape is not None and out_shape is not None and len(shape) == 4
            and str(shape) == str(out_shape))  # same dimensions, the batch the same symbolic variable


def _rewrite(mod, gv, func, lanes: int):
    """Rewrite the conv kernel outputs of one Relax function whose every reader can take channel blocks."""
    uses, calls, kinds, pairs = _uses(func), {}, {}, []

    def kind(call) -> str | None:  # once per kernel, however many calls share it
        gv = call.args[0]
        if gv not in kinds:
            kinds[gv] = _kind(mod[gv])
        return kinds[gv]

    readers: dict = {}  # conv kernel output -> [(reading call's var, argument index)]
    for block in func.body.blocks:
        for b in block.bindings:
            if not _is_call_tir(b.value):
                continue
            calls[b.var] = b.value
            for j, a in enumerate(b.value.args[1].fields):
                readers.setdefault(a, []).append((b.var, j))
    for x, rd in readers.items():
        prod = calls.get(x)
        if prod is None or kind(prod) is None or uses.get(x, 0) != len(rd):
            continue
        shape = getattr(x.ty, "shape", None)  # None when only the rank is known
        if shape is None or len(shape) != 4 or not isinstance(shape[3], tvm.tirx.IntImm):
            continue
        block = channel_lanes(int(shape[3]), lanes)
        if block and all(_takes_blocks(x, j, kind(calls[y]), y) for y, j in rd):
            pairs.append((x, rd, block))
    if not pairs:
        return mod
    # a kernel may write blocks for its consumer and read blocks from its producer (depthwise -> pointwise)
    sides: dict = {}  # call var -> {parameter index (-1: the output): block}
    for x, rd, block in pairs:
        sides.setdefault(x, {})[-1] = block
        for y, j in rd:
            sides.setdefault(y, {})[j] = block
    new_funcs, replace = {}, {}
    for i, (var, params) in enumerate(sides.items()):
        call = calls[var]
        name, f = f"{call.args[0].name_hint}_blk{i}", mod[call.args[0]]
        for param in sorted(params):
            f = _blocked(f, param, params[param])
        new_funcs[name] = f
        ty = var.ty
        if -1 in params:
            n, h, w, c = ty.shape  # the caller's shape expressions (a dynamic batch is the caller's variable)
            ty = relax.TensorType([n, int(c) // params[-1], h, w, params[-1]], ty.dtype)
        replace[call] = (name, ty)
    return _apply(mod, gv, func, replace, new_funcs)


def _apply(mod, gv, func, replace: dict, new_funcs: dict):
    """`func` with the call_tir calls in `replace` (call -> (kernel name, output type)) swapped to the kernels
    in `new_funcs` (name -> PrimFunc), which are added to the module."""
    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class _Swap(PyExprMutator):
        def __init__(self, mod):
            super().__init__(mod)
            # added through the builder, so the GlobalVars carry the function types call_tir checks
            self.gvs = {name: self.builder_.add_func(f, name) for name, f in new_funcs.items()}

        def visit_call_(self, call):  # noqa: N802 - TVM's visitor name
            new = replace.get(call)
            if new is None:
                return super().visit_call_(call)
            args = [self.visit_expr(a) for a in call.args[1].fields]
            return relax.call_tir(self.gvs[new[0]], args, new[1])

        def run(self):
            self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

    return relax.transform.DeadCodeElimination()(_Swap(mod).run())
