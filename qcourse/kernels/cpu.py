"""Packed GEMV / small-batch GEMM on the CPU with numba: the weight is read packed, never decoded to floats.

At batch 1 a linear layer reads every weight once and does two flops with it, so its time is the bytes read
divided by the memory bandwidth: a 4-bit weight is 8× fewer bytes than float32 and can be up to 8× faster.
Each kernel here streams the packed bytes row by row and unpacks them with shifts and masks in registers:

* :func:`gemm_affine` — ``int4`` / ``int2`` (and 1- and 8-bit) codes with a scale and zero per group
  (:class:`~qcourse.affine.AffineQuantizedWeight`). Per group it accumulates ``Σ q·x`` and uses
  ``Σ (q − z)·x·s = s·(Σ q·x − z·Σ x)`` with ``Σ x`` per group computed once per call, so the inner loop is
  one multiply-add per code.
* :func:`gemm_ternary` — trits in the 2-bit packing: the same inner loop with ``z = 1`` and one ``γ``.
* :func:`gemm_ternary_lut` — the lookup-table kernel in the style of bitnet.cpp's TL1 and T-MAC: for every
  pair of activations ``(x₂ⱼ, x₂ⱼ₊₁)`` a 16-entry table holds ``(c₀−1)x₂ⱼ + (c₁−1)x₂ⱼ₊₁`` for each 4-bit
  pattern ``c₀ + 4c₁`` of two 2-bit codes, so a weight byte becomes two table reads and two additions and no
  multiplication; the tables (``K/2 × 16`` floats) are built once per input and reused by every row.
* :func:`gemm_aqlm8` — AQLM with ``M`` codebooks of 256 entries (``2x8``): per input group ``j`` and codebook
  ``m`` a table ``⟨C_m[c], x_j⟩`` for all 256 codewords ``c`` (one small matmul per call, shared by all
  rows), then each output is ``scale·Σⱼ Σₘ table[j, m, code]``: ``M`` lookups per ``g`` weights.
* :func:`gemm_binary` — ±1 weights and activations in 64-bit words (:mod:`qcourse.xnor`):
  ``n − 2·popcount(x XOR w)`` with the CPU's ``POPCNT``.

All kernels run their output rows in parallel (``numba.prange``; set the thread count with
:func:`set_threads`). Each output element is computed by one thread in a fixed order, so results do not
depend on the thread count (no races, no atomic adds). Rows that do not start on a byte boundary (``K`` not a
multiple of the codes per byte) take a slower per-code path; everything else reads whole bytes.

numba is optional (the ``kernels`` extra): :data:`AVAILABLE` says whether it imported, and without it every
function raises ``RuntimeError`` — callers use :mod:`qcourse.kernels.reference` then.

>>> import torch
>>> from qcourse import packing
>>> from qcourse.kernels import reference
>>> codes = torch.tensor([[0, 5, 15, 3], [9, 9, 1, 0]], dtype=torch.uint8)
>>> args = (packing.pack(codes, 4), 4, (2, 4), 4, torch.tensor([0.5, 2.0]), torch.tensor([8.0, 1.0]))
>>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
>>> y = gemm_affine(x, *args) if AVAILABLE else reference.gemm_affine(x, *args)
>>> y.tolist(), reference.gemm_affine(x, *args).tolist()
([[-6.5, 40.0]], [[-6.5, 40.0]])
"""

from __future__ import annotations

import numpy as np
import torch

from qcourse import packing
from qcourse.kernels import reference

try:  # numba is the optional ``kernels`` extra
    import numba
    from numba import njit, prange
    from numba.core import types
    from numba.extending import intrinsic

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised on machines without numba
    AVAILABLE = False

__all__ = ["AVAILABLE", "set_threads", "gemm_affine", "gemm_ternary", "gemm_ternary_lut", "gemm_binary",
           "ternary_lut_tables", "gemm_aqlm8", "FORMATS"]

#: the formats this module has a kernel for
FORMATS = ("int4", "int2", "ternary", "ternary-lut", "binary", "aqlm-2x8")


def _require() -> None:
    if not AVAILABLE:
        raise RuntimeError("numba is not installed: install the 'kernels' extra, "
                           "or use qcourse.kernels.reference")


def set_threads(n: int) -> None:
    """Threads the parallel kernels use (at most numba's configured maximum)."""
    _require()
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(f"n must be an int from 1 to {numba.config.NUMBA_NUM_THREADS}; got {n!r}")
    numba.set_num_threads(n)


