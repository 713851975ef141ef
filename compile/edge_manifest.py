"""The manifest next to an exported edge file: FILE.manifest.json.

Same kind of record as a TVM artifact's manifest.json (compile/artifact.py): source weights,
preprocessing, input/outputs, the file's sha256, and the parity figures measured on real photos.
"""
from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from hub.cache import atomic_write_bytes

from .artifact import sha256_file
from .edge_errors import ExportError

FORMAT = "convhub-edge-file"
FORMAT_VERSION = 1
SUFFIX = ".manifest.json"


def manifest_path(file: str | os.PathLike) -> Path:
    """Where the manifest of `file` lives: next to it, FILE.manifest.json."""
    p = Path(file)
    return p.with_name(p.name + SUFFIX)


def _version(pkg: str) -> str | None:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return None


def build_manifest(file: Path, module, *, fmt: str, quantize: str | None, input_shape: list[int | str],
                   outputs: dict[str, list[int | str]], pretrained: bool = True,
                   calibration: dict[str, Any] | None = None, verification: dict[str, Any] | None = None,
                   timings_s: dict[str, float] | None = None) -> dict[str, Any]:
    """The manifest of exported `file` from `module` (a hub.load result)."""
    pre = module.preprocess
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": module.model_name, "weights_sha256": getattr(module, "weights_sha256", None),
                  "weights_source": getattr(module, "weights_source", None), "pretrained": pretrained,
                  "stages": list(module.feature_info.names), "output": module.output},
        "file": {"name": file.name, "format": fmt, "bytes": file.stat().st_size, "sha256": sha256_file(file),
                 "precision": quantize or "fp32",
                 "runtime": "onnxruntime" if fmt == "onnx" else "ai-edge-litert (LiteRT, XNNPACK)"},
        "input": {"name": "input", "shape": input_shape, "dtype": "float32", "layout": "NCHW",
                  "preprocessing": {"resize_short_side": pre.resize, "center_crop": pre.input_size,
                                    "interpolation": pre.interpolation, "scale": "1/255", "mean": list(pre.mean),
                                    "std": list(pre.std), "color": "RGB"}},
        "outputs": [{"name": n, "shape": s, "dtype": "float32"} for n, s in outputs.items()],
        "quantization": {"mode": quantize or "none", "calibration": calibration},
        "verification": verification or {},
        "build": {"torch_version": _version("torch"), "onnx_version": _version("onnx"),
                  "onnxruntime_version": _version("onnxruntime"), "ai_edge_litert_version": _version("ai-edge-litert"),
                  "litert_torch_version": "0.10.0" if fmt == "tflite" else None,
                  "convhub_version": _version("convhub") or "source",
                  "host": f"{platform.system()} {platform.machine()}", "timings_s": timings_s or {}},
    }


def write_manifest(file: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """Write `manifest` next to `file` atomically; returns its path."""
    dest = manifest_path(file)
    atomic_write_bytes(dest, (json.dumps(manifest, indent=2) + "\n").encode())
    return dest


def read_manifest(file: str | os.PathLike, *, check: bool = True) -> dict[str, Any]:
    """The manifest of exported `file`; with `check`, the file must hash to the recorded sha256."""
    f = Path(file)
    m = manifest_path(f)
    try:
        manifest = json.loads(m.read_text())
    except FileNotFoundError:
        raise ExportError(f"{f} has no manifest ({m.name}); export it with `convhub export`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{m} is not valid JSON ({exc}); export the file again") from None
    if manifest.get("format") != FORMAT:
        raise ExportError(f"{m}: format {manifest.get('format')!r} is not {FORMAT!r}")
    if check:
        actual = sha256_file(f)
        if actual != manifest["file"]["sha256"]:
            raise ExportError(f"{f} does not match its manifest (sha256 {actual}, manifest says "
                              f"{manifest['file']['sha256']}); it was modified: export it again")
    return manifest
