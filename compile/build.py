"""`convhub compile`: hub model -> torch.export -> Relax -> tvm.compile -> verified artifact directory.

Everything is written into a temporary sibling of the output directory and renamed into place only
after verification passed, so a failed or interrupted compile never leaves a half artifact behind.
"""
from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

from .artifact import FORMAT, FORMAT_VERSION, MANIFEST, PARAMS, sha256_file, write_params
from .errors import BuildError, CompileError, VerificationError
from .targets import CROSS_CXX, Preset, get_preset

Log = Callable[[str], None]
DEFAULT_MAX_BATCH = 16
INIT_SEED = 0  # models compiled without pretrained weights are initialised from this seed (reproducible)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class BuildResult:
    """Where the artifact went and what its manifest says."""

    path: Path
    manifest: dict[str, Any]

    @property
    def verification(self) -> dict[str, Any]:
        return self.manifest["verification"]


@contextmanager
def _step(log: Log, timings: dict[str, float], key: str, what: str) -> Iterator[None]:
    log(f"[{key}] {what} ...")
    t0 = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - t0, 2)
    log(f"[{key}] done in {timings[key]:.1f} s")


def _check_tools(preset: Preset) -> None:
    """Fail before the slow steps when a tool the preset needs is missing."""
    from .aarch64 import require_cross_compiler, require_qemu
    if preset.export == "cross-g++" or (preset.verify == "qemu" and preset.export == "tar"):
        require_cross_compiler()
    if preset.verify == "qemu":
        require_qemu()


def tuning_database(model_name: str, preset: Preset, input_shape: tuple[int, ...]) -> tuple[Path | None, bool]:
    """(MetaSchedule work_dir from compile.tuning.find_database, cpu_weight_prepack), or (None, False).

    compile.tuning is optional (another module owns tuning); when absent every build is untuned.
    Tuned records match by the structural hash of each fused kernel, which includes the static input shape:
    a database only applies to a static-batch export (--max-batch 1 gives batch exactly 1).
    """
    try:
        tuning = importlib.import_module(f"{__package__}.tuning")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.tuning":
            return None, False
        raise
    find = getattr(tuning, "find_database", None)
    if find is None:
        return None, False
    try:
        db = find(model_name, preset.name, input_shape, target=preset.target)
    except TypeError:  # a find_database without the optional target= keyword
        db = find(model_name, preset.name, input_shape)
    if db is None or not Path(db).is_dir():
        return None, False
    return Path(db), bool(getattr(tuning, "CPU_WEIGHT_PREPACK", True))


def _module_kinds(mod) -> set[str]:
    kinds, stack = set(), [mod]
    while stack:
        m = stack.pop()
        kinds.add(m.kind)
        stack.extend(m.imports)
    return kinds


SCHEDULES = ("rules", "tuned", "stock")
PRECISIONS = ("fp32", "bf16")
PARALLEL = ("shared", "static")  # parallel loops: chunks taken on demand (schedules.work_sharing), or fixed shares


def compile_relax(mod, target, *, database: Path | None = None, prepack: bool = False, schedule: str = "rules",
                  precision: str = "fp32", stats: dict | None = None, parallel: str = "shared"):
    """tvm.compile with the Relax pipeline `schedule` asks for; TVM's own errors pass through.

    With a database: the static_shape_tuning pipeline with total_trials=0 and the database as work_dir (the only
    way a saved log re-applies, DESIGN.md), then the standard lowering. llvm targets with schedule="rules":
    compile.cpu_pipeline (NHWC, weights packed at load time, our schedule rules on every kernel), kernels
    code-generated in parallel threads (compile.parallel_build), their parallel loops handing out work on demand
    (compile.schedules.work_sharing) unless `parallel` is "static" (TVM's fixed shares). Otherwise
    get_default_pipeline(target) (the "default" string does not fuse on CPU, and a pipeline object without
    dlight silently drops the CUDA module).
    """
    from ._tvm import relax, tvm
    if parallel not in PARALLEL:
        raise ValueError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    if database is not None:
        from .tuning import apply_database
        return tvm.compile(apply_database(mod, target, database, prepack=prepack), target=target)
    if schedule == "rules" and target.kind.name == "llvm":
        from . import parallel_build
        from .cpu_pipeline import cpu_pipeline
        from .schedules import work_sharing
        tir = work_sharing.register() if parallel == "shared" else "default"
        return parallel_build.build(mod, target, cpu_pipeline(target, precision, stats), tir_pipeline=tir)
    return tvm.compile(mod, target=target, relax_pipeline=relax.get_default_pipeline(target))


