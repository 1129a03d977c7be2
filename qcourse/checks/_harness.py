"""The machinery behind every exercise check, and the mutation suite that keeps the checks honest.

A check runs the learner's function and the reference implementation on the same inputs (seeded ones
and adversarial ones: zeros, a constant, one huge outlier, extreme magnitudes, exact ties, odd shapes), and
prints for each case whether the results are exact, close, or what differs, then a hint when something
differs. For each case it also verifies that

- the learner's function left its inputs alone (it gets deep copies, which are compared with the originals
  after the call: "modified its input w");
- every result has the dtype the reference has (the exercise text states it: codes ``torch.uint8`` are not
  float codes) and is a tensor where a tensor is expected;
- NaN and ±inf appear exactly where the reference has them ("NaN where a number was expected").

Tuple results are reported by name (``result_names=("codes", "scale", "zero")``). A learner function that
raises ``NotImplementedError`` in every case prints "not implemented yet" and does not raise, so
restart-and-run-all on a fresh exercise notebook runs to the end; one that raises it in some cases only is a
failure, and the other cases are still reported.

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
>>> run_check("double", lambda x: x.mul_(2), lambda x: x + x, [Case("ones", (torch.ones(3),))]).status
  ✗ ones: modified its input x (work on a copy, e.g. x.clone())
double: 0/1 cases match the reference.
'failed'

Adding the checks of a lesson (03–09)
-------------------------------------
1. Write ``qcourse/checks/lNN_topic.py`` (the module name is already listed in ``_LESSON_MODULES`` of
   ``qcourse/checks/__init__.py``, which re-exports every name in the module's ``__all__``): per exercise
   a ``reference_x`` function, a list of :class:`Case` (seeded first, then the adversarial inputs that
   expose each classic mistake; name the mistake in the label, e.g. "exact ties: round half to even"),
   and ``check_x(student_fn, verbose=True)`` returning ``run_check("x", student_fn, reference_x, cases,
   result_names=..., hint=...)``. Put ``check_x`` and ``reference_x`` in ``__all__``.
2. In the same module define ``MUTANTS = {"check_x": [Mutant("half-up", wrong_fn, "exact ties"), ...]}``:
   at least six wrong implementations per check, each with a fragment of the report that points at its
   mistake (a case label, "modified its input", "dtype", "NaN where a number was expected",
   "NotImplementedError"). ``tests/test_checks_mutations.py`` discovers every lesson module, requires six
   mutants for every ``check_*`` in its ``__all__``, asserts that ``reference_x`` passes and that every
   mutant fails with its fragment (see :func:`try_mutant`). Nothing else needs editing.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
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

#: What the learner reads for a case whose call raised ``NotImplementedError`` while others ran.
NOT_IMPLEMENTED_CASE = "raised NotImplementedError: this case is not implemented yet"


# Every check run in this process, oldest first: what the exercise-sync tests read back from a kernel to
# prove that solutions pass and that exercises fail only inside their solution regions.
_HISTORY: list[dict[str, Any]] = []


def history() -> list[dict[str, Any]]:
    """Every check run in this process so far, oldest first (plain dicts, JSON-serializable).

    Each record has ``name``, ``status`` ("passed" | "failed" | "not implemented"), ``cases`` (one dict
    per case: ``label``, ``ok``, ``detail``, and ``error``, the ``"Type: message"`` of what the learner's
    call raised or None) and, for "not implemented", ``raised_in``: the function and source line that
    raised ``NotImplementedError``.

    >>> clear_history()
    >>> _ = run_check("twice", lambda x: 2 * x, lambda x: 2 * x, [Case("one", (1,))], verbose=False)
    >>> [(r["name"], r["status"]) for r in history()]
    [('twice', 'passed')]
    >>> _ = run_check("half", lambda x: 1 / x, lambda x: x / 2, [Case("zero", (0,))], verbose=False)
    >>> history()[-1]["cases"]
    [{'label': 'zero', 'ok': False, 'detail': 'raised ZeroDivisionError: division by zero', \
'error': 'ZeroDivisionError: division by zero'}]
    """
    return copy.deepcopy(_HISTORY)


def clear_history() -> None:
    """Forget the checks run so far (see :func:`history`)."""
    _HISTORY.clear()


def _error_text(exc: BaseException) -> str:
    """``"TypeError: message"``, or the bare type name when the exception has no message."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


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
    #: ``"TypeError: message"`` when the learner's call raised (``NotImplementedError`` included), else None;
    #: what ``python -m qcourse.exercises grade`` reads to tell a crashing function from a wrong one
    error: str | None = None


