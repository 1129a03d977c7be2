"""Number formats for neural-network weights, implemented from their bit layouts.

Everything here is built from first principles with integer operations on the IEEE-754 binary64 bit
pattern of the input; torch's own ``float8_*`` / ``bfloat16`` / ``float16`` casts are used only as the
independent reference in the tests.

What is here
------------
* :class:`FloatFormat` — a sign/exponent/mantissa format (FP32, BF16, FP16, FP8 E4M3 and E5M2, FP4 E2M1):
  :meth:`~FloatFormat.encode` to bit patterns with round-to-nearest-even (RNE), subnormals, signed zero,
  NaN propagation and the format's overflow rule; :meth:`~FloatFormat.decode`; :meth:`~FloatFormat.round`
  (``decode(encode(x))``); :meth:`~FloatFormat.all_values`; range figures.
* Block-scaled 4-bit formats: :func:`mxfp4_encode` / :func:`mxfp4_decode` (OCP MX v1.0: E2M1 elements,
  one E8M0 power-of-two scale per 32) and :func:`nvfp4_encode` / :func:`nvfp4_decode` (E2M1 elements, an
  E4M3 scale per 16, an FP32 scale per tensor).
* :func:`quantize` — any format of :data:`FORMAT_NAMES` at a chosen scale granularity (per tensor, per
  channel, blocks of 32 or 16), returning the dequantized tensor; :func:`relative_mse`;
  :func:`relative_error`.
* Bits-per-weight accounting of a format: :func:`bits_per_weight` (element bits plus the scales and zero
  points it stores). What those bits cost a whole model, and which GPU holds it, is :mod:`qcourse.sizing`.

Overflow rules (``saturate``)
-----------------------------
``saturate=True`` clamps finite overflow *and infinities* to ±max (the OCP FP8 spec's saturating mode,
CUDA's ``__NV_SATFINITE``). ``saturate=False`` is the non-saturating mode: overflow becomes ±inf in formats
with infinities (IEEE formats, E5M2) and NaN in E4M3, which has no infinity. "Overflow" means that the
value *after* RNE exceeds max: in E4M3, 464 (exactly half-way between 448 and the would-be 480) rounds to 448.
E2M1 has neither inf nor NaN and always saturates. Each format has a default: torch's casts to
``float8_e4m3fn`` saturate since PyTorch PR #178817 (April 2026; the torch 2.13 used here does; older
torch and ``ml_dtypes`` return NaN), so :data:`E4M3` saturates by default and agrees with the installed
torch bit for bit; the IEEE formats and E5M2 do not saturate by default, as torch.

>>> E4M3.round(torch.tensor([0.3, 300.0, 465.0, 1e6])).tolist()
[0.3125, 288.0, 448.0, 448.0]
>>> E4M3.round(torch.tensor([465.0, float("inf")]), saturate=False).tolist()
[nan, nan]
>>> E5M2.round(torch.tensor([61439.0, 61440.0])).tolist()
[57344.0, inf]
>>> hex(E4M3.encode(-448.0)), E4M3.decode(0x7F)
('0xfe', nan)
>>> bits_per_weight("int4", group_size=128, scale_bits=16, zero_bits=16)
4.25
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

__all__ = [
    "FloatFormat", "IntFormat", "FP32", "BF16", "FP16", "E4M3", "E5M2", "E2M1", "FLOAT_FORMATS",
    "INT8", "INT4", "INT4_ASYM", "FORMAT_NAMES", "FORMAT_LABELS", "GRANULARITIES", "get_format",
    "mxfp4_encode", "mxfp4_decode", "nvfp4_encode", "nvfp4_decode", "E8M0_NAN",
    "quantize", "natural_granularity", "relative_mse", "relative_error", "magnitude_sweep",
    "student_t_like", "error_table",
    "range_table", "bits_per_weight",
]

_MANT64 = (1 << 52) - 1


# --------------------------------------------------------------------------------------------------------
# input / output plumbing: accept Python numbers, numpy arrays and torch tensors; answer in the same kind
# --------------------------------------------------------------------------------------------------------

def _to_f64(x: Any, name: str) -> tuple[np.ndarray, str, torch.device | None]:
    """Return ``x`` as a float64 numpy array (exact for every float dtype up to 64 bits) and its kind."""
    if isinstance(x, torch.Tensor):
        if not (x.is_floating_point()):
            raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
        return x.detach().cpu().to(torch.float64).numpy(), "torch", x.device
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array; got dtype {x.dtype}")
        return x.astype(np.float64), "numpy", None
    if isinstance(x, bool) or not isinstance(x, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a float, a numpy array or a torch tensor; got {type(x).__name__}")
    return np.asarray(float(x), dtype=np.float64), "scalar", None


def _to_codes(bits: Any, name: str) -> tuple[np.ndarray, str, torch.device | None]:
    if isinstance(bits, torch.Tensor):
        if bits.is_floating_point() or bits.is_complex() or bits.dtype == torch.bool:
            raise TypeError(f"{name} must hold integers (bit patterns); got dtype {bits.dtype}")
        return bits.detach().cpu().to(torch.int64).numpy(), "torch", bits.device
    if isinstance(bits, np.ndarray):
        if bits.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers (bit patterns); got dtype {bits.dtype}")
        return bits.astype(np.int64), "numpy", None
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer):
        raise TypeError(f"{name} must be an int, an integer array or tensor; got {type(bits).__name__}")
    return np.asarray(int(bits), dtype=np.int64), "scalar", None


def _check_float_tensor(x: Any, name: str) -> None:
    """TypeError unless ``x`` is a real floating-point torch tensor; the message names what it got."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a floating-point torch tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch tensor; got {x.dtype}")


