"""Lesson-08 checks: accept correct learner-style answers; their cases are what their labels claim.

The wrong implementations each check must reject live in ``l08_kernels.MUTANTS`` and are run by
``tests/test_checks_mutations.py``.
"""

from __future__ import annotations

import numpy as np
import torch

import qcourse.checks as checks
from qcourse import packing, xnor
from qcourse.checks import l08_kernels as L
from qcourse.kernels import cpu


def _unpack_loop(packed: torch.Tensor, n: int) -> torch.Tensor:
    out = torch.empty(n, dtype=torch.uint8)
    for i in range(n):
        out[i] = (int(packed[i // 4]) >> (2 * (i % 4))) & 0b11
    return out


def _lut_learner(x: torch.Tensor, packed: torch.Tensor, n_out: int) -> torch.Tensor:
    k = x.numel()
    nib = torch.arange(16)
    table = ((nib & 3) - 1).float()[None] * x.reshape(-1, 2)[:, :1] + \
        ((nib >> 2) - 1).float()[None] * x.reshape(-1, 2)[:, 1:]
    rows = packed.reshape(n_out, k // 4).long()
    j = torch.arange(k // 4)
    return table[2 * j, rows & 15].sum(1) + table[2 * j + 1, rows >> 4].sum(1)


def test_checks_accept_reference_and_learner_style_code() -> None:
    assert L.check_unpack_2bit(L.reference_unpack_2bit, verbose=False).passed
    assert L.check_unpack_2bit(_unpack_loop, verbose=False).passed
    assert L.check_ternary_lut_gemv(L.reference_ternary_lut_gemv, verbose=False).passed
    assert L.check_ternary_lut_gemv(_lut_learner, verbose=False).passed
    assert L.check_binary_gemv(L.reference_binary_gemv, verbose=False).passed
    assert L.check_binary_gemv(
        lambda w, x, n: np.array([xnor.dot_xnor(r, x, n) for r in w], dtype=np.int64), verbose=False).passed
    assert checks.check_binary_gemv is L.check_binary_gemv


def test_lut_reference_equals_the_numba_lut_kernel() -> None:
    for case in L._lut_cases():
        x, packed, n = case.args
        want = L.reference_ternary_lut_gemv(x, packed, n)
        if cpu.AVAILABLE:
            got = cpu.gemm_ternary_lut(x, packed, (n, x.numel()), 1.0)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3 * float(x.abs().max()))


def test_case_labels_hold() -> None:
    cases = {c.label: c.args for c in L._unpack_cases()}
    packed, n = next(v for k, v in cases.items() if "not a multiple of 4" in k)
    assert n % 4 and packed.numel() * 4 > n
    packed, _ = next(v for k, v in cases.items() if "every code 3" in k)
    assert set(packed.tolist()) == {0xFF}
    lut = {c.label: c.args for c in L._lut_cases()}
    x, packed, n = next(v for k, v in lut.items() if "all +1" in k)
    y = L.reference_ternary_lut_gemv(x, packed, n)
    torch.testing.assert_close(y, torch.stack([x.sum(), -x.sum(), torch.zeros(())]).float())
    codes = [packing.unpack(p, 2, rows * x.numel()) for x, p, rows in lut.values()]
    assert all(int(c.max()) <= 2 for c in codes)  # trits only: code 3 never appears
    binc = {c.label: c.args for c in L._bin_cases()}
    w, x, n = next(v for k, v in binc.items() if "rows equal" in k)
    assert L.reference_binary_gemv(w, x, n).tolist() == [n, -n]


def test_binary_reference_is_the_integer_product() -> None:
    for case in L._bin_cases():
        w, x, n = case.args
        want = xnor.unpack_signs(w, n).astype(np.int64) @ xnor.unpack_signs(x, n).astype(np.int64)
        got = L.reference_binary_gemv(w, x, n)
        assert got.dtype == np.int64 and got.tolist() == want.tolist(), case.label


def test_unfinished_exercise_reports_not_implemented() -> None:
    def todo(*args):
        raise NotImplementedError()
    for check in (L.check_unpack_2bit, L.check_ternary_lut_gemv, L.check_binary_gemv):
        assert check(todo, verbose=False).status == "not implemented"
