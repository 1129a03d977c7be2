"""qcourse.affine: the grid as a block quantizer, the names lessons import, the affine weight's state."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import affine, grouping
from qcourse.affine import AffineQuantizedWeight, FittedGrid, Grid, grid_params, quantize_to_grid
from qcourse.methods import gptq, hqq, rtn
from qcourse.methods.base import weight_from_state


def test_lesson_names_are_the_building_blocks() -> None:
    # lesson 02 and its checks import these from qcourse.methods.rtn; they are the affine building blocks
    for name in ("Grid", "grid_params", "quantize_to_grid", "dequantize_grid", "quantize_groups",
                 "dequantize_groups", "round_scale", "AffineQuantizedWeight"):
        assert getattr(rtn, name) is getattr(affine, name)
    for name in ("column_update", "gptq_quantize", "prepare_hessian", "proxy_loss"):
        assert callable(getattr(gptq, name))
    assert not {"Grid", "quantize_groups", "dequantize_groups"} & set(gptq.__all__)   # no RTN re-exports
    for name in ("shrink_lp", "zero_step", "init_minmax", "optimize"):
        assert callable(getattr(hqq, name))


def test_fitted_grid_rounds_like_the_grid_functions() -> None:
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = Grid(3)
    fitted = grid.fit(x)
    s, z = grid_params(x, 3, scale_dtype=torch.float16)
    assert isinstance(fitted, FittedGrid) and torch.equal(fitted.scale, s) and torch.equal(fitted.zero, z)
    codes, deq = fitted.quantize(x[:, 4:5])
    assert torch.equal(codes, quantize_to_grid(x[:, 4:5], s, z, 3)) and torch.equal(deq, s * (codes - z))
    assert fitted.fit(x[:, :8]).scale.shape == (5, 1) and grid.dim == fitted.dim == 1
    # an unfitted grid rounds a block on a grid fitted to the block itself (RTN of the block)
    block = x[:, :1]
    assert torch.equal(grid.quantize(block)[1], grid.fit(block).quantize(block)[1])


def test_grid_refuses_bad_bits() -> None:
    with pytest.raises(ValueError, match="bits must be an int from 1 to 8"):
        Grid(9)
    with pytest.raises(ValueError, match="bits must be ≥ 2 for symmetric"):
        Grid(1, symmetric=True)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([1, 2, 3, 4, 5, 7, 8, 1.58]), out=st.integers(1, 6),
       n_in=st.sampled_from([8, 12, 24]), layout=st.sampled_from(["g4", "channel", "tensor", "axis0"]),
       zero=st.sampled_from(["int", "float", "none"]), seed=st.integers(0, 10**6))
def test_affine_state_round_trip(bits: float, out: int, n_in: int, layout: str, zero: str, seed: int) -> None:
    shape = (out, n_in)
    layouts = {"g4": (4, 1), "channel": (None, 1), "tensor": ("tensor", 1), "axis0": (None, 0)}
    group_size, axis = layouts[layout]
    ng = grouping.n_groups(shape, group_size, axis)
    gen = torch.Generator().manual_seed(seed)
    levels = 3 if bits == 1.58 else 2 ** int(bits)
    codes = torch.randint(0, levels, shape, generator=gen)
    scale = torch.rand(ng, generator=gen) + 0.01
    zeros = {"int": torch.randint(0, levels, (ng,), generator=gen).to(torch.uint8),
             "float": (torch.randn(ng, generator=gen) * 3).half(), "none": None}[zero]
    qw = AffineQuantizedWeight(codes, bits, group_size, axis, scale, zeros)
    tensors, meta = qw.to_state()
    back = weight_from_state(tensors, meta)
    assert torch.equal(back.dequantize(), qw.dequantize())
    assert torch.equal(back.codes(), codes.to(torch.uint8))
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert 0 <= 8 * stored - qw.storage_bits < 8 * len(tensors)
    if zero != "int" and bits != 1.58:
        assert stored == math.ceil(qw.storage_bits / 8)
