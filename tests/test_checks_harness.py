"""The checks harness: accepts the reference, says "not implemented yet" without raising, rejects wrong code,
and raises in strict mode only for real failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse.checks import _harness
from qcourse.checks._harness import STRICT_ENV, Case, compare, run_check


def _round_ref(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x)


CASES = [
    Case("seeded", (torch.randn(5, 7, generator=torch.Generator().manual_seed(0)) * 3,)),
    Case("zeros", (torch.zeros(4),)),
    Case("halves", (torch.tensor([0.5, 1.5, -0.5, 2.5]),)),
    Case("outlier", (torch.tensor([0.1, 0.2, 1e6]),)),
]


@pytest.fixture(autouse=True)
def _lenient(monkeypatch):
    monkeypatch.delenv(STRICT_ENV, raising=False)
    _harness.clear_history()


def test_accepts_reference(capsys):
    res = run_check("round", _round_ref, _round_ref, CASES)
    assert res.passed and res.status == "passed" and bool(res)
    assert [c.label for c in res.cases] == [c.label for c in CASES]
    out = capsys.readouterr().out
    assert "4/4 cases match" in out and "✓ seeded: exact" in out


def test_not_implemented_prints_and_does_not_raise(capsys, monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")  # strict mode must still not raise for an unfinished exercise

    def todo(x):
        # YOUR CODE HERE
        raise NotImplementedError()

    res = run_check("round", todo, _round_ref, CASES)
    assert res.status == "not implemented" and not res.passed
    assert "round: not implemented yet" in capsys.readouterr().out
    (record,) = _harness.history()
    assert record["status"] == "not implemented"
    assert record["raised_in"]["function"] == "todo"
    assert record["raised_in"]["line"] == "raise NotImplementedError()"


@pytest.mark.parametrize("wrong", [torch.floor, torch.ceil, torch.trunc, lambda x: torch.round(x) + 1,
                                   lambda x: x])
def test_rejects_wrong_function(wrong, capsys):
    res = run_check("round", wrong, _round_ref, CASES, hint="use round-half-to-even")
    assert res.status == "failed" and not res
    out = capsys.readouterr().out
    assert "✗" in out and "hint: use round-half-to-even" in out


def test_strict_mode_raises_on_failure(monkeypatch):
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(AssertionError, match="check round failed: .*halves"):
        run_check("round", torch.floor, _round_ref, CASES, verbose=False)
    # and passes quietly on a correct function
    assert run_check("round", _round_ref, _round_ref, CASES, verbose=False).passed


def test_student_exception_is_reported_not_raised(capsys):
    def broken(x):
        return x.no_such_method()

    res = run_check("round", broken, _round_ref, CASES)
    assert res.status == "failed"
    assert all("raised AttributeError" in c.detail for c in res.cases)


def test_missing_return_gets_a_hint():
    res = run_check("round", lambda x: None, _round_ref, CASES[:1], verbose=False)
    assert "forget to `return`" in res.cases[0].detail


def test_student_cannot_corrupt_reference_inputs():
    def in_place(x):
        return x.round_()  # mutates its argument; the reference must still see the original

    res = run_check("round", in_place, _round_ref, CASES, verbose=False)
    assert res.passed


def test_shape_and_structure_mismatches():
    assert compare(torch.zeros(3), torch.zeros(4), 0, 0) == (False, "shape (3,) != expected (4,)")
    ok, detail = compare((torch.zeros(2),), (torch.zeros(2), torch.ones(1)), 0, 0)
    assert not ok and "sequence of 2" in detail
    ok, detail = compare({"a": 1}, {"a": 1, "b": 2}, 0, 0)
    assert not ok and "keys" in detail
    assert compare({"a": torch.ones(2)}, {"a": torch.ones(2)}, 0, 0)[0]
    assert compare(3, 4, 0, 0)[0] is False
    assert compare(np.int64(3), 3, 0, 0)[0]
    assert compare("abc", "abc", 0, 0) == (True, "exact")


def test_nan_matches_nan_but_not_a_number():
    nan = torch.tensor([float("nan"), 1.0])
    assert compare(nan, nan.clone(), 0, 0) == (True, "exact")
    assert not compare(torch.tensor([0.0, 1.0]), nan, 0, 0)[0]


def test_integer_codes_accept_whole_floats():
    assert compare(torch.tensor([1.0, 2.0]), torch.tensor([1, 2], dtype=torch.uint8), 0, 0)[0]
    assert not compare(torch.tensor([1.0, 2.5]), torch.tensor([1, 2]), 0, 0)[0]


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one Case"):
        run_check("x", _round_ref, _round_ref, [])
    with pytest.raises(TypeError, match="student_fn must be your function"):
        run_check("x", torch.zeros(2), _round_ref, CASES)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=20),
       st.floats(1e-3, 1.0))
def test_compare_tolerance_property(values, eps):
    want = torch.tensor(values, dtype=torch.float64)
    # a perturbation well inside rtol is "allclose"; one well outside it is a failure
    assert compare(want * (1 + 0.1 * eps), want, rtol=eps, atol=0)[0]
    assert not compare(want + 10 * eps * (want.abs() + 1), want, rtol=eps, atol=0)[0]


def test_history_records_all_outcomes(monkeypatch):
    run_check("a", _round_ref, _round_ref, CASES[:1], verbose=False)
    run_check("b", torch.floor, _round_ref, CASES[2:3], verbose=False)
    assert [(r["name"], r["status"]) for r in _harness.history()] == [("a", "passed"), ("b", "failed")]
    _harness.clear_history()
    assert _harness.history() == []
