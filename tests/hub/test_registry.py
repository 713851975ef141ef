"""models.yaml parses, holds what the design promises, and malformed registries get precise errors."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import hub
from hub.errors import RegistryError, UnknownModelError
from hub.registry import load_registry, parse_registry

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2", "mobilenet_v3_small",
            "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
            "efficientnet-lite0", "convnext_tiny", "regnet_y_800mf", "densenet121", "vgg16_bn"]


def test_registry_has_the_promised_backbones():
    reg = load_registry()
    assert set(REQUIRED) <= set(reg.names(include_aliases=False))
    for name in REQUIRED:
        e = reg.get(name)
        assert e.license and e.tags and e.stages and e.weights
        assert e.preprocess.input_size <= e.preprocess.resize


def test_resnet_conv_alias_is_the_resnet50_trunk():
    e = hub.info("resnet-conv")
    assert e.alias_of == "resnet50" and e.architecture == "torchvision.resnet50"
    assert [(s.name, s.channels, s.stride) for s in e.stages] == [
        ("layer1", 256, 4), ("layer2", 512, 8), ("layer3", 1024, 16), ("layer4", 2048, 32)]


def test_every_source_kind_is_used():
    kinds = {type(s).__name__ for n in load_registry().names() for s in hub.info(n).weights}
    assert {"HFSource", "URLSource", "PackageSource"} <= kinds


def test_list_pattern_and_tag():
    assert hub.list("resnet*") == sorted(n for n in hub.list() if n.startswith("resnet"))
    mobile = hub.list(tag="mobile-friendly")
    assert "mobilenet_v3_large" in mobile and "resnet50" not in mobile
    assert hub.list("lite") == ["efficientnet-lite0"]
    assert hub.list("nothing-like-this") == []


def test_unknown_name_suggests_close_ones():
    with pytest.raises(UnknownModelError) as err:
        hub.info("resnet-cnv")
    assert "resnet-conv" in err.value.suggestions and "Did you mean" in str(err.value)
    assert hub.info("EfficientNet_Lite0").name == "efficientnet-lite0"  # case and -/_ forgiven


def _entry() -> dict:
    doc = yaml.safe_load((ROOT / "models.yaml").read_text())
    return doc["models"]["resnet18"]


@pytest.mark.parametrize("mutate, field, words", [
    (lambda e: e["preprocess"].pop("mean"), "preprocess.mean", "required"),
    (lambda e: e["stages"][0].update(channels=-3), "stages.0.channels", "greater than 0"),
    (lambda e: e["weights"][0].update(type="ftp"), "weights.0", "tag"),
    (lambda e: e["weights"][1].update(sha256="xyz"), "weights.1.sha256", "pattern"),
    (lambda e: e.update(colour="blue"), "colour", "Extra inputs"),
    (lambda e: e["preprocess"].update(resize=100), "preprocess", "resize"),
])
def test_malformed_entry_names_file_entry_and_field(tmp_path, mutate, field, words):
    entry = _entry()
    mutate(entry)
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"broken": entry}}))
    with pytest.raises(RegistryError) as err:
        parse_registry(path.read_text(), path)
    msg = str(err.value)
    assert str(path) in msg and "'broken'" in msg and field in msg and words in msg


def test_malformed_yaml_and_bad_alias(tmp_path):
    path = tmp_path / "models.yaml"
    with pytest.raises(RegistryError, match="not valid YAML"):
        parse_registry("models: [unclosed", path)
    with pytest.raises(RegistryError, match="alias 'x', field 'target': unknown model 'nope'"):
        parse_registry(yaml.safe_dump({"models": {"a": _entry()}, "aliases": {"x": {"target": "nope"}}}), path)


def test_env_registry_override(tmp_path, monkeypatch):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"only-one": _entry()}}))
    monkeypatch.setenv("CONVHUB_REGISTRY", str(path))
    assert hub.list() == ["only-one"]


def test_built_wheel_carries_models_yaml(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    wheel = next(tmp_path.glob("convhub-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "hub/models.yaml" in names
        assert z.read("hub/models.yaml") == (ROOT / "models.yaml").read_bytes()
        assert any(n.startswith("layers/") for n in names) and any(n.startswith("compile/") for n in names)
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        assert "convhub = hub.cli:main" in entry_points
