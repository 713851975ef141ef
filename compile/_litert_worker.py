"""Runs inside the converter environment (.venv/litert, see scripts/setup_litert.sh), never imported by convhub.

python -m compile._litert_worker --program P.pt2 --out OUT.tflite [--quantize fp16|int8 --calibration C.npy]
python -m compile._litert_worker --float-model F.tflite --out OUT.tflite --quantize fp16|int8 [--calibration C.npy]

Reads an ExportedProgram saved by compile.tflite_export, converts it with litert-torch, optionally
quantizes the result with ai-edge-quantizer, writes OUT. On failure prints one line
`CONVHUB_ERROR {"stage": ..., "type": ..., "message": ...}` on stderr and exits 3.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback


def _fail(stage: str, exc: BaseException) -> None:
    text = "".join(traceback.format_exception(exc))
    print("CONVHUB_ERROR " + json.dumps({"stage": stage, "type": type(exc).__name__,
                                         "message": str(exc)[:4000], "trace": text[-6000:]}),
          file=sys.stderr, flush=True)
    sys.exit(3)


def _quantize(float_path: str, out: str, mode: str, calibration: str | None) -> None:
    import numpy as np
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    qt = quantizer.Quantizer(float_path)
    if mode == "int8":
        qt.load_quantization_recipe(recipe.static_wi8_ai8())
        images = np.load(calibration)
        # one signature input dict per image: the interpreter collects min/max over all of them
        data = {"serving_default": [{"input": images[i : i + 1]} for i in range(len(images))]}
        result = qt.calibrate(data, num_threads=2)
        qt.quantize(result, enable_progress_report=False).export_model(out, overwrite=True)
    else:  # fp16: weights stored as float16, computed in float32 (what XNNPACK runs fastest on CPUs without fp16)
        qt.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=AlgorithmName.FLOAT_CASTING)
        qt.quantize(enable_progress_report=False).export_model(out, overwrite=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--program")
    ap.add_argument("--float-model")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quantize", choices=["none", "fp16", "int8"], default="none")
    ap.add_argument("--calibration")
    args = ap.parse_args()
    if args.float_model:  # quantize an existing float32 file: no conversion
        try:
            _quantize(args.float_model, args.out, args.quantize, args.calibration)
        except BaseException as exc:  # noqa: BLE001
            _fail("quantize", exc)
        return

    try:
        import torch
        import litert_torch

        program = torch.export.load(args.program)
        sample = {"input": torch.zeros(*[int(d) for d in program.example_inputs[1]["input"].shape])}
    except BaseException as exc:  # noqa: BLE001 - reported to the parent process as one line
        _fail("load", exc)
    float_out = args.out if args.quantize == "none" else args.out + ".float.tflite"
    try:
        edge = litert_torch.signature("serving_default", program.module(), sample_kwargs=sample).convert()
        edge.export(float_out)
    except BaseException as exc:  # noqa: BLE001
        _fail("convert", exc)
    if args.quantize != "none":
        try:
            _quantize(float_out, args.out, args.quantize, args.calibration)
        except BaseException as exc:  # noqa: BLE001
            _fail("quantize", exc)


if __name__ == "__main__":
    main()
