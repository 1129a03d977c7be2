"""Bit-packing of integer quantization codes into bytes.

A ``b``-bit code takes ``b`` bits of storage only once it is packed: a ``uint8`` tensor wastes ``8 − b``
bits per code. This module packs unsigned codes of 1 to 8 bits, and base-3 ternary codes, into ``uint8``
bytes and unpacks them exactly.

Layout (documented so a kernel or another language can read it):

* **Integer widths** ``bits ∈ {1, …, 8}``: the codes form one little-endian *bit stream*. Code ``i``
  occupies stream bits ``[i·bits, (i+1)·bits)``, least-significant bit first, and stream bit ``k`` is bit
  ``k mod 8`` of byte ``k // 8``. For widths that divide 8 (1, 2, 4, 8) this means byte ``j`` holds codes
  ``j·(8/bits) … (j+1)·(8/bits) − 1`` with the first code in the lowest bits; 3-, 5-, 6- and 7-bit codes
  cross byte boundaries (no padding between codes, only at the very end). The packed size is
  ``ceil(n·bits/8)`` bytes and unused tail bits are zero.
  (The ``hqq`` package uses other layouts, e.g. row halves per byte for 4 bits and 10 codes per ``int32``
  for 3 bits; these are equivalent in size up to padding but not byte-compatible.)
* **Ternary** (``bits=1.58``): codes in ``{0, 1, 2}`` (a ternary weight ``t ∈ {−1, 0, 1}`` is code
  ``t + 1``), five per byte in base 3: byte ``j`` is ``Σ_{k<5} c[5j+k]·3^k ≤ 242``, so a trit costs
  8/5 = 1.6 bits (the limit is log2 3 ≈ 1.585). Missing trits at the end count as code 0.

Codes are always flattened in row-major (C) order; :func:`unpack` returns a 1-D ``uint8`` tensor of ``n``
codes that the caller reshapes.

>>> import torch
>>> codes = torch.tensor([1, 2, 3, 0, 3], dtype=torch.uint8)
>>> packed = pack(codes, bits=2)
>>> packed.tolist()             # 1 + 2·4 + 3·16 + 0·64 = 57; then 3
[57, 3]
>>> unpack(packed, bits=2, n=5).tolist()
[1, 2, 3, 0, 3]
>>> packed_nbytes(5, 3), packed_nbytes(5, 1.58)
(2, 1)
>>> unpack(pack(torch.tensor([2, 0, 1, 1, 2, 0]), 1.58), 1.58, 6).tolist()
[2, 0, 1, 1, 2, 0]
"""

from __future__ import annotations

import math

import torch

__all__ = ["TERNARY", "SUPPORTED_BITS", "pack", "unpack", "packed_nbytes", "check_bits"]

#: the value of ``bits`` that selects base-3 ternary packing
TERNARY = 1.58
#: every width this module packs
SUPPORTED_BITS: tuple[float, ...] = (1, 2, 3, 4, 5, 6, 7, 8, TERNARY)

_TRITS_PER_BYTE = 5
_POW3 = torch.tensor([1, 3, 9, 27, 81], dtype=torch.int32)


def check_bits(bits: float) -> None:
    """Raise ``ValueError`` unless ``bits`` is an integer 1–8 or 1.58 (ternary).

    >>> check_bits(3)
    >>> check_bits(9)
    Traceback (most recent call last):
    ...
    ValueError: bits must be one of [1, 2, 3, 4, 5, 6, 7, 8, 1.58]; got 9
    """
    if isinstance(bits, bool) or bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {list(SUPPORTED_BITS)}; got {bits!r}")


def packed_nbytes(n: int, bits: float) -> int:
    """Bytes that :func:`pack` produces for ``n`` codes of width ``bits``.

    >>> packed_nbytes(10, 3), packed_nbytes(16, 4), packed_nbytes(11, 1.58)
    (4, 8, 3)
    """
    check_bits(bits)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int (number of codes); got {n!r}")
    if bits == TERNARY:
        return math.ceil(n / _TRITS_PER_BYTE)
    return math.ceil(n * int(bits) / 8)


def _levels(bits: float) -> int:
    return 3 if bits == TERNARY else 2 ** int(bits)


