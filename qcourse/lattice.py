"""The E8 lattice and QuIP#'s E8P codebook: 8-dimensional vector quantization at 2 bits per weight.

Rounding each weight on its own quantizes with a cube (the integer grid, normalised second moment
``G = 1/12 ≈ 0.0833``). Rounding eight weights at once to the E8 lattice uses its Voronoi cell instead,
which is rounder (``G ≈ 0.0717``): less squared error for the same density of points. QuIP# (Tseng et al.
2024, "QuIP#: Even Better LLM Quantization with Hadamard Incoherence and Lattice Codebooks",
arXiv 2402.04396) turns this into a 2-bit codebook, **E8P** ("E8 padded"): 2¹⁶ points of the shifted
lattice ``E8 + ¼``, so 16 bits per 8 weights.

Construction (QuIP# §4.2, and its reference code ``lib/codebook/latticee8_padded12.py``):

* ``D̂8 = {x ∈ (Z + ½)⁸ : Σx even}``; ``E8 = D̂8 ∪ (D̂8 + ½)``, hence ``(D̂8 − ¼) ∪ (D̂8 + ¼) = E8 + ¼``.
* Flipping an even number of signs keeps a ``D̂8`` point in ``D̂8``. So ``D̂8`` points are
  *absolute-value patterns* times sign patterns of a fixed parity. E8P takes 256 patterns: the 227 of
  squared norm ≤ 10 plus 29 hand-picked ones of squared norm 12 (five 3/2's and three 1/2's).
* A 16-bit code is ``abs_index << 8 | sign_bits``: 8 bits choose the pattern, the 8 stored sign bits' parity
  chooses the shift (even: ``+¼``, odd: ``−¼``), and bit 0 is then flipped if needed to restore the
  parity the lattice requires. Sign bit ``k`` belongs to coordinate ``(0, 2, 4, 6, 1, 3, 5, 7)[k]`` and a
  pattern with an odd coordinate sum stores its last coordinate negated — the layout of QuIP#'s
  (version 1) packed kernels, reproduced here so the codes mean the same thing.

Encoding is exact nearest-point search, vectorised by structure rather than by brute force over 65 536
entries: for each of the two shifts and each of the 256 patterns the best signs are those of the input,
and if their parity is wrong the cheapest single flip is taken (see :func:`e8p_encode`).

Residual vector quantization (QuIP# §4.3) reaches 3 and 4 bits: ``4 = E8P + E8P`` (residual scaled by
3.45), ``3 = E8P + a 1-bit E8 codebook`` (256 small E8 points, residual scaled by 2.04).

>>> import torch
>>> e8p_codebook().shape, torch.unique(e8p_codebook(), dim=0).shape[0]
(torch.Size([65536, 8]), 65536)
>>> x = torch.randn(1000, 8, generator=torch.Generator().manual_seed(0))
>>> codes, xq = e8p_encode(x)
>>> torch.equal(e8p_decode(codes), xq)
True
"""

from __future__ import annotations

import functools
import itertools

import torch

__all__ = [
    "nearest_dn", "nearest_e8", "e8p_abs_patterns", "e8p_codebook", "e8p_decode", "e8p_encode",
    "e8p_encode_bruteforce", "e81b_codebook", "rvq_encode", "rvq_decode", "RVQ_RESIDUAL_SCALE",
    "OPT_SCALE", "CODE_BITS",
]

#: RMS the input should have before E8P rounding for least Gaussian MSE (QuIP#'s ``opt_scale``), per rate.
OPT_SCALE = {2: 1.03, 3: 0.98, 4: 1.03}
#: Factor the residual is multiplied by before the second codebook, per rate (QuIP#'s ``opt_resid_scale``).
RVQ_RESIDUAL_SCALE = {3: 2.04, 4: 3.45}
#: Stored bits per 8-weight vector, per rate.
CODE_BITS = {2: 16, 3: 24, 4: 32}

# Sign bit k of a code belongs to coordinate _SIGN_COORD[k] (QuIP#'s packed order).
_SIGN_COORD = (0, 2, 4, 6, 1, 3, 5, 7)

