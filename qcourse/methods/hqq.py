"""HQQ — Half-Quadratic Quantization (Badri & Shaji, Mobius Labs 2023), data-free.

HQQ keeps RTN's affine grid but chooses the zero point so that the quantization error is *sparse*: it
minimises ``‖W − Q⁻¹(Q(W))‖_p^p`` with ``p < 1`` (a heavy-tailed, hyper-Laplacian error model that lets a
few weights be far off if most are close); the authors note that L_p with p < 1 "fails with SGD", hence
a proximal solver. Half-quadratic
splitting introduces an auxiliary error ``W_e`` and alternates two closed-form steps, with the scale held
fixed at its min–max value (REFERENCE §1.3):

1. ``W_q = clamp(round(W·s' + z), 0, 2^b − 1)``, ``Ŵ = (W_q − z)/s'``   (``s'`` is the *inverse* scale)
2. ``W_e = shrink_p(W − Ŵ; β)``   — generalized soft-thresholding, :func:`shrink_lp`
3. ``z = mean_group(W_q − (W − W_e)·s')``   — least squares in ``z``, :func:`zero_step`
4. ``β ← κ·β``

Defaults are the authors': ``p = 0.7``, ``β = 10``, ``κ = 1.01``, 20 iterations, early stop on the mean
absolute error ``mean|W − Ŵ|`` (L1 even though the objective is L_p).

Where this implementation follows which version of the authors' code (``hqq/core/optimize.py``):

* ``β ← κ·β`` every iteration, as in HQQ v1.0.0 and the dropbox fork's fix; the ``hqq`` package's current
  default loop (``optimize_weights_proximal_legacy``) lacks that line.
* Keeps the **best** zero point seen (``optimize_weights_proximal_v2`` semantics; the legacy loop returns
  the zero computed in the failing iteration). ``iters`` counts zero updates: the initial zero and each of
  the ``iters`` updates are scored, so nothing returned is unscored.
* Computes in float32 (the package uses fp16 on GPU, fp32 on CPU).
* Initialisation and guards as in ``Quantizer.quantize``: ``s' = (2^b − 1)/(max − min)``, ``s' = 1`` when
  ``max − min ≤ 1e-4``, ``s' ≤ 2·10⁴`` (fp16 safety), ``z = −min·s'``.
* ``round_zero=True`` rounds the zero at initialisation (as the package does) *and* after every zero step
  (a projected step, so the returned zero really is an integer; the package rounds only the init).
* Group sizes: any positive divisor of the grouped dimension (the package requires multiples of 8; its
  recommended range is 16–256). Bits: integers 1–8, and ``1.58``: three codes {0, 1, 2} on the same
  affine grid (the package's definition, ``round(2^1.58 − 1) = 2``), packed base-3 at 1.6 bits per code.

Storage: packed ``b``-bit codes + fp16 scale ``1/s'`` + fp16 (float) zero per group, so
``bits_per_weight = b + 32/g`` (``4.5`` at 4 bits, group 64; ``1.6 + 32/g`` for ternary). After the
solver, scale (rounded up) and zero are rounded to fp16 and the codes recomputed with them, so the stored
codes are exactly the rounding of ``W`` on the stored grid.

``hqq-lsq`` is the seed article's simplified "HQQ": alternate rounding with a least-squares refit of
scale *and* zero per group (:func:`lsq_refit`). It is a different algorithm (L2, scale moves, no
shrinkage), kept as a named comparison.

>>> import torch
>>> from qcourse import methods
>>> w = torch.distributions.StudentT(3.0).sample((64, 256)) * 0.02
>>> qw = methods.get("hqq").quantize(w, bits=3, group_size=64)
>>> qw.bits_per_weight
3.5
>>> len(qw.history) >= 2 and qw.history[0] >= min(qw.history)   # L1 error per scored iterate
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcourse import grouping
from qcourse.affine import AffineQuantizedWeight, check_resolvable, round_scale
from qcourse.methods.base import Method, check_bits, check_weight, parse_options
from qcourse.packing import TERNARY

__all__ = [
    "shrink_lp", "zero_step", "init_minmax", "optimize", "lsq_refit", "HQQResult", "quantize_hqq",
    "HQQ", "HQQLSQ", "METHODS",
]

DEFAULTS: dict[str, Any] = {"p": 0.7, "beta": 10.0, "kappa": 1.01, "iters": 20, "early_stop": True,
                            "tol": 0.0, "axis": 1, "round_zero": False, "optimize": True}


def _check_p_beta(p: Any, beta: Any) -> None:
    if isinstance(beta, bool) or not (isinstance(beta, int | float) and beta > 0):
        raise ValueError(f"beta must be a positive number; got {beta!r}")
    if isinstance(p, bool) or not (isinstance(p, int | float) and 0 < p <= 1):
        raise ValueError(f"p must be in (0, 1]; got {p!r}")


def _check_solver_params(p: Any, beta: Any, kappa: Any, iters: Any) -> None:
    _check_p_beta(p, beta)
    if isinstance(kappa, bool) or not (isinstance(kappa, int | float) and kappa >= 1):
        raise ValueError(f"kappa must be a number ≥ 1; got {kappa!r}")
    if isinstance(iters, bool) or not (isinstance(iters, int) and iters >= 0):
        raise ValueError(f"iters must be a non-negative int; got {iters!r}")


def shrink_lp(x: torch.Tensor, beta: float, p: float = 0.7) -> torch.Tensor:
    """Generalized soft-thresholding, the proximal step of ``|x|^p`` (REFERENCE §1.3).

    ``sign(x)·max(|x| − |x|^(p−1)/β, 0)``; for ``p = 1`` this is the soft threshold
    ``sign(x)·max(|x| − 1/β, 0)``. Small errors are set to zero (they are "explained" by the quantizer),
    large ones are kept almost whole (outliers the L_p model tolerates).

    >>> import torch
    >>> shrink_lp(torch.tensor([-2.0, -0.05, 0.0, 0.05, 2.0]), beta=10.0, p=1.0).tolist()
    [-1.899999976158142, -0.0, 0.0, 0.0, 1.899999976158142]
    >>> round(shrink_lp(torch.tensor([1.0]), beta=10.0, p=0.5).item(), 6)  # 1 − 1^(−0.5)/10
    0.9
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor; got {type(x).__name__}")
    _check_p_beta(p, beta)
    a = x.abs()
    if p == 1:
        return torch.sign(x) * (a - 1.0 / beta).clamp_min(0.0)
    # at x = 0, |x|^(p−1) = inf and the clamp gives 0, which is the correct proximal value
    return torch.sign(x) * (a - (1.0 / beta) * a.pow(p - 1)).clamp_min(0.0)


