"""tvm.compile with the TIR -> LLVM step spread over threads.

`tvm.compile` lowers and code-generates every kernel in one LLVM module on one thread: ~70 % of a 2-minute
efficientnet-lite0 build on this 2-core VM. TVM releases the GIL inside `tirx.build`, so building the kernels
as N modules in N threads runs N LLVM instances at once (lite0: 88 s -> 54 s on 2 cores, docs/performance.md).
The first module imports the others; the VM finds kernels through the imports, and `export_library` links all
of them into the one shared library, as it does for device modules.

Only the driver of `relax.build` is re-done here (Relax pipeline, VM code generation, link), from TVM 0.27's
`relax.vm_build`; when those internals are missing (another TVM), `build` falls back to plain `tvm.compile`.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

from ._tvm import relax, tvm


def default_jobs() -> int:
    """Threads for code generation: CONVHUB_BUILD_JOBS, else the cores this process may use."""
    env = os.environ.get("CONVHUB_BUILD_JOBS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def split_kernels(tir_mod: "tvm.IRModule", parts: int) -> list["tvm.IRModule"]:
    """`tir_mod`'s PrimFuncs in at most `parts` modules of similar size (largest first, each to the lightest
    part; a kernel's TIR text length stands for its code-generation cost)."""
    funcs = sorted(((len(f.script()), gv, f) for gv, f in tir_mod.functions.items()),
                   key=lambda t: (-t[0], t[1].name_hint))
    groups: list[dict] = [{} for _ in range(max(1, min(parts, len(funcs))))]
    load = [0] * len(groups)
    for size, gv, f in funcs:
        i = load.index(min(load))
        groups[i][gv] = f
        load[i] += size
    return [tvm.IRModule(g, attrs=tir_mod.attrs) for g in groups]


def build(mod: "tvm.IRModule", target: "tvm.target.Target", relax_pipeline: "tvm.transform.Pass",
          jobs: int | None = None, tir_pipeline: str = "default") -> "relax.VMExecutable":
    """What `tvm.compile(mod, target, relax_pipeline=..., tir_pipeline=...)` returns, with kernels code-generated in
    `jobs` threads. `tir_pipeline`: a registered TIR pipeline name (compile.schedules.work_sharing registers one)."""
    jobs = jobs or default_jobs()
    try:
        from tvm.relax import vm_build
        codegen, filter_tir, link = vm_build._vmcodegen, vm_build._filter_tir, vm_build._ffi_api.VMLink
        is_device = vm_build._is_device_module
    except AttributeError:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline, tir_pipeline=tir_pipeline)
    if jobs <= 1:
        return tvm.compile(mod, target=target, relax_pipeline=relax_pipeline, tir_pipeline=tir_pipeline)
    with target:
        mod = relax_pipeline(mod)
    attrs = dict(mod.attrs) if mod.attrs else {}
    ext_libs = list(attrs.get("external_mods", []))
    params = dict(attrs.get("const_name_to_constant", {}))
    builder = relax.ExecBuilder()
    tir_mod = filter_tir(codegen(builder, mod, "bytecode"))
    lib = None
    if tir_mod is not None:
        parts = split_kernels(tir_mod, jobs)
        with ThreadPoolExecutor(len(parts), thread_name_prefix="tvm-codegen") as pool:
            libs = list(pool.map(lambda m: tvm.tirx.build(m, target=target, pipeline=tir_pipeline), parts))
        lib = libs[0]
        for other in libs[1:]:
            lib.import_module(other)
    host_libs = [m for m in ext_libs if not is_device(m)]
    for m in ext_libs:
        if is_device(m) and lib is not None:
            lib.import_module(m)
    return relax.VMExecutable(link(builder, target, lib, host_libs, params))
