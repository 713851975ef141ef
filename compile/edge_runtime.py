"""Run exported edge files: ONNX with onnxruntime, .tflite with the ai-edge-litert interpreter (XNNPACK).

Both runners are callables numpy float32 N x 3 x S x S -> {output name: array}, in the file's output order.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .edge_errors import ExportError


def _threads(num_threads: int | None) -> int:
    return int(num_threads or os.cpu_count() or 1)


class OnnxRunner:
    """An onnxruntime CPU session over an exported .onnx file."""

    format = "onnx"

    def __init__(self, path: str | os.PathLike, *, num_threads: int | None = None):
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _threads(num_threads)
        opts.inter_op_num_threads = 1
        # idle worker threads otherwise spin for a while after each run, taking the cores from whatever runs
        # next (another model, another runtime): on a shared or small CPU that costs more than it saves
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.output_names, outs))


class TFLiteRunner:
    """The LiteRT interpreter (XNNPACK delegate on CPU) over a .tflite file; batches run one image at a time."""

    format = "tflite"

    def __init__(self, path: str | os.PathLike, *, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter
        self.path = Path(path)
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=_threads(num_threads))
        sigs = self.interpreter.get_signature_list()
        if "serving_default" not in sigs:
            raise ExportError(f"{self.path} has no 'serving_default' signature (signatures: {list(sigs)}); "
                              "was it written by `convhub export`?")
        self.runner = self.interpreter.get_signature_runner("serving_default")
        self.input_name = sigs["serving_default"]["inputs"][0]
        # the signature lists outputs alphabetically; stage order is what the file's tensors are in
        order = {d["name"]: i for i, d in enumerate(self.interpreter.get_output_details())}
        outs = sigs["serving_default"]["outputs"]
        self.output_names = sorted(outs, key=lambda n: min((i for k, i in order.items() if f"_{n}_" in f"{k}_"),
                                                           default=len(order)))
        detail = self.runner.get_input_details()[self.input_name]
        self.input_shape = tuple(int(d) for d in detail["shape"])
        # a fully int8 file (ai-edge-quantizer's static recipe) takes and gives int8: (dtype, scale, zero point)
        self.input_quant = _quant(detail)
        self.output_quant = {n: _quant(d) for n, d in self.runner.get_output_details().items()}

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.input_quant is not None:
            dtype, scale, zp = self.input_quant
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(dtype)
        per = self.input_shape[0]
        chunks = [self.runner(**{self.input_name: x[i : i + per]}) for i in range(0, len(x), per)]
        out = {}
        for n in self.output_names:
            y = np.concatenate([c[n] for c in chunks])
            q = self.output_quant.get(n)
            out[n] = (y.astype(np.float32) - q[2]) * q[1] if q is not None else y
        return out

    @property
    def io_dtype(self) -> str:
        return "float32" if self.input_quant is None else np.dtype(self.input_quant[0]).name


def _quant(detail: dict) -> tuple[type, float, int] | None:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "iu":
        return None
    scale, zp = detail.get("quantization", (0.0, 0))
    if not scale:
        params = detail.get("quantization_parameters", {})
        scale, zp = float(params["scales"][0]), int(params["zero_points"][0])
    return dtype.type, float(scale), int(zp)


def open_runner(path: str | os.PathLike, *, num_threads: int | None = None) -> OnnxRunner | TFLiteRunner:
    """A runner for `path`, chosen by its suffix (.onnx or .tflite)."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"{p} does not exist")
    kinds = {".onnx": OnnxRunner, ".tflite": TFLiteRunner}
    if p.suffix.lower() not in kinds:
        raise ExportError(f"cannot run {p}: expected a .onnx or .tflite file")
    return kinds[p.suffix.lower()](p, num_threads=num_threads)
