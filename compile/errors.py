"""Errors of the compile package. Each message says what was wrong and what is accepted."""
from __future__ import annotations

from hub.errors import HubError, InputShapeError


class CompileError(HubError):
    """Base class of the errors the compile package raises on purpose."""


class UnknownTargetError(CompileError, ValueError):
    """A --target that is not one of the named presets."""

    def __init__(self, name: str, valid: list[str]):
        self.name, self.valid = name, valid
        super().__init__(f"unknown target preset {name!r}; valid presets: {', '.join(valid)} "
                         "(run `convhub targets` for what each one means)")


class ToolchainMissingError(CompileError):
    """A cross compiler or emulator the preset needs is not installed; names the Debian package."""

    def __init__(self, tool: str, package: str, purpose: str):
        self.tool, self.package = tool, package
        super().__init__(f"{tool} not found: it is needed to {purpose}. Install the Debian package {package} "
                         f"(`apt-get install {package}`, or run scripts/setup_system.sh as root)")


class UnsupportedOpError(CompileError):
    """The model uses PyTorch operators that TVM's importer cannot translate."""

    def __init__(self, model: str, ops: list[str], detail: str = ""):
        self.model, self.ops = model, ops
        more = f" ({detail})" if detail else ""
        super().__init__(f"TVM {_tvm_version()} cannot import model {model!r}: unsupported PyTorch operator(s) "
                         f"{', '.join(ops)}{more}. Other models, or an ONNX/TFLite export "
                         "(`convhub export`), may work.")


class ExportError(CompileError):
    """torch.export could not capture the model with the requested input spec."""


class BuildError(CompileError):
    """TVM failed to build the imported module for the target."""


class ArtifactError(CompileError):
    """A directory is not a usable convhub TVM artifact (missing or malformed files)."""


class ArtifactChecksumError(ArtifactError):
    """A file of an artifact does not hash to what its manifest records."""

    def __init__(self, path: str, expected: str, actual: str):
        self.path, self.expected, self.actual = path, expected, actual
        super().__init__(f"checksum mismatch for {path}: manifest says sha256 {expected}, file has {actual}. "
                         "The artifact was modified or damaged; refusing to load it. Rebuild it with `convhub compile`.")


class WrongPlatformError(ArtifactError):
    """The artifact was built for another architecture, CPU or accelerator than this machine has."""


class BatchRangeError(InputShapeError):
    """A batch size outside the artifact's compiled range (the max is a hard memory bound)."""


class VerificationError(CompileError):
    """The compiled artifact does not compute what PyTorch computes (or could not be run to check)."""


def _tvm_version() -> str:
    try:
        from importlib.metadata import version
        return version("apache-tvm")
    except Exception:  # metadata missing only in odd installs; the message stays useful without it
        return "(unknown version)"
