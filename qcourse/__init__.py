"""qcourse: a CPU-first course on sub-4-bit quantization, and the reference implementations behind it.

The package is layered: a module imports only modules of its own layer or of the layers listed before it
(``tests/test_layers.py`` checks every import; README.md's "Layout" lists every module):

* **numbers** — :mod:`~qcourse.formats`, :mod:`~qcourse.fp4_blocks`: FP32 … FP8, MXFP4/NVFP4, NF4, INT,
  ternary and binary from their bit layouts, and the bits per weight of a format.
* **building blocks** — :mod:`~qcourse.grouping`, :mod:`~qcourse.packing`, :mod:`~qcourse.affine` (the
  integer grids RTN, HQQ and GPTQ share), :mod:`~qcourse.quantized_weight` (the contract every method
  returns, and its save/load state), :mod:`~qcourse.ldlq` (the error-feedback loop and its quantizer seam:
  GPTQ, LDLQ, BlockLDLQ), :mod:`~qcourse.hadamard`, :mod:`~qcourse.lattice`, :mod:`~qcourse.kmeans`,
  :mod:`~qcourse.xnor`, :mod:`~qcourse.kquants`, :mod:`~qcourse.tables` (the one table printer),
  :mod:`~qcourse.machine`.
* **methods** — :mod:`qcourse.methods`: one file per method behind one API (``methods.get(name)``);
  methods import building blocks and ``methods.base``, never each other.
* **kernels** — :mod:`qcourse.kernels`: packed low-bit matrix-vector products.
* **models** — :mod:`qcourse.nn` (``QuantLinear``, ``quantize_model`` on any PyTorch model, calibration,
  the ``BlockwiseModel`` interface, reports, saving, ``BitLinear`` and binary layers) and :mod:`qcourse.lm`
  (the embedded model and its ternary twin, SmolLM2 from GGUF, corpus, training, perplexity, GGUF export);
  ``nn`` never imports ``lm``.
* **theory** — :mod:`~qcourse.theory` (rate–distortion and bit allocation), :mod:`~qcourse.sizing` (model
  bytes, GPU memory fit), :mod:`~qcourse.layer_errors`, :mod:`~qcourse.hqq_shrinkage`.
* **course** — :mod:`~qcourse.viz` and each lesson's figure module, :mod:`~qcourse.widgets`,
  :mod:`~qcourse.sweeps`, :mod:`~qcourse.diagnostics`, :mod:`~qcourse.checks`, :mod:`~qcourse.exercises`,
  :mod:`~qcourse.notebook`, :mod:`~qcourse.doctor`, :mod:`~qcourse.bench`, :mod:`~qcourse.digits`.

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
