"""Rate–distortion theory for quantization: the bound, Lloyd–Max, lattices, Blahut–Arimoto, bit allocation.

How low can the bits go? For a memoryless Gaussian source of variance σ² no code of rate ``R`` bits per
sample can reach a mean squared error below the distortion–rate function ``D(R) = σ² 2^(−2R)`` (Shannon
1959; Cover & Thomas, *Elements of Information Theory*, 2006, ch. 10). This module computes that bound and
measures how far practical quantizers stay from it:

- :func:`gaussian_distortion_rate` / :func:`gaussian_rate_distortion`: the closed forms, and
  :func:`gap_db` / :func:`gap_bits` for a measured quantizer;
- :func:`lloyd_max`: the optimal fixed-rate *scalar* quantizer of a density (Max 1960; Lloyd 1982), for
  :func:`gaussian`, :func:`laplace` or :func:`empirical` (samples) sources, any number of levels;
  :func:`lloyd_step` is one iteration; :func:`uniform_quantizer` and :func:`best_uniform` the uniform grid;
- :func:`entropy_coded_uniform`: a uniform quantizer followed by an ideal entropy coder, whose high-rate gap
  to the bound is ``πe/6`` (1.53 dB, 0.254 bit);
- :func:`nearest_zn`, :func:`nearest_dn`, :func:`nearest_e8` (Conway & Sloane's fast nearest-point rules;
  E8 from :mod:`qcourse.lattice`) and
  :func:`lattice_nsm`, the normalized second moment ``G`` by Monte Carlo (space-filling gain of a lattice);
- :func:`blahut_arimoto` / :func:`rd_curve` / :func:`distortion_at_rate`: ``R(D)`` of any *discrete* source
  (for example a histogram of real weights);
- :func:`reverse_water_filling` for independent Gaussian components and its practical form for a network,
  :func:`allocate_bits`, which chooses each layer's bit width for an average bits-per-weight budget and
  returns ``{layer_name: bits}`` for :func:`qcourse.nn.quantize_model`.

Rates are in bits, distortions are mean squared errors per sample, and everything is deterministic (Monte
Carlo functions take a ``seed``).

>>> round(gaussian_distortion_rate(2.0), 4)
0.0625
>>> q = lloyd_max(gaussian(), 4)
>>> round(q.mse(gaussian()), 4), round(gap_db(q.mse(gaussian()), 2.0), 2)
(0.1175, 2.74)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "ECSQ_GAP_BITS",
    "ECSQ_GAP_DB",
    "KNOWN_NSM",
    "BitPlan",
    "Density",
    "ScalarQuantizer",
    "WaterFilling",
    "allocate_bits",
    "best_uniform",
    "binary_entropy",
    "blahut_arimoto",
    "continuous_bit_allocation",
    "discretize",
    "distortion_at_rate",
    "empirical",
    "entropy_coded_uniform",
    "gap_bits",
    "gap_db",
    "gaussian",
    "gaussian_distortion_rate",
    "gaussian_rate_distortion",
    "laplace",
    "lattice_nsm",
    "layer_losses",
    "lloyd_max",
    "lloyd_step",
    "nearest_dn",
    "nearest_e8",
    "nearest_zn",
    "rd_curve",
    "sample_rd_rows",
    "trellis_quantize",
    "reverse_water_filling",
    "uniform_plan",
    "uniform_quantizer",
]

#: High-rate gap of an entropy-coded uniform scalar quantizer to ``D(R)``: ``10·log10(πe/6)`` dB.
ECSQ_GAP_DB = 10 * math.log10(math.pi * math.e / 6)
#: The same gap in bits per sample: ``½·log2(πe/6)``.
ECSQ_GAP_BITS = 0.5 * math.log2(math.pi * math.e / 6)

#: Normalized second moments ``G`` from Conway & Sloane, *Sphere Packings, Lattices and Groups* (1999),
#: and the sphere bound ``1/(2πe)`` that no lattice reaches in finite dimension.
KNOWN_NSM = {"Z": 1 / 12, "D4": 0.0766032, "E8": 0.0716821, "sphere": 1 / (2 * math.pi * math.e)}


# --------------------------------------------------------------------------------------------------------
# The Gaussian bound


def _check_positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__}")
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return v


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.floating | np.integer):
        raise TypeError(f"rate must be a real number of bits; got {type(rate).__name__}")
    r = float(rate)
    if not (math.isfinite(r) and r >= 0):
        raise ValueError(f"rate must be a finite number of bits >= 0; got {rate!r}")
    return r


def gaussian_distortion_rate(rate: float, variance: float = 1.0) -> float:
    """The least MSE any code of ``rate`` bits/sample can reach on N(0, variance): ``σ² 2^(−2R)``.

    Each extra bit divides the error by 4, i.e. 10·log10(4) ≈ 6.02 dB per bit.

    >>> gaussian_distortion_rate(1.0), gaussian_distortion_rate(3.0, variance=4.0)
    (0.25, 0.0625)
    >>> round(10 * math.log10(gaussian_distortion_rate(1) / gaussian_distortion_rate(2)), 2)
    6.02
    """
    return _check_positive(variance, "variance") * 2.0 ** (-2.0 * _check_rate(rate))


def gaussian_rate_distortion(distortion: float, variance: float = 1.0) -> float:
    """The fewest bits/sample that reach MSE ``distortion`` on N(0, variance): ``max(0, ½ log2(σ²/D))``.

    >>> gaussian_rate_distortion(0.0625)
    2.0
    >>> gaussian_rate_distortion(2.0)  # D above the variance: sending nothing (reconstruct 0) is enough
    0.0
    """
    d = _check_positive(distortion, "distortion")
    return max(0.0, 0.5 * math.log2(_check_positive(variance, "variance") / d))


def gap_db(mse: float, rate: float, variance: float = 1.0) -> float:
    """How far a quantizer with ``mse`` at ``rate`` bits sits above the Gaussian bound, in dB.

    >>> round(gap_db(0.3634, 1.0), 2)  # the 1-bit Lloyd-Max quantizer of N(0, 1)
    1.62
    """
    return 10 * math.log10(_check_positive(mse, "mse") / gaussian_distortion_rate(rate, variance))


def gap_bits(mse: float, rate: float, variance: float = 1.0) -> float:
    """The same gap in bits per sample: extra rate the quantizer spends over ``R(mse)`` (``gap_db / 6.02``).

    >>> round(gap_bits(0.1175, 2.0), 3)
    0.455
    """
    return 0.5 * math.log2(_check_positive(mse, "mse") / gaussian_distortion_rate(rate, variance))


# --------------------------------------------------------------------------------------------------------
# Densities: what Lloyd-Max needs is P(X <= x) and the partial moments ∫_{-∞}^x t f(t) dt, ∫_{-∞}^x t² f(t) dt


def _ndtr(z: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.as_tensor(z, dtype=torch.float64)).numpy()


@dataclass(frozen=True)
class Density:
    """A one-dimensional source given by its CDF and partial moments (all vectorised, ``±inf`` allowed).

    ``m1(x) = ∫_{-∞}^x t f(t) dt`` and ``m2(x) = ∫_{-∞}^x t² f(t) dt``: a quantizer cell ``[a, b)`` has
    probability ``cdf(b) − cdf(a)``, centroid ``(m1(b) − m1(a)) / P`` and exact squared error from these,
    so Lloyd–Max and every MSE below are exact integrals, not Monte Carlo.
    """

    name: str
    cdf: Callable[[np.ndarray], np.ndarray]
    m1: Callable[[np.ndarray], np.ndarray]
    m2: Callable[[np.ndarray], np.ndarray]
    mean: float
    variance: float
    #: a finite interval holding all (or all but ~1e-15) of the mass, for searches and plots
    support: tuple[float, float]
    pdf: Callable[[np.ndarray], np.ndarray] | None = None

    def quantile(self, u: np.ndarray) -> np.ndarray:
        """Inverse CDF by bisection (vectorised), for initialising quantizers."""
        u = np.asarray(u, dtype=np.float64)
        lo = np.full(u.shape, self.support[0])
        hi = np.full(u.shape, self.support[1])
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            below = self.cdf(mid) < u
            lo = np.where(below, mid, lo)
            hi = np.where(below, hi, mid)
        return 0.5 * (lo + hi)

    def cell_moments(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(P, M1, M2)`` of the cells between consecutive ``edges`` (first ``-inf``, last ``inf``)."""
        c, a, b = self.cdf(edges), self.m1(edges), self.m2(edges)
        return np.diff(c), np.diff(a), np.diff(b)


