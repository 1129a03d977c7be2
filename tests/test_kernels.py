"""Packed kernels against the reference, and the reference against the decoded weight."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import packing, xnor
from qcourse.affine import AffineQuantizedWeight, quantize_groups
from qcourse.kernels import reference
from qcourse.methods.bitnet import TernaryWeight

# every affine layout the kernels must read: (bits, out, in, group_size); odd shapes and rows that do not
# start on a byte boundary included
AFFINE_CASES = [
    (4, 8, 64, 32), (4, 3, 10, 5), (4, 5, 7, None), (4, 4, 6, "tensor"), (4, 7, 33, 11),
    (2, 8, 64, 16), (2, 3, 10, 5), (2, 5, 6, None), (2, 3, 9, 3), (2, 4, 12, "tensor"),
    (1, 3, 13, None), (8, 3, 10, 5), (3, 4, 12, 6),
]


def _affine(bits, n, k, group_size, seed=0, symmetric=False, float_zero=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    codes, scale, zero = quantize_groups(w, bits, group_size, symmetric=symmetric, scale_dtype=torch.float16)
    z = None if symmetric else (zero.to(torch.float16) + 0.25 if float_zero else zero.to(torch.uint8))
    return AffineQuantizedWeight(codes, bits, group_size, 1, scale, z)


@pytest.mark.parametrize("bits,n,k,group_size", AFFINE_CASES)
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_reference_affine_equals_decoded(bits, n, k, group_size, batch):
    qw = _affine(bits, n, k, group_size)
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(reference.matmul(x, qw), x @ qw.dequantize().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("symmetric,float_zero", [(True, False), (False, True)])
def test_reference_affine_symmetric_and_float_zero(symmetric, float_zero):
    qw = _affine(4, 5, 12, 4, symmetric=symmetric, float_zero=float_zero)
    x = torch.randn(2, 12, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(reference.matmul(x, qw), x @ qw.dequantize().T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["2bit", "base3"])
@pytest.mark.parametrize("n,k", [(4, 16), (3, 7), (5, 13), (1, 1)])
def test_reference_ternary_equals_decoded(kind, n, k):
    g = torch.Generator().manual_seed(n * 100 + k)
    trits = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    qw = TernaryWeight(trits, torch.tensor(0.37), kind)
    x = torch.randn(4, k, generator=g)
    torch.testing.assert_close(reference.matmul(x, qw), x @ qw.dequantize().T, rtol=1e-5, atol=1e-5)
    assert reference.matmul(x[0], qw).shape == (n,)


@given(n=st.integers(1, 6), k=st.integers(1, 140), batch=st.integers(1, 4), seed=st.integers(0, 99))
@settings(max_examples=30, deadline=None)
def test_reference_binary_equals_integer_matmul(n, k, batch, seed):
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((n, k)) < 0.5, -1, 1)
    x = np.where(rng.random((batch, k)) < 0.5, -1, 1)
    got = reference.gemm_binary(xnor.pack_signs(w), xnor.pack_signs(x), k)
    np.testing.assert_array_equal(got, x @ w.T)


def test_reference_rejects_bad_input():
    qw = _affine(4, 3, 8, 4)
    p = reference.affine_params(qw)
    args = (p["packed"], 4, (3, 8), 4, p["scale"], p["zero"])
    with pytest.raises(ValueError, match="x must be"):
        reference.gemm_affine(torch.randn(2, 7), *args)
    with pytest.raises(TypeError, match="x must be a floating-point"):
        reference.gemm_affine(torch.ones(8, dtype=torch.int32), *args)
    with pytest.raises(ValueError, match="packed must be"):
        reference.gemm_affine(torch.randn(8), p["packed"][:-1], *args[1:])
    with pytest.raises(ValueError, match="group must"):
        reference.gemm_affine(torch.randn(8), p["packed"], 4, (3, 8), 3, p["scale"], p["zero"])
    with pytest.raises(ValueError, match="scale must"):
        reference.gemm_affine(torch.randn(8), p["packed"], 4, (3, 8), 4, p["scale"][:-1], p["zero"])
    with pytest.raises(ValueError, match="packing_kind"):
        reference.gemm_ternary(torch.randn(8), p["packed"], "3bit", (3, 8), 1.0)
    with pytest.raises(ValueError, match="axis=1"):
        reference.affine_params(AffineQuantizedWeight(torch.zeros(4, 2, dtype=torch.uint8), 4, 2, 0,
                                                      torch.ones(4), None))


def test_reference_other_formats_use_decoded_weight():
    from qcourse.methods.base import QuantizedWeight

    class Exact(QuantizedWeight):
        def __init__(self, w):
            self.shape, self.w = tuple(w.shape), w

        def dequantize(self, dtype=torch.float32):
            return self.w.to(dtype)

        @property
        def storage_bits(self):
            return 32 * self.w.numel()

    w = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(reference.matmul(x, Exact(w)), x @ w.T)
    with pytest.raises(TypeError, match="QuantizedWeight"):
        reference.matmul(x, w)


def test_packing_layout_is_what_kernels_assume():
    # int4: code 2j in the low nibble of byte j; int2: code 4j + t in bits 2t..2t+1
    assert packing.pack(torch.tensor([1, 2]), 4).tolist() == [1 + (2 << 4)]
    assert packing.pack(torch.tensor([1, 2, 3, 0]), 2).tolist() == [1 + (2 << 2) + (3 << 4)]
