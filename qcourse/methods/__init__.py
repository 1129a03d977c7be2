"""Quantization methods behind one API.

Every method module registers a :class:`~qcourse.methods.base.Method`; look it up by name:

>>> import torch
>>> from qcourse import methods
>>> {"rtn", "hqq", "gptq"} <= set(methods.available())
True
>>> m = methods.get("rtn")
>>> qw = m.quantize(torch.randn(8, 64), bits=4, group_size=32)
>>> qw.dequantize().shape
torch.Size([8, 64])
>>> methods.get(m) is m                     # a Method instance is returned as is
True
"""

from __future__ import annotations

import importlib

from qcourse.methods.base import BlockQuantizer, Method, QuantizedWeight, weight_from_state

__all__ = ["Method", "QuantizedWeight", "BlockQuantizer", "available", "get", "weight_from_state"]

# name -> module that defines it; modules are imported on first use.
_MODULES = {
    "rtn": "qcourse.methods.rtn",
    "hqq": "qcourse.methods.hqq",
    "hqq-lsq": "qcourse.methods.hqq",
    "gptq": "qcourse.methods.gptq",
    "aqlm": "qcourse.methods.aqlm",
    "quip": "qcourse.methods.quip",
    "bitnet": "qcourse.methods.bitnet",
    "binary": "qcourse.methods.binary",
}


def available() -> list[str]:
    """Names accepted by :func:`get`."""
    return list(_MODULES)


def get(method: str | Method) -> Method:
    """The :class:`Method` named ``method`` (or ``method`` itself if it already is one).

    The one resolver of the package: unknown names get a ``ValueError`` listing the choices, anything else
    a ``TypeError``.

    >>> get(["rtn"])
    Traceback (most recent call last):
    ...
    TypeError: method must be a method name (str) or a qcourse.methods.Method; got list
    """
    if isinstance(method, Method):
        return method
    if not isinstance(method, str):
        raise TypeError("method must be a method name (str) or a qcourse.methods.Method; "
                        f"got {type(method).__name__}")
    if method not in _MODULES:
        raise ValueError(f"method must be one of {sorted(_MODULES)}; got {method!r}")
    module = importlib.import_module(_MODULES[method])
    return module.METHODS[method]