def build_executable(mod, preset: Preset, *, database: Path | None, prepack: bool, schedule: str = "rules",
                     precision: str = "fp32", stats: dict | None = None, parallel: str = "shared"
                     ) -> tuple[Any, str | None, str | None]:
    """(executable, name of its params-transform function or None, name of its batch-1 entry or None), checking
    that device code exists. `stats` receives the conv counts of the CPU pipeline (compile.cpu_pipeline)."""
    try:
        ex = compile_relax(mod, preset.tvm_target(), database=database, prepack=prepack, schedule=schedule,
                           precision=precision, stats=stats, parallel=parallel)
    except Exception as exc:  # TVM raises its own error types with C++ traces; keep the gist
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BuildError(f"TVM could not build for {preset.name}: {first[:500]}") from exc
    names = relax_functions(ex)  # the executable's text, once: it holds every kernel's code
    transform, batch1 = params_transform_of(ex, names), batch1_entry(names)
    if preset.device != "cpu":
        kinds = _module_kinds(ex.mod)
        if preset.device not in kinds:
            raise BuildError(f"the {preset.name} build has no {preset.device} device module (modules: "
                             f"{sorted(kinds)}); the kernels would not run on the GPU")
    return ex, transform, batch1


def params_transform_of(ex, names: set[str] | None = None) -> str | None:
    """The name of the executable's weight-transform function (LiftTransformParams), or None.

    The VM executable lists its Relax functions only in its text form (`@name:` headers);
    runtime.Module.implements_function does not see them.
    """
    from .cpu_pipeline import PARAMS_TRANSFORM
    names = relax_functions(ex) if names is None else names
    # PARAMS_TRANSFORM: convhub's CPU pipeline (shared by main and main_batch1); "main_transform_params": the
    # per-function transform of MetaSchedule's static_shape_tuning pipeline (cpu_weight_prepack)
    return next((n for n in (PARAMS_TRANSFORM, "main_transform_params") if n in names), None)


def batch1_entry(names: set[str]) -> str | None:
    """The batch-1 copy of main (compile.cpu_pipeline) among an executable's Relax functions, or None."""
    from .cpu_pipeline import BATCH1_ENTRY
    return BATCH1_ENTRY if BATCH1_ENTRY in names else None


def relax_functions(ex) -> set[str]:
    """Names of the Relax functions in a VM executable."""
    import re
    return set(re.findall(r"@(\w+):", ex.as_text()))


def export_library(ex, preset: Preset, path: Path) -> None:
    """Write the compiled library: host .so, cross-compiled aarch64 .so, or an object .tar for the NDK."""
    from ._tvm import tvm
    if preset.export == "cross-g++":
        from .aarch64 import require_cross_compiler
        require_cross_compiler()
        ex.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(CROSS_CXX))
    else:  # "cc" builds with the host compiler; a .tar name makes TVM write objects instead of linking
        ex.export_library(str(path))


