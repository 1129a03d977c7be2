"""The quantized-weight contract: what every method returns, and how it is saved and loaded.

A :class:`QuantizedWeight` rebuilds an approximation of a float weight (``[out_features, in_features]``)
and says how many bits it really stores (codes, scales, zero points, codebooks, sign vectors, all at their
stored precision). Methods (:mod:`qcourse.methods`) return one; building blocks such as
:mod:`qcourse.affine` define the shared ones. :mod:`qcourse.methods.base` re-exports everything here.

**Saving a weight** (the state protocol, used by ``qcourse.nn``'s save/load): every
:class:`QuantizedWeight` subclass that can be saved implements

* ``to_state() -> (tensors, meta)``: ``tensors`` maps names to every stored tensor (packed codes, scales,
  zeros, codebooks, sign vectors, ``g_idx`` …) at the dtype and size it is accounted at, so their bytes are
  :attr:`QuantizedWeight.storage_bits` rounded up to whole bytes per tensor; ``meta`` is JSON-serialisable
  (numbers, strings, lists, ``None``) and starts from :meth:`QuantizedWeight.state_meta`, which records
  ``"class"`` and ``"shape"``;
* ``from_state(tensors, meta)`` (a classmethod) that rebuilds it **bit-exactly** (``dequantize()``
  equal), refusing tensors of the wrong dtype or size with a ``ValueError`` (:func:`state_tensor` helps).

Subclasses join a registry when they are defined; :func:`weight_from_state` dispatches on
``meta["class"]`` (``"module:QualName"``), importing a ``qcourse`` module on demand so a fresh process
can load a file. No pickle is involved.

>>> import torch
>>> class Signs(QuantizedWeight):             # a savable toy weight: sign bits, one fp16 scale
...     def __init__(self, signs, scale):
...         self.shape, self.signs, self.scale = tuple(signs.shape), signs, scale
...     def dequantize(self, dtype=torch.float32):
...         return (self.scale.float() * (2.0 * self.signs.float() - 1)).to(dtype)
...     @property
...     def storage_bits(self):
...         return 8 * self.signs.numel() + 16
...     def to_state(self):
...         return {"signs": self.signs, "scale": self.scale}, self.state_meta()
...     @classmethod
...     def from_state(cls, tensors, meta):
...         shape = tuple(meta["shape"])
...         return cls(state_tensor(tensors, "signs", torch.uint8, shape),
...                    state_tensor(tensors, "scale", torch.float16, ()))
>>> qw = Signs(torch.tensor([[1, 0]], dtype=torch.uint8), torch.tensor(0.5, dtype=torch.float16))
>>> tensors, meta = qw.to_state()
>>> meta["class"].endswith(":Signs"), weight_from_state(tensors, meta).dequantize().tolist()
(True, [[0.5, -0.5]])
"""

from __future__ import annotations

import abc
import importlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

__all__ = ["QuantizedWeight", "weight_from_state", "state_tensor", "to_float_dtype", "check_weight"]

#: ``meta["class"]`` → the :class:`QuantizedWeight` subclass it names (filled by ``__init_subclass__``)
_WEIGHT_CLASSES: dict[str, type[QuantizedWeight]] = {}


class QuantizedWeight(abc.ABC):
    """A quantized weight matrix.

    Subclasses hold their own packed codes and metadata; this base fixes the interface (see the module
    docstring for the state protocol ``to_state`` / ``from_state``).
    """

    #: shape of the original weight, ``(out_features, in_features)``
    shape: tuple[int, int]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _WEIGHT_CLASSES[cls.state_class()] = cls

    @classmethod
    def state_class(cls) -> str:
        """The registry key saved as ``meta["class"]``: ``"module:QualName"``."""
        return f"{cls.__module__}:{cls.__qualname__}"

    @abc.abstractmethod
    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rebuild the approximation ``Ŵ`` of the original weight, shaped like it."""

    @property
    @abc.abstractmethod
    def storage_bits(self) -> int:
        """Total bits stored: codes + scales + zero points + codebooks + anything else needed to decode."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        """Honest bits per weight: :attr:`storage_bits` divided by the number of weights."""
        return self.storage_bits / self.numel

    def state_meta(self, **fields: Any) -> dict[str, Any]:
        """The metadata every state carries (``class``, ``shape``) plus ``fields``."""
        return {"class": self.state_class(), "shape": [int(s) for s in self.shape], **fields}

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """``(tensors, meta)``: everything needed to rebuild this weight (see the module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement to_state(); it cannot be saved")

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> QuantizedWeight:
        """Rebuild a weight saved by :meth:`to_state`."""
        raise NotImplementedError(f"{cls.__name__} does not implement from_state(), so it cannot be loaded")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, bits_per_weight={self.bits_per_weight:.4g})"


