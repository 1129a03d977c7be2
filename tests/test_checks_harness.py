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


def test_in_place_edit_is_reported_and_cannot_corrupt_the_reference():
    def in_place(x):
        return x.round_()  # mutates its argument; the reference must still see the original

    res = run_check("round", in_place, _round_ref, CASES, verbose=False)
    assert res.status == "failed"
    by_label = {c.label: c for c in res.cases}
    # the values are right (the reference saw the original), so the only complaint is the edit
    assert by_label["halves"].detail == "modified its input x (work on a copy, e.g. x.clone())"
    assert by_label["zeros"].ok  # rounding zeros in place changes nothing: not an edit


def test_modified_input_is_named_after_the_reference_parameters():
    def ref(w, bits, *, scale):
        return w * scale

    def bad(w, bits, *, scale):
        scale.mul_(2)
        return w * scale / 2

    case = Case("kw", (torch.ones(2), 3), {"scale": torch.ones(2)})
    (res,) = run_check("scaled", bad, ref, [case], verbose=False).cases
    assert "modified its input scale" in res.detail and not res.ok
    # a list argument edited in place, and a function whose parameters cannot be bound: positional names
    lst = Case("list", ([1.0, 2.0],))
    (res,) = run_check("pop", lambda v: v.pop(), lambda *a: a[0][-1], [lst], verbose=False).cases
    assert res.detail.startswith("modified its input argument 1")


def test_inputs_holding_nan_are_not_reported_as_modified():
    x = torch.tensor([float("nan"), 1.0, -0.0])
    res = run_check("ident", lambda t: t.clone(), lambda t: t.clone(), [Case("nan", (x,))], verbose=False)
    assert res.passed and res.cases[0].detail == "exact"


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=12),
       st.integers(0, 11))
def test_mutation_detection_property(values, k):
    """Reading never counts as an edit; writing any one element always does, NaN inputs included."""
    x = torch.tensor(values, dtype=torch.float32)
    case = [Case("x", (x,))]
    assert run_check("read", lambda t: t * 1, lambda t: t * 1, case, verbose=False).passed
    i = k % len(values)

    def write(t):
        out = t.clone()
        t[i] = 7.0 if not t[i] == 7.0 else 8.0  # always a different value (NaN != 7 too)
        return out

    res = run_check("write", write, lambda t: t.clone(), case, verbose=False)
    assert res.status == "failed" and "modified its input t" in res.cases[0].detail


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


def test_dtype_is_required_unless_waived():
    codes = torch.tensor([1, 2], dtype=torch.uint8)
    assert compare(torch.tensor([1.0, 2.0]), codes, 0, 0) == (
        False, "dtype torch.float32 where torch.uint8 is required")
    assert compare(torch.tensor([1, 2]), codes, 0, 0) == (
        False, "dtype torch.int64 where torch.uint8 is required")
    assert compare(torch.ones(2, dtype=torch.float64), torch.ones(2), 0, 0)[1] == (
        "dtype torch.float64 where torch.float32 is required")
    # wrong dtype and wrong values: both are said
    ok, detail = compare(torch.tensor([1.0, 3.0]), codes, 0, 0)
    assert not ok and detail.startswith("dtype torch.float32 where torch.uint8 is required; max |diff| 1")
    # a tensor where a tensor is expected; Python numbers compare by value whatever their type
    assert compare(np.ones(2, dtype=np.float32), torch.ones(2), 0, 0) == (
        False, "expected a torch.Tensor; got ndarray")
    assert compare(np.float32(4.25), 4.25, 0, 0)[0] and compare(torch.tensor(4.25), 4.25, 0, 0)[0]
    # waived: a float answer holding whole numbers is fine, a fraction is not
    assert compare(torch.tensor([1.0, 2.0]), codes, 0, 0, exact_dtype=False)[0]
    assert not compare(torch.tensor([1.0, 2.5]), torch.tensor([1, 2]), 0, 0, exact_dtype=False)[0]


def test_nan_and_inf_messages():
    want = torch.tensor([1.0, float("nan"), 3.0, float("inf")])
    assert compare(torch.tensor([float("nan"), float("nan"), 3.0, float("inf")]), want, 0, 0) == (
        False, "NaN where a number was expected (1 of 4 values)")
    assert compare(torch.tensor([1.0, 2.0, 3.0, float("inf")]), want, 0, 0) == (
        False, "a number where NaN was expected (1 of 4 values)")
    assert compare(torch.tensor([1.0, float("nan"), float("-inf"), 5.0]), want, 0, 0) == (
        False, "±inf where a finite number was expected (1 of 4 values); "
               "a finite number where ±inf was expected (1 of 4 values)")
    ok, detail = compare(torch.tensor([1.0, float("nan"), 3.0, float("-inf")]), want, 0, 0)
    assert not ok and "max |diff| 0 at index (3,) (got -inf, expected inf)" in detail
    assert "inf" not in compare(float("nan"), 2.0, 0, 0)[1].replace("(1 of 1 values)", "")


