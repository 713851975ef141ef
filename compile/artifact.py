"""Artifact directories: manifest, checksums, platform checks, and the loaded callable.

Layout (docs/compile.md):  DIR/manifest.json, DIR/model.so (or model.tar), DIR/params.safetensors.
"""
from __future__ import annotations

import json
import os
import platform
import threading
from pathlib import Path
from typing import Any

import numpy as np

from hub.errors import InputShapeError
from hub.integrity import sha256_file  # one streamed hasher for weights and artifacts

from .errors import ArtifactChecksumError, ArtifactError, BatchRangeError, WrongPlatformError

FORMAT = "convhub-tvm-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PARAMS = "params.safetensors"
PARAM_ORDER_KEY = "convhub.param_order"  # safetensors metadata: comma-separated names in call order



def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed manifest of artifact directory `path` (ArtifactError when absent or not ours)."""
    d = Path(path)
    if not d.is_dir():
        raise ArtifactError(f"{d} is not a directory; a convhub TVM artifact is a directory made by `convhub compile`")
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{d} has no {MANIFEST}; it is not a convhub TVM artifact (make one with "
                            "`convhub compile NAME --target PRESET --out DIR`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{d / MANIFEST} is not valid JSON ({exc}); rebuild the artifact") from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{d / MANIFEST}: format {manifest.get('format')!r} v{manifest.get('format_version')} "
                            f"is not {FORMAT!r} v{FORMAT_VERSION}; rebuild the artifact with this convhub")
    return manifest


def check_files(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """Every file the manifest lists exists and has the recorded sha256 (ArtifactChecksumError otherwise)."""
    d = Path(path)
    files = manifest.get("files") or {}
    if not files:
        raise ArtifactError(f"{d / MANIFEST} lists no files; rebuild the artifact")
    for name, expected in files.items():
        p = d / name
        if not p.is_file():
            raise ArtifactError(f"{p} is missing (listed in {MANIFEST}); the artifact is incomplete, rebuild it")
        actual = sha256_file(p)
        if actual != expected:
            raise ArtifactChecksumError(str(p), expected, actual)


def this_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def check_runnable_here(path: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    """WrongPlatformError unless this machine can run the artifact in-process."""
    from .targets import gpu_present, missing_cpu_flags
    t = manifest["target"]
    preset, arch, device = t["preset"], t["arch"], t["device"]
    verify_hint = f"check its numerics here with `convhub verify {path}`"
    if arch != this_arch():
        how = f"; {verify_hint} (runs it under qemu-aarch64)" if t.get("verification") == "qemu" else ""
        raise WrongPlatformError(f"{path} was built for {arch} (preset {preset!r}); this machine is {this_arch()}. "
                                 f"Copy it to a {arch} device and run it there (docs/compile.md){how}")
    if t.get("export") == "tar":
        raise WrongPlatformError(f"{path} holds an object archive (preset {preset!r}) that must be linked first "
                                 "(Android: with the NDK, see DEPLOY.md in the artifact)")
    if device == "opencl":
        raise WrongPlatformError(f"{path} was built for OpenCL GPUs (preset {preset!r}); it runs on the device "
                                 "with a TVM runtime built with OpenCL (see DEPLOY.md in the artifact)")
    if device == "cuda" and not gpu_present():
        raise WrongPlatformError(f"{path} was built for NVIDIA GPUs (preset {preset!r}, {t['tvm_target'].get('arch')}); "
                                 "no GPU is usable on this machine")
    missing = missing_cpu_flags(t.get("required_cpu_flags") or [])
    if missing:
        raise WrongPlatformError(f"{path} was built for CPU {t['tvm_target'].get('mcpu')!r} (preset {preset!r}) and "
                                 f"uses instructions this CPU lacks ({', '.join(missing)}); rebuild it here with "
                                 "--target host")


def check_input(x: Any, manifest: dict[str, Any]) -> np.ndarray:
    """`x` as a C-contiguous float32 array of the artifact's input shape, or a clear error."""
    spec = manifest["input"]
    lo, hi = spec["batch"]["min"], spec["batch"]["max"]
    chw = tuple(spec["shape"][1:])
    expected = f"a float32 numpy array of shape (N, {', '.join(map(str, chw))}) with {lo} <= N <= {hi}"
    if hasattr(x, "detach") and hasattr(x, "numpy"):  # a torch tensor: accepted, converted without a copy
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise InputShapeError(f"{manifest['model']['name']} artifact: expected {expected}, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise InputShapeError(f"{manifest['model']['name']} artifact: expected {expected}, got dtype {x.dtype} "
                              "(cast with x.astype(np.float32))")
    if x.ndim != 4 or tuple(x.shape[1:]) != chw:
        hint = " (add a batch dimension with x[None])" if x.ndim == 3 else ""
        raise InputShapeError(f"{manifest['model']['name']} artifact: expected {expected}, got shape "
                              f"{tuple(x.shape)}{hint}")
    if not lo <= x.shape[0] <= hi:
        raise BatchRangeError(f"{manifest['model']['name']} artifact: batch {x.shape[0]} is outside the compiled "
                              f"range {lo}..{hi} (the maximum is fixed at compile time: split the batch, or "
                              f"recompile with --max-batch {x.shape[0]})")
    return np.ascontiguousarray(x)


