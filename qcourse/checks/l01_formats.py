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
from collections.abc import Callable
from typing import Any

import torch

from qcourse import formats as F
from qcourse.checks._harness import Case, CheckResult, run_check

__all__ = ["check_decode_bits", "check_round_to_grid", "check_bits_per_weight_block",
           "reference_decode_bits", "reference_round_to_grid", "reference_bits_per_weight_block"]

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


def check_decode_bits(student_fn: Callable[[int, str], float], verbose: bool = True) -> CheckResult:
    """Check ``decode_bits(bits, fmt_name) -> float`` for ``fmt_name`` in ``"e4m3"``, ``"e5m2"``, ``"e2m1"``.

    Each case decodes a list of patterns one at a time; NaN must come out as NaN.
    """
    def many(fn: Callable[[int, str], Any]) -> Callable[[list[int], str], list[float]]:
        return lambda cs, name: [float(fn(c, name)) for c in cs]

    return run_check(
        "decode_bits", many(student_fn), many(reference_decode_bits), _decode_cases(), rtol=0, atol=0,
        hint="value = (-1)^s · (1 + m/2^M) · 2^(e − bias) for e > 0, and (m/2^M) · 2^(1 − bias) for e = 0 "
             "(subnormal: no implicit 1, exponent 1 − bias). Biases: E4M3 7, E5M2 15, E2M1 1. E4M3 has no "
             "infinity: only S.1111.111 is NaN; E5M2's all-ones exponent is ±inf (mantissa 0) or NaN.",
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
        hint="find the nearest grid value of |x| (fmt.all_values()); on an exact tie take the one with the "
             "even index among the non-negative values (= even mantissa); clamp |x| to fmt.max_value first; "
             "keep the sign and let NaN through.",
        verbose=verbose)


def check_bits_per_weight_block(student_fn: Callable[[float, int, int, int], float],
                                verbose: bool = True) -> CheckResult:
    """Check ``bits_per_weight_block(bits, group_size, scale_bits, zero_bits) -> float``."""
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
        hint="every weight stores `bits`; each group of `group_size` weights also stores one scale and one "
             "zero point, shared by the group.",
        verbose=verbose)