def _deploy_text(preset: Preset, manifest: dict[str, Any]) -> str:
    lib = preset.library_name
    common = ("Files: model library, params.safetensors (parameters in call order: metadata "
              "'convhub.param_order'), manifest.json (input/output spec, checksums, parity figures).\n"
              "Input: float32 NCHW, batch {lo}..{hi}, preprocessed as manifest.json 'input.preprocessing' says.\n"
              "Full steps: docs/compile.md in the convhub repository.\n\n").format(
        lo=manifest["input"]["batch"]["min"], hi=manifest["input"]["batch"]["max"])
    steps = {
        "cc": "Python: `compile.load(DIR)(x)`; C++: compile/aarch64/runner.cc built with g++ against the "
              "apache-tvm wheel's libtvm_runtime.so + libtvm_ffi.so.\n",
        "cross-g++": "Copy this directory plus the aarch64 libtvm_runtime.so, libtvm_ffi.so and convhub_runner "
                     "(see docs/compile.md) to the board and run:\n  ./convhub_runner DIR input.npy OUT_DIR\n",
        "tar": f"{lib} holds object files. Link them for the phone with the Android NDK:\n"
               f"  mkdir objs && tar -C objs -xf {lib}\n"
               "  $NDK/toolchains/llvm/prebuilt/linux-x86_64/bin/aarch64-linux-android29-clang++ -shared -fPIC "
               "-o model.so objs/*.o\n"
               "then build libtvm_runtime for Android (TVM's CMake with the NDK toolchain file; "
               + ("USE_OPENCL=ON" if preset.device == "opencl" else "CPU only") + ") and the runner (runner.cc) "
               "with the same NDK; push model.so, params.safetensors, the runtime and the runner with adb.\n",
    }
    gpu = {"cuda": "The CUDA kernels are embedded as CUDA C and compiled by NVRTC when the library loads: the "
                   "GPU machine needs the TVM runtime (the apache-tvm wheel) and NVRTC (CUDA 12).\n",
           "opencl": "Built, not verified here: the OpenCL kernels are embedded as source. The device needs a TVM "
                     "runtime built with USE_OPENCL=ON; check parity there with the runner "
                     "(`--device opencl`) against `compile.verify` figures computed on a host.\n"}.get(
        preset.device, "")
    return f"# Deploying {manifest['model']['name']} for {preset.name}\n\n{common}{steps[preset.export]}{gpu}"


