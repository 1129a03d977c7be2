"""Bit packing: exact round trips for every width, documented layout, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse.packing import SUPPORTED_BITS, TERNARY, pack, packed_nbytes, unpack


def _levels(bits: float) -> int:
    return 3 if bits == TERNARY else 2 ** int(bits)


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from(SUPPORTED_BITS), n=st.integers(0, 257), seed=st.integers(0, 2**31 - 1))
def test_round_trip_every_width_and_odd_sizes(bits: float, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = torch.from_numpy(rng.integers(0, _levels(bits), size=n)).to(torch.int64)
    packed = pack(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == packed_nbytes(n, bits)
    assert torch.equal(unpack(packed, bits, n), codes.to(torch.uint8))


@pytest.mark.parametrize("bits", [b for b in SUPPORTED_BITS if b != TERNARY])
def test_bit_stream_layout_matches_numpy_reference(bits: float) -> None:
    # independent reference: numpy's little-endian bit (un)packing of the LSB-first code bits
    b = int(bits)
    codes = torch.arange(37) % (2**b)
    code_bits = ((codes.numpy()[:, None] >> np.arange(b)) & 1).astype(np.uint8).reshape(-1)
    want = np.packbits(code_bits, bitorder="little")
    assert np.array_equal(pack(codes, bits).numpy(), want)


def test_ternary_is_base3_five_per_byte() -> None:
    codes = torch.tensor([2, 1, 0, 2, 1, 1])
    packed = pack(codes, TERNARY)
    assert packed.tolist() == [2 + 1 * 3 + 0 * 9 + 2 * 27 + 1 * 81, 1]
    assert packed_nbytes(10**6, TERNARY) * 8 / 10**6 == pytest.approx(1.6)


def test_shapes_and_dtypes_flatten_row_major() -> None:
    codes = torch.tensor([[1, 2], [3, 0]], dtype=torch.int8)
    assert unpack(pack(codes, 2), 2, 4).reshape(2, 2).tolist() == codes.tolist()
    assert pack(codes.to(torch.uint8), 2).tolist() == pack(codes.to(torch.int32), 2).tolist()


def test_packed_sizes() -> None:
    assert [packed_nbytes(10, b) for b in (1, 2, 3, 4, 8)] == [2, 3, 4, 5, 10]
    assert packed_nbytes(0, 3) == 0


@pytest.mark.parametrize("bad", [torch.tensor([4]), torch.tensor([-1]), torch.tensor([0, 1, 7])])
def test_out_of_range_codes_raise(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 3\]"):
        pack(bad, 2)


def test_ternary_range_and_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        pack(torch.tensor([3]), TERNARY)
    with pytest.raises(TypeError, match="integer dtype"):
        pack(torch.tensor([1.0]), 4)
    with pytest.raises(TypeError, match="integer dtype"):
        pack(torch.tensor([True]), 1)
    with pytest.raises(TypeError, match="torch.Tensor"):
        pack([1, 2], 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bits must be one of"):
        pack(torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="bits must be one of"):
        pack(torch.tensor([1]), 2.5)
    with pytest.raises(TypeError, match="uint8"):
        unpack(torch.tensor([1]), 4, 2)
    with pytest.raises(ValueError, match="need 1"):
        unpack(torch.tensor([1, 2], dtype=torch.uint8), 4, 2)
    with pytest.raises(ValueError, match="not base-3"):
        unpack(torch.tensor([250], dtype=torch.uint8), TERNARY, 5)
    with pytest.raises(ValueError, match="n must be"):
        packed_nbytes(-1, 4)
