"""The contract every quantization method follows, its shared validation, and the saved-weight protocol.

A method turns a float weight ``w`` (``[out_features, in_features]``, PyTorch layout) into a
:class:`QuantizedWeight`: an object that knows how to rebuild an approximation of ``w`` and how many bits
it really stores per weight (codes, scales, zero points, codebooks, sign vectors, all at their stored
precision). Calibration-aware methods also take ``hessian = E[x xᵀ]`` of the layer's inputs.

**Writing a method.** Subclass :class:`Method` and implement ``_quantize``; :meth:`Method.quantize`
validates everything once before calling it: options against :attr:`Method.defaults` (unknown names and
wrong types refused), ``bits`` against :attr:`Method.supported_bits` (``4.0`` becomes ``4``, ``1.58``
stays ternary, ``True`` is refused), the weight (detached, so a layer's ``nn.Parameter`` is accepted as
is), the group size, the Hessian for methods that need one, and the seed.

>>> import torch
>>> class Halves(QuantizedWeight):            # a toy weight: multiples of 1/2 stored in 4 bits each
...     def __init__(self, w):
...         self.shape, self.q = tuple(w.shape), torch.round(2 * w) / 2
...     def dequantize(self, dtype=torch.float32):
...         return self.q.to(dtype)
...     @property
...     def storage_bits(self):
...         return 4 * self.q.numel()
>>> class RoundHalves(Method):
...     def _quantize(self, w, bits, group_size, hessian, seed, opts):
...         return Halves(w * opts["gain"])
>>> m = RoundHalves(name="halves", supported_bits=(4,), defaults={"gain": 1.0})
>>> m.quantize(torch.tensor([[0.2, 0.8]]), bits=4.0).dequantize().tolist()
[[0.0, 1.0]]
>>> m.quantize(torch.ones(1, 2), bits=4, gian=2.0)
Traceback (most recent call last):
...
ValueError: unknown option(s) ['gian'] for halves; allowed: gain
>>> m.quantize(torch.ones(1, 2), bits=True)
Traceback (most recent call last):
...
TypeError: bits must be a number (one of [4]) for halves; got bool True

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
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qcourse.ldlq import BlockQuantizer

__all__ = [
    "QuantizedWeight", "Method", "BlockQuantizer", "check_weight", "check_group_size", "check_hessian",
    "check_bits", "check_seed", "parse_options", "weight_from_state", "state_tensor", "to_float_dtype",
]

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


# --- validation ----------------------------------------------------------------------------------------


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


def check_group_size(group_size: int | None, in_features: int) -> None:
    """``group_size`` must be ``None`` (whole row) or a positive integer dividing ``in_features``."""
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int or None (per-channel); got {group_size!r}")
    if in_features % group_size:
        raise ValueError(
            f"group_size={group_size} does not divide in_features={in_features}; "
            f"choose a divisor of {in_features} or None for per-channel"
        )


def check_hessian(hessian: torch.Tensor | None, in_features: int, required: bool, method: str) -> None:
    """Validate a calibration second moment ``E[x xᵀ]``: square, finite, symmetric, not all zero."""
    if hessian is None:
        if required:
            raise ValueError(f"{method} needs hessian=E[x xᵀ] from calibration data ([in, in]); got None")
        return
    if not isinstance(hessian, torch.Tensor) or not hessian.is_floating_point():
        raise TypeError(f"hessian must be a floating-point torch.Tensor; got {type(hessian).__name__}")
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"hessian must be [{in_features}, {in_features}] (in_features squared); "
            f"got {tuple(hessian.shape)}"
        )
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian contains NaN or Inf")
    scale = float(hessian.abs().max())
    if scale == 0:
        raise ValueError("hessian is all zero: the calibration inputs of this layer are all zero, so there "
                         "is nothing to calibrate on; check the calibration data")
    asym = float((hessian - hessian.T).abs().max())
    if asym > 1e-6 * scale:
        raise ValueError(f"hessian must be symmetric (E[x xᵀ]); max |H − Hᵀ| = {asym:.3g} against max |H| = "
                         f"{scale:.3g}")


def check_bits(bits: Any, supported: Sequence[float], method: str) -> float:
    """``bits`` as the method will use it: a member of ``supported``; integral floats become ``int``.

    >>> check_bits(4.0, (2, 4), "rtn"), check_bits(1.58, (1.58, 2), "hqq")
    (4, 1.58)
    >>> check_bits(3, (2, 4), "rtn")
    Traceback (most recent call last):
    ...
    ValueError: bits must be one of [2, 4] for rtn; got 3
    """
    if isinstance(bits, bool) or not isinstance(bits, numbers.Real):
        raise TypeError(f"bits must be a number (one of {list(supported)}) for {method}; "
                        f"got {type(bits).__name__} {bits!r}")
    value: float = int(bits) if float(bits).is_integer() else float(bits)
    if value not in supported:
        raise ValueError(f"bits must be one of {list(supported)} for {method}; got {bits!r}")
    return value


def check_seed(seed: Any) -> int:
    """``seed`` must be a non-negative int (not ``bool``)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    return int(seed)


