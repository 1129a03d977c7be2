"""Checks for lesson 01 (number formats): decode a bit pattern, round to a grid, count bits per weight.

Each check runs the learner's function and the reference from :mod:`qcourse.formats` on seeded and
adversarial inputs and prints what differs.

>>> from qcourse import formats as F
>>> check_bits_per_weight_block(lambda b, g, s, z: b + (s + z) / g, verbose=False).status
'passed'
>>> check_bits_per_weight_block(lambda b, g, s, z: b + s / g, verbose=False).status   # forgot the zero
'failed'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from qcourse import formats as F
from qcourse.checks._harness import Case, CheckResult, Mutant, run_check

__all__ = ["check_decode_bits", "check_round_to_grid", "check_bits_per_weight_block", "check_quantile_levels",
           "reference_decode_bits", "reference_round_to_grid", "reference_bits_per_weight_block",
           "reference_quantile_levels"]

#: format names the decode exercise uses
DECODE_FORMATS = {"e4m3": F.E4M3, "e5m2": F.E5M2, "e2m1": F.E2M1}


# ---- references --------------------------------------------------------------------------------------

def reference_decode_bits(bits: int, fmt_name: str) -> float:
    """Value of one bit pattern of ``"e4m3"``, ``"e5m2"`` or ``"e2m1"`` (NaN and ±inf included).

    >>> reference_decode_bits(0b0_0111_001, "e4m3"), reference_decode_bits(0b1_11111_00, "e5m2")
    (1.125, -inf)
    """
    if fmt_name not in DECODE_FORMATS:
        raise ValueError(f"fmt_name must be one of {list(DECODE_FORMATS)}; got {fmt_name!r}")
    return DECODE_FORMATS[fmt_name].decode(int(bits))


def reference_round_to_grid(x: torch.Tensor, fmt: F.FloatFormat) -> torch.Tensor:
    """Round ``x`` to ``fmt``'s grid: nearest value, ties to even mantissa, ±max beyond range, NaN kept.

    >>> reference_round_to_grid(torch.tensor([0.25, 0.75, 1.25, 100.0]), F.E2M1).tolist()
    [0.0, 1.0, 1.0, 6.0]
    """
    return F.FloatFormat.round(fmt, x, saturate=True)


def reference_bits_per_weight_block(bits: float, group_size: int, scale_bits: int, zero_bits: int) -> float:
    """``bits + (scale_bits + zero_bits) / group_size``: each group of weights shares a scale and a zero.

    >>> reference_bits_per_weight_block(4, 128, 16, 16), reference_bits_per_weight_block(4, 32, 8, 0)
    (4.25, 4.25)
    """
    return bits + (scale_bits + zero_bits) / group_size


# ---- checks ------------------------------------------------------------------------------------------

def _decode_cases() -> list[Case]:
    def codes(*cs: int) -> list[int]:
        return list(cs)

    return [
        Case("E4M3 normal numbers (1.0, 1.125, 2.5, 0.3125)", (codes(0x38, 0x39, 0x42, 0x2A), "e4m3")),
        Case("E4M3 negative numbers", (codes(0xB8, 0xC4, 0xA1), "e4m3")),
        Case("E4M3 zero and subnormals (exponent field 0)", (codes(0x00, 0x01, 0x03, 0x07, 0x08), "e4m3")),
        Case("E4M3 top binade: 256 .. 448 (no infinity) and NaN 0x7F", (codes(0x78, 0x7A, 0x7E, 0x7F, 0xFF),
                                                                          "e4m3")),
        Case("E5M2 normal and subnormal numbers", (codes(0x3C, 0x3D, 0x01, 0x03, 0x04, 0x7B), "e5m2")),
        Case("E5M2 ±inf (0x7C, 0xFC) and NaN (0x7D..0x7F)", (codes(0x7C, 0xFC, 0x7D, 0x7E, 0x7F), "e5m2")),
        Case("E2M1 all 16 codes", (list(range(16)), "e2m1")),
    ]


def _as_number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (Python, NumPy or a one-element tensor), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real | np.floating | np.integer):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        return float(value)
    return None


def _pattern(bits: int, fmt_name: str) -> str:
    """``0x78 = 0 1111 000``: the pattern in hex and as its sign, exponent and mantissa fields."""
    fmt = DECODE_FORMATS[fmt_name]
    e, m = fmt.exponent_bits, fmt.mantissa_bits
    b = format(int(bits), f"0{1 + e + m}b")
    return f"{int(bits):#04x} = {b[0]} {b[1:1 + e]} {b[1 + e:]}"


def _compare_decoded(got: Any, want: list[float], case: Case) -> tuple[bool, str]:
    """Compare decoded values pattern by pattern; name every pattern that decoded wrongly."""
    codes, fmt_name = case.args
    if not isinstance(got, list) or len(got) != len(want):
        return False, f"expected {len(want)} values; got {got!r}"
    wrong = []
    for code, g, w in zip(codes, got, want, strict=True):
        value = _as_number(g)
        if value is None:
            wrong.append(f"{_pattern(code, fmt_name)}: returned {g!r} ({type(g).__name__}), expected the "
                         f"number {w!r}")
        elif not (value == w or (math.isnan(value) and math.isnan(w))):
            wrong.append(f"{_pattern(code, fmt_name)}: returned {value!r}, expected {w!r}")
    if wrong:
        more = f" (and {len(wrong) - 4} more)" if len(wrong) > 4 else ""
        return False, f"{len(wrong)} of {len(want)} patterns wrong: " + "; ".join(wrong[:4]) + more
    return True, "exact"


def check_decode_bits(student_fn: Callable[[int, str], float], verbose: bool = True) -> CheckResult:
    """Check ``decode_bits(bits, fmt_name) -> float`` for ``fmt_name`` in ``"e4m3"``, ``"e5m2"``, ``"e2m1"``.

    Each case decodes a list of patterns one at a time; NaN must come out as NaN and the value must be
    exact. Any real number type is accepted (a Python float is natural). A wrong value is reported with its
    bit pattern, the value returned and the value expected.

    >>> _compare_decoded([math.inf, 1.0], [256.0, 1.0], Case("top binade", ([0x78, 0x38], "e4m3")))
    (False, '1 of 2 patterns wrong: 0x78 = 0 1111 000: returned inf, expected 256.0')
    """
    def many(fn: Callable[[int, str], Any]) -> Callable[[list[int], str], list[Any]]:
        return lambda codes, fmt_name: [fn(c, fmt_name) for c in codes]

    return run_check(
        "decode_bits", many(student_fn), many(reference_decode_bits), _decode_cases(), rtol=0, atol=0,
        compare_fn=_compare_decoded,
        hint="""
            value = (-1)^s · (1 + m/2^M) · 2^(e − bias) for e > 0, and (m/2^M) · 2^(1 − bias) for e = 0
            (subnormal: no implicit 1, exponent 1 − bias). Biases: E4M3 7, E5M2 15, E2M1 1. E4M3 has no
            infinity: only S.1111.111 is NaN; E5M2's all-ones exponent is ±inf (mantissa 0) or NaN.
            """,
        verbose=verbose)


def _round_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    grid = F.E4M3.all_values().double()
    mids = ((grid[:-1] + grid[1:]) / 2).float()  # exact ties between neighbouring E4M3 values
    e2 = F.E2M1.all_values().double()
    outlier = torch.randn(64, generator=gen) * 3
    outlier[17] = 1e6
    # Student-t with 3 degrees of freedom: z / sqrt(chi2_3 / 3), from the seeded generator
    student_t = torch.randn(256, generator=gen) / (torch.randn(3, 256, generator=gen).pow(2).mean(0)).sqrt()
    return [
        Case("seeded Gaussian ×50, E4M3", (torch.randn(4, 64, generator=gen) * 50, F.E4M3)),
        Case("seeded Student-t (heavy tails), E2M1", (student_t, F.E2M1)),
        Case("exact ties between E4M3 neighbours (round half to even)", (mids, F.E4M3)),
        Case("exact ties between E2M1 neighbours", (((e2[:-1] + e2[1:]) / 2).float(), F.E2M1)),
        Case("zeros", (torch.zeros(3, 5), F.E4M3)),
        Case("a constant", (torch.full((7,), 0.3), F.E4M3)),
        Case("one huge outlier (saturates to 448)", (outlier, F.E4M3)),
        Case("extreme magnitudes 1e-30 .. 1e30", (torch.tensor([1e-30, -1e-12, 1e-3, 3e-3, 1e3, -1e30]),
                                                  F.E4M3)),
        Case("NaN and ±inf (NaN stays NaN, inf saturates)",
             (torch.tensor([math.nan, math.inf, -math.inf, 1.0]), F.E5M2)),
        Case("odd shape 3×5×7, E5M2", (torch.randn(3, 5, 7, generator=gen) * 1e3, F.E5M2)),
    ]


def check_round_to_grid(student_fn: Callable[[torch.Tensor, F.FloatFormat], torch.Tensor],
                        verbose: bool = True) -> CheckResult:
    """Check ``round_to_grid(x, fmt) -> tensor``: RNE onto ``fmt``'s grid, saturating at ±max."""
    return run_check(
        "round_to_grid", student_fn, reference_round_to_grid, _round_cases(), rtol=0, atol=0,
        hint="""
            find the nearest grid value of |x| (fmt.all_values()); on an exact tie take the one with the
            even index among the non-negative values (= even mantissa); clamp |x| to fmt.max_value first;
            keep the sign and let NaN through. Return a float32 tensor and leave x unchanged.
            """,
        verbose=verbose)


