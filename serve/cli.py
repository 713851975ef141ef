"""`convhub serve`: run the HTTP inference service (also `python -m serve`)."""
from __future__ import annotations

import argparse
import logging
import sys

from hub.errors import HubError

DESCRIPTION = ("Serve hub backbones over HTTP (Open Inference Protocol v2 + image embedding) with dynamic "
               "batching, backed by PyTorch, ONNX Runtime or a compiled TVM artifact.")


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", action="append", dest="models", metavar="NAME",
                   help="registry model to serve (repeatable; default: the config's models, else efficientnet-lite0)")
    p.add_argument("--backend", choices=["auto", "torch", "tvm", "onnxruntime"], default=None,
                   help="auto: the fastest backend verified against PyTorch on this machine (default)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="YAML: models, backends/artifacts, batching, limits, workers, api_key")
    p.set_defaults(func=run)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register `serve` on convhub's subcommand parser."""
    p = sub.add_parser("serve", help="run the HTTP inference service", description=DESCRIPTION)
    _configure(p)


def run(args: argparse.Namespace) -> int:
    """Start uvicorn; returns 0 after a clean shutdown, 1 when models failed to load."""
    from .config import load_config
    from .server import serve

    config = load_config(args.config, models=args.models, backend=args.backend, host=args.host, port=args.port)
    return serve(config)


def main(argv: list[str] | None = None) -> int:
    """`python -m serve ...`: the same options as `convhub serve`."""
    p = argparse.ArgumentParser(prog="python -m serve", description=DESCRIPTION)
    _configure(p)
    args = p.parse_args(argv)
    try:
        return args.func(args)
    except (HubError, ValueError) as exc:
        print(f"convhub: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
