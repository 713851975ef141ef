"""`convhub export`: a hub model -> a verified ONNX or LiteRT file with its manifest.

Everything is written in a temporary sibling folder; the file and FILE.manifest.json are moved into
place only after the file has been run on real photos and compared with PyTorch.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np

from .edge_errors import FORMATS, QUANTIZATIONS, ExportError
from .edge_manifest import build_manifest, manifest_path, write_manifest
from .errors import VerificationError

Log = Callable[[str], None]
SUFFIXES = {"onnx": ".onnx", "tflite": ".tflite"}
# cosine against fp32 PyTorch that a file must reach on the photos to be written: fp32 must be exact up to
# float reassociation; fp16 weights and int8 are reported, with floors that only catch a broken conversion
COSINE_MIN = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.90}
DEFAULT_PHOTOS = 6


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class EdgeResult:
    """The written file, its manifest's path, and the manifest."""

    path: Path
    manifest_path: Path
    manifest: dict[str, Any]


def check_request(fmt: str, out: str | os.PathLike, quantize: str | None, calibration) -> Path:
    """Validate format/path/quantization before anything slow; returns the output path."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"unknown quantization {quantize!r}; accepted: {', '.join(QUANTIZATIONS)}")
    if quantize is not None and fmt != "tflite":
        raise ExportError(f"--quantize {quantize} is offered for --format tflite; ONNX files are exported in fp32")
    if calibration is not None and quantize != "int8":
        raise ExportError("--calibration is used only with --quantize int8 (fp32 and fp16 need no calibration)")
    out = Path(out)
    if out.suffix.lower() != SUFFIXES[fmt]:
        raise ExportError(f"--out for --format {fmt} must end in {SUFFIXES[fmt]}, got {str(out)!r}")
    if out.is_dir():
        raise ExportError(f"--out {str(out)!r} is a directory; give a file name ending in {SUFFIXES[fmt]}")
    return out


def latency_ms(run: Callable[[np.ndarray], Any], x: np.ndarray, *, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of run(x) in milliseconds."""
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def export_model(name: str, fmt: Literal["onnx", "tflite"], out: str | os.PathLike, *,
                 output: Literal["features", "pooled"] = "features", stages: Sequence[str] | str | None = None,
                 quantize: Literal["fp16", "int8"] | None = None, calibration: str | os.PathLike | None = None,
                 photos: int = DEFAULT_PHOTOS, max_batch: int = 64, max_calibration: int = 200,
                 float_model: str | os.PathLike | None = None, log: Log = _stderr) -> EdgeResult:
    """Export hub model `name` to `out` (.onnx or .tflite), verify it on real photos, write its manifest.

    float_model: with `quantize`, an fp32 .tflite of the same model (and its manifest) written by this
    function, quantized instead of converting from PyTorch again.

    Raises ExportError/CalibrationError/UnsupportedOpError for bad requests, VerificationError when the
    file does not compute what PyTorch computes (then nothing is written).
    """
    import hub

    from .edge_runtime import open_runner
    from .onnx_export import export_onnx
    from .quantize import classifier_head, top1_agreement
    from .edge_manifest import read_manifest
    from .tflite_export import export_tflite, load_calibration, quantize_tflite
    from .verify import compare, photo_batch, torch_outputs

    out = check_request(fmt, out, quantize, calibration)
    precision = quantize or "fp32"
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    module = hub.load(name, stages=stages, output=output, progress=False).eval()
    if float_model is not None:
        if quantize is None:
            raise ExportError("float_model= is for quantizing an existing fp32 .tflite; pass quantize='fp16' or 'int8'")
        src = read_manifest(float_model)
        same = (src["model"]["name"] == module.model_name and src["model"]["stages"] == module.feature_info.names
                and src["model"]["output"] == module.output and src["file"]["precision"] == "fp32"
                and src["model"]["weights_sha256"] == module.weights_sha256)
        if not same:
            raise ExportError(f"{float_model} is not an fp32 export of {module.model_name} with stages "
                              f"{module.feature_info.names}, output {module.output!r} and these weights")
    calib_x, calib_names = (load_calibration(calibration, module.preprocess, limit=max_calibration)
                            if quantize == "int8" else (None, []))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        log(f"[export] {name} -> {fmt} ({precision}) ...")
        t0 = time.perf_counter()
        if fmt == "onnx":
            path = export_onnx(module, tmp / out.name, max_batch=max_batch)
        elif float_model is not None:
            path = quantize_tflite(float_model, tmp / out.name, quantize=quantize, calibration=calib_x)
        else:
            path = export_tflite(module, tmp / out.name, quantize=quantize, calibration=calib_x)
        timings["export"] = round(time.perf_counter() - t0, 2)

        log(f"[verify] {fmt} ({precision}) against PyTorch fp32 on {photos} photos ...")
        t0 = time.perf_counter()
        runner = open_runner(path)
        photo_names, x = photo_batch(module.model_name, photos)
        out_names = runner.output_names
        reference = torch_outputs(module, x, out_names)
        got = runner(x)
        figures = compare(reference, got)
        threshold = COSINE_MIN[precision]
        bad = [n for n, f in figures.items() if not f["cosine"] >= threshold]
        head = classifier_head(module.model_name)
        verification: dict[str, Any] = {
            "status": "failed" if bad else "passed",
            "method": runner.format, "threshold": threshold, "photos": photo_names, "outputs": figures,
            "top1_agreement": top1_agreement(reference, got, module, head) if head else None,
            "latency_ms_batch1": round(latency_ms(runner, x[:1]), 3),
        }
        if calib_x is not None:
            ref_c = torch_outputs(module, calib_x, out_names)
            got_c = runner(calib_x)
            verification["calibration_images"] = {
                "count": len(calib_x), "outputs": compare(ref_c, got_c),
                "top1_agreement": top1_agreement(ref_c, got_c, module, head) if head else None}
        timings["verify"] = round(time.perf_counter() - t0, 2)
        for n, f in figures.items():
            log(f"  {n:<10} cosine {f['cosine']:.6f}  max abs error {f['max_abs_error']:.3g}")
        if verification["top1_agreement"] is not None:
            log(f"  top-1 agreement with fp32 (its ImageNet classifier): {verification['top1_agreement']:.0%}")
        if bad:
            raise VerificationError(f"{out.name} ({fmt}, {precision}) does not match PyTorch: cosine below "
                                    f"{threshold} for {', '.join(bad)}; nothing was written")

        batch_dim: int | str = "batch" if fmt == "onnx" and max_batch > 1 else 1
        shapes = {n: [batch_dim, *reference[n].shape[1:]] for n in out_names}
        pre = module.preprocess
        calib_info = ({"folder": str(Path(calibration).resolve()), "images": len(calib_names),
                       "files": calib_names[:50]} if calib_x is not None else None)
        timings["total"] = round(time.perf_counter() - t_start, 2)
        manifest = build_manifest(path, module, fmt=fmt, quantize=quantize,
                                  input_shape=[batch_dim, 3, pre.input_size, pre.input_size], outputs=shapes,
                                  calibration=calib_info, verification=verification, timings_s=timings)
        mpath = write_manifest(path, manifest)
        # the manifest first: whoever sees the file also finds its manifest
        os.replace(mpath, manifest_path(out))
        os.replace(path, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {manifest_path(out).name}")
    return EdgeResult(out, manifest_path(out), manifest)
