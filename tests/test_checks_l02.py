"""Each lesson-02 check accepts correct answers and rejects the classic mistakes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import qcourse.checks as checks
from qcourse.checks import l02_rtn_hqq as L

# ---- a learner-style group RTN, with one switch per classic mistake ------------------------------------

def learner_rtn(w: torch.Tensor, bits: int, group_size: int, levels_off: int = 0, rounding: str = "round",
                zero_sign: int = 1, clamp: bool = True, round_zero: bool = True, degenerate: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    out, n = w.shape
    g = w.float().reshape(-1, group_size)
    maxq = 2**bits - 1 + levels_off
    lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
    if degenerate:
        flat = hi == lo
        lo = torch.where(flat, lo.clamp(max=0), lo)
        hi = torch.where(flat, hi.clamp(min=0), hi)
    rng = hi - lo
    scale = torch.where(rng == 0, torch.ones_like(rng), rng / maxq)
    rnd = torch.round if rounding == "round" else torch.floor
    zero = rnd(-zero_sign * lo / scale) if round_zero else -lo / scale
    codes = rnd(g / scale) + zero
    if clamp:
        zero = zero.clamp(0, maxq)
        codes = (rnd(g / scale) + zero).clamp(0, maxq)
    return codes.to(torch.uint8).reshape(out, n), scale.reshape(out, -1), zero.reshape(out, -1)


def test_quantize_groups_accepts_reference_and_learner_code() -> None:
    assert L.check_quantize_groups(L.reference_quantize_groups, verbose=False).passed
    assert L.check_quantize_groups(learner_rtn, verbose=False).passed


@pytest.mark.parametrize("wrong", [
    lambda w, b, g: learner_rtn(w, b, g, levels_off=1),     # 2^b steps instead of 2^b − 1
    lambda w, b, g: learner_rtn(w, b, g, rounding="floor"),  # floor instead of round
    lambda w, b, g: learner_rtn(w, b, g, zero_sign=-1),     # zero = round(+min/scale)
    lambda w, b, g: learner_rtn(w, b, g, clamp=False),      # missing clamp
    lambda w, b, g: learner_rtn(w, b, g, round_zero=False),  # float zero, not an integer
    lambda w, b, g: learner_rtn(w, b, g, degenerate=False),  # constant groups not widened to 0
], ids=["levels+1", "floor", "zero-sign", "no-clamp", "float-zero", "no-degenerate"])
def test_quantize_groups_rejects_known_mistakes(wrong: Callable[..., tuple[torch.Tensor, ...]]) -> None:
    assert L.check_quantize_groups(wrong, verbose=False).status == "failed"


# ---- shrink_lp ------------------------------------------------------------------------------------------

def learner_shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    a = x.abs()
    return torch.sign(x) * (a - a.pow(p - 1) / beta).clamp_min(0.0)


def test_shrink_accepts_reference_and_learner_code() -> None:
    assert L.check_shrink_lp(L.reference_shrink_lp, verbose=False).passed
    assert L.check_shrink_lp(learner_shrink, verbose=False).passed


@pytest.mark.parametrize("wrong", [
    lambda x, b, p: torch.sign(x) * (x.abs() - x.abs().pow(p) / b).clamp_min(0),        # exponent p
    lambda x, b, p: torch.sign(x) * (x.abs() - x.abs().pow(p - 1) / b),                 # no clamp at 0
    lambda x, b, p: torch.sign(x) * (x.abs() - x.abs().pow(p - 1) * b).clamp_min(0),    # times β
    lambda x, b, p: torch.sign(x) * (x.abs() - 1.0 / b).clamp_min(0),                   # always p = 1
    lambda x, b, p: (x - x.pow(p - 1) / b).clamp_min(0),                                # no |x|, no sign
], ids=["exponent-p", "no-clamp", "times-beta", "soft-threshold-only", "no-abs"])
def test_shrink_rejects_known_mistakes(wrong: Callable[[torch.Tensor, float, float], torch.Tensor]) -> None:
    assert L.check_shrink_lp(wrong, verbose=False).status == "failed"


# ---- zero_step ------------------------------------------------------------------------------------------

def test_zero_step_accepts_reference_and_learner_code() -> None:
    assert L.check_zero_step(L.reference_zero_step, verbose=False).passed
    assert L.check_zero_step(lambda w, q, e, s: (q - (w - e) * s).mean(1, keepdim=True), verbose=False).passed


@pytest.mark.parametrize("wrong", [
    lambda w, q, e, s: (q - (w + e) * s).mean(1, keepdim=True),    # wrong sign of W_e
    lambda w, q, e, s: (q - w * s).mean(1, keepdim=True),          # forgets W_e
    lambda w, q, e, s: (q - (w - e) / s).mean(1, keepdim=True),    # divides by the inverse scale
    lambda w, q, e, s: ((w - e) * s - q).mean(1, keepdim=True),    # zero-point sign flipped
    lambda w, q, e, s: (q - (w - e) * s).mean(0, keepdim=True).T[: len(w)],  # mean over the wrong axis
], ids=["we-sign", "no-we", "divide-scale", "zero-sign", "wrong-axis"])
def test_zero_step_rejects_known_mistakes(wrong: Callable[..., torch.Tensor]) -> None:
    assert L.check_zero_step(wrong, verbose=False).status == "failed"


# ---- gptq_column_step -----------------------------------------------------------------------------------

def learner_gptq(w: torch.Tensor, i: int, u: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                 divide: bool = True, sign: int = 1, include_i: bool = True, rounding: str = "round",
                 clamp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    rnd = torch.round if rounding == "round" else torch.floor
    c = rnd(w[:, i] / scale) + zero
    if clamp:
        c = c.clamp(0, 2**bits - 1)
    q = scale * (c - zero)
    err = (w[:, i] - q) / (u[i] if divide else 1.0)
    out = w.clone()
    start = i if include_i else i + 1
    out[:, start:] -= sign * err[:, None] * u[None, start:]
    return out, err


def test_gptq_step_accepts_reference_and_learner_code() -> None:
    assert L.check_gptq_column_step(L.reference_gptq_column_step, verbose=False).passed
    assert L.check_gptq_column_step(learner_gptq, verbose=False).passed


@pytest.mark.parametrize("wrong", [
    lambda *a: learner_gptq(*a, divide=False),       # forgets to divide by U_ii
    lambda *a: learner_gptq(*a, sign=-1),            # adds the error instead of subtracting
    lambda *a: learner_gptq(*a, include_i=False),    # column i is left unquantized
    lambda *a: learner_gptq(*a, rounding="floor"),   # floor instead of round
    lambda *a: learner_gptq(*a, clamp=False),        # missing clamp
], ids=["no-divide", "wrong-sign", "skip-column-i", "floor", "no-clamp"])
def test_gptq_step_rejects_known_mistakes(wrong: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert L.check_gptq_column_step(wrong, verbose=False).status == "failed"


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


# ---- common behaviour -----------------------------------------------------------------------------------

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
