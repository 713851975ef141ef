"""Export a hub feature extractor to a LiteRT (.tflite) file with litert-torch, optionally fp16 or int8.

The conversion runs in a subprocess of the converter environment (.venv/litert, made by
scripts/setup_litert.sh): litert-torch pulls xdsl, whose typing-extensions<4.13 pin would break
`import tvm` in the main environment (docs/edge.md). The main environment only needs the
ai-edge-litert interpreter to run the files.

The graph: input "input" (1 x 3 x S x S float32, NCHW as in PyTorch), one output per stage named after
it ("pooled" for pooled output). Quantized files keep float32 inputs and outputs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .edge_errors import QUANTIZATIONS, CalibrationError, ExportError, UnsupportedOpError, op_from_message
from .onnx_export import example_input, output_names

Quantize = Literal["fp16", "int8"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
DEFAULT_MAX_CALIBRATION = 200
MIN_CALIBRATION = 1
CONVERT_TIMEOUT_S = 3600
SETUP_HINT = "run `bash scripts/setup_litert.sh` (part of `make setup`)"


class _Named(torch.nn.Module):
    """Names the graph's input "input" and a single output "pooled": the converter takes the signature's
    names from forward's argument and from dict keys (a bare tensor would become "output_0")."""

    def __init__(self, module: torch.nn.Module, single_name: str):
        super().__init__()
        self.module = module
        self.single_name = single_name

    def forward(self, input: torch.Tensor):  # noqa: A002 - the name becomes the LiteRT signature input's
        out = self.module(input)
        return {self.single_name: out} if isinstance(out, torch.Tensor) else out


def converter_python() -> Path:
    """The interpreter of the litert-torch environment: $CONVHUB_LITERT_PYTHON or <venv>/litert/bin/python."""
    env = os.environ.get("CONVHUB_LITERT_PYTHON")
    path = Path(env) if env else Path(sys.prefix) / "litert" / "bin" / "python"
    if not path.is_file():
        where = "$CONVHUB_LITERT_PYTHON" if env else str(path)
        raise ExportError(f"the LiteRT converter (litert-torch) is not installed ({where} does not exist): {SETUP_HINT}")
    return path


def load_calibration(directory: str | os.PathLike | None, preprocess, *,
                     limit: int = DEFAULT_MAX_CALIBRATION) -> tuple[np.ndarray, list[str]]:
    """Images from `directory` (sorted by name, at most `limit`), preprocessed: (float32 N x 3 x S x S, names).

    Refuses (CalibrationError) when there is no directory or no readable image in it.
    """
    from PIL import Image, UnidentifiedImageError

    from hub.preprocess import ImagePreprocess

    accepted = ", ".join(IMAGE_SUFFIXES)
    if directory is None:
        raise CalibrationError("int8 quantization needs calibration data: pass a folder of real images "
                               f"(--calibration DIR; {accepted}), ideally 100-500 photos like the ones the model "
                               "will see. fp16 needs none.")
    d = Path(directory)
    if not d.is_dir():
        raise CalibrationError(f"calibration folder {str(d)!r} does not exist or is not a directory; "
                               f"expected a folder of images ({accepted})")
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    tf = ImagePreprocess(preprocess)
    arrays, names, unreadable = [], [], []
    for f in files:
        if len(arrays) >= limit:
            break
        try:
            with Image.open(f) as im:
                arrays.append(tf(im).numpy())
            names.append(f.name)
        except (UnidentifiedImageError, OSError):
            unreadable.append(f.name)
    if len(arrays) < MIN_CALIBRATION:
        bad = f" ({len(unreadable)} file(s) with image suffixes could not be read: {', '.join(unreadable[:5])})" \
            if unreadable else ""
        raise CalibrationError(f"calibration folder {str(d)!r} holds no readable image{bad}; "
                               f"expected image files ({accepted})")
    return np.stack(arrays).astype(np.float32), names


def export_tflite(module: torch.nn.Module, path: str | os.PathLike, *, quantize: Quantize | None = None,
                  calibration: str | os.PathLike | np.ndarray | None = None,
                  max_calibration: int = DEFAULT_MAX_CALIBRATION, timeout_s: float = CONVERT_TIMEOUT_S) -> Path:
    """Write `module` (a hub.load(...) result) as a LiteRT file at `path`; returns the path.

    quantize=None keeps float32; "fp16" stores weights as float16; "int8" quantizes weights and
    activations to int8 (static ranges), calibrated on `calibration`: a folder of images (preprocessed
    with the module's own preprocessing) or an already preprocessed float32 N x 3 x S x S array.
    Raises CalibrationError for int8 without usable images, UnsupportedOpError naming an op LiteRT
    cannot express, ExportError otherwise. The file appears at `path` only when complete.
    """
    names = output_names(module)
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZATIONS)} (or None for float32), got {quantize!r}")
    path = Path(path)
    if path.suffix.lower() != ".tflite":
        raise ExportError(f"LiteRT output path must end in .tflite, got {str(path)!r}")
    images = None
    if quantize == "int8":
        if isinstance(calibration, np.ndarray):
            images = _check_array(calibration, module)
        else:
            images, _ = load_calibration(calibration, module.preprocess, limit=max_calibration)
    converter_python()  # before the slow steps: a missing converter environment is reported first

    x = example_input(module, batch=1).float().cpu()
    wrapped = _Named(module, names[0]).eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(wrapped, (), {"input": x})
    except Exception as exc:  # torch.export's own errors are long; keep the first line
        text = f"{type(exc).__name__}: {exc}"
        raise ExportError(f"torch.export could not capture {getattr(module, 'model_name', '')!r} for LiteRT: "
                          f"{text.splitlines()[0][:400]}") from exc
    foreign = _non_aten_ops(program)
    return _run_worker([], path, quantize, images, foreign, timeout_s, program=program)