def check_bits_per_weight_block(student_fn: Callable[[float, int, int, int], float],
                                verbose: bool = True) -> CheckResult:
    """Check ``bits_per_weight_block(bits, group_size, scale_bits, zero_bits) -> float``.

    Any real number type is accepted; the value must match to 1e-12.
    """
    cases = [
        Case("INT4, group 128, fp16 scale and zero", (4, 128, 16, 16)),
        Case("MXFP4: 32 elements share an 8-bit E8M0 scale", (4, 32, 8, 0)),
        Case("NVFP4: 16 elements share an 8-bit E4M3 scale", (4, 16, 8, 0)),
        Case("2-bit, group 64, fp16 scale and zero", (2, 64, 16, 16)),
        Case("3-bit, group 128, fp16 scale only", (3, 128, 16, 0)),
        Case("ternary (log2 3 bits), group 256, fp16 scale", (math.log2(3), 256, 16, 0)),
        Case("binary, one fp16 scale per row of 8192", (1, 8192, 16, 0)),
        Case("a scale per weight (group 1)", (4, 1, 16, 16)),
        Case("8-bit zero point (asymmetric INT8, group 64)", (8, 64, 16, 8)),
    ]
    return run_check(
        "bits_per_weight_block", student_fn, reference_bits_per_weight_block, cases, rtol=1e-12, atol=1e-12,
        hint="""
            every weight stores `bits`; each group of `group_size` weights also stores one scale and one
            zero point, shared by the group.
            """,
        verbose=verbose)


