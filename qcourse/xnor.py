"""XNOR-popcount arithmetic: ±1 vectors packed into machine words, dot products from bit counts.

Binary networks (BNN, Hubara et al. 2016; XNOR-Net, Rastegari et al. 2016) store every ±1 value as one bit,
``1 ↔ +1`` and ``0 ↔ −1``, and replace a dot product of two ±1 vectors of length ``n`` by bit operations.
Write ``d`` for the number of positions where ``a`` and ``b`` differ: those contribute ``−1`` each, the
``n − d`` others ``+1``, so

* ``a·b = (n − d) − d = n − 2·popcount(a XOR b)``  (``XOR`` marks the *differing* bits), and
* ``a·b = 2·popcount(a XNOR b) − n``               (``XNOR`` marks the *agreeing* bits).

Both are the same identity (``popcount(XNOR) = n − popcount(XOR)``). The seed article writes
``n − 2·popcount(a ⊕ b)`` and calls ``⊕`` XNOR; with XNOR in that formula the sign flips
(``n − 2·popcount(XNOR) = −a·b``): :func:`seed_article_dot` keeps the mistake for the lesson to test.

**Words and the tail.** Vectors are packed into unsigned words of ``word_bits ∈ {8, 16, 32, 64}`` bits:
element ``i`` is bit ``i mod word_bits`` (least significant first) of word ``i // word_bits``. When ``n`` is
not a multiple of ``word_bits``, the unused high bits of the last word are **zero** in every packed vector.
Then ``XOR`` of two tails is zero and the XOR form needs no correction, while ``XNOR`` of two tails is all
ones: the XNOR form must mask the tail (or subtract the padding count), exactly the bug a kernel with
``K / 32`` words and no tail handling has. Both functions here are bit-exact for every ``n ≥ 1``.

Popcount uses :func:`numpy.bitwise_count` (one hardware ``POPCNT`` per word where the CPU has it).

>>> import torch
>>> a = torch.tensor([1, -1, -1, 1, 1])
>>> b = torch.tensor([1, 1, -1, -1, 1])
>>> int(a @ b)
1
>>> pa, pb = pack_signs(a, word_bits=8), pack_signs(b, word_bits=8)
>>> [f"{int(w):08b}" for w in pa]          # element 0 is the lowest bit; bits 5-7 are the zero tail
['00011001']
>>> dot_xor(pa, pb, n=5), dot_xnor(pa, pb, n=5)
(1, 1)
>>> seed_article_dot(pa, pb, n=5)          # XNOR in the XOR formula: the sign (and the tail) go wrong
-7
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

__all__ = [
    "WORD_BITS", "binarize", "pack_signs", "unpack_signs", "n_words", "popcount", "dot_xor", "dot_xnor",
    "seed_article_dot", "xnor_matmul", "tail_mask",
]

#: word widths accepted by :func:`pack_signs`, and the numpy dtype of each
WORD_BITS = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def _check_word_bits(word_bits: object) -> int:
    if isinstance(word_bits, bool) or word_bits not in WORD_BITS:
        raise ValueError(f"word_bits must be one of {sorted(WORD_BITS)}; got {word_bits!r}")
    return int(word_bits)  # type: ignore[call-overload]


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive int (the vector length); got {n!r}")
    return int(n)


def n_words(n: int, word_bits: int = 64) -> int:
    """Words needed for ``n`` bits: ``ceil(n / word_bits)``.

    >>> n_words(64), n_words(65), n_words(1, word_bits=8)
    (1, 2, 1)
    """
    return -(-_check_n(n) // _check_word_bits(word_bits))


def binarize(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``sign(x)`` with ``sign(0) = +1`` (``int8`` tensor of ±1): every value gets a bit.

    >>> binarize(torch.tensor([0.5, 0.0, -2.0])).tolist()
    [1, 1, -1]
    """
    x = torch.as_tensor(x)
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf; binarize needs finite values")
    return torch.where(x >= 0, 1, -1).to(torch.int8)


