"""qcourse.hadamard: FWHT against explicit matrices (scipy, Kronecker with Paley), RHT, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcourse import hadamard


@pytest.mark.parametrize("n", [2**k for k in range(1, 13)])
def test_fwht_equals_scipy_hadamard(n: int) -> None:
    x = torch.randn(5, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    ref = x @ torch.from_numpy(scipy.linalg.hadamard(n).astype(np.float64)).T / math.sqrt(n)
    torch.testing.assert_close(hadamard.fwht(x), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(hadamard.fwht_butterfly(x), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n", [12, 20, 28, 36, 24, 48, 576, 768, 1536, 12 * 256])
def test_fwht_equals_kronecker_matrix(n: int) -> None:
    k, p = hadamard.hadamard_factors(n)
    sylvester = torch.from_numpy(scipy.linalg.hadamard(p).astype(np.float64))
    explicit = torch.kron(hadamard.paley_hadamard(k), sylvester)
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(hadamard.fwht(x), x @ explicit.T / math.sqrt(n), rtol=0, atol=1e-12)
    torch.testing.assert_close(hadamard.inverse_fwht(hadamard.fwht(x)), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(hadamard.hadamard_matrix(n), explicit / math.sqrt(n))


def test_course_widths_factor_as_quip_sharp_does() -> None:
    assert hadamard.hadamard_factors(576) == (36, 16)
    assert hadamard.hadamard_factors(1536) == (12, 128)
    assert hadamard.hadamard_factors(768) == (12, 64)
    assert hadamard.hadamard_factors(256) == (1, 256)


@pytest.mark.parametrize("order", hadamard.paley_orders(120))
def test_paley_matrices_are_hadamard(order: int) -> None:
    h = hadamard.paley_hadamard(order)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(h @ h.T, order * torch.eye(order, dtype=torch.float64))


def test_paley_orders_include_quip_sharp_factors() -> None:
    assert {12, 20, 28, 36, 60, 108, 140} <= set(hadamard.paley_orders())


@pytest.mark.parametrize("n", [2**13, 2**14])
def test_large_sizes_follow_the_sylvester_recursion(n: int) -> None:
    # four and more radix-16 passes (and chunks of rows); H_2p x = [H_p(a + b), H_p(a − b)]/√2 checks them
    x = torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a, b = x[:, : n // 2], x[:, n // 2:]
    ref = torch.cat([hadamard.fwht(a + b), hadamard.fwht(a - b)], 1) / math.sqrt(2)
    torch.testing.assert_close(hadamard.fwht(x), ref, rtol=0, atol=1e-12)


def test_rows_in_chunks_equal_rows_one_by_one() -> None:
    # 8192 floats per row: the transform runs 16 rows at a time, so 37 rows end with a partial chunk
    x = torch.randn(37, 8192, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    one_by_one = torch.cat([hadamard.fwht(row[None]) for row in x])
    torch.testing.assert_close(hadamard.fwht(x), one_by_one, rtol=0, atol=1e-12)


@given(lead=st.lists(st.integers(1, 3), max_size=3), n=st.sampled_from([1, 2, 8, 12, 64, 128, 576]),
       seed=st.integers(0, 2**16))
def test_batched_orthonormal_and_inverse(lead: list[int], n: int, seed: int) -> None:
    x = torch.randn(*lead, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = hadamard.fwht(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(hadamard.inverse_fwht(y), x)
    flat = hadamard.fwht(x.reshape(-1, n)).reshape(x.shape)
    torch.testing.assert_close(y, flat, rtol=0, atol=0)


def test_dtypes_are_kept_and_float32_is_accurate() -> None:
    x = torch.randn(4, 576, generator=torch.Generator().manual_seed(0))
    y = hadamard.fwht(x)
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), hadamard.fwht(x.double()), rtol=0, atol=1e-5)


def test_rht_inverse_and_seeded_signs() -> None:
    s = hadamard.random_signs(768, seed=3)
    assert torch.equal(s, hadamard.random_signs(768, seed=3))
    assert not torch.equal(s, hadamard.random_signs(768, seed=4))
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    x = torch.randn(7, 768, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = hadamard.rht(x, s)
    torch.testing.assert_close(y, (x * s.double()) @ hadamard.hadamard_matrix(768).T)
    torch.testing.assert_close(hadamard.inverse_rht(y, s), x)


def test_rht_spreads_a_spike() -> None:
    # one outlier coordinate becomes n coordinates of magnitude 1/√n
    x = torch.zeros(1, 1536, dtype=torch.float64)
    x[0, 5] = 1.0
    y = hadamard.rht(x, hadamard.random_signs(1536, seed=0))
    torch.testing.assert_close(y.abs(), torch.full_like(y, 1 / math.sqrt(1536)))


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="576 = 36·16"):
        hadamard.fwht(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="no Hadamard construction"):
        hadamard.hadamard_factors(6)
    with pytest.raises(TypeError, match="floating-point"):
        hadamard.fwht(torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        hadamard.fwht([1.0, 2.0])
    with pytest.raises(ValueError, match="at least one dimension"):
        hadamard.fwht(torch.tensor(1.0))
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard.fwht_butterfly(torch.zeros(12))
    with pytest.raises(ValueError, match="one entry per element"):
        hadamard.rht(torch.zeros(2, 8), torch.ones(4))
    with pytest.raises(ValueError, match="only \\+1 and -1"):
        hadamard.rht(torch.zeros(2, 4), torch.tensor([1.0, 0.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="Paley"):
        hadamard.paley_hadamard(16)
    with pytest.raises(ValueError, match="positive int"):
        hadamard.random_signs(0, seed=0)
    assert not hadamard.supported_size(100) and hadamard.supported_size(1536)