# ---- mutants: wrong implementations every check must reject (see tests/test_checks_mutations.py) ----------

_LAYOUTS = {"e4m3": (4, 3, 7), "e5m2": (5, 2, 15), "e2m1": (2, 1, 1)}


def _decode_mutant(bias_offset: int = 0, subnormals: bool = True, e4m3_ieee: bool = False,
                   signed: bool = True, e5m2_specials: bool = True, nan_as: float | None = None,
                   todo: str | None = None) -> Callable[[int, str], float]:
    """A learner-style decoder; each keyword switches on one classic mistake."""
    def decode_bits(bits: int, fmt_name: str) -> float:
        if fmt_name == todo:
            raise NotImplementedError(fmt_name)
        exp_bits, man_bits, bias = _LAYOUTS[fmt_name]
        bias += bias_offset
        s, e, m = (bits >> (exp_bits + man_bits)) & 1, (bits >> man_bits) & ((1 << exp_bits) - 1), \
            bits & ((1 << man_bits) - 1)
        sign = -1.0 if (s and signed) else 1.0
        top = (1 << exp_bits) - 1
        nan = math.nan if nan_as is None else nan_as
        if (fmt_name == "e5m2" and e5m2_specials) or (fmt_name == "e4m3" and e4m3_ieee):
            if e == top:
                return sign * math.inf if m == 0 else nan
        if fmt_name == "e4m3" and e == top and m == (1 << man_bits) - 1:
            return nan
        if e == 0 and subnormals:
            return sign * (m / 2**man_bits) * 2.0 ** (1 - bias)
        return sign * (1 + m / 2**man_bits) * 2.0 ** (e - bias)
    return decode_bits


