"""Packed GEMV / small-batch GEMM on the CPU with numba: the weight is read packed, never decoded to floats.

At batch 1 a linear layer reads every weight once and does two flops with it, so its time is the bytes read
divided by the memory bandwidth: a 4-bit weight is 8× fewer bytes than float32 and can be up to 8× faster.
Each kernel here streams the packed bytes row by row and unpacks them with shifts and masks in registers:

* :func:`gemm_affine` — ``int4`` / ``int2`` (and 1- and 8-bit) codes with a scale and zero per group
  (:class:`~qcourse.affine.AffineQuantizedWeight`). Per group it accumulates ``Σ q·x`` and uses
  ``Σ (q − z)·x·s = s·(Σ q·x − z·Σ x)`` with ``Σ x`` per group computed once per call, so the inner loop is
  one multiply-add per code.
* :func:`gemm_ternary` — trits in the 2-bit packing: the same inner loop with ``z = 1`` and one ``γ``.
* :func:`prepare_affine` / :func:`prepare_ternary` + :func:`gemm_tiles` — the fast path for int4, int2 and
  ternary weights that are used many times (a model's layers): the codes are laid out once in tiles of
  :data:`TILE` output rows, word-interleaved (``[tiles, words, TILE]``, the repacking llama.cpp does for its
  interleaved ``Q4_0_8x8`` types), so the innermost loop runs over ``TILE`` rows and compiles to 16-lane
  SIMD: one 32-bit word of each of 16 rows per instruction. A code is taken out *without a shift*: ``w & (15
  << 4t)`` converts to the float ``q·16ᵗ`` exactly, and the activation it multiplies was divided by ``16ᵗ``
  beforehand (exact: a power of two), so each code costs one AND, one conversion and one fused multiply-add.
  Per 64 codes it applies ``y += s·(Σ q·x) − s·z·Σx``.
* :func:`gemm_ternary_lut` — the lookup-table kernel in the style of bitnet.cpp's TL1 and T-MAC: for every
  pair of activations ``(x₂ⱼ, x₂ⱼ₊₁)`` a 16-entry table holds ``(c₀−1)x₂ⱼ + (c₁−1)x₂ⱼ₊₁`` for each 4-bit
  pattern ``c₀ + 4c₁`` of two 2-bit codes, so a weight byte becomes two table reads and two additions and no
  multiplication; the tables (``K/2 × 16`` floats) are built once per input and reused by every row.
* :func:`gemm_aqlm8` — AQLM with ``M`` codebooks of 256 entries (``2x8``): per input group ``j`` and codebook
  ``m`` a table ``⟨C_m[c], x_j⟩`` for all 256 codewords ``c`` (one small matmul per call, shared by all
  rows), then each output is ``scale·Σⱼ Σₘ table[j, m, code]``: ``M`` lookups per ``g`` weights.
* :func:`gemm_binary` — ±1 weights and activations in 64-bit words (:mod:`qcourse.xnor`):
  ``n − 2·popcount(x XOR w)`` with the CPU's ``POPCNT``.
* :func:`gemm_ternary_base3` — trits packed five per byte in base 3 (1.6 bits per weight): a 256-row
  table gives a byte's five trits, so a byte costs one table row and five multiply-adds.
* :func:`gemm_binary_weight` — a :class:`~qcourse.methods.binary.BinaryWeight` (``Σₖ αₖBₖ``, signs one bit
  each): a sign bit ``c`` means ``α(2c − 1) = 2α·(c − ½)``, the 1-bit affine format with scale ``2α`` and
  zero ``½``, so each basis runs the 1-bit :func:`gemm_affine` kernel and the bases add up.
* :func:`gemm_e8p` — QuIP#'s E8P codes (16 bits per 8 weights, plus a second residual stage at 3 and 4
  bits): each code indexes the decode table (the 2¹⁶ points of :func:`qcourse.lattice.e8p_codebook`, held
  as int8 quarters: 512 KiB, shared by every weight, small enough for the L2 cache) and the 8-vector it
  names is dotted with 8 activations. The
  randomized Hadamard transforms go around the product, as in the method's ``dequantize``: the input is
  rotated with the input signs first and the output rotated back with the output signs after, so the
  weight is never decoded (``x Ŵᵀ = RHT⁻¹_out(wscale · RHT_in(x) · decode(codes)ᵀ)``).

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
           "ternary_lut_tables", "gemm_aqlm8", "FORMATS", "TILE", "AffineTiles", "prepare_affine",
           "prepare_ternary", "gemm_tiles", "E8PCodes", "prepare_e8p", "gemm_e8p", "gemm_ternary_base3",
           "gemm_binary_weight", "KERNELS"]

#: output rows per tile of :func:`prepare_affine`'s layout (the innermost, vectorized loop)
TILE = 64
#: codes per chunk: each chunk of a tile row shares one scale and zero
CHUNK = 64

#: the formats this module has a kernel for
FORMATS = ("int4", "int2", "ternary", "ternary-lut", "binary", "aqlm-2x8", "e8p")


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
    _THREADS["n"] = n


#: the thread count last set through :func:`set_threads` (read once from numba otherwise): asking numba
#: costs tens of microseconds, as much as a small layer's whole product
_THREADS: dict[str, int | None] = {"n": None}
#: weights below which the tiled kernel runs serially even with several threads (the pool's launch
#: costs more than it saves)
PARALLEL_MIN = 1 << 18


def _threads() -> int:
    if _THREADS["n"] is None:
        _THREADS["n"] = int(numba.get_num_threads())
    return _THREADS["n"]


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

    def _tiles4(xs, xsum, w, s, sz, s0, sz0, cpg, out):
        # w [tiles, K/8, TILE] int32: word j of a tile row holds codes 8j..8j+7 (code t at bits 4t..4t+3);
        # xs[b, 8j + t] = x[b, 8j + t] / 16^t (t < 7), x for t = 7 (taken with a shift: the sign bit);
        # s, sz [tiles, groups, TILE] (or empty: one scale s0 and s0·z0 = sz0); xsum[b, c] = Σ of chunk c
        b_count = xs.shape[0]
        tiles, words, tw = w.shape
        nchunks = words // 8
        per_group = s.shape[1] > 0
        m = np.int32(15)
        for tl in prange(tiles):
            acc = np.empty(tw, np.float32)
            yv = np.empty(tw, np.float32)
            for b in range(b_count):
                yv[:] = 0
                for c in range(nchunks):
                    acc[:] = 0
                    for u in range(8):
                        j = c * 8 + u
                        o = j * 8
                        x0 = xs[b, o]
                        x1 = xs[b, o + 1]
                        x2 = xs[b, o + 2]
                        x3 = xs[b, o + 3]
                        x4 = xs[b, o + 4]
                        x5 = xs[b, o + 5]
                        x6 = xs[b, o + 6]
                        x7 = xs[b, o + 7]
                        wr = w[tl, j]
                        for r in range(tw):
                            q = wr[r]
                            # np.int32 around each masked word keeps the vector lanes 32-bit (numba widens
                            # integer arithmetic to 64 bits; the truncation lets LLVM narrow it back)
                            acc[r] += (np.float32(np.int32(q & m)) * x0
                                       + np.float32(np.int32(q & np.int32(0xF0))) * x1
                                       + np.float32(np.int32(q & np.int32(0xF00))) * x2
                                       + np.float32(np.int32(q & np.int32(0xF000))) * x3
                                       + np.float32(np.int32(q & np.int32(0xF0000))) * x4
                                       + np.float32(np.int32(q & np.int32(0xF00000))) * x5
                                       + np.float32(np.int32(q & np.int32(0xF000000))) * x6
                                       + np.float32(np.int32((q >> 28) & m)) * x7)
                    xc = xsum[b, c]
                    if per_group:
                        sr = s[tl, c // cpg]
                        zr = sz[tl, c // cpg]
                        for r in range(tw):
                            yv[r] += sr[r] * acc[r] - zr[r] * xc
                    else:
                        for r in range(tw):
                            yv[r] += s0 * acc[r] - sz0 * xc
                out[b, tl * tw:(tl + 1) * tw] = yv

    def _tiles2(xs, xsum, w, s, sz, s0, sz0, cpg, out):
        # as _tiles4 with 16 two-bit codes per word: xs[b, 16j + t] = x / 4^t (t < 15), x for t = 15
        b_count = xs.shape[0]
        tiles, words, tw = w.shape
        nchunks = words // 4
        per_group = s.shape[1] > 0
        m = np.int32(3)
        for tl in prange(tiles):
            acc = np.empty(tw, np.float32)
            yv = np.empty(tw, np.float32)
            for b in range(b_count):
                yv[:] = 0
                for c in range(nchunks):
                    acc[:] = 0
                    for u in range(4):
                        j = c * 4 + u
                        o = j * 16
                        x0 = xs[b, o]
                        x1 = xs[b, o + 1]
                        x2 = xs[b, o + 2]
                        x3 = xs[b, o + 3]
                        x4 = xs[b, o + 4]
                        x5 = xs[b, o + 5]
                        x6 = xs[b, o + 6]
                        x7 = xs[b, o + 7]
                        x8 = xs[b, o + 8]
                        x9 = xs[b, o + 9]
                        x10 = xs[b, o + 10]
                        x11 = xs[b, o + 11]
                        x12 = xs[b, o + 12]
                        x13 = xs[b, o + 13]
                        x14 = xs[b, o + 14]
                        x15 = xs[b, o + 15]
                        wr = w[tl, j]
                        for r in range(tw):
                            q = wr[r]
                            acc[r] += (np.float32(np.int32(q & m)) * x0
                                       + np.float32(np.int32(q & np.int32(0xC))) * x1
                                       + np.float32(np.int32(q & np.int32(0x30))) * x2
                                       + np.float32(np.int32(q & np.int32(0xC0))) * x3
                                       + np.float32(np.int32(q & np.int32(0x300))) * x4
                                       + np.float32(np.int32(q & np.int32(0xC00))) * x5
                                       + np.float32(np.int32(q & np.int32(0x3000))) * x6
                                       + np.float32(np.int32(q & np.int32(0xC000))) * x7
                                       + np.float32(np.int32(q & np.int32(0x30000))) * x8
                                       + np.float32(np.int32(q & np.int32(0xC0000))) * x9
                                       + np.float32(np.int32(q & np.int32(0x300000))) * x10
                                       + np.float32(np.int32(q & np.int32(0xC00000))) * x11
                                       + np.float32(np.int32(q & np.int32(0x3000000))) * x12
                                       + np.float32(np.int32(q & np.int32(0xC000000))) * x13
                                       + np.float32(np.int32(q & np.int32(0x30000000))) * x14
                                       + np.float32(np.int32((q >> 30) & m)) * x15)
                    xc = xsum[b, c]
                    if per_group:
                        sr = s[tl, c // cpg]
                        zr = sz[tl, c // cpg]
                        for r in range(tw):
                            yv[r] += sr[r] * acc[r] - zr[r] * xc
                    else:
                        for r in range(tw):
                            yv[r] += s0 * acc[r] - sz0 * xc
                out[b, tl * tw:(tl + 1) * tw] = yv

    @njit(fastmath=True, boundscheck=False, cache=True)
    def _tile_inputs(xb, pre):
        # xs = x with code position t of each word divided by 2^(bits·t) (pre[t]); xsum = Σx per 64 codes
        b_count, k = xb.shape
        per = pre.shape[0]
        xs = np.empty((b_count, k), dtype=np.float32)
        xsum = np.empty((b_count, k // 64), dtype=np.float32)
        for b in range(b_count):
            for c in range(k // 64):
                acc = np.float32(0.0)
                for j in range(64):
                    v = xb[b, c * 64 + j]
                    acc += v
                    xs[b, c * 64 + j] = v * pre[j % per]
                xsum[b, c] = acc
        return xs, xsum

    # one parallel build (prange over tiles) and one serial build of each: at one thread the serial one
    # skips the thread pool's launch, which costs more than a small layer's whole product
    _TILE_KERNELS = {
        (bits, par): njit(parallel=par, fastmath=True, boundscheck=False, cache=True)(fn)
        for bits, fn in ((4, _tiles4), (2, _tiles2)) for par in (False, True)
    }

    def _e8p(xt, codes, t1, t2, s1, s2, out):
        # codes [m, J, stages] (uint16); t1/t2 [entries, 8] int8 decode tables holding the points in units of
        # s1/s2 (E8P: quarters), so the 2¹⁶-entry table is 512 KiB and stays in the L2 cache; xt [B, n] the
        # rotated input; out[b, r] = Σ_j <s1·t1[c1] + s2·t2[c2], xt[b, 8j:8j+8]>
        b_count = xt.shape[0]
        m, groups, stages = codes.shape
        for r in prange(m):
            for b in range(b_count):
                acc1 = np.float32(0.0)
                acc2 = np.float32(0.0)
                for j in range(groups):
                    o = 8 * j
                    c = np.int32(codes[r, j, 0])
                    for i in range(8):
                        acc1 += np.float32(t1[c, i]) * xt[b, o + i]
                    if stages == 2:
                        c = np.int32(codes[r, j, 1])
                        for i in range(8):
                            acc2 += np.float32(t2[c, i]) * xt[b, o + i]
                out[b, r] = s1 * acc1 + s2 * acc2

    @njit(parallel=True, fastmath=True, cache=True)
    def _base3(xb, packed, digits, gamma, n, k):
        # digits[byte, d] = trit d of the byte (its base-3 digit minus 1; NaN for bytes above 242)
        b_count = xb.shape[0]
        y = np.empty((b_count, n), dtype=np.float32)
        for r in prange(n):
            i0 = r * k
            end = i0 + k
            for b in range(b_count):
                acc = np.float32(0.0)
                i = i0
                while i < end and i % 5:         # a row that starts inside a byte
                    acc += digits[packed[i // 5], i % 5] * xb[b, i - i0]
                    i += 1
                while i + 5 <= end:              # whole bytes: five trits from one table row
                    d = digits[packed[i // 5]]
                    o = i - i0
                    acc += (d[0] * xb[b, o] + d[1] * xb[b, o + 1] + d[2] * xb[b, o + 2] + d[3] * xb[b, o + 3]
                            + d[4] * xb[b, o + 4])
                    i += 5
                while i < end:                   # and one that ends inside a byte
                    acc += digits[packed[i // 5], i % 5] * xb[b, i - i0]
                    i += 1
                y[b, r] = gamma * acc
        return y

    _E8P_KERNELS = {par: njit(parallel=par, fastmath=True, boundscheck=False, cache=True)(_e8p)
                    for par in (False, True)}

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


#: format name -> the kernel's Python source function (what a lesson shows with ``inspect.getsource``);
#: njit-compiled versions run (``_TILE_KERNELS``/``_E8P_KERNELS`` hold serial and parallel builds of the plain
#: functions ``_tiles4``/``_tiles2``/``_e8p``; the others are compiled in place, their source is ``.py_func``)
KERNELS: dict = {}
if AVAILABLE:
    KERNELS = {
        "int4-rows": _affine4.py_func, "int2-rows": _affine2.py_func, "int4": _tiles4, "int2": _tiles2,
        "ternary": _tiles2, "ternary-lut": _ternary_lut.py_func, "ternary-lut-tables": _lut_tables.py_func,
        "ternary-base3": _base3.py_func, "binary": _binary.py_func, "aqlm-2x8": _aqlm8.py_func, "e8p": _e8p,
    }


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


class AffineTiles:
    """A packed int4/int2 (or 2-bit ternary) weight laid out for :func:`gemm_tiles`; build it with
    :func:`prepare_affine` or :func:`prepare_ternary` (once per weight: it copies the codes).

    Attributes: ``bits``, ``shape`` ``(N, K)``, ``words`` (``int32 [tiles, K·bits/32, TILE]``; the last
    tile is filled with zero codes past row ``N``), ``scale`` and ``scaled_zero`` (``float32 [tiles,
    K/group, TILE]``: ``s`` and ``s·z`` per group, or empty with one ``scalar`` pair for one scale),
    ``chunks_per_group``.
    """

    def __init__(self, bits: int, shape: tuple[int, int], words: np.ndarray, scale: np.ndarray,
                 scaled_zero: np.ndarray, scalar: tuple[float, float], chunks_per_group: int) -> None:
        self.bits, self.shape, self.words = bits, shape, words
        self.scale, self.scaled_zero, self.scalar = scale, scaled_zero, scalar
        self.chunks_per_group = chunks_per_group

    @property
    def nbytes(self) -> int:
        """Bytes one product reads: the codes plus the float32 scales and scaled zeros (padding included)."""
        return int(self.words.nbytes + self.scale.nbytes + self.scaled_zero.nbytes)

    def __repr__(self) -> str:
        return (f"AffineTiles(bits={self.bits}, shape={self.shape}, tiles={self.words.shape[0]}, "
                f"nbytes={self.nbytes})")


def _tile_rows(a: np.ndarray, n: int) -> np.ndarray:
    """``a [N, m]`` → ``[tiles, m, TILE]`` (rows past ``N`` zero): row ``r`` becomes lane ``r % TILE``."""
    tiles = -(-n // TILE)
    padded = np.zeros((tiles * TILE, a.shape[1]), dtype=a.dtype)
    padded[:n] = a
    return np.ascontiguousarray(padded.reshape(tiles, TILE, a.shape[1]).transpose(0, 2, 1))


def tiles_supported(bits: int, shape: tuple[int, int], group: int) -> bool:
    """Whether :func:`prepare_affine` takes this weight: ``bits`` 2 or 4, ``in_features`` a multiple of 64
    and groups of whole 64-code chunks inside a row (a multiple of 64 dividing ``K``, or the whole tensor)."""
    n, k = shape
    return bits in (2, 4) and k % CHUNK == 0 and (group == n * k or (group % CHUNK == 0 and k % group == 0))


def prepare_affine(packed: torch.Tensor, bits: int, shape: tuple[int, int], group: int, scale: torch.Tensor,
                   zero: torch.Tensor) -> AffineTiles:
    """Lay out an affine int4/int2 weight (the arguments of :func:`gemm_affine`) for :func:`gemm_tiles`.

    Raises ``ValueError`` for weights :func:`tiles_supported` rejects (use :func:`gemm_affine` for those).

    >>> import torch
    >>> from qcourse import packing
    >>> codes = torch.arange(128, dtype=torch.uint8).reshape(2, 64) % 16
    >>> t = prepare_affine(packing.pack(codes, 4), 4, (2, 64), 64, torch.tensor([0.5, 1.0]),
    ...                    torch.tensor([8.0, 0.0]))
    >>> t.words.shape, t.scale.shape
    ((1, 8, 64), (1, 1, 64))
    """
    _require()
    n, k = reference._check_affine(packed, bits, shape, group, scale, zero)
    if not tiles_supported(bits, (n, k), group):
        raise ValueError(f"the tiled kernel needs bits 2 or 4, in_features % {CHUNK} == 0 and groups of "
                         f"whole {CHUNK}-code chunks; got bits={bits}, shape={(n, k)}, group={group}")
    words = _tile_rows(packed.numpy().view(np.int32).reshape(n, k * bits // 32), n)
    s = scale.detach().reshape(-1).to(torch.float32).numpy()
    z = zero.detach().reshape(-1).to(torch.float32).numpy()
    if group == n * k:
        empty = np.zeros((words.shape[0], 0, TILE), np.float32)
        return AffineTiles(bits, (n, k), words, empty, empty, (float(s[0]), float(s[0] * z[0])), 1)
    per_row = k // group
    sr = s.reshape(n, per_row)
    return AffineTiles(bits, (n, k), words, _tile_rows(sr, n), _tile_rows(sr * z.reshape(n, per_row), n),
                       (0.0, 0.0), group // CHUNK)


def prepare_ternary(packed: torch.Tensor, shape: tuple[int, int], gamma: torch.Tensor | float) -> AffineTiles:
    """Lay out trits in the 2-bit packing (codes ``t + 1``, one ``γ``) for :func:`gemm_tiles`."""
    n, k = _check_ternary(packed, shape)
    one = torch.ones(1)
    return prepare_affine(packed, 2, (n, k), n * k, one * float(gamma), one)


def gemm_tiles(x: torch.Tensor, tiles: AffineTiles) -> torch.Tensor:
    """``x Ŵᵀ`` from an :class:`AffineTiles` weight; ``x`` is ``[K]`` or ``[batch, K]``, result float32.

    >>> import torch
    >>> from qcourse import packing
    >>> from qcourse.kernels import reference
    >>> codes = torch.arange(6 * 128, dtype=torch.uint8).reshape(6, 128) % 4
    >>> args = (packing.pack(codes, 2), 2, (6, 128), 64, torch.rand(12), torch.randint(0, 4, (12,)).float())
    >>> x = torch.randn(3, 128)
    >>> torch.allclose(gemm_tiles(x, prepare_affine(*args)), reference.gemm_affine(x, *args), atol=1e-4)
    True
    """
    _require()
    if not isinstance(tiles, AffineTiles):
        raise TypeError(f"tiles must be an AffineTiles from prepare_affine; got {type(tiles).__name__}")
    n, k = tiles.shape
    if isinstance(x, torch.Tensor) and x.dtype == torch.float32 and x.ndim == 2 and x.shape[1] == k \
            and x.device.type == "cpu":
        # the common case (a model's layer), without the general path's copies: this runs per token
        xb, vec = x.detach().contiguous().numpy(), False
    else:
        xb, vec = _as_batch(x, k)
    xs, xsum = _tile_inputs(xb, _PRE[tiles.bits])
    out = np.empty((xb.shape[0], tiles.words.shape[0] * TILE), dtype=np.float32)
    kernel = _TILE_KERNELS[tiles.bits, _threads() > 1 and n * k >= PARALLEL_MIN]
    s0, sz0 = tiles.scalar
    kernel(xs, xsum, tiles.words, tiles.scale, tiles.scaled_zero, np.float32(s0), np.float32(sz0),
           tiles.chunks_per_group, out)
    y = torch.from_numpy(out)
    y = y if y.shape[1] == n else y[:, :n]
    return y[0] if vec else y


def _pre(bits: int) -> np.ndarray:
    # code t of a word is read as q·2^(bits·t) (masked, not shifted), so its activation is divided by that;
    # the top code is shifted down instead (its mask would include the sign bit)
    pre = (np.float32(0.5) ** (bits * np.arange(32 // bits))).astype(np.float32)
    pre[-1] = 1.0
    return pre


_PRE = {bits: _pre(bits) for bits in (2, 4)}


class E8PCodes:
    """A :class:`~qcourse.methods.quip.QuIPWeight` with the E8P codebook, laid out for :func:`gemm_e8p`:
    ``codes`` ``uint16 [m, n/8, stages]`` (the stored 16-bit codes: 2 bytes per 8 weights per stage; the
    weight object keeps them as int64), the decode ``tables``, ``wscale`` and the sign vectors."""

    def __init__(self, qweight) -> None:
        from qcourse.methods.quip import QuIPWeight

        if not isinstance(qweight, QuIPWeight) or qweight.codebook != "e8p":
            raise ValueError("qweight must be a QuIPWeight with the E8P codebook (codebook='e8p')")
        self.shape, self.bits = qweight.shape, qweight.bits
        self.codes = np.ascontiguousarray(qweight.codes.numpy().astype(np.uint16))
        self.t1, self.t2, self.s1, self.s2 = _e8p_tables(qweight.bits)
        self.wscale = float(qweight.wscale)
        self.s_in = None if qweight.s_in is None else qweight.s_in.to(torch.float32)
        self.s_out = None if qweight.s_out is None else qweight.s_out.to(torch.float32)

    @property
    def nbytes(self) -> int:
        """Bytes of weight one product reads: the codes (the tables are shared by every layer)."""
        return int(self.codes.nbytes)

    def __repr__(self) -> str:
        return f"E8PCodes(bits={self.bits}, shape={self.shape}, nbytes={self.nbytes})"


def _e8p_tables(bits: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The decode tables of both stages as int8 multiples of a unit, and the units: E8P points are odd
    multiples of ¼, so ``point = ¼·t1[c]``; the second stage (divided by its residual scale in
    ``rvq_decode``) is E8P again at 4 bits and the 1-bit E8 codebook (multiples of ½) at 3 bits."""
    from qcourse import lattice

    key = ("e8p", bits)
    if key not in _TABLES:
        def as_int8(grid: torch.Tensor, unit: float) -> np.ndarray:
            q = grid / unit
            if not torch.equal(q, q.round()) or q.abs().max() > 127:
                raise RuntimeError("codebook entries are not small multiples of the unit")  # pragma: no cover
            return np.ascontiguousarray(q.to(torch.int8).numpy())

        t1 = as_int8(lattice.e8p_codebook(torch.float64), 0.25)
        if bits == 2:
            t2, s2 = np.zeros((1, 8), np.int8), 0.0
        else:
            grid, unit = ((lattice.e8p_codebook(torch.float64), 0.25) if bits == 4
                          else (lattice.e81b_codebook(torch.float64), 0.5))
            t2, s2 = as_int8(grid, unit), unit / lattice.RVQ_RESIDUAL_SCALE[bits]
        _TABLES[key] = (t1, t2, 0.25, s2)
    return _TABLES[key]


