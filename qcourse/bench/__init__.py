"""Benchmarks: ``python -m qcourse.bench NAME [options]`` prints one JSON object.

Each benchmark is a module ``qcourse.bench.NAME`` with a ``main(argv) -> dict`` function. Benchmarks
measure; they never fail because a machine is slow.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence


def available() -> list[str]:
    """Names of the benchmarks that ship."""
    import qcourse.bench as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def run(name: str, argv: Sequence[str] = ()) -> dict:
    """Run benchmark ``name`` with command-line style ``argv`` and return its result."""
    if name not in available():
        raise ValueError(f"benchmark must be one of {available()}; got {name!r}")
    return importlib.import_module(f"qcourse.bench.{name}").main(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print("usage: python -m qcourse.bench NAME [options]\nbenchmarks: " + ", ".join(available()))
        return 0 if argv else 2
    result = run(argv[0], argv[1:])
    print(json.dumps(result, indent=2))
    return 0
