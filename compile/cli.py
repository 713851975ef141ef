"""`convhub compile` and `convhub targets` (plugged into hub.cli through add_commands).

`convhub verify DIR` belongs to hub.cli, which calls compile.verify.verify_artifact for artifact directories.
"""
from __future__ import annotations

import argparse

from .build import DEFAULT_MAX_BATCH, PRECISIONS, SCHEDULES
from .errors import VerificationError


def cmd_compile(args: argparse.Namespace) -> int:
    from .build import compile_model
    try:
        result = compile_model(args.name, target=args.target, out=args.out, output=args.output,
                               stages=args.stages or None, max_batch=args.max_batch, photos=args.photos,
                               pretrained=not args.random_weights, force=args.force, schedule=args.schedule,
                               precision=args.precision)
    except VerificationError as exc:  # the job ran and failed: exit 1, not a usage error
        print(f"convhub: compile failed: {exc}")
        return 1
    print(result.path)
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from .targets import format_table
    print(format_table())
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `compile` and `targets` on convhub's subparsers."""
    p = sub.add_parser("compile", help="compile a hub model into a verified TVM artifact for a target preset",
                       description="hub model -> torch.export -> TVM Relax -> library + params + manifest.json, "
                                   "verified against PyTorch on real photos (fp32 cosine >= 0.9999).")
    p.add_argument("name", help="registry model name (see `convhub list`)")
    p.add_argument("--target", default="host", help="target preset (see `convhub targets`); default: host")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.add_argument("--output", choices=("features", "pooled"), default="features",
                   help="per-stage feature maps (default) or the pooled last stage, as hub.load(output=...)")
    p.add_argument("--stages", help="comma-separated stage names, as hub.load(stages=...)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"largest batch the artifact accepts (a hard memory bound; default {DEFAULT_MAX_BATCH})")
    p.add_argument("--photos", type=int, default=3, help="sample photos used for the parity check (default 3)")
    p.add_argument("--random-weights", action="store_true",
                   help="compile with seeded random weights (no download; for testing pipelines)")
    p.add_argument("--force", action="store_true", help="replace --out if it already holds something")
    p.add_argument("--schedule", choices=SCHEDULES, default="rules",
                   help="rules: convhub's CPU schedule rules, no tuning (default); tuned: the MetaSchedule "
                        "database from `convhub tune` (needs --max-batch 1); stock: TVM's default pipeline")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), or bf16: convs on bfloat16-rounded activations and weights with fp32 sums "
                        "(x86 CPUs with AVX512_BF16; verified at cosine >= 0.99 and, where the checkpoint has its "
                        "classifier, top-1 agreement with fp32 reported)")
    p.set_defaults(func=cmd_compile)

    t = sub.add_parser("targets", help="list the compile target presets and how each is verified here")
    t.set_defaults(func=cmd_targets)
