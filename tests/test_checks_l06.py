"""Lesson-06 checks: accept correct learner-style answers; their cases are what their labels claim.

The wrong implementations each check must reject live in ``l06_binary.MUTANTS`` and are run by
``tests/test_checks_mutations.py``.
"""

from __future__ import annotations

import numpy as np
import torch

import qcourse.checks as checks
from qcourse import xnor
from qcourse.checks import l06_binary as L


def test_checks_accept_reference_and_learner_style_code() -> None:
    assert L.check_binarize_xnor(L.reference_binarize_xnor, verbose=False).passed
    assert L.check_binarize_xnor(
        lambda w: ((2 * (w >= 0) - 1).to(torch.int8), w.abs().sum(1, keepdim=True) / w.shape[1]),
        verbose=False).passed
    assert L.check_sign_ste(L.reference_sign_ste, verbose=False).passed

    class Sign(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * (x.abs() <= 1)

    assert L.check_sign_ste(Sign.apply, verbose=False).passed
    assert L.check_xnor_dot(L.reference_xnor_dot, verbose=False).passed
    assert L.check_xnor_dot(lambda a, b, n: int(xnor.dot_xnor(a, b, n)), verbose=False).passed
    assert checks.check_xnor_dot is L.check_xnor_dot


def test_dot_cases_are_bit_exact_integer_dot_products() -> None:
    for case in L._dot_cases():
        a, b, n = case.args
        va, vb = xnor.unpack_signs(a, n).astype(np.int64), xnor.unpack_signs(b, n).astype(np.int64)
        assert L.reference_xnor_dot(a, b, n) == int(va @ vb), case.label
    tails = [c for c in L._dot_cases() if "zero tail" in c.label]
    assert tails and tails[0].args[2] % 64


def test_ste_boundary_case_holds_the_boundary_and_zero() -> None:
    (case,) = [c for c in L._ste_cases() if "boundary" in c.label]
    x = case.args[0]
    assert {-1.0, 1.0, 0.0} <= set(x.tolist())
    y, g = L._forward_backward(L.reference_sign_ste)(*case.args)
    assert y[x == 0].tolist() == [1.0, 1.0] and (g[x.abs() == 1] != 0).all()


def test_unfinished_exercise_reports_not_implemented() -> None:
    def todo(*args):
        raise NotImplementedError()
    for check in (L.check_binarize_xnor, L.check_sign_ste, L.check_xnor_dot):
        assert check(todo, verbose=False).status == "not implemented"
