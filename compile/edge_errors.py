"""Errors of the edge exporters (ONNX, TFLite): user mistakes and what a format cannot express."""
from __future__ import annotations

import re

from hub.errors import HubError

FORMATS = ("onnx", "tflite")
QUANTIZATIONS = ("fp16", "int8")


class ExportError(HubError, ValueError):
    """An export request that cannot be honoured; the message says what was wrong and what is accepted."""


class UnsupportedOpError(ExportError):
    """The module uses an operator that the target format (or its converter) cannot express."""

    def __init__(self, op: str, fmt: str, detail: str = "", hint: str = ""):
        self.op, self.format = op, fmt
        tail = f" ({detail})" if detail else ""
        hint = hint or (f"replace it in the model, or export to another format "
                        f"({', '.join(f for f in FORMATS if f != fmt)})")
        super().__init__(f"operator {op} cannot be expressed in {fmt}{tail}; {hint}")


class CalibrationError(ExportError):
    """int8 quantization was asked for without usable calibration images."""


_OP_PATTERNS = [
    re.compile(r"OpOverload\(op='([^']+)'"),
    re.compile(r"target=torch\.ops\.([A-Za-z_0-9]+\.[A-Za-z_0-9]+)"),
    re.compile(r"(aten::[A-Za-z_0-9.]+)"),
    re.compile(r"\b(aten\.[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?)"),
    re.compile(r"operator '?([A-Za-z_0-9:.]+)'?"),
]


def op_from_message(message: str) -> str | None:
    """The first aten operator named in a converter's error message, if any."""
    for pat in _OP_PATTERNS:
        m = pat.search(message)
        if m:
            return m.group(1).rstrip(".")
    return None
