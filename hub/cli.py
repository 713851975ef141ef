"""`convhub` command line: hub commands here; compile/serve/export add theirs through add_commands()."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .errors import HubError

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

# packages that plug subcommands in (module path -> add_commands); missing ones are skipped
PLUGINS = ("compile.cli", "compile.bench_cli", "compile.export_cli", "serve.cli")


def cmd_list(args: argparse.Namespace) -> int:
    from .registry import load_registry

    entries = load_registry().search(args.pattern, args.tag)
    if not entries:
        err_console.print(f"no model matches pattern={args.pattern!r} tag={args.tag!r}; try `convhub list`")
        return 1
    t = Table(title=f"convhub models ({len(entries)})")
    for col in ("name", "architecture", "stages (channels@stride)", "input", "tags"):
        t.add_column(col)
    for e in entries:
        stages = " ".join(f"{s.channels}@{s.stride}" for s in e.stages)
        name = f"{e.name} -> {e.alias_of}" if e.alias_of else e.name
        t.add_row(name, e.architecture, stages, str(e.preprocess.input_size), ", ".join(e.tags))
    console.print(t)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from . import sources
    from .api import info

    e = info(args.name)
    console.print(f"[bold]{e.name}[/bold]" + (f" (alias of {e.alias_of})" if e.alias_of else "") + f": {e.description}")
    console.print(f"architecture: {e.architecture}   license: {e.license}   tags: {', '.join(e.tags)}")
    p = e.preprocess
    console.print(f"preprocess: resize {p.resize} ({p.interpolation}), center-crop {p.input_size}, mean {list(p.mean)}, std {list(p.std)}")
    t = Table(title="stages")
    for col in ("name", "module", "channels", "stride"):
        t.add_column(col)
    for s in e.stages:
        t.add_row(s.name, s.node, str(s.channels), str(s.stride))
    console.print(t)
    w = Table(title="weight sources (tried in order)")
    for col in ("source", "sha256", "cached"):
        w.add_column(col)
    for src in e.weights:
        cached = sources.cached_path(src)
        w.add_row(src.describe(), (src.sha256 or "trust on first use")[:16], "yes" if cached else "no")
    console.print(w)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from .api import pull

    t0 = time.perf_counter()
    r = pull(args.name, progress=not args.quiet)
    console.print(f"{args.name}: {r.path} (sha256 {r.sha256[:16]}..., from {r.source}) in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    target = args.target
    if target and Path(target).is_dir() and (Path(target) / "manifest.json").is_file():
        from compile.verify import verify_artifact  # an artifact directory, not a model name

        try:
            report = verify_artifact(target)
        except HubError as exc:  # a damaged or foreign artifact is a failed verification, not a usage error
            err_console.print(f"convhub: verification failed: {exc}", markup=False, highlight=False)
            return 1
        console.print(report)
        return 0 if getattr(report, "ok", True) else 1
    from .api import verify

    rows = verify(target)
    t = Table(title="cache verification")
    for col in ("model", "source", "status"):
        t.add_column(col)
    bad = 0
    for model, src, status in rows:
        bad += status.startswith("BAD")
        t.add_row(model, src, status)
    console.print(t)
    return 1 if bad else 0


def cmd_embed(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image, UnidentifiedImageError

    from .api import load, transforms

    model = load(args.name, output="pooled", progress=False)
    tf = transforms(args.name)
    images, names = [], []
    for path in args.images:
        try:
            images.append(tf(Image.open(path)))
        except (UnidentifiedImageError, OSError) as exc:
            raise HubError(f"{path}: not a readable image ({exc}); accepted: JPEG, PNG, WebP, ... (anything PIL opens)") from None
        names.append(path)
    with torch.inference_mode():
        emb = model(torch.stack(images))
    t = Table(title=f"{args.name} embeddings ({emb.shape[1]} dims)")
    for col in ("image", "norm", "first values", "nearest other (cosine)"):
        t.add_column(col)
    normed = torch.nn.functional.normalize(emb, dim=1)
    sim = normed @ normed.T
    for i, n in enumerate(names):
        vals = " ".join(f"{v:.3f}" for v in emb[i, :4].tolist())
        if len(names) > 1:
            s = sim[i].clone()
            s[i] = -2
            j = int(s.argmax())
            near = f"{Path(names[j]).name} ({float(s[j]):.3f})"
        else:
            near = "-"
        t.add_row(Path(n).name, f"{float(emb[i].norm()):.2f}", vals, near)
    console.print(t)
    if args.save:
        import numpy as np

        np.save(args.save, emb.numpy())
        console.print(f"saved {tuple(emb.shape)} float32 to {args.save}")
    return 0


HUB_COMMANDS = {"list", "info", "pull", "verify", "embed"}


def build_parser(with_plugins: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convhub", description="Pretrained conv feature layers: hub, compile, serve.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("list", help="list registry models")
    s.add_argument("pattern", nargs="?", help="glob or substring of the name")
    s.add_argument("--tag", help="only models with this tag (e.g. mobile-friendly)")
    s.set_defaults(func=cmd_list)
    s = sub.add_parser("info", help="show one model's registry entry")
    s.add_argument("name")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("pull", help="download and verify a model's weights into the cache")
    s.add_argument("name")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_pull)
    s = sub.add_parser("verify", help="re-hash cached weights (NAME or all), or re-check a compiled artifact DIR")
    s.add_argument("target", nargs="?", help="model name, or an artifact directory with manifest.json")
    s.set_defaults(func=cmd_verify)
    s = sub.add_parser("embed", help="pooled embeddings of image files")
    s.add_argument("name")
    s.add_argument("images", nargs="+")
    s.add_argument("--save", help="write the (N, C) embeddings to this .npy file")
    s.set_defaults(func=cmd_embed)
    for mod in PLUGINS if with_plugins else ():
        try:
            plugin = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name and (mod.startswith(exc.name) or exc.name == mod):
                continue  # that package is not part of this install
            raise
        plugin.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # plugin packages import torch/TVM/FastAPI: skip them for the hub's own (fast) commands
    parser = build_parser(with_plugins=not (argv and argv[0] in HUB_COMMANDS))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (HubError, ValueError, FileNotFoundError) as exc:
        err_console.print(f"convhub: error: {exc}", markup=False, highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("convhub: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