def gaussian(sigma: float = 1.0) -> Density:
    """N(0, σ²) with closed-form partial moments.

    >>> g = gaussian()
    >>> float(g.cdf(np.array(0.0))), float(g.m2(np.array(np.inf)))
    (0.5, 1.0)
    """
    s = _check_positive(sigma, "sigma")

    def phi(z: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            return np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)

    def cdf(x: np.ndarray) -> np.ndarray:
        return _ndtr(np.asarray(x, dtype=np.float64) / s)

    def m1(x: np.ndarray) -> np.ndarray:
        return -s * phi(np.asarray(x, dtype=np.float64) / s)

    def m2(x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float64) / s
        zphi = np.where(np.isinf(z), 0.0, z * phi(np.where(np.isinf(z), 0.0, z)))
        return s * s * (_ndtr(z) - zphi)

    def pdf(x: np.ndarray) -> np.ndarray:
        return phi(np.asarray(x, dtype=np.float64) / s) / s

    return Density(f"N(0, {s:g}²)", cdf, m1, m2, 0.0, s * s, (-40.0 * s, 40.0 * s), pdf)


def laplace(b: float = 1 / math.sqrt(2)) -> Density:
    """The Laplace density ``exp(−|x|/b) / 2b`` (variance ``2b²``; default unit variance), a heavy-ish tail.

    >>> lap = laplace()
    >>> round(float(lap.m2(np.array(np.inf))), 12), round(float(lap.m1(np.array(0.0))), 6)
    (1.0, -0.353553)
    """
    bb = _check_positive(b, "b")

    def cdf(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        e = np.exp(-np.abs(x) / bb)
        return np.where(x < 0, 0.5 * e, 1 - 0.5 * e)

    def m1(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        e = np.exp(-np.abs(x) / bb)
        ax = np.where(np.isinf(x), 0.0, np.abs(x))
        return np.where(x < 0, -0.5 * e * (ax + bb), -0.5 * e * (ax + bb))

    def m2(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        e = np.exp(-np.abs(x) / bb)
        ax = np.where(np.isinf(x), 0.0, np.abs(x))
        poly = ax * ax + 2 * bb * ax + 2 * bb * bb
        return np.where(x < 0, 0.5 * e * poly, 2 * bb * bb - 0.5 * e * poly)

    def pdf(x: np.ndarray) -> np.ndarray:
        return np.exp(-np.abs(np.asarray(x, dtype=np.float64)) / bb) / (2 * bb)

    return Density(f"Laplace(b={bb:g})", cdf, m1, m2, 0.0, 2 * bb * bb, (-80.0 * bb, 80.0 * bb), pdf)


def _as_samples(x: Any, name: str = "samples") -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float64).cpu().numpy()
    try:
        a = np.asarray(x, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a tensor or array of real numbers") from None
    if a.size < 2:
        raise ValueError(f"{name} must hold at least 2 values; got {a.size}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite (no NaN or Inf)")
    return a


def empirical(samples: Any) -> Density:
    """The empirical distribution of ``samples`` (a tensor or array): Lloyd–Max on it is 1-D k-means.

    >>> e = empirical([0.0, 1.0, 2.0, 3.0])
    >>> float(e.cdf(np.array(1.5))), float(e.m1(np.array(1.5))), e.variance
    (0.5, 0.25, 1.25)
    """
    a = np.sort(_as_samples(samples))
    n = a.size
    c1 = np.concatenate([[0.0], np.cumsum(a)]) / n
    c2 = np.concatenate([[0.0], np.cumsum(a * a)]) / n

    def count(x: np.ndarray) -> np.ndarray:
        return np.searchsorted(a, np.asarray(x, dtype=np.float64), side="right")

    def cdf(x: np.ndarray) -> np.ndarray:
        return count(x) / n

    def m1(x: np.ndarray) -> np.ndarray:
        return c1[count(x)]

    def m2(x: np.ndarray) -> np.ndarray:
        return c2[count(x)]

    mean = float(a.mean())
    span = float(a[-1] - a[0]) or 1.0
    return Density(f"empirical (n={n})", cdf, m1, m2, mean, float(a.var()), (a[0] - span, a[-1] + span))


# --------------------------------------------------------------------------------------------------------
# Scalar quantizers


@dataclass(frozen=True)
class ScalarQuantizer:
    """A scalar quantizer: sorted reproduction ``levels`` and the ``thresholds`` between them.

    ``x`` maps to ``levels[i]`` when ``thresholds[i-1] <= x < thresholds[i]`` (outer cells unbounded).
    ``iterations`` and ``converged`` describe how it was designed (``0``/``True`` for a fixed grid).
    """

    levels: np.ndarray
    thresholds: np.ndarray
    iterations: int = 0
    converged: bool = True

    @property
    def rate(self) -> float:
        """Fixed-rate cost in bits per sample: ``log2(len(levels))``."""
        return math.log2(len(self.levels))

    def quantize(self, x: Any) -> np.ndarray:
        """Reproduce every value of ``x`` (array or tensor) by its cell's level.

        >>> q = uniform_quantizer(4, 1.0)
        >>> q.quantize([-3.0, -0.2, 0.2, 0.6]).tolist()
        [-1.5, -0.5, 0.5, 0.5]
        """
        if isinstance(x, torch.Tensor):
            x = x.detach().to(torch.float64).cpu().numpy()
        return self.levels[np.searchsorted(self.thresholds, np.asarray(x, dtype=np.float64), side="right")]

    def mse(self, density: Density) -> float:
        """Exact mean squared error on ``density`` (integrated cell by cell, no sampling)."""
        edges = np.concatenate([[-np.inf], self.thresholds, [np.inf]])
        p, m1, m2 = density.cell_moments(edges)
        y = self.levels
        return float(np.sum(m2 - 2 * y * m1 + y * y * p))

    def entropy(self, density: Density) -> float:
        """Entropy of the output index in bits: the rate an ideal entropy coder would need."""
        edges = np.concatenate([[-np.inf], self.thresholds, [np.inf]])
        p = np.diff(density.cdf(edges))
        p = p[p > 0]
        return float(-np.sum(p * np.log2(p)))


def _check_levels(levels: Any) -> int:
    if isinstance(levels, bool) or not isinstance(levels, int | np.integer):
        raise TypeError(f"levels must be an integer >= 2; got {type(levels).__name__}")
    if levels < 2:
        raise ValueError(f"levels must be an integer >= 2; got {levels}")
    return int(levels)


def _check_density(density: Any) -> Density:
    if not isinstance(density, Density):
        raise TypeError(
            "density must be a qcourse.theory.Density (gaussian(), laplace() or empirical(samples)); "
            f"got {type(density).__name__}"
        )
    return density


def lloyd_step(levels: Any, density: Density) -> tuple[np.ndarray, np.ndarray]:
    """One Lloyd–Max iteration: thresholds at the midpoints, then every level at its cell's centroid.

    Returns ``(new_levels, thresholds)``; the thresholds are the midpoints of the *old* levels, the cells
    whose centroids the new levels are. A cell with no probability keeps its level.

    >>> new, t = lloyd_step([-1.0, 1.0], gaussian())
    >>> t.tolist(), np.round(new, 4).tolist()  # ± E|X| = ± sqrt(2/pi)
    ([0.0], [-0.7979, 0.7979])
    """
    _check_density(density)
    y = np.asarray(levels, dtype=np.float64)
    if y.ndim != 1 or y.size < 2 or not np.all(np.isfinite(y)):
        raise ValueError("levels must be a 1-D array of at least 2 finite values")
    if np.any(np.diff(y) <= 0):
        raise ValueError("levels must be strictly increasing")
    t = 0.5 * (y[1:] + y[:-1])
    p, m1, _ = density.cell_moments(np.concatenate([[-np.inf], t, [np.inf]]))
    safe = np.where(p > 0, p, 1.0)
    new = np.where(p > 0, m1 / safe, y)
    return new, t


def lloyd_max(
    density: Density,
    levels: int,
    *,
    init: Any = None,
    tol: float = 1e-12,
    max_iter: int = 100_000,
) -> ScalarQuantizer:
    """The Lloyd–Max quantizer of ``density`` with ``levels`` levels (any count ≥ 2, e.g. 3 for ternary).

    Alternates the two optimality conditions (Max 1960; Lloyd 1982): thresholds halfway between levels,
    levels at their cells' centroids, until no level moves by more than ``tol·σ``. Each step cannot increase
    the MSE; for log-concave densities (Gaussian, Laplace) the fixed point is the unique optimum
    (Fleischer 1964). On :func:`empirical` samples this is exact 1-D k-means.

    Parameters
    ----------
    density
        :func:`gaussian`, :func:`laplace`, :func:`empirical` or any :class:`Density`.
    levels
        Number of reproduction levels (``2**bits`` for a ``bits``-bit quantizer).
    init
        Starting levels (sorted); default: the density's quantiles at ``(k + ½)/levels``.
    tol, max_iter
        Convergence tolerance (relative to the standard deviation) and iteration cap.

    >>> q = lloyd_max(gaussian(), 3)
    >>> np.round(q.levels, 3).tolist(), round(q.mse(gaussian()), 4)
    ([-1.224, 0.0, 1.224], 0.1902)
    """
    _check_density(density)
    n = _check_levels(levels)
    if not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}")
    tol = _check_positive(tol, "tol")
    sigma = math.sqrt(density.variance) if density.variance > 0 else 1.0
    if init is None:
        y = density.quantile((np.arange(n) + 0.5) / n)
        y = y + np.arange(n) * 1e-9 * sigma  # a point mass can give equal quantiles; keep them ordered
    else:
        y = np.asarray(init, dtype=np.float64)
        if y.shape != (n,):
            raise ValueError(f"init must hold exactly levels={n} values; got shape {y.shape}")
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (it is reported)
        new, _ = lloyd_step(y, density)
        moved = float(np.max(np.abs(new - y)))
        y = new
        if moved <= tol * sigma:
            converged = True
            break
    return ScalarQuantizer(y, 0.5 * (y[1:] + y[:-1]), it, converged)


def uniform_quantizer(levels: int, step: float, center: float = 0.0) -> ScalarQuantizer:
    """The symmetric uniform quantizer: levels ``center + (k − (L−1)/2)·step``, outer cells unbounded.

    With an even ``levels`` it is mid-rise (no zero level), with an odd count mid-tread (zero included).

    >>> uniform_quantizer(3, 0.5).levels.tolist()
    [-0.5, 0.0, 0.5]
    """
    n = _check_levels(levels)
    s = _check_positive(step, "step")
    y = center + (np.arange(n) - (n - 1) / 2) * s
    return ScalarQuantizer(y, 0.5 * (y[1:] + y[:-1]))


def _golden(f: Callable[[float], float], lo: float, hi: float, iters: int = 120) -> float:
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return 0.5 * (a + b)


def best_uniform(density: Density, levels: int) -> ScalarQuantizer:
    """The uniform quantizer with the step that minimises the MSE on ``density`` (golden-section search).

    >>> q = best_uniform(gaussian(), 4)
    >>> round(float(q.levels[1] - q.levels[0]), 4), round(q.mse(gaussian()), 4)
    (0.9957, 0.1188)
    """
    _check_density(density)
    n = _check_levels(levels)
    sigma = math.sqrt(density.variance)
    if not sigma > 0:
        raise ValueError("density must have a positive variance")

    def mse(step: float) -> float:
        return uniform_quantizer(n, step, density.mean).mse(density)

    step = _golden(mse, 1e-4 * sigma, 12.0 * sigma / (n - 1))
    return uniform_quantizer(n, step, density.mean)


def entropy_coded_uniform(density: Density, step: float, centroid: bool = False) -> tuple[float, float]:
    """Rate and MSE of an unbounded uniform mid-tread quantizer followed by an ideal entropy coder.

    Cells ``[(k − ½)Δ, (k + ½)Δ)`` for every integer ``k``; the rate is the entropy of the cell index (what
    an ideal entropy coder spends), the distortion is reconstructing at the cell's midpoint (or, with
    ``centroid=True``, its centroid). As ``Δ → 0``, ``MSE → Δ²/12`` and ``H → h(X) − log2 Δ``, so on a
    Gaussian the MSE approaches ``(πe/6)·D(R)``: 1.53 dB (0.254 bit) above the bound (Gish & Pierce 1968).

    Returns ``(rate_bits, mse)``.

    >>> rate, mse = entropy_coded_uniform(gaussian(), 0.01)
    >>> round(gap_db(mse, rate), 2), round(ECSQ_GAP_DB, 2)
    (1.53, 1.53)
    """
    _check_density(density)
    d = _check_positive(step, "step")
    lo, hi = density.support
    kmax = math.ceil(max(abs(lo - density.mean), abs(hi - density.mean)) / d)
    if kmax > 5_000_000:
        raise ValueError(f"step={step} is too small for this density (more than 10 million cells)")
    k = np.arange(-kmax, kmax + 1, dtype=np.float64)
    centres = density.mean + k * d
    edges = np.concatenate([[-np.inf], centres[:-1] + d / 2, [np.inf]])
    p, m1, m2 = density.cell_moments(edges)
    keep = p > 0
    p, m1, m2, centres = p[keep], m1[keep], m2[keep], centres[keep]
    y = m1 / p if centroid else centres
    mse = float(np.sum(m2 - 2 * y * m1 + y * y * p))
    rate = float(-np.sum(p * np.log2(p)))
    return rate, max(mse, 0.0)


# --------------------------------------------------------------------------------------------------------
# Lattices


def _as_points(x: Any, dim: int | None = None) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float64).cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        raise ValueError("x must have at least one dimension (the last is the lattice dimension)")
    if dim is not None and a.shape[-1] != dim:
        raise ValueError(f"x must have last dimension {dim}; got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("x must be finite (no NaN or Inf)")
    return a


def nearest_zn(x: Any) -> np.ndarray:
    """Nearest point of the integer lattice Zⁿ: round every coordinate.

    >>> nearest_zn([[0.4, -1.6]]).tolist()
    [[0.0, -2.0]]
    """
    return np.round(_as_points(x))


def nearest_dn(x: Any) -> np.ndarray:
    """Nearest point of Dₙ = {z ∈ Zⁿ : Σz even} (Conway & Sloane, 1982).

    Round every coordinate; if the sum of the rounded vector is odd, re-round the one coordinate that was
    furthest from its integer the other way (that is the cheapest way to fix the parity).

    >>> nearest_dn([[0.6, 0.1, 0.0, 0.0]]).tolist()  # rounds to (1, 0, 0, 0): odd sum; (0, 0, 0, 0) is nearer
    [[0.0, 0.0, 0.0, 0.0]]
    >>> nearest_dn([[0.9, 0.6, 0.0, 0.0]]).tolist()
    [[1.0, 1.0, 0.0, 0.0]]
    """
    a = _as_points(x)
    if a.shape[-1] < 2:
        raise ValueError(f"x must have last dimension >= 2 for D_n; got {a.shape[-1]}")
    f = np.round(a)
    odd = (np.sum(f, axis=-1) % 2) != 0
    if np.any(odd):
        err = a - f
        k = np.argmax(np.abs(err), axis=-1)
        e_k = np.take_along_axis(err, k[..., None], axis=-1)[..., 0]
        direction = np.where(e_k >= 0, 1.0, -1.0)
        fk = np.take_along_axis(f, k[..., None], axis=-1)[..., 0]
        np.put_along_axis(f, k[..., None], np.where(odd, fk + direction, fk)[..., None], axis=-1)
    return f


def nearest_e8(x: Any) -> np.ndarray:
    """Nearest point of the E8 lattice, ``E8 = D8 ∪ (D8 + ½·1)``: the closer of the two cosets' points.

    Delegates to :func:`qcourse.lattice.nearest_e8` (the course's one E8 implementation, used by QuIP#)
    and accepts arrays as well as tensors.

    >>> p = nearest_e8([[0.4] * 8])
    >>> p.tolist()
    [[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]
    """
    from qcourse.lattice import nearest_e8 as _nearest_e8

    return _nearest_e8(torch.from_numpy(_as_points(x, 8))).numpy()


#: name -> (dimension or None for any, nearest-point rule, Voronoi-cell volume)
_LATTICES: dict[str, tuple[int | None, Callable[[Any], np.ndarray], float]] = {
    "Z": (None, nearest_zn, 1.0),
    "D4": (4, nearest_dn, 2.0),
    "E8": (8, nearest_e8, 1.0),
}


def lattice_nsm(name: str, n_samples: int = 200_000, seed: int = 0, dim: int = 1) -> tuple[float, float]:
    """Normalized second moment ``G = E‖x − Q(x)‖² / (n·V^(2/n))`` of a lattice, by Monte Carlo.

    ``G`` is the MSE per dimension of a lattice quantizer at unit cell volume: the lower, the better the
    cell fills space. The cube (Zⁿ) has 1/12; D4 0.0766; E8 0.0717; no lattice beats the sphere bound
    ``1/(2πe)``. All three lattices contain ``2Zⁿ``, so points drawn uniformly from ``[0, 2)ⁿ`` are uniform
    modulo the lattice and the quantization error is uniform over the Voronoi cell.

    Parameters
    ----------
    name
        ``"Z"`` (any ``dim``), ``"D4"`` or ``"E8"``.
    n_samples, seed
        Monte Carlo sample count and seed.

    Returns
    -------
    (G, standard_error)

    >>> g, se = lattice_nsm("D4", 20_000)
    >>> abs(g - KNOWN_NSM["D4"]) < 4 * se
    True
    """
    if name not in _LATTICES:
        raise ValueError(f"name must be one of {sorted(_LATTICES)}; got {name!r}")
    if not (isinstance(n_samples, int) and n_samples >= 100):
        raise ValueError(f"n_samples must be an integer >= 100; got {n_samples!r}")
    fixed, rule, volume = _LATTICES[name]
    if fixed is not None:
        n = fixed
    elif isinstance(dim, int) and dim >= 1:
        n = dim
    else:
        raise ValueError(f"dim must be a positive integer; got {dim!r}")
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 2.0, size=(n_samples, n))
    per_point = np.sum((x - rule(x)) ** 2, axis=-1) / (n * volume ** (2 / n))
    return float(per_point.mean()), float(per_point.std(ddof=1) / math.sqrt(n_samples))


# --------------------------------------------------------------------------------------------------------
# Blahut-Arimoto: R(D) of a discrete source


def binary_entropy(p: float) -> float:
    """``h(p) = −p log2 p − (1−p) log2 (1−p)`` in bits.

    >>> binary_entropy(0.5), round(binary_entropy(0.11), 4)
    (1.0, 0.4999)
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1]; got {p!r}")
    return float(-sum(q * math.log2(q) for q in (p, 1 - p) if q > 0))


def _check_pmf(p: Any) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    if a.ndim != 1 or a.size < 1:
        raise ValueError("p must be a 1-D array of probabilities")
    if not np.all(np.isfinite(a)) or np.any(a < 0) or not abs(a.sum() - 1) < 1e-9:
        raise ValueError("p must hold finite non-negative probabilities that sum to 1")
    return a


def blahut_arimoto(
    p: Any,
    distortion: Any,
    beta: float,
    *,
    tol: float = 1e-7,
    max_iter: int = 20_000,
    init: Any = None,
) -> tuple[float, float, np.ndarray]:
    """One point of the rate–distortion curve of a discrete source (Blahut 1972; Arimoto 1972).

    Minimises ``I(X; Y) + β·E[d(X, Y)]`` over test channels ``Q(y|x)`` by alternating
    ``Q(y|x) ∝ q(y)·exp(−β d(x, y))`` and ``q(y) = Σ_x p(x) Q(y|x)``. The result is the point of ``R(D)``
    where the curve's slope is ``−β`` (in nats per unit distortion). Iteration stops when, over 10 steps,
    the rate moves by less than ``tol`` bits and the distortion by less than ``tol`` relative.

    Parameters
    ----------
    p
        Source probabilities, shape ``[n_x]``.
    distortion
        ``d(x, y)``, shape ``[n_x, n_y]`` (e.g. ``(x − y)²``).
    beta
        Lagrange multiplier > 0: small β → low rate, large β → low distortion.
    tol, max_iter, init
        Stopping tolerance, iteration cap, and a starting output distribution (a warm start from a
        nearby β saves most of the iterations).

    Returns
    -------
    (rate_bits, distortion, q)
        ``q`` is the optimal output distribution.

    >>> # a fair coin with Hamming distortion: R(D) = 1 − h(D)
    >>> r, d, _ = blahut_arimoto([0.5, 0.5], [[0, 1], [1, 0]], beta=2.0)
    >>> round(r, 6) == round(1 - binary_entropy(d), 6)
    True
    """
    px = _check_pmf(p)
    dm = np.asarray(distortion, dtype=np.float64)
    if dm.ndim != 2 or dm.shape[0] != px.size or dm.shape[1] < 1:
        raise ValueError(f"distortion must have shape [len(p), n_y] = [{px.size}, n_y]; got {dm.shape}")
    if not np.all(np.isfinite(dm)) or np.any(dm < 0):
        raise ValueError("distortion must hold finite non-negative values")
    b = _check_positive(beta, "beta")
    keep = px > 0
    px, dm = px[keep], dm[keep]
    # Subtracting each row's smallest distortion scales row x of exp(-βd) by a constant, which cancels in
    # Q(y|x) and in the update below, and keeps the largest entry of every row at 1 (no underflow to 0/0).
    dmin = dm.min(axis=1, keepdims=True)
    kern = np.exp(-b * (dm - dmin))
    if init is None:
        q = np.full(dm.shape[1], 1.0 / dm.shape[1])
    else:
        q = np.asarray(init, dtype=np.float64).ravel()
        if q.shape != (dm.shape[1],) or np.any(q < 0) or not q.sum() > 0:
            raise ValueError(f"init must be a non-negative vector of length {dm.shape[1]}")
        q = np.maximum(q / q.sum(), 1e-300)  # a zero output can never come back; keep every one alive
    def rate_distortion(q: np.ndarray) -> tuple[float, float]:
        z = kern @ q
        cond = kern * q[None, :] / z[:, None]  # Q(y|x)
        # log(Q(y|x) / q(y)) = log kern − log z: no division by a q(y) that may have underflowed
        log_ratio = -b * (dm - dmin) - np.log(z)[:, None]
        mass = px[:, None] * cond
        return float(np.sum(mass * log_ratio)) / math.log(2), float(np.sum(mass * dm))

    # Blahut's upper/lower bound gap converges slowly when outputs far in the tails have tiny q(y), long
    # after R and D themselves have settled; so stop when R and D stop moving (checked every 10 steps).
    last = rate_distortion(q)
    for it in range(1, max_iter + 1):
        z = kern @ q
        q = q * (kern.T @ (px / z))
        q /= q.sum()
        if it % 10 == 0:
            now = rate_distortion(q)
            if abs(now[0] - last[0]) < tol and abs(now[1] - last[1]) <= tol * max(now[1], 1e-300):
                last = now
                break
            last = now
    else:
        last = rate_distortion(q)
    rate, d = last
    return max(rate, 0.0), d, q


def discretize(samples: Any, bins: int = 201, span: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """A histogram of ``samples`` as a discrete source: ``(values, probabilities)``.

    ``bins`` equal bins over ``mean ± span·std``; samples outside are counted in the end bins (the
    histogram is for drawing bounds, not for coding). Values are the bins' sample means, so the discrete
    source keeps the data's mean and almost all of its variance.

    >>> v, p = discretize(np.random.default_rng(0).standard_normal(10_000), bins=41)
    >>> len(v) <= 41, round(float(p.sum()), 12)  # empty bins (beyond the data's range) are dropped
    (True, 1.0)
    """
    a = _as_samples(samples)
    if not (isinstance(bins, int) and bins >= 2):
        raise ValueError(f"bins must be an integer >= 2; got {bins!r}")
    span = _check_positive(span, "span")
    mu, sd = a.mean(), a.std()
    if not sd > 0:
        raise ValueError("samples must not all be equal")
    edges = np.linspace(mu - span * sd, mu + span * sd, bins + 1)
    idx = np.clip(np.searchsorted(edges, a, side="right") - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    sums = np.bincount(idx, weights=a, minlength=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    values = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    keep = counts > 0
    return values[keep], counts[keep] / a.size


def rd_curve(
    values: Any,
    p: Any,
    betas: Sequence[float] | None = None,
    reproduction: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The squared-error rate–distortion curve ``(D, R)`` of the discrete source ``values`` with pmf ``p``.

    ``reproduction`` is the output alphabet (default: a grid of 401 points spanning the values, finer than
    the source's own spacing); ``betas`` default to a log-spaced sweep covering roughly 0–4 bits at unit
    variance. Distortions are sorted decreasing (rates increasing).

    >>> x = np.linspace(-5, 5, 201); p = np.exp(-x**2 / 2); p /= p.sum()
    >>> D, R = rd_curve(x, p, betas=[2.0, 8.0])
    >>> [abs(float(r - 0.5 * np.log2(1 / d))) < 1e-3 for d, r in zip(D, R)]  # the Gaussian R(D)
    [True, True]
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    pm = _check_pmf(p)
    if v.shape != pm.shape:
        raise ValueError(f"values and p must have the same length; got {v.size} and {pm.size}")
    var = float(np.sum(pm * (v - np.sum(pm * v)) ** 2))
    if reproduction is None:
        y = np.linspace(v.min(), v.max(), 401)
    else:
        y = np.asarray(reproduction, dtype=np.float64).ravel()
    if betas is None:
        betas = np.geomspace(0.6, 2000.0, 28) / max(var, 1e-300)
    dm = (v[:, None] - y[None, :]) ** 2
    R, D, q = [], [], None
    for b in sorted(float(b) for b in betas):  # increasing β, each warm-started from the last
        r, d, q = blahut_arimoto(pm, dm, b, init=q)
        R.append(r)
        D.append(d)
    R, D = np.array(R), np.array(D)
    order = np.argsort(-D)
    return D[order], R[order]


def distortion_at_rate(values: Any, p: Any, rate: float, reproduction: Any = None) -> float:
    """``D(R)`` of a discrete squared-error source at one ``rate``: bisection on Blahut–Arimoto's β.

    >>> x = np.linspace(-6, 6, 241); p = np.exp(-x**2 / 2); p /= p.sum()
    >>> round(distortion_at_rate(x, p, 2.0), 5)  # the Gaussian bound is 0.0625
    0.0625
    """
    r = _check_rate(rate)
    v = np.asarray(values, dtype=np.float64).ravel()
    pm = _check_pmf(p)
    if v.shape != pm.shape:
        raise ValueError(f"values and p must have the same length; got {v.size} and {pm.size}")
    var = float(np.sum(pm * (v - np.sum(pm * v)) ** 2))
    if r == 0 or not var > 0:
        return var
    if reproduction is None:
        y = np.linspace(v.min(), v.max(), 401)
    else:
        y = np.asarray(reproduction, dtype=np.float64).ravel()
    dm = (v[:, None] - y[None, :]) ** 2
    # β is minus the slope of R(D) in nats; on a Gaussian curve β = 1/(2D) = 2^(2R)/(2σ²), so
    # dR/d(ln β) = 1/(2 ln 2). Start there and solve R(ln β) = rate by the secant method, warm-starting
    # every Blahut–Arimoto run from the previous output distribution.
    t0 = 2 * r * math.log(2) - math.log(2 * var)
    r0, d0, q = blahut_arimoto(pm, dm, math.exp(t0))
    t1 = t0 + (r - r0) * 2 * math.log(2)
    for _ in range(40):
        r1, d1, q = blahut_arimoto(pm, dm, math.exp(t1), init=q)
        if abs(r1 - r) < 1e-6:
            return d1
        slope = (r1 - r0) / (t1 - t0) if t1 != t0 else 1 / (2 * math.log(2))
        if not slope > 1e-6:
            slope = 1 / (2 * math.log(2))
        t0, r0 = t1, r1
        t1 = t1 + max(-3.0, min(3.0, (r - r1) / slope))
    raise ValueError(f"rate={rate} bits could not be reached on this source (is it above its entropy?)")


# --------------------------------------------------------------------------------------------------------
# Reverse water-filling and bit allocation


@dataclass(frozen=True)
class WaterFilling:
    """Reverse water-filling over independent Gaussian components.

    ``level`` is the water level θ; component ``i`` gets distortion ``min(θ, σᵢ²)`` and rate
    ``½ log2(σᵢ² / Dᵢ)`` (zero for the components under the water: they are not sent at all).
    """

    level: float
    distortions: np.ndarray
    rates: np.ndarray

    @property
    def total_rate(self) -> float:
        return float(self.rates.sum())

    @property
    def total_distortion(self) -> float:
        return float(self.distortions.sum())


def reverse_water_filling(
    variances: Any, rate: float | None = None, distortion: float | None = None
) -> WaterFilling:
    """Optimal split of a total ``rate`` (bits) or total ``distortion`` over independent Gaussians.

    Minimises ``Σ Dᵢ`` subject to ``Σ Rᵢ = rate`` (or the reverse) with ``Dᵢ(Rᵢ) = σᵢ² 2^(−2Rᵢ)``: every
    component is quantized to the same error θ, except those whose variance is already below θ, which get
    no bits (Cover & Thomas 2006, Thm 10.3.3). Give exactly one of ``rate`` and ``distortion``.

    >>> wf = reverse_water_filling([4.0, 1.0, 0.25], rate=2.0)
    >>> round(wf.level, 4), np.round(wf.rates, 4).tolist()
    (0.5, [1.5, 0.5, 0.0])
    """
    var = np.asarray(variances, dtype=np.float64).ravel()
    if var.size < 1 or not np.all(np.isfinite(var)) or np.any(var <= 0):
        raise ValueError("variances must be a non-empty array of positive finite numbers")
    if (rate is None) == (distortion is None):
        raise ValueError("give exactly one of rate= or distortion=")

    def result(theta: float) -> WaterFilling:
        d = np.minimum(theta, var)
        return WaterFilling(theta, d, 0.5 * np.log2(var / d))

    if distortion is not None:
        total = _check_positive(distortion, "distortion")
        if total >= var.sum():
            return result(float(var.max()))
        lo, hi = 0.0, float(var.max())
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if np.minimum(mid, var).sum() < total else (lo, mid)
        return result(0.5 * (lo + hi))
    r = _check_rate(rate)
    if r == 0:
        return result(float(var.max()))
    # the rate is decreasing in θ; search log θ
    lo, hi = math.log(float(var.max())) - 2 * r * math.log(2) - 1, math.log(float(var.max()))
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        rr = float(np.sum(0.5 * np.log2(var / np.minimum(math.exp(mid), var))))
        lo, hi = (mid, hi) if rr > r else (lo, mid)
    return result(math.exp(0.5 * (lo + hi)))


def _check_sizes(sizes: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(sizes, Mapping) or not sizes:
        raise TypeError("sizes must be a non-empty mapping {layer_name: number_of_weights}")
    out = {}
    for k, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v <= 0:
            raise ValueError(f"sizes[{k!r}] must be a positive integer number of weights; got {v!r}")
        out[str(k)] = int(v)
    return out


def continuous_bit_allocation(
    sizes: Mapping[str, int],
    sensitivities: Mapping[str, float],
    budget_bpw: float,
    lo: float = 0.0,
    hi: float = 16.0,
) -> dict[str, float]:
    """Reverse water-filling in the form a network needs: real-valued bits per layer.

    Layer ``i`` (``nᵢ`` weights) is modelled as losing ``nᵢ·sᵢ·2^(−2bᵢ)`` at ``bᵢ`` bits per weight (its
    error falls 6 dB per bit, times a sensitivity ``sᵢ``). Minimising the total subject to
    ``Σ nᵢbᵢ = budget·Σ nᵢ`` equalises the per-weight loss ``sᵢ 2^(−2bᵢ)`` — the water level — so
    ``bᵢ = ½ log2(sᵢ/θ)``, clipped to ``[lo, hi]``: a layer 4× as sensitive gets one more bit.

    >>> b = continuous_bit_allocation({"a": 100, "b": 100}, {"a": 4.0, "b": 1.0}, 3.0)
    >>> {k: round(v, 6) for k, v in b.items()}
    {'a': 3.5, 'b': 2.5}
    """
    n = _check_sizes(sizes)
    if set(sensitivities) != set(n):
        raise ValueError("sensitivities must have exactly the same layer names as sizes")
    s = {k: _check_positive(sensitivities[k], f"sensitivities[{k!r}]") for k in n}
    budget = _check_positive(budget_bpw, "budget_bpw")
    if not lo <= budget <= hi:
        raise ValueError(f"budget_bpw must lie in [lo, hi] = [{lo}, {hi}]; got {budget_bpw}")
    total = sum(n.values())

    def bits(log_theta: float) -> dict[str, float]:
        return {k: min(hi, max(lo, 0.5 * (math.log2(s[k]) - log_theta))) for k in n}

    logs = [math.log2(v) for v in s.values()]
    a, b = min(logs) - 2 * hi - 2, max(logs) - 2 * lo + 2
    for _ in range(200):
        mid = 0.5 * (a + b)
        avg = sum(n[k] * v for k, v in bits(mid).items()) / total
        a, b = (mid, b) if avg > budget else (a, mid)
    return bits(0.5 * (a + b))


@dataclass
class BitPlan:
    """A per-layer bit-width plan; ``bits`` is ``{layer_name: bits}`` for ``qcourse.nn.quantize_model``."""

    bits: dict[str, int]
    sizes: dict[str, int]
    budget_bpw: float
    predicted_loss: float
    uniform_loss: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def average_bits(self) -> float:
        """Weight-count-weighted average of the planned bit widths (code bits, before scales)."""
        total = sum(self.sizes.values())
        return sum(self.sizes[k] * b for k, b in self.bits.items()) / total

    def counts(self) -> dict[int, int]:
        """How many layers get each bit width."""
        out: dict[int, int] = {}
        for b in self.bits.values():
            out[b] = out.get(b, 0) + 1
        return dict(sorted(out.items()))


def _check_losses(loss: Mapping[str, Mapping[int, float]], names: Sequence[str]) -> tuple[dict, list[int]]:
    if not isinstance(loss, Mapping) or set(loss) != set(names):
        raise ValueError("loss must map exactly the layer names of sizes to {bits: predicted_loss}")
    choices = sorted({int(b) for v in loss.values() for b in v})
    out = {}
    for k in names:
        row = loss[k]
        if sorted(int(b) for b in row) != choices:
            raise ValueError(f"loss[{k!r}] must give a loss for every bit width {choices}; got {sorted(row)}")
        vals = {int(b): float(v) for b, v in row.items()}
        if not all(math.isfinite(v) and v >= 0 for v in vals.values()):
            raise ValueError(f"loss[{k!r}] must hold finite non-negative numbers")
        out[k] = vals
    return out, choices


def uniform_plan(sizes: Mapping[str, int], budget_bpw: float, choices: Sequence[int]) -> dict[str, int]:
    """The sensitivity-blind baseline: every layer at ``budget_bpw`` bits when that is a choice, otherwise
    ``floor`` bits with the budget's remainder spent, in layer order, on every k-th layer (evenly
    interleaved, so no part of the network is favoured).

    >>> uniform_plan({"a": 10, "b": 10, "c": 10, "d": 10}, 2.5, [2, 3, 4])
    {'a': 3, 'b': 2, 'c': 3, 'd': 2}
    """
    n = _check_sizes(sizes)
    budget = _check_positive(budget_bpw, "budget_bpw")
    ch = sorted(int(c) for c in choices)
    if budget in ch:
        return {k: int(budget) for k in n}
    below = [c for c in ch if c < budget]
    above = [c for c in ch if c > budget]
    if not below or not above:
        raise ValueError(f"budget_bpw={budget_bpw} must lie between the smallest and largest choices {ch}")
    b0, b1 = below[-1], above[0]
    frac = (budget - b0) / (b1 - b0)
    names = list(n)
    total = sum(n.values())
    plan = {k: b0 for k in names}
    spent = b0 * total
    # the i-th layer is upgraded when the running count of upgrades falls behind frac·(i + 1)
    upgraded = 0
    for i, k in enumerate(names):
        if upgraded < frac * (i + 1) - 1e-9 and spent + (b1 - b0) * n[k] <= budget * total + 1e-9:
            plan[k] = b1
            spent += (b1 - b0) * n[k]
            upgraded += 1
    return plan


def allocate_bits(
    sizes: Mapping[str, int],
    loss: Mapping[str, Mapping[int, float]],
    budget_bpw: float,
) -> BitPlan:
    """Choose each layer's bit width to meet an average ``budget_bpw`` with the least predicted loss.

    The discrete form of reverse water-filling: ``loss[name][bits]`` is the predicted loss of quantizing
    that layer at that width (for example its output error ``tr(ΔW H ΔWᵀ)`` measured at each width, or a
    sensitivity times that error). Starting from every layer at the smallest width, the plan repeatedly
    buys the upgrade with the largest loss reduction per extra stored bit (over each layer's lower convex
    hull of (bits·size, loss) points) that still fits the budget — a Lagrangian (equal-slope, "same water
    level") solution. If the sensitivity-blind :func:`uniform_plan` predicts a lower total (possible only
    through knapsack granularity), it is returned instead, so the plan is never predicted worse.

    Parameters
    ----------
    sizes
        ``{layer_name: number_of_weights}``.
    loss
        ``{layer_name: {bits: predicted_loss}}``, the same bit widths for every layer.
    budget_bpw
        Average code bits per weight, weighted by layer size.

    Returns
    -------
    BitPlan
        ``plan.bits`` is ``{layer_name: bits}``, ready for ``quantize_model(model, method, bits=plan.bits)``.

    >>> sizes = {"attn": 100, "mlp1": 100, "mlp2": 100}
    >>> mlp = {2: 3.0, 3: 0.8, 4: 0.2}
    >>> loss = {"attn": {2: 90.0, 3: 20.0, 4: 5.0}, "mlp1": mlp, "mlp2": mlp}
    >>> plan = allocate_bits(sizes, loss, 3.0)
    >>> plan.bits, plan.average_bits, round(plan.predicted_loss, 2), plan.uniform_loss
    ({'attn': 4, 'mlp1': 3, 'mlp2': 2}, 3.0, 8.8, 21.6)
    """
    n = _check_sizes(sizes)
    losses, choices = _check_losses(loss, list(n))
    budget = _check_positive(budget_bpw, "budget_bpw")
    if not choices[0] <= budget:
        raise ValueError(f"budget_bpw={budget_bpw} is below the smallest bit width {choices[0]}")
    total = sum(n.values())
    cap = budget * total + 1e-9
    plan = {k: choices[0] for k in n}
    spent = choices[0] * total

    def hull(k: str) -> list[int]:
        # lower convex hull of the (bits, loss) points: upgrades along it have decreasing gain per bit
        pts = [(b, losses[k][b]) for b in choices]
        h: list[tuple[int, float]] = []
        for pt in pts:
            while len(h) >= 2:
                (x1, y1), (x2, y2) = h[-2], h[-1]
                if (y2 - y1) * (pt[0] - x1) >= (pt[1] - y1) * (x2 - x1):
                    h.pop()
                else:
                    break
            h.append(pt)
        return [b for b, _ in h]

    hulls = {k: hull(k) for k in n}
    pos = {k: 0 for k in n}
    while True:
        best, best_gain = None, 0.0
        for k in n:
            if pos[k] + 1 >= len(hulls[k]):
                continue
            b, b2 = hulls[k][pos[k]], hulls[k][pos[k] + 1]
            cost = (b2 - b) * n[k]
            if spent + cost > cap:
                continue
            gain = (losses[k][b] - losses[k][b2]) / cost
            if gain > best_gain:
                best, best_gain = k, gain
        if best is None:
            break
        b, b2 = hulls[best][pos[best]], hulls[best][pos[best] + 1]
        spent += (b2 - b) * n[best]
        plan[best] = b2
        pos[best] += 1
    predicted = sum(losses[k][plan[k]] for k in n)
    notes = []
    uniform_loss = None
    if choices[-1] >= budget:
        uni = uniform_plan(n, budget, choices)
        uniform_loss = sum(losses[k][uni[k]] for k in n)
        if uniform_loss < predicted:
            notes.append("uniform plan predicted lower loss (knapsack granularity); returned it")
            plan, predicted = uni, uniform_loss
    return BitPlan(plan, n, budget, predicted, uniform_loss, notes)


def layer_losses(
    model: torch.nn.Module,
    method: Any,
    choices: Sequence[int],
    hessians: Mapping[str, torch.Tensor],
    group_size: int | None = 64,
    seed: int = 0,
) -> tuple[dict[str, int], dict[str, dict[int, float]]]:
    """Measure each layer's output error at each bit width: the input to :func:`allocate_bits`.

    For every layer named in ``hessians`` (``H = E[x xᵀ]`` of its inputs, e.g. from
    :func:`qcourse.nn.collect_hessians`) and every width in ``choices``, the layer's weight is quantized on
    its own with ``method`` and the loss is ``tr(ΔW H ΔWᵀ)``: the mean squared error the change adds to the
    layer's *outputs* on the calibration data — the error the network feels, not the weight MSE.

    Returns ``(sizes, losses)`` as :func:`allocate_bits` takes them.

    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    >>> from qcourse.nn import collect_hessians
    >>> H = collect_hessians(model, torch.randn(256, 64))
    >>> sizes, losses = layer_losses(model, "rtn", [2, 3, 4], H, group_size=32)
    >>> sizes, losses["0"][2] > losses["0"][3] > losses["0"][4] > 0
    ({'0': 4096, '2': 512}, True)
    """
    from qcourse import methods

    m = methods.get(method)
    modules = dict(model.named_modules())
    sizes: dict[str, int] = {}
    losses: dict[str, dict[int, float]] = {}
    for name, h in hessians.items():
        if name not in modules or not hasattr(modules[name], "weight"):
            raise ValueError(f"hessians names layer {name!r}, which model does not have")
        w = modules[name].weight.detach().float()
        hh = h.to(torch.float64)
        sizes[name] = int(w.numel())
        row = {}
        for b in choices:
            kwargs = {"hessian": h} if m.needs_hessian else {}
            qw = m.quantize(w, bits=b, group_size=group_size, seed=seed, **kwargs)
            dw = (w - qw.dequantize().float()).to(torch.float64)
            row[int(b)] = float(((dw @ hh) * dw).sum())
        losses[name] = row
    return sizes, losses


def sample_rd_rows(
    samples: Any, rates: Sequence[int] = (1, 2, 3), bins: int = 161, max_samples: int = 200_000, seed: int = 0
) -> list[dict[str, float]]:
    """Scalar quantizers on a data sample against that sample's own Blahut–Arimoto bound.

    The sample is scaled to unit variance (so numbers compare with N(0, 1)); a seeded subsample of at most
    ``max_samples`` values is used. For each rate: the Lloyd–Max (1-D k-means) MSE, the best uniform MSE,
    the memoryless bound ``D(R)`` of the sample's histogram (``bins`` bins, :func:`distortion_at_rate`) and
    the Gaussian bound ``2^(−2R)``.

    >>> rows = sample_rd_rows(np.random.default_rng(0).standard_normal(5_000), rates=[2])
    >>> r = rows[0]
    >>> r["lloyd_max"] >= r["bound"], round(r["bound"], 2), abs(r["lloyd_max"] - 0.1175) < 0.01
    (True, 0.06, True)
    """
    a = _as_samples(samples)
    rng = np.random.default_rng(seed)
    if a.size > max_samples:
        a = rng.choice(a, max_samples, replace=False)
    a = (a - a.mean()) / a.std()
    emp = empirical(a)
    values, p = discretize(a, bins=bins)
    rows = []
    for r in rates:
        levels = 2 ** int(r)
        rows.append({
            "rate": float(r),
            "lloyd_max": lloyd_max(emp, levels, tol=1e-9, max_iter=5000).mse(emp),
            "uniform": best_uniform(emp, levels).mse(emp),
            "bound": distortion_at_rate(values, p, float(r)),
            "gaussian_bound": gaussian_distortion_rate(float(r)),
        })
    return rows


# --------------------------------------------------------------------------------------------------------
# Stretch: a bitshift trellis quantizer (the idea of QTIP, Tseng et al. 2024)


def _viterbi(x: np.ndarray, code: np.ndarray, k: int, start: int | None, end: int | None) -> np.ndarray:
    """Least-squared-error path through the bitshift trellis; returns the state after each step."""
    n_states = code.size
    rest = n_states >> k
    cost = np.zeros(n_states) if start is None else np.full(n_states, np.inf)
    if start is not None:
        cost[start] = 0.0
    back = np.empty((x.size, rest), dtype=np.uint8)
    for t in range(x.size):
        # state s' = (s << k | b) mod 2^L: its predecessors differ only in the k bits shifted out
        c = cost.reshape(1 << k, rest)
        arg = np.argmin(c, axis=0)
        back[t] = arg
        cost = np.repeat(c[arg, np.arange(rest)], 1 << k) + (x[t] - code) ** 2
    s = int(np.argmin(cost)) if end is None else end
    states = np.empty(x.size, dtype=np.int64)
    for t in range(x.size - 1, -1, -1):
        states[t] = s
        s = int(back[t, s >> k]) * rest + (s >> k)
    return states


def trellis_quantize(x: Any, state_bits: int = 12, bits: int = 2, seed: int = 0) -> np.ndarray:
    """Quantize a sequence with a tail-biting bitshift trellis: ``bits`` bits per value, no side bits.

    The decoder keeps an ``L = state_bits``-bit state; each value shifts ``bits`` new bits in
    (``state ← (state·2^k + b) mod 2^L``) and outputs ``code[state]``, a seeded pseudo-random N(0, 1) table
    of ``2^L`` entries — so each output depends on an L-bit window of the bit stream (QTIP's "bitshift"
    trellis: Tseng, Sun, Hou, De Sa, arXiv:2406.11235). The encoder finds the bit stream with the least
    squared error by Viterbi's algorithm over the ``2^L`` states. Tail-biting (the state before the first
    value is the state after the last, so no start state is sent) follows QTIP's two-pass approximation:
    Viterbi on the sequence rotated by half to find that state, then Viterbi constrained to it.

    >>> x = np.random.default_rng(0).standard_normal(256)
    >>> y = trellis_quantize(x, state_bits=8)
    >>> y.shape, bool(np.mean((x - y) ** 2) < 0.1175)  # better than the best scalar 2-bit quantizer
    ((256,), True)
    """
    a = _as_samples(x, "x")
    if not (isinstance(state_bits, int) and isinstance(bits, int) and 1 <= bits < state_bits <= 20):
        raise ValueError(
            f"need integers 1 <= bits < state_bits <= 20; got bits={bits}, state_bits={state_bits}"
        )
    if state_bits % bits:
        raise ValueError(f"state_bits must be a multiple of bits (whole steps per window); got {state_bits}")
    if a.size < 2 * state_bits // bits:
        raise ValueError(f"x must hold at least {2 * state_bits // bits} values for tail-biting")
    code = np.random.default_rng(seed).standard_normal(1 << state_bits)
    half = a.size // 2
    rotated = _viterbi(np.roll(a, -half), code, bits, None, None)
    wrap = int(rotated[a.size - half - 1])  # state after the original's last value
    return code[_viterbi(a, code, bits, wrap, wrap)]