# The 29 padding patterns of squared norm 12 (×2: entries are 2|x_i|), as in QuIP#'s current code.
_NORM12_TIMES2 = (
    (3, 1, 1, 1, 3, 3, 3, 3), (1, 3, 1, 1, 3, 3, 3, 3), (1, 1, 3, 1, 3, 3, 3, 3), (1, 1, 1, 3, 3, 3, 3, 3),
    (3, 3, 3, 1, 3, 3, 1, 1), (3, 3, 3, 1, 3, 1, 3, 1), (3, 3, 3, 1, 1, 3, 3, 1), (3, 3, 3, 1, 3, 1, 1, 3),
    (3, 3, 3, 1, 1, 3, 1, 3), (3, 3, 3, 1, 1, 1, 3, 3), (3, 3, 1, 3, 3, 3, 1, 1), (3, 3, 1, 3, 3, 1, 3, 1),
    (3, 3, 1, 3, 1, 3, 3, 1), (3, 3, 1, 3, 3, 1, 1, 3), (3, 3, 1, 3, 1, 3, 1, 3), (3, 3, 1, 3, 1, 1, 3, 3),
    (3, 1, 3, 3, 3, 3, 1, 1), (3, 1, 3, 3, 3, 1, 3, 1), (3, 1, 3, 3, 1, 3, 3, 1), (3, 1, 3, 3, 3, 1, 1, 3),
    (3, 1, 3, 3, 1, 3, 1, 3), (1, 3, 3, 3, 1, 1, 3, 3), (1, 3, 3, 3, 3, 3, 1, 1), (1, 3, 3, 3, 3, 1, 3, 1),
    (1, 3, 3, 3, 1, 3, 3, 1), (1, 3, 3, 3, 3, 1, 1, 3), (1, 3, 3, 3, 1, 3, 1, 3), (1, 1, 3, 3, 1, 3, 3, 3),
    (3, 3, 1, 1, 3, 3, 3, 1),
)


