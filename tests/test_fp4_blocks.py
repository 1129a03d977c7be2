"""qcourse.fp4_blocks: block FP4 equals MXFP4/NVFP4 at their own settings; NF4 equals QLoRA's grid."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import formats as F
from qcourse.fp4_blocks import block_fp4, block_fp4_bits, nf4_levels, nf4_quantize

# the NF4 table as bitsandbytes ships it (float32), quoted in QLoRA's appendix
BNB_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
           -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
           0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
           0.7229568362236023, 1.0]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), decades=st.floats(0.0, 8.0), rows=st.integers(1, 4))
def test_block_fp4_is_mxfp4_and_nvfp4_at_their_settings(seed, decades, rows):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows * 8, 64, generator=g) * torch.logspace(-decades / 2, decades / 2, rows * 8)[:, None]
    assert torch.equal(block_fp4(x, 32, "e8m0"), F.quantize(x, "mxfp4"))
    assert torch.equal(block_fp4(x, 16, "e4m3"), F.quantize(x, "nvfp4"))


def test_block_fp4_grid_and_bits():
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    e2m1 = F.E2M1.all_values().double()
    for block in (8, 16, 32, 64):
        # with a power-of-two scale X = 2^(floor(log2 amax) − 2), every value divided by X is an E2M1 value
        blocks = x.double().reshape(16, -1, block)
        X = torch.exp2(torch.floor(torch.log2(blocks.abs().amax(-1, keepdim=True))) - 2)
        y = block_fp4(x, block, "e8m0").double().reshape(16, -1, block) / X
        assert torch.isin(y, e2m1).all()
        assert block_fp4_bits(block, "e8m0") == block_fp4_bits(block, "e4m3") == 4 + 8 / block
    assert torch.equal(block_fp4(torch.zeros(2, 32), 32, "e4m3"), torch.zeros(2, 32))
    assert torch.equal(block_fp4(torch.zeros(2, 32), 32, "e8m0"), torch.zeros(2, 32))


def test_nf4_levels_match_qlora():
    levels = nf4_levels()
    assert levels.dtype == torch.float32 and levels.numel() == 16
    assert torch.allclose(levels, torch.tensor(BNB_NF4), atol=2e-6, rtol=0)
    assert levels[7] == 0 and levels[0] == -1 and levels[-1] == 1


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_nf4_quantize_is_the_nearest_scaled_level(seed):
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(seed))
    y = nf4_quantize(x, 64)
    blocks = x.double().reshape(4, 2, 64)
    amax = blocks.abs().amax(-1, keepdim=True)
    cand = nf4_levels().double() * amax[..., None]               # [4, 2, 1, 16] candidates per block
    dist = (blocks[..., None] - cand).abs()
    best = dist.min(-1).values
    got = (blocks - y.double().reshape(4, 2, 64)).abs()
    assert torch.allclose(got, best, atol=1e-6)


def test_nf4_beats_int4_and_fp4_on_gaussian_blocks():
    w = torch.randn(256, 512, generator=torch.Generator().manual_seed(1))
    g = w.reshape(-1, 64)
    err = {"nf4": F.relative_mse(w, nf4_quantize(w, 64)),
           "int4": F.relative_mse(g, F.quantize(g, "int4", "channel")),
           "fp4": F.relative_mse(g, F.quantize(g, "fp4_e2m1", "channel"))}
    assert err["nf4"] < min(err["int4"], err["fp4"])


@pytest.mark.parametrize("bad, exc", [
    (dict(x=[1.0] * 32, block=32, scale="e8m0"), TypeError),
    (dict(x=torch.ones(30), block=32, scale="e8m0"), ValueError),
    (dict(x=torch.ones(32), block=0, scale="e8m0"), ValueError),
    (dict(x=torch.ones(32), block=True, scale="e8m0"), ValueError),
    (dict(x=torch.ones(32), block=32, scale="ue8m0"), ValueError),
    (dict(x=torch.tensor([float("nan")] * 32), block=32, scale="e4m3"), ValueError),
    (dict(x=torch.ones(32, dtype=torch.int32), block=32, scale="e4m3"), TypeError),
])
def test_block_fp4_rejects_bad_input(bad, exc):
    with pytest.raises(exc):
        block_fp4(**bad)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="block"):
        block_fp4(torch.ones(30), 32, "e8m0")
    with pytest.raises(ValueError, match="scale"):
        block_fp4_bits(32, "fp8")
    with pytest.raises(ValueError, match="block"):
        nf4_quantize(torch.ones(3, 10), 64)
    with pytest.raises(TypeError, match="x"):
        nf4_quantize([1.0], 1)
