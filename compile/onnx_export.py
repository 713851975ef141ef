"""Export a hub feature extractor to one self-contained, checked ONNX file.

The graph has one input "input" (N x 3 x S x S float32, N dynamic) and one output per stage, named
after the stage ("pooled" for output="pooled"). The file is written to a temporary name and moved
into place only after `onnx.checker` accepts it, so a reader never sees half a model.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from .edge_errors import ExportError, UnsupportedOpError, op_from_message

# protobuf's hard limit for one message; above it weights must go to an external-data file
_PROTO_LIMIT = 2 * 1024**3
_SAFE_INLINE = int(_PROTO_LIMIT * 0.9)


def output_names(module: torch.nn.Module) -> list[str]:
    """The ONNX/TFLite output names of a hub module: its stage names, or ["pooled"]."""
    info = getattr(module, "feature_info", None)
    if info is None:
        raise ExportError(f"expected a hub feature extractor (hub.load(...)), got {type(module).__name__} "
                          "without .feature_info")
    return ["pooled"] if getattr(module, "output", "features") == "pooled" else list(info.names)


def example_input(module: torch.nn.Module, batch: int = 1) -> torch.Tensor:
    """A random input of the size the module's weights expect (preprocess.input_size, default 224)."""
    spec = getattr(module, "preprocess", None)
    size = int(getattr(spec, "input_size", 224))
    p = next(module.parameters(), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device, dtype)


def _param_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def _metadata(module: torch.nn.Module, max_batch: int | None) -> dict[str, str]:
    spec = getattr(module, "preprocess", None)
    meta = {
        "convhub.model": str(getattr(module, "model_name", "")),
        "convhub.output": str(getattr(module, "output", "features")),
        "convhub.stages": json.dumps(list(module.feature_info.names)),
        "convhub.weights_sha256": str(getattr(module, "weights_sha256", "") or ""),
    }
    if spec is not None:
        meta["convhub.preprocess"] = json.dumps(spec.model_dump() if hasattr(spec, "model_dump") else vars(spec),
                                                default=list)
    if max_batch is not None:
        meta["convhub.max_batch"] = str(max_batch)
    return meta


def export_onnx(module: torch.nn.Module, path: str | os.PathLike, *, opset: int | None = None,
                dynamic_batch: bool = True, max_batch: int = 64) -> Path:
    """Write `module` (a hub.load(...) result) as a checked ONNX file at `path`; returns the path.

    Input "input" (N x 3 x S x S), outputs named per stage ("pooled" for pooled output). With
    dynamic_batch the batch dimension is symbolic ("batch", 1..max_batch); otherwise it is fixed to 1.
    Models under ~1.8 GB are written as one self-contained file; larger ones get `<path>.data` next to it.
    """
    names = output_names(module)
    if not isinstance(max_batch, int) or max_batch < 1:
        raise ExportError(f"max_batch must be a positive integer, got {max_batch!r}")
    if opset is not None and not (isinstance(opset, int) and 18 <= opset <= 23):
        raise ExportError(f"opset must be an integer from 18 to 23 (the torch.onnx exporter's range), got {opset!r}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ExportError(f"ONNX output path must end in .onnx, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)

    dynamic = dynamic_batch and max_batch > 1
    # batch 2 in the example: torch.export specializes a dimension whose example size is 1
    x = example_input(module, batch=2 if dynamic else 1)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch", min=1, max=max_batch)}} if dynamic else None
    was_training = module.training
    module.eval()
    try:
        program = _run_exporter(module, x, names, opset, dynamic_shapes)
    finally:
        module.train(was_training)

    model = program.model_proto
    got = [o.name for o in model.graph.output]
    if got != names:
        raise ExportError(f"exported graph has outputs {got}, expected {names}")
    for key, value in _metadata(module, max_batch if dynamic else 1).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))

    inline = _param_bytes(module) < _SAFE_INLINE
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        if inline:
            onnx.save_model(model, tmp)
        else:
            onnx.save_model(model, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=1024)
        onnx.checker.check_model(str(tmp), full_check=True)  # the path form works above 2 GB too
        if not inline:  # data first: the .onnx that points at it appears last
            os.replace(tmp_dir / (path.name + ".data"), path.with_name(path.name + ".data"))
        os.replace(tmp, path)
    finally:
        for leftover in tmp_dir.iterdir():
            leftover.unlink()
        tmp_dir.rmdir()
    return path


def _run_exporter(module, x, names, opset, dynamic_shapes):
    # the exporter narrates every step on stdout and through warnings; keep library callers' output clean
    sink = io.StringIO()
    quiet = logging.getLogger("torch.onnx")
    old_level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            return torch.onnx.export(module, (x,), dynamo=True, input_names=["input"], output_names=names,
                                     opset_version=opset, dynamic_shapes=dynamic_shapes, external_data=False,
                                     optimize=True, verbose=False)
    except Exception as exc:  # the exporter raises many types; turn them into one clear message
        text = f"{type(exc).__name__}: {exc}"
        op = op_from_message(text)
        if op is not None and "no onnx function found" in text.lower():
            raise UnsupportedOpError(op, "onnx", "the torch.onnx exporter has no translation for it") from None
        raise ExportError(f"ONNX export of {getattr(module, 'model_name', type(module).__name__)} failed: "
                          f"{text.splitlines()[0][:500]}") from exc
    finally:
        quiet.setLevel(old_level)