if AVAILABLE:
    @intrinsic
    def _popcount64(typingctx, x):  # noqa: ARG001 - numba's intrinsic signature
        """LLVM's ``ctpop`` on a uint64: one ``POPCNT`` instruction where the CPU has it."""
        sig = types.uint64(types.uint64)

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.ctpop(args[0])

        return sig, codegen

    @njit(parallel=True, fastmath=True, cache=True)
    def _affine4(xp, xsum, packed, scale, zero, n, k, seg, group):
        # xp[b, t, j] = x[b, 2j + t] (activations split by nibble position, so the loop below reads
        # two contiguous streams and vectorizes); rows start on a byte, groups hold whole bytes
        b_count = xp.shape[0]
        y = np.zeros((b_count, n), dtype=np.float32)
        nseg = k // seg
        nb = seg >> 1
        for r in prange(n):
            row = packed[(r * k) >> 1:((r + 1) * k) >> 1]
            for b in range(b_count):
                total = np.float32(0.0)
                for s in range(nseg):
                    gi = (r * k + s * seg) // group
                    lo = xp[b, 0, s * nb:(s + 1) * nb]
                    hi = xp[b, 1, s * nb:(s + 1) * nb]
                    codes = row[s * nb:(s + 1) * nb]
                    acc = np.float32(0.0)
                    for j in range(nb):
                        byte = np.int32(codes[j])
                        acc += np.float32(byte & 15) * lo[j] + np.float32(byte >> 4) * hi[j]
                    total += scale[gi] * (acc - zero[gi] * xsum[b, s])
                y[b, r] = total
        return y

    @njit(parallel=True, fastmath=True, cache=True)
    def _affine2(xp, xsum, packed, scale, zero, n, k, seg, group):
        # xp[b, t, j] = x[b, 4j + t]; rows start on a byte (k % 4 == 0), groups hold whole bytes
        b_count = xp.shape[0]
        y = np.zeros((b_count, n), dtype=np.float32)
        nseg = k // seg
        nb = seg >> 2
        for r in prange(n):
            row = packed[(r * k) >> 2:((r + 1) * k) >> 2]
            for b in range(b_count):
                total = np.float32(0.0)
                for s in range(nseg):
                    gi = (r * k + s * seg) // group
                    x0 = xp[b, 0, s * nb:(s + 1) * nb]
                    x1 = xp[b, 1, s * nb:(s + 1) * nb]
                    x2 = xp[b, 2, s * nb:(s + 1) * nb]
                    x3 = xp[b, 3, s * nb:(s + 1) * nb]
                    codes = row[s * nb:(s + 1) * nb]
                    acc = np.float32(0.0)
                    for j in range(nb):
                        byte = np.int32(codes[j])
                        acc += (np.float32(byte & 3) * x0[j] + np.float32((byte >> 2) & 3) * x1[j]
                                + np.float32((byte >> 4) & 3) * x2[j] + np.float32(byte >> 6) * x3[j])
                    total += scale[gi] * (acc - zero[gi] * xsum[b, s])
                y[b, r] = total
        return y

    @njit(parallel=True, fastmath=True, cache=True)
    def _affine_any(x, xsum, packed, scale, zero, n, k, seg, group, bits):
        # the general path: any row/group alignment, bits dividing 8; one code at a time
        b_count = x.shape[0]
        y = np.zeros((b_count, n), dtype=np.float32)
        per = 8 // bits
        mask = (1 << bits) - 1
        nseg = k // seg
        for r in prange(n):
            for b in range(b_count):
                total = np.float32(0.0)
                for s in range(nseg):
                    i0 = r * k + s * seg
                    gi = i0 // group
                    acc = np.float32(0.0)
                    for j in range(seg):
                        i = i0 + j
                        q = (packed[i // per] >> ((i % per) * bits)) & mask
                        acc += np.float32(q) * x[b, s * seg + j]
                    total += scale[gi] * (acc - zero[gi] * xsum[b, s])
                y[b, r] = total
        return y

    @njit(parallel=True, fastmath=True, cache=True)
    def _lut_tables(x):
        # table[b, p, c0 + 4·c1] = (c0 − 1)·x[2p] + (c1 − 1)·x[2p+1]; code 3 is not a trit but gets the
        # same formula so the table is defined for every nibble
        b_count, k = x.shape
        t = np.empty((b_count, k // 2, 16), dtype=np.float32)
        for b in range(b_count):
            for p in prange(k // 2):
                x0 = x[b, 2 * p]
                x1 = x[b, 2 * p + 1]
                for c1 in range(4):
                    for c0 in range(4):
                        t[b, p, c0 + 4 * c1] = np.float32(c0 - 1) * x0 + np.float32(c1 - 1) * x1
        return t

    @njit(parallel=True, fastmath=True, cache=True)
    def _ternary_lut(tables, packed, gamma, n, k):
        b_count = tables.shape[0]
        y = np.zeros((b_count, n), dtype=np.float32)
        nbytes = k >> 2
        for r in prange(n):
            row = packed[r * nbytes:(r + 1) * nbytes]
            for b in range(b_count):
                tb = tables[b]
                acc0 = np.float32(0.0)
                acc1 = np.float32(0.0)
                for j in range(nbytes):
                    byte = np.int32(row[j])
                    acc0 += tb[2 * j, byte & 15]
                    acc1 += tb[2 * j + 1, byte >> 4]
                y[b, r] = gamma * (acc0 + acc1)
        return y

    @njit(parallel=True, fastmath=True, cache=True)
    def _aqlm8(tables, codes, scales, n, groups, books):
        # tables[b, j, m, c] = <codebook m's entry c, x[b, group j]>; codes[(r·J + j)·M + m]
        b_count = tables.shape[0]
        y = np.zeros((b_count, n), dtype=np.float32)
        per_row = groups * books
        for r in prange(n):
            row = codes[r * per_row:(r + 1) * per_row]
            for b in range(b_count):
                tb = tables[b]
                acc = np.float32(0.0)
                for j in range(groups):
                    for m in range(books):
                        acc += tb[j, m, np.int32(row[j * books + m])]
                y[b, r] = scales[r] * acc
        return y

    @njit(parallel=True, cache=True)
    def _binary(w_words, x_words, n):
        rows, words = w_words.shape
        b_count = x_words.shape[0]
        y = np.empty((b_count, rows), dtype=np.int64)
        for r in prange(rows):
            for b in range(b_count):
                d = np.uint64(0)
                for j in range(words):
                    d += _popcount64(w_words[r, j] ^ x_words[b, j])
                y[b, r] = n - 2 * np.int64(d)
        return y


def _as_batch(x: torch.Tensor, k: int) -> tuple[np.ndarray, bool]:
    reference._check_x(x, k)
    vec = x.ndim == 1
    arr = np.ascontiguousarray(x.detach().cpu().reshape(-1, k).to(torch.float32).numpy())
    return arr, vec


def _out(y: np.ndarray, vec: bool) -> torch.Tensor:
    t = torch.from_numpy(y)
    return t[0] if vec else t


def gemm_affine(x: torch.Tensor, packed: torch.Tensor, bits: int, shape: tuple[int, int], group: int,
                scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``x Ŵᵀ`` straight from packed affine codes; same arguments and result as
    :func:`qcourse.kernels.reference.gemm_affine` (float32 accumulation). ``bits`` ∈ {1, 2, 4, 8}."""
    _require()
    n, k = reference._check_affine(packed, bits, shape, group, scale, zero)
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8 for the packed CPU kernel (codes whole in a byte); "
                         f"got {bits}")
    xb, vec = _as_batch(x, k)
    seg = min(group, k)  # a run of codes sharing one group inside one row
    # Σx per group of a row (the zero term); a per-tensor or per-channel group is the whole row
    xsum = xb.reshape(xb.shape[0], k // seg, seg).sum(axis=2, dtype=np.float32)
    p = packed.numpy()
    s = scale.detach().reshape(-1).to(torch.float32).numpy()
    z = zero.detach().reshape(-1).to(torch.float32).numpy()
    per = 8 // bits
    if bits in (2, 4) and k % per == 0 and seg % per == 0:
        planes = np.ascontiguousarray(xb.reshape(xb.shape[0], k // per, per).transpose(0, 2, 1))
        kernel = _affine4 if bits == 4 else _affine2
        y = kernel(planes, xsum, p, s, z, n, k, seg, group)
    else:
        y = _affine_any(xb, xsum, p, s, z, n, k, seg, group, bits)
    return _out(y, vec)


def _check_ternary(packed: torch.Tensor, shape: tuple[int, int]) -> tuple[int, int]:
    n, k = reference._check_shape(shape)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim != 1 \
            or packed.numel() != packing.packed_nbytes(n * k, 2):
        raise ValueError(f"packed must be the 2-bit packing of {n}×{k} trits: a 1-D uint8 tensor of "
                         f"{packing.packed_nbytes(n * k, 2)} bytes")
    return n, k


def gemm_ternary(x: torch.Tensor, packed: torch.Tensor, shape: tuple[int, int],
                 gamma: torch.Tensor | float) -> torch.Tensor:
    """``x (γ·T)ᵀ`` for trits in the 2-bit packing (codes ``t + 1``): the int2 kernel with zero 1."""
    n, k = _check_ternary(packed, shape)
    one = torch.ones(1)
    return gemm_affine(x, packed, 2, (n, k), n * k, one * float(gamma), one)


def ternary_lut_tables(x: torch.Tensor) -> np.ndarray:
    """The lookup tables of :func:`gemm_ternary_lut` for ``x`` (``[batch, K]``, ``K`` even):
    ``[batch, K/2, 16]`` float32, entry ``[b, p, c₀ + 4c₁] = (c₀−1)·x[b, 2p] + (c₁−1)·x[b, 2p+1]``."""
    _require()
    arr = np.ascontiguousarray(x.detach().cpu().reshape(-1, x.shape[-1]).to(torch.float32).numpy())
    if arr.shape[1] % 2:
        raise ValueError(f"x's last dimension must be even for pair tables; got {arr.shape[1]}")
    return _lut_tables(arr)


def gemm_ternary_lut(x: torch.Tensor, packed: torch.Tensor, shape: tuple[int, int],
                     gamma: torch.Tensor | float) -> torch.Tensor:
    """``x (γ·T)ᵀ`` for 2-bit-packed trits by table lookup (no multiplications in the inner loop).

    Needs ``in_features % 4 == 0`` so every row starts on a byte and a byte's two nibbles are two pairs
    of the same row; other shapes raise ``ValueError`` (use :func:`gemm_ternary`).
    """
    _require()
    n, k = _check_ternary(packed, shape)
    if k % 4:
        raise ValueError(f"the LUT kernel needs in_features % 4 == 0 (whole bytes per row); got {k}")
    xb, vec = _as_batch(x, k)
    tables = _lut_tables(xb)
    return _out(_ternary_lut(tables, packed.numpy(), np.float32(float(gamma)), n, k), vec)


def gemm_aqlm8(x: torch.Tensor, qweight) -> torch.Tensor:
    """``x Ŵᵀ`` for an :class:`~qcourse.methods.aqlm.AQLMWeight` with 8-bit codes (``Mx8``, e.g. ``2x8``),
    by per-input-group lookup tables; ``x`` is ``[K]`` or ``[batch, K]``, result float32."""
    _require()
    from qcourse.methods.aqlm import AQLMWeight

    if not isinstance(qweight, AQLMWeight) or qweight.codebook_bits != 8:
        raise ValueError("qweight must be an AQLMWeight with 8-bit codes (codebook_bits=8)")
    n, k = qweight.shape
    xb, vec = _as_batch(x, k)
    g, books = qweight.in_group_size, qweight.n_codebooks
    # [B, J, g] · [M, 256, g] → [B, J, M, 256]: 256·M·K multiply-adds, shared by every output row
    tables = torch.einsum("bjg,mcg->bjmc", torch.from_numpy(xb).reshape(xb.shape[0], k // g, g),
                          qweight.codebooks.float()).contiguous().numpy()
    y = _aqlm8(tables, qweight.packed.numpy(), qweight.scales.float().numpy(), n, k // g, books)
    return _out(y, vec)


def gemm_binary(w_words: np.ndarray, x_words: np.ndarray, n: int) -> np.ndarray:
    """``X Wᵀ`` of ±1 matrices from :func:`qcourse.xnor.pack_signs` words (``uint64``): exact ``int64``.

    ``w_words`` is ``[out, words]``, ``x_words`` ``[batch, words]`` (or ``[words]``), ``n`` the length.
    """
    _require()
    for name, a in (("w_words", w_words), ("x_words", x_words)):
        if not isinstance(a, np.ndarray) or a.dtype != np.uint64:
            raise TypeError(f"{name} must be a numpy uint64 array from xnor.pack_signs(..., word_bits=64)")
    if w_words.ndim != 2 or x_words.ndim not in (1, 2):
        raise ValueError(f"w_words must be 2-D and x_words 1- or 2-D; got {w_words.shape}, {x_words.shape}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or -(-n // 64) != w_words.shape[1] \
            or x_words.shape[-1] != w_words.shape[1]:
        raise ValueError(f"n must be the vector length with ceil(n/64) = words on both; got n={n!r}, "
                         f"words {w_words.shape[1]} and {x_words.shape[-1]}")
    vec = x_words.ndim == 1
    y = _binary(np.ascontiguousarray(w_words), np.ascontiguousarray(x_words.reshape(-1, w_words.shape[1])), n)
    return y[0] if vec else y
