"""Lesson-01 checks: accept correct answers, and say precisely what is wrong with a wrong one.

The catalogue of wrong implementations each check must reject lives in ``l01_formats.MUTANTS`` and is run
by ``tests/test_checks_mutations.py``; here: correct learner-style code passes, and the messages.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcourse.checks as checks
from qcourse import formats as F
from qcourse.checks import l01_formats as L


def test_checks_accept_reference_and_learner_style_code() -> None:
    assert L.check_decode_bits(L.reference_decode_bits, verbose=False).passed
    assert L.check_decode_bits(L._decode_mutant(), verbose=False).passed      # no mistake switched on
    assert L.check_round_to_grid(L.reference_round_to_grid, verbose=False).passed
    assert L.check_round_to_grid(L._round_mutant(), verbose=False).passed
    assert L.check_bits_per_weight_block(L.reference_bits_per_weight_block, verbose=False).passed
    assert L.check_bits_per_weight_block(lambda b, g, s, z: (b * g + s + z) / g, verbose=False).passed


def test_decode_accepts_any_real_number_type() -> None:
    # the exercise text says so: an int zero, a NumPy float or a 0-dim tensor are the same number
    import numpy as np

    def typed(bits: int, fmt_name: str) -> object:
        v = L.reference_decode_bits(bits, fmt_name)
        return int(v) if v == 0 else (np.float64(v) if fmt_name == "e5m2" else torch.tensor(v))

    assert L.check_decode_bits(typed, verbose=False).passed
    assert L.check_decode_bits(lambda b, f: True, verbose=False).status == "failed"  # a bool is not a value


def test_decode_failure_names_pattern_returned_and_expected(capsys: pytest.CaptureFixture[str]) -> None:
    def no_subnormals(bits: int, fmt_name: str) -> float:
        value = L.reference_decode_bits(bits, fmt_name)
        return 2.0 ** -6 * (1 + (bits & 7) / 8) if fmt_name == "e4m3" and 0 < bits < 8 else value

    L.check_decode_bits(no_subnormals)
    out = capsys.readouterr().out
    assert ("✗ E4M3 zero and subnormals (exponent field 0): 3 of 5 patterns wrong: "
            "0x01 = 0 0000 001: returned 0.017578125, expected 0.001953125") in out
    assert "0x07 = 0 0000 111: returned 0.029296875, expected 0.013671875" in out
    # the pattern layout follows the format: 1 + 5 + 2 bits for E5M2, 1 + 2 + 1 for E2M1
    assert L._pattern(0x7C, "e5m2") == "0x7c = 0 11111 00" and L._pattern(0xB, "e2m1") == "0x0b = 1 01 1"


def test_decode_nan_and_infinity_are_compared_as_values() -> None:
    case = checks.Case("specials", ([0x7C, 0x7D], "e5m2"))
    assert L._compare_decoded([math.inf, math.nan], [math.inf, math.nan], case) == (True, "exact")
    ok, detail = L._compare_decoded([math.nan, math.inf], [math.inf, math.nan], case)
    assert not ok and detail == ("2 of 2 patterns wrong: 0x7c = 0 11111 00: returned nan, expected inf; "
                                 "0x7d = 0 11111 01: returned inf, expected nan")


def test_round_to_grid_requires_float32_and_untouched_input(capsys: pytest.CaptureFixture[str]) -> None:
    res = L.check_round_to_grid(lambda x, f: L.reference_round_to_grid(x, f).double(), verbose=False)
    assert all(c.detail == "dtype torch.float64 where torch.float32 is required" for c in res.cases)
    res = L.check_round_to_grid(lambda x, f: x.copy_(L.reference_round_to_grid(x, f)), verbose=False)
    edited = "modified its input x (work on a copy, e.g. x.clone())"
    assert {c.detail for c in res.cases if not c.ok} == {edited}
    # rounding zeros in place changes nothing: that case is not blamed
    assert next(c for c in res.cases if c.label == "zeros").ok


def test_round_tie_cases_are_exact_ties() -> None:
    # every value of the tie cases is the midpoint of two neighbours, so only the tie rule decides
    for case in L._round_cases():
        if case.label.startswith("exact ties"):
            x, fmt = case.args
            r_even = F.FloatFormat.round(fmt, x, saturate=True).double()
            grid = fmt.all_values().double()
            idx = torch.searchsorted(grid, x.double())
            assert torch.equal(x.double(), (grid[idx - 1] + grid[idx]) / 2)
            assert torch.isin(r_even, grid).all()


def test_bits_per_weight_messages_are_plain_numbers() -> None:
    res = L.check_bits_per_weight_block(lambda b, g, s, z: b + s / g, verbose=False)
    assert res.cases[0].detail == "got 4.125, expected 4.25"


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


# ---- the references the checks use, against independent implementations --------------------------------

TORCH_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


@pytest.mark.parametrize("fmt_name", sorted(TORCH_FP8))
def test_decode_reference_matches_torch_float8_on_every_pattern(fmt_name: str) -> None:
    want = torch.arange(256, dtype=torch.uint8).view(TORCH_FP8[fmt_name]).double().tolist()
    got = [L.reference_decode_bits(c, fmt_name) for c in range(256)]
    assert all(g == w or (math.isnan(g) and math.isnan(w)) for g, w in zip(got, want, strict=True))

    def via_torch(bits: int, name: str) -> float:
        if name not in TORCH_FP8:  # torch has no E2M1 dtype to view as
            return L.reference_decode_bits(bits, name)
        return torch.tensor([bits], dtype=torch.uint8).view(TORCH_FP8[name]).item()

    assert L.check_decode_bits(via_torch, verbose=False).passed


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-448, 448, allow_nan=False, width=32), min_size=1, max_size=32))
def test_round_reference_matches_torch_float8_cast_in_range(values: list[float]) -> None:
    # inside the range, torch's cast is round-to-nearest-even: the same grid and the same ties
    x = torch.tensor(values, dtype=torch.float32)
    assert torch.equal(L.reference_round_to_grid(x, F.E4M3), x.to(torch.float8_e4m3fn).float())


def test_quantile_levels_reference_is_nf4_and_accepts_learner_code() -> None:
    import torch

    from qcourse.checks import l01_formats as L1
    from qcourse.fp4_blocks import NF4_OFFSET, nf4_levels

    assert torch.allclose(L1.reference_quantile_levels(8, 7, NF4_OFFSET), nf4_levels(), atol=1e-7)
    assert L1.check_quantile_levels(L1.reference_quantile_levels, verbose=False).passed
    assert L1.check_quantile_levels(L1._quantile_mutant(), verbose=False).passed
