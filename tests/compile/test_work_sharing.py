"""compile.schedules.work_sharing: parallel loops take guided chunks from an atomic counter.

Real TVM builds, run on this machine's thread pool: every iteration runs exactly once (kernels that add into their
output would show a chunk run twice or skipped), static and symbolic extents, small loops left alone, and a conv net
built with shared chunks gives the same bits as with TVM's fixed shares.
"""
from __future__ import annotations

import platform

import numpy as np
import pytest

from compile._tvm import tvm
from compile.schedules import work_sharing

X86 = platform.machine() in ("x86_64", "AMD64")


def _accumulate(rows: int | None):
    """b[i, :] += a[i, :] over a parallel loop of `rows` iterations (None: a symbolic number of rows)."""
    from tvm.script import tirx as T

    n = rows if rows is not None else tvm.tirx.Var("n", "int64")

    @T.prim_func(s_tir=True)
    def func(a: T.Buffer((n, 64), "float32"), b: T.Buffer((n, 64), "float32")):
        for i in T.parallel(n):
            for j in T.vectorized(64):
                with T.sblock("acc"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    b[vi, vj] = b[vi, vj] + a[vi, vj]

    return func


def _build(func):
    target = tvm.target.Target({"kind": "llvm"})
    return tvm.tirx.build(tvm.IRModule({"main": func}), target, pipeline=work_sharing.register())


def _run_once(lib, rows: int) -> None:
    a = np.random.default_rng(rows).random((rows, 64), dtype=np.float32) + 1
    b = tvm.runtime.tensor(np.zeros_like(a))
    lib["main"](tvm.runtime.tensor(a), b)
    np.testing.assert_array_equal(b.numpy(), a, err_msg=f"{rows} rows: some rows ran twice or not at all")


def _atomics(lib) -> int:
    return lib.inspect_source("asm").count("lock") if X86 else -1


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Chunks of one statement: every loop is shared, into as many chunks as it allows."""
    monkeypatch.setattr(work_sharing, "CHUNK_COST", 1)
    monkeypatch.setattr(work_sharing, "MIN_CHUNKS", 1)


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 17, 100, 1001])
def test_every_iteration_runs_exactly_once(tiny_chunks, rows):
    lib = _build(_accumulate(rows))
    _run_once(lib, rows)
    if X86 and rows > 1:
        assert _atomics(lib) > 0, "the loop was not rewritten into shared chunks"


def test_chunk_bounds_do_not_overflow_on_long_loops(tiny_chunks):
    """16 chunks over 2^24 iterations: extent x K^2 is past int32, so the bounds are computed in int64."""
    from tvm.script import tirx as T

    n = 1 << 24

    @T.prim_func(s_tir=True)
    def func(a: T.Buffer((n,), "float32"), b: T.Buffer((n,), "float32")):
        for i in T.parallel(n):
            with T.sblock("acc"):
                vi = T.axis.remap("S", [i])
                b[vi] = b[vi] + a[vi]

    a = np.arange(n, dtype=np.float32)
    b = tvm.runtime.tensor(np.zeros_like(a))
    _build(func)["main"](tvm.runtime.tensor(a), b)
    np.testing.assert_array_equal(b.numpy(), a)


def test_symbolic_extent_is_shared_at_any_size():
    lib = _build(_accumulate(None))  # default chunk sizes: a symbolic loop is always shared
    if X86:
        assert _atomics(lib) > 0
    for rows in (1, 2, 3, 7, 64, 999):
        _run_once(lib, rows)


def test_small_static_loops_keep_fixed_shares():
    small = _build(_accumulate(8))  # 8 statements: far below MIN_CHUNKS chunks of CHUNK_COST
    _run_once(small, 8)
    large_rows = work_sharing.MIN_CHUNKS * work_sharing.CHUNK_COST
    large = _build(_accumulate(large_rows))
    _run_once(large, large_rows)
    if X86:
        assert _atomics(small) == 0
        assert _atomics(large) > 0


def test_body_cost_multiplies_loops_and_takes_the_larger_branch():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def func(a: T.Buffer((4, 8, 16), "float32"), c: T.Buffer((1,), "int32")):
        for i in T.parallel(4):
            for j, k in T.grid(8, 16):
                with T.sblock("w"):
                    vi, vj, vk = T.axis.remap("SSS", [i, j, k])
                    if c[0] > 0:
                        a[vi, vj, vk] = T.float32(1)
                    else:
                        a[vi, vj, vk] = T.float32(2)

    seen = []

    def capture(mod, _ctx):
        from tvm_ffi.structural import structural_walk
        for f in mod.functions.values():
            structural_walk(f.body, [(tvm.tirx.For, lambda s: seen.append(work_sharing.body_cost(s.body))
                                      if s.kind == tvm.tirx.ForKind.PARALLEL else None)])
        return mod

    from tvm.s_tir.pipeline import default_s_tir_pipeline
    from tvm.tirx import compilation_pipeline
    lower, host, device = default_s_tir_pipeline()
    spy = tvm.transform.module_pass(capture, opt_level=0, name="Spy")
    compilation_pipeline.PIPELINE_MAP["convhub-test-spy"] = lambda: (tvm.transform.Sequential([lower, spy]), host,
                                                                      device)
    tvm.tirx.build(tvm.IRModule({"main": func}), tvm.target.Target({"kind": "llvm"}), pipeline="convhub-test-spy")
    assert seen == [8 * 16]


def test_conv_net_gives_the_same_bits_with_shared_chunks_and_fixed_shares():
    """A small conv net (stem, 1x1, depthwise, residual) through compile.cpu_pipeline at batch 1 (static entry) and
    batch 3 (dynamic entry): the shared build has atomics and the same outputs, bit for bit."""
    import torch
    from torch import nn

    from compile import parallel_build
    from compile._tvm import relax
    from compile.cpu_pipeline import cpu_pipeline
    from compile.targets import get_preset
    from compile.tuning import export_relax

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU6(), nn.Conv2d(32, 96, 1), nn.ReLU6(),
                        nn.Conv2d(96, 96, 3, 1, 1, groups=96), nn.ReLU6(), nn.Conv2d(96, 32, 1)).eval()
    target = get_preset("host").tvm_target()
    for batch in (1, 3):
        mod, params = export_relax(net, (batch, 3, 112, 112), "ws")
        x = np.random.default_rng(batch).standard_normal((batch, 3, 112, 112)).astype(np.float32)
        outs = {}
        for pipeline in (work_sharing.register(), "default"):
            ex = parallel_build.build(mod, target, cpu_pipeline(target), jobs=1, tir_pipeline=pipeline)
            vm = relax.VirtualMachine(ex, tvm.cpu())
            dev = list(vm["transform_params"]([tvm.runtime.tensor(p.numpy() if hasattr(p, "numpy") else p)
                                                for p in params]))
            res = vm["main"](tvm.runtime.tensor(x), *dev)
            outs[pipeline] = res.numpy() if hasattr(res, "numpy") else res[0].numpy()
            if X86:
                atomics = ex.mod.imports[0].inspect_source("asm").count("lock")
                assert (atomics > 0) == (pipeline != "default"), f"{pipeline}: {atomics} atomic adds"
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(outs["default"], ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(outs[work_sharing.PIPELINE], outs["default"])


def test_compile_model_refuses_an_unknown_parallel_mode(tmp_path):
    from compile.build import compile_model
    from compile.errors import CompileError

    with pytest.raises(CompileError, match="parallel must be one of shared, static"):
        compile_model("efficientnet-lite0", out=tmp_path / "a", parallel="dynamic")
    assert not (tmp_path / "a").exists()
    from compile.build import compile_relax
    with pytest.raises(ValueError, match="parallel must be one of shared, static, got 'dynamic'"):
        compile_relax(tvm.IRModule(), tvm.target.Target({"kind": "llvm"}), parallel="dynamic")
