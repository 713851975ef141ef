"""Configuration and command line: YAML + flags, one-line errors, `convhub serve` registration."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from serve.cli import add_commands, run
from serve.config import ConfigError, load_config

from .helpers import ROOT


def test_yaml_and_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("models:\n  - name: efficientnet-lite0\n    backend: torch\n    batching: {max_batch_size: 2}\n"
                 "limits: {max_images: 3}\nport: 9000\n")
    c = load_config(f, port=9100, backend="onnxruntime")
    assert c.port == 9100 and c.limits.max_images == 3
    (m,) = c.models
    assert c.backend_of(m) == "torch" and c.batching_of(m).max_batch_size == 2
    c2 = load_config(f, models=["efficientnet-lite0", "mobilenetv3-large"])
    assert [m.name for m in c2.models] == ["efficientnet-lite0", "mobilenetv3-large"]
    assert c2.models[0].backend == "torch"  # per-model settings of names already in the file are kept


@pytest.mark.parametrize("text,words", [
    ("limits: {max_imagez: 3}\n", ["limits.max_imagez", "Extra inputs"]),
    ("models: [{name: efficientnet-lite0, backend: tvm}]\n", ["artifact: DIR"]),
    ("backend: cuda\n", ["backend", "auto"]),
    ("- a\n- b\n", ["mapping"]),
    ("models: [\n", ["not valid YAML"]),
    ("workers: {compute_instances: 0}\n", ["workers.compute_instances", "greater than or equal to 1"]),
])
def test_bad_config_is_one_clear_error(tmp_path, text, words):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    for w in words:
        assert w in str(e.value)


def test_add_commands_registers_serve():
    p = argparse.ArgumentParser(prog="convhub")
    add_commands(p.add_subparsers(dest="command"))
    a = p.parse_args(["serve", "--model", "efficientnet-lite0", "--model", "resnet18", "--backend", "torch",
                      "--port", "0"])
    assert a.func is run and a.models == ["efficientnet-lite0", "resnet18"] and a.backend == "torch"


def test_cli_reports_config_errors_in_one_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("batching: {max_batch_size: 0}\n")
    r = subprocess.run([sys.executable, "-m", "serve", "--config", str(f)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("convhub: error: invalid serve config")
    assert "batching.max_batch_size" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "serve", "--config", str(tmp_path / "missing.yaml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "does not exist" in r.stderr