def zero_step(w: torch.Tensor, w_q: torch.Tensor, w_e: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """The closed-form zero-point update: ``z = mean over each group of (W_q − (W − W_e)·s')``.

    Minimises ``‖(W − W_e) − (W_q − z)/s'‖²`` over ``z`` for fixed codes. Groups are the **rows**
    (the mean is over the last dimension, ``keepdim``), as returned by :func:`qcourse.grouping.to_groups`.

    >>> import torch
    >>> w = torch.tensor([[0.5, 1.0, 1.5]]); w_q = torch.tensor([[1.0, 2.0, 4.0]])
    >>> zero_step(w, w_q, torch.zeros_like(w), torch.tensor([[2.0]])).tolist()   # mean(1−1, 2−2, 4−3)
    [[0.3333333432674408]]
    """
    return torch.mean(w_q - (w - w_e) * scale_inv, dim=-1, keepdim=True)


def _check_bits(bits: Any) -> float:
    if isinstance(bits, bool) or not (bits == TERNARY or (isinstance(bits, int) and 1 <= bits <= 8)):
        raise ValueError(f"bits must be an int from 1 to 8, or 1.58 (ternary), for HQQ; got {bits!r}")
    return bits


def _maxq(bits: float) -> int:
    """Largest code: ``2^b − 1``; ternary (1.58) has the three codes 0, 1, 2, as in the package."""
    return 2 if _check_bits(bits) == TERNARY else 2 ** int(bits) - 1


def init_minmax(w: torch.Tensor, bits: int, round_zero: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """HQQ's min–max start per group (rows of ``w``): inverse scale ``s'`` and float zero ``z``, ``[G, 1]``.

    >>> import torch
    >>> s, z = init_minmax(torch.tensor([[-1.0, 0.0, 2.0], [3.0, 3.0, 3.0]]), bits=2)
    >>> s.flatten().tolist(), z.flatten().tolist()     # 3/3 and −(−1)·1; a flat group gets s' = 1
    ([1.0, 1.0], [1.0, -3.0])
    """
    maxq = _maxq(bits)
    lo = w.amin(dim=-1, keepdim=True)
    hi = w.amax(dim=-1, keepdim=True)
    denom = hi - lo
    scale_inv = maxq / denom
    scale_inv = torch.where(denom.abs() <= 1e-4, torch.ones_like(scale_inv), scale_inv)
    scale_inv = scale_inv.clamp(max=2e4)
    zero = -lo * scale_inv
    return scale_inv, (torch.round(zero) if round_zero else zero)


#: weights per chunk in :func:`optimize` (a chunk's temporaries fit in a core's cache)
_CHUNK = 1 << 16


def _step(w: torch.Tensor, scale_inv: torch.Tensor, z: torch.Tensor, maxq: int, beta: float, p: float
          ) -> tuple[float, torch.Tensor]:
    """One half-quadratic iteration on groups ``w``: ``(Σ|W − Ŵ|, the next zero)``."""
    w_q = torch.round(w * scale_inv + z).clamp(0, maxq)             # 1. codes on the current grid
    e = w - (w_q - z) / scale_inv                                    #    and the error W − Ŵ
    w_e = shrink_lp(e, beta, p)                                      # 2. sparse error
    return float(e.abs().sum()), zero_step(w, w_q, w_e, scale_inv)   # 3. zero point


@dataclass
class HQQResult:
    """What :func:`optimize` returns: codes, the chosen zero, and the error of every scored iterate."""

    codes: torch.Tensor  #: ``[G, g]`` integer codes (float dtype) for the best zero
    zero: torch.Tensor  #: ``[G, 1]`` best zero point
    history: list[float]  #: ``mean|W − Ŵ|`` of the initial zero and of each update that was scored
    best_iter: int  #: index into :attr:`history` of the zero returned


def optimize(w: torch.Tensor, scale_inv: torch.Tensor, zero: torch.Tensor, bits: int, *, p: float = 0.7,
             beta: float = 10.0, kappa: float = 1.01, iters: int = 20, early_stop: bool = True,
             tol: float = 0.0, round_zero: bool = False) -> HQQResult:
    """HQQ's proximal solver on groups ``w`` (``[G, g]``, one group per row); the scale stays fixed.

    Parameters
    ----------
    w, scale_inv, zero
        Groups and their initial inverse scale and zero (``[G, 1]``), e.g. from :func:`init_minmax`.
    bits
        Code width (1–8).
    p, beta, kappa, iters
        L_p exponent, initial β, its growth factor per iteration, number of zero updates.
    early_stop, tol
        Stop at the first iterate whose mean absolute error is not lower than the best by more than
        ``tol``. With or without early stop the best scored iterate is returned.
    round_zero
        Keep the zero point on the integer grid (round after each update).

    Returns
    -------
    HQQResult

    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> w = torch.randn(32, 64, generator=g) ** 3          # heavy tails
    >>> s, z = init_minmax(w, bits=2)
    >>> res = optimize(w, s, z, bits=2)
    >>> res.history[res.best_iter] < res.history[0]        # better than the min–max zero
    True
    """
    maxq = _maxq(bits)
    _check_solver_params(p, beta, kappa, iters)
    w = w.float()
    scale_inv, z = scale_inv.float().expand(w.shape[0], 1), zero.float().expand(w.shape[0], 1)
    # Groups are independent except for the stopping rule (the mean error over all of them), so each
    # iteration runs over chunks of ~64 K weights: the temporaries of the steps stay in cache and are
    # reused, instead of allocating a fresh 64 MB tensor per operation on a 4096×4096 weight.
    rows = max(1, _CHUNK // w.shape[1])
    chunks = [slice(r, r + rows) for r in range(0, w.shape[0], rows)]
    best_err, best_z, best_iter, history = float("inf"), z, 0, []
    for i in range(iters + 1):
        steps = [_step(w[c], scale_inv[c], z[c], maxq, beta, p) for c in chunks]
        err = sum(abs_sum for abs_sum, _ in steps) / w.numel()
        history.append(err)
        if best_err - err > tol or i == 0:
            best_err, best_z, best_iter = err, z, i
        elif early_stop:
            break
        if i == iters:
            break
        z = torch.cat([next_z for _, next_z in steps])
        if round_zero:
            z = torch.round(z)
        beta *= kappa                                                # 4. β ← κβ
    codes = torch.round(w * scale_inv + best_z).clamp_(0, maxq)
    return HQQResult(codes, best_z, history, best_iter)


def lsq_refit(w: torch.Tensor, bits: int, iters: int = 20) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """The seed article's "HQQ": alternate rounding with a least-squares refit of scale and zero.

    Per group (row of ``w``): start from HQQ's min–max ``(s', z)``; then repeat ``q = clamp(round(W·s' + z))``
    and fit ``W ≈ a·q + b`` by least squares (``a = cov(q, W)/var(q)``, ``b = mean(W) − a·mean(q)``), i.e.
    ``s' = 1/a``, ``z = −b/a``. Keeps the best iterate by squared error. (The article's sketch re-rounds with
    the intercept ``b`` in place of the zero ``−b/a`` and never tracks the error; this is the idea done
    consistently.) A group whose codes are all equal keeps its previous parameters.

    Returns ``(scale_inv, zero, history)`` with ``history`` the mean squared error of each iterate.

    >>> import torch
    >>> w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    >>> s, z, hist = lsq_refit(w, bits=3)
    >>> min(hist) <= hist[0]
    True
    """
    maxq = _maxq(bits)
    w = w.float()
    s, z = init_minmax(w, bits)
    best_err = torch.full((w.shape[0], 1), float("inf"))
    best_s, best_z = s.clone(), z.clone()
    history: list[float] = []
    for _ in range(iters + 1):
        q = torch.round(w * s + z).clamp(0, maxq)
        err = ((w - (q - z) / s) ** 2).mean(dim=-1, keepdim=True)
        history.append(float(err.mean()))
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        qc = q - q.mean(dim=-1, keepdim=True)
        var = (qc * qc).sum(dim=-1, keepdim=True)
        a = (qc * w).sum(dim=-1, keepdim=True) / var.clamp_min(1e-12)
        b = w.mean(dim=-1, keepdim=True) - a * q.mean(dim=-1, keepdim=True)
        ok = (var > 0) & (a > 0)
        s = torch.where(ok, 1.0 / a.clamp_min(1e-12), s)
        z = torch.where(ok, -b / a.clamp_min(1e-12), z)
    return best_s, best_z, history


#: HQQ's step is at least 1/2e4 = 5e-5 (``init_minmax``'s float16 guard) and its zero is stored in float16:
#: a weight whose values all lie below float16's smallest normal number cannot be resolved at all
_TOO_SMALL = 2.0**-14


def _check_resolvable(w: torch.Tensor) -> None:
    check_resolvable(w, _TOO_SMALL, "HQQ's grid (step ≥ 5e-5, float16 zero point)")


def _store(w: torch.Tensor, groups: torch.Tensor, scale_inv: torch.Tensor, zero: torch.Tensor, bits: float,
           group_size: grouping.GroupSize, axis: int) -> AffineQuantizedWeight:
    """Round scale and zero to fp16, recompute codes with them, and pack."""
    scale16 = round_scale(1.0 / scale_inv, torch.float16)
    zero16 = zero.to(torch.float16)
    if not torch.isfinite(zero16).all():
        raise ValueError("w has a group whose zero point overflows float16; rescale the weight")
    codes = torch.round(groups / scale16 + zero16.float()).clamp_(0, _maxq(bits))
    codes = grouping.from_groups(codes, tuple(w.shape), group_size, axis)
    return AffineQuantizedWeight(codes.to(torch.uint8), bits, group_size, axis, scale16, zero16)


def _hqq(w: torch.Tensor, bits: float, group_size: int | None, opts: dict[str, Any]
         ) -> tuple[AffineQuantizedWeight, HQQResult | None]:
    """HQQ on validated arguments: group, initialise, optimise, store."""
    _check_resolvable(w)
    axis = opts["axis"]
    groups = grouping.to_groups(w.float(), group_size, axis).contiguous()
    scale_inv, zero = init_minmax(groups, bits, round_zero=opts["round_zero"])
    result = None
    if opts["optimize"]:
        result = optimize(groups, scale_inv, zero, bits, p=opts["p"], beta=opts["beta"], kappa=opts["kappa"],
                          iters=opts["iters"], early_stop=opts["early_stop"], tol=opts["tol"],
                          round_zero=opts["round_zero"])
        zero = result.zero
    qw = _store(w, groups, scale_inv, zero, bits, group_size, axis)
    qw.history = [] if result is None else result.history
    return qw, result


class HQQ(Method):
    """HQQ proximal solver; options ``p, beta, kappa, iters, early_stop, tol, axis, round_zero, optimize``.

    ``hessian`` and ``seed`` are ignored (HQQ is data-free and deterministic). The returned weight carries
    ``history`` (the solver's per-iterate mean absolute error).
    """

    def check_options(self, opts: dict[str, Any]) -> None:
        grouping.check_layout((1, 1), None, opts["axis"])
        if "p" in opts:
            _check_solver_params(opts["p"], opts["beta"], opts["kappa"], opts["iters"])
        elif opts["iters"] < 0:
            raise ValueError(f"iters must be a non-negative int; got {opts['iters']!r}")

    def check_group(self, shape: tuple[int, int], group_size: Any, opts: dict[str, Any]) -> None:
        grouping.check_layout(shape, group_size, opts["axis"])   # groups may run down the outputs (axis 0)

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> AffineQuantizedWeight:
        return _hqq(w, bits, group_size, opts)[0]


def quantize_hqq(w: torch.Tensor, bits: float, group_size: int | None = 64, **options: Any
                 ) -> tuple[AffineQuantizedWeight, HQQResult | None]:
    """HQQ end to end on a weight: group, initialise, optimise, store. Options as in ``DEFAULTS``.

    Returns the stored weight and the solver's :class:`HQQResult` (``None`` when ``optimize=False``,
    which is min–max RTN with HQQ's float zero). ``methods.get("hqq").quantize`` returns only the weight.
    """
    hqq = METHODS["hqq"]
    opts = parse_options(options, DEFAULTS, "hqq")
    hqq.check_options(opts)
    bits = check_bits(bits, hqq.supported_bits, "hqq")
    check_weight(w)
    hqq.check_group(tuple(w.shape), group_size, opts)
    return _hqq(w.detach(), bits, group_size, opts)


class HQQLSQ(HQQ):
    """The seed article's least-squares variant; options ``iters`` (20) and ``axis`` (1)."""

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> AffineQuantizedWeight:
        _check_resolvable(w)
        axis = opts["axis"]
        groups = grouping.to_groups(w.float(), group_size, axis).contiguous()
        scale_inv, zero, history = lsq_refit(groups, bits, opts["iters"])
        qw = _store(w, groups, scale_inv, zero, bits, group_size, axis)
        qw.history = history
        return qw


METHODS = {
    "hqq": HQQ(name="hqq", supported_bits=(1, TERNARY, 2, 3, 4, 5, 6, 7, 8),
               description="half-quadratic quantization: L_p (p<1) proximal zero-point solver, float zero",
               defaults=dict(DEFAULTS)),
    "hqq-lsq": HQQLSQ(name="hqq-lsq", supported_bits=(1, TERNARY, 2, 3, 4, 5, 6, 7, 8),
                      description="seed article's simplified HQQ: least-squares refit of scale and zero",
                      defaults={"iters": 20, "axis": 1}),
}