def pack_signs(x: torch.Tensor | np.ndarray, word_bits: int = 64) -> np.ndarray:
    """Pack ±1 values along the last axis into words: shape ``[..., ceil(n / word_bits)]``.

    Element ``i`` is bit ``i mod word_bits`` of word ``i // word_bits``, ``1`` for ``+1``; the tail bits of
    the last word are zero. ``x`` must hold only ``−1`` and ``+1`` (use :func:`binarize` first).

    >>> pack_signs(torch.tensor([[1, 1, -1], [-1, -1, 1]]), word_bits=8).tolist()
    [[3], [4]]
    >>> pack_signs(torch.tensor([1, 0, -1]))
    Traceback (most recent call last):
    ...
    ValueError: x must hold only -1 and +1 (binarize it first); got values [-1, 0, 1]
    """
    word_bits = _check_word_bits(word_bits)
    arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if arr.ndim == 0 or arr.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last axis; got shape {arr.shape}")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"x must be a numeric array of -1/+1; got dtype {arr.dtype}")
    ok = (arr == 1) | (arr == -1)
    if not ok.all():
        raise ValueError(f"x must hold only -1 and +1 (binarize it first); got values "
                         f"{np.unique(arr).tolist()[:10]}")
    n = arr.shape[-1]
    bits = np.packbits(arr > 0, axis=-1, bitorder="little")     # bytes, element 0 in bit 0, tail zero
    nbytes = n_words(n, word_bits) * word_bits // 8
    if bits.shape[-1] < nbytes:
        bits = np.concatenate([bits, np.zeros(bits.shape[:-1] + (nbytes - bits.shape[-1],), np.uint8)], -1)
    # little-endian byte order makes byte k of a word its bits 8k..8k+7, matching the element order
    return np.ascontiguousarray(bits).view(np.dtype(WORD_BITS[word_bits]).newbyteorder("<")).astype(
        WORD_BITS[word_bits])


def unpack_signs(words: np.ndarray, n: int) -> np.ndarray:
    """The ±1 vector(s) of length ``n`` packed in ``words`` (``int8``), the inverse of :func:`pack_signs`.

    >>> unpack_signs(np.array([3], dtype=np.uint8), 3).tolist()
    [1, 1, -1]
    """
    words = _check_words(words, "words")
    n = _check_n(n)
    word_bits = words.dtype.itemsize * 8
    if words.shape[-1] != n_words(n, word_bits):
        raise ValueError(f"words must have ceil(n/{word_bits}) = {n_words(n, word_bits)} words on the last "
                         f"axis for n={n}; got {words.shape[-1]}")
    raw = np.ascontiguousarray(words.astype(words.dtype.newbyteorder("<"))).view(np.uint8)
    bits = np.unpackbits(raw, axis=-1, bitorder="little")[..., :n]
    return (2 * bits.astype(np.int8) - 1).astype(np.int8)


def _check_words(words: object, name: str) -> np.ndarray:
    if not isinstance(words, np.ndarray):
        raise TypeError(f"{name} must be a numpy array of unsigned words (from pack_signs); "
                        f"got {type(words).__name__}")
    if words.dtype.type not in WORD_BITS.values() or words.ndim == 0:
        raise TypeError(f"{name} must be an array of uint8/16/32/64 words with at least one axis; "
                        f"got dtype {words.dtype}, shape {words.shape}")
    return words


def _check_pair(a: np.ndarray, b: np.ndarray, n: int) -> int:
    a, b = _check_words(a, "a"), _check_words(b, "b")
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must use the same word type; got {a.dtype} and {b.dtype}")
    n = _check_n(n)
    need = n_words(n, a.dtype.itemsize * 8)
    if a.shape[-1] != need or b.shape[-1] != need:
        raise ValueError(f"a and b must have ceil(n/{a.dtype.itemsize * 8}) = {need} words on the last axis "
                         f"for n={n}; got {a.shape[-1]} and {b.shape[-1]}")
    return n


