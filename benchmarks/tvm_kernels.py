#!/usr/bin/env python
"""Where a TVM artifact spends its time: per-kernel milliseconds measured in sequence in the real VM run.

    python benchmarks/tvm_kernels.py build/lite0-host --batch 1 --top 25
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="artifact directory (convhub compile --out)")
    p.add_argument("--batch", type=int, default=None, help="default: the artifact's smallest batch")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--top", type=int, default=30, help="rows to print")
    a = p.parse_args(argv)

    import compile
    from compile.profile import profile_artifact

    kernels, wall = profile_artifact(compile.load(a.artifact), a.batch, a.runs)
    total = sum(k.ms for k in kernels)
    print(f"{a.artifact}: un-instrumented run {wall:.2f} ms (median of {a.runs}); sum of calls {total:.2f} ms "
          f"(includes ~10-20 us of instrument overhead per call) over {sum(k.calls for k in kernels)} calls")
    print(f"{'ms':>8} {'share':>6} {'calls':>5}  kernel  [argument shapes]")
    for k in kernels[:a.top]:
        print(f"{k.ms:8.3f} {100 * k.ms / total:5.1f}% {k.calls:5d}  {k.name}  {list(k.shapes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
