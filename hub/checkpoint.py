"""Read a weight file into a state_dict without ever executing code from it.

safetensors files are plain tensors by construction. PyTorch pickles are read with
torch.load(weights_only=True), whose restricted unpickler refuses any global outside tensors and
containers; we turn that refusal into UnsafeCheckpointError.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .errors import UnsafeCheckpointError, WeightsError


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or PyTorch checkpoint file, on CPU."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or _looks_like_safetensors(head):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        culprit = next((ln.strip() for ln in text.splitlines() if "global" in ln.lower() and "unsupported" in ln.lower()), None)
        if culprit is None and "global" not in text.lower():
            raise WeightsError(f"{path}: not a readable PyTorch checkpoint (corrupt or not a weights file)") from None
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the checkpoint contains pickled objects other than tensors "
            f"(it could run code; {culprit or 'a non-tensor global'}). Accepted: safetensors files and plain "
            f"tensor state_dicts. Convert a trusted checkpoint to safetensors to use it."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})") from None
    return _as_state_dict(obj, path)


def _looks_like_safetensors(head: bytes) -> bool:
    # safetensors starts with a little-endian u64 header length, followed by the JSON header's '{'
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _as_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a state_dict (a mapping of names to tensors), got {type(obj).__name__}")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}