def parse_options(options: Mapping[str, Any], defaults: Mapping[str, Any], method: str) -> dict[str, Any]:
    """``defaults`` updated with ``options``; unknown names and values of the wrong type are refused.

    A default's type is the option's type: ``bool`` options take only ``True``/``False`` (``"no"`` is a
    ``TypeError``, not truthy), ``int`` options an ``int``, ``float`` options any real number (returned as
    ``float``), ``str`` options a ``str``; an option whose default is ``None`` is checked by the method.

    >>> parse_options({"act_order": "no"}, {"act_order": False}, "gptq")
    Traceback (most recent call last):
    ...
    TypeError: act_order must be True or False for gptq; got 'no'
    """
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for {method}; "
                         f"allowed: {', '.join(sorted(defaults)) or 'none'}")
    out = dict(defaults)
    for name, value in options.items():
        default = defaults[name]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False for {method}; got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int for {method}; got {value!r}")
            value = int(value)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number for {method}; got {value!r}")
            value = float(value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise TypeError(f"{name} must be a str for {method}; got {value!r}")
        out[name] = value
    return out


# --- methods ---------------------------------------------------------------------------------------------


@dataclass
class Method:
    """A quantization method: a name, what it supports, and :meth:`quantize`.

    Subclasses implement :meth:`_quantize` (and, where needed, :meth:`check_options` and
    :meth:`check_group`); :meth:`quantize` does the shared validation.
    """

    name: str
    supported_bits: Sequence[float]
    needs_hessian: bool = False
    description: str = ""
    #: every option the method takes, with its default (and, through the default, its type)
    defaults: dict[str, Any] = field(default_factory=dict)

    def quantize(self, w: torch.Tensor, bits: float, group_size: int | None = None,
                 hessian: torch.Tensor | None = None, seed: int = 0, **options: Any) -> QuantizedWeight:
        """Quantize ``w`` (``[out, in]``) to ``bits`` bits with groups of ``group_size`` inputs.

        ``group_size=None`` means one group per output row (per-channel). ``hessian`` is
        ``E[x xᵀ]`` (``[in, in]``, float64) for calibration-aware methods and ignored by the others.
        ``options`` are the method's :attr:`defaults` to override. ``w`` may be a layer's
        ``nn.Parameter``: it is detached, never modified.
        """
        opts = parse_options(options, self.defaults, self.name)
        self.check_options(opts)
        bits = self.check_bits(bits)
        check_weight(w)
        w = w.detach()
        self.check_group(tuple(w.shape), group_size, opts)
        if self.needs_hessian:
            check_hessian(hessian, w.shape[1], required=True, method=self.name)
        return self._quantize(w, bits, group_size, hessian, check_seed(seed), opts)

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> QuantizedWeight:
        """The method itself, on validated arguments (``w`` detached, ``bits`` normalised, full ``opts``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _quantize (or override quantize)")

    def check_options(self, opts: dict[str, Any]) -> None:
        """Method-specific checks of option values (types are already checked); default: none."""

    def check_group(self, shape: tuple[int, int], group_size: Any, opts: dict[str, Any]) -> None:
        """Check ``group_size`` for a weight of ``shape``; default: ``None`` or a divisor of in_features."""
        check_group_size(group_size, shape[1])

    def check_bits(self, bits: Any) -> float:
        """``bits`` normalised (``4.0`` → ``4``) and checked against :attr:`supported_bits`."""
        return check_bits(bits, self.supported_bits, self.name)

    def check_args(self, w: torch.Tensor, bits: float, group_size: int | None) -> None:
        """Weight, bits and group size checks for subclasses that override :meth:`quantize` themselves."""
        check_weight(w)
        self.check_bits(bits)
        check_group_size(group_size, w.shape[1])
