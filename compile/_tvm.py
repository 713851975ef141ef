"""The one place that imports tvm, after compile/__init__.py set TVM_NUM_THREADS / TVM_BIND_THREADS."""
from __future__ import annotations

import tvm  # compile/__init__.py has set the thread environment by now
from tvm import relax

__all__ = ["tvm", "relax"]
