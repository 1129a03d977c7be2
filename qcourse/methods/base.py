"""The contract every quantization method follows and its shared validation.

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

Every :class:`QuantizedWeight` can be saved through the state protocol of :mod:`qcourse.quantized_weight`
(``to_state`` / ``from_state`` / :func:`weight_from_state`), re-exported here; the quantizer seam of
error-feedback loops, :class:`BlockQuantizer`, comes from :mod:`qcourse.ldlq`.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from qcourse.ldlq import BlockQuantizer
from qcourse.quantized_weight import (
    QuantizedWeight,
    check_weight,
    state_tensor,
    to_float_dtype,
    weight_from_state,
)

__all__ = [
    "QuantizedWeight", "Method", "BlockQuantizer", "check_weight", "check_group_size", "check_hessian",
    "check_bits", "check_seed", "parse_options", "weight_from_state", "state_tensor", "to_float_dtype",
]



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
    #: whether ``group_size`` means anything to the method (a class attribute: codebook, lattice and
    #: per-tensor methods set it to False, and sweeps/benchmarks then pass ``None``)
    uses_group_size: ClassVar[bool] = True

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