_TABLES: dict[tuple[str, int], tuple[np.ndarray, np.ndarray, float, float]] = {}


def prepare_e8p(qweight) -> E8PCodes:
    """The codes of an E8P :class:`~qcourse.methods.quip.QuIPWeight` as :func:`gemm_e8p` reads them."""
    _require()
    return E8PCodes(qweight)


def gemm_e8p(x: torch.Tensor, qweight) -> torch.Tensor:
    """``x Ŵᵀ`` for a QuIP# E8P weight (a :class:`~qcourse.methods.quip.QuIPWeight` or its
    :class:`E8PCodes`), from the codes and the decode table; ``x`` is ``[K]`` or ``[batch, K]``, float32.

    >>> import torch
    >>> from qcourse.methods.quip import quip_quantize
    >>> qw = quip_quantize(torch.randn(16, 32), None, 2, rounding="nearest")
    >>> x = torch.randn(3, 32)
    >>> torch.allclose(gemm_e8p(x, qw), x @ qw.dequantize().T, atol=1e-4)
    True
    """
    from qcourse import hadamard

    _require()
    prep = qweight if isinstance(qweight, E8PCodes) else E8PCodes(qweight)
    m, n = prep.shape
    xb, vec = _as_batch(x, n)
    xt = torch.from_numpy(xb)
    if prep.s_in is not None:
        xt = hadamard.rht(xt, prep.s_in)          # the input in the weight's rotated basis
    out = np.empty((xb.shape[0], m), dtype=np.float32)
    kernel = _E8P_KERNELS[_threads() > 1 and m * n >= PARALLEL_MIN]
    kernel(np.ascontiguousarray(xt.numpy()), prep.codes, prep.t1, prep.t2, np.float32(prep.s1),
           np.float32(prep.s2), out)
    y = torch.from_numpy(out) * np.float32(prep.wscale)
    if prep.s_out is not None:
        y = hadamard.inverse_rht(y, prep.s_out)   # back from the rotated output basis
    return y[0] if vec else y


