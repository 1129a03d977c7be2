"""k-means: Lloyd steps against brute force, monotone inertia, weights, empty clusters, seeding, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcourse.kmeans import assign, inertia, kmeans, kmeans_plus_plus, update_centroids

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n: int, d: int, k: int, seed: int, spread: float = 4.0, noise: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * spread
    return centers[torch.arange(n) % k] + noise * torch.randn(n, d, generator=g)


def test_assign_matches_brute_force() -> None:
    x, c = _blobs(300, 5, 7, 0), _blobs(7, 5, 7, 1)
    labels, d2 = assign(x, c)
    brute = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    assert torch.equal(labels, brute.argmin(1))
    assert torch.allclose(d2, brute.min(1).values, atol=1e-4)


def test_one_lloyd_step_by_hand() -> None:
    # one iteration from given centroids = brute-force assignment then per-cluster means
    x = _blobs(200, 3, 4, 2).double()
    c0 = x[:4].clone()
    res = kmeans(x, 4, init=c0, n_iter=1)
    lab0 = ((x[:, None] - c0[None]) ** 2).sum(-1).argmin(1)
    means = torch.stack([x[lab0 == j].mean(0) for j in range(4)])
    assert torch.allclose(res.centroids, means, atol=1e-12)
    assert torch.equal(res.labels, ((x[:, None] - means[None]) ** 2).sum(-1).argmin(1))


@given(n=st.integers(10, 80), d=st.integers(1, 4), k=st.integers(1, 8), seed=st.integers(0, 10**6))
def test_inertia_never_increases(n: int, d: int, k: int, seed: int) -> None:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    k = min(k, n)
    res = kmeans(x, k, n_iter=20, seed=seed)
    h = torch.tensor(res.history)
    assert (h[1:] <= h[:-1] * (1 + 1e-9) + 1e-12).all(), res.history
    assert res.inertia == pytest.approx(inertia(x, res.centroids, res.labels), rel=1e-9, abs=1e-12)
    # labels are the nearest centroids of the returned centroids
    assert torch.equal(res.labels, assign(x, res.centroids)[0])


def test_weights_equal_repetition() -> None:
    # an integer weight is the same as repeating the point that many times
    x = _blobs(60, 2, 3, 3).double()
    w = torch.randint(1, 4, (60,), generator=torch.Generator().manual_seed(0)).double()
    rep = x.repeat_interleave(w.long(), dim=0)
    c0 = x[:3].clone()
    a = kmeans(x, 3, weights=w, init=c0, n_iter=30)
    b = kmeans(rep, 3, init=c0, n_iter=30)
    assert torch.allclose(a.centroids, b.centroids, atol=1e-10)
    assert a.inertia == pytest.approx(b.inertia, rel=1e-10)


def test_weighted_update() -> None:
    x, w = torch.tensor([[0.0], [4.0]]), torch.tensor([3.0, 1.0])
    c, mass = update_centroids(x, torch.tensor([0, 0]), 1, w)
    assert c.item() == 1.0 and mass.item() == 4.0


def test_empty_cluster_is_relocated() -> None:
    # a centroid far from all data owns no point; it must be moved onto the worst-served point
    x = torch.tensor([[0.0], [0.1], [10.0], [10.2], [30.0]])
    res = kmeans(x, 3, init=torch.tensor([[0.0], [10.0], [1000.0]]), n_iter=10)
    assert res.labels.bincount(minlength=3).min() > 0
    assert res.inertia < 0.1


def test_kmeans_plus_plus_is_seeded_and_spreads() -> None:
    x = _blobs(500, 2, 5, 4, spread=50, noise=0.01)
    a = kmeans_plus_plus(x, 5, generator=torch.Generator().manual_seed(3))
    b = kmeans_plus_plus(x, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # far-apart tight blobs: the D² draw puts one seed in each blob (x[:5] holds one point of each)
    assert sorted(assign(a, x[:5])[0].tolist()) == [0, 1, 2, 3, 4]


def test_finds_separated_clusters_and_is_deterministic() -> None:
    x = _blobs(400, 3, 4, 5, spread=20)
    a, b = kmeans(x, 4, seed=1), kmeans(x, 4, seed=1)
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    truth = torch.arange(400) % 4
    # every true blob maps to exactly one cluster
    pairs = {(int(t), int(lab)) for t, lab in zip(truth, a.labels, strict=True)}
    assert len(pairs) == 4


def test_random_init_and_tolerance() -> None:
    x = _blobs(300, 2, 6, 6)
    res = kmeans(x, 6, init="random", tol=1e-3, n_iter=100, seed=2)
    assert res.n_iter < 100 and res.labels.bincount(minlength=6).min() > 0


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(x=torch.zeros(3, 2, dtype=torch.int64), k=2), TypeError, "floating-point"),
    (dict(x=torch.zeros(3), k=2), ValueError, "2-D"),
    (dict(x=torch.zeros(3, 2), k=0), ValueError, "k must be"),
    (dict(x=torch.zeros(3, 2), k=4), ValueError, "at least k points"),
    (dict(x=torch.tensor([[float("nan")]]), k=1), ValueError, "NaN"),
    (dict(x=torch.zeros(3, 2), k=2, weights=torch.ones(2)), ValueError, "weights must be a tensor"),
    (dict(x=torch.zeros(3, 2), k=2, weights=-torch.ones(3)), ValueError, "non-negative"),
    (dict(x=torch.zeros(3, 2), k=2, init="best"), ValueError, "init must be"),
    (dict(x=torch.zeros(3, 2), k=2, init=torch.zeros(3, 2)), ValueError, "init must be a tensor"),
    (dict(x=torch.zeros(3, 2), k=2, n_iter=-1), ValueError, "n_iter"),
])
def test_bad_input(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        kmeans(**kwargs)
