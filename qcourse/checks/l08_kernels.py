"""Checks for lesson 08's exercises: unpacking 2-bit codes with shifts and masks, a ternary GEMV from pair
lookup tables, and a binary GEMV from XOR and popcount.

>>> from qcourse.checks.l08_kernels import check_unpack_2bit, reference_unpack_2bit
>>> check_unpack_2bit(reference_unpack_2bit, verbose=False).passed
True
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from qcourse import packing, xnor
from qcourse.checks._harness import Case, CheckResult, Mutant, run_check

__all__ = [
    "check_unpack_2bit", "reference_unpack_2bit", "check_ternary_lut_gemv", "reference_ternary_lut_gemv",
    "check_binary_gemv", "reference_binary_gemv",
]


# --- 1. unpack 2-bit codes ------------------------------------------------------------------------------


def reference_unpack_2bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` 2-bit codes of ``packed`` (``uint8``, four codes per byte, code ``i`` in bits
    ``2(i mod 4)`` and ``2(i mod 4) + 1`` of byte ``i // 4``: the first code in the lowest bits), as a 1-D
    ``uint8`` tensor of length ``n``."""
    return packing.unpack(packed, 2, n)


def _unpack_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(8)

    def packed(codes: torch.Tensor) -> tuple[torch.Tensor, int]:
        return packing.pack(codes, 2), codes.numel()

    return [
        Case("seeded random codes, n = 64", packed(torch.randint(0, 4, (64,), generator=gen))),
        Case("order inside a byte: codes 0, 1, 2, 3 (the first code in the lowest bits)",
             packed(torch.tensor([0, 1, 2, 3, 3, 2, 1, 0]))),
        Case("every code 3 (byte 0xFF): mask each field with 0b11", packed(torch.full((12,), 3))),
        Case("top field set (bits 6-7) in every byte", packed(torch.tensor([0, 0, 0, 3] * 4))),
        Case("n = 10, not a multiple of 4: return exactly n codes",
             packed(torch.randint(0, 4, (10,), generator=gen))),
        Case("n = 1", packed(torch.tensor([2]))),
        Case("all zeros", packed(torch.zeros(8, dtype=torch.long))),
        Case("seeded, n = 1001", packed(torch.randint(0, 4, (1001,), generator=gen))),
    ]


def check_unpack_2bit(student_fn: Callable[[torch.Tensor, int], torch.Tensor], verbose: bool = True
                      ) -> CheckResult:
    """Check ``unpack_2bit(packed, n) -> codes`` (1-D ``uint8``), bit-exact."""
    return run_check(
        "unpack_2bit", student_fn, reference_unpack_2bit, _unpack_cases(), rtol=0, atol=0,
        hint="""
            Code i sits in byte i // 4 at shift 2·(i % 4): (byte >> shift) & 3. With the four shifts
            [0, 2, 4, 6]: ((packed[:, None].int() >> shifts) & 3).reshape(-1)[:n] — the first code of a
            byte is in the LOWEST two bits, the mask is 0b11 (not 1), the shift is 2 bits per code (not 1),
            keep exactly n codes (the last byte may hold padding), and return torch.uint8.
            """,
        verbose=verbose)


# --- 2. the ternary GEMV from pair lookup tables ----------------------------------------------------------


def reference_ternary_lut_gemv(x: torch.Tensor, packed: torch.Tensor, n_out: int) -> torch.Tensor:
    """``T x`` (float32 ``[n_out]``) for trits ``T`` (``n_out × K``, ``K = x.numel()``, ``K % 4 == 0``) stored
    as 2-bit codes ``t + 1`` in row-major order (``T[r, k]`` is code ``r·K + k`` of ``packed``).

    Computed directly in float64: the table kernel of the exercise must give the same numbers up to float32
    rounding."""
    k = x.numel()
    t = packing.unpack(packed, 2, n_out * k).double().reshape(n_out, k) - 1.0
    return (t @ x.double()).float()