def weight_from_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> QuantizedWeight:
    """Rebuild a :class:`QuantizedWeight` from ``to_state()``'s output, dispatching on ``meta["class"]``.

    A class defined in a ``qcourse`` module that is not imported yet is imported first; any other unknown
    class is refused (a file never makes us import arbitrary code).
    """
    if not isinstance(meta, Mapping) or not isinstance(meta.get("class"), str):
        raise ValueError(f"meta must be a dict with a 'class' entry (str); got {meta!r}")
    if not isinstance(tensors, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise TypeError("tensors must be a dict of name (str) -> torch.Tensor")
    key = meta["class"]
    module = key.split(":", 1)[0]
    if key not in _WEIGHT_CLASSES and (module == "qcourse" or module.startswith("qcourse.")):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(f"meta['class'] {key!r}: cannot import {module!r} ({exc})") from None
    if key not in _WEIGHT_CLASSES:
        raise ValueError(f"meta['class'] {key!r} is not a known QuantizedWeight class; known: "
                         f"{sorted(k for k in _WEIGHT_CLASSES if k.startswith('qcourse.'))}")
    shape = meta.get("shape")
    if (not isinstance(shape, list | tuple) or len(shape) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ValueError(f"meta['shape'] must be [out_features, in_features] (positive ints); got {shape!r}")
    try:
        return _WEIGHT_CLASSES[key].from_state(tensors, meta)
    except KeyError as exc:
        raise ValueError(f"meta for {key!r} lacks the entry {exc}; got {sorted(meta)}") from None


def state_tensor(tensors: Mapping[str, torch.Tensor], name: str, dtype: torch.dtype,
                 shape: Sequence[int]) -> torch.Tensor:
    """``tensors[name]``, checked to have ``dtype`` and ``shape`` (``ValueError`` naming what differs).

    >>> import torch
    >>> state_tensor({"scale": torch.zeros(3)}, "scale", torch.float16, (3,))
    Traceback (most recent call last):
    ...
    ValueError: state tensor 'scale' must be torch.float16 of shape (3,); got torch.float32 of shape (3,)
    """
    if name not in tensors:
        raise ValueError(f"state tensor {name!r} is missing; got {sorted(tensors)}")
    t = tensors[name]
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ValueError(f"state tensor {name!r} must be {dtype} of shape {tuple(shape)}; "
                         f"got {t.dtype} of shape {tuple(t.shape)}")
    return t


def to_float_dtype(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast a dequantized weight to ``dtype``, refusing values the dtype cannot hold (no silent ``inf``).

    >>> import torch
    >>> to_float_dtype(torch.tensor([1.0, 7e4]), torch.float16)
    Traceback (most recent call last):
    ...
    ValueError: the dequantized weight reaches 7e+04, beyond torch.float16's range (max 6.55e+04); \
dequantize to torch.float32 instead
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
    out = w.to(dtype)
    if dtype.itemsize < w.dtype.itemsize and w.numel() and not torch.isfinite(out).all():
        big = float(w.abs().max())
        raise ValueError(f"the dequantized weight reaches {big:.3g}, beyond {dtype}'s range (max "
                         f"{torch.finfo(dtype).max:.3g}); dequantize to torch.float32 instead")
    return out


def check_weight(w: torch.Tensor) -> None:
    """Refuse anything but a finite, floating-point 2-D tensor."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor; got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [out_features, in_features]; got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor; got dtype {w.dtype}")
    if w.numel() == 0:
        raise ValueError("w must not be empty")
    if not torch.isfinite(w.detach()).all():
        raise ValueError("w contains NaN or Inf; quantization needs finite weights")