def test_tuple_items_are_named_and_all_reported():
    want = (torch.ones(2, dtype=torch.uint8), torch.ones(1), torch.zeros(1))
    got = (torch.ones(2, dtype=torch.uint8), torch.full((1,), float("nan")), torch.ones(1))
    ok, detail = compare(got, want, 0, 0, names=("codes", "scale", "zero"))
    assert not ok and detail == ("scale: NaN where a number was expected (1 of 1 values); "
                                 "zero: max |diff| 1 at index (0,) (got 1, expected 0); 1 of 1 values differ")
    assert "item 1" in compare(got, want, 0, 0)[1]  # unnamed: positions
    assert compare(got[:2], want, 0, 0, names=("codes", "scale", "zero"))[1] == (
        "expected a sequence of 3 results (codes, scale, zero); got 2 results")


def test_float64_required_is_said():
    want = torch.tensor([1 / 3, 2 / 3, 100.0], dtype=torch.float64)
    ok, detail = compare(want.float().double(), want, 1e-9, 1e-9)
    assert not ok and detail.endswith("differences of float32 rounding size: compute in float64 throughout, "
                                      "as the exercise requires")
    assert compare(want.float(), want, 1e-9, 1e-9)[1].startswith(
        "dtype torch.float32 where torch.float64 is required")
    # a real mistake in float64 is not blamed on precision
    assert "float32" not in compare(want + 0.1, want, 1e-9, 1e-9)[1]


def test_partly_implemented_function_fails_and_shows_the_other_cases(capsys, monkeypatch):
    def half_done(x):
        if x.numel() == 4:
            raise NotImplementedError()
        return torch.floor(x)

    res = run_check("round", half_done, _round_ref, CASES, hint="use round-half-to-even")
    assert res.status == "failed"
    details = {c.label: c.detail for c in res.cases}
    assert details["zeros"] == details["halves"] == _harness.NOT_IMPLEMENTED_CASE
    assert details["seeded"].startswith("max |diff| 1")  # the floor mistake is not hidden
    out = capsys.readouterr().out
    assert "round: not implemented yet" not in out and "1/4 cases match" in out
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(AssertionError, match="NotImplementedError"):
        run_check("round", half_done, _round_ref, CASES, verbose=False)


def test_compare_fn_and_report(capsys):
    def by_sign(got, want, case):
        return (got > 0) == (want > 0), f"sign of {case.label}"

    res = run_check("sign", lambda x: -x, lambda x: x, [Case("one", (1,)), Case("zero", (0,))],
                    compare_fn=by_sign, hint="""
                        keep the
                        sign""")  # a paragraph hint prints as one line
    assert [c.ok for c in res.cases] == [False, True]
    assert capsys.readouterr().out == res.report() + "\n"
    assert res.failures() == "one: sign of one" and res.report().endswith("hint: keep the sign")


def test_try_mutant_is_quiet_and_leaves_strict_mode_and_history(monkeypatch, capsys):
    monkeypatch.setenv(STRICT_ENV, "1")

    def check(fn, verbose=True):
        return run_check("round", fn, _round_ref, CASES, verbose=verbose)

    assert _harness.try_mutant(check, _harness.Mutant("floor", torch.floor, "HALVES"))[0]
    assert not _harness.try_mutant(check, _harness.Mutant("floor", torch.floor, "no such text"))[0]
    # a function that passes is not "rejected", whatever the fragment
    assert not _harness.try_mutant(check, _harness.Mutant("right", _round_ref, "seeded"))[0]
    assert _harness.history() == [] and capsys.readouterr().out == ""
    import os
    assert os.environ[STRICT_ENV] == "1"


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one Case"):
        run_check("x", _round_ref, _round_ref, [])
    with pytest.raises(TypeError, match="student_fn must be your function"):
        run_check("x", torch.zeros(2), _round_ref, CASES)
    with pytest.raises(TypeError, match="cases must be Case objects"):
        run_check("x", _round_ref, _round_ref, [(torch.ones(2),)])
    with pytest.raises(ValueError, match="rtol and atol must be >= 0"):
        run_check("x", _round_ref, _round_ref, CASES, rtol=-1e-6)
    with pytest.raises(TypeError, match="result_names must be a sequence of names"):
        run_check("x", _round_ref, _round_ref, CASES, result_names="codes")
    with pytest.raises(TypeError, match="compare_fn must be callable"):
        run_check("x", _round_ref, _round_ref, CASES, compare_fn="exact")
    with pytest.raises(TypeError, match="fn must be the wrong implementation"):
        _harness.Mutant("floor", None, "halves")
    with pytest.raises(ValueError, match="expect must be a non-empty fragment"):
        _harness.Mutant("floor", torch.floor, " ")


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
