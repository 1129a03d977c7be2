"""qcourse: a CPU-first course on sub-4-bit quantization, and the reference implementations behind it.

Sub-packages are imported lazily so that ``import qcourse`` stays cheap:

>>> import qcourse
>>> qcourse.__version__
'0.1.0'
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "formats", "grouping", "packing", "methods", "nn", "lm", "notebook", "checks", "exercises",
    "bench", "diagnostics", "viz", "widgets", "tables", "sizing", "sweeps",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"qcourse.{name}")
    raise AttributeError(f"module 'qcourse' has no attribute {name!r}")
