"""Close the loop: an exported .tflite file -> TVM (tvm.relax.frontend.tflite) -> a verified TVM artifact.

The artifact has the same layout and manifest as `convhub compile` output (compile/artifact.py), built
with the compile package's presets and build functions, and is verified the same way (on this CPU, or
under qemu-aarch64 for the aarch64 presets) against the PyTorch module the .tflite came from.
"""
from __future__ import annotations

import json
import re
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .artifact import FORMAT, FORMAT_VERSION, MANIFEST, PARAMS, sha256_file, write_params
from .edge_errors import ExportError, UnsupportedOpError
from .errors import VerificationError

Log = Callable[[str], None]


def import_tflite(path: str | Path):
    """(Relax IRModule with params as trailing inputs of main, param arrays, param names) of a .tflite file."""
    import tflite

    from ._tvm import relax
    from tvm.relax.frontend.tflite import from_tflite

    buf = Path(path).read_bytes()
    try:
        mod = from_tflite(tflite.Model.GetRootAsModel(buf, 0))
    except Exception as exc:  # the frontend raises OpNotImplemented / tvm errors naming the TFLite op
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "not supported" in text.lower() or "OpNotImplemented" in type(exc).__name__:
            ops = re.findall(r"'([A-Z][A-Z_0-9]*)'", text)
            op = ("quantized " if "quantized" in text.lower() else "") + (", ".join(ops) if ops else text[:200])
            raise UnsupportedOpError(op, f"TVM {version('apache-tvm')}'s TFLite frontend", "",
                                     "import the fp32 .tflite instead, or compile the model from PyTorch "
                                     "(`convhub compile`)") from exc
        raise ExportError(f"TVM could not import {Path(path).name}: {text[:400]}") from exc
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    arrays = [p.numpy() for p in params.get("main", [])]
    if len(main.params) <= len(arrays):  # weights stayed constants inside main: nothing to pass at run time
        arrays = []
    names = [v.name for v in main.params[len(main.params) - len(arrays):]] if arrays else []
    return mod, arrays, names


def compile_tflite(tflite_path: str | Path, module: torch.nn.Module, *, target: str, out: str | Path,
                   photos: int = 2, log: Log = print) -> dict[str, Any]:
    """Build `tflite_path` for compile preset `target` into artifact directory `out`; verify against `module`.

    `module` is the hub module the file was exported from (the PyTorch reference). Returns the manifest;
    raises VerificationError (nothing left at `out`) when the artifact does not match PyTorch.
    """
    from .build import build_executable, export_library
    from .edge_runtime import TFLiteRunner
    from .targets import get_preset
    from .verify import run_parity

    preset = get_preset(target)
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists; remove it or choose another --out")
    tflite_path = Path(tflite_path)
    runner = TFLiteRunner(tflite_path, num_threads=1)
    out_names = runner.output_names
    in_shape = [int(d) for d in runner.input_shape]
    mod, arrays, names = import_tflite(tflite_path)
    log(f"[build] {tflite_path.name} -> TVM for {preset.name} ...")
    built = build_executable(mod, preset, database=None, prepack=False)
    ex = built[0] if isinstance(built, tuple) else built
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        export_library(ex, preset, tmp / preset.library_name)
        write_params(tmp / PARAMS, names, arrays)
        x = np.zeros(in_shape, np.float32)
        shapes = {n: [int(d) for d in a.shape] for n, a in runner(x).items()}
        manifest = _manifest(module, preset, tflite_path, in_shape, out_names, shapes, names)
        manifest["files"] = {f.name: sha256_file(f) for f in sorted(tmp.iterdir()) if f.is_file()}
        log(f"[verify] {preset.verification_text()} ...")
        report = run_parity(tmp, manifest, module, photos=photos, log=log)
        log(report.format())
        if report.status == "failed":
            raise VerificationError(f"{tflite_path.name} built for {preset.name} does not match PyTorch: "
                                    f"{report.reason}")
        manifest["verification"] = report.as_dict()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _manifest(module, preset, tflite_path: Path, in_shape: list[int], out_names: list[str],
              shapes: dict[str, list[int]], param_names: list[str]) -> dict[str, Any]:
    pre = module.preprocess
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": {"name": module.model_name, "weights_sha256": getattr(module, "weights_sha256", None),
                  "weights_source": getattr(module, "weights_source", None), "pretrained": True,
                  "stages": list(module.feature_info.names), "output": module.output,
                  "output_kind": "tensor" if module.output == "pooled" else "dict"},
        "source": {"kind": "tflite", "file": tflite_path.name, "sha256": sha256_file(tflite_path)},
        "target": {"preset": preset.name, "tvm_target": preset.target, "tvm_host": preset.host, "arch": preset.arch,
                   "device": preset.device, "export": preset.export, "library": preset.library_name,
                   "verification": preset.verify, "required_cpu_flags": list(preset.required_cpu_flags),
                   "description": preset.description},
        "input": {"name": "input", "shape": in_shape, "batch": {"min": in_shape[0], "max": in_shape[0]},
                  "dtype": "float32", "layout": "NCHW",
                  "preprocessing": {"resize_short_side": pre.resize, "center_crop": pre.input_size,
                                    "interpolation": pre.interpolation, "scale": "1/255", "mean": list(pre.mean),
                                    "std": list(pre.std), "color": "RGB"}},
        "outputs": [{"name": n, "shape": shapes[n], "dtype": "float32"} for n in out_names],
        "params": {"file": PARAMS, "count": len(param_names), "order": param_names},
        "params_transform": None,
        "tuning": {"database": None},
        "build": {"tvm_version": version("apache-tvm"), "tvm_ffi_version": version("apache-tvm-ffi"),
                  "torch_version": version("torch"), "host": "", "timings_s": {}},
    }
