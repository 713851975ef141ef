"""Suite-wide isolation: every test session gets its own convhub cache and lock file."""
from __future__ import annotations

import os
import tempfile

_SESSION_CACHE = tempfile.mkdtemp(prefix="convhub-test-cache-")
os.environ["CONVHUB_CACHE"] = _SESSION_CACHE
os.environ.pop("CONVHUB_LOCKFILE", None)
os.environ.pop("CONVHUB_REGISTRY", None)
