"""`python -m compile.aarch64`: prepare the aarch64 TVM runtime and the qemu runner ahead of time."""
from __future__ import annotations

import sys

from hub.errors import HubError
from . import require_cross_compiler, require_qemu, runner_path


def main() -> int:
    try:
        require_cross_compiler()
        require_qemu()
        print(runner_path())
    except HubError as exc:
        print(f"compile.aarch64: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
