"""Fast Walsh–Hadamard transforms and QuIP#'s randomized Hadamard transform (RHT).

A Hadamard matrix ``H`` of order ``n`` has entries ±1 and orthogonal rows, ``H Hᵀ = n I``; ``H/√n`` is
orthogonal. Multiplying by it mixes every coordinate into every other one with equal weight, which is
what incoherence processing needs (QuIP: Chee et al. 2023, arXiv 2307.13304; QuIP#: Tseng et al. 2024,
arXiv 2402.04396): after ``x ↦ H·diag(s)·x`` with random signs ``s`` no coordinate can stay an outlier.

* :func:`fwht` — the fast Walsh–Hadamard transform along the last axis, ``O(n log n)``, orthonormal
  (scale ``1/√n``), Sylvester ordering (the same matrix as ``scipy.linalg.hadamard``). Sizes that are not a
  power of two use ``H_K ⊗ H_p`` with a small Paley Hadamard matrix ``H_K`` (:func:`paley_hadamard`) and a
  Sylvester ``H_p``, as QuIP# does: 576 = 36·16, 768 = 12·64, 1536 = 12·128.
* :func:`hadamard_matrix` — the explicit (orthonormal) matrix that :func:`fwht` multiplies by.
* :func:`random_signs`, :func:`rht`, :func:`inverse_rht` — the randomized transform and its inverse.

>>> import torch
>>> x = torch.randn(3, 576, generator=torch.Generator().manual_seed(0))
>>> y = fwht(x)
>>> torch.allclose(y.norm(dim=-1), x.norm(dim=-1))          # orthonormal: lengths are kept
True
>>> torch.allclose(inverse_fwht(y), x, atol=1e-5)
True
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["is_power_of_two", "paley_hadamard", "paley_orders", "hadamard_factors", "supported_size",
           "hadamard_matrix", "fwht", "fwht_butterfly", "inverse_fwht", "random_signs", "rht", "inverse_rht"]

# Largest small Hadamard order that :func:`hadamard_factors` will look for; QuIP# ships orders up to 172.
_MAX_SMALL_ORDER = 256


def is_power_of_two(n: int) -> bool:
    """``True`` for 1, 2, 4, 8, …

    >>> [k for k in range(1, 20) if is_power_of_two(k)]
    [1, 2, 4, 8, 16]
    """
    return isinstance(n, int) and n > 0 and n & (n - 1) == 0


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> list[list[int]]:
    """``Q_ij = χ(j − i)`` with χ the Legendre symbol mod the prime ``q`` (χ(0) = 0)."""
    squares = {(k * k) % q for k in range(1, q)}
    chi = [0] + [1 if r in squares else -1 for r in range(1, q)]
    return [[chi[(j - i) % q] for j in range(q)] for i in range(q)]


def _paley_kind(order: int) -> tuple[str, int] | None:
    if order >= 4 and _is_prime(order - 1) and (order - 1) % 4 == 3:
        return "I", order - 1
    if order % 2 == 0 and order >= 12 and _is_prime(order // 2 - 1) and (order // 2 - 1) % 4 == 1:
        return "II", order // 2 - 1
    return None


def paley_orders(limit: int = _MAX_SMALL_ORDER) -> list[int]:
    """Orders ``≤ limit`` that :func:`paley_hadamard` builds and that are not powers of two.

    >>> paley_orders(40)
    [12, 20, 24, 28, 36]
    """
    return [k for k in range(3, limit + 1) if not is_power_of_two(k) and _paley_kind(k) is not None]


@functools.cache
def _paley_cached(order: int) -> torch.Tensor:
    kind = _paley_kind(order)
    if kind is None:
        raise ValueError(
            f"order must be q+1 (q prime, q ≡ 3 mod 4) or 2(q+1) (q prime, q ≡ 1 mod 4) for a Paley "
            f"construction; got {order}. Orders up to {_MAX_SMALL_ORDER}: {paley_orders()}"
        )
    name, q = kind
    jac = torch.tensor(_jacobsthal(q), dtype=torch.float64)
    if name == "I":
        # S = [[0, 1ᵀ], [−1, Q]] is skew-symmetric with S Sᵀ = q I, so H = S + I has H Hᵀ = (q+1) I.
        s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        s[0, 1:] = 1
        s[1:, 0] = -1
        s[1:, 1:] = jac
        h = s + torch.eye(q + 1, dtype=torch.float64)
    else:
        # C = [[0, 1ᵀ], [1, Q]] is symmetric (q ≡ 1 mod 4); each entry becomes a 2×2 block.
        c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
        c[0, 1:] = 1
        c[1:, 0] = 1
        c[1:, 1:] = jac
        zero_block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
        sign_block = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
        h = torch.kron((c == 0).to(torch.float64), zero_block) + torch.kron(c, sign_block)
    n = h.shape[0]
    if not torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.float64)):  # the definition, checked exactly
        raise RuntimeError(f"Paley construction of order {order} failed H Hᵀ = nI")
    h.requires_grad_(False)
    return h


def paley_hadamard(order: int) -> torch.Tensor:
    """A ±1 Hadamard matrix of ``order`` by Paley's constructions (float64, ``H Hᵀ = order·I``).

    Paley I: ``order = q + 1`` with ``q`` prime, ``q ≡ 3 (mod 4)`` (12, 20, 24, 44, 48, 60, …).
    Paley II: ``order = 2(q + 1)`` with ``q`` prime, ``q ≡ 1 (mod 4)`` (12, 20, 28, 36, 60, …).

    >>> h = paley_hadamard(36)
    >>> bool((h @ h.T == 36 * torch.eye(36, dtype=torch.float64)).all())
    True
    """
    if isinstance(order, bool) or not isinstance(order, int):
        raise TypeError(f"order must be an int; got {type(order).__name__}")
    return _paley_cached(order).clone()


def hadamard_factors(n: int) -> tuple[int, int]:
    """``(K, p)`` with ``n = K·p``, ``p`` a power of two and ``K`` 1 or the smallest Paley order that fits.

    QuIP# factors a non-power-of-two size as a small Hadamard matrix times a Sylvester one.

    >>> hadamard_factors(4096), hadamard_factors(576), hadamard_factors(1536), hadamard_factors(768)
    ((1, 4096), (36, 16), (12, 128), (12, 64))
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    if is_power_of_two(n):
        return 1, n
    for k in paley_orders():
        if n % k == 0 and is_power_of_two(n // k):
            return k, n // k
    raise ValueError(
        f"size {n} has no Hadamard construction here: it must be 2^k or K·2^k with K a Paley order "
        f"{paley_orders()} (the course's widths 576 = 36·16, 768 = 12·64, 1536 = 12·128 all work)"
    )


def supported_size(n: int) -> bool:
    """Whether :func:`fwht` handles size ``n``.

    >>> supported_size(576), supported_size(100)
    (True, False)
    """
    try:
        hadamard_factors(n)
    except ValueError:
        return False
    return True


def hadamard_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal matrix ``(H_K ⊗ H_p)/√n`` that :func:`fwht` applies (explicit, ``n×n``).

    For a power of two it is Sylvester's matrix (``scipy.linalg.hadamard(n)/√n``).

    >>> hadamard_matrix(2)
    tensor([[ 0.7071,  0.7071],
            [ 0.7071, -0.7071]], dtype=torch.float64)
    """
    k, p = hadamard_factors(n)
    syl = _sylvester(p)
    small = paley_hadamard(k) if k > 1 else torch.ones(1, 1, dtype=torch.float64)
    return (torch.kron(small, syl) / math.sqrt(n)).to(dtype)


def _sylvester(p: int) -> torch.Tensor:
    """The ±1 Sylvester matrix of order ``p`` (a power of two), float64: ``H_2k = [[H, H], [H, −H]]``."""
    syl = torch.ones(1, 1, dtype=torch.float64)
    while syl.shape[0] < p:
        syl = torch.cat([torch.cat([syl, syl], 1), torch.cat([syl, -syl], 1)], 0)
    return syl


@functools.cache
def _sylvester_cached(p: int, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    return (_sylvester(p) * scale).to(dtype)


def _butterfly_stages(src: torch.Tensor, p: int, h_from: int, h_to: int) -> torch.Tensor:
    """Radix-2 stages ``h = h_from, 2·h_from, … < h_to`` of the unnormalised transform on a 2-D ``src``.

    A stage pairs entries ``h`` apart inside blocks of ``2h`` and replaces ``(a, b)`` by ``(a + b, a − b)``.
    Two buffers are swapped so each stage is one pass over memory. May return ``src`` itself (modified).
    """
    rows = src.shape[0]
    dst = torch.empty_like(src)
    h = h_from
    while h < h_to:
        s = src.view(rows, p // (2 * h), 2, h)
        d = dst.view(rows, p // (2 * h), 2, h)
        torch.add(s[:, :, 0], s[:, :, 1], out=d[:, :, 0])
        torch.sub(s[:, :, 0], s[:, :, 1], out=d[:, :, 1])
        src, dst = dst, src
        h *= 2
    return src


def fwht_butterfly(x: torch.Tensor) -> torch.Tensor:
    """The textbook radix-2 butterfly: orthonormal Sylvester transform along the last axis (power of two).

    ``log₂ n`` stages of ``n`` additions/subtractions, then one scaling by ``1/√n``: ``n log₂ n`` operations
    instead of the ``n²`` of a matrix–vector product. :func:`fwht` computes the same thing faster by doing
    every four stages as one small dense product (:func:`_sylvester_scaled`, which BLAS runs from cache).

    >>> fwht_butterfly(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    tensor([ 5., -1., -2.,  0.])
    """
    _check_input(x)
    n = x.shape[-1]
    if not is_power_of_two(n):
        raise ValueError(f"fwht_butterfly needs a power-of-two last axis; got {n} (use fwht for K·2^k sizes)")
    flat = x.reshape(-1, n).clone()
    return (_butterfly_stages(flat, n, 1, n) / math.sqrt(n)).reshape(x.shape)


# Largest Sylvester factor applied as one dense product (16: 3 passes of 16 multiply–adds per element at
# n = 4096, against 2 passes of 64 with radix 64 — 48 instead of 128 operations, and still BLAS-shaped).
_RADIX = 16
# Rows transformed at a time, so that a chunk (rows × n floats) stays in the CPU cache.
_CHUNK_ELEMENTS = 1 << 17


def _radix_factors(p: int, radix: int | None = None) -> list[int]:
    """``p`` (a power of two) as factors ``≤ radix``, the smallest first: ``4096 → [16, 16, 16]``.

    >>> _radix_factors(4096), _radix_factors(128), _radix_factors(1)
    ([16, 16, 16], [8, 16], [])
    """
    radix = radix or _RADIX
    factors = []
    while p > radix:
        factors.append(radix)
        p //= radix
    return ([p] if p > 1 else []) + factors


def _sylvester_scaled(flat: torch.Tensor, p: int, scale: float) -> torch.Tensor:
    """``scale · flat @ H_p`` (±1 Sylvester, ``p`` a power of two) for a 2-D ``flat``, as a new tensor.

    ``H_p = H_{f_1} ⊗ … ⊗ H_{f_r}`` with every ``f ≤ 16`` (:func:`_radix_factors`): viewed as an array of
    shape ``(f_1, …, f_r)``, each row gets ``H_f`` along each axis in turn, one small dense product per axis
    (the last axis by ``y @ H_f``, the others by a batched ``H_f @ y``), ``n·Σf`` multiply–adds instead of
    the ``n²`` of the dense matrix. Rows go in chunks so every pass over a chunk hits the cache; ``scale``
    rides on the first product.
    """
    rows = flat.shape[0]
    factors = _radix_factors(p)
    if len(factors) <= 1:
        return flat @ _sylvester_cached(p, flat.dtype, scale)
    out = torch.empty_like(flat)
    chunk = max(1, _CHUNK_ELEMENTS // p)
    for i in range(0, rows, chunk):
        c = flat[i:i + chunk]
        m = c.shape[0]
        y = c.reshape(-1, factors[-1]) @ _sylvester_cached(factors[-1], flat.dtype, scale)
        inner = factors[-1]                       # size of the axes already transformed
        for k in range(len(factors) - 2, -1, -1):
            f = factors[k]
            h = _sylvester_cached(f, flat.dtype)
            target = out[i:i + m].view(m, f, inner) if k == 0 else None
            y = torch.matmul(h, y.view(-1, f, inner), out=target)
            inner *= f
    return out


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh–Hadamard transform along the last axis: ``x @ hadamard_matrix(n).T``.

    Any leading dimensions are a batch. For ``n = K·p`` (``p`` a power of two) the cost per vector is
    ``O(n log p + K·n)``. The Sylvester matrix is symmetric, so for powers of two ``fwht`` is its own
    inverse; with a Paley factor use :func:`inverse_fwht`.

    >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0]))
    tensor([0.5000, 0.5000, 0.5000, 0.5000])
    """
    return _transform(x, transpose=False)


def inverse_fwht(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`fwht`: ``x @ hadamard_matrix(n)`` (the matrix is orthogonal).

    >>> inverse_fwht(fwht(torch.arange(12.0))).round().abs()
    tensor([ 0.,  1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9., 10., 11.])
    """
    return _transform(x, transpose=True)


def _check_input(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor; got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension (the transform runs along the last)")


def _transform(x: torch.Tensor, transpose: bool) -> torch.Tensor:
    _check_input(x)
    n = x.shape[-1]
    k, p = hadamard_factors(n)
    flat = x.reshape(-1, n)
    if k == 1:
        out = _sylvester_scaled(flat, p, 1 / math.sqrt(n))
    else:
        # (H_K ⊗ H_p) x: view x as a K×p matrix X (K the slow index); the product is H_K X H_pᵀ.
        rows = flat.shape[0]
        out = _sylvester_scaled(flat.reshape(rows * k, p), p, 1 / math.sqrt(n)).view(rows, k, p)
        small = _paley_cached(k).to(x.dtype)
        out = (small.T if transpose else small) @ out
    return out.reshape(x.shape)


def random_signs(n: int, seed: int) -> torch.Tensor:
    """``n`` independent uniform ±1 signs (float32) from ``seed``: the ``s`` of ``x ↦ H·diag(s)·x``.

    >>> random_signs(6, seed=0)
    tensor([-1.,  1.,  1., -1.,  1.,  1.])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int; got {n!r}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=g).to(torch.float32) * 2 - 1


def rht(x: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Randomized Hadamard transform along the last axis: ``x ↦ H·diag(s)·x`` (orthogonal).

    >>> s = random_signs(8, seed=1)
    >>> x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    >>> torch.allclose(inverse_rht(rht(x, s), s), x, atol=1e-6)
    True
    """
    _check_signs(x, signs)
    return fwht(x * signs.to(x.dtype))


def inverse_rht(y: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rht`: ``y ↦ diag(s)·Hᵀ·y``."""
    _check_signs(y, signs)
    return inverse_fwht(y) * signs.to(y.dtype)


def _check_signs(x: torch.Tensor, signs: torch.Tensor) -> None:
    if not isinstance(signs, torch.Tensor) or signs.ndim != 1:
        raise ValueError("signs must be a 1-D tensor of ±1")
    if not isinstance(x, torch.Tensor) or x.ndim == 0 or x.shape[-1] != signs.shape[0]:
        raise ValueError(
            f"signs must have one entry per element of x's last axis; got {tuple(signs.shape)} for x of "
            f"shape {tuple(getattr(x, 'shape', ()))}"
        )
    if not bool(((signs == 1) | (signs == -1)).all()):
        raise ValueError("signs must contain only +1 and -1")