def _base3_digits() -> np.ndarray:
    digits = np.full((256, 5), np.nan, dtype=np.float32)
    for v in range(243):
        digits[v] = [(v // 3**d) % 3 - 1 for d in range(5)]
    return digits


_DIGITS = _base3_digits()


def gemm_ternary_base3(x: torch.Tensor, packed: torch.Tensor, shape: tuple[int, int],
                       gamma: torch.Tensor | float) -> torch.Tensor:
    """``x (γ·T)ᵀ`` for trits packed five per byte in base 3 (codes ``t + 1``, :mod:`qcourse.packing`);
    any shape (rows may start and end inside a byte). A byte above 242 is not five trits: its outputs are
    NaN.

    >>> import torch
    >>> from qcourse import packing
    >>> codes = torch.tensor([2, 1, 0, 0, 2, 2, 1], dtype=torch.uint8)     # trits [[1, 0, -1, -1, 1, 1, 0]]
    >>> gemm_ternary_base3(torch.arange(7.0), packing.pack(codes, packing.TERNARY), (1, 7), 0.5).tolist()
    [2.0]
    """
    _require()
    n, k = reference._check_shape(shape)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim != 1 \
            or packed.numel() != packing.packed_nbytes(n * k, packing.TERNARY):
        raise ValueError(f"packed must be the base-3 packing of {n}×{k} trits: a 1-D uint8 tensor of "
                         f"{packing.packed_nbytes(n * k, packing.TERNARY)} bytes")
    xb, vec = _as_batch(x, k)
    return _out(_base3(xb, packed.numpy(), _DIGITS, np.float32(float(gamma)), n, k), vec)


def binary_weight_groups(qweight) -> int | None:
    """Codes per scale of a :class:`~qcourse.methods.binary.BinaryWeight` when they fit the 1-bit affine
    kernel (a divisor of ``in_features`` or a multiple of it), else ``None``."""
    n, k = qweight.shape
    group = n * k // qweight.scales[0].numel()
    return group if (k % group == 0 or group % k == 0) else None


def gemm_binary_weight(x: torch.Tensor, qweight) -> torch.Tensor:
    """``x Ŵᵀ`` for a :class:`~qcourse.methods.binary.BinaryWeight` ``Ŵ = Σₖ αₖBₖ`` from its packed sign bits.

    >>> import torch
    >>> from qcourse.methods.binary import BinaryWeight
    >>> qw = BinaryWeight([torch.tensor([[1, -1, -1, 1]], dtype=torch.int8)],
    ...                   [torch.tensor([[0.5]], dtype=torch.float16)])
    >>> gemm_binary_weight(torch.tensor([1.0, 2.0, 3.0, 4.0]), qw).tolist()
    [0.0]
    """
    _require()
    from qcourse.methods.binary import BinaryWeight

    if not isinstance(qweight, BinaryWeight):
        raise TypeError(f"qweight must be a BinaryWeight; got {type(qweight).__name__}")
    group = binary_weight_groups(qweight)
    if group is None:
        raise ValueError("the scale groups of this BinaryWeight straddle rows; use its dequantize()")
    y = None
    for packed, alpha in zip(qweight.packed, qweight.scales, strict=True):
        scale = 2.0 * alpha.float()        # exact: fp16 doubled
        part = gemm_affine(x, packed, 1, qweight.shape, group, scale, torch.full_like(scale, 0.5))
        y = part if y is None else y + part
    return y


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
