"""AQLM: additive quantization with learned codebooks (Egiazarian et al., "Extreme Compression of Large
Language Models via Additive Quantization", ICML 2024, arXiv 2401.06118).

Representation (paper §3.1, Eq. 2). Each output row of ``W`` (``[out, in]``) is cut into groups of ``g``
consecutive input weights (default 8). ``M`` codebooks ``C_1 … C_M`` each hold ``K = 2^B`` vectors of length
``g``; group ``j`` of row ``i`` is the *sum* of one vector from each codebook, times a per-row scale::

    Ŵ[i, g·j : g·(j+1)] = s_i · Σ_m C_m[b_{i,j,m}]

so a group costs ``M·B`` bits of codes, i.e. ``M·B/g`` bits per weight (2×8 at ``g = 8`` is 2 bits). The
codebooks (``M·K·g`` fp16 values) and the scales (one fp16 per row) are paid once per layer; see
:func:`bits_per_weight`. With two 256-entry codebooks a group can take ``256² = 65,536`` values, the same
count as one 2¹⁶-entry codebook, for 512 stored vectors instead of 65,536.

Objective (paper Eq. 1, 3, 6–8). Codes, codebooks and scales minimise the layer's output error on
calibration inputs ``X``, ``‖(W − Ŵ)X‖²``, computed from ``H = E[x xᵀ]`` alone as
``Σ_i (w_i − ŵ_i) H (w_i − ŵ_i)ᵀ`` (:func:`objective`); ``X`` is never materialised. Rows are independent
given the codebooks, so everything below is vectorised over all rows of a layer.

Algorithm (paper Alg. 1, the authors' ``Vahe1994/AQLM`` code):

1. **Initialisation by residual k-means** (:func:`residual_kmeans_init`): scales ``s_i = ‖w_i‖₂``; k-means
   (:mod:`qcourse.kmeans`) on all groups of the normalised rows gives codebook 1 and its codes; k-means on
   what is left gives codebook 2, and so on.
2. **Alternation** (:func:`aqlm_quantize`), for ``rounds`` rounds or until a round lowers the objective by
   less than ``rel_tol`` of its value:

   * codebook update (:func:`update_codebooks`): codes fixed, the objective is a convex quadratic in the
     codebooks; the paper approximates its minimiser with 100 Adam steps per round, here it is solved by
     conjugate gradients on the normal equations with a block-Jacobi preconditioner (the exact least
     squares solution the Adam steps approach, in a handful of iterations). Then the per-row scales are
     refit in closed form (:func:`update_scales`), ``s_i = ⟨v_i, w_i⟩_H / ⟨v_i, v_i⟩_H``.
   * code update by **beam search** (:func:`beam_search`, paper §3.2, ``beam_search_xtx.py``): input groups in
     a random order, and within a group the codebooks in a random order; for every hypothesis in the beam
     every one of the ``K`` replacement codes is scored by the exact change of the objective (from the
     ``g`` columns ``H[:, group]`` and the block ``H[group, group]``), and the ``beam_size`` best hypotheses
     per row are kept. Groups are visited one after another because they interact through the
     off-diagonal blocks of ``H``; all rows and all ``K`` candidates are scored at once.

   Codebooks and scales are stored in fp16 and kept on the fp16 grid *while* optimising, so the stored layer
   is exactly the one whose objective is logged. Every step is accepted only if it does not raise the
   objective (float64 check), so the logged objective never increases.

Storage (:class:`AQLMWeight`) follows the authors' ``aqlm`` inference package: codes ``[out, in/g, M]``,
codebooks ``[M, 2^B, 1, g]``, scales ``[out, 1, 1, 1]``; :meth:`AQLMWeight.aqlm_tensors` writes them in its
exact layout (int8 codes for ``B ≤ 8``, int16 for ``B = 16``).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(1024, 64, generator=g) @ torch.randn(64, 64, generator=g) / 8
>>> H = (x.T @ x / 1024).double()
>>> w = torch.randn(32, 64, generator=g)
>>> res = aqlm_quantize(w, H, n_codebooks=2, codebook_bits=4, rounds=3, seed=0)
>>> res.history == sorted(res.history, reverse=True)     # the objective never increases
True
>>> bits_per_weight(32, 64, n_codebooks=2, codebook_bits=4)   # codes 1 + codebooks 2 + scales 0.25
3.25
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from qcourse import packing
from qcourse.kmeans import assign, kmeans
from qcourse.methods.base import Method, QuantizedWeight, check_hessian, check_weight

__all__ = [
    "AQLM", "AQLMResult", "AQLMWeight", "METHODS", "aqlm_quantize", "beam_search", "bits_per_weight",
    "bits_per_weight_layers", "decode", "objective", "parse_config", "residual_kmeans_init",
    "row_objective", "update_codebooks", "update_scales",
]


# ----------------------------------------------------------------------------------------------------------
# configuration and bit accounting
# ----------------------------------------------------------------------------------------------------------

def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        allowed = f"an int ≥ {lo}" if hi is None else f"an int in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return value


def _check_codebook_bits(b: Any) -> int:
    if isinstance(b, bool) or not isinstance(b, int) or not (1 <= b <= 8 or b == 16):
        raise ValueError(f"codebook_bits must be an int in 1..8 (codes bit-packed) or 16 (int16 codes); "
                         f"got {b!r}")
    return b


def parse_config(config: str) -> tuple[int, int]:
    """``"MxB"`` (AQLM's notation: ``M`` codebooks of ``B`` bits) → ``(M, B)``.

    >>> parse_config("2x8"), parse_config("1x16")
    ((2, 8), (1, 16))
    >>> parse_config("2-8")
    Traceback (most recent call last):
    ...
    ValueError: config must look like 'MxB' (e.g. '2x8', '1x16'); got '2-8'
    """
    parts = config.lower().split("x") if isinstance(config, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"config must look like 'MxB' (e.g. '2x8', '1x16'); got {config!r}")
    m, b = int(parts[0]), int(parts[1])
    _check_int("config's number of codebooks M", m, 1)
    _check_codebook_bits(b)
    return m, b


def bits_per_weight(out_features: int, in_features: int, n_codebooks: int = 2, codebook_bits: int = 8,
                    in_group_size: int = 8, codebook_value_bits: int = 16, scale_bits: int = 16) -> float:
    """Honest bits per weight of one AQLM layer (paper App. H, Eq. 10).

    ``[codes out·(in/g)·M·B + codebooks M·2^B·g·16 + scales 16·out] / (out·in)``.

    >>> round(bits_per_weight(28672, 8192), 3)                 # the paper's Llama-2-70B gate_proj at 2×8
    2.002
    >>> round(bits_per_weight(256, 256), 3)                    # a small layer pays a whole bit for codebooks
    3.062
    >>> round(bits_per_weight(256, 768, 1, 16), 1)             # 1×16: 65,536 codewords for 196,608 weights
    44.7
    """
    _check_int("out_features", out_features, 1)
    _check_int("in_features", in_features, 1)
    _check_int("n_codebooks", n_codebooks, 1)
    _check_int("codebook_bits", codebook_bits, 1, 32)
    _check_int("in_group_size", in_group_size, 1)
    if in_features % in_group_size:
        raise ValueError(f"in_group_size={in_group_size} must divide in_features={in_features}")
    codes = out_features * (in_features // in_group_size) * n_codebooks * codebook_bits
    books = n_codebooks * 2**codebook_bits * in_group_size * codebook_value_bits
    return (codes + books + scale_bits * out_features) / (out_features * in_features)


def bits_per_weight_layers(shapes: list[tuple[int, int]], n_codebooks: int = 2, codebook_bits: int = 8,
                           in_group_size: int = 8) -> float:
    """Bits per weight over several ``(out, in)`` layers: total stored bits / total weights.

    >>> round(bits_per_weight_layers([(28672, 8192)]), 3)
    2.002
    """
    if not shapes:
        raise ValueError("shapes must not be empty")
    total = sum(bits_per_weight(o, i, n_codebooks, codebook_bits, in_group_size) * o * i for o, i in shapes)
    return total / sum(o * i for o, i in shapes)


# ----------------------------------------------------------------------------------------------------------
# decoding and the objective
# ----------------------------------------------------------------------------------------------------------

def decode(codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """``Ŵ[i, g·j:g·(j+1)] = s_i · Σ_m C_m[codes[i, j, m]]``.

    ``codes`` ``[out, J, M]`` (any integer dtype, values in ``[0, K)``), ``codebooks`` ``[M, K, g]``,
    ``scales`` ``[out]`` or ``None`` (all 1). Returns ``[out, J·g]`` in the codebooks' dtype.

    >>> import torch
    >>> books = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[10.0, 10.0], [20.0, 20.0]]])    # M=2, K=2, g=2
    >>> decode(torch.tensor([[[0, 1], [1, 0]]]), books, torch.tensor([2.0])).tolist()
    [[42.0, 40.0, 20.0, 22.0]]
    """
    out, J, M = codes.shape
    g = codebooks.shape[-1]
    idx = codes.long()
    acc = codebooks[0][idx[..., 0]]
    for m in range(1, M):
        acc = acc + codebooks[m][idx[..., m]]
    w = acc.reshape(out, J * g)
    return w if scales is None else w * scales.to(w.dtype)[:, None]


def row_objective(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Per-row output error ``(w_i − ŵ_i) H (w_i − ŵ_i)ᵀ`` in float64, ``[out]``."""
    d = (w.double() - w_hat.double())
    return ((d @ hessian.double()) * d).sum(1)


