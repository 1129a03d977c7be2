"""Round-to-nearest: hand-computed grids, accounting, granularity ordering, packing, errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import methods
from qcourse.methods.rtn import (
    AffineQuantizedWeight,
    Grid,
    dequantize_groups,
    grid_params,
    quantize_groups,
)

RTN = methods.get("rtn")


def _rel_err(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w - w_hat).pow(2).sum() / w.pow(2).sum())


def _outlier_weight(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 256, generator=g) * 0.02
    w[:, 7] *= 40  # one outlier input feature (a classic LLM pattern)
    w[3, 100] = 5.0  # one huge single weight
    return w


def test_hand_computed_asymmetric_3bit() -> None:
    w = torch.tensor([[-0.7, -0.1, 0.0, 0.35, 0.7, 0.3, 0.2, 0.1]])
    codes, scale, zero = quantize_groups(w, bits=3, group_size=8)
    # scale = 1.4/7 = 0.2, zero = round(0.7/0.2) = round(3.5) = 4 (half to even)
    assert scale.item() == pytest.approx(0.2)
    assert zero.item() == 4
    # w/scale = -3.5 -0.5 0 1.75 3.5 1.5 1 0.5  → round (half-even) -4 -0 0 2 4 2 1 0, + 4, clamp [0, 7]
    assert codes.tolist() == [[0, 4, 4, 6, 7, 6, 5, 4]]
    assert dequantize_groups(codes, scale, zero) == pytest.approx(
        torch.tensor([[-0.8, 0.0, 0.0, 0.4, 0.6, 0.4, 0.2, 0.0]]), abs=1e-6)


def test_hand_computed_symmetric() -> None:
    w = torch.tensor([[-2.0, -0.5, 0.4, 3.0]])
    codes, scale, zero = quantize_groups(w, bits=3, group_size=None, symmetric=True)
    assert scale.item() == pytest.approx(1.0)  # absmax 3 / (2^2 − 1)
    assert zero.item() == 4
    assert codes.tolist() == [[2, 4, 4, 7]]
    qw = RTN.quantize(w, bits=3, symmetric=True)
    assert qw.dequantize().tolist() == [[-2.0, 0.0, 0.0, 3.0]]
    # symmetric stores no zero point: 3 bits of codes (packed: 2 bytes) + one fp16 scale
    assert qw.storage_bits == 16 + 16


def test_degenerate_groups_do_not_divide_by_zero_and_are_exact() -> None:
    w = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.3, 0.3], [-2.0, -2.0, -2.0, -2.0]])
    for symmetric in (False, True):
        qw = RTN.quantize(w, bits=2, group_size=4, symmetric=symmetric)
        assert torch.isfinite(qw.dequantize()).all()
        assert qw.dequantize() == pytest.approx(w, abs=1e-3)  # fp16 scale: exact to fp16 precision
    scale, zero = grid_params(torch.zeros(1, 5), bits=4)
    assert scale.item() == 1.0 and zero.item() == 0.0


def test_fp16_scale_is_rounded_up_and_overflow_raises() -> None:
    from qcourse.methods.rtn import round_scale

    x = torch.rand(1000, generator=torch.Generator().manual_seed(0)) * 10
    r = round_scale(x, torch.float16)
    assert (r >= x).all() and torch.equal(r, r.half().float())
    assert (r.half().float() < x * (1 + 2**-10)).all()
    with pytest.raises(ValueError, match="beyond"):
        round_scale(torch.tensor([65510.0]), torch.float16)


def test_tiny_range_scale_rounds_up_instead_of_underflowing() -> None:
    w = torch.tensor([[1e-9, 2e-9, 3e-9, 4e-9]])
    qw = RTN.quantize(w, bits=4)
    assert (qw.scale > 0).all()
    assert (qw.dequantize() - w).abs().max() < 1e-7


def test_error_decreases_with_bits() -> None:
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(1))
    errs = [_rel_err(w, RTN.quantize(w, bits=b, group_size=64).dequantize()) for b in (1, 2, 3, 4, 8)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))
    # uniform-noise rule of thumb: each extra bit divides the MSE by about 4
    assert 2.5 < errs[2] / errs[3] < 6


def test_group_beats_channel_beats_tensor_with_outliers() -> None:
    w = _outlier_weight()
    e_group = _rel_err(w, RTN.quantize(w, bits=4, group_size=32).dequantize())
    e_chan = _rel_err(w, RTN.quantize(w, bits=4, group_size=None).dequantize())
    e_tensor = _rel_err(w, RTN.quantize(w, bits=4, granularity="tensor").dequantize())
    assert e_group < e_chan < e_tensor


def test_bits_per_weight_accounting() -> None:
    w = torch.randn(16, 128)
    assert RTN.quantize(w, bits=4, group_size=64).bits_per_weight == 4 + 16 / 64 + 4 / 64
    assert RTN.quantize(w, bits=3, group_size=None).bits_per_weight == 3 + (16 + 3) / 128
    assert RTN.quantize(w, bits=2, granularity="tensor").bits_per_weight == 2 + (16 + 2) / w.numel()
    assert RTN.quantize(w, bits=8, group_size=32, symmetric=True).bits_per_weight == 8 + 16 / 32


@settings(max_examples=25, deadline=None)
@given(bits=st.sampled_from([1, 2, 3, 4, 5, 8]), out=st.integers(1, 5), n_groups=st.integers(1, 3),
       g=st.sampled_from([1, 3, 8, 16]), seed=st.integers(0, 1000))
def test_packed_codes_round_trip_and_dequant_matches_pure_functions(
        bits: int, out: int, n_groups: int, g: int, seed: int) -> None:
    w = torch.randn(out, n_groups * g, generator=torch.Generator().manual_seed(seed))
    qw = RTN.quantize(w, bits=bits, group_size=g)
    codes, scale, zero = quantize_groups(w, bits, g, scale_dtype=torch.float16)
    assert isinstance(qw, AffineQuantizedWeight)
    assert qw.packed.dtype == torch.uint8  # the weight stores packed bytes, not floats
    assert torch.equal(qw.codes(), codes)
    assert torch.equal(qw.dequantize(), dequantize_groups(codes, scale, zero))
    # in a group with weights of both signs the integer zero is not clamped, so min and max land within
    # half a step of the end levels (the fp16 scale is rounded up to keep it so) and every weight is within
    # half a step of its level
    err = (qw.dequantize() - w).abs().reshape(-1, g)
    groups = w.reshape(-1, g)
    mixed = (groups.amin(1) < 0) & (groups.amax(1) > 0)
    half_step = scale.reshape(-1, 1) / 2
    assert (err[mixed] <= half_step[mixed] * (1 + 1e-5) + 1e-7).all()


def test_grid_object_matches_functions() -> None:
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(3))
    grid = Grid(bits=3, scale_dtype=None)
    s, z = grid.params(x)
    codes, scale, zero = quantize_groups(x, 3, None)
    assert torch.equal(grid.codes(x, s, z).to(torch.uint8), codes)
    assert grid.zero_bits == 3 and Grid(bits=3, symmetric=True).zero_bits == 0


def test_bad_input_errors() -> None:
    w = torch.randn(4, 12)
    with pytest.raises(ValueError, match="bits must be one of"):
        RTN.quantize(w, bits=9)
    with pytest.raises(ValueError, match="group_size=5 does not divide in_features=12"):
        RTN.quantize(w, bits=4, group_size=5)
    with pytest.raises(ValueError, match="bits must be ≥ 2 for symmetric"):
        RTN.quantize(w, bits=1, symmetric=True)
    with pytest.raises(ValueError, match="granularity must be"):
        RTN.quantize(w, bits=4, granularity="row")
    with pytest.raises(ValueError, match="group_size must be None with granularity='tensor'"):
        RTN.quantize(w, bits=4, group_size=4, granularity="tensor")
    with pytest.raises(ValueError, match="unknown option"):
        RTN.quantize(w, bits=4, sym=True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        RTN.quantize(torch.full((2, 4), float("nan")), bits=4)
    with pytest.raises(TypeError, match="floating-point"):
        RTN.quantize(torch.ones(2, 4, dtype=torch.int32), bits=4)
    with pytest.raises(ValueError, match="beyond"):
        RTN.quantize(torch.tensor([[-1e6, 1e6]]), bits=2)
