"""Quantization methods behind one API.

Every method module registers a :class:`~qcourse.methods.base.Method`; look it up by name:

>>> import torch
>>> from qcourse import methods
>>> sorted(methods.available())[:1]
['gptq']
>>> m = methods.get("rtn")
>>> qw = m.quantize(torch.randn(8, 64), bits=4, group_size=32)
>>> qw.dequantize().shape
torch.Size([8, 64])
"""

from __future__ import annotations

import importlib

from qcourse.methods.base import Method, QuantizedWeight

__all__ = ["Method", "QuantizedWeight", "available", "get"]

# name -> module that defines it; modules are imported on first use.
_MODULES = {
    "rtn": "qcourse.methods.rtn",
    "hqq": "qcourse.methods.hqq",
    "hqq-lsq": "qcourse.methods.hqq",
    "gptq": "qcourse.methods.gptq",
}


def available() -> list[str]:
    """Names accepted by :func:`get`."""
    return list(_MODULES)


def get(name: str) -> Method:
    """Return the method registered under ``name`` (``ValueError`` naming the choices otherwise)."""
    if name not in _MODULES:
        raise ValueError(f"method must be one of {sorted(_MODULES)}; got {name!r}")
    module = importlib.import_module(_MODULES[name])
    return module.METHODS[name]