def quantize_tflite(float_model: str | os.PathLike, path: str | os.PathLike, *, quantize: Quantize,
                    calibration: str | os.PathLike | np.ndarray | None = None, preprocess=None,
                    max_calibration: int = DEFAULT_MAX_CALIBRATION, timeout_s: float = CONVERT_TIMEOUT_S) -> Path:
    """Quantize an fp32 .tflite written by export_tflite into `path` (no second conversion from PyTorch).

    For int8, `calibration` is a folder of images (then `preprocess`, a hub.registry.Preprocess such as
    module.preprocess, is required) or a preprocessed float32 N x 3 x S x S array.
    """
    if quantize not in QUANTIZATIONS:
        raise ExportError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
    float_model, path = Path(float_model), Path(path)
    if not float_model.is_file():
        raise ExportError(f"{float_model} does not exist; expected an fp32 .tflite written by export_tflite")
    if path.suffix.lower() != ".tflite":
        raise ExportError(f"LiteRT output path must end in .tflite, got {str(path)!r}")
    images = None
    if quantize == "int8":
        if isinstance(calibration, np.ndarray):
            images = calibration.astype(np.float32)
            if images.ndim != 4 or images.shape[1] != 3 or not len(images):
                raise CalibrationError(f"calibration array must be float32 N x 3 x H x W, got shape {images.shape}")
        else:
            if preprocess is None and calibration is not None:
                raise ExportError("calibration from a folder needs preprocess= (the model's hub preprocessing)")
            images, _ = load_calibration(calibration, preprocess, limit=max_calibration)
    return _run_worker(["--float-model", str(float_model.resolve())], path, quantize, images, [], timeout_s)


def _run_worker(source: list[str], path: Path, quantize: str | None, images: np.ndarray | None,
                foreign: list[str], timeout_s: float, program=None) -> Path:
    python = converter_python()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if program is not None:
            torch.export.save(program, tmp / "program.pt2")
            source = ["--program", str(tmp / "program.pt2")]
        cmd = [str(python), "-m", "compile._litert_worker", *source, "--out", str(tmp / path.name),
               "--quantize", quantize or "none"]
        if images is not None:
            np.save(tmp / "calibration.npy", images)
            cmd += ["--calibration", str(tmp / "calibration.npy")]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                           os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise ExportError(f"the LiteRT conversion did not finish within {timeout_s:.0f} s") from None
        if proc.returncode != 0:
            raise _worker_error(proc, foreign)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _check_array(images: np.ndarray, module: torch.nn.Module) -> np.ndarray:
    want = tuple(example_input(module).shape[1:])
    if images.ndim != 4 or tuple(images.shape[1:]) != want or len(images) < MIN_CALIBRATION:
        raise CalibrationError(f"calibration array must be float32 N x {' x '.join(map(str, want))} with N >= "
                               f"{MIN_CALIBRATION} (preprocessed images), got shape {images.shape}")
    return images.astype(np.float32)


def _non_aten_ops(program: torch.export.ExportedProgram) -> list[str]:
    """Operators outside PyTorch's own set (custom ops): the converter cannot know them."""
    ops = set()
    for node in program.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            ns = node.target.namespace
            if ns not in ("aten", "prims", "quantized_decomposed"):
                ops.add(f"{ns}.{node.target._opname}")
    return sorted(ops)


def _worker_error(proc: subprocess.CompletedProcess, foreign: list[str]) -> ExportError:
    report = None
    for line in proc.stderr.splitlines():
        if line.startswith("CONVHUB_ERROR "):
            report = json.loads(line[len("CONVHUB_ERROR "):])
    if report is None:  # crashed without reporting (killed, segfault)
        tail = proc.stderr.strip().splitlines()[-3:]
        return ExportError(f"the LiteRT converter exited with status {proc.returncode}: {' | '.join(tail)[:600]}")
    message, stage = report["message"], report["stage"]
    if foreign:  # a custom op: the converter's environment does not even have it registered
        return UnsupportedOpError(foreign[0], "tflite", "a custom operator, not one of PyTorch's own; "
                                  "litert-torch can only lower PyTorch (aten) operators")
    legal = re.search(r"failed to legalize operation '([^']+)'", message + report.get("trace", ""))
    op = op_from_message(message) or (legal.group(1) if legal else None)
    if stage == "convert" and op:
        return UnsupportedOpError(op, "tflite", f"litert-torch: {message.splitlines()[0][:300]}")
    first = message.strip().splitlines()[0][:500] if message.strip() else report["type"]
    return ExportError(f"LiteRT {stage} step failed ({report['type']}): {first}")
