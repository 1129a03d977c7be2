"""numba kernels equal the reference: every format, odd shapes, rows off byte boundaries, batch 1-8."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import xnor
from qcourse.kernels import reference
from qcourse.methods.bitnet import TernaryWeight

pytest.importorskip("numba")

from qcourse.kernels import cpu  # noqa: E402
from tests.test_kernels import _affine  # noqa: E402

CASES = [
    (4, 8, 64, 32), (4, 3, 10, 5), (4, 5, 7, None), (4, 4, 6, "tensor"), (4, 7, 33, 11), (4, 2, 4, 2),
    (2, 8, 64, 16), (2, 3, 10, 5), (2, 5, 6, None), (2, 3, 9, 3), (2, 4, 12, "tensor"), (2, 6, 8, 2),
    (1, 3, 13, None), (8, 3, 10, 5),
]


@pytest.mark.parametrize("bits,n,k,group_size", CASES)
@pytest.mark.parametrize("batch", [1, 2, 5, 8])
def test_affine_kernel_equals_reference(bits, n, k, group_size, batch):
    qw = _affine(bits, n, k, group_size, seed=n + k)
    p = reference.affine_params(qw)
    args = (p["packed"], p["bits"], p["shape"], p["group"], p["scale"], p["zero"])
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(batch))
    torch.testing.assert_close(cpu.gemm_affine(x, *args), reference.gemm_affine(x, *args),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(cpu.gemm_affine(x[0], *args), reference.gemm_affine(x[0], *args),
                               rtol=1e-5, atol=1e-4)


def test_affine_kernel_rejects_widths_that_cross_bytes():
    qw = _affine(3, 4, 12, 6)
    p = reference.affine_params(qw)
    with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8"):
        cpu.gemm_affine(torch.randn(12), p["packed"], 3, (4, 12), 6, p["scale"], p["zero"])


@pytest.mark.parametrize("n,k", [(4, 16), (3, 7), (5, 13), (2, 4), (1, 1), (9, 40)])
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_ternary_kernels_equal_reference(n, k, batch):
    g = torch.Generator().manual_seed(n * 100 + k)
    trits = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    qw = TernaryWeight(trits, torch.tensor(0.37), "2bit")
    x = torch.randn(batch, k, generator=g)
    want = reference.gemm_ternary(x, qw.packed, "2bit", qw.shape, qw.gamma)
    torch.testing.assert_close(cpu.gemm_ternary(x, qw.packed, qw.shape, qw.gamma), want, rtol=1e-5, atol=1e-4)
    if k % 4 == 0:
        torch.testing.assert_close(cpu.gemm_ternary_lut(x, qw.packed, qw.shape, qw.gamma), want,
                                   rtol=1e-5, atol=1e-4)
    else:
        with pytest.raises(ValueError, match="in_features % 4"):
            cpu.gemm_ternary_lut(x, qw.packed, qw.shape, qw.gamma)


def test_lut_tables_by_brute_force():
    x = torch.tensor([[0.5, -2.0, 3.0, 1.0]])
    t = cpu.ternary_lut_tables(x)
    assert t.shape == (1, 2, 16)
    for p in range(2):
        for c0 in range(4):
            for c1 in range(4):
                want = (c0 - 1) * x[0, 2 * p] + (c1 - 1) * x[0, 2 * p + 1]
                assert t[0, p, c0 + 4 * c1] == pytest.approx(float(want))


@given(n=st.integers(1, 5), k=st.integers(1, 200), batch=st.integers(1, 8), seed=st.integers(0, 999))
@settings(max_examples=40, deadline=None)
def test_binary_kernel_equals_reference(n, k, batch, seed):
    rng = np.random.default_rng(seed)
    w = xnor.pack_signs(np.where(rng.random((n, k)) < 0.5, -1, 1))
    x = xnor.pack_signs(np.where(rng.random((batch, k)) < 0.5, -1, 1))
    np.testing.assert_array_equal(cpu.gemm_binary(w, x, k), reference.gemm_binary(w, x, k))
    np.testing.assert_array_equal(cpu.gemm_binary(w, x[0], k), xnor.xnor_matmul(w, x[0], k))


def test_binary_kernel_rejects_bad_words():
    w = xnor.pack_signs(np.ones((2, 70)))
    with pytest.raises(TypeError, match="uint64"):
        cpu.gemm_binary(w.astype(np.uint32), w, 70)
    with pytest.raises(ValueError, match="ceil"):
        cpu.gemm_binary(w, w, 200)


def test_results_do_not_depend_on_thread_count():
    qw = _affine(4, 64, 256, 64)
    p = reference.affine_params(qw)
    args = (p["packed"], 4, p["shape"], p["group"], p["scale"], p["zero"])
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    import numba

    before = numba.get_num_threads()
    try:
        cpu.set_threads(1)
        one = cpu.gemm_affine(x, *args)
        cpu.set_threads(numba.config.NUMBA_NUM_THREADS)
        many = cpu.gemm_affine(x, *args)
    finally:
        numba.set_num_threads(before)
    assert torch.equal(one, many)
    with pytest.raises(ValueError, match="n must be"):
        cpu.set_threads(0)


@pytest.mark.parametrize("books,g,n,k", [(2, 8, 5, 32), (1, 4, 3, 12), (2, 2, 4, 6)])
@pytest.mark.parametrize("batch", [1, 3])
def test_aqlm8_kernel_equals_reference(books, g, n, k, batch):
    from qcourse.methods.aqlm import AQLMWeight

    gen = torch.Generator().manual_seed(books * 10 + g)
    codes = torch.randint(0, 256, (n, k // g, books), generator=gen)
    qw = AQLMWeight(codes, torch.randn(books, 256, g, generator=gen), torch.rand(n, generator=gen) + 0.5)
    x = torch.randn(batch, k, generator=gen)
    torch.testing.assert_close(cpu.gemm_aqlm8(x, qw), reference.matmul(x, qw), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(cpu.gemm_aqlm8(x[0], qw), reference.matmul(x[0], qw), rtol=1e-4, atol=1e-3)
    qw16 = AQLMWeight(torch.zeros(2, 1, 1, dtype=torch.long), torch.zeros(1, 2**16, 4), torch.ones(2))
    with pytest.raises(ValueError, match="8-bit codes"):
        cpu.gemm_aqlm8(torch.randn(4), qw16)