def pack(codes: torch.Tensor, bits: float) -> torch.Tensor:
    """Pack unsigned integer ``codes`` (any shape, flattened row-major) into a 1-D ``uint8`` tensor.

    Parameters
    ----------
    codes
        Integer tensor with values in ``[0, 2**bits)`` (``{0, 1, 2}`` for ternary). Out-of-range values
        raise; nothing is clamped.
    bits
        Code width: 1–8, or ``1.58`` for base-3 ternary (5 codes per byte).

    Returns
    -------
    torch.Tensor
        ``uint8`` tensor of :func:`packed_nbytes` ``(codes.numel(), bits)`` bytes.

    >>> import torch
    >>> pack(torch.tensor([5, 7, 1]), bits=3).tolist()   # 5 + (7<<3) + (1<<6); bit 2 of code 2 → byte 1
    [125, 0]
    >>> pack(torch.tensor([4]), bits=2)
    Traceback (most recent call last):
    ...
    ValueError: codes must lie in [0, 3] for bits=2; got values from 4 to 4
    """
    check_bits(bits)
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes must be a torch.Tensor; got {type(codes).__name__}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise TypeError(f"codes must have an integer dtype (uint8, int8, …, int64); got {codes.dtype}")
    flat = codes.reshape(-1)
    n = flat.numel()
    hi = _levels(bits) - 1
    if n and (int(flat.min()) < 0 or int(flat.max()) > hi):
        raise ValueError(
            f"codes must lie in [0, {hi}] for bits={bits}; "
            f"got values from {int(flat.min())} to {int(flat.max())}")
    flat = flat.to(torch.int32)
    if bits == TERNARY:
        pad = (-n) % _TRITS_PER_BYTE
        trits = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, _TRITS_PER_BYTE)
        return (trits * _POW3).sum(dim=1).to(torch.uint8)
    b = int(bits)
    if 8 % b == 0:
        # whole codes per byte: a shift-and-add per byte position is much cheaper than a bit stream
        per = 8 // b
        pad = (-n) % per
        grid = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, per)
        shifts = torch.arange(per, dtype=torch.int32) * b
        return (grid << shifts).sum(dim=1).to(torch.uint8)
    # general widths: expand every code into its bits (LSB first), then regroup the stream by 8
    stream = ((flat[:, None] >> torch.arange(b, dtype=torch.int32)) & 1).reshape(-1).to(torch.uint8)
    pad = (-stream.numel()) % 8
    stream = torch.cat([stream, stream.new_zeros(pad)]).reshape(-1, 8).to(torch.int32)
    return (stream << torch.arange(8, dtype=torch.int32)).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: float, n: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``n`` codes, as a 1-D ``uint8`` tensor.

    >>> import torch
    >>> unpack(torch.tensor([125, 0], dtype=torch.uint8), bits=3, n=3).tolist()
    [5, 7, 1]
    """
    check_bits(bits)
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed must be a torch.Tensor; got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor (the output of pack); got dtype {packed.dtype}")
    need = packed_nbytes(n, bits)
    if packed.numel() != need:
        raise ValueError(f"packed has {packed.numel()} bytes but n={n} codes of {bits} bits need {need}")
    flat = packed.reshape(-1).to(torch.int32)
    if bits == TERNARY:
        if flat.numel() and int(flat.max()) > 3**_TRITS_PER_BYTE - 1:
            raise ValueError(f"packed holds a byte > {3**_TRITS_PER_BYTE - 1}: not base-3 ternary data")
        trits = (flat[:, None] // _POW3) % 3
        return trits.reshape(-1)[:n].to(torch.uint8)
    b = int(bits)
    if 8 % b == 0:
        per = 8 // b
        shifts = torch.arange(per, dtype=torch.int32) * b
        return ((flat[:, None] >> shifts) & (2**b - 1)).reshape(-1)[:n].to(torch.uint8)
    stream = ((flat[:, None] >> torch.arange(8, dtype=torch.int32)) & 1).reshape(-1)[: n * b].reshape(n, b)
    return (stream << torch.arange(b, dtype=torch.int32)).sum(dim=1).to(torch.uint8)
