"""qcourse.hqq_shrinkage: the re-run solver equals HQQ's, the threshold and β* are exact, the least-squares
zero is HQQ's step at W_e = 0, and prox_lp is the true proximal operator."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import hqq_shrinkage as S
from qcourse.methods import hqq


def _groups(seed: int, scale: float, shape=(48, 64)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).pow(3) * scale        # heavy tails


@pytest.mark.parametrize("bits, scale", [(2, 0.02), (2, 1.0), (3, 3.0), (4, 1.0)])
def test_trace_matches_optimize_history(bits, scale):
    w = _groups(bits, scale)
    s, z = hqq.init_minmax(w, bits)
    ref = hqq.optimize(w, s, z, bits)
    t = S.trace(w, s, z, bits)
    assert t.stop == len(ref.history) - 1
    assert torch.allclose(torch.tensor(t.errors[: t.stop + 1]), torch.tensor(ref.history), rtol=1e-5)
    assert len(t.active) == len(t.errors) == 21


def test_active_fraction_counts_nonzero_shrunk_errors():
    w = _groups(0, 1.0)
    s, z = hqq.init_minmax(w, 2)
    t = S.trace(w, s, z, 2, iters=0)
    e = w - (torch.round(w * s + z).clamp(0, 3) - z) / s
    n = e.numel()
    assert t.active[0] == int((hqq.shrink_lp(e, 10.0, 0.7) != 0).sum()) / n
    assert t.active[0] == int((e.abs() > S.threshold(10.0, 0.7)).sum()) / n
    assert t.active_groups.tolist() == (e.abs() > S.threshold(10.0, 0.7)).any(1).tolist()


@settings(max_examples=60, deadline=None)
@given(x=st.floats(1e-4, 10.0), beta=st.floats(0.5, 1e4), p=st.floats(0.1, 1.0))
def test_threshold_is_where_shrinkage_starts(x, beta, p):
    tau = S.threshold(beta, p)
    if abs(x - tau) > 1e-6 * tau:
        got = hqq.shrink_lp(torch.tensor([x], dtype=torch.float64), beta, p).item()
        assert (got != 0) == (x > tau)


def test_beta_star_is_where_the_first_iteration_starts_to_shrink():
    w = _groups(5, 1.0)
    b = S.beta_star(w, 2)
    s, z = hqq.init_minmax(w, 2)
    below = S.trace(w, s, z, 2, beta=0.99 * b, iters=0).active[0]
    above = S.trace(w, s, z, 2, beta=1.01 * b, iters=0).active[0]
    assert below == 0 < above


def test_lstsq_zero_is_hqq_step_without_shrinkage_and_the_minimiser():
    w = _groups(1, 0.05)
    s, z = hqq.init_minmax(w, 3)
    q = torch.round(w * s + z).clamp(0, 7)
    z_ls = S.lstsq_zero(w, q, s)
    assert torch.allclose(z_ls, hqq.zero_step(w, q, torch.zeros_like(w), s))

    def sse(zz):
        return ((w - (q - zz) / s) ** 2).sum(1)

    for d in (-1e-2, 1e-2):
        assert (sse(z_ls) <= sse(z_ls + d)).all()


def test_prox_lp_is_the_proximal_operator():
    x = torch.linspace(-1.0, 1.0, 81, dtype=torch.float64)
    assert torch.allclose(S.prox_lp(x, 10.0, 1.0), hqq.shrink_lp(x, 10.0, 1.0), atol=1e-3)
    exact, gst = S.prox_lp(x, 10.0, 0.7), hqq.shrink_lp(x, 10.0, 0.7)

    def cost(u):
        return u.abs().pow(0.7) + 5.0 * (u - x) ** 2

    assert (cost(exact) <= cost(gst) + 1e-9).all()
    assert (cost(exact) < cost(gst) - 1e-6).any()        # not the same operator at p < 1


@pytest.mark.parametrize("call, match", [
    (lambda: S.threshold(0.0, 0.7), "beta"),
    (lambda: S.threshold(10.0, 1.5), "p"),
    (lambda: S.trace(torch.ones(2, 4), torch.ones(2, 1), torch.zeros(2, 1), bits=9), "bits"),
    (lambda: S.prox_lp(torch.ones(2), -1.0), "beta"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
