"""Lesson-02 checks: accept correct answers, and say precisely what is wrong with a wrong one.

The catalogue of wrong implementations each check must reject lives in ``l02_rtn_hqq.MUTANTS`` and is run
by ``tests/test_checks_mutations.py``; here: correct learner-style code passes, the tie cases are real
ties (checked against NumPy, independently of the package), and the messages.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcourse.checks as checks
from qcourse.checks import l02_rtn_hqq as L


def test_checks_accept_reference_and_learner_style_code() -> None:
    assert L.check_quantize_groups(L.reference_quantize_groups, verbose=False).passed
    assert L.check_quantize_groups(L._rtn_mutant(), verbose=False).passed        # no mistake switched on
    assert L.check_shrink_lp(L.reference_shrink_lp, verbose=False).passed
    assert L.check_shrink_lp(lambda x, b, p: torch.sign(x) * (x.abs() - x.abs().pow(p - 1) / b).clamp_min(0),
                             verbose=False).passed
    assert L.check_zero_step(L.reference_zero_step, verbose=False).passed
    assert L.check_zero_step(lambda w, q, e, s: (q - (w - e) * s).mean(1, keepdim=True), verbose=False).passed
    assert L.check_gptq_column_step(L.reference_gptq_column_step, verbose=False).passed
    assert L.check_gptq_column_step(L._gptq_mutant(), verbose=False).passed


def test_rtn_tie_case_matches_numpy_half_even_and_differs_from_half_up() -> None:
    (case,) = [c for c in L._rtn_cases() if c.label.startswith("exact ties")]
    w, bits, g = case.args
    codes, scale, zero = L.reference_quantize_groups(w, bits, g)
    assert scale.tolist() == [[1.0, 1.0]]          # so w/scale and −min/scale are the halves themselves
    x = w[0].numpy().astype(np.float64)
    # group 1 (min 0, zero 0): codes are round(w) themselves; np.round is half to even
    assert codes[0, :8].tolist() == [0, 0, 2, 2, 3, 1, 2, 0] == np.round(x[:8]).tolist()
    assert np.floor(x[:8] + 0.5).tolist() == [0, 1, 2, 3, 3, 1, 2, 0]
    # group 2 (min −0.5): the zero −min/scale = 0.5 is a tie too; half to even gives 0, half up 1
    assert zero.tolist() == [[0.0, 0.0]] and np.round(0.5) == 0 and np.floor(0.5 + 0.5) == 1
    assert codes[0, 8:].tolist() == np.clip(np.round(x[8:]), 0, 3).tolist()


def test_gptq_tie_case_holds_exact_ties() -> None:
    (case,) = [c for c in L._gptq_cases() if c.label.startswith("exact ties")]
    w, i, _, scale, zero, _ = case.args
    ratio = (w[:, i] / scale).numpy()
    assert np.all(ratio - np.floor(ratio) == 0.5)
    even = np.clip(np.round(ratio) + zero.numpy(), 0, 3)
    up = np.clip(np.floor(ratio + 0.5) + zero.numpy(), 0, 3)
    assert (even != up).sum() >= 3


def test_rtn_messages_name_the_items_and_the_dtype() -> None:
    def float_codes(w: torch.Tensor, bits: int, g: int) -> tuple[torch.Tensor, ...]:
        codes, scale, zero = L.reference_quantize_groups(w, bits, g)
        return codes.float(), scale, zero

    res = L.check_quantize_groups(float_codes, verbose=False)
    assert {c.detail for c in res.cases} == {"codes: dtype torch.float32 where torch.uint8 is required"}
    res = L.check_quantize_groups(L._rtn_mutant(rnd=lambda x: torch.floor(x + 0.5)), verbose=False)
    tie = next(c for c in res.cases if c.label.startswith("exact ties"))
    assert tie.detail.startswith("codes: max |diff| 2 at index (0, 9) (got 2, expected 0); 10 of 16 values")
    assert "zero: max |diff| 1 at index (0, 1) (got 1, expected 0)" in tie.detail


def test_gptq_float32_is_told_float64_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    L.check_gptq_column_step(L._gptq_mutant(dtype=torch.float32))
    out = capsys.readouterr().out
    assert "block: dtype torch.float32 where torch.float64 is required" in out
    assert "Compute in float64 throughout" in out                # the hint
    res = L.check_gptq_column_step(L._gptq_mutant(dtype=torch.float32, back_to=torch.float64), verbose=False)
    assert "compute in float64 throughout, as the exercise requires" in res.failures()


def test_gptq_in_place_is_named() -> None:
    res = L.check_gptq_column_step(L._gptq_mutant(copy=False), verbose=False)
    assert all(c.detail == "modified its input w_block (work on a copy, e.g. w_block.clone())"
               for c in res.cases if c.label != "all-zero block")


def test_gptq_step_reference_leaves_input_alone_and_matches_gptq() -> None:
    # the check's reference is the package's inner step: GPTQ with blocksize 1 column at a time agrees
    from qcourse.methods import gptq, rtn

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    H = x.T @ x / 64
    w = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    w0, U = gptq.prepare_hessian(H, w, percdamp=0.01)
    s, z = rtn.Grid(2, scale_dtype=None).params(w0)
    cur = w0.clone()
    for i in range(8):
        before = cur.clone()
        cur, _ = L.reference_gptq_column_step(cur, i, U[i], s[:, 0], z[:, 0], 2)
        assert torch.equal(before[:, :i], cur[:, :i])
    res = gptq.gptq_quantize(w, H, rtn.Grid(2, scale_dtype=None), blocksize=8)
    assert torch.allclose(cur, res.w_q, atol=1e-12)


def test_checks_are_exported_and_report_not_implemented(capsys: pytest.CaptureFixture[str]) -> None:
    def todo(*args: object) -> None:
        raise NotImplementedError()

    for name in ("check_quantize_groups", "check_shrink_lp", "check_zero_step", "check_gptq_column_step"):
        assert name in checks.__all__
        assert getattr(checks, name)(todo).status == "not implemented"
    assert "not implemented yet" in capsys.readouterr().out


def test_failing_check_prints_a_hint(capsys: pytest.CaptureFixture[str]) -> None:
    L.check_shrink_lp(lambda x, b, p: x)
    out = capsys.readouterr().out
    assert "✗" in out and "hint:" in out and "p − 1" in out


def _numpy_rtn(w: np.ndarray, bits: int, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group RTN written in NumPy float32 from the exercise text, independent of the package."""
    grp = w.astype(np.float32).reshape(-1, g)
    maxq = np.float32(2**bits - 1)
    lo, hi = grp.min(1, keepdims=True), grp.max(1, keepdims=True)
    flat = hi == lo
    lo, hi = np.where(flat, np.minimum(lo, 0), lo), np.where(flat, np.maximum(hi, 0), hi)
    scale = np.where(hi == lo, np.float32(1), (hi - lo) / maxq).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, maxq)          # np.round: half to even
    codes = np.clip(np.round(grp / scale) + zero, 0, maxq)
    rows = w.shape[0]
    return codes.astype(np.uint8).reshape(w.shape), scale.reshape(rows, -1), zero.reshape(rows, -1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from([1, 2, 5, 8]), st.integers(1, 8),
       st.data())
