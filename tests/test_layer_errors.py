"""qcourse.layer_errors: the breakdown against brute-force sums."""
from __future__ import annotations

import pytest
import torch

from qcourse.layer_errors import error_breakdown


def test_breakdown_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 16, generator=g)
    w_hat = w + 0.1 * torch.randn(5, 16, generator=g)
    x = torch.randn(40, 16, generator=g)
    h = x.T @ x / 40
    res = error_breakdown(w, w_hat, h, 8)
    d = (w - w_hat).double()
    out = sum(float(d[r] @ h.double() @ d[r]) for r in range(5)) / sum(
        float(w[r].double() @ h.double() @ w[r].double()) for r in range(5))
    assert res["output"] == pytest.approx(out, rel=1e-9)
    weighted = ext = 0.0
    for r in range(5):
        for k in range(2):
            cols = range(8 * k, 8 * k + 8)
            hi = max(cols, key=lambda j: w[r, j])
            lo = min(cols, key=lambda j: w[r, j])
            for j in cols:
                term = float(d[r, j]) ** 2 * float(h[j, j])
                weighted += term
                ext += term if j in (hi, lo) else 0.0
    assert res["weighted"] == pytest.approx(weighted, rel=1e-9)
    assert res["extremes"] == pytest.approx(ext, rel=1e-9)
    assert res["extreme_share"] == pytest.approx(ext / weighted, rel=1e-9)


@pytest.mark.parametrize("args, exc, match", [
    ((torch.ones(2, 4), torch.ones(2, 4), torch.eye(4), 3), ValueError, "group_size"),
    ((torch.ones(2, 4), torch.ones(2, 5), torch.eye(4), 2), ValueError, "w_hat"),
    ((torch.ones(2, 4), torch.ones(2, 4), torch.eye(3), 2), ValueError, "hessian"),
    (([[1.0]], torch.ones(1, 1), torch.eye(1), 1), TypeError, "w must"),
])
def test_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        error_breakdown(*args)
