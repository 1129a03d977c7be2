"""Each lesson-01 check accepts correct answers and rejects the classic mistakes."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

import qcourse.checks as checks
from qcourse import formats as F
from qcourse.checks import l01_formats as L

BIAS = {"e4m3": 7, "e5m2": 15, "e2m1": 1}
WIDTH = {"e4m3": (4, 3), "e5m2": (5, 2), "e2m1": (2, 1)}


def make_decode(bias_offset: int = 0, subnormals: bool = True, e4m3_ieee: bool = False,
                signed: bool = True) -> Callable[[int, str], float]:
    """A learner-style decoder; the keyword arguments switch on one classic mistake each."""
    def decode_bits(bits: int, fmt_name: str) -> float:
        E, M = WIDTH[fmt_name]
        bias = BIAS[fmt_name] + bias_offset
        s, e, m = (bits >> (E + M)) & 1, (bits >> M) & ((1 << E) - 1), bits & ((1 << M) - 1)
        sign = -1.0 if (s and signed) else 1.0
        top = (1 << E) - 1
        if fmt_name == "e5m2" or (fmt_name == "e4m3" and e4m3_ieee):
            if e == top:
                return sign * math.inf if m == 0 else math.nan
        if fmt_name == "e4m3" and e == top and m == (1 << M) - 1:
            return math.nan
        if e == 0 and subnormals:
            return sign * (m / 2**M) * 2.0 ** (1 - bias)
        return sign * (1 + m / 2**M) * 2.0 ** (e - bias)
    return decode_bits


def learner_round(x: torch.Tensor, fmt: F.FloatFormat, ties: str = "even", saturate: bool = True,
                  mode: str = "nearest", keep_nan: bool = True) -> torch.Tensor:
    """A learner-style grid rounding (the solution's method); keywords switch on one mistake each."""
    pos = fmt.all_values()
    pos = pos[pos >= 0].double()
    xd = x.double()
    a = xd.abs().clamp(max=pos[-1].item()) if saturate else xd.abs()
    hi = torch.searchsorted(pos, a.nan_to_num(0.0)).clamp(max=len(pos) - 1)
    lo = (hi - 1).clamp(min=0)
    d_lo, d_hi = a - pos[lo], pos[hi] - a
    if mode == "truncate":
        r = torch.where(d_hi == 0, pos[hi], pos[lo])
    else:
        tie_hi = {"even": hi % 2 == 0, "away": torch.ones_like(hi, dtype=torch.bool),
                  "down": torch.zeros_like(hi, dtype=torch.bool)}[ties]
        r = torch.where((d_hi < d_lo) | ((d_hi == d_lo) & tie_hi), pos[hi], pos[lo])
    if not saturate:  # IEEE-style: beyond max + half a step is infinity
        step = float(pos[-1] - pos[-2])
        r = torch.where(a >= pos[-1] + step / 2, torch.full_like(r, math.inf), r)
    r = torch.copysign(r, xd)
    if keep_nan:
        r = torch.where(torch.isnan(xd), xd, r)
    else:
        r = torch.where(torch.isnan(xd), torch.zeros_like(r), r)
    return r.float()


# ---- decode_bits --------------------------------------------------------------------------------------

def test_decode_check_accepts_reference_and_correct_learner_code() -> None:
    assert L.check_decode_bits(L.reference_decode_bits, verbose=False).passed
    assert L.check_decode_bits(make_decode(), verbose=False).passed


@pytest.mark.parametrize("wrong", [
    make_decode(bias_offset=1),       # wrong bias
    make_decode(bias_offset=-1),      # off-by-one exponent
    make_decode(subnormals=False),    # implicit 1 on subnormals too
    make_decode(e4m3_ieee=True),      # treats E4M3 like IEEE: 0x78 as inf instead of 256
    make_decode(signed=False),        # forgets the sign bit
], ids=["bias+1", "bias-1", "no-subnormals", "e4m3-as-ieee", "no-sign"])
def test_decode_check_rejects_known_mistakes(wrong: Callable[[int, str], float]) -> None:
    assert L.check_decode_bits(wrong, verbose=False).status == "failed"


# ---- round_to_grid ------------------------------------------------------------------------------------

def test_round_check_accepts_reference_and_correct_learner_code() -> None:
    assert L.check_round_to_grid(L.reference_round_to_grid, verbose=False).passed
    assert L.check_round_to_grid(learner_round, verbose=False).passed


@pytest.mark.parametrize("wrong", [
    lambda x, f: learner_round(x, f, mode="truncate"),     # truncation instead of RNE
    lambda x, f: learner_round(x, f, ties="away"),         # round half away from zero
    lambda x, f: learner_round(x, f, ties="down"),         # ties toward zero (argmin's first hit)
    lambda x, f: learner_round(x, f, saturate=False),      # missing saturation: overflow -> inf
    lambda x, f: f.round(x, saturate=False),               # E4M3's non-saturating mode: overflow -> NaN
    lambda x, f: learner_round(x, f, keep_nan=False),      # NaN silently becomes 0
], ids=["truncate", "ties-away", "ties-down", "no-saturation", "nan-on-overflow", "drops-nan"])
def test_round_check_rejects_known_mistakes(
        wrong: Callable[[torch.Tensor, F.FloatFormat], torch.Tensor]) -> None:
    assert L.check_round_to_grid(wrong, verbose=False).status == "failed"


# ---- bits_per_weight_block ----------------------------------------------------------------------------

def test_bpw_check_accepts_reference() -> None:
    assert L.check_bits_per_weight_block(L.reference_bits_per_weight_block, verbose=False).passed
    assert L.check_bits_per_weight_block(lambda b, g, s, z: (b * g + s + z) / g, verbose=False).passed


@pytest.mark.parametrize("wrong", [
    lambda b, g, s, z: b,                    # forgets the scale bits
    lambda b, g, s, z: b + s / g,            # forgets the zero point
    lambda b, g, s, z: b + (s + z) / b,      # divides by the wrong quantity
    lambda b, g, s, z: b + (s + z) * g,      # multiplies instead of sharing
    lambda b, g, s, z: round(b) + (s + z) / g,  # rounds log2(3) to 2
], ids=["no-scale", "no-zero", "divide-by-bits", "times-group", "rounds-bits"])
def test_bpw_check_rejects_known_mistakes(wrong: Callable[[float, int, int, int], float]) -> None:
    assert L.check_bits_per_weight_block(wrong, verbose=False).status == "failed"


# ---- common behaviour ---------------------------------------------------------------------------------

def test_checks_are_exported_and_report_not_implemented(capsys: pytest.CaptureFixture[str]) -> None:
    def todo(*args: object) -> None:
        raise NotImplementedError()

    for name in ("check_decode_bits", "check_round_to_grid", "check_bits_per_weight_block"):
        assert name in checks.__all__
        assert getattr(checks, name)(todo).status == "not implemented"
    assert "not implemented yet" in capsys.readouterr().out


def test_failing_check_prints_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    L.check_bits_per_weight_block(lambda b, g, s, z: b)
    out = capsys.readouterr().out
    assert "✗" in out and "hint:" in out and "zero point" in out