def _chmod_like_umask(path: Path, mode: int) -> None:
    # mkdtemp and safetensors create private (0700/0600) entries; an artifact is meant to be shared.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise CompileError(f"{out} already exists and is not empty; choose another --out or pass --force to "
                           "replace it")


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished temporary directory into place (replacing an old artifact atomically enough)."""
    trash = None
    if out.exists():
        trash = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, trash)
    os.replace(tmp, out)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def compile_model(name: str, *, target: str = "host", out: str | os.PathLike[str],
                  output: Literal["features", "pooled"] = "features", stages: Sequence[str] | str | None = None,
                  max_batch: int = DEFAULT_MAX_BATCH, photos: int = 3, pretrained: bool = True,
                  force: bool = False, min_cosine: float | None = None, schedule: str = "rules",
                  precision: str = "fp32", parallel: str = "shared", log: Log = _stderr) -> BuildResult:
    """Compile hub model `name` for preset `target` into artifact directory `out`, verified against PyTorch.

    `min_cosine` defaults to the bar of the precision (compile.verify.cosine_bar: fp32 0.9999, bf16 0.999).
    `schedule`: "rules" (default; compile.cpu_pipeline on CPU presets), "tuned" (a MetaSchedule database from
    `convhub tune`, --max-batch 1) or "stock" (TVM's default pipeline, no schedules; for comparison). `precision`
    "bf16": convs on bf16-rounded activations and weights with fp32 sums (compile.schedules.bf16; CPUs with
    AVX512_BF16, schedule "rules"). `parallel` "static" keeps TVM's fixed per-thread shares of every parallel loop
    instead of chunks handed out on demand (compile.schedules.work_sharing; for comparison: results are the same
    bits either way). Raises UnknownTargetError, ToolchainMissingError, UnsupportedOpError,
    BuildError, VerificationError (cosine below the bar on real photos); on any failure nothing is left at `out`.
    """
    import hub
    from . import export as export_mod
    from .verify import run_parity

    preset = get_preset(target)  # first: an unknown preset is reported before anything slow
    if max_batch < 1:
        raise CompileError(f"--max-batch must be >= 1, got {max_batch}")
    if schedule not in SCHEDULES:
        raise CompileError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if parallel not in PARALLEL:
        raise CompileError(f"parallel must be one of {', '.join(PARALLEL)}, got {parallel!r}")
    _check_precision(precision, preset, schedule)
    if output not in ("features", "pooled"):
        raise CompileError(f"--output must be 'features' or 'pooled', got {output!r}")
    out = Path(out)
    _prepare_out(out, force)
    _check_tools(preset)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    with _step(log, timings, "load", f"hub.load({name!r}, stages={stages}, output={output!r})"):
        if not pretrained:
            import torch
            torch.manual_seed(INIT_SEED)
        module = hub.load(name, stages=stages, output=output, pretrained=pretrained, progress=False).eval()
        entry = hub.info(name)
        pre = entry.preprocess
        input_shape = (3, pre.input_size, pre.input_size)
    with _step(log, timings, "export", f"torch.export, batch 1..{max_batch}"):
        ep, out_names, out_shapes, single = export_mod.export_program(module, model_name=entry.name,
                                                                      input_shape=input_shape, max_batch=max_batch)
    with _step(log, timings, "import", "TVM Relax import (from_exported_program)"):
        mod, params, param_names = export_mod.import_program(ep, model_name=entry.name)
    database, prepack = None, False
    if schedule == "tuned":
        if max_batch != 1:
            raise CompileError("--schedule tuned needs --max-batch 1: MetaSchedule records are per static shape")
        database, prepack = tuning_database(entry.name, preset, (1, *input_shape))
        if database is None:
            raise CompileError(f"no tuned database for {entry.name} on {preset.name}; run `convhub tune` or use "
                               "--schedule rules (the default)")
    prepack = prepack and preset.device == "cpu"
    how = {"rules": "convhub schedule rules" if preset.device == "cpu" else "TVM default pipeline",
           "tuned": f"tuned: {database}", "stock": "TVM default pipeline, no schedules"}[schedule]
    stats: dict[str, int] = {}
    with _step(log, timings, "build", f"tvm.compile for {preset.name} ({how})"):
        ex, params_transform, batch1 = build_executable(mod, preset, database=database, prepack=prepack,
                                                        schedule=schedule, precision=precision, stats=stats,
                                                        parallel=parallel)
    if precision == "bf16":
        if not stats.get("bf16_convs"):
            raise CompileError(
                f"--precision bf16: no conv of {entry.name} qualifies ({stats.get('convs', 0)} convs; bf16 takes "
                "regular convs with an even number of input channels and depthwise convs on maps of 28x28 and "
                "larger, whose outputs reach an activation; not the 3-channel stem, linear layers or linear "
                "projections); compile it in fp32")
        log(f"[build] bf16: {stats['bf16_convs']} of {stats['convs']} convs (the rest: depthwise convs on small "
            "maps, stems, linear projections)")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _chmod_like_umask(tmp, 0o777)
        with _step(log, timings, "write", f"library ({preset.library_name}) and parameters"):
            export_library(ex, preset, tmp / preset.library_name)
            write_params(tmp / PARAMS, param_names, params)
        manifest = _manifest(entry.name, module, preset, stages=[s.name for s in module.feature_info],
                             output=output, single=single, pretrained=pretrained, max_batch=max_batch,
                             input_shape=input_shape, preprocess=pre, out_names=out_names, out_shapes=out_shapes,
                             param_names=param_names, database=database, params_transform=params_transform,
                             batch1_entry=batch1,
                             schedule=schedule, precision=precision, conv_stats=stats,
                             parallel=parallel if schedule == "rules" and preset.device == "cpu" else None)
        manifest["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        with _step(log, timings, "verify", f"parity with PyTorch on {photos} photos"):
            report = run_parity(tmp, manifest, module, photos=photos, log=log, min_cosine=min_cosine)
        log(report.format())
        if report.status == "failed":
            raise VerificationError(f"{entry.name} for {preset.name} does not match PyTorch: {report.reason} "
                                    f"({report.format().splitlines()[-1].strip()}); no artifact was written")
        manifest["verification"] = report.as_dict()
        timings["total"] = round(time.perf_counter() - t_start, 2)
        manifest["build"]["timings_s"] = timings
        (tmp / "DEPLOY.md").write_text(_deploy_text(preset, manifest))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for f in tmp.iterdir():
            _chmod_like_umask(f, 0o666)
        _commit(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"artifact: {out} ({preset.name}, {report.status}, {timings['total']:.1f} s)")
    return BuildResult(out, manifest)


def _check_precision(precision: str, preset: Preset, schedule: str) -> None:
    """Refuse a precision the preset cannot run before anything slow."""
    if precision not in PRECISIONS:
        raise CompileError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return
    from .schedules.bf16 import BF16_MCPUS, supports_bf16
    if preset.device != "cpu" or schedule != "rules" or not supports_bf16(preset.tvm_target()):
        raise CompileError(
            f"--precision bf16 needs an x86 CPU preset with AVX512_BF16 (LLVM mcpu {', '.join(BF16_MCPUS)}, or "
            f"+avx512bf16 in mattr) and --schedule rules; {preset.name} targets {preset.target} with --schedule "
            f"{schedule}. On this machine: `convhub targets` shows what the host preset detected.")


def _manifest(name: str, module, preset: Preset, *, stages: list[str], output: str, single: bool, pretrained: bool,
              max_batch: int, input_shape: tuple[int, int, int], preprocess, out_names: list[str],
              out_shapes: list[list[int | str]], param_names: list[str], database: Path | None,
              params_transform: str | None, batch1_entry: str | None, schedule: str,
              precision: str = "fp32", conv_stats: dict[str, int] | None = None,
              parallel: str | None = None) -> dict[str, Any]:
    from .export import BATCH
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": name, "weights_sha256": getattr(module, "weights_sha256", None),
                  "weights_source": getattr(module, "weights_source", None), "pretrained": pretrained,
                  "init_seed": None if pretrained else INIT_SEED, "stages": stages, "output": output,
                  "output_kind": "tensor" if single else "dict"},
        "target": {"preset": preset.name, "tvm_target": preset.target, "tvm_host": preset.host, "arch": preset.arch,
                   "device": preset.device, "export": preset.export, "library": preset.library_name,
                   "verification": preset.verify, "required_cpu_flags": list(preset.required_cpu_flags),
                   "description": preset.description},
        "input": {"name": "input", "shape": [BATCH, *input_shape], "batch": {"min": 1, "max": max_batch},
                  "dtype": "float32", "layout": "NCHW",
                  "preprocessing": {"resize_short_side": preprocess.resize, "center_crop": preprocess.input_size,
                                    "interpolation": preprocess.interpolation, "scale": "1/255",
                                    "mean": list(preprocess.mean), "std": list(preprocess.std),
                                    "color": "RGB"}},
        "outputs": [{"name": n, "shape": s, "dtype": "float32"} for n, s in zip(out_names, out_shapes)],
        "params": {"file": PARAMS, "count": len(param_names), "order": param_names},
        "params_transform": params_transform,
        "batch1_entry": batch1_entry,  # main with the batch bound to 1, run for single images (compile.artifact)
        "tuning": {"schedule": schedule, "database": str(database) if database else None},
        # bf16: conv inputs and weights rounded to bfloat16, sums and everything else fp32 (compile.schedules.bf16)
        "precision": precision,
        "convs": dict(conv_stats or {}),  # {"convs": N, "bf16_convs": M} from the CPU pipeline; {} elsewhere
        # "shared": parallel loops take chunks on demand (compile.schedules.work_sharing); "static": TVM's fixed
        # shares; None: not a CPU rules build
        "parallel": parallel,
        "build": {"tvm_version": version("apache-tvm"), "tvm_ffi_version": version("apache-tvm-ffi"),
                  "torch_version": version("torch"), "convhub_version": _convhub_version(),
                  "host": f"{platform.system()} {platform.machine()}", "timings_s": {}},
    }


def _convhub_version() -> str:
    try:
        return version("convhub")
    except Exception:  # running from a source tree that is not installed
        return "source"
