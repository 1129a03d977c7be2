"""qcourse: a CPU-first course on sub-4-bit quantization, and the reference implementations behind it.

The package is layered; a module imports only from its own layer or the layers above it in this list:

* **numbers** — :mod:`~qcourse.formats`: FP32 … FP8, MXFP4/NVFP4, INT, ternary and binary from their bit
  layouts, and the bits per weight of a format.
* **building blocks** — :mod:`~qcourse.grouping`, :mod:`~qcourse.packing`, :mod:`~qcourse.affine` (the
  integer grids RTN, HQQ and GPTQ share), Hadamard transforms, lattices, k-means, the error-feedback loop.
* **methods** — :mod:`qcourse.methods`: one file per method behind one API (``methods.get(name)``);
  methods import building blocks and ``methods.base``, never each other.
* **models** — :mod:`qcourse.nn` (``QuantLinear``, ``quantize_model`` on any PyTorch model, calibration,
  reports) and :mod:`qcourse.lm` (the embedded model, SmolLM2 from GGUF, corpus, perplexity);
  ``nn`` never imports ``lm``.
* **kernels** — :mod:`qcourse.kernels`: packed low-bit matrix-vector products.
* **theory** — rate–distortion and bit allocation; :mod:`~qcourse.sizing` (model bytes, GPU memory fit,
  later rooflines and energy per operation).
* **course** — :mod:`~qcourse.tables` (the one table printer), :mod:`~qcourse.viz`,
  :mod:`~qcourse.widgets`, :mod:`~qcourse.sweeps`, :mod:`~qcourse.diagnostics`, :mod:`~qcourse.checks`,
  :mod:`~qcourse.exercises`, :mod:`~qcourse.notebook`, :mod:`~qcourse.doctor`, :mod:`~qcourse.bench`.

Submodules are imported lazily, on first attribute access, so that ``import qcourse`` stays cheap:

>>> import qcourse
>>> qcourse.__version__
'0.1.0'
>>> print(qcourse.tables.format_table([{"bits": 2, "ppl": 9.87}]))
bits   ppl
   2  9.87
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

__version__ = "0.1.0"

# every module and sub-package beside this file (read from the folder, so a new module needs no entry here)
_SUBMODULES = frozenset(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"qcourse.{name}")
    raise AttributeError(f"module 'qcourse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})