def _answer(a: np.ndarray, kind: str, dev: torch.device | None, dtype: type) -> Any:
    """``a`` as ``dtype`` (np.float32 values, np.int64 codes) in the kind of the input: Python number,
    numpy array or torch tensor on the input's device."""
    a = np.array(a, dtype=dtype, order="C")  # not np.ascontiguousarray: it turns 0-d into shape (1,)
    if kind == "scalar":
        return a.item()
    if kind == "numpy":
        return a
    return torch.from_numpy(a).to(dev)


# --------------------------------------------------------------------------------------------------------
# floating-point formats
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format: 1 sign bit, ``exponent_bits``, ``mantissa_bits``.

    Parameters
    ----------
    name
        Display name, e.g. ``"FP8 E4M3"``.
    exponent_bits, mantissa_bits
        Field widths (at most 8 and 23, so every value is exactly a float32).
    bias
        Exponent bias: a normal number with exponent field ``e`` is ``(1 + m / 2**M) * 2**(e - bias)``;
        field 0 holds zero and the subnormals ``(m / 2**M) * 2**(1 - bias)``.
    special
        ``"ieee"``: the all-ones exponent holds ±inf (mantissa 0) and NaN (anything else);
        ``"fn"`` ("finite"; E4M3): no infinities, only ``S.1111.111`` is NaN, the rest of the top binade
        are ordinary numbers; ``"none"`` (E2M1): every pattern is a number.
    nan_code
        The positive NaN pattern :meth:`encode` writes (the sign bit of the input NaN is kept), chosen
        to match torch's casts.
    saturate_default
        Overflow rule used when ``saturate=None`` (see the module docstring).

    Examples
    --------
    >>> E4M3.max_value, E4M3.min_normal, E4M3.min_subnormal
    (448.0, 0.015625, 0.001953125)
    >>> E2M1.all_values().tolist()
    [-6.0, -4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    >>> E2M1.round(torch.tensor([0.25, 0.75, 2.5, 5.0, 7.0]))  # ties to even; 7 saturates
    tensor([0., 1., 2., 4., 6.])
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    special: Literal["ieee", "fn", "none"]
    nan_code: int | None
    saturate_default: bool

    def __post_init__(self) -> None:
        if not (1 <= self.exponent_bits <= 8):
            raise ValueError(f"exponent_bits must be in 1..8; got {self.exponent_bits}")
        if not (0 <= self.mantissa_bits <= 23):
            raise ValueError(f"mantissa_bits must be in 0..23; got {self.mantissa_bits}")
        if self.special not in ("ieee", "fn", "none"):
            raise ValueError(f"special must be 'ieee', 'fn' or 'none'; got {self.special!r}")
        if (self.nan_code is None) != (self.special == "none"):
            raise ValueError("nan_code must be given exactly when the format has NaN (special != 'none')")

    # ---- layout figures ------------------------------------------------------------------------------
    @property
    def total_bits(self) -> int:
        """Bits per value: 1 + exponent + mantissa."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def has_inf(self) -> bool:
        return self.special == "ieee"

    @property
    def has_nan(self) -> bool:
        return self.special != "none"

    @property
    def _max_mag_code(self) -> int:
        """Bit pattern (sign bit clear) of the largest finite value."""
        top = (1 << self.exponent_bits) - 1
        if self.special == "ieee":
            return ((top - 1) << self.mantissa_bits) | ((1 << self.mantissa_bits) - 1)
        if self.special == "fn":
            return (top << self.mantissa_bits) | ((1 << self.mantissa_bits) - 2)
        return (top << self.mantissa_bits) | ((1 << self.mantissa_bits) - 1)

    @property
    def _inf_code(self) -> int:
        return ((1 << self.exponent_bits) - 1) << self.mantissa_bits

    @property
    def max_value(self) -> float:
        """Largest finite value."""
        return float(self.decode(self._max_mag_code))

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value, ``2**(1 - bias)``."""
        return math.ldexp(1.0, 1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value, ``2**(1 - bias - M)`` (E2M1's is 0.5)."""
        return math.ldexp(1.0, 1 - self.bias - self.mantissa_bits)

    @property
    def epsilon(self) -> float:
        """Gap between 1 and the next value, ``2**-M``: twice the worst relative rounding error."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @property
    def decimal_digits(self) -> float:
        """Significant decimal digits of a normal number, ``(M + 1) * log10(2)``."""
        return (self.mantissa_bits + 1) * math.log10(2.0)

    @property
    def dynamic_range_decades(self) -> float:
        """``log10(max / min_subnormal)``: how many powers of ten the nonzero values span."""
        return math.log10(self.max_value / self.min_subnormal)

    # ---- encode / decode ----------------------------------------------------------------------------
    def _resolve_saturate(self, saturate: bool | None) -> bool:
        if saturate is None:
            return self.saturate_default
        if not isinstance(saturate, bool):
            raise TypeError(f"saturate must be True, False or None; got {saturate!r}")
        if self.special == "none" and not saturate:
            raise ValueError(f"{self.name} has neither inf nor NaN: it can only saturate "
                             "(saturate=False given)")
        return saturate

    def _encode_f64(self, x: np.ndarray, saturate: bool, nan_ok: bool) -> np.ndarray:
        """RNE of float64 values onto this format, as integer bit patterns (int64)."""
        M, Ebits = self.mantissa_bits, self.exponent_bits
        u = np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)
        sign = (u >> np.uint64(63)).astype(np.int64)
        e64 = ((u >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
        m64 = (u & np.uint64(_MANT64)).astype(np.int64)
        is_nan = (e64 == 0x7FF) & (m64 != 0)
        is_inf = (e64 == 0x7FF) & (m64 == 0)
        if is_nan.any() and not nan_ok:
            raise ValueError(f"x contains NaN, which {self.name} cannot encode (it has no NaN pattern)")

        # binary64 value = sig * 2**(E - 52), with the implicit leading 1 for normal inputs
        sig = np.where(e64 == 0, m64, m64 | (1 << 52))
        E = np.where(e64 == 0, -1022, e64 - 1023)
        emin = 1 - self.bias
        e_eff = np.maximum(E, emin)  # below emin the quantum stops shrinking: subnormals
        # round sig to a multiple of 2**shift, i.e. to a multiple of the target quantum 2**(e_eff - M)
        shift = np.minimum(52 - M + (e_eff - E), 60)  # >= 55 already means "rounds to 0"
        r = sig >> shift
        rem = sig & ((np.int64(1) << shift) - 1)
        half = np.int64(1) << (shift - 1)
        r = r + ((rem > half) | ((rem == half) & ((r & 1) == 1))).astype(np.int64)
        # r * 2**(e_eff - M) is the rounded magnitude; r in [2**M, 2**(M+1)] for normals
        carry = r >= (1 << (M + 1))
        r = np.where(carry, r >> 1, r)
        e_eff = e_eff + carry
        exp_field = np.where(r >= (1 << M), e_eff + self.bias, 0)
        mant = np.where(r >= (1 << M), r - (1 << M), r)
        # exponents far above the format's range: clip before building the code (overflow handled below)
        exp_field = np.minimum(exp_field, (1 << (Ebits + 1)))
        mag = (exp_field << M) | mant

        max_code = self._max_mag_code
        overflow = (mag > max_code) | is_inf
        if saturate:
            over_code = max_code
        elif self.has_inf:
            over_code = self._inf_code
        else:  # E4M3 non-saturating: overflow and inf become NaN
            over_code = self.nan_code
        mag = np.where(overflow, over_code, mag)
        if self.has_nan:
            mag = np.where(is_nan, self.nan_code, mag)
        return ((sign << (Ebits + M)) | mag).reshape(np.shape(x))

    def encode(self, x: Any, saturate: bool | None = None) -> Any:
        """Round ``x`` to the nearest value (ties to even) and return its bit pattern.

        Parameters
        ----------
        x
            A float, numpy array or torch tensor of any float dtype.
        saturate
            Overflow rule (module docstring); ``None`` uses :attr:`saturate_default`.

        Returns
        -------
        int, or an int64 array / tensor shaped like ``x``.

        Examples
        --------
        >>> E5M2.encode(torch.tensor([1.0, -2.0, float("inf"), 1e-9]))
        tensor([ 60, 192, 124,   0])
        >>> BF16.encode(1.0) == 0x3F80, FP16.encode(65520.0) == 0x7C00  # 65520 ties up to inf in FP16
        (True, True)
        """
        sat = self._resolve_saturate(saturate)
        arr, kind, dev = _to_f64(x, "x")
        return _answer(self._encode_f64(arr, sat, nan_ok=self.has_nan), kind, dev, np.int64)

    def _decode_np(self, c: np.ndarray) -> np.ndarray:
        M, Ebits = self.mantissa_bits, self.exponent_bits
        if c.size and (c.min() < 0 or c.max() >= (1 << self.total_bits)):
            raise ValueError(f"bits must be in [0, 2**{self.total_bits}) for {self.name}; "
                             f"got values in [{c.min()}, {c.max()}]")
        sign = (c >> (Ebits + M)) & 1
        e = (c >> M) & ((1 << Ebits) - 1)
        m = c & ((1 << M) - 1)
        sig = np.where(e == 0, m, m | (1 << M)).astype(np.float64)
        mag = np.ldexp(sig, (np.maximum(e, 1) - self.bias - M).astype(np.int32))
        top = (1 << Ebits) - 1
        if self.special == "ieee":
            mag = np.where(e == top, np.where(m == 0, np.inf, np.nan), mag)
        elif self.special == "fn":
            mag = np.where((e == top) & (m == (1 << M) - 1), np.nan, mag)
        return np.where(sign == 1, -mag, mag)

    def decode(self, bits: Any) -> Any:
        """Value of each bit pattern (float; float32 array/tensor for array input).

        >>> E4M3.decode(torch.tensor([0x01, 0x38, 0x7E, 0x80, 0xFF])).tolist()
        [0.001953125, 1.0, 448.0, -0.0, nan]
        """
        c, kind, dev = _to_codes(bits, "bits")
        return _answer(self._decode_np(c), kind, dev, np.float32)

    def round(self, x: Any, saturate: bool | None = None) -> Any:
        """``decode(encode(x))``: the nearest representable value (RNE) under the overflow rule.

        NaN in gives NaN out, also for E2M1, which cannot encode NaN (its MX/NVFP4 containers signal NaN
        through the scale). The result is float32 (every value of these formats is exactly a float32).

        >>> FP16.round(torch.tensor([1 + 2**-11, 1 + 3 * 2**-11, 1e-8]))  # ties to even; 1e-8 underflows
        tensor([1.0000, 1.0020, 0.0000])
        """
        sat = self._resolve_saturate(saturate)
        arr, kind, dev = _to_f64(x, "x")
        nan = np.isnan(arr)
        codes = self._encode_f64(np.where(nan, 0.0, arr), sat, nan_ok=True)
        vals = np.where(nan, np.nan, self._decode_np(codes))
        return _answer(vals, kind, dev, np.float32)

    def all_values(self) -> torch.Tensor:
        """Every finite value of the format, ascending, zero once (float32 tensor).

        >>> E4M3.all_values().numel(), E5M2.all_values().numel()  # 2*126+1 and 2*123+1
        (253, 247)
        """
        if self.total_bits > 16:
            raise ValueError(f"{self.name} has 2**{self.total_bits} patterns: too many to list "
                             "(all_values supports formats of at most 16 bits)")
        v = self._decode_np(np.arange(1 << self.total_bits, dtype=np.int64))
        v = np.unique(v[np.isfinite(v)] + 0.0)  # -0.0 + 0.0 is +0.0: one zero
        return torch.from_numpy(v.astype(np.float32))

    def fields(self, bits: int) -> tuple[int, int, int]:
        """Split one bit pattern into ``(sign, exponent field, mantissa field)``.

        >>> E4M3.fields(0xB9)  # 1.0111.001 -> -(1 + 1/8) * 2**(7-7)
        (1, 7, 1)
        """
        c, _, _ = _to_codes(bits, "bits")
        self._decode_np(c)  # range check
        b = int(c)
        exp_field = (b >> self.mantissa_bits) & ((1 << self.exponent_bits) - 1)
        return (b >> (self.total_bits - 1)) & 1, exp_field, b & ((1 << self.mantissa_bits) - 1)


FP32 = FloatFormat("FP32", 8, 23, 127, "ieee", 0x7FC00000, False)
BF16 = FloatFormat("BF16", 8, 7, 127, "ieee", 0x7FC0, False)
FP16 = FloatFormat("FP16", 5, 10, 15, "ieee", 0x7E00, False)
#: OCP FP8 E4M3 ("e4m3fn" in torch): no inf, NaN only at S.1111.111, max 448
E4M3 = FloatFormat("FP8 E4M3", 4, 3, 7, "fn", 0x7F, True)
#: OCP FP8 E5M2: IEEE-like, ±inf and NaN, max 57344 (torch writes NaN as 0x7F)
E5M2 = FloatFormat("FP8 E5M2", 5, 2, 15, "ieee", 0x7F, False)
#: OCP MX FP4 E2M1: values ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}, no inf, no NaN
E2M1 = FloatFormat("FP4 E2M1", 2, 1, 1, "none", None, True)

FLOAT_FORMATS: dict[str, FloatFormat] = {
    "fp32": FP32, "bf16": BF16, "fp16": FP16, "fp8_e4m3": E4M3, "fp8_e5m2": E5M2, "fp4_e2m1": E2M1,
}

#: E8M0 scale pattern meaning NaN (OCP Microscaling Formats (MX) v1.0 specification)
E8M0_NAN = 0xFF


# --------------------------------------------------------------------------------------------------------
# integer, ternary and binary formats (always used with a scale)
# --------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class IntFormat:
    """A ``bits``-bit integer grid used with a scale (and, asymmetric, an integer zero point).

    Symmetric: codes ``-(2**(b-1) - 1) .. 2**(b-1) - 1`` and ``scale = amax / (2**(b-1) - 1)`` (the
    "restricted range": -128 is left out so the grid is symmetric about 0). Asymmetric: codes
    ``0 .. 2**b - 1``, ``scale = (max - min) / (2**b - 1)``, ``zero = round(-min / scale)``.

    >>> INT4.levels().tolist()
    [-7.0, -6.0, -5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """

    name: str
    bits: int
    symmetric: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    def levels(self) -> torch.Tensor:
        """The integer codes as a float tensor (multiply by the scale, after subtracting the zero point)."""
        return torch.arange(self.qmin, self.qmax + 1, dtype=torch.float32)


INT8 = IntFormat("INT8", 8, True)
INT4 = IntFormat("INT4", 4, True)
INT4_ASYM = IntFormat("INT4 asym", 4, False)

#: every format :func:`quantize` knows, in the order lessons show them
FORMAT_NAMES: tuple[str, ...] = (
    "fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "mxfp4", "nvfp4",
    "int8", "int4", "int4_asym", "ternary", "binary",
)
FORMAT_LABELS: dict[str, str] = {
    "fp32": "FP32", "bf16": "BF16", "fp16": "FP16", "fp8_e4m3": "FP8 E4M3", "fp8_e5m2": "FP8 E5M2",
    "fp4_e2m1": "FP4 E2M1", "mxfp4": "MXFP4", "nvfp4": "NVFP4", "int8": "INT8", "int4": "INT4",
    "int4_asym": "INT4 asym", "ternary": "ternary (absmean)", "binary": "binary (sign·mean|w|)",
}
_INT_FORMATS = {"int8": INT8, "int4": INT4, "int4_asym": INT4_ASYM}

#: scale granularities :func:`quantize` accepts
GRANULARITIES: tuple[str, ...] = ("tensor", "channel", "block32", "block16")


def get_format(name: str) -> FloatFormat | IntFormat:
    """The :class:`FloatFormat` or :class:`IntFormat` behind a format name (MX/NVFP4 elements: E2M1).

    >>> get_format("mxfp4") is E2M1, get_format("int8").qmax
    (True, 127)
    """
    _check_format_name(name)
    if name in FLOAT_FORMATS:
        return FLOAT_FORMATS[name]
    if name in ("mxfp4", "nvfp4"):
        return E2M1
    if name in _INT_FORMATS:
        return _INT_FORMATS[name]
    raise ValueError(f"{name} has no element format object (its levels are -1, 0, 1 or -1, 1 times a scale)")


def _check_format_name(name: Any) -> None:
    if name not in FORMAT_NAMES:
        raise ValueError(f"fmt must be one of {list(FORMAT_NAMES)}; got {name!r}")


# --------------------------------------------------------------------------------------------------------
# MXFP4 and NVFP4
# --------------------------------------------------------------------------------------------------------

def _blocks(t: torch.Tensor, block: int) -> torch.Tensor:
    """``t`` viewed as ``[..., n_blocks, block]`` along its last dimension (sizes spelled out, so that an
    empty tensor reshapes too: ``-1`` is ambiguous when there are no elements)."""
    return t.reshape(*t.shape[:-1], t.shape[-1] // block, block)


def _check_blocks(x: torch.Tensor, block: int, name: str) -> None:
    _check_float_tensor(x, "x")
    if x.ndim == 0 or x.shape[-1] % block != 0:
        raise ValueError(f"{name} scales blocks of {block} along the last dimension: its size must be a "
                         f"multiple of {block}; got shape {tuple(x.shape)} (nothing is padded)")


def mxfp4_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OCP MXFP4: E2M1 element codes and one E8M0 scale code per 32 consecutive values.

    Per block (the conversion algorithm of the OCP Microscaling Formats (MX) v1.0 specification):
    ``X = 2**(floor(log2(amax)) - 2)`` (2 is E2M1's largest exponent), elements ``P_i = E2M1(V_i / X)``
    with RNE and clamping to ±6. So ``amax / X`` lies in [4, 8): the largest values of a block may be
    clamped to 6X. The scale is stored as the E8M0 code ``exponent + 127`` (clamped to 0..254); a block
    holding NaN or ±inf gets the NaN scale code 0xFF (an all-zero block gets code 0: any scale decodes
    it to zeros).

    Returns
    -------
    codes : uint8 tensor shaped like ``x`` (E2M1 patterns 0..15)
    scales : uint8 tensor shaped ``x.shape[:-1] + (x.shape[-1] // 32,)``

    Examples
    --------
    >>> x = torch.zeros(32); x[0], x[1], x[2] = 7.0, 1.0, -0.3
    >>> codes, scales = mxfp4_encode(x)
    >>> int(scales[0]) - 127   # floor(log2 7) - 2 = 0  ->  X = 1
    0
    >>> mxfp4_decode(codes, scales)[:3]  # 7 is clamped to 6
    tensor([ 6.0000,  1.0000, -0.5000])
    """
    _check_blocks(x, 32, "MXFP4")
    v = _blocks(x.detach().to(torch.float64), 32)
    special = ~torch.isfinite(v).all(dim=-1)
    amax = torch.where(torch.isfinite(v), v.abs(), torch.zeros_like(v)).amax(dim=-1)
    # floor(log2(amax)) read off the binary64 exponent field (exact; no log rounding at powers of two)
    _, exp = torch.frexp(amax)  # amax = mant * 2**exp with mant in [0.5, 1)
    shared = (exp.to(torch.int64) - 1) - 2
    shared = torch.where(amax > 0, shared, torch.full_like(shared, -127)).clamp(-127, 127)
    scale_codes = torch.where(special, torch.full_like(shared, E8M0_NAN), shared + 127)
    X = torch.ldexp(torch.ones_like(amax), shared)
    elems = torch.where(torch.isfinite(v), v, torch.zeros_like(v)) / X[..., None]
    codes = E2M1.encode(elems, saturate=True)
    return codes.reshape(x.shape).to(torch.uint8), scale_codes.to(torch.uint8)


def mxfp4_decode(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Values of MXFP4 data: ``E2M1(code) * 2**(scale - 127)``, NaN where the scale code is 0xFF.

    >>> mxfp4_decode(torch.tensor([2] * 32, dtype=torch.uint8), torch.tensor([130], dtype=torch.uint8))[0]
    tensor(8.)
    """
    if codes.shape[-1] % 32 or scales.shape != (*codes.shape[:-1], codes.shape[-1] // 32):
        raise ValueError(f"scales must have shape codes.shape[:-1] + (codes.shape[-1] // 32,); got codes "
                         f"{tuple(codes.shape)} and scales {tuple(scales.shape)}")
    el = _blocks(E2M1.decode(codes.to(torch.int64)).to(torch.float64), 32)
    s = scales.to(torch.int64)
    X = torch.ldexp(torch.ones(s.shape, dtype=torch.float64), s - 127)
    X = torch.where(s == E8M0_NAN, torch.full_like(X, float("nan")), X)
    return (el * X[..., None]).reshape(codes.shape).to(torch.float32)


def nvfp4_encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """NVFP4: E2M1 element codes, an E4M3 scale per 16 values, and one FP32 scale per tensor.

    Two-level scaling as NVIDIA describes it (NVIDIA technical blog "Introducing NVFP4 for Efficient and
    Accurate Low-Precision Inference", 2025; Transformer Engine's NVFP4 recipe):
    ``global = amax(x) / (6 * 448)`` so that the largest block scale lands at E4M3's max;
    per block ``s = E4M3(amax_block / 6 / global)`` (RNE, saturating); elements ``E2M1(v / (s * global))``.
    Decoding is ``E2M1(code) * s * global``. Unlike MXFP4 the block scale has 3 mantissa bits, so a block's
    amax lands close to 6 instead of anywhere in [4, 8).

    Returns
    -------
    codes : uint8 tensor shaped like ``x``;  scales : uint8 E4M3 codes, one per 16;  global_scale : float

    Examples
    --------
    >>> x = torch.zeros(32); x[0] = 2688.0; x[16] = 6.0; x[17] = 1.0
    >>> codes, scales, g = nvfp4_encode(x)
    >>> g, E4M3.decode(scales).tolist()   # 2688 = 6 * 448: global 1; block scales 448 and 1
    (1.0, [448.0, 1.0])
    >>> nvfp4_decode(codes, scales, g)[[0, 16, 17]].tolist()
    [2688.0, 6.0, 1.0]
    """
    _check_blocks(x, 16, "NVFP4")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf; NVFP4 has no NaN/inf encoding for elements")
    v = _blocks(x.detach().to(torch.float64), 16)
    amax = float(v.abs().max()) if v.numel() else 0.0
    g = float(np.float32(amax / (6.0 * 448.0))) if amax > 0 else 1.0  # stored as FP32
    s = E4M3.round((v.abs().amax(dim=-1) / 6.0 / g), saturate=True).to(torch.float64)
    denom = (s * g)[..., None]
    elems = torch.where(denom > 0, v / torch.where(denom > 0, denom, torch.ones_like(denom)), 0.0)
    codes = E2M1.encode(elems, saturate=True)
    scale_codes = E4M3.encode(s, saturate=True)
    return codes.reshape(x.shape).to(torch.uint8), scale_codes.to(torch.uint8), g


def nvfp4_decode(codes: torch.Tensor, scales: torch.Tensor, global_scale: float) -> torch.Tensor:
    """Values of NVFP4 data: ``E2M1(code) * E4M3(scale) * global_scale``."""
    if codes.shape[-1] % 16 or scales.shape != (*codes.shape[:-1], codes.shape[-1] // 16):
        raise ValueError(f"scales must have shape codes.shape[:-1] + (codes.shape[-1] // 16,); got codes "
                         f"{tuple(codes.shape)} and scales {tuple(scales.shape)}")
    el = _blocks(E2M1.decode(codes.to(torch.int64)).to(torch.float64), 16)
    s = E4M3.decode(scales.to(torch.int64)).to(torch.float64)
    return (el * (s * float(global_scale))[..., None]).reshape(codes.shape).to(torch.float32)


# --------------------------------------------------------------------------------------------------------
# quantize a tensor at a granularity
# --------------------------------------------------------------------------------------------------------

def natural_granularity(fmt: str) -> str | None:
    """The granularity a format fixes itself, or ``None`` when it is the caller's choice.

    FP32/BF16/FP16 are used without any scale ("none"); MXFP4 fixes blocks of 32 (E8M0 scales),
    NVFP4 blocks of 16 (E4M3 scales, plus one FP32 scale per tensor).

    >>> natural_granularity("mxfp4"), natural_granularity("bf16"), natural_granularity("int4")
    ('block32', 'none', None)
    """
    _check_format_name(fmt)
    return {"fp32": "none", "bf16": "none", "fp16": "none", "mxfp4": "block32", "nvfp4": "block16"}.get(fmt)


def _grouped(w: torch.Tensor, granularity: str) -> torch.Tensor:
    """``w`` reshaped to ``[groups, group_len]`` for a scale per group (a view; nothing is padded)."""
    if granularity == "tensor":
        return w.reshape(1, -1)
    if granularity == "channel":
        if w.ndim < 2:
            raise ValueError(f"granularity 'channel' needs a tensor with ≥ 2 dims (one scale per row); "
                             f"got shape {tuple(w.shape)}")
        return w.reshape(w.shape[0], math.prod(w.shape[1:]))
    block = int(granularity[len("block"):])
    if w.ndim == 0 or w.shape[-1] % block:
        raise ValueError(f"granularity {granularity!r} needs the last dimension to be a multiple of {block}; "
                         f"got shape {tuple(w.shape)} (nothing is padded)")
    return w.reshape(w.numel() // block, block)


def quantize(w: torch.Tensor, fmt: str, granularity: str | None = None) -> torch.Tensor:
    """Quantize ``w`` to ``fmt`` with one scale per ``granularity`` group; return the dequantized tensor.

    Parameters
    ----------
    w
        Float tensor without NaN/Inf; blocks run along the last dimension, channels are rows (dim 0).
        A tensor with no elements gives an empty result of its shape (the granularity's shape rules
        still apply); any other dtype is a TypeError naming it.
    fmt
        One of :data:`FORMAT_NAMES`.
    granularity
        ``"tensor"``, ``"channel"``, ``"block32"`` or ``"block16"``; ``None`` means the format's own
        (:func:`natural_granularity`) or else per tensor. FP32/BF16/FP16 take no scale and accept only
        ``None``/``"none"``; MXFP4 accepts only ``"block32"``, NVFP4 only ``"block16"``.

    Scaled formats map each group's absolute maximum to the format's largest value (FP8, FP4, INT,
    scale kept in FP32), use ``scale = mean|w|`` (ternary, BitNet b1.58's absmean with a 1e-5 floor;
    binary, ``sign(w) * mean|w|`` with sign(0) = +1), or min/max (INT asymmetric).

    Examples
    --------
    >>> w = torch.tensor([[0.1, -0.5, 2.0, 0.02]])
    >>> quantize(w, "int4", "tensor")
    tensor([[ 0.0000, -0.5714,  2.0000,  0.0000]])
    >>> quantize(w, "ternary")   # mean|w| = 0.655
    tensor([[ 0.0000, -0.6550,  0.6550,  0.0000]])
    """
    _check_format_name(fmt)
    _check_float_tensor(w, "w")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or Inf; quantize() needs finite weights")
    nat = natural_granularity(fmt)
    if granularity is None:
        granularity = nat or "tensor"
    if nat is not None and granularity != nat:
        raise ValueError(f"{fmt} fixes its own granularity {nat!r}; got granularity={granularity!r} "
                         f"(pass None)")
    if nat is None and granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)} or None; got {granularity!r}")
    x = w.detach().to(torch.float32)
    if fmt in ("fp32", "bf16", "fp16"):
        return FLOAT_FORMATS[fmt].round(x)
    if fmt == "mxfp4":
        return mxfp4_decode(*mxfp4_encode(x))
    if fmt == "nvfp4":
        return nvfp4_decode(*nvfp4_encode(x))

    g = _grouped(x.to(torch.float64), granularity)
    if g.numel() == 0:  # no group to scale (after the shape checks above): nothing to round
        return x.clone()
    amax = g.abs().amax(dim=1, keepdim=True)
    if fmt in ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1"):
        f = FLOAT_FORMATS[fmt]
        scale = torch.where(amax > 0, amax / f.max_value, torch.ones_like(amax)).to(torch.float32)
        out = f.round(g / scale, saturate=True).to(torch.float64) * scale
    elif fmt in ("int8", "int4"):
        q = _INT_FORMATS[fmt]
        scale = torch.where(amax > 0, amax / q.qmax, torch.ones_like(amax))
        out = torch.clamp(torch.round(g / scale), q.qmin, q.qmax) * scale
    elif fmt == "int4_asym":
        q = INT4_ASYM
        lo, hi = g.amin(dim=1, keepdim=True), g.amax(dim=1, keepdim=True)
        rng = hi - lo
        # a constant group (range 0) takes scale |c| so that it is reproduced exactly
        scale = torch.where(rng > 0, rng / q.qmax, torch.where(amax > 0, amax, torch.ones_like(amax)))
        zero = torch.round(-lo / scale)
        out = (torch.clamp(torch.round(g / scale) + zero, q.qmin, q.qmax) - zero) * scale
    elif fmt == "ternary":
        gamma = g.abs().mean(dim=1, keepdim=True).clamp(min=1e-5)
        out = torch.clamp(torch.round(g / gamma), -1, 1) * gamma
    else:  # binary
        alpha = g.abs().mean(dim=1, keepdim=True)
        out = torch.where(g >= 0, alpha, -alpha)
    return out.reshape(w.shape).to(torch.float32)


def relative_mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """``‖W − Ŵ‖² / ‖W‖²`` (0 is perfect; 1 is as bad as replacing W by zeros).

    >>> relative_mse(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0]))
    0.04
    """
    if w.shape != w_hat.shape:
        raise ValueError(f"w and w_hat must have the same shape; got {tuple(w.shape)} and "
                         f"{tuple(w_hat.shape)}")
    w64, h64 = w.detach().to(torch.float64), w_hat.detach().to(torch.float64)
    den = float((w64**2).sum())
    if den == 0:
        raise ValueError("w is all zeros: relative MSE is undefined")
    return float(((w64 - h64) ** 2).sum()) / den


def student_t_like(w: torch.Tensor, df: float = 3.0, seed: int = 0) -> torch.Tensor:
    """A seeded Student-t tensor shaped like ``w`` with the same standard deviation: a heavy-tailed stand-in.

    Student-t with ``df`` degrees of freedom: ``z / sqrt(chi2_df / df)``, with ``df`` a positive integer
    (the chi-square is a sum of ``df`` squared normals). ``df = 3`` has infinite kurtosis in theory
    (samples give tens); ``df → ∞`` is Gaussian.

    >>> t = student_t_like(torch.ones(64, 64) * torch.tensor([1.0, -1.0]).repeat(32), df=3)
    >>> t.shape, round(float(t.std()), 3)
    (torch.Size([64, 64]), 1.0)
    """
    _check_float_tensor(w, "w")
    if isinstance(df, bool) or not isinstance(df, int | float) or df < 1 or df != int(df):
        raise ValueError(f"df must be a positive integer; got {df!r}")
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    chi2 = torch.randn((int(df), *w.shape), generator=gen, dtype=torch.float64).pow(2).mean(dim=0)
    t = z / chi2.sqrt()
    return (t / t.std() * w.detach().double().std()).to(torch.float32)


def error_table(tensors: dict[str, torch.Tensor], formats: Sequence[str] = FORMAT_NAMES,
                granularity: str = "tensor") -> list[dict[str, Any]]:
    """Relative MSE of every format on every tensor: one row per format, one column per tensor.

    Formats that fix their own granularity (:func:`natural_granularity`) use it; the others use
    ``granularity``. Row keys: ``format`` (label), ``fmt`` (name), ``granularity`` and the tensor names.

    >>> w = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    >>> rows = error_table({"w": w}, ["fp32", "mxfp4", "int4"], "channel")
    >>> [(r["fmt"], r["granularity"]) for r in rows], rows[0]["w"]
    ([('fp32', 'none'), ('mxfp4', 'block32'), ('int4', 'channel')], 0.0)
    """
    if not tensors:
        raise ValueError("tensors is empty")
    rows = []
    for fmt in formats:
        nat = natural_granularity(fmt)
        row: dict[str, Any] = {"format": FORMAT_LABELS[fmt], "fmt": fmt, "granularity": nat or granularity}
        for name, w in tensors.items():
            row[name] = relative_mse(w, quantize(w, fmt, None if nat else granularity))
        rows.append(row)
    return rows


def magnitude_sweep(lo: float = 1e-8, hi: float = 1e5, n: int = 2001, seed: int = 0) -> torch.Tensor:
    """``n`` positive magnitudes log-uniformly spread over [lo, hi] with a seeded jitter (float32).

    The jitter keeps the points off the exact powers of two, where every format is exact.

    >>> x = magnitude_sweep(1e-3, 1e3, 5); x.shape, bool((x > 0).all())
    (torch.Size([5]), True)
    """
    if not (0 < lo < hi) or not math.isfinite(hi):
        raise ValueError(f"need 0 < lo < hi < inf; got lo={lo}, hi={hi}")
    if n < 2:
        raise ValueError(f"n must be ≥ 2; got {n}")
    gen = torch.Generator().manual_seed(seed)
    t = torch.linspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)
    step = (t[1] - t[0]).item()
    t = (t + (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * step).clamp(math.log10(lo),
                                                                                   math.log10(hi))
    return (10.0**t).to(torch.float32)


def relative_error(x: torch.Tensor, fmt: str, scale: float = 1.0) -> torch.Tensor:
    """``|Q(x) − x| / |x|`` per element for a format used with one fixed ``scale`` (no per-group scaling).

    Float formats round ``x / scale`` onto their grid (values past max saturate, below half the smallest
    subnormal flush to 0, relative error 1); integer formats round to integers and clamp to their range.
    This shows dynamic range: where each format keeps a constant relative error and where it breaks.

    >>> [round(v, 5) for v in relative_error(torch.tensor([1.0, 1.25, 1.3]), "bf16").tolist()]
    [0.0, 0.0, 0.0024]
    >>> relative_error(torch.tensor([0.2, 1000.0]), "int8")   # 0.2 -> 0; 1000 -> 127
    tensor([1.0000, 0.8730])
    """
    _check_format_name(fmt)
    _check_float_tensor(x, "x")
    if (x == 0).any() or not torch.isfinite(x).all():
        raise ValueError("x must be finite and nonzero (relative error divides by |x|)")
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be a positive finite number; got {scale}")
    x64 = x.detach().to(torch.float64)
    y = x64 / scale
    if fmt in FLOAT_FORMATS or fmt in ("mxfp4", "nvfp4"):
        f = get_format(fmt)
        q = f.round(y, saturate=True).to(torch.float64)
    elif fmt in _INT_FORMATS:
        f = _INT_FORMATS[fmt]
        q = torch.clamp(torch.round(y), f.qmin, f.qmax)
    elif fmt == "ternary":
        q = torch.clamp(torch.round(y), -1, 1)
    else:
        q = torch.where(y >= 0, 1.0, -1.0).to(torch.float64)
    return ((q * scale - x64).abs() / x64.abs()).to(torch.float32)


def range_table(names: Sequence[str] = ("fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1")
                ) -> list[dict[str, Any]]:
    """Dynamic range versus precision of float formats, one dict per format.

    Keys: ``name, bits, exponent_bits, mantissa_bits, bias, max, min_normal, min_subnormal, epsilon,
    decimal_digits, decades`` (``log10(max / min_subnormal)``), ``inf``, ``nan``.

    >>> [r["max"] for r in range_table(["fp16", "fp8_e5m2"])]
    [65504.0, 57344.0]
    """
    rows = []
    for n in names:
        if n not in FLOAT_FORMATS:
            raise ValueError(f"names must be float formats {list(FLOAT_FORMATS)}; got {n!r}")
        f = FLOAT_FORMATS[n]
        rows.append({
            "name": f.name, "bits": f.total_bits, "exponent_bits": f.exponent_bits,
            "mantissa_bits": f.mantissa_bits, "bias": f.bias, "max": f.max_value, "min_normal": f.min_normal,
            "min_subnormal": f.min_subnormal, "epsilon": f.epsilon, "decimal_digits": f.decimal_digits,
            "decades": f.dynamic_range_decades, "inf": f.has_inf,
            "nan": {"ieee": "exp all ones, mantissa ≠ 0", "fn": "S.1111.111 only", "none": "none"}[f.special],
        })
    return rows


# --------------------------------------------------------------------------------------------------------
# bits per weight of a format
# --------------------------------------------------------------------------------------------------------

_ELEMENT_BITS = {"fp32": 32.0, "bf16": 16.0, "fp16": 16.0, "fp8_e4m3": 8.0, "fp8_e5m2": 8.0, "fp4_e2m1": 4.0,
                 "ternary": math.log2(3.0), "binary": 1.0}


def bits_per_weight(fmt: str, group_size: int | None = None, scale_bits: int | None = None,
                    zero_bits: int = 0) -> float:
    """Honest storage cost: element bits plus ``(scale_bits + zero_bits) / group_size``.

    Parameters
    ----------
    fmt
        ``"fp32"``, ``"bf16"``, ``"fp16"``, ``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"fp4_e2m1"``, ``"mxfp4"``,
        ``"nvfp4"``, ``"intN"`` (N = 1..8), ``"int4_asym"``, ``"ternary"`` (log2 3 ≈ 1.585 bits, the
        information-theoretic ideal; real packings in :func:`qcourse.sizing.precision_table`) or
        ``"binary"``.
    group_size
        Weights sharing one scale (and zero); ``None`` = per tensor, whose one scale is negligible (0 bits
        counted). For a per-channel scale pass the row length.
    scale_bits
        Bits of each scale; default 16 (fp16). MXFP4 (E8M0 per 32) and NVFP4 (E4M3 per 16) fix their own
        scale and group, and reject other values; NVFP4's one FP32 per tensor is not counted.
    zero_bits
        Bits of each zero point (0 for symmetric formats).

    Examples
    --------
    >>> bits_per_weight("int4", 128, 16, 16), bits_per_weight("mxfp4"), bits_per_weight("nvfp4")
    (4.25, 4.25, 4.5)
    >>> bits_per_weight("int2", 64, 16, 16), bits_per_weight("fp16")
    (2.5, 16.0)
    """
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be a str; got {type(fmt).__name__}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size < 1):
        raise ValueError(f"group_size must be a positive int or None; got {group_size!r}")
    for arg, val in (("scale_bits", scale_bits), ("zero_bits", zero_bits)):
        if val is not None and (isinstance(val, bool) or not isinstance(val, int) or val < 0):
            raise ValueError(f"{arg} must be a non-negative int; got {val!r}")
    if fmt in ("mxfp4", "nvfp4"):
        block, sbits = (32, 8) if fmt == "mxfp4" else (16, 8)
        if group_size not in (None, block) or scale_bits not in (None, sbits) or zero_bits:
            raise ValueError(f"{fmt} fixes group_size={block}, scale_bits={sbits}, zero_bits=0; got "
                             f"group_size={group_size}, scale_bits={scale_bits}, zero_bits={zero_bits}")
        return 4.0 + sbits / block
    m = re.fullmatch(r"int([1-8])(_asym)?", fmt)
    if m:
        element = float(m.group(1))
    elif fmt in _ELEMENT_BITS:
        element = _ELEMENT_BITS[fmt]
    else:
        raise ValueError(f"fmt must be one of {sorted(_ELEMENT_BITS) + ['mxfp4', 'nvfp4']} or 'intN' "
                         f"(N = 1..8); got {fmt!r}")
    if group_size is None:
        return element
    return element + ((16 if scale_bits is None else scale_bits) + zero_bits) / group_size