@dataclass
class CheckResult:
    name: str
    status: str  # "passed" | "failed" | "not implemented"
    cases: list[CaseResult]
    hint: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def failures(self) -> str:
        """The failed cases as ``label: detail`` lines (what a mutant's expected fragment is matched in).

        >>> res = run_check("neg", lambda x: x, lambda x: -x, [Case("two", (2,))], verbose=False)
        >>> res.failures()
        'two: got 2, expected -2'
        """
        return "\n".join(f"{c.label}: {c.detail}" for c in self.cases if not c.ok)

    def report(self) -> str:
        """What a verbose check prints: one line per case, a summary, and the hint after a failure."""
        if self.status == "not implemented":
            return (f"{self.name}: not implemented yet — write your code in the exercise cell, run it, "
                    "then run this check again.")
        lines = [f"  {'✓' if c.ok else '✗'} {c.label}: {c.detail}" for c in self.cases]
        n_ok = sum(c.ok for c in self.cases)
        lines.append(f"{self.name}: {n_ok}/{len(self.cases)} cases match the reference"
                     + ("" if self.passed else "."))
        if not self.passed and self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


# ---- comparing results --------------------------------------------------------------------------------

def _to_numpy(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    if isinstance(x, np.ndarray | np.generic | int | float | bool):
        return np.asarray(x)
    return x


def _dtype_name(x: Any) -> str:
    return str(x.dtype)


def _count(mask: np.ndarray, total: int) -> str:
    return f"{int(mask.sum())} of {total} values"


def _got_expected(g: float, w: float) -> str:
    """``got G, expected W`` with enough digits that the two printed numbers differ where they do.

    >>> _got_expected(2.0, 3.0), _got_expected(-2.3337512, -2.3337513)
    ('got 2, expected 3', 'got -2.3337512, expected -2.3337513')
    """
    digits = 6
    if np.isfinite(g) and np.isfinite(w) and g != w:
        digits = int(np.clip(np.ceil(np.log10(max(abs(g), abs(w)) / abs(g - w))) + 1, 6, 17))
    return f"got {g:.{digits}g}, expected {w:.{digits}g}"


def _compare_values(g: np.ndarray, w: np.ndarray, rtol: float, atol: float, *, float64_required: bool
                    ) -> tuple[bool, str]:
    """Element-wise comparison of two same-shaped arrays; the detail names NaN/inf mismatches first."""
    if w.dtype.kind in "biu" and g.dtype.kind not in "biu":
        g = g.astype(np.float64)
    if np.array_equal(g, w, equal_nan=w.dtype.kind == "f"):
        return True, "exact"
    gf, wf = g.astype(np.float64), w.astype(np.float64)
    if np.allclose(gf, wf, rtol=rtol, atol=atol, equal_nan=True):
        return True, f"allclose (max |diff| {np.nanmax(np.abs(gf - wf)):.3g})"
    n = w.size
    g_nan, w_nan = np.isnan(gf), np.isnan(wf)
    g_inf, w_inf = np.isinf(gf), np.isinf(wf)
    parts = []
    if (bad := g_nan & ~w_nan).any():
        parts.append(f"NaN where a number was expected ({_count(bad, n)})")
    if (bad := ~g_nan & w_nan).any():
        parts.append(f"a number where NaN was expected ({_count(bad, n)})")
    if (bad := g_inf & ~w_inf & ~w_nan).any():
        parts.append(f"±inf where a finite number was expected ({_count(bad, n)})")
    if (bad := ~g_inf & ~g_nan & w_inf).any():
        parts.append(f"a finite number where ±inf was expected ({_count(bad, n)})")
    both = np.isfinite(gf) & np.isfinite(wf)
    off = both & ~np.isclose(gf, wf, rtol=rtol, atol=atol)
    same_inf = g_inf & w_inf
    off |= same_inf & (np.sign(gf) != np.sign(wf))
    if off.any():
        diff = np.where(off & both, np.abs(gf - wf), 0.0)
        where = np.unravel_index(int(np.argmax(np.where(off, diff, -1.0))), w.shape) if w.ndim else ()
        at = f" at index {tuple(int(i) for i in where)}" if w.ndim else ""
        if w.ndim:
            text = (f"max |diff| {np.max(diff):.4g}{at} ({_got_expected(gf[where], wf[where])}); "
                    f"{_count(off, n)} differ")
        else:
            text = f"got {gf:.10g}, expected {wf:.10g}"
        # float32 keeps ~7 digits: relative errors of 1e-5 of the value, or of the largest value for
        # entries that cancel towards 0, are what computing in float32 leaves behind
        f32_size = 1e-5 * np.abs(wf[both]).max(initial=0.0)
        if float64_required and both[off].all() and np.all(np.abs(gf[off] - wf[off])
                                                           <= 1e-5 * np.abs(wf[off]) + f32_size + atol):
            text += (" — differences of float32 rounding size: compute in float64 throughout, "
                     "as the exercise requires")
        parts.append(text)
    return False, "; ".join(parts)


def compare(got: Any, want: Any, rtol: float, atol: float, *, names: Sequence[str] | None = None,
            exact_dtype: bool = True) -> tuple[bool, str]:
    """Compare two results (tensors, arrays, numbers, or tuples/lists/dicts of them).

    Parameters
    ----------
    got, want : Any
        The learner's result and the reference's.
    rtol, atol : float
        Tolerances for values; bit-identical results are reported "exact".
    names : sequence of str, optional
        Names of the items of a tuple result, used in messages instead of "item 0".
    exact_dtype : bool
        Where ``want`` is a tensor or array, require ``got`` to be one of the same kind with the same dtype.
        Python numbers are compared by value only, whatever their type.

    Returns
    -------
    (bool, str)
        Whether they match, and a one-line description (what differs, when they do not).

    Examples
    --------
    >>> compare(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), 0, 0)
    (False, 'NaN where a number was expected (1 of 2 values)')
    >>> compare((torch.tensor([1.0]), torch.tensor([2.0])), (torch.tensor([1], dtype=torch.uint8),
    ...         torch.tensor([2.0])), 0, 0, names=("codes", "scale"))
    (False, 'codes: dtype torch.float32 where torch.uint8 is required')
    """
    if isinstance(want, tuple | list):
        if not isinstance(got, tuple | list) or len(got) != len(want):
            what = f"{len(got)} results" if isinstance(got, tuple | list) else type(got).__name__
            named = f" ({', '.join(names)})" if names else ""
            return False, f"expected a sequence of {len(want)} results{named}; got {what}"
        labels = list(names) if names and len(names) == len(want) else [f"item {i}" for i in range(len(want))]
        outcomes = [compare(g, w, rtol, atol, exact_dtype=exact_dtype)
                    for g, w in zip(got, want, strict=True)]
        bad = [f"{label}: {detail}" for label, (ok, detail) in zip(labels, outcomes, strict=True) if not ok]
        if bad:
            return False, "; ".join(bad)
        return True, "exact" if all(detail == "exact" for _, detail in outcomes) else "allclose"
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            shown = sorted(got) if isinstance(got, dict) else repr(got)
            return False, f"expected keys {sorted(want)}; got {shown}"
        outcomes = {k: compare(got[k], want[k], rtol, atol, exact_dtype=exact_dtype) for k in want}
        bad = [f"[{k!r}]: {detail}" for k, (ok, detail) in outcomes.items() if not ok]
        if bad:
            return False, "; ".join(bad)
        return True, "exact" if all(d == "exact" for _, d in outcomes.values()) else "allclose"
    typed = isinstance(want, torch.Tensor | np.ndarray)
    if typed and exact_dtype and type(got) is not type(want) and not (
            isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor)):
        return False, f"expected a {type(want).__module__.split('.')[0]}.{type(want).__name__}; got " \
                      f"{type(got).__name__}"
    g, w = _to_numpy(got), _to_numpy(want)
    if isinstance(w, np.ndarray):
        if not isinstance(g, np.ndarray):
            return False, f"expected an array/tensor; got {type(got).__name__}"
        if g.shape != w.shape:
            return False, f"shape {g.shape} != expected {w.shape}"
        ok, detail = _compare_values(g, w, rtol, atol,
                                     float64_required=typed and _dtype_name(want).endswith("float64")
                                     and rtol < 1e-6)
        if typed and exact_dtype and got.dtype != want.dtype:
            mismatch = f"dtype {_dtype_name(got)} where {_dtype_name(want)} is required"
            return False, mismatch if ok else f"{mismatch}; {detail}"
        return ok, detail
    if got == want:
        return True, "exact"
    return False, f"got {got!r}, expected {want!r}"