def _check_vectors(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if x.ndim == 0 or x.shape[-1] != 8:
        raise ValueError(f"{name} must have a last axis of length 8 (one E8 vector per row); got shape "
                         f"{tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or Inf")


def nearest_dn(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of ``D_n = {z ∈ Zⁿ : Σz even}`` along the last axis (Conway & Sloane's rule).

    Round every coordinate; if the rounded sum is odd, re-round the coordinate with the largest rounding
    error the other way (the cheapest way to fix the parity).

    >>> nearest_dn(torch.tensor([0.6, 0.45, 0.0, 0.0]))     # (1, 0, 0, 0) has an odd sum
    tensor([1., 1., 0., 0.])
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim == 0:
        raise TypeError("x must be a floating-point torch.Tensor with at least one dimension")
    f = torch.round(x)
    odd = (f.sum(-1) % 2) != 0
    if bool(odd.any()):
        err = x - f
        k = err.abs().argmax(-1, keepdim=True)
        step = torch.where(err.gather(-1, k) >= 0, 1.0, -1.0).to(x.dtype)
        fixed = f.scatter_add(-1, k, step)
        f = torch.where(odd.unsqueeze(-1), fixed, f)
    return f


def nearest_e8(x: torch.Tensor) -> torch.Tensor:
    """Nearest point of the E8 lattice ``D8 ∪ (D8 + ½)`` to each row of ``x`` (``[..., 8]``).

    Conway & Sloane: round to ``D8`` and to the shifted coset ``D8 + ½``; keep the closer.

    >>> nearest_e8(torch.tensor([[0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]]))
    tensor([[0.5000, 0.5000, 0.5000, 0.5000, 0.5000, 0.5000, 0.5000, 0.5000]])
    """
    _check_vectors(x)
    a = nearest_dn(x)
    b = nearest_dn(x - 0.5) + 0.5
    closer_a = ((x - a) ** 2).sum(-1, keepdim=True) <= ((x - b) ** 2).sum(-1, keepdim=True)
    return torch.where(closer_a, a, b)


@functools.cache
def _abs_patterns() -> torch.Tensor:
    # Every half-integer magnitude pattern is |p| for some D̂8 point (one sign flip fixes the sum's
    # parity), so the 227 patterns are those in {½, 3/2, 5/2}⁸ of squared norm ≤ 10, in the lexicographic
    # order QuIP#'s torch.unique gives them.
    small = sorted(p for p in itertools.product((1, 3, 5), repeat=8) if sum(v * v for v in p) <= 40)
    if len(small) != 227:
        raise RuntimeError(f"expected 227 abs patterns of norm² ≤ 10, found {len(small)}")
    table = torch.tensor(small + list(_NORM12_TIMES2), dtype=torch.float64) / 2
    if torch.unique(table, dim=0).shape[0] != 256:
        raise RuntimeError("E8P abs patterns are not distinct")
    return table


def e8p_abs_patterns() -> torch.Tensor:
    """The 256 absolute-value patterns of E8P (``[256, 8]``, float64, entries ½, 3/2, 5/2).

    >>> a = e8p_abs_patterns()
    >>> a.shape, sorted(set((a ** 2).sum(1).tolist()))
    (torch.Size([256, 8]), [2.0, 4.0, 6.0, 8.0, 10.0, 12.0])
    """
    return _abs_patterns().clone()


@functools.cache
def _tables() -> dict[str, torch.Tensor]:
    abs_tab = _abs_patterns()
    odd = (abs_tab.sum(1) % 2) == 1
    base = abs_tab.clone()
    base[odd, 7] = -base[odd, 7]   # now every base row is in D̂8 (even coordinate sum)
    codes = torch.arange(1 << 16)
    bits = (codes.unsqueeze(1) >> torch.arange(8)) & 1            # stored sign bits, [65536, 8]
    parity = bits.sum(1) % 2
    eff = bits.clone()
    eff[:, 0] ^= parity                                            # bit 0 restores the lattice parity
    flip = torch.zeros(1 << 16, 8, dtype=torch.int64)
    flip[:, list(_SIGN_COORD)] = eff                               # sign bit k -> coordinate _SIGN_COORD[k]
    grid = base[codes >> 8] * (1 - 2 * flip).to(torch.float64)
    grid = grid + torch.where(parity == 1, -0.25, 0.25).to(torch.float64).unsqueeze(1)
    return {"grid": grid, "abs": abs_tab, "base": base, "odd": odd,
            "sign_bit": torch.tensor([_SIGN_COORD.index(i) for i in range(8)])}


def e8p_codebook(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """All 2¹⁶ E8P points, row ``c`` decoding code ``c`` (``[65536, 8]``).

    >>> g = e8p_codebook()
    >>> g[0].tolist()                # pattern 0 = all ½, no sign bits, even parity: +¼
    [0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75]
    >>> bool(((g * 4) % 2 == 1).all())        # every coordinate is an odd multiple of ¼: E8 + ¼ shifted
    True
    """
    return _tables()["grid"].to(dtype)


def e8p_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode 16-bit E8P codes (integers in ``[0, 65535]``, any shape) to vectors (``[..., 8]``) by table.

    >>> e8p_decode(torch.tensor([0, 1])).tolist()    # code 1: odd stored parity -> −¼, bit 0 cleared
    [[0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75], [0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]]
    """
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        raise TypeError("codes must be an integer torch.Tensor")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= 1 << 16):
        raise ValueError("codes must lie in [0, 65535] (16-bit E8P codes)")
    return _tables()["grid"].to(dtype)[codes.long()]


def _nearest_signed_pattern(y: torch.Tensor, abs_tab: torch.Tensor, norms: torch.Tensor,
                            odd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each row of ``y``: the nearest ``s ⊙ a`` with ``a`` a row of ``abs_tab`` and ``s`` signs whose
    number of minus signs has the parity ``odd[a]`` (i.e. the nearest point of the signed set).

    Returns the pattern index, the point, and the squared distance. For a fixed pattern the best signs
    copy ``y``'s; when their count of minus signs has the wrong parity, exactly one coordinate must
    flip, and the cheapest is ``argmin_i |y_i|·a_i`` (flipping it costs ``4|y_i|a_i`` of squared distance).
    """
    u = y.abs()
    neg = y < 0
    neg_odd = (neg.sum(-1) % 2) == 1                                   # [N]
    score = torch.addmm(-norms, u, abs_tab.T, alpha=2)                 # [N, 256], larger is nearer
    # cheapest single flip per pattern, min_i u_i·a_i, one coordinate at a time (no [N, 256, 8] temporary)
    abs_t = abs_tab.T.contiguous()
    pen = u[:, :1] * abs_t[0]
    tmp = torch.empty_like(pen)
    for i in range(1, 8):
        torch.mul(u[:, i:i + 1], abs_t[i], out=tmp)
        torch.minimum(pen, tmp, out=pen)
    mismatch = neg_odd.unsqueeze(1) != odd.unsqueeze(0)
    score.sub_(pen.mul_(4).mul_(mismatch))
    j = score.argmax(-1)                                               # [N]
    sign = torch.where(neg, -1.0, 1.0).to(y.dtype)
    need = mismatch.gather(1, j.unsqueeze(1)).squeeze(1)
    chosen = abs_tab[j]
    k = (u * chosen).argmin(-1)
    rows = torch.nonzero(need).squeeze(1)
    sign[rows, k[rows]] = -sign[rows, k[rows]]
    point = sign * chosen
    dist = ((y - point) ** 2).sum(-1)
    return j, point, dist


def _codes_from_points(j: torch.Tensor, point: torch.Tensor, minus_shift: torch.Tensor) -> torch.Tensor:
    """16-bit codes of ``point ∓ ¼`` where ``point`` is a D̂8 point with abs pattern ``j``."""
    t = _tables()
    base = t["base"].to(point.dtype)[j]
    flip = (torch.sign(point) != torch.sign(base)).long()              # even number per row by construction
    weights = (1 << t["sign_bit"]).to(torch.int64)
    eff = (flip * weights).sum(-1)
    signbits = eff ^ minus_shift.long()                                # odd stored parity selects −¼
    return (j.long() << 8) | signbits


def e8p_encode(x: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest E8P point to each row of ``x`` (``[..., 8]``): ``(codes, points)``.

    Exact nearest-point search (ties aside), equal to brute force over all 65 536 entries
    (:func:`e8p_encode_bruteforce`) but about 100× cheaper: the two cosets ``D̂8 ± ¼`` are searched
    separately, and in each only the 256 magnitude patterns are scored (the signs follow from the input).
    ``codes`` are int64 in ``[0, 65535]``; ``points`` have ``x``'s dtype. Rows are processed ``chunk`` at a
    time to bound memory.

    >>> codes, q = e8p_encode(torch.full((1, 8), 0.7))
    >>> q
    tensor([[0.7500, 0.7500, 0.7500, 0.7500, 0.7500, 0.7500, 0.7500, 0.7500]])
    >>> int(codes)
    0
    """
    _check_vectors(x)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive int; got {chunk!r}")
    t = _tables()
    flat = x.reshape(-1, 8)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    abs_tab = t["abs"].to(work)
    norms = (abs_tab ** 2).sum(1)
    codes = torch.empty(flat.shape[0], dtype=torch.int64)
    out = torch.empty(flat.shape, dtype=x.dtype)
    for i in range(0, flat.shape[0], chunk):
        xc = flat[i:i + chunk].to(work)
        n = xc.shape[0]
        # points p + ¼ (even stored parity) and p − ¼ (odd): search p near x − ¼ and near x + ¼, both
        # cosets in one pass (stacked rows: fewer, larger operations)
        j2, pt2, d2 = _nearest_signed_pattern(torch.cat([xc - 0.25, xc + 0.25]), abs_tab, norms, t["odd"])
        j_p, j_m, pt_p, pt_m, d_p, d_m = j2[:n], j2[n:], pt2[:n], pt2[n:], d2[:n], d2[n:]
        use_minus = d_m < d_p
        j = torch.where(use_minus, j_m, j_p)
        pt = torch.where(use_minus.unsqueeze(1), pt_m, pt_p)
        codes[i:i + chunk] = _codes_from_points(j, pt, use_minus)
        out[i:i + chunk] = (pt + torch.where(use_minus, -0.25, 0.25).to(work).unsqueeze(1)).to(x.dtype)
    return codes.reshape(x.shape[:-1]), out.reshape(x.shape)


def e8p_encode_bruteforce(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference nearest E8P point by scoring all 65 536 entries (slow; for tests and teaching).

    >>> x = torch.randn(50, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> torch.allclose(e8p_encode_bruteforce(x)[1], e8p_encode(x)[1])
    True
    """
    _check_vectors(x)
    grid = e8p_codebook(torch.float64)
    flat = x.reshape(-1, 8).to(torch.float64)
    score = 2 * flat @ grid.T - (grid ** 2).sum(1)
    codes = score.argmax(-1)
    return codes.reshape(x.shape[:-1]), grid[codes].to(x.dtype).reshape(x.shape)


@functools.cache
def _e81b() -> torch.Tensor:
    # E8 points of squared norm ≤ 2 (origin, 112 of type (±1, ±1, 0⁶), 128 of type (±½)⁸ with an even
    # number of minus signs) in QuIP#'s order (integer points, then half-integer, each lexicographic),
    # then 15 of the 16 vectors ±2eᵢ (QuIP# leaves out −2e₇ to fit 256 entries).
    ints = sorted(p for p in itertools.product((-1, 0, 1), repeat=8)
                  if sum(v * v for v in p) <= 2 and sum(p) % 2 == 0)
    halves = sorted(tuple(v / 2 for v in p) for p in itertools.product((-1, 1), repeat=8)
                    if sum(p) % 4 == 0)
    twos = [tuple(2 if i == k else 0 for i in range(8)) for k in range(8)]
    twos += [tuple(-2 if i == k else 0 for i in range(8)) for k in range(7)]
    table = torch.tensor([list(map(float, p)) for p in ints + halves + twos], dtype=torch.float64)
    if table.shape[0] != 256:
        raise RuntimeError(f"1-bit E8 codebook must have 256 entries; got {table.shape[0]}")
    return table


def e81b_codebook(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """QuIP#'s 1-bit E8 codebook for the 3-bit residual: 256 E8 points (``[256, 8]``).

    >>> g = e81b_codebook()
    >>> g.shape, int(((g ** 2).sum(1) == 2).sum())          # the 240 roots are all there
    (torch.Size([256, 8]), 240)
    """
    return _e81b().to(dtype)


def _nearest_small(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    score = 2 * x @ grid.T - (grid ** 2).sum(1)
    return score.argmax(-1)


def rvq_encode(x: torch.Tensor, bits: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Residual VQ at ``bits`` ∈ {2, 3, 4} per weight on rows of 8: ``(codes, points)``.

    2 bits: E8P alone. 4 bits: E8P, then E8P again on the residual times 3.45. 3 bits: E8P, then the
    1-bit E8 codebook on the residual times 2.04. ``codes`` is a tuple (one int64 tensor per stage); the
    input should already have the RMS in :data:`OPT_SCALE` (the caller's per-matrix scale).

    >>> x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(0))
    >>> def mse(b):
    ...     return float(((rvq_encode(x * OPT_SCALE[b], b)[1] / OPT_SCALE[b] - x) ** 2).mean())
    >>> [round(mse(b), 2) for b in (2, 3, 4)]      # each extra bit divides the error by about 3
    [0.09, 0.03, 0.01]
    """
    _check_vectors(x)
    if bits not in CODE_BITS:
        raise ValueError(f"bits must be one of {sorted(CODE_BITS)} for E8P residual VQ; got {bits!r}")
    c1, v1 = e8p_encode(x)
    if bits == 2:
        return (c1,), v1
    s = RVQ_RESIDUAL_SCALE[bits]
    resid = (x - v1) * s
    if bits == 4:
        c2, v2 = e8p_encode(resid)
    else:
        grid = _e81b().to(resid.dtype)
        c2 = _nearest_small(resid.reshape(-1, 8), grid).reshape(resid.shape[:-1])
        v2 = grid[c2]
    return (c1, c2), v1 + v2 / s


def rvq_decode(codes: tuple[torch.Tensor, ...], bits: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`rvq_encode`'s codes.

    >>> x = torch.randn(10, 8, generator=torch.Generator().manual_seed(0))
    >>> codes, q = rvq_encode(x, 3)
    >>> torch.allclose(rvq_decode(codes, 3), q)
    True
    """
    if bits not in CODE_BITS:
        raise ValueError(f"bits must be one of {sorted(CODE_BITS)}; got {bits!r}")
    if not isinstance(codes, tuple) or len(codes) != (1 if bits == 2 else 2):
        raise ValueError(f"codes must be a tuple of {1 if bits == 2 else 2} tensors for {bits} bits")
    out = e8p_decode(codes[0], dtype)
    if bits == 4:
        out = out + e8p_decode(codes[1], dtype) / RVQ_RESIDUAL_SCALE[4]
    elif bits == 3:
        out = out + _e81b().to(dtype)[codes[1].long()] / RVQ_RESIDUAL_SCALE[3]
    return out
