"""Parallel loops that hand out their work on demand instead of in fixed shares.

TVM's CPU code generator runs a `parallel` loop of extent E on T threads as T fixed ranges of E / T iterations
(CodeGenCPU's parallel launch), and every kernel ends at a barrier. When one core is busy with something else for a
while (the server's event loop, another process, a vCPU the hypervisor has descheduled), its thread finishes its fixed
share late and the other threads wait for it at the barrier: a kernel takes as long as its slowest share.

`work_sharing` rewrites each parallel loop, after lowering, into K chunks taken from a shared counter:

    counter = 0                                   # on the calling thread's stack
    parallel for task in range(K):                # TVM still splits these tasks among its threads ...
        k = fetch_add(counter, 1)                 # ... but each task takes chunks until none are left
        while k < K:
            for i in range(b(k), b(k + 1)): body(i)
            k = fetch_add(counter, 1)

so a thread that gets its core back late finds the work done by the others, and a worker that wakes up late (TVM's
workers sleep between kernels when spin-waiting is off, as in the server) costs nothing. Chunks shrink as they go
(guided scheduling, b(k) = E - E (K - k)^2 / K^2: the first ~2/K of the loop, the last ~1/K^2), so there are few atomic
adds and the threads finish within a small chunk of each other. The loop bodies are unchanged: results are
bit-identical. The counter is an LLVM `atomicrmw add` (relaxed: the chunks are independent and the launch's own
barrier orders their results) in a tiny LLVM function linked into each kernel with TVM's `pragma_import_llvm` and
inlined, as compile.schedules.bf16 does for its intrinsic.

Each chunk costs one atomic add on a cache line the threads share (~0.1 us), so K is sized by the loop's work
(`body_cost`): about CHUNK_COST statements a chunk, MIN_CHUNKS to CHUNKS of them; a static loop with less work than
MIN_CHUNKS chunks keeps TVM's fixed shares. Measured (docs/performance.md "Work sharing"): lite0, mobilenet_v3_large
and resnet-conv at batch 1 and 8 took 0.86-0.98 of the fixed shares' time idle and 0.85-0.99 with another process
taking 20 % of a core; never more.
"""
from __future__ import annotations

import tvm
from tvm import tirx
from tvm_ffi.structural import structural_map, structural_walk

CHUNKS = 16  # at most this many chunks per parallel loop (fewer when it holds less work, see CHUNK_COST)
MIN_CHUNKS = 4  # a loop with less work than this many chunks keeps TVM's fixed shares (no atomics at all)
CHUNK_COST = 20000  # statements executed (~vector FMAs in a conv tile) per chunk at least: an atomic add is ~0.1 us
PIPELINE = "convhub"  # the TIR pipeline name this module registers (tvm.tirx.build(..., pipeline=PIPELINE))
FETCH_ADD = "convhub_fetch_add"
LLVM_IR = r"""
define internal i32 @convhub_fetch_add(ptr %counter, i32 %n) #0 {
  %old = atomicrmw add ptr %counter, i32 %n monotonic
  ret i32 %old
}
attributes #0 = { alwaysinline }
"""


def body_cost(stmt) -> int:
    """Statements one run of `stmt` executes (loops multiply, branches take the larger side); symbolic loop extents
    count 1. After lowering, a conv tile's statements are its vector FMAs, so this is a rough cycle count."""
    if isinstance(stmt, tirx.BufferStore):
        return 1
    if isinstance(stmt, tirx.SeqStmt):
        return sum(body_cost(s) for s in stmt.seq)
    if isinstance(stmt, tirx.For):
        extent = stmt.extent.value if isinstance(stmt.extent, tirx.IntImm) else 1
        return extent * body_cost(stmt.body)
    if isinstance(stmt, tirx.IfThenElse):
        return max(body_cost(stmt.then_case), body_cost(stmt.else_case) if stmt.else_case is not None else 0)
    body = getattr(stmt, "body", None)
    return body_cost(body) if isinstance(body, tirx.Stmt) else 0