# ---- inputs the learner must not modify --------------------------------------------------------------

def _same_input(before: Any, after: Any) -> bool:
    """Whether a learner's copy of an input still equals the original (NaN equals NaN)."""
    if isinstance(before, torch.Tensor):
        if not isinstance(after, torch.Tensor) or (before.dtype, before.shape) != (after.dtype, after.shape):
            return False
        if before.is_floating_point() or before.is_complex():
            return bool(((before == after) | (before.isnan() & after.isnan())).all())
        return torch.equal(before, after)
    if isinstance(before, np.ndarray):
        return (isinstance(after, np.ndarray) and (before.dtype, before.shape) == (after.dtype, after.shape)
                and np.array_equal(before, after, equal_nan=before.dtype.kind in "fc"))
    if isinstance(before, list | tuple):
        return (type(after) is type(before) and len(after) == len(before)
                and all(_same_input(b, a) for b, a in zip(before, after, strict=True)))
    if isinstance(before, dict):
        return (isinstance(after, dict) and set(after) == set(before)
                and all(_same_input(before[k], after[k]) for k in before))
    if dataclasses.is_dataclass(before) and not isinstance(before, type):
        return type(after) is type(before) and all(
            _same_input(getattr(before, f.name), getattr(after, f.name)) for f in dataclasses.fields(before))
    if isinstance(before, int | float | str | bool | complex | bytes | type(None)):
        return before == after or (before != before and after != after)  # NaN is unequal to itself
    return True  # an object we cannot compare field by field: do not accuse the learner


