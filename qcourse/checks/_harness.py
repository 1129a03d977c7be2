"""The machinery behind every exercise check.

A check runs the learner's function and the reference implementation on the same inputs (seeded ones
and adversarial ones: zeros, a constant, one huge outlier, extreme magnitudes, odd shapes), and prints for
each case whether the results are exact, close, or how far apart they are, then a hint when something
differs. A learner function that still raises ``NotImplementedError`` prints "not implemented yet" and
does not raise, so restart-and-run-all on a fresh exercise notebook runs to the end.

>>> import torch
>>> res = run_check("double", lambda x: 2 * x, lambda x: x + x,
...                 [Case("ones", (torch.ones(3),))], verbose=False)
>>> res.passed, res.status
(True, 'passed')
>>> def todo(x):
...     raise NotImplementedError()
>>> run_check("double", todo, lambda x: x + x, [Case("ones", (torch.ones(3),))]).status
double: not implemented yet — write your code in the exercise cell, run it, then run this check again.
'not implemented'
"""

from __future__ import annotations

import copy
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: When this environment variable is "1", a failing check raises ``AssertionError`` (used by the tests
#: that prove every solution notebook passes its checks). "not implemented yet" never raises.
STRICT_ENV = "QCOURSE_CHECKS_STRICT"


# Every check run in this process, oldest first: what the exercise-sync tests read back from a kernel to
# prove that solutions pass and that exercises fail only inside their solution regions.
_HISTORY: list[dict[str, Any]] = []


def history() -> list[dict[str, Any]]:
    """Every check run in this process so far, oldest first (plain dicts, JSON-serializable).

    Each record has ``name``, ``status`` ("passed" | "failed" | "not implemented") and, for "not
    implemented", ``raised_in``: the function and source line that raised ``NotImplementedError``.

    >>> clear_history()
    >>> _ = run_check("twice", lambda x: 2 * x, lambda x: 2 * x, [Case("one", (1,))], verbose=False)
    >>> [(r["name"], r["status"]) for r in history()]
    [('twice', 'passed')]
    """
    return copy.deepcopy(_HISTORY)


def clear_history() -> None:
    """Forget the checks run so far (see :func:`history`)."""
    _HISTORY.clear()


def _raise_site(exc: BaseException) -> dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1]
    return {"function": last.name, "line": (last.line or "").strip(), "filename": last.filename,
            "lineno": last.lineno}


@dataclass
class Case:
    """One input for a check: a label the learner can read, and the arguments."""

    label: str
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseResult:
    label: str
    ok: bool
    detail: str


@dataclass
class CheckResult:
    name: str
    status: str  # "passed" | "failed" | "not implemented"
    cases: list[CaseResult]

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed


def _to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    if isinstance(x, np.ndarray | np.generic | int | float | bool):
        return np.asarray(x)
    return x


def compare(got: Any, want: Any, rtol: float, atol: float) -> tuple[bool, str]:
    """Compare two results (tensors, arrays, numbers, or tuples/lists/dicts of them)."""
    if isinstance(want, tuple | list):
        if not isinstance(got, tuple | list) or len(got) != len(want):
            return False, f"expected a sequence of {len(want)} results; got {type(got).__name__}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            ok, detail = compare(g, w, rtol, atol)
            if not ok:
                return False, f"item {i}: {detail}"
        exact = all(compare(g, w, 0, 0)[0] for g, w in zip(got, want, strict=True))
        return True, "exact" if exact else "allclose"
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            shown = sorted(got) if isinstance(got, dict) else repr(got)
            return False, f"expected keys {sorted(want)}; got {shown}"
        for k in want:
            ok, detail = compare(got[k], want[k], rtol, atol)
            if not ok:
                return False, f"[{k!r}]: {detail}"
        return True, "allclose"
    g, w = _to_numpy(got), _to_numpy(want)
    if isinstance(w, np.ndarray):
        if not isinstance(g, np.ndarray):
            return False, f"expected an array/tensor; got {type(got).__name__}"
        if g.shape != w.shape:
            return False, f"shape {g.shape} != expected {w.shape}"
        if w.dtype.kind in "biu" and g.dtype.kind not in "biu":
            # integer codes compared as numbers; a float answer holding whole numbers is fine
            g = g.astype(np.float64)
        if np.array_equal(g, w, equal_nan=w.dtype.kind == "f"):
            return True, "exact"
        gf, wf = g.astype(np.float64), w.astype(np.float64)
        if np.allclose(gf, wf, rtol=rtol, atol=atol, equal_nan=True):
            return True, f"allclose (max |diff| {np.nanmax(np.abs(gf - wf)):.3g})"
        diff = np.abs(gf - wf)
        diff = np.where(np.isnan(diff), np.inf, diff)
        n_bad = int((~np.isclose(gf, wf, rtol=rtol, atol=atol, equal_nan=True)).sum())
        return False, f"max |diff| {np.max(diff):.4g}; {n_bad} of {w.size} values differ"
    if got == want:
        return True, "exact"
    return False, f"got {got!r}, expected {want!r}"


