"""`convhub export` (plugged into hub.cli through add_commands): ONNX / LiteRT files with manifests."""
from __future__ import annotations

import argparse

from .edge_errors import FORMATS, QUANTIZATIONS
from .errors import VerificationError


def cmd_export(args: argparse.Namespace) -> int:
    from .edge_export import export_model
    try:
        result = export_model(args.name, args.format, args.out, output=args.output, stages=args.stages or None,
                              quantize=args.quantize, calibration=args.calibration, photos=args.photos,
                              max_batch=args.max_batch, max_calibration=args.max_calibration)
    except VerificationError as exc:  # the job ran and failed: exit 1, not a usage error
        print(f"convhub: export failed: {exc}")
        return 1
    print(result.path)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `export` on convhub's subparsers."""
    p = sub.add_parser("export", help="export a hub model to ONNX or LiteRT (.tflite), verified, with a manifest",
                       description="hub model -> .onnx (torch.onnx, dynamic batch) or .tflite (litert-torch; fp32, "
                                   "fp16 weights, or int8 calibrated on your images) + FILE.manifest.json, run "
                                   "against PyTorch on real photos (fp32 cosine >= 0.9999).")
    p.add_argument("name", help="registry model name (see `convhub list`)")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx or tflite")
    p.add_argument("--out", required=True, help="file to write (.onnx or .tflite); its manifest goes next to it")
    p.add_argument("--output", choices=("features", "pooled"), default="features",
                   help="per-stage feature maps (default) or the pooled last stage, as hub.load(output=...)")
    p.add_argument("--stages", help="comma-separated stage names, as hub.load(stages=...)")
    p.add_argument("--quantize", choices=QUANTIZATIONS,
                   help="tflite only: fp16 (float16 weights) or int8 (needs --calibration)")
    p.add_argument("--calibration", metavar="DIR", help="folder of real images for int8 calibration")
    p.add_argument("--max-calibration", type=int, default=200, help="at most this many calibration images (200)")
    p.add_argument("--max-batch", type=int, default=64, help="onnx: largest batch recorded for the dynamic batch")
    p.add_argument("--photos", type=int, default=6, help="sample photos for the parity check (default 6)")
    p.set_defaults(func=cmd_export)