def _round_mutant(ties: str = "even", saturate: bool = True, truncate: bool = False, keep_nan: bool = True,
                  dtype: torch.dtype = torch.float32, in_place: bool = False, todo: str | None = None
                  ) -> Callable[[torch.Tensor, F.FloatFormat], torch.Tensor]:
    """A learner-style grid rounding (search the sorted grid); each keyword switches on one mistake."""
    def round_to_grid(x: torch.Tensor, fmt: F.FloatFormat) -> torch.Tensor:
        if fmt.name == todo:
            raise NotImplementedError(fmt.name)
        pos = fmt.all_values().double()
        pos = pos[pos >= 0]
        a = x.double().abs()
        if saturate:
            a = a.clamp(max=pos[-1].item())
        hi = torch.searchsorted(pos, a.nan_to_num(0.0)).clamp(max=len(pos) - 1)
        lo = (hi - 1).clamp(min=0)
        d_lo, d_hi = a - pos[lo], pos[hi] - a
        tie_hi = {"even": hi % 2 == 0, "away": torch.ones_like(hi, dtype=torch.bool),
                  "toward-zero": torch.zeros_like(hi, dtype=torch.bool), "half-up": x >= 0}[ties]
        take_hi = (d_hi == 0) if truncate else (d_hi < d_lo) | ((d_hi == d_lo) & tie_hi)
        r = torch.where(take_hi, pos[hi], pos[lo])
        if not saturate:  # IEEE-style overflow: beyond max + half a step is infinity
            r = torch.where(a >= pos[-1] + (pos[-1] - pos[-2]) / 2, torch.full_like(r, math.inf), r)
        r = torch.copysign(r, x.double())
        r = torch.where(torch.isnan(x), x.double() if keep_nan else torch.zeros_like(r), r)
        if in_place:
            return x.copy_(r)
        return r.to(dtype)
    return round_to_grid


def _bpw_todo(bits: float, group_size: int, scale_bits: int, zero_bits: int) -> float:
    if zero_bits == 0:
        raise NotImplementedError("symmetric formats")
    return bits + (scale_bits + zero_bits) / group_size


#: check name -> wrong implementations it must reject, each with a fragment of the failure report.
# ---- NF4: a grid from normal quantiles ---------------------------------------------------------------