def run_check(
    name: str,
    student_fn: Callable[..., Any],
    reference_fn: Callable[..., Any],
    cases: Sequence[Case],
    *,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    hint: str = "",
    verbose: bool = True,
) -> CheckResult:
    """Run ``student_fn`` and ``reference_fn`` on every case, print a report, return a :class:`CheckResult`.

    Parameters
    ----------
    name : str
        The check's name, printed in every line of the report.
    student_fn, reference_fn : callable
        The learner's function and the reference; both get deep copies of each case's arguments, so an
        in-place edit by one cannot change what the other sees.
    cases : sequence of Case
        At least one; seeded inputs first, then adversarial ones (zeros, constant, outlier, extremes).
    rtol, atol : float
        Tolerances for "allclose"; results that are bit-identical print "exact".
    hint : str
        Printed after a failure: the most likely mistake, in one sentence.
    verbose : bool
        Print one line per case and a summary (a "not implemented yet" line is always printed).

    Returns
    -------
    CheckResult
        ``status`` is "passed", "failed" or "not implemented". When the environment variable
        ``QCOURSE_CHECKS_STRICT`` is "1", a failure raises ``AssertionError`` instead of returning;
        "not implemented" never raises.

    Examples
    --------
    >>> import torch
    >>> res = run_check("floor_or_round", torch.floor, torch.round, [Case("halves", (torch.tensor([0.6]),))],
    ...                 hint="round to nearest, not down")
      ✗ halves: max |diff| 1; 1 of 1 values differ
    floor_or_round: 0/1 cases match the reference.
    hint: round to nearest, not down
    """
    if not callable(student_fn):
        raise TypeError(f"{name}: student_fn must be your function itself (e.g. check(my_fn)); "
                        f"got {type(student_fn).__name__}")
    cases = list(cases)
    if not cases:
        raise ValueError(f"{name}: cases must hold at least one Case; a check with no cases proves nothing")
    results: list[CaseResult] = []
    for case in cases:
        want = reference_fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        try:
            got = student_fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        except NotImplementedError as exc:
            print(f"{name}: not implemented yet — write your code in the exercise cell, run it, "
                  "then run this check again.")
            _HISTORY.append({"name": name, "status": "not implemented", "raised_in": _raise_site(exc)})
            return CheckResult(name, "not implemented", [])
        except Exception as exc:  # the learner's bug, reported rather than crashing the notebook
            results.append(CaseResult(case.label, False, f"raised {type(exc).__name__}: {exc}"))
            continue
        ok, detail = compare(got, want, rtol, atol)
        if not ok and got is None and want is not None:
            detail += " (did the function forget to `return` its result?)"
        results.append(CaseResult(case.label, ok, detail))
    passed = all(r.ok for r in results)
    if verbose:
        for r in results:
            print(f"  {'✓' if r.ok else '✗'} {r.label}: {r.detail}")
        n_ok = sum(r.ok for r in results)
        print(f"{name}: {n_ok}/{len(results)} cases match the reference" + ("" if passed else "."))
        if not passed and hint:
            print(f"hint: {hint}")
    result = CheckResult(name, "passed" if passed else "failed", results)
    _HISTORY.append({"name": name, "status": result.status, "raised_in": None})
    if not passed and os.environ.get(STRICT_ENV) == "1":
        raise AssertionError(f"check {name} failed: " + "; ".join(f"{r.label}: {r.detail}" for r in results
                                                                   if not r.ok))
    return result
