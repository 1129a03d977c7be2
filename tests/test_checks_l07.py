"""Lesson 07 checks: the references agree with qcourse.theory, and every check rejects its mutants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qcourse import checks, theory
from qcourse.checks import l07_rate_distortion as L
from qcourse.checks._harness import try_mutant


def test_exported_from_checks():
    for name in ("check_lloyd_step", "check_distortion_rate_gap", "check_water_filling"):
        assert getattr(checks, name) is getattr(L, name)


@pytest.mark.parametrize("check, ref", [
    (L.check_lloyd_step, L.reference_lloyd_step),
    (L.check_distortion_rate_gap, L.reference_distortion_rate_gap),
    (L.check_water_filling, L.reference_water_filling),
])
def test_reference_passes(check, ref):
    assert check(ref, verbose=False).status == "passed"


@pytest.mark.parametrize("name", sorted(L.MUTANTS))
def test_every_mutant_is_rejected_with_its_reason(name):
    check = getattr(L, name)
    assert len(L.MUTANTS[name]) >= 6
    for mutant in L.MUTANTS[name]:
        rejected, text = try_mutant(check, mutant)
        assert rejected, (mutant.id, text)


def test_unfinished_exercise_reports_not_implemented(capsys):
    def todo(levels):
        raise NotImplementedError()

    assert L.check_lloyd_step(todo).status == "not implemented"
    assert "not implemented yet" in capsys.readouterr().out


def test_iterating_the_reference_step_converges_to_lloyd_max():
    levels = torch.tensor([-1.6, -0.5, 0.4, 1.4], dtype=torch.float64)
    for _ in range(300):
        levels, _ = L.reference_lloyd_step(levels)
    np.testing.assert_allclose(levels.numpy(), theory.lloyd_max(theory.gaussian(), 4).levels, atol=1e-8)


def test_gap_reference_matches_theory():
    b, gap = L.reference_distortion_rate_gap(torch.tensor([0.03455], dtype=torch.float64),
                                             torch.tensor([3.0], dtype=torch.float64), 1.0)
    assert b.item() == theory.gaussian_distortion_rate(3.0)
    assert gap.item() == pytest.approx(theory.gap_db(0.03455, 3.0), abs=1e-12)
    assert math.isclose(gap.item(), 3.45, abs_tol=0.005)
