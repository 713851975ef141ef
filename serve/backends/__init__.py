"""Backends run a preprocessed NCHW float32 batch and return named outputs (pooled and/or stages)."""
from __future__ import annotations

from .base import Backend

__all__ = ["Backend"]