def _arg_names(fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> list[str]:
    """A name for every argument (positional first, then keywords), after ``fn``'s parameters if it can."""
    try:
        sig = inspect.signature(fn)
        bound = sig.bind(*args, **kwargs)
    except (TypeError, ValueError):
        return [f"argument {i + 1}" for i in range(len(args))] + list(kwargs)
    plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    names = [p for p in bound.arguments if sig.parameters[p].kind in plain][:len(args)]
    names += [f"argument {i + 1}" for i in range(len(names), len(args))]
    return names + list(kwargs)


def _modified_inputs(names: list[str], originals: tuple[tuple, dict[str, Any]],
                     copies: tuple[tuple, dict[str, Any]]) -> list[str]:
    """Names of the inputs whose learner copies no longer equal the originals."""
    before = [*originals[0], *originals[1].values()]
    after = [*copies[0], *copies[1].values()]
    return [n for n, b, a in zip(names, before, after, strict=True) if not _same_input(b, a)]


# ---- running a check ----------------------------------------------------------------------------------

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
    result_names: Sequence[str] | None = None,
    exact_dtype: bool = True,
    compare_fn: Callable[[Any, Any, Case], tuple[bool, str]] | None = None,
) -> CheckResult:
    """Run ``student_fn`` and ``reference_fn`` on every case, print a report, return a :class:`CheckResult`.

    Parameters
    ----------
    name : str
        The check's name, printed in every line of the report.
    student_fn, reference_fn : callable
        The learner's function and the reference; both get deep copies of each case's arguments, so an
        in-place edit by one cannot change what the other sees, and the learner's copies are compared with
        the originals after the call (an edit fails the case: "modified its input <name>", named after the
        reference's parameters).
    cases : sequence of Case
        At least one; seeded inputs first, then adversarial ones (zeros, constant, outlier, extremes, ties).
    rtol, atol : float
        Tolerances for "allclose"; results that are bit-identical print "exact".
    hint : str
        Printed after a failure: the most likely mistakes, briefly. White space is folded, so a hint can be
        written as an indented triple-quoted paragraph.
    verbose : bool
        Print one line per case and a summary (a "not implemented yet" line is always printed).
    result_names : sequence of str, optional
        Names of the items of a tuple result (e.g. ``("codes", "scale", "zero")``) for the messages.
    exact_dtype : bool
        Require tensor results of the reference's dtype (default); pass False only where the exercise text
        says any dtype is fine.
    compare_fn : callable, optional
        ``compare_fn(got, want, case) -> (ok, detail)`` replacing :func:`compare`, for results that need a
        tailored message (e.g. naming the bit pattern that decoded wrongly).

    Returns
    -------
    CheckResult
        ``status`` is "passed", "failed" or "not implemented" (every case raised ``NotImplementedError``).
        When the environment variable ``QCOURSE_CHECKS_STRICT`` is "1", a failure raises
        ``AssertionError`` instead of returning; "not implemented" never raises.

    Examples
    --------
    >>> import torch
    >>> res = run_check("floor_or_round", torch.floor, torch.round, [Case("halves", (torch.tensor([0.6]),))],
    ...                 hint="round to nearest, not down")
      ✗ halves: max |diff| 1 at index (0,) (got 0, expected 1); 1 of 1 values differ
    floor_or_round: 0/1 cases match the reference.
    hint: round to nearest, not down
    """
    if not callable(student_fn):
        raise TypeError(f"{name}: student_fn must be your function itself (e.g. check(my_fn)); "
                        f"got {type(student_fn).__name__}")
    hint = " ".join(hint.split())
    cases = list(cases)
    if not cases:
        raise ValueError(f"{name}: cases must hold at least one Case; a check with no cases proves nothing")
    if not all(isinstance(c, Case) for c in cases):
        kinds = sorted({type(c).__name__ for c in cases})
        raise TypeError(f"{name}: cases must be Case objects; got {kinds}")
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"{name}: rtol and atol must be >= 0; got rtol={rtol!r}, atol={atol!r}")
    if result_names is not None and (isinstance(result_names, str)
                                     or not all(isinstance(n, str) for n in result_names)):
        raise TypeError(f"{name}: result_names must be a sequence of names such as ('codes', 'scale'); "
                        f"got {result_names!r}")
    if compare_fn is not None and not callable(compare_fn):
        raise TypeError(f"{name}: compare_fn must be callable(got, want, case); "
                        f"got {type(compare_fn).__name__}")
    results: list[CaseResult] = []
    not_implemented: list[dict[str, Any]] = []
    for case in cases:
        want = reference_fn(*copy.deepcopy(case.args), **copy.deepcopy(case.kwargs))
        s_args, s_kwargs = copy.deepcopy(case.args), copy.deepcopy(case.kwargs)
        try:
            got = student_fn(*s_args, **s_kwargs)
        except NotImplementedError as exc:
            not_implemented.append(_raise_site(exc))
            results.append(CaseResult(case.label, False, NOT_IMPLEMENTED_CASE,
                                      error=_error_text(exc)))
            continue
        except Exception as exc:  # the learner's bug, reported rather than crashing the notebook
            results.append(CaseResult(case.label, False, f"raised {type(exc).__name__}: {exc}",
                                      error=_error_text(exc)))
            continue
        problems = []
        modified = _modified_inputs(_arg_names(reference_fn, case.args, case.kwargs),
                                    (case.args, case.kwargs), (s_args, s_kwargs))
        if modified:
            problems.append(f"modified its input {', '.join(modified)} (work on a copy, e.g. "
                            f"{modified[0]}.clone())")
        if compare_fn is not None:
            ok, detail = compare_fn(got, want, case)
        else:
            ok, detail = compare(got, want, rtol, atol, names=result_names, exact_dtype=exact_dtype)
        if not ok and got is None and want is not None:
            detail += " (did the function forget to `return` its result?)"
        if not ok or not problems:
            problems.append(detail)
        results.append(CaseResult(case.label, ok and not modified, "; ".join(problems)))
    if len(not_implemented) == len(cases):
        result = CheckResult(name, "not implemented", [], hint)
        print(result.report())
        _HISTORY.append({"name": name, "status": "not implemented", "raised_in": not_implemented[0],
                         "cases": [dataclasses.asdict(r) for r in results]})
        return result
    passed = all(r.ok for r in results)
    result = CheckResult(name, "passed" if passed else "failed", results, hint)
    if verbose:
        print(result.report())
    _HISTORY.append({"name": name, "status": result.status, "raised_in": None,
                     "cases": [dataclasses.asdict(r) for r in results]})
    if not passed and os.environ.get(STRICT_ENV) == "1":
        raise AssertionError(f"check {name} failed: " + "; ".join(f"{r.label}: {r.detail}" for r in results
                                                                   if not r.ok))
    return result