def popcount(words: np.ndarray) -> np.ndarray:
    """Number of set bits of every word (``uint8`` array, same shape).

    >>> popcount(np.array([0, 1, 255, 2**64 - 1], dtype=np.uint64)).tolist()
    [0, 1, 8, 64]
    """
    return np.bitwise_count(_check_words(words, "words"))


def tail_mask(n: int, word_bits: int = 64) -> np.ndarray:
    """Per word, the bits that hold elements (all ones except the unused tail of the last word).

    >>> [f"{int(w):08b}" for w in tail_mask(11, word_bits=8)]
    ['11111111', '00000111']
    """
    n, word_bits = _check_n(n), _check_word_bits(word_bits)
    dtype = WORD_BITS[word_bits]
    mask = np.full(n_words(n, word_bits), np.iinfo(dtype).max, dtype=dtype)
    rem = n % word_bits
    if rem:
        mask[-1] = dtype((1 << rem) - 1)
    return mask


def dot_xor(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray | int:
    """``a·b = n − 2·popcount(a XOR b)`` over the last axis (zero tails cancel in ``XOR``).

    ``a`` and ``b`` broadcast against each other over the leading axes; returns an ``int`` for vectors.
    """
    n = _check_pair(a, b, n)
    d = np.bitwise_count(a ^ b).sum(axis=-1, dtype=np.int64)
    out = n - 2 * d
    return int(out) if out.ndim == 0 else out


def dot_xnor(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray | int:
    """``a·b = 2·popcount(a XNOR b) − n`` over the last axis, the tail masked out (``XNOR`` of two zero
    tails is all ones and would count as agreement)."""
    n = _check_pair(a, b, n)
    agree = np.bitwise_count(~(a ^ b) & tail_mask(n, a.dtype.itemsize * 8)).sum(axis=-1, dtype=np.int64)
    out = 2 * agree - n
    return int(out) if out.ndim == 0 else out


def seed_article_dot(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray | int:
    """The seed article's formula as it reads, ``n − 2·popcount(a XNOR b)`` with no tail mask: wrong
    (``−a·b`` when ``n`` is a multiple of the word size, and off by twice the padding otherwise); kept so
    the lesson can show it failing."""
    n = _check_pair(a, b, n)
    out = n - 2 * np.bitwise_count(~(a ^ b)).sum(axis=-1, dtype=np.int64)
    return int(out) if out.ndim == 0 else out


def xnor_matmul(w_words: np.ndarray, x_words: np.ndarray, n: int) -> np.ndarray:
    """``X Wᵀ`` of ±1 matrices from packed words: ``w_words [m, k]``, ``x_words [b, k]`` (or ``[k]``) →
    ``int64 [b, m]`` (or ``[m]``), every entry ``n − 2·popcount(x XOR w)``.

    >>> w = torch.tensor([[1, -1, 1], [-1, -1, -1]])
    >>> x = torch.tensor([[1, 1, 1]])
    >>> xnor_matmul(pack_signs(w), pack_signs(x), 3).tolist(), (x @ w.T).tolist()
    ([[1, -3]], [[1, -3]])
    """
    w_words, x_words = _check_words(w_words, "w_words"), _check_words(x_words, "x_words")
    if w_words.ndim != 2:
        raise ValueError(f"w_words must be [out_features, words]; got shape {w_words.shape}")
    if x_words.ndim not in (1, 2):
        raise ValueError(f"x_words must be [words] or [batch, words]; got shape {x_words.shape}")
    vec = x_words.ndim == 1
    x2 = x_words[None] if vec else x_words
    n = _check_pair(w_words, x2, n)
    # one output row at a time keeps the [b, m, k] XOR temporary small
    out = np.empty((x2.shape[0], w_words.shape[0]), dtype=np.int64)
    for i in range(x2.shape[0]):
        out[i] = n - 2 * np.bitwise_count(w_words ^ x2[i]).sum(axis=-1, dtype=np.int64)
    return out[0] if vec else out