def objective(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """``‖(W − Ŵ)X‖²`` per calibration sample: ``tr((W − Ŵ) H (W − Ŵ)ᵀ)`` with ``H = E[x xᵀ]`` (float64).

    >>> import torch
    >>> objective(torch.ones(2, 2), torch.zeros(2, 2), 2 * torch.eye(2))
    8.0
    """
    return float(row_objective(w, w_hat, hessian).sum())


def _fp16(t: torch.Tensor) -> torch.Tensor:
    """Round to the fp16 grid, keeping the working dtype (what is stored is exactly what is optimised)."""
    return t.to(torch.float16).to(t.dtype)


# ----------------------------------------------------------------------------------------------------------
# initialisation
# ----------------------------------------------------------------------------------------------------------

def residual_kmeans_init(w: torch.Tensor, n_codebooks: int, codebook_bits: int, in_group_size: int = 8,
                         kmeans_iters: int = 10, seed: int = 0, normalize: bool = True,
                         max_points_per_centroid: int | None = None, kmeans_init: str | None = None,
                         progress: bool = False
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AQLM's initialisation: row scales ``‖w_i‖₂``, then k-means on the groups of the normalised rows, then
    k-means on the residual, ``M`` times.

    Returns ``(codes [out, J, M] int64, codebooks [M, K, g], scales [out])``, codebooks and scales already
    on the fp16 grid (in ``w``'s dtype). ``normalize=False`` skips the scales (all 1) and clusters the raw
    groups. ``kmeans_init`` defaults to k-means++ up to 4,096 entries and random points above (as the
    reference does for every size). ``max_points_per_centroid`` fits each k-means on a seeded random subset
    of at most that many points per centroid (the reference's ``init_max_points_per_centroid``), then
    assigns every group to the nearest centroid. Needs at least ``K = 2^B`` groups (``out·in/g ≥ K``): a
    65,536-entry codebook cannot be fitted to a layer with fewer groups.

    >>> import torch
    >>> w = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    >>> codes, books, s = residual_kmeans_init(w, 2, 4)
    >>> codes.shape, books.shape, s.shape
    (torch.Size([16, 4, 2]), torch.Size([2, 16, 8]), torch.Size([16]))
    """
    out, inp = w.shape
    g, K = in_group_size, 2**codebook_bits
    n_points = out * (inp // g)
    if n_points < K:
        raise ValueError(
            f"a {n_codebooks}x{codebook_bits} codebook has {K} entries but this {out}x{inp} layer has only "
            f"{n_points} groups of {g}; use fewer codebook bits (e.g. 2x8) for a layer this small"
        )
    scales = _fp16(w.norm(dim=1)) if normalize else torch.ones(out, dtype=w.dtype)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))   # an all-zero row keeps scale 1
    resid = (w / scales[:, None]).reshape(n_points, g)
    init = kmeans_init or ("k-means++" if K <= 4096 else "random")
    codes = torch.empty(n_points, n_codebooks, dtype=torch.int64)
    books = torch.empty(n_codebooks, K, g, dtype=w.dtype)
    gen = torch.Generator().manual_seed(int(seed))
    for m in range(n_codebooks):
        fit = resid
        if max_points_per_centroid is not None and n_points > max_points_per_centroid * K:
            fit = resid[torch.randperm(n_points, generator=gen)[:max_points_per_centroid * K]]
        km = kmeans(fit, K, n_iter=kmeans_iters, tol=1e-4, init=init, seed=seed + m, progress=progress)
        books[m] = _fp16(km.centroids)
        labels, _ = assign(resid, books[m])
        codes[:, m] = labels
        resid = resid - books[m][labels]
    return codes.reshape(out, inp // g, n_codebooks), books, scales


# ----------------------------------------------------------------------------------------------------------
# code update: beam search
# ----------------------------------------------------------------------------------------------------------

def beam_search(w: torch.Tensor, hessian: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor,
                codes: torch.Tensor, beam_size: int = 1, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-choose every code to lower ``Σ_i (w_i − ŵ_i) H (w_i − ŵ_i)ᵀ`` by beam search (paper §3.2).

    Starting from ``codes`` (``[out, J, M]``), the input groups are visited in a random order (natural order
    when ``generator`` is ``None``) and, within a group, the ``M`` codebooks in a random order. At each visit,
    each of the (at most) ``beam_size`` hypotheses per row is extended by every one of the ``K`` codes of that
    codebook at that group, scored exactly, and the ``beam_size`` best per row are kept. The current codes
    are always among the candidates, so the best hypothesis never gets worse; with ``beam_size ≥ K^(J·M)``
    every combination is kept and the search is exhaustive.

    All arithmetic is in ``w``'s dtype (float64 for exact comparisons, float32 for speed).

    Returns ``(codes [out, J, M] int64, per-row objective [out])`` of the best hypothesis.
    """
    out, inp = w.shape
    _, J, M = codes.shape
    K, g = codebooks.shape[1], codebooks.shape[2]
    dt = w.dtype
    H = hessian.to(dt)
    C = codebooks.to(dt)
    s = scales.to(dt)
    s2 = s * s
    beam_codes = codes.long().unsqueeze(0).clone()                      # [T, out, J, M]
    R = (w - decode(codes, C, s)).unsqueeze(0)                          # residual of every hypothesis
    losses = ((R[0] @ H) * R[0]).sum(1).unsqueeze(0)                    # [T, out]
    rows = torch.arange(out)

    def order(n: int) -> list[int]:
        if generator is None:
            return list(range(n))
        return torch.randperm(n, generator=generator).tolist()

    for j in order(J):
        sl = slice(j * g, (j + 1) * g)
        Hjj = H[sl, sl]
        Q = R @ H[:, sl]                                                # (H r)_j per hypothesis [T, out, g]
        for m in order(M):
            Cm = C[m]                                                   # [K, g]
            norms = ((Cm @ Hjj) * Cm).sum(1)                            # C[c]ᵀ H_jj C[c], [K]
            old = beam_codes[:, :, j, m]                                # [T, out]
            part_old = Cm[old] * s[None, :, None]                       # [T, out, g]
            part_h = part_old @ Hjj
            q = Q + part_h                                              # (H r_without)_j
            base = losses + 2 * (part_old * q).sum(-1) - (part_h * part_old).sum(-1)
            cand = base[..., None] - 2 * s[None, :, None] * (q @ Cm.T) + s2[None, :, None] * norms
            T = cand.shape[0]
            if T == 1 and beam_size == 1:
                # greedy (the default): update the one hypothesis in place instead of gathering copies
                best1, new1 = cand[0].min(1)
                delta1 = part_old[0] - Cm[new1] * s[:, None]
                beam_codes[0, :, j, m] = new1
                R[0, :, sl] += delta1
                Q[0] += delta1 @ Hjj
                losses = best1[None]
                continue
            flat = cand.permute(1, 0, 2).reshape(out, T * K)            # [out, T·K]
            keep = min(beam_size, T * K)
            if keep == 1:
                best, idx = flat.min(1, keepdim=True)
            else:
                best, idx = torch.topk(flat, keep, dim=1, largest=False, sorted=True)
            src, new_code = (idx // K).T, (idx % K).T                   # [keep, out]
            beam_codes = beam_codes[src, rows[None, :]]                 # [keep, out, J, M]
            beam_codes[:, :, j, m] = new_code
            delta = part_old[src, rows[None, :]] - Cm[new_code] * s[None, :, None]   # change of r on group j
            R = R[src, rows[None, :]]
            R[:, :, sl] += delta
            Q = Q[src, rows[None, :]] + delta @ Hjj
            losses = best.T.contiguous()
    return beam_codes[0], losses[0]


# ----------------------------------------------------------------------------------------------------------
# codebook and scale update: least squares
# ----------------------------------------------------------------------------------------------------------

def _scatter_codes(Y: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, K: int) -> torch.Tensor:
    """Adjoint of decoding: ``(Aᵀ Y)_m[k] = Σ_{i,j: b_ijm = k} s_i Y[i, group j]``, ``[M, K, g]``."""
    out, J, M = codes.shape
    g = Y.shape[1] // J
    Yg = (Y * scales[:, None]).reshape(out * J, g)
    res = torch.zeros(M, K, g, dtype=Y.dtype)
    flat = codes.reshape(out * J, M)
    for m in range(M):
        res[m].index_add_(0, flat[:, m], Yg)
    return res


def update_codebooks(w: torch.Tensor, hessian: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor,
                     scales: torch.Tensor, iters: int = 10) -> torch.Tensor:
    """Least-squares codebooks for fixed codes and scales (preconditioned conjugate gradients).

    With codes and scales fixed, ``Ŵ = A(C)`` is linear in the codebooks ``C`` and the objective
    ``tr((W − A C) H (W − A C)ᵀ)`` is a convex quadratic; its minimiser solves ``Aᵀ(A(C) H) = Aᵀ(W H)``.
    Conjugate gradients started at the current ``codebooks`` lower the objective at every iteration; the
    preconditioner is the block diagonal of the normal matrix (for codeword ``k`` of codebook ``m``,
    ``Σ_{i,j: b_ijm = k} s_i² H_jj``), which is exact when ``M = 1`` and ``H`` is block diagonal — then one
    iteration gives the weighted means of k-means' update step. Codewords no row uses are left unchanged.

    Returns the new codebooks ``[M, K, g]`` (not rounded to fp16).
    """
    out, J, M = codes.shape
    K, g = codebooks.shape[1], codebooks.shape[2]
    dt = w.dtype
    H = hessian.to(dt)
    s = scales.to(dt)
    blocks = torch.stack([H[j * g:(j + 1) * g, j * g:(j + 1) * g] for j in range(J)])   # [J, g, g]
    flat = codes.reshape(out, J, M).long()
    P = torch.zeros(M, K, g, g, dtype=dt)
    s2 = (s * s)[:, None].expand(out, J).reshape(-1, 1, 1)
    Hrep = blocks[None].expand(out, J, g, g).reshape(out * J, g, g)
    for m in range(M):
        P[m].index_add_(0, flat[..., m].reshape(-1), s2 * Hrep)
    tr = P.diagonal(dim1=-2, dim2=-1).sum(-1)                           # [M, K]
    used = tr > 0
    damp = 1e-8 * tr.clamp_min(0).max().clamp_min(1e-30)
    eye = torch.eye(g, dtype=dt)
    P = torch.where(used[..., None, None], P + damp * eye, eye.expand_as(P))
    L, _ = torch.linalg.cholesky_ex(P)

    def precond(r: torch.Tensor) -> torch.Tensor:
        return torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1) * used[..., None]

    def normal(c: torch.Tensor) -> torch.Tensor:
        return _scatter_codes(decode(flat, c, s) @ H, flat, s, K)

    x = codebooks.to(dt).clone()
    r = _scatter_codes((w - decode(flat, x, s)) @ H, flat, s, K)       # Aᵀ(W − A x) H = b − N x
    z = precond(r)
    p = z.clone()
    rz = (r * z).sum()
    for _ in range(iters):
        if rz <= 0:
            break
        Np = normal(p)
        pNp = (p * Np).sum()
        if pNp <= 0:
            break
        alpha = rz / pNp
        x = x + alpha * p
        r = r - alpha * Np
        z = precond(r)
        rz_new = (r * z).sum()
        p = z + (rz_new / rz) * p
        rz = rz_new
    return x


def update_scales(w: torch.Tensor, hessian: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor
                  ) -> torch.Tensor:
    """Closed-form per-row scales ``s_i = ⟨v_i, w_i⟩_H / ⟨v_i, v_i⟩_H`` with ``v_i`` the unscaled decoded row.

    A row whose ``⟨v_i, v_i⟩_H`` is 0 gets scale 1. Returns ``[out]`` (not rounded to fp16).

    >>> import torch
    >>> w, books = torch.tensor([[2.0, 4.0]]), torch.tensor([[[1.0, 2.0]]])
    >>> update_scales(w, torch.eye(2), torch.tensor([[[0]]]), books)
    tensor([2.])
    """
    H = hessian.to(w.dtype)
    v = decode(codes, codebooks.to(w.dtype))
    vH = v @ H
    num, den = (vH * w).sum(1), (vH * v).sum(1)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))


# ----------------------------------------------------------------------------------------------------------
# the whole algorithm
# ----------------------------------------------------------------------------------------------------------

@dataclass
class AQLMResult:
    """What :func:`aqlm_quantize` found; codebooks and scales are on the fp16 grid."""

    codes: torch.Tensor  #: ``[out, in/g, M]`` int64
    codebooks: torch.Tensor  #: ``[M, 2^B, g]``
    scales: torch.Tensor  #: ``[out]``
    history: list[float] = field(default_factory=list)  #: objective after init and after every round
    init_objective: float = 0.0  #: objective right after residual k-means
    rounds: int = 0  #: rounds run

    @property
    def objective(self) -> float:
        return self.history[-1]

    def dequantize(self) -> torch.Tensor:
        return decode(self.codes, self.codebooks, self.scales)


def aqlm_quantize(w: torch.Tensor, hessian: torch.Tensor, n_codebooks: int = 2, codebook_bits: int = 8,
                  in_group_size: int = 8, beam_size: int = 1, rounds: int = 8, rel_tol: float = 1e-3,
                  kmeans_iters: int = 10, max_points_per_centroid: int | None = None, cg_iters: int = 8,
                  train_scales: bool = True, seed: int = 0,
                  dtype: torch.dtype = torch.float32, progress: bool = False) -> AQLMResult:
    """Quantize ``w`` (``[out, in]``) with AQLM for the calibration second moment ``hessian = E[x xᵀ]``.

    Parameters
    ----------
    w, hessian
        Weight ``[out, in]`` and ``H`` ``[in, in]`` (``torch.eye(in)`` gives plain weight MSE).
    n_codebooks, codebook_bits, in_group_size
        ``M``, ``B`` and ``g``: ``M`` codebooks of ``2^B`` vectors of length ``g``.
    beam_size
        Hypotheses kept per row by :func:`beam_search` (the reference's CLI default is 1, greedy).
    rounds, rel_tol
        At most ``rounds`` rounds of (codebooks + scales, then codes); stop early when a round lowers the
        objective by less than ``rel_tol`` times its value.
    kmeans_iters, max_points_per_centroid
        Lloyd iterations per codebook at initialisation, and the optional subsample size per centroid
        (:func:`residual_kmeans_init`).
    cg_iters
        Conjugate-gradient iterations per codebook update.
    train_scales
        Refit the row scales every round (``False``: scales fixed at 1, no normalisation — with
        ``M = 1`` and ``H = I`` the algorithm is then exactly k-means on the groups).
    seed
        Seeds k-means and the random visiting order of the beam search.
    dtype
        Working precision (float32 by default; float64 for exact comparisons in tests).
    progress
        Show a ``tqdm`` bar over rounds.

    Returns
    -------
    AQLMResult
        Codes, fp16-valued codebooks and scales, and the objective history (never increasing).
    """
    check_weight(w)
    out, inp = w.shape
    check_hessian(hessian, inp, required=True, method="aqlm")
    M = _check_int("n_codebooks", n_codebooks, 1)
    B = _check_codebook_bits(codebook_bits)
    g = _check_int("in_group_size", in_group_size, 1)
    if inp % g:
        raise ValueError(f"in_group_size={g} must divide in_features={inp}")
    _check_int("beam_size", beam_size, 1)
    _check_int("rounds", rounds, 0)
    _check_int("kmeans_iters", kmeans_iters, 0)
    _check_int("cg_iters", cg_iters, 0)
    if not isinstance(rel_tol, int | float) or rel_tol < 0:
        raise ValueError(f"rel_tol must be a non-negative number; got {rel_tol!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64; got {dtype}")
    W = w.to(dtype)
    H = hessian.to(dtype)
    H64 = hessian.double()
    if max_points_per_centroid is not None:
        _check_int("max_points_per_centroid", max_points_per_centroid, 1)
    codes, books, scales = residual_kmeans_init(W, M, B, g, kmeans_iters, seed, normalize=train_scales,
                                                max_points_per_centroid=max_points_per_centroid)
    gen = torch.Generator().manual_seed(int(seed))

    def loss(c: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> float:
        return objective(W, decode(c, b, s), H64)

    current = loss(codes, books, scales)
    history = [current]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=rounds, desc=f"AQLM {M}x{B} {out}x{inp}", leave=False)
    done = 0
    for _ in range(rounds):
        start = current
        new_books = _fp16(update_codebooks(W, H, codes, books, scales, cg_iters))
        value = loss(codes, new_books, scales)
        if value <= current:
            books, current = new_books, value
        if train_scales:
            new_scales = _fp16(update_scales(W, H, codes, books))
            value = loss(codes, books, new_scales)
            if value <= current:
                scales, current = new_scales, value
        new_codes, _ = beam_search(W, H, books, scales, codes, beam_size, gen)
        value = loss(new_codes, books, scales)
        if value <= current:
            codes, current = new_codes, value
        history.append(current)
        done += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(objective=f"{current:.4g}")
        if start - current <= rel_tol * start:
            break
    if bar is not None:
        bar.close()
    return AQLMResult(codes, books, scales, history, history[0], done)



# ----------------------------------------------------------------------------------------------------------
# storage and the method
# ----------------------------------------------------------------------------------------------------------

def _state(tensors: Any, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if name not in tensors:
        raise ValueError(f"state tensor {name!r} is missing; got {sorted(tensors)}")
    t = tensors[name]
    if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != tuple(shape):
        got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"state tensor {name!r} must be {dtype} of shape {tuple(shape)}; got {got}")
    return t


class AQLMWeight(QuantizedWeight):
    """AQLM's storage: ``M·B``-bit codes per group of ``g`` inputs, ``M`` fp16 codebooks of ``2^B × g``, one
    fp16 scale per output row.

    Codes of ``B ≤ 8`` bits are bit-packed (:mod:`qcourse.packing`; 8-bit codes are plain bytes, as in the
    ``aqlm`` package); 16-bit codes are ``int16`` (two's complement of the unsigned code, as ``aqlm`` stores
    them). ``storage_bits`` counts exactly these tensors.

    >>> import torch
    >>> qw = AQLMWeight(torch.zeros(4, 2, 2, dtype=torch.long), torch.ones(2, 256, 8), torch.ones(4))
    >>> qw.shape, qw.storage_bits == 4 * 2 * 2 * 8 + 2 * 256 * 8 * 16 + 4 * 16
    ((4, 16), True)
    >>> qw.dequantize()[0, :3].tolist()
    [2.0, 2.0, 2.0]
    """

    def __init__(self, codes: torch.Tensor, codebooks: torch.Tensor, scales: torch.Tensor,
                 codebook_bits: int | None = None) -> None:
        if codes.ndim != 3 or codebooks.ndim != 3 or scales.ndim != 1:
            raise ValueError("codes must be [out, in/g, M], codebooks [M, 2^B, g] and scales [out]; got "
                             f"{tuple(codes.shape)}, {tuple(codebooks.shape)}, {tuple(scales.shape)}")
        out, J, M = codes.shape
        K, g = codebooks.shape[1], codebooks.shape[2]
        B = codebook_bits if codebook_bits is not None else int(math.log2(K))
        _check_codebook_bits(B)
        if codebooks.shape[0] != M or K != 2**B or scales.shape[0] != out:
            raise ValueError(f"inconsistent shapes: codes {tuple(codes.shape)}, codebooks "
                             f"{tuple(codebooks.shape)} (need [M={M}, 2^B, g]), scales {tuple(scales.shape)}")
        codes = codes.long()
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= K):
            raise ValueError(f"codes must lie in [0, {K}); got range "
                             f"[{int(codes.min())}, {int(codes.max())}]")
        self.shape = (int(out), int(J * g))
        self.n_codebooks, self.codebook_bits, self.in_group_size = int(M), int(B), int(g)
        self._n_codes = codes.numel()
        if B <= 8:
            self.packed = packing.pack(codes.flatten().to(torch.uint8), B)
        else:
            self.packed = torch.where(codes >= 2**15, codes - 2**16, codes).to(torch.int16).flatten()
        self.codebooks = codebooks.to(torch.float16)
        self.scales = scales.to(torch.float16)
        #: objective after init and after each round, when made by :class:`AQLM` (not saved)
        self.history: list[float] = []

    def codes(self) -> torch.Tensor:
        """The codes ``[out, in/g, M]`` (int64, values in ``[0, 2^B)``)."""
        out, inp = self.shape
        shape = (out, inp // self.in_group_size, self.n_codebooks)
        if self.codebook_bits <= 8:
            return packing.unpack(self.packed, self.codebook_bits, self._n_codes).long().reshape(shape)
        return (self.packed.long() % 2**16).reshape(shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return decode(self.codes(), self.codebooks.float(), self.scales.float()).to(dtype)

    @property
    def storage_bits(self) -> int:
        return (self.packed.numel() * self.packed.element_size() * 8 + self.codebooks.numel() * 16
                + self.scales.numel() * 16)

    @property
    def config(self) -> str:
        """AQLM's name for the configuration, e.g. ``"2x8"``."""
        return f"{self.n_codebooks}x{self.codebook_bits}"

    def aqlm_tensors(self, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
        """The tensors of an ``aqlm.inference.QuantizedLinear`` (``out_group_size = 1``), in its layout.

        ``codes`` ``[out, in/g, M]`` int8 (``B ≤ 8``; an unsigned code ``c ≥ 128`` stored as ``c − 256``) or
        int16 (``B = 16``); ``codebooks`` ``[M, 2^B, 1, g]``; ``scales`` ``[out, 1, 1, 1]``.
        """
        c = self.codes()
        half = 2 ** (8 if self.codebook_bits <= 8 else 16)
        dt = torch.int8 if self.codebook_bits <= 8 else torch.int16
        c = torch.where(c >= half // 2, c - half, c).to(dt)
        return {"codes": c, "codebooks": self.codebooks.to(dtype).unsqueeze(2),
                "scales": self.scales.to(dtype).reshape(-1, 1, 1, 1)}

    def to_aqlm_linear(self, bias: torch.Tensor | None = None) -> torch.nn.Module:
        """An ``aqlm.inference.QuantizedLinear`` (the authors' ``aqlm`` package) holding this weight.

        Raises ``ModuleNotFoundError`` with the install command when ``aqlm`` is missing.
        """
        try:
            from aqlm.inference import QuantizedLinear
        except ModuleNotFoundError as exc:
            raise ModuleNotFoundError(
                "to_aqlm_linear needs the authors' package: pip install --no-deps aqlm==1.1.7 "
                "(and numba for its CPU kernels)") from exc
        out, inp = self.shape
        layer = QuantizedLinear(inp, out, in_group_size=self.in_group_size, out_group_size=1,
                                num_codebooks=self.n_codebooks, nbits_per_codebook=self.codebook_bits,
                                bias=bias is not None)
        t = self.aqlm_tensors()
        with torch.no_grad():
            layer.codes.data = t["codes"]
            layer.codebooks.data = t["codebooks"]
            layer.scales.data = t["scales"]
            if bias is not None:
                layer.bias.data = bias.detach().to(torch.float32).clone()
        return layer

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        meta = {"class": f"{type(self).__module__}:{type(self).__qualname__}", "shape": list(self.shape),
                "n_codebooks": self.n_codebooks, "codebook_bits": self.codebook_bits,
                "in_group_size": self.in_group_size}
        return {"codes": self.packed, "codebooks": self.codebooks, "scales": self.scales}, meta

    @classmethod
    def from_state(cls, tensors: Any, meta: Any) -> AQLMWeight:
        out, inp = (int(v) for v in meta["shape"])
        M, B, g = int(meta["n_codebooks"]), int(meta["codebook_bits"]), int(meta["in_group_size"])
        _check_codebook_bits(B)
        if g < 1 or inp % g:
            raise ValueError(f"meta in_group_size={g} must divide in_features={inp}")
        n = out * (inp // g) * M
        books = _state(tensors, "codebooks", torch.float16, (M, 2**B, g))
        scales = _state(tensors, "scales", torch.float16, (out,))
        if B <= 8:
            packed = _state(tensors, "codes", torch.uint8, (packing.packed_nbytes(n, B),))
            codes = packing.unpack(packed, B, n)
        else:
            codes = _state(tensors, "codes", torch.int16, (n,)).long() % 2**16
        return cls(codes.long().reshape(out, inp // g, M), books, scales, B)


_DEFAULTS: dict[str, Any] = {
    "config": "", "in_group_size": 8, "beam_size": 1, "rounds": 8, "rel_tol": 1e-3, "kmeans_iters": 10,
    "max_points_per_centroid": 0, "cg_iters": 8, "train_scales": True, "progress": False,
}


def _resolve(bits: float, opts: dict[str, Any]) -> tuple[int, int, int]:
    """``(M, B, g)`` from ``bits`` and the options: ``config`` ``"MxB"`` or, by default, ``M×8`` bits."""
    g = _check_int("in_group_size", opts["in_group_size"], 1)
    if opts["config"]:
        M, B = parse_config(opts["config"])
        if M * B != bits * g:
            raise ValueError(f"config {opts['config']!r} with in_group_size={g} stores {M * B / g:g} bits of "
                             f"codes per weight, but bits={bits}; choose a config with M·B = bits·g")
        return M, B, g
    if (bits * g) % 8:
        raise ValueError(f"bits={bits} with in_group_size={g} is not a whole number of 8-bit codebooks; "
                         "pass config='MxB' with M·B = bits·g")
    return int(bits * g // 8), 8, g


class AQLM(Method):
    """AQLM; ``bits`` = bits of codes per weight: ``bits=2`` is ``2x8`` (two 256-entry codebooks, ``g = 8``).

    Options: ``config`` (``"MxB"``, e.g. ``"1x16"``; must give ``M·B = bits·g``), ``in_group_size``,
    ``beam_size``, ``rounds``, ``rel_tol``, ``kmeans_iters``, ``max_points_per_centroid`` (0 = all points),
    ``cg_iters``, ``train_scales``, ``progress`` (see :func:`aqlm_quantize`). Needs ``hessian``.
    ``group_size`` does not apply (the row scale is AQLM's only per-row parameter; its groups are the
    codebook vectors of ``in_group_size``) and is ignored. :attr:`~QuantizedWeight.bits_per_weight` of the
    result includes codebooks and scales, so it is above ``bits``.
    """

    #: ``bench quality`` and other callers pass no group size to AQLM
    uses_group_size = False

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["config"]:
            parse_config(opts["config"])
        for name in ("in_group_size", "beam_size"):
            _check_int(name, opts[name], 1)
        for name in ("rounds", "kmeans_iters", "max_points_per_centroid", "cg_iters"):
            _check_int(name, opts[name], 0)
        if opts["rel_tol"] < 0:
            raise ValueError(f"rel_tol must be non-negative; got {opts['rel_tol']!r}")

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> AQLMWeight:
        M, B, g = _resolve(bits, opts)
        assert hessian is not None  # Method.quantize refuses None for a method that needs it
        res = aqlm_quantize(w, hessian, M, B, g, beam_size=opts["beam_size"], rounds=opts["rounds"],
                            rel_tol=opts["rel_tol"], kmeans_iters=opts["kmeans_iters"],
                            max_points_per_centroid=opts["max_points_per_centroid"] or None,
                            cg_iters=opts["cg_iters"], train_scales=opts["train_scales"], seed=seed,
                            progress=opts["progress"])
        qw = AQLMWeight(res.codes, res.codebooks, res.scales, B)
        qw.history = res.history
        return qw


METHODS = {
    "aqlm": AQLM(name="aqlm", supported_bits=(1, 2, 3, 4), needs_hessian=True,
                 description="AQLM: additive quantization, M codebooks of 2^B vectors of g inputs",
                 defaults=dict(_DEFAULTS)),
}
