"""ONNX Runtime backend: the hub module exported once (compile.onnx_export), cached, verified."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hub.cache import cache_dir

from ..errors import BackendError
from .base import POOLED, Backend, needed_stages, pooled_from

log = logging.getLogger("serve.backends")


def onnx_path(model: str, weights_sha256: str | None, output: str = "features") -> Path:
    """Cache location: <cache>/onnx/<model>-<weights sha256[:12]>-<output>.onnx."""
    tag = (weights_sha256 or "random")[:12]
    return cache_dir() / "onnx" / f"{model}-{tag}-{output}.onnx"


def _exporter():
    try:
        from compile.onnx_export import export_onnx
    except ImportError as exc:
        raise BackendError(f"ONNX export is not available (compile.onnx_export: {exc})") from None
    return export_onnx


def ensure_onnx(module: torch.nn.Module, model: str, max_batch: int) -> Path:
    """Export `module` (output="features") to the cache unless a file for these weights is there."""
    path = onnx_path(model, getattr(module, "weights_sha256", None))
    if path.is_file():
        return path
    export_onnx = _exporter()
    log.info("%s: exporting to ONNX once (cached at %s)", model, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # export into a temp name in the same folder, then rename: readers never see half a file
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx")
    os.close(fd)
    try:
        # one file for any configured batch: export with a generous symbolic maximum
        written = Path(export_onnx(module, tmp, dynamic_batch=True, max_batch=max(64, max_batch)))
        os.replace(written, path)
    except Exception as exc:
        raise BackendError(f"exporting {model} to ONNX failed: {exc}") from exc
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


class OnnxRuntimeBackend(Backend):
    """An InferenceSession on CPU over the exported graph (input "input", one output per stage)."""

    kind = "onnxruntime"

    def __init__(self, model: str, path: Path, stages: Sequence[str], *, threads: int | None = None,
                 max_batch: int = 64):
        import onnxruntime as ort

        super().__init__(model, stages)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle ORT threads would spin-wait for the next op and take the cores the HTTP stack needs between
        # batches; in a server they sleep instead (in-process speed unchanged within noise on this VM)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendError(f"ONNX Runtime could not load {path}: {exc}") from exc
        names = [o.name for o in self.session.get_outputs()]
        missing = [s for s in stages if s not in names]
        if missing:
            raise BackendError(f"{path} lacks outputs {missing} (has {names}); delete it to re-export")
        self.input_name = self.session.get_inputs()[0].name
        self.path = path
        meta = self.session.get_modelmeta().custom_metadata_map
        self.max_batch = min(max_batch, int(meta.get("convhub.max_batch", max_batch)))
        self.target = f"cpu ({threads or 'default'} threads, onnxruntime {ort.__version__})"

    def run(self, x: np.ndarray, outputs: Sequence[str]) -> dict[str, np.ndarray]:
        names = needed_stages(outputs, self.stages)  # ORT copies out only what is asked for
        got = dict(zip(names, self.session.run(names, {self.input_name: x})))
        return {o: pooled_from(got[self.stages[-1]]) if o == POOLED else got[o] for o in outputs}

    def close(self) -> None:
        self.session = None