def reference_quantile_levels(n_pos: int, n_neg: int, offset: float) -> torch.Tensor:
    """A normal-quantile grid in [−1, 1] with an exact 0 (NF4 is ``(8, 7, (1/30 + 1/32)/2)``).

    Positive levels: the standard-normal quantiles at ``linspace(1 − offset, 1/2, n_pos + 1)`` without the
    last (which is 0), divided by the largest; negative levels likewise with ``n_neg``, mirrored; plus 0.
    Returns the ``n_pos + n_neg + 1`` levels, ascending, float32.

    >>> [round(v, 4) for v in reference_quantile_levels(2, 1, 0.1).tolist()]
    [-1.0, 0.0, 0.4092, 1.0]
    """
    top = 1.0 - offset
    pos = torch.special.ndtri(torch.linspace(top, 0.5, n_pos + 1, dtype=torch.float64)[:-1])
    neg = torch.special.ndtri(torch.linspace(top, 0.5, n_neg + 1, dtype=torch.float64)[:-1])
    levels = torch.cat([pos / pos.max(), torch.zeros(1, dtype=torch.float64), -neg / neg.max()])
    return levels.sort().values.to(torch.float32)


def _quantile_cases() -> list[Case]:
    nf4 = 0.5 * (1 / 30 + 1 / 32)
    return [
        Case("NF4: 8 positive, 7 negative levels, QLoRA's offset", (8, 7, nf4)),
        Case("3-bit: 4 positive, 3 negative", (4, 3, 0.5 * (1 / 6 + 1 / 8))),
        Case("asymmetric the other way: 3 positive, 4 negative", (3, 4, 0.05)),
        Case("smallest: one level each side", (1, 1, 0.2)),
        Case("a small offset (extreme quantiles)", (8, 7, 0.001)),
    ]


def check_quantile_levels(student_fn: Callable[[int, int, float], torch.Tensor],
                          verbose: bool = True) -> CheckResult:
    """Check ``quantile_levels(n_pos, n_neg, offset) -> float32 tensor`` of ``n_pos + n_neg + 1`` levels."""
    return run_check(
        "quantile_levels", student_fn, reference_quantile_levels, _quantile_cases(), rtol=1e-5, atol=1e-6,
        hint="""
            Positive side: torch.special.ndtri at torch.linspace(1 − offset, 0.5, n_pos + 1), dropping the
            last point (ndtri(0.5) = 0, which is added once, separately); divide by the largest so the top
            level is exactly 1. Negative side the same with n_neg points, negated. Concatenate with one 0,
            sort ascending, return float32. The offset keeps ndtri away from 1, where it is infinite.
            """,
        verbose=verbose)


def _quantile_mutant(keep_half: bool = False, normalise: bool = True, offset_used: bool = True,
                     uniform: bool = False, swap: bool = False, sort: bool = True,
                     dtype: torch.dtype = torch.float32, midpoints: bool = False,
                     todo_small: bool = False) -> Callable[[int, int, float], torch.Tensor]:
    """A learner-style quantile grid; each keyword switches on one classic mistake."""
    def quantile_levels(n_pos: int, n_neg: int, offset: float) -> torch.Tensor:
        if todo_small and n_pos == 1:
            raise NotImplementedError("one level")
        if swap:
            n_pos, n_neg = n_neg, n_pos
        top = 1.0 - offset if offset_used else 1.0

        def side(n: int) -> torch.Tensor:
            if uniform:
                return torch.linspace(1.0, 0.0, n + 1, dtype=torch.float64)[:-1]
            if midpoints:
                p = 0.5 + 0.5 * (torch.arange(n, dtype=torch.float64) + 0.5) / n
            else:
                p = torch.linspace(top, 0.5, n + 1, dtype=torch.float64)
                p = p if keep_half else p[:-1]
            v = torch.special.ndtri(p)
            return v / v.max() if normalise else v

        levels = torch.cat([side(n_pos), torch.zeros(1, dtype=torch.float64), -side(n_neg)])
        return (levels.sort().values if sort else levels).to(dtype)
    return quantile_levels