def _lut_case(gen: torch.Generator, n: int, k: int, codes: torch.Tensor | None = None,
              x: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    if codes is None:
        codes = torch.randint(0, 3, (n * k,), generator=gen)
    if x is None:
        x = torch.randn(k, generator=gen)
    return x, packing.pack(codes, 2), n


def _lut_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(80)
    outlier = torch.randn(16, generator=gen) * 0.01
    outlier[5] = 1e4
    # row 0 all +1, row 1 all -1, row 2 all 0: codes 2, 0, 1
    rows = torch.cat([torch.full((8,), 2), torch.full((8,), 0), torch.full((8,), 1)])
    return [
        Case("seeded 16 × 64", _lut_case(gen, 16, 64)),
        Case("rows of all +1, all -1, all 0 (codes 2, 0, 1: code c means trit c - 1)",
             _lut_case(gen, 3, 8, codes=rows)),
        Case("pairs in order: only the second weight of each pair is nonzero",
             _lut_case(gen, 2, 8, codes=torch.tensor([1, 2, 1, 0] * 4))),
        Case("several rows: row r starts at byte r·K/4", _lut_case(gen, 7, 12)),
        Case("one row, K = 4 (one byte)", _lut_case(gen, 1, 4)),
        Case("an outlier activation (1e4)", _lut_case(gen, 5, 16, x=outlier)),
        Case("seeded 33 × 256", _lut_case(gen, 33, 256)),
    ]


def check_ternary_lut_gemv(student_fn: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor],
                           verbose: bool = True) -> CheckResult:
    """Check ``ternary_lut_gemv(x, packed, n_out) -> y`` (float32 ``[n_out]``) against the float64 product."""
    return run_check(
        "ternary_lut_gemv", student_fn, reference_ternary_lut_gemv, _lut_cases(), rtol=1e-5, atol=1e-4,
        hint="""
            Table: for pair p, table[p, c0 + 4·c1] = (c0 − 1)·x[2p] + (c1 − 1)·x[2p + 1] for the 16 nibbles
            (c0 in the LOW two bits of the nibble: it is the first code of the pair). Each byte of a row holds
            two pairs: its low nibble (byte & 15) indexes pair 2j's table, its high nibble (byte >> 4) pair
            2j + 1's. Row r's bytes start at r·K/4. Trit = code − 1 (code 0 is −1, code 2 is +1). Build the
            tables once and reuse them for every row; return float32 of shape [n_out].
            """,
        verbose=verbose)


# --- 3. the binary GEMV from XOR and popcount ---------------------------------------------------------------


def reference_binary_gemv(w_words: np.ndarray, x_words: np.ndarray, n: int) -> np.ndarray:
    """``W x`` for ±1 rows ``W`` (``w_words``: ``uint64 [rows, words]``) and a ±1 vector ``x``
    (``x_words``: ``uint64 [words]``), both packed by :func:`qcourse.xnor.pack_signs` (zero tail):
    ``n − 2·popcount(w XOR x)`` per row, ``np.int64 [rows]``."""
    return (n - 2 * np.bitwise_count(w_words ^ x_words[None, :]).sum(axis=1, dtype=np.int64)).astype(np.int64)


