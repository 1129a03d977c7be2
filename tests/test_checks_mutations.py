"""The mutation suite: every exercise check rejects the wrong implementations students write.

Each lesson module in ``qcourse.checks._LESSON_MODULES`` that exists defines ``MUTANTS``: for every
``check_*`` in its ``__all__``, at least six wrong implementations (half-up rounding, in-place edits, wrong
dtypes, off-by-one level counts, floor for round, wrong zero-point sign, missing clamp, NaN, partial
implementations, ...), each with a fragment of the failure report that points at its mistake. This file
discovers them all: a new lesson's checks are covered as soon as its module defines ``MUTANTS``, and a
check without six mutants fails here.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from qcourse import checks
from qcourse.checks import _harness
from qcourse.checks._harness import STRICT_ENV, Mutant, try_mutant

MIN_MUTANTS = 6


def _lesson_modules() -> list[ModuleType]:
    mods = []
    for name in checks._LESSON_MODULES:
        try:
            mods.append(importlib.import_module(f"qcourse.checks.{name}"))
        except ModuleNotFoundError as exc:  # a lesson whose checks are not written yet
            if exc.name != f"qcourse.checks.{name}":
                raise
    return mods


MODULES = _lesson_modules()
CHECKS = [(mod, name) for mod in MODULES for name in mod.__all__ if name.startswith("check_")]
MUTANTS = [(mod, name, m) for mod, name in CHECKS for m in getattr(mod, "MUTANTS", {}).get(name, [])]


def _short(mod: ModuleType) -> str:
    return mod.__name__.rsplit(".", 1)[-1]


@pytest.fixture(autouse=True)
def _lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STRICT_ENV, raising=False)


def test_the_suite_found_the_lessons_checks() -> None:
    names = {name for _, name in CHECKS}
    assert {"check_decode_bits", "check_round_to_grid", "check_bits_per_weight_block",
            "check_quantize_groups", "check_shrink_lp", "check_zero_step", "check_gptq_column_step"} <= names


@pytest.mark.parametrize(("mod", "name"), CHECKS, ids=[f"{_short(m)}.{n}" for m, n in CHECKS])
def test_every_check_has_enough_distinct_mutants(mod: ModuleType, name: str) -> None:
    mutants = getattr(mod, "MUTANTS", {}).get(name, [])
    assert len(mutants) >= MIN_MUTANTS, (
        f"{mod.__name__}.MUTANTS[{name!r}] holds {len(mutants)} mutants; every check needs at least "
        f"{MIN_MUTANTS} (see the docstring of qcourse.checks._harness)")
    assert all(isinstance(m, Mutant) and m.expect for m in mutants)
    assert len({m.id for m in mutants}) == len(mutants), "mutant ids must be unique within a check"


@pytest.mark.parametrize("mod", MODULES, ids=_short)
def test_mutants_belong_to_real_checks(mod: ModuleType) -> None:
    assert set(getattr(mod, "MUTANTS", {})) <= {n for n in mod.__all__ if n.startswith("check_")}


@pytest.mark.parametrize(("mod", "name"), CHECKS, ids=[f"{_short(m)}.{n}" for m, n in CHECKS])
def test_reference_passes(mod: ModuleType, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    reference = getattr(mod, "reference_" + name.removeprefix("check_"))
    result = getattr(mod, name)(reference)
    assert result.passed, result.report()
    assert "cases match the reference" in capsys.readouterr().out


@pytest.mark.parametrize(("mod", "name", "mutant"), MUTANTS,
                         ids=[f"{_short(m)}.{n}.{mu.id}" for m, n, mu in MUTANTS])
def test_mutant_is_rejected_with_a_pointed_message(mod: ModuleType, name: str, mutant: Mutant) -> None:
    rejected, report = try_mutant(getattr(mod, name), mutant)
    assert rejected, (f"{name} on mutant {mutant.id!r}: expected a failure mentioning {mutant.expect!r}; "
                      f"got\n{report}")


def test_mutants_run_quietly_and_do_not_enter_the_learners_history(capsys: pytest.CaptureFixture[str],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_ENV, "1")   # a strict session must not turn a rejected mutant into an error
    _harness.clear_history()
    mod, name, mutant = MUTANTS[0]
    assert try_mutant(getattr(mod, name), mutant)[0]
    assert _harness.history() == [] and capsys.readouterr().out == ""
    assert os.environ[STRICT_ENV] == "1"
