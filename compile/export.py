"""A hub module -> torch.export (dynamic batch) -> a Relax IRModule with its parameters kept apart."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ._tvm import relax, tvm
from .errors import ExportError, UnsupportedOpError

BATCH = "batch"  # the symbolic batch dimension's name in manifests and in the Relax function


@dataclass
class ImportedModel:
    """The Relax module (parameters as trailing inputs of `main`) and everything the artifact records."""

    mod: "tvm.IRModule"
    params: list[np.ndarray]
    param_names: list[str]
    output_names: list[str]
    output_shapes: list[list[int | str]]  # BATCH in place of the batch dimension
    single_output: bool  # the PyTorch module returns a tensor rather than a dict


def export_program(module: torch.nn.Module, *, model_name: str, input_shape: tuple[int, int, int],
                   max_batch: int) -> tuple[torch.export.ExportedProgram, list[str], list[list[int | str]], bool]:
    """torch.export `module` with batch in [1, max_batch]; also returns output names/shapes in stage order.

    Dict outputs are flattened by torch.export in insertion order, which for FrozenFeatures is stage
    order (shallow to deep); the names recorded here are in that same order.
    """
    if max_batch < 1:
        raise ExportError(f"max batch must be >= 1, got {max_batch}")
    module = module.eval()
    # An example batch of 2 keeps torch.export from specialising the batch dimension to 1.
    example = torch.zeros((min(2, max_batch), *input_shape), dtype=torch.float32)
    with torch.no_grad():
        out = module(example)
    if isinstance(out, dict):
        names, tensors, single = [str(k) for k in out], list(out.values()), False
    elif isinstance(out, torch.Tensor):
        names, tensors, single = ["pooled" if out.dim() == 2 else "output"], [out], True
    else:
        raise ExportError(f"{model_name}: the module returns {type(out).__name__}; expected a tensor or a dict "
                          "of tensors (a hub.load module)")
    shapes = [[BATCH, *t.shape[1:]] for t in tensors]
    dynamic = None
    if max_batch > 1:
        dynamic = ({0: torch.export.Dim(BATCH, min=1, max=max_batch)},)
    try:
        ep = torch.export.export(module, (example,), dynamic_shapes=dynamic)
    except Exception as exc:  # torch's messages are long; keep the first line and the model name
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"torch.export could not capture {model_name!r} with a dynamic batch of 1..{max_batch}: "
                          f"{first}") from exc
    return ep, names, shapes, single


def unsupported_ops(ep: torch.export.ExportedProgram) -> list[str]:
    """ATen operators in `ep` (already decomposed) that TVM's importer has no converter for."""
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter
    known = ExportedProgramImporter().create_convert_map()
    return sorted({n.target.__name__ for n in ep.graph.nodes
                   if n.op == "call_function" and getattr(n.target, "__name__", str(n.target)) not in known})


def import_program(ep: torch.export.ExportedProgram, *, model_name: str) -> tuple["tvm.IRModule", list[np.ndarray],
                                                                                 list[str]]:
    """Relax module with params as inputs (detached), params as numpy, param names in call order."""
    from tvm.relax.frontend.torch import from_exported_program
    ep = ep.run_decompositions()
    missing = unsupported_ops(ep)
    if missing:
        raise UnsupportedOpError(model_name, missing)
    try:
        mod = from_exported_program(ep, keep_params_as_input=True, unwrap_unit_return_tuple=True,
                                    run_ep_decomposition=False)
    except (AssertionError, NotImplementedError, ValueError, TypeError) as exc:
        ops = re.findall(r"'([\w.]+)'", str(exc)) if "Unsupported" in str(exc) else []
        raise UnsupportedOpError(model_name, ops or ["(see detail)"], str(exc).splitlines()[0][:300]) from exc
    mod, params = relax.frontend.detach_params(mod)
    main = mod["main"]
    num_input = int(main.attrs["num_input"])
    names = [v.name for v in main.params[num_input:]]
    arrays = [p.numpy() for p in params.get("main", [])]
    if len(arrays) != len(names):
        raise ExportError(f"{model_name}: TVM returned {len(arrays)} parameters for {len(names)} inputs")
    return mod, arrays, names


def export_and_import(module: torch.nn.Module, *, model_name: str, input_shape: tuple[int, int, int],
                      max_batch: int) -> ImportedModel:
    """Both steps: torch.export then TVM's importer."""
    ep, names, shapes, single = export_program(module, model_name=model_name, input_shape=input_shape,
                                               max_batch=max_batch)
    mod, params, param_names = import_program(ep, model_name=model_name)
    return ImportedModel(mod, params, param_names, names, shapes, single)