MUTANTS: dict[str, list[Mutant]] = {
    "check_decode_bits": [
        Mutant("bias+1", _decode_mutant(bias_offset=1), "0x38 = 0 0111 000: returned 0.5, expected 1.0"),
        Mutant("bias-1", _decode_mutant(bias_offset=-1), "0x38 = 0 0111 000: returned 2.0, expected 1.0"),
        Mutant("no-subnormals", _decode_mutant(subnormals=False),
               "0x01 = 0 0000 001: returned 0.0087890625, expected 0.001953125"),
        Mutant("e4m3-as-ieee", _decode_mutant(e4m3_ieee=True),
               "0x78 = 0 1111 000: returned inf, expected 256.0"),
        Mutant("no-sign", _decode_mutant(signed=False), "0xb8 = 1 0111 000: returned 1.0, expected -1.0"),
        Mutant("e5m2-no-specials", _decode_mutant(e5m2_specials=False),
               "0x7c = 0 11111 00: returned 65536.0, expected inf"),
        Mutant("nan-as-inf", _decode_mutant(nan_as=math.inf),
               "0x7f = 0 1111 111: returned inf, expected nan"),
        Mutant("returns-fields", lambda b, f: (b >> 7, (b >> 3) & 15, b & 7), "(tuple), expected the number"),
        Mutant("partial", _decode_mutant(todo="e2m1"), "NotImplementedError"),
    ],
    "check_round_to_grid": [
        Mutant("truncate", _round_mutant(truncate=True), "seeded Gaussian"),
        Mutant("ties-away", _round_mutant(ties="away"), "exact ties between E4M3 neighbours"),
        Mutant("ties-toward-zero", _round_mutant(ties="toward-zero"), "exact ties between E4M3 neighbours"),
        Mutant("half-up", _round_mutant(ties="half-up"), "exact ties between E4M3 neighbours"),
        Mutant("no-saturation", _round_mutant(saturate=False), "±inf where a finite number was expected"),
        Mutant("nan-on-overflow", lambda x, f: f.round(x, saturate=False), "NaN where a number was expected"),
        Mutant("drops-nan", _round_mutant(keep_nan=False), "a number where NaN was expected"),
        Mutant("float64", _round_mutant(dtype=torch.float64),
               "dtype torch.float64 where torch.float32 is required"),
        Mutant("in-place", _round_mutant(in_place=True), "modified its input x"),
        Mutant("partial", _round_mutant(todo="FP8 E5M2"), "NotImplementedError"),
    ],
    "check_bits_per_weight_block": [
        Mutant("no-scale", lambda b, g, s, z: b, "got 4, expected 4.25"),
        Mutant("no-zero", lambda b, g, s, z: b + s / g, "INT4, group 128, fp16 scale and zero: got 4.125"),
        Mutant("divide-by-bits", lambda b, g, s, z: b + (s + z) / b, "got 12, expected 4.25"),
        Mutant("times-group", lambda b, g, s, z: b + (s + z) * g, "got 4100, expected 4.25"),
        Mutant("rounds-bits", lambda b, g, s, z: round(b) + (s + z) / g, "ternary"),
        Mutant("integer-division", lambda b, g, s, z: b + (s + z) // g, "got 4, expected 4.25"),
        Mutant("nan-for-symmetric", lambda b, g, s, z: b + (s + z) / g if z else math.nan,
               "NaN where a number was expected"),
        Mutant("partial", _bpw_todo, "NotImplementedError"),
    ],
    "check_quantile_levels": [
        Mutant("zero-twice", _quantile_mutant(keep_half=True), "NF4"),
        Mutant("not-normalised", _quantile_mutant(normalise=False), "NF4"),
        Mutant("no-offset", _quantile_mutant(offset_used=False), "NaN where a number was expected"),
        Mutant("uniform-grid", _quantile_mutant(uniform=True), "NF4"),
        Mutant("sides-swapped", _quantile_mutant(swap=True), "NF4"),
        Mutant("unsorted", _quantile_mutant(sort=False), "NF4"),
        Mutant("midpoint-quantiles", _quantile_mutant(midpoints=True), "NF4"),
        Mutant("float64", _quantile_mutant(dtype=torch.float64), "dtype torch.float64"),
        Mutant("partial", _quantile_mutant(todo_small=True), "NotImplementedError"),
    ],
}
