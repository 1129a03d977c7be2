"""k-means for vectors: k-means++ seeding, Lloyd iterations, empty clusters, per-point weights.

Vector quantization replaces each ``d``-dimensional vector by the nearest of ``k`` *centroids*; k-means
chooses the centroids that minimise the (weighted) sum of squared distances
``Σ_i w_i ‖x_i − c_{a(i)}‖²``. Lloyd's algorithm alternates two exact steps, each of which can only lower
that sum:

* **assignment**: every point goes to its nearest centroid;
* **update**: every centroid becomes the (weighted) mean of its points.

Seeding is k-means++ (Arthur & Vassilvitskii, "k-means++: The Advantages of Careful Seeding", SODA 2007):
the first centroid is a random point, each next one a point drawn with probability proportional to
``w_i · D(x_i)²``, its squared distance to the nearest centroid chosen so far. A cluster that loses all its
points is moved onto the point that is currently worst served (largest weighted squared distance), the
usual remedy (scikit-learn does the same), so ``k`` centroids stay in use.

Everything is vectorised in torch (distances in chunks of points so memory stays bounded) and seeded:
the same inputs and ``seed`` give the same result. AQLM (lesson 03) initialises its codebooks with it, and
lessons 07 and 09 reuse it.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.cat([torch.randn(100, 2, generator=g) * 0.1 + torch.tensor(c)
...                for c in ([0.0, 0.0], [5.0, 5.0], [0.0, 5.0])])
>>> res = kmeans(x, 3, seed=0)
>>> sorted(torch.round(res.centroids).abs().tolist())
[[0.0, 0.0], [0.0, 5.0], [5.0, 5.0]]
>>> res.labels.bincount().tolist()
[100, 100, 100]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["KMeansResult", "assign", "kmeans", "kmeans_plus_plus", "update_centroids", "inertia"]

#: points per distance chunk: chunk × k distances are held at once (1 MiB of float32: the distances stay in
#: cache between the product and the minimum, about twice as fast as 64 MiB chunks)
_CHUNK_ELEMENTS = 1 << 18


@dataclass
class KMeansResult:
    """What :func:`kmeans` found."""

    centroids: torch.Tensor  #: ``[k, d]``
    labels: torch.Tensor  #: ``[n]`` (int64) index of each point's centroid
    inertia: float  #: ``Σ w_i ‖x_i − c_{labels_i}‖²`` at the returned centroids and labels
    n_iter: int  #: Lloyd iterations run
    history: list[float] = field(default_factory=list)  #: inertia after each assignment step


def _check_points(x: torch.Tensor, k: int, weights: torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor; got {type(x).__name__}"
                        + (f" of dtype {x.dtype}" if isinstance(x, torch.Tensor) else ""))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty 2-D tensor [n_points, dim]; got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int; got {k!r}")
    if k > x.shape[0]:
        raise ValueError(f"k={k} centroids need at least k points; got {x.shape[0]} points")
    if weights is not None:
        if not isinstance(weights, torch.Tensor) or tuple(weights.shape) != (x.shape[0],):
            got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
            raise ValueError(f"weights must be a tensor of shape ({x.shape[0]},); got {got}")
        if not torch.isfinite(weights).all() or (weights < 0).any() or not (weights > 0).any():
            raise ValueError("weights must be finite, non-negative and not all zero")


def assign(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point: ``(labels [n] int64, squared distances [n])``.

    Ties go to the lowest centroid index. Distances use ``‖x‖² − 2x·c + ‖c‖²`` in chunks of points and are
    clamped at 0 (the expansion can round slightly below).

    >>> import torch
    >>> labels, d2 = assign(torch.tensor([[0.0], [0.9], [3.0]]), torch.tensor([[0.0], [2.0]]))
    >>> labels.tolist(), [round(v, 4) for v in d2.tolist()]
    ([0, 0, 1], [0.0, 0.81, 1.0])
    """
    n, k = x.shape[0], centroids.shape[0]
    labels = torch.empty(n, dtype=torch.int64)
    dist = torch.empty(n, dtype=x.dtype)
    c_sq = (centroids * centroids).sum(1)
    step = max(1, _CHUNK_ELEMENTS // max(k, 1))
    for i in range(0, n, step):
        xb = x[i:i + step]
        # ‖c‖² − 2x·c ranks the centroids like the distance; ‖x‖² is added to the minimum only
        best, idx = torch.addmm(c_sq, xb, centroids.T, alpha=-2).min(1)
        labels[i:i + step] = idx
        dist[i:i + step] = (best + (xb * xb).sum(1)).clamp_min(0)
    return labels, dist


def inertia(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor,
            weights: torch.Tensor | None = None) -> float:
    """``Σ w_i ‖x_i − c_{labels_i}‖²`` (float64 sum of exact differences).

    >>> import torch
    >>> inertia(torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0]]), torch.tensor([0, 0]))
    2.0
    """
    d2 = ((x - centroids[labels]).double() ** 2).sum(1)
    if weights is not None:
        d2 = d2 * weights.double()
    return float(d2.sum())


def kmeans_plus_plus(x: torch.Tensor, k: int, weights: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """k-means++ seeding: ``k`` initial centroids ``[k, d]`` drawn from the points.

    Each new centroid is a point drawn with probability ``∝ w_i · D(x_i)²``. If every remaining weighted
    distance is 0 (fewer distinct points than ``k``), the next centroid is drawn by weight alone, so
    duplicates are possible only when the data has fewer than ``k`` distinct points.

    >>> import torch
    >>> gen = torch.Generator().manual_seed(1)
    >>> c = kmeans_plus_plus(torch.tensor([[0.0], [0.0], [10.0]]), 2, generator=gen)
    >>> sorted(c.flatten().tolist())
    [0.0, 10.0]
    """
    _check_points(x, k, weights)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    w = torch.ones(x.shape[0], dtype=torch.float64) if weights is None else weights.double()
    first = int(torch.multinomial(w, 1, generator=gen))
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype)
    centroids[0] = x[first]
    d2 = ((x - x[first]) ** 2).sum(1).double()
    for j in range(1, k):
        p = d2 if weights is None else w * d2
        if not (p > 0).any():
            p = w
        nxt = int(torch.multinomial(p, 1, generator=gen))
        centroids[j] = x[nxt]
        torch.minimum(d2, (x - x[nxt]).square_().sum(1).double(), out=d2)
    return centroids


def update_centroids(x: torch.Tensor, labels: torch.Tensor, k: int, weights: torch.Tensor | None = None,
                     previous: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The Lloyd update: each centroid becomes the weighted mean of its points.

    Returns ``(centroids [k, d], mass [k])`` where ``mass`` is each cluster's total weight. A cluster with
    zero mass keeps its ``previous`` centroid (zeros when ``previous`` is ``None``); :func:`kmeans` then
    relocates it.

    >>> import torch
    >>> c, mass = update_centroids(torch.tensor([[0.0], [2.0], [7.0]]), torch.tensor([0, 0, 1]), 2)
    >>> c.flatten().tolist(), mass.tolist()
    ([1.0, 7.0], [2.0, 1.0])
    """
    w = torch.ones(x.shape[0], dtype=torch.float64) if weights is None else weights.double()
    mass = torch.zeros(k, dtype=torch.float64).index_add_(0, labels, w)
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, labels, x.double() * w[:, None])
    out = torch.zeros(k, x.shape[1], dtype=x.dtype) if previous is None else previous.clone()
    used = mass > 0
    out[used] = (sums[used] / mass[used, None]).to(x.dtype)
    return out, mass


def kmeans(x: torch.Tensor, k: int, *, weights: torch.Tensor | None = None, n_iter: int = 100,
           tol: float = 0.0, init: str | torch.Tensor = "k-means++", seed: int = 0,
           progress: bool = False) -> KMeansResult:
    """Weighted k-means: k-means++ seeding (or ``init``), then Lloyd iterations.

    Parameters
    ----------
    x
        Points ``[n, d]`` (floating point, finite).
    k
        Number of centroids, ``1 ≤ k ≤ n``.
    weights
        Optional non-negative weight per point ``[n]`` (``None``: all 1).
    n_iter
        Maximum number of Lloyd iterations (``0`` returns the seeding with its assignment).
    tol
        Stop when an iteration lowers the inertia by at most ``tol`` times its previous value
        (``0``: stop only when the assignment no longer changes, or after ``n_iter``).
    init
        ``"k-means++"`` (default), ``"random"`` (``k`` distinct points drawn uniformly: what AQLM's reference
        code does, and ``O(nd)`` instead of k-means++'s ``O(nkd)`` sequential passes, which matters for
        ``k = 65,536``), or initial centroids ``[k, d]``.
    seed
        Seed of the random draws.
    progress
        Show a ``tqdm`` bar over iterations.

    Returns
    -------
    KMeansResult
        Centroids, labels (the assignment to the returned centroids), inertia and its history; the inertia
        never increases from one iteration to the next.

    Examples
    --------
    >>> import torch
    >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    >>> r = kmeans(x, 2, seed=0)
    >>> sorted(r.centroids.flatten().tolist()), r.inertia
    ([0.5, 10.5], 1.0)
    >>> kmeans(x, 5)
    Traceback (most recent call last):
    ...
    ValueError: k=5 centroids need at least k points; got 4 points
    """
    _check_points(x, k, weights)
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative int; got {n_iter!r}")
    if not isinstance(tol, int | float) or tol < 0:
        raise ValueError(f"tol must be a non-negative number; got {tol!r}")
    gen = torch.Generator().manual_seed(int(seed))
    if isinstance(init, str):
        if init == "k-means++":
            centroids = kmeans_plus_plus(x, k, weights, gen)
        elif init == "random":
            centroids = x[torch.randperm(x.shape[0], generator=gen)[:k]].clone()
        else:
            raise ValueError(f"init must be 'k-means++', 'random' or a tensor [k, d]; got {init!r}")
    else:
        if not isinstance(init, torch.Tensor) or tuple(init.shape) != (k, x.shape[1]):
            got = tuple(init.shape) if isinstance(init, torch.Tensor) else type(init).__name__
            raise ValueError(f"init must be a tensor of shape ({k}, {x.shape[1]}); got {got}")
        centroids = init.to(x.dtype).clone()
    w = None if weights is None else weights.to(x.dtype)

    labels, d2 = assign(x, centroids)
    history = [inertia(x, centroids, labels, weights)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_iter, desc=f"k-means k={k}", leave=False)
    done = 0
    for _ in range(n_iter):
        centroids, mass = update_centroids(x, labels, k, weights, previous=centroids)
        empty = torch.nonzero(mass == 0).flatten()
        if len(empty):
            # move each empty centroid onto the currently worst-served point (distinct points, worst first)
            cost = d2 if w is None else d2 * w
            cost = cost.clone()
            for e in empty.tolist():
                far = int(torch.argmax(cost))
                centroids[e] = x[far]
                cost[far] = -1.0
        new_labels, d2 = assign(x, centroids)
        value = inertia(x, centroids, new_labels, weights)
        done += 1
        changed = bool((new_labels != labels).any())
        labels = new_labels
        history.append(value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(inertia=f"{value:.4g}")
        if not changed and not len(empty):
            break
        if tol > 0 and history[-2] - value <= tol * history[-2]:
            break
    if bar is not None:
        bar.close()
    return KMeansResult(centroids, labels, history[-1], done, history)
