"""The one place that imports tvm: TVM_NUM_THREADS must be set first.

TVM's thread pool runs on a single thread on these VMs unless TVM_NUM_THREADS is set before the
library loads (DESIGN.md). A value the user already set wins.
"""
from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

import tvm  # noqa: E402
from tvm import relax  # noqa: E402

__all__ = ["tvm", "relax"]
