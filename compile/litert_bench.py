"""`convhub bench` backends for LiteRT files: "litert" (fp32), "litert-fp16", "litert-int8".

compile.bench imports this module and it registers the backends there. The .tflite files are
exported once per benchmark into its scratch folder (int8 calibrated on the sample photos, since a
benchmark has no user images); the files have batch 1, so a batch of B runs as B calls.
"""
from __future__ import annotations

from pathlib import Path

from .bench import BenchContext, Runner, register_backend
from .edge_runtime import TFLiteRunner


def _fp32_file(ctx: BenchContext) -> Path:
    if "tflite" not in ctx.cache or not Path(ctx.cache["tflite"]).exists():
        from .tflite_export import export_tflite
        ctx.cache["tflite"] = export_tflite(ctx.module, ctx.workdir / f"{ctx.name}.tflite")
    return Path(ctx.cache["tflite"])


def _quantized_file(ctx: BenchContext, mode: str) -> Path:
    key = f"tflite-{mode}"
    if key not in ctx.cache or not Path(ctx.cache[key]).exists():
        from .tflite_export import quantize_tflite
        from .verify import photo_batch
        from hub.samples import sample_photos
        calibration = photo_batch(ctx.name, len(sample_photos()))[1] if mode == "int8" else None
        ctx.cache[key] = quantize_tflite(_fp32_file(ctx), ctx.workdir / f"{ctx.name}-{mode}.tflite", quantize=mode,
                                         calibration=calibration)
    return Path(ctx.cache[key])


def _factory(mode: str):
    def make(ctx: BenchContext, batch: int) -> Runner:
        path = _fp32_file(ctx) if mode == "fp32" else _quantized_file(ctx, mode)
        runner = TFLiteRunner(path, num_threads=ctx.threads)
        loop = f", batch-1 file looped x{batch}" if batch > 1 else ""
        calib = ", calibrated on the sample photos" if mode == "int8" else ""
        return Runner(runner, note=f"ai-edge-litert XNNPACK, {mode}, {ctx.threads} threads{loop}{calib}")
    return make


for _mode, _name in (("fp32", "litert"), ("fp16", "litert-fp16"), ("int8", "litert-int8")):
    register_backend(_name, _factory(_mode))