def _shared_loop(loop: tirx.For, cost: int) -> tirx.Stmt:
    """`loop` (parallel, from 0, `cost` = body_cost of its body) as K guided chunks taken from a counter (see the
    module docstring)."""
    extent = loop.extent
    dtype = str(extent.ty.dtype)

    def const(v: int) -> tirx.PrimExpr:
        return tirx.const(v, dtype)

    per_chunk = max(1, -(-CHUNK_COST // max(1, cost)))  # iterations of CHUNK_COST on average
    # MIN_CHUNKS..CHUNKS chunks, never more than iterations (a symbolic extent may be small at run time)
    chunks = tirx.min(extent, tirx.max(const(MIN_CHUNKS), tirx.min(const(CHUNKS),
                                                                   tirx.truncdiv(extent, const(per_chunk)))))
    counter = tirx.decl_buffer((1,), "int32", name="chunk_counter")
    current = tirx.decl_buffer((1,), "int32", name="chunk")

    def take() -> tirx.Stmt:
        fetched = tirx.call_extern("int32", FETCH_ADD, tirx.address_of(tirx.BufferLoad(counter, [0])),
                                   tirx.const(1, "int32"))
        return tirx.BufferStore(current, fetched, [0])

    def bound(k: tirx.PrimExpr) -> tirx.PrimExpr:
        # in int64 (an int32 extent times K^2 can overflow); truncdiv, not floordiv: nothing here is negative, and
        # TVM lowers a signed floordiv with Let bindings that its LLVM code generator rejected in bf16 kernels
        # ("Let cannot bind the same var to two different values")
        wide, left = tirx.Cast("int64", extent), tirx.Cast("int64", chunks - k)
        return extent - tirx.Cast(dtype, tirx.truncdiv(wide * left * left, tirx.Cast("int64", chunks * chunks)))

    chunk = tirx.Cast(dtype, tirx.BufferLoad(current, [0]))
    lo, hi = tirx.Var("chunk_begin", dtype), tirx.Var("chunk_end", dtype)
    # buffers the body allocates first (a register tile, a pad row) are allocated once per task, not per chunk:
    # TVM's parallel launch does the same for the original loop, and per chunk they were a heap call each
    allocs, rest = _leading_allocs(loop.body, loop.loop_var)
    i = tirx.Var(loop.loop_var.name, dtype)
    body = structural_map(rest, [(tirx.Var, lambda v: i if v.same_as(loop.loop_var) else v)])
    work = tirx.SeqStmt([tirx.Bind(lo, bound(chunk)), tirx.Bind(hi, bound(chunk + const(1))),
                         tirx.For(i, lo, hi - lo, tirx.ForKind.SERIAL, body)])
    task = tirx.Var("task", dtype)
    tasks = tirx.For(task, const(0), chunks, tirx.ForKind.PARALLEL,
                     tirx.SeqStmt([*allocs, tirx.AllocBuffer(current), take(),
                                   tirx.While(chunk < chunks, tirx.SeqStmt([work, take()]))]))
    return tirx.SeqStmt([tirx.AllocBuffer(counter), tirx.BufferStore(counter, tirx.const(0, "int32"), [0]), tasks])


def _leading_allocs(body: tirx.Stmt, loop_var: tirx.Var) -> tuple[list, tirx.Stmt]:
    """The AllocBuffer statements that open `body` (sizes independent of `loop_var`), and the rest of it."""
    if not isinstance(body, tirx.SeqStmt):
        return [], body
    seq = list(body.seq)
    n = 0
    while n < len(seq) - 1 and isinstance(seq[n], tirx.AllocBuffer) and not _uses(seq[n].buffer.shape, loop_var):
        n += 1
    rest = seq[n:]
    return seq[:n], (rest[0] if len(rest) == 1 else tirx.SeqStmt(rest))


def _uses(shape, var: tirx.Var) -> bool:
    found = []
    structural_walk(list(shape), [(tirx.Var, found.append)])
    return any(v.same_as(var) for v in found)


def _rewrite(func: tirx.PrimFunc) -> tirx.PrimFunc:
    def post(loop: tirx.For) -> tirx.Stmt:
        if loop.kind != tirx.ForKind.PARALLEL or not _is_zero(loop.min):
            return loop
        cost = body_cost(loop.body)
        return _shared_loop(loop, cost) if _worth(loop, cost) else loop

    body = structural_map(func.body, [(tirx.For, post)])
    if body.same_as(func.body):
        return func
    # one import of the helper per function, ahead of every call in it
    return func.with_body(tirx.AttrStmt(tvm.ir.StringImm(FETCH_ADD), "pragma_import_llvm", tvm.ir.StringImm(LLVM_IR),
                                        body))


def _worth(loop: tirx.For, cost: int) -> bool:
    """Whether a parallel loop whose body costs `cost` holds enough work for MIN_CHUNKS chunks of CHUNK_COST (a
    symbolic extent, a dynamic batch, counts as enough: it is the batched entry)."""
    if not isinstance(loop.extent, tirx.IntImm):
        return True
    return loop.extent.value * cost >= MIN_CHUNKS * CHUNK_COST


def _is_zero(e: tirx.PrimExpr) -> bool:
    return isinstance(e, tirx.IntImm) and e.value == 0


@tvm.transform.module_pass(opt_level=0, name="ConvhubWorkSharing")
def work_sharing(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Every parallel loop of every PrimFunc in `mod` (lowered, after MakePackedAPI) as chunks taken on demand."""
    out = {}
    for gv, func in mod.functions.items():
        out[gv] = _rewrite(func) if isinstance(func, tirx.PrimFunc) else func
    return tvm.IRModule(out, attrs=mod.attrs)


def _pipeline():
    from tvm.s_tir.pipeline import default_s_tir_pipeline
    lower, finalize_host, finalize_device = default_s_tir_pipeline()
    return tvm.transform.Sequential([lower, work_sharing]), finalize_host, finalize_device


def register() -> str:
    """Register TVM's default TIR pipeline followed by work_sharing as PIPELINE; returns the name."""
    from tvm.tirx import compilation_pipeline
    compilation_pipeline.PIPELINE_MAP[PIPELINE] = _pipeline
    return PIPELINE
