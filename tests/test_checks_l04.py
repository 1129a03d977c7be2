"""Lesson-04 checks: accept correct answers written the way a learner would, and explain wrong ones.

The catalogue of wrong implementations each check must reject is ``l04_quip.MUTANTS``, run by
``tests/test_checks_mutations.py``; here: learner-style code passes, the adversarial cases are what their
labels say, and the messages.
"""

from __future__ import annotations

import math

import torch

import qcourse.checks as checks
from qcourse import lattice
from qcourse.checks import l04_quip as L


def _learner_fwht(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    y = x.reshape(-1, n).clone()
    h = 1
    while h < n:
        for start in range(0, n, 2 * h):
            a = y[:, start:start + h].clone()
            b = y[:, start + h:start + 2 * h].clone()
            y[:, start:start + h], y[:, start + h:start + 2 * h] = a + b, a - b
        h *= 2
    return (y / math.sqrt(n)).reshape(x.shape)


def _learner_e8(x: torch.Tensor) -> torch.Tensor:
    def d8(v: torch.Tensor) -> torch.Tensor:
        f = torch.round(v)
        out = f.clone()
        for r in range(f.reshape(-1, 8).shape[0]):
            fr, vr = out.reshape(-1, 8)[r], v.reshape(-1, 8)[r]
            if int(fr.sum()) % 2:
                k = int((vr - fr).abs().argmax())
                fr[k] += 1.0 if vr[k] > fr[k] else -1.0
        return out
    a, b = d8(x), d8(x - 0.5) + 0.5
    closer = ((x - a) ** 2).sum(-1, keepdim=True) <= ((x - b) ** 2).sum(-1, keepdim=True)
    return torch.where(closer, a, b)


def _learner_step(w_block, i, u_rows, quantizer):
    d = quantizer.dim
    _, q = quantizer.quantize(w_block[:, i:i + d])
    delta = w_block[:, i:i + d] - q
    err = torch.linalg.solve_triangular(u_rows[:, i:i + d], delta, upper=True, left=False)
    out = w_block.clone()
    out[:, i:] = out[:, i:] - err @ u_rows[:, i:]
    return out, err


def test_checks_accept_reference_and_learner_style_code() -> None:
    assert L.check_fwht(L.reference_fwht, verbose=False).passed
    assert L.check_fwht(_learner_fwht, verbose=False).passed
    assert L.check_nearest_e8(L.reference_nearest_e8, verbose=False).passed
    assert L.check_nearest_e8(_learner_e8, verbose=False).passed
    assert L.check_ldlq_block_step(L.reference_ldlq_block_step, verbose=False).passed
    assert L.check_ldlq_block_step(_learner_step, verbose=False).passed


def test_checks_are_exported() -> None:
    for name in ("check_fwht", "check_nearest_e8", "check_ldlq_block_step"):
        assert getattr(checks, name) is getattr(L, name)


def test_parity_case_needs_the_fix_in_both_directions() -> None:
    (case,) = [c for c in L._e8_cases() if c.label.startswith("odd rounded sum")]
    (x,) = case.args
    f = torch.round(x)
    assert (f.sum(1) % 2 == 1).all()                             # every row has an odd rounded sum
    fixed = L.reference_nearest_e8(x)
    moves = (fixed - f).sum(1)
    assert set(moves.tolist()) >= {1.0, -1.0}                   # up for some rows, down for another
    assert torch.equal(fixed, lattice.nearest_e8(x))


def test_coset_cases_are_won_by_the_named_coset() -> None:
    cases = {c.label: c.args[0] for c in L._e8_cases()}
    near_int = L.reference_nearest_e8(cases["near D8 points (integer coset wins)"])
    near_half = L.reference_nearest_e8(cases["near D8 + ½ points (half-integer coset wins)"])
    assert torch.equal(near_int, torch.round(near_int))
    assert torch.equal(near_half - 0.5, torch.round(near_half - 0.5))


def test_ldlq_cases_have_upper_triangular_diagonal_blocks() -> None:
    for case in L._ldlq_cases():
        _, i, u_rows, quantizer = case.args
        d = quantizer.dim
        u_bb = u_rows[:, i:i + d]
        assert torch.equal(u_bb, torch.triu(u_bb)) and (torch.diagonal(u_bb) > 0).all(), case.label


def test_not_implemented_and_messages() -> None:
    def todo(*args):
        raise NotImplementedError

    assert L.check_fwht(todo, verbose=False).status == "not implemented"
    res = L.check_fwht(lambda x: L.reference_fwht(x) * math.sqrt(x.shape[-1]), verbose=False)
    assert not res.passed and "seeded batch" in res.failures()
    assert "1/√n" in res.hint
    res = L.check_nearest_e8(lambda x: torch.round(x), verbose=False)
    assert "odd rounded sum" in res.failures()
