"""Parse and validate the model registry (models.yaml).

The registry is data, not code: one entry per backbone with its architecture, feature stages,
preprocessing, weight sources, license and tags. pydantic does the field validation; we turn its
errors into RegistryError messages that name the file, the entry and the field.
"""
from __future__ import annotations

import difflib
import fnmatch
import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import RegistryError, UnknownModelError

DEFAULT_REGISTRY = Path(__file__).with_name("models.yaml")
REGISTRY_ENV = "CONVHUB_REGISTRY"

_SHA256 = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageSpec(_Strict):
    """One feature stage: its public name, the trunk module whose output it is, channels, stride."""

    name: str
    module: str | None = None  # defaults to `name`
    channels: int = Field(gt=0)
    stride: int = Field(gt=0)

    @property
    def node(self) -> str:
        return self.module or self.name


class Preprocess(_Strict):
    """What the weights expect: resize the short side, center-crop, normalize."""

    input_size: int = Field(gt=0, description="side of the square network input")
    resize: int = Field(gt=0, description="short side after resizing, before the crop")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError("every std value must be > 0")
        return v

    @model_validator(mode="after")
    def _crop_fits(self) -> "Preprocess":
        if self.resize < self.input_size:
            raise ValueError(f"resize ({self.resize}) must be >= input_size ({self.input_size})")
        return self


class _Source(_Strict):
    sha256: Annotated[str, Field(pattern=_SHA256)] | None = None
    key_map: str = "identity"  # name of a checkpoint adapter in layers.key_maps


class HFSource(_Source):
    type: Literal["hf"]
    repo: str
    filename: str
    revision: str = "main"

    def describe(self) -> str:
        return f"hf://{self.repo}/{self.filename}@{self.revision}"


class URLSource(_Source):
    type: Literal["url"]
    url: str
    sha256_prefix: Annotated[str, Field(pattern=r"^[0-9a-f]{6,64}$")] | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("url must start with https:// or http://")
        return v

    def describe(self) -> str:
        return self.url


class PackageSource(_Source):
    type: Literal["package"]
    package: str = Field(description="PyPI distribution that ships the file (for the error message)")
    module: str = Field(description="importable module that holds the file")
    filename: str

    def describe(self) -> str:
        return f"package://{self.module}/{self.filename} (pip install {self.package})"


class FileSource(_Source):
    type: Literal["file"]
    path: str

    def describe(self) -> str:
        return f"file://{self.path}"


Source = Annotated[Union[HFSource, URLSource, PackageSource, FileSource], Field(discriminator="type")]


class ModelEntry(_Strict):
    """One backbone of the registry."""

    name: str
    architecture: str = Field(description="builder key in layers.architectures, e.g. torchvision.resnet50")
    description: str = ""
    license: str
    tags: tuple[str, ...] = ()
    stages: tuple[StageSpec, ...] = Field(min_length=1)
    preprocess: Preprocess
    weights: tuple[Source, ...] = Field(min_length=1)
    alias_of: str | None = None

    @model_validator(mode="after")
    def _unique_stages(self) -> "ModelEntry":
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        strides = [s.stride for s in self.stages]
        if strides != sorted(strides):
            raise ValueError(f"stages must be listed shallow to deep (non-decreasing stride), got {strides}")
        return self

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


class Registry:
    """All entries of one registry file, aliases resolved."""

    def __init__(self, entries: dict[str, ModelEntry], path: Path):
        self.entries, self.path = entries, path

    def names(self, *, include_aliases: bool = True) -> list[str]:
        return sorted(n for n, e in self.entries.items() if include_aliases or e.alias_of is None)

    def get(self, name: str) -> ModelEntry:
        if name in self.entries:
            return self.entries[name]
        norm = name.lower().replace("_", "-")
        for key, entry in self.entries.items():
            if key.lower().replace("_", "-") == norm:
                return entry
        known = self.names()
        raise UnknownModelError(name, difflib.get_close_matches(name, known, n=3, cutoff=0.5), known)

    def search(self, pattern: str | None = None, tag: str | None = None) -> list[ModelEntry]:
        out = []
        for n in self.names():
            e = self.entries[n]
            if pattern and not (fnmatch.fnmatch(n, pattern) or (not any(c in pattern for c in "*?[") and pattern in n)):
                continue
            if tag and tag not in e.tags:
                continue
            out.append(e)
        return out


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in {"hf", "url", "package", "file"})) or "(entry)"


def parse_registry(text: str, path: Path) -> Registry:
    """Parse registry YAML text; every problem raises RegistryError naming file, entry and field."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise RegistryError(f"{path}: top level must be a mapping with a 'models:' mapping (and optional 'aliases:')")
    entries: dict[str, ModelEntry] = {}
    for name, body in doc["models"].items():
        if not isinstance(body, dict):
            raise RegistryError(f"{path}: entry {name!r}: must be a mapping of fields, got {type(body).__name__}")
        try:
            entries[str(name)] = ModelEntry(name=str(name), **body)
        except ValidationError as exc:
            first = exc.errors()[0]
            more = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
            raise RegistryError(
                f"{path}: entry {name!r}, field {_loc(first)!r}: {first['msg']} (got {first.get('input')!r}){more}"
            ) from None
        except TypeError as exc:
            raise RegistryError(f"{path}: entry {name!r}: {exc}") from None
    for alias, body in (doc.get("aliases") or {}).items():
        if not isinstance(body, dict) or "target" not in body:
            raise RegistryError(f"{path}: alias {alias!r}, field 'target': required (the model it points to)")
        target = body["target"]
        if target not in entries:
            raise RegistryError(f"{path}: alias {alias!r}, field 'target': unknown model {target!r}")
        if alias in entries:
            raise RegistryError(f"{path}: alias {alias!r} clashes with a model of the same name")
        update = {"name": str(alias), "alias_of": target}
        if "description" in body:
            update["description"] = str(body["description"])
        if "tags" in body:
            update["tags"] = tuple(entries[target].tags) + tuple(body["tags"])
        entries[str(alias)] = entries[target].model_copy(update=update)
    return Registry(entries, path)


@lru_cache(maxsize=8)
def _load_cached(path: str, mtime: float) -> Registry:
    p = Path(path)
    return parse_registry(p.read_text(encoding="utf-8"), p)


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """The registry at `path`, $CONVHUB_REGISTRY, or the models.yaml shipped with convhub."""
    p = Path(path or os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY)
    if not p.is_file():
        raise RegistryError(f"registry file {p} does not exist (set {REGISTRY_ENV} or pass a path to a models.yaml)")
    return _load_cached(str(p.resolve()), p.stat().st_mtime)
