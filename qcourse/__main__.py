"""``python -m qcourse COMMAND``: ``doctor`` (what this machine offers the course) and ``exercises``
(``build`` / ``check`` the generated exercise notebooks)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: python -m qcourse COMMAND [options]

commands:
  doctor [--json]            versions, CPU/GPU, widget front end, optional kernels, SmolLM2 file, hqq
  exercises build|check      generate exercises/ from solutions/, or verify they are in sync
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a sub-command's ``main``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "doctor":
        from qcourse.doctor import main as run
    elif command == "exercises":
        from qcourse.exercises import main as run
    else:
        print(f"unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