def _bin_case(rng: np.random.Generator, rows: int, n: int, w: np.ndarray | None = None,
              x: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    if x is None:
        x = np.where(rng.random(n) < 0.5, -1, 1)
    if w is None:
        w = np.where(rng.random((rows, n)) < 0.5, -1, 1)
    return xnor.pack_signs(w), xnor.pack_signs(x), n


def _bin_cases() -> list[Case]:
    rng = np.random.default_rng(88)
    x100 = np.where(rng.random(100) < 0.5, -1, 1)
    return [
        Case("seeded 8 rows, n = 256 (whole words)", _bin_case(rng, 8, 256)),
        Case("n = 100: the last word has a zero tail (XNOR would count it as agreement)",
             _bin_case(rng, 5, 100)),
        Case("rows equal to x and to −x: w·x = n and −n", _bin_case(rng, 2, 100, w=np.stack([x100, -x100]),
                                                                     x=x100)),
        Case("n = 65: one element in the second word", _bin_case(rng, 3, 65)),
        Case("one row, n = 1", _bin_case(rng, 1, 1)),
        Case("seeded 40 rows, n = 1000", _bin_case(rng, 40, 1000)),
    ]


def check_binary_gemv(student_fn: Callable[[np.ndarray, np.ndarray, int], np.ndarray], verbose: bool = True
                      ) -> CheckResult:
    """Check ``binary_gemv(w_words, x_words, n) -> y`` (``np.int64 [rows]``), bit-exact."""
    return run_check(
        "binary_gemv", student_fn, reference_binary_gemv, _bin_cases(), rtol=0, atol=0,
        hint="""
            XOR marks the positions where a row and x differ; each contributes −1 and the rest +1, so row r
            gives n − 2·popcount(w[r] ^ x) summed over its words: np.bitwise_count(w_words ^ x_words).sum(1)
            (broadcast x over the rows; sum along the words axis). Use n, not 64 × words; with XNOR the tail
            bits must be masked. Return np.int64 (uint64 cannot hold a negative dot product).
            """,
        verbose=verbose)


# --- mutants ------------------------------------------------------------------------------------------------


def _unpack_with(shifts: list[int], mask: int = 3, keep_all: bool = False, dtype: torch.dtype = torch.uint8
                 ) -> Callable[[torch.Tensor, int], torch.Tensor]:
    def fn(packed: torch.Tensor, n: int) -> torch.Tensor:
        codes = ((packed.int()[:, None] >> torch.tensor(shifts)) & mask).reshape(-1)
        return (codes if keep_all else codes[:n]).to(dtype)
    return fn


def _unpack_signed(packed: torch.Tensor, n: int) -> torch.Tensor:
    # arithmetic shift of a signed byte, top field not masked: 0xC0 >> 6 is −1
    s = packed.view(torch.int8).int()
    fields = [s & 3, (s >> 2) & 3, (s >> 4) & 3, s >> 6]
    return torch.stack(fields, dim=1).reshape(-1)[:n].to(torch.uint8)


def _unpack_inplace(packed: torch.Tensor, n: int) -> torch.Tensor:
    out = []
    for _ in range(4):
        out.append(packed & 3)
        packed >>= 2  # shifts the caller's tensor
    return torch.stack(out, dim=1).reshape(-1)[:n]


def _lut_mutant(trit: Callable[[torch.Tensor], torch.Tensor] = lambda c: c - 1.0, swap_nibbles: bool = False,
                swap_in_pair: bool = False, row_bytes: Callable[[int], int] = lambda k: k // 4,
                dtype: torch.dtype = torch.float32, low_only: bool = False
                ) -> Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]:
    def fn(x: torch.Tensor, packed: torch.Tensor, n_out: int) -> torch.Tensor:
        k = x.numel()
        nib = torch.arange(16)
        c0, c1 = nib & 3, nib >> 2
        if swap_in_pair:
            c0, c1 = c1, c0
        xp = x.float().reshape(-1, 2)
        table = trit(c0.float())[None, :] * xp[:, :1] + trit(c1.float())[None, :] * xp[:, 1:]   # [K/2, 16]
        y = torch.zeros(n_out, dtype=torch.float32)
        stride = row_bytes(k)
        for r in range(n_out):
            row = packed[r * stride:r * stride + k // 4].long()
            lo, hi = row & 15, row >> 4
            if swap_nibbles:
                lo, hi = hi, lo
            pairs = torch.arange(k // 4)
            acc = table[2 * pairs, lo].sum()
            if not low_only:
                acc = acc + table[2 * pairs + 1, hi].sum()
            y[r] = acc
        return y.to(dtype)
    return fn


def _lut_inplace(x: torch.Tensor, packed: torch.Tensor, n_out: int) -> torch.Tensor:
    y = reference_ternary_lut_gemv(x, packed, n_out)
    x.zero_()
    return y


def _lut_seed_encoding(x: torch.Tensor, packed: torch.Tensor, n_out: int) -> torch.Tensor:
    # the seed article's encoding: 00 = 0, 01 = +1, 11 = −1 (and 10 ignored) read on codes t + 1
    k = x.numel()
    codes = packing.unpack(packed, 2, n_out * k).long().reshape(n_out, k)
    t = torch.tensor([0.0, 1.0, 0.0, -1.0])[codes]
    return (t.double() @ x.double()).float()


def _bin_mutant(kind: str) -> Callable[[np.ndarray, np.ndarray, int], np.ndarray]:
    def fn(w: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
        diff = np.bitwise_count(w ^ x[None, :]).sum(axis=1, dtype=np.int64)
        same = np.bitwise_count(~(w ^ x[None, :])).sum(axis=1, dtype=np.int64)
        if kind == "xnor-unmasked":
            return 2 * same - n
        if kind == "seed-article":
            return n - 2 * same
        if kind == "word-length":
            return 64 * w.shape[1] - 2 * diff
        if kind == "popcount-only":
            return diff
        if kind == "uint64":
            return (n - 2 * diff).astype(np.uint64)
        if kind == "float":
            return (n - 2 * diff).astype(np.float64)
        raise AssertionError(kind)
    return fn


def _bin_inplace(w: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    w ^= x[None, :]
    return (n - 2 * np.bitwise_count(w).sum(axis=1)).astype(np.int64)


def _bin_first_word_only(w: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    return (n - 2 * np.bitwise_count(w[:, 0] ^ x[0]).astype(np.int64)).astype(np.int64)


MUTANTS: dict[str, list[Mutant]] = {
    "check_unpack_2bit": [
        Mutant("msb-first", _unpack_with([6, 4, 2, 0]), "first code in the lowest bits"),
        Mutant("mask-1", _unpack_with([0, 2, 4, 6], mask=1), "every code 3"),
        Mutant("shift-1-per-code", _unpack_with([0, 1, 2, 3]), "order inside a byte"),
        Mutant("keeps-padding", _unpack_with([0, 2, 4, 6], keep_all=True), "return exactly n codes"),
        Mutant("int64-codes", _unpack_with([0, 2, 4, 6], dtype=torch.int64), "dtype"),
        Mutant("signed-shift", _unpack_signed, "top field set"),
        Mutant("in-place", _unpack_inplace, "modified its input"),
    ],
    "check_ternary_lut_gemv": [
        Mutant("code-as-trit", _lut_mutant(trit=lambda c: c), "all +1, all -1, all 0"),
        Mutant("nibbles-swapped", _lut_mutant(swap_nibbles=True), "pairs in order"),
        Mutant("pair-order-swapped", _lut_mutant(swap_in_pair=True), "pairs in order"),
        Mutant("row-stride-K/2", _lut_mutant(row_bytes=lambda k: k // 2), "several rows"),
        Mutant("low-nibble-only", _lut_mutant(low_only=True), "seeded 16 × 64"),
        Mutant("float64-result", _lut_mutant(dtype=torch.float64), "dtype"),
        Mutant("seed-article-encoding", _lut_seed_encoding, "all +1, all -1, all 0"),
        Mutant("in-place", _lut_inplace, "modified its input"),
    ],
    "check_binary_gemv": [
        Mutant("xnor-unmasked", _bin_mutant("xnor-unmasked"), "zero tail"),
        Mutant("seed-article", _bin_mutant("seed-article"), "whole words"),
        Mutant("n-from-words", _bin_mutant("word-length"), "zero tail"),
        Mutant("popcount-only", _bin_mutant("popcount-only"), "whole words"),
        Mutant("uint64-result", _bin_mutant("uint64"), "dtype"),
        Mutant("float-result", _bin_mutant("float"), "dtype"),
        Mutant("first-word-only", _bin_first_word_only, "n = 1000"),
        Mutant("in-place", _bin_inplace, "modified its input"),
    ],
}