def test_rtn_reference_matches_numpy_from_the_exercise_text(rows: int, groups: int, g: int, bits: int,
                                                             data: st.DataObject) -> None:
    values = data.draw(st.lists(st.sampled_from([0.0, 0.5, -0.5, 1.5, 2.5, -3.0, 7.0])
                                | st.floats(-1e3, 1e3, width=32), min_size=rows * groups * g,
                                max_size=rows * groups * g))
    w = np.array(values, dtype=np.float32).reshape(rows, groups * g)
    codes, scale, zero = L.reference_quantize_groups(torch.from_numpy(w), bits, g)
    n_codes, n_scale, n_zero = _numpy_rtn(w, bits, g)
    assert np.array_equal(codes.numpy(), n_codes)
    assert np.array_equal(scale.numpy(), n_scale) and np.array_equal(zero.numpy(), n_zero)


# ---- the exercises that test understanding ---------------------------------------------------------------

def _cholesky_gptq(w, h, scale, zero, bits):
    """GPTQ's loop as the lesson teaches it: rows of the upper Cholesky factor of H⁻¹."""
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    w = w.clone()
    q = torch.empty_like(w)
    for i in range(w.shape[1]):
        q[:, i] = scale * ((torch.round(w[:, i] / scale) + zero).clamp(0, 2**bits - 1) - zero)
        err = (w[:, i] - q[:, i]) / u[i, i]
        w[:, i:] -= err[:, None] * u[None, i, i:]
    return q


def test_new_checks_accept_their_references_and_learner_style_code() -> None:
    assert L.check_lstsq_zero(L.reference_lstsq_zero, verbose=False).passed
    assert L.check_lstsq_zero(lambda w, q, s: (q - w * s).mean(-1, keepdim=True), verbose=False).passed
    assert L.check_beta_star(L.reference_beta_star, verbose=False).passed
    assert L.check_beta_star(L._beta_mutant(), verbose=False).passed
    assert L.check_gptq_loop(L.reference_gptq_loop, verbose=False).passed
    assert L.check_gptq_loop(_cholesky_gptq, verbose=False).passed


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), cols=st.integers(1, 12), bits=st.integers(2, 4))
def test_naive_obs_equals_the_cholesky_form(seed, cols, bits) -> None:
    # the claim the GPTQ exercise rests on: row i of chol(H⁻¹) is the OBS update over the remaining columns
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4 * cols + 4, cols, generator=g, dtype=torch.float64)
    h = x.T @ x / len(x) + 0.1 * torch.eye(cols, dtype=torch.float64)
    w = torch.randn(5, cols, generator=g, dtype=torch.float64)
    scale, zero = torch.full((5,), 0.3, dtype=torch.float64), torch.full((5,), 2.0, dtype=torch.float64)
    ref = L.reference_gptq_loop(w, h, scale, zero, bits)
    assert torch.allclose(ref, _cholesky_gptq(w, h, scale, zero, bits), rtol=1e-9, atol=1e-9)


def test_lstsq_zero_is_hqq_zero_step_without_shrinkage_and_beta_star_is_where_it_starts() -> None:
    from qcourse import hqq_shrinkage
    from qcourse.methods import hqq

    for case in L._lstsq_cases():
        w, q, s = case.args
        assert torch.allclose(L.reference_lstsq_zero(w, q, s), hqq.zero_step(w, q, torch.zeros_like(w), s))
    w, bits, g, p = L._beta_cases()[0].args
    b = L.reference_beta_star(w, bits, g, p)
    groups = w.reshape(-1, g)
    s, z = hqq.init_minmax(groups, bits)
    assert hqq_shrinkage.trace(groups, s, z, bits, p=p, beta=0.99 * b, iters=0).active[0] == 0
    assert hqq_shrinkage.trace(groups, s, z, bits, p=p, beta=1.01 * b, iters=0).active[0] > 0