def structure_outputs(arrays: list[np.ndarray], manifest: dict[str, Any]) -> np.ndarray | dict[str, np.ndarray]:
    """Outputs shaped like the hub module's: a dict by stage name, or one array for a tensor output."""
    names = [o["name"] for o in manifest["outputs"]]
    if manifest["model"]["output_kind"] == "tensor":
        return arrays[0]
    return dict(zip(names, arrays))


def read_params(path: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """(names in call order, arrays) from params.safetensors."""
    from safetensors import safe_open
    from safetensors.numpy import load_file
    with safe_open(str(path), framework="numpy") as f:
        order = (f.metadata() or {}).get(PARAM_ORDER_KEY)
    if order is None:
        raise ArtifactError(f"{path} lacks the {PARAM_ORDER_KEY!r} metadata; rebuild the artifact")
    names = order.split(",") if order else []
    return names, load_file(str(path))


def write_params(path: Path, names: list[str], arrays: list[np.ndarray]) -> None:
    from safetensors.numpy import save_file
    save_file({n: np.ascontiguousarray(a) for n, a in zip(names, arrays)}, str(path),
              metadata={PARAM_ORDER_KEY: ",".join(names)})


def host_array(t: Any) -> np.ndarray:
    """A TVM output tensor as numpy: on the CPU a zero-copy view (DLPack) that keeps the tensor alive, else a copy.

    The VM allocates fresh outputs every call (its pooled allocator takes the memory back only when the view is
    freed), so a view never changes under its holder. Copying instead cost 2 ms of efficientnet-lite0's ~40 ms
    batch-8 run (12.5 MB of stage maps written into newly faulted-in pages) and 0.3 ms of its 6.6 ms at batch 1.
    """
    if t.device.dlpack_device_type() == 1:  # kDLCPU
        return np.from_dlpack(t)
    return t.numpy()


class CompiledArtifact:
    """A loaded artifact: call it with a float32 (N, 3, H, W) array; get what the hub module returns, in numpy.

    Attributes: `.manifest` (dict), `.max_batch`, `.min_batch`, `.output_names`, `.path`.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], *, device_id: int = 0):
        from ._tvm import relax, tvm
        self.path, self.manifest = path, manifest
        self.min_batch = int(manifest["input"]["batch"]["min"])
        self.max_batch = int(manifest["input"]["batch"]["max"])
        self.output_names = [o["name"] for o in manifest["outputs"]]
        t = manifest["target"]
        self._device = tvm.cuda(device_id) if t["device"] == "cuda" else tvm.cpu(0)
        lib = tvm.runtime.load_module(str(path / t["library"]))
        self._vm = relax.VirtualMachine(lib, self._device)
        names, arrays = read_params(path / PARAMS)
        params = [tvm.runtime.tensor(arrays[n], self._device) for n in names]
        transform = manifest.get("params_transform")
        if transform:  # weight pre-packing from a tuned build: the layout change runs once, here
            params = list(self._vm[transform](params))
        self._params = params
        self._main = self._vm["main"]  # looked up once: run() is the serving hot path
        # the batch-1 copy of main (compile.cpu_pipeline.BATCH1_ENTRY) in artifacts that have one
        one = manifest.get("batch1_entry")
        self._main_batch1 = self._vm[one] if one else None
        self._lock = threading.Lock()  # one VM instance: calls are serialised

    def run(self, x: Any) -> list[np.ndarray]:
        """Outputs in manifest order, as numpy arrays."""
        from ._tvm import tvm
        x = check_input(x, self.manifest)
        with self._lock:
            out = self.entry(len(x))(tvm.runtime.tensor(x, self._device), *self._params)
            items = [out] if isinstance(out, tvm.runtime.Tensor) else list(out)
            return [host_array(o) for o in items]

    def entry(self, batch: int):
        """The VM function that runs `batch` images: `main`, or its static batch-1 copy for a single image."""
        return self._main_batch1 if batch == 1 and self._main_batch1 is not None else self._main

    def __call__(self, x: Any) -> np.ndarray | dict[str, np.ndarray]:
        return structure_outputs(self.run(x), self.manifest)

    def __repr__(self) -> str:
        m = self.manifest
        return (f"CompiledArtifact({str(self.path)!r}, model={m['model']['name']!r}, preset={m['target']['preset']!r}, "
                f"batch={self.min_batch}..{self.max_batch}, outputs={self.output_names})")


def load_artifact(path: str | os.PathLike[str], *, device_id: int = 0) -> CompiledArtifact:
    """Check manifest, checksums and platform, then load. Errors say what is wrong and what to do."""
    d = Path(path)
    manifest = read_manifest(d)
    check_files(d, manifest)
    check_runnable_here(d, manifest)
    return CompiledArtifact(d, manifest, device_id=device_id)
