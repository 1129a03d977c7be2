"""qcourse.xnor: packed ±1 words and XNOR-popcount dot products, bit-exact against integer dot products."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import xnor

WORDS = sorted(xnor.WORD_BITS)


def _signs(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1, 1).astype(np.int8)


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 300), word_bits=st.sampled_from(WORDS), seed=st.integers(0, 2**32 - 1))
def test_both_identities_equal_the_integer_dot_product_for_every_length(n, word_bits, seed):
    rng = np.random.default_rng(seed)
    a, b = _signs(rng, n), _signs(rng, n)
    pa, pb = xnor.pack_signs(a, word_bits), xnor.pack_signs(b, word_bits)
    exact = int(a.astype(np.int64) @ b.astype(np.int64))
    assert xnor.dot_xor(pa, pb, n) == exact
    assert xnor.dot_xnor(pa, pb, n) == exact
    assert np.array_equal(xnor.unpack_signs(pa, n), a)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), word_bits=st.sampled_from(WORDS), seed=st.integers(0, 2**32 - 1),
       m=st.integers(1, 9), batch=st.integers(1, 4))
def test_matmul_equals_the_float_product_of_the_same_signs(n, word_bits, seed, m, batch):
    rng = np.random.default_rng(seed)
    w, x = _signs(rng, m, n), _signs(rng, batch, n)
    got = xnor.xnor_matmul(xnor.pack_signs(w, word_bits), xnor.pack_signs(x, word_bits), n)
    want = torch.from_numpy(x).double() @ torch.from_numpy(w).double().T
    assert got.dtype == np.int64
    assert np.array_equal(got, want.numpy().astype(np.int64))
    vec = xnor.xnor_matmul(xnor.pack_signs(w, word_bits), xnor.pack_signs(x[0], word_bits), n)
    assert np.array_equal(vec, got[0])


def test_layout_element_zero_is_the_lowest_bit_and_the_tail_is_zero():
    x = np.array([1] + [-1] * 8 + [1], dtype=np.int8)       # n = 10: bits 0 and 9
    assert xnor.pack_signs(x, 8).tolist() == [1, 2]
    assert xnor.pack_signs(x, 16).tolist() == [1 + 512]
    assert xnor.pack_signs(np.ones(70, np.int8), 64).tolist() == [2**64 - 1, 2**6 - 1]


@pytest.mark.parametrize("n", [32, 64, 128])
def test_seed_article_formula_is_the_negated_dot_product_when_words_are_full(n):
    rng = np.random.default_rng(n)
    a, b = _signs(rng, n), _signs(rng, n)
    pa, pb = xnor.pack_signs(a, 32), xnor.pack_signs(b, 32)
    assert xnor.seed_article_dot(pa, pb, n) == -int(a.astype(int) @ b.astype(int))


def test_unmasked_xnor_counts_the_tail_as_agreement():
    a = b = np.ones(5, np.int8)
    pa = xnor.pack_signs(a, 8)
    pb = xnor.pack_signs(b, 8)
    unmasked = 2 * int(xnor.popcount(~(pa ^ pb)).sum()) - 5    # 3 zero tail bits "agree"
    assert unmasked == 11 and xnor.dot_xnor(pa, pb, 5) == 5


def test_binarize_maps_zero_to_plus_one():
    assert xnor.binarize(torch.tensor([0.0, -0.0, -1e-9, 3.0])).tolist() == [1, 1, -1, 1]
    with pytest.raises(ValueError, match="NaN"):
        xnor.binarize(torch.tensor([float("nan")]))


def test_popcount_matches_python_bin_count():
    rng = np.random.default_rng(0)
    w = rng.integers(0, 2**63, size=100, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 100, np.uint64)
    assert xnor.popcount(w).tolist() == [bin(int(v)).count("1") for v in w]


@pytest.mark.parametrize("bad, err, match", [
    (np.array([1, 0, -1]), ValueError, "only -1 and \\+1"),
    (np.array([1.0, 0.5]), ValueError, "only -1 and \\+1"),
    (np.array([True, False]), TypeError, "numeric"),
    (np.zeros((2, 0)), ValueError, "non-empty"),
    (np.array(1), ValueError, "non-empty"),
])
def test_pack_refuses_non_signs(bad, err, match):
    with pytest.raises(err, match=match):
        xnor.pack_signs(bad)


def test_bad_arguments_are_refused_with_names():
    p8 = xnor.pack_signs(np.ones(9, np.int8), 8)
    p16 = xnor.pack_signs(np.ones(9, np.int8), 16)
    with pytest.raises(ValueError, match="word_bits"):
        xnor.pack_signs(np.ones(4), word_bits=12)
    with pytest.raises(ValueError, match="word_bits"):
        xnor.pack_signs(np.ones(4), word_bits=True)
    with pytest.raises(TypeError, match="same word type"):
        xnor.dot_xor(p8, p16, 9)
    with pytest.raises(ValueError, match="ceil"):
        xnor.dot_xor(p8, p8, 17)
    with pytest.raises(ValueError, match="n must be a positive int"):
        xnor.dot_xnor(p8, p8, 0)
    with pytest.raises(TypeError, match="numpy array"):
        xnor.dot_xor([1], p8, 9)
    with pytest.raises(TypeError, match="uint8/16/32/64"):
        xnor.popcount(np.ones(3, np.int32))
    with pytest.raises(ValueError, match="w_words"):
        xnor.xnor_matmul(p8[None, None], p8, 9)
    with pytest.raises(ValueError, match="ceil"):
        xnor.unpack_signs(p8, 20)