# ---- the mutation suite -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutant:
    """A wrong implementation a check must reject, and a fragment of the failure report pointing at it.

    ``expect`` is matched, case-insensitively, against :meth:`CheckResult.failures` (failed cases'
    labels and details): a case label naming the mistake, "modified its input", "dtype",
    "NaN where a number was expected", "NotImplementedError", ...
    """

    id: str
    fn: Callable[..., Any]
    expect: str

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise TypeError(f"Mutant id must be a non-empty str; got {self.id!r}")
        if not callable(self.fn):
            raise TypeError(f"Mutant {self.id!r}: fn must be the wrong implementation (a callable); "
                            f"got {type(self.fn).__name__}")
        if not isinstance(self.expect, str) or not self.expect.strip():
            raise ValueError(f"Mutant {self.id!r}: expect must be a non-empty fragment of the failure "
                             f"report; got {self.expect!r}")


def try_mutant(check: Callable[..., CheckResult], mutant: Mutant) -> tuple[bool, str]:
    """Run ``check`` on a mutant quietly, outside strict mode; return (rejected as expected, failures text).

    >>> import torch
    >>> def check_round(fn, verbose=True):
    ...     return run_check("round", fn, torch.round, [Case("ties", (torch.tensor([0.5, 1.5]),))],
    ...                      verbose=verbose)
    >>> try_mutant(check_round, Mutant("half-up", lambda x: torch.floor(x + 0.5), "ties"))
    (True, 'ties: max |diff| 1 at index (0,) (got 1, expected 0); 1 of 2 values differ')
    """
    strict = os.environ.pop(STRICT_ENV, None)
    n_hist = len(_HISTORY)
    try:
        result = check(mutant.fn, verbose=False)
    finally:
        del _HISTORY[n_hist:]  # the suite's runs are not the learner's history
        if strict is not None:
            os.environ[STRICT_ENV] = strict
    text = result.failures()
    return result.status == "failed" and mutant.expect.lower() in text.lower(), text
