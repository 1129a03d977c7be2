"""Tests for qcourse.formats: bit-exact agreement with torch's casts, RNE properties, block formats, bpw."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import formats as F
from qcourse.formats import BF16, E2M1, E4M3, E5M2, FP16, FP32

SMALL_FORMATS = [BF16, FP16, E4M3, E5M2, E2M1]


def all_bf16() -> torch.Tensor:
    """Every one of the 65,536 BF16 bit patterns (NaNs and infinities included), as bfloat16."""
    return torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)


def random_f32(n: int, seed: int) -> torch.Tensor:
    """``n`` float32 values from uniformly random bit patterns (every exponent equally likely)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    return torch.from_numpy(bits.view(np.float32))


def torch_e4m3_saturates() -> bool:
    """torch after PR #178817 (April 2026; 2.13 here) saturates overflow to 448; older torch gives NaN."""
    return int(torch.tensor([1e6]).to(torch.float8_e4m3fn).view(torch.uint8)) == 0x7E


def assert_codes_match(fmt: F.FloatFormat, x: torch.Tensor, ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Bit-exact except that a NaN result only has to be a NaN of the format (NaN-class comparison)."""
    ref = ref.to(torch.int64)
    ours_nan = torch.isnan(fmt.decode(ours))
    ref_nan = torch.isnan(fmt.decode(ref))
    assert torch.equal(ours_nan, ref_nan), f"NaN class differs at {x[ours_nan != ref_nan][:5].tolist()}"
    bad = (ours != ref) & ~ref_nan
    assert not bad.any(), (f"{int(bad.sum())} codes differ, e.g. x={x[bad][:5].tolist()}: "
                           f"ours {ours[bad][:5].tolist()} torch {ref[bad][:5].tolist()}")


# ---------------------------------------------------------------------------------------------------------
# bit-exact agreement with torch's casts (the independent reference)
# ---------------------------------------------------------------------------------------------------------

def test_e4m3_matches_torch_on_all_bf16_patterns() -> None:
    x = all_bf16()
    ref = x.to(torch.float8_e4m3fn).view(torch.uint8)
    ours = E4M3.encode(x, saturate=torch_e4m3_saturates())
    assert_codes_match(E4M3, x.float(), ours, ref)
    # the default mode is torch's (this torch saturates)
    assert torch.equal(E4M3.encode(x), ours) == torch_e4m3_saturates()


def test_e5m2_matches_torch_on_all_bf16_patterns() -> None:
    x = all_bf16()
    ref = x.to(torch.float8_e5m2).view(torch.uint8)
    assert_codes_match(E5M2, x.float(), E5M2.encode(x), ref)


@pytest.mark.parametrize("fmt,dtype", [(E4M3, torch.float8_e4m3fn), (E5M2, torch.float8_e5m2)])
def test_fp8_matches_torch_on_random_float32(fmt: F.FloatFormat, dtype: torch.dtype) -> None:
    # float32 inputs exercise exact ties and sticky bits that BF16's 7 mantissa bits cannot reach
    x = torch.cat([random_f32(200_000, 1),
                   (fmt.all_values().double()[:-1] + fmt.all_values().double()[1:]).float() / 2])  # midpoints
    sat = torch_e4m3_saturates() if fmt is E4M3 else False
    assert_codes_match(fmt, x, fmt.encode(x, saturate=sat), x.to(dtype).view(torch.uint8))


@pytest.mark.parametrize("fmt,dtype", [(BF16, torch.bfloat16), (FP16, torch.float16)])
def test_bf16_fp16_rounding_matches_torch(fmt: F.FloatFormat, dtype: torch.dtype) -> None:
    x = random_f32(500_000, 2)
    # plus every float32 that is a midpoint between neighbouring 16-bit values (ties), and just off them
    grid = fmt.all_values().double()
    mids = ((grid[:-1] + grid[1:]) / 2).float()
    x = torch.cat([x, mids, torch.nextafter(mids, torch.tensor(math.inf)),
                   torch.nextafter(mids, torch.tensor(-math.inf))])
    ref = x.to(dtype).view(torch.int16).to(torch.int64) & 0xFFFF
    assert_codes_match(fmt, x, fmt.encode(x), ref)
    finite = torch.isfinite(x.to(dtype))
    assert torch.equal(fmt.round(x)[finite], x.to(dtype).float()[finite])


def test_fp32_encode_is_the_float32_bit_pattern_and_rounds_doubles_like_torch() -> None:
    x = random_f32(100_000, 3)
    ours = FP32.encode(x)
    ref = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    assert_codes_match(FP32, x, ours, ref)
    d = torch.from_numpy(np.random.default_rng(4).standard_normal(50_000) * 10.0 ** np.random.default_rng(5)
                         .integers(-40, 40, 50_000))
    assert torch.equal(FP32.round(d), d.float())


def test_e2m1_against_the_spec_value_table() -> None:
    # torch 2.13 has the float4_e2m1fn_x2 dtype but no cast or copy kernel for it on CPU, so the
    # reference is the OCP MX v1.0 E2M1 table: codes 0..7 -> 0, 0.5, 1, 1.5, 2, 3, 4, 6; bit 3 is the sign
    table = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    want = table + [-v for v in table]
    got = E2M1.decode(torch.arange(16)).tolist()
    assert got == want and math.copysign(1.0, got[8]) == -1.0
    with pytest.raises(RuntimeError):  # if torch ever gains the cast, add it as a reference here
        torch.zeros(2, dtype=torch.uint8).view(torch.float4_e2m1fn_x2).float()


def test_e2m1_rounding_is_nearest_with_ties_to_even_code() -> None:
    x = torch.linspace(-7.0, 7.0, 2801, dtype=torch.float64)
    codes = E2M1.encode(x)
    table = E2M1.decode(torch.arange(8)).double()
    for xi, c in zip(x.tolist(), codes.tolist(), strict=True):
        d = (table - abs(xi)).abs()
        best = torch.nonzero(d == d.min()).flatten().tolist()
        want = best[0] if len(best) == 1 else next(b for b in best if b % 2 == 0)
        if abs(xi) > 6:
            want = 7
        assert (c & 7) == want, (xi, c)


def test_e8m0_scale_decoding_matches_torch() -> None:
    codes = torch.arange(256, dtype=torch.uint8)
    ref = codes.view(torch.float8_e8m0fnu).float()
    one = torch.zeros(codes.numel(), 32, dtype=torch.uint8)
    one[:, :] = 2  # E2M1 code 2 = 1.0, so the decoded value is the scale itself
    ours = F.mxfp4_decode(one, codes[:, None])[:, 0]
    assert torch.equal(torch.isnan(ours), torch.isnan(ref))
    assert torch.equal(ours[:255], ref[:255])


# ---------------------------------------------------------------------------------------------------------
# round trips and rounding properties
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
def test_decode_encode_round_trip_on_every_pattern(fmt: F.FloatFormat) -> None:
    codes = torch.arange(1 << fmt.total_bits)
    vals = fmt.decode(codes)
    nan = torch.isnan(vals)
    back = fmt.encode(vals[~nan], saturate=False if fmt.has_nan else True)
    assert torch.equal(back, codes[~nan])  # signed zero and infinities included
    assert torch.equal(fmt.round(vals[~nan]), vals[~nan])
    if fmt.has_nan:
        assert torch.isnan(fmt.decode(torch.tensor([fmt.nan_code]))).all()


@pytest.mark.parametrize("fmt", SMALL_FORMATS, ids=lambda f: f.name)
def test_range_figures(fmt: F.FloatFormat) -> None:
    grid = fmt.all_values()
    assert grid.max().item() == fmt.max_value == -grid.min().item()
    assert grid[grid > 0].min().item() == fmt.min_subnormal
    expected_max = {"BF16": 3.3895313892515355e38, "FP16": 65504.0, "FP8 E4M3": 448.0, "FP8 E5M2": 57344.0,
                    "FP4 E2M1": 6.0}[fmt.name]
    assert fmt.max_value == pytest.approx(expected_max, rel=1e-7)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(SMALL_FORMATS),
       st.lists(st.floats(min_value=-1e5, max_value=1e5, allow_nan=False, width=32), min_size=1, max_size=40))
def test_round_is_on_grid_nearest_and_ties_to_even(fmt: F.FloatFormat, xs: list[float]) -> None:
    x = torch.tensor(xs, dtype=torch.float32).clamp(-fmt.max_value, fmt.max_value)
    r = fmt.round(x).double()
    grid = fmt.all_values().double()
    assert torch.isin(r, grid).all()  # on the grid
    x64 = x.double()
    dist = (grid[None, :] - x64[:, None]).abs()
    best = dist.min(dim=1).values
    assert torch.equal((r - x64).abs(), best)  # nearest
    ties = (dist == best[:, None]).sum(dim=1) > 1
    if ties.any():  # a tie goes to the value whose mantissa field is even
        assert ((fmt.encode(r[ties]) & 1) == 0).all()


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1e-30, max_value=1e30, allow_nan=False), st.sampled_from([E4M3, E5M2, FP16, BF16]))
def test_round_is_odd_symmetric_and_monotone(v: float, fmt: F.FloatFormat) -> None:
    x = torch.tensor([v, -v, v * 1.001], dtype=torch.float64)
    r = fmt.round(x, saturate=True)
    assert r[1].item() == -r[0].item()
    assert r[2].item() >= r[0].item()


def test_overflow_rules() -> None:
    inf, nan = math.inf, math.nan
    x = torch.tensor([448.0, 464.0, 465.0, 1e6, inf, -inf, nan])
    sat = E4M3.round(x, saturate=True).tolist()
    assert sat[:6] == [448.0, 448.0, 448.0, 448.0, 448.0, -448.0] and math.isnan(sat[6])
    nonsat = E4M3.round(x, saturate=False).tolist()
    assert nonsat[:2] == [448.0, 448.0] and all(math.isnan(v) for v in nonsat[2:])
    assert E4M3.encode(-inf, saturate=False) == 0xFF  # NaN keeps the sign, as torch
    assert E5M2.round(torch.tensor([57344.0, 61439.0, 61440.0, inf])).tolist() == [57344.0, 57344.0, inf, inf]
    assert E5M2.round(torch.tensor([61440.0, inf]), saturate=True).tolist() == [57344.0, 57344.0]
    assert FP16.round(torch.tensor([65519.0, 65520.0])).tolist() == [65504.0, inf]
    assert E2M1.round(torch.tensor([7.0, -100.0])).tolist() == [6.0, -6.0]
    assert math.isnan(E2M1.round(nan))  # NaN propagates through round, though E2M1 cannot encode it
    with pytest.raises(ValueError, match="cannot encode"):
        E2M1.encode(nan)
    with pytest.raises(ValueError, match="only saturate"):
        E2M1.round(1.0, saturate=False)


def test_subnormals_and_signed_zero() -> None:
    # E4M3 subnormals are multiples of 2**-9; 2**-10 is a tie between 0 and 2**-9 -> even (0)
    assert E4M3.round(torch.tensor([2**-10, 3 * 2**-10, 2**-10 * 1.01])).tolist() == [0.0, 2**-8, 2**-9]
    assert E4M3.encode(-1e-30) == 0x80 and math.copysign(1.0, E4M3.round(-1e-30)) == -1.0
    assert FP16.round(2**-24) == 2**-24 and FP16.round(2**-25) == 0.0 and FP16.round(2**-25 * 1.5) == 2**-24


def test_scalar_numpy_and_torch_inputs_agree() -> None:
    vals = [0.1, -3.7, 250.0]
    t = E4M3.round(torch.tensor(vals))
    n = E4M3.round(np.array(vals, dtype=np.float32))
    s = [E4M3.round(v) for v in vals]
    assert t.tolist() == n.tolist() == s
    assert isinstance(E4M3.encode(1.0), int) and isinstance(n, np.ndarray)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(TypeError, match="x must be"):
        E4M3.encode("1.0")
    with pytest.raises(TypeError, match="floating-point"):
        E4M3.encode(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"bits must be in \[0, 2\*\*8\)"):
        E4M3.decode(torch.tensor([256]))
    with pytest.raises(TypeError, match="integers"):
        E4M3.decode(torch.tensor([1.0]))
    with pytest.raises(TypeError, match="saturate"):
        E4M3.round(1.0, saturate="yes")
    with pytest.raises(ValueError, match="too many"):
        FP32.all_values()
    with pytest.raises(ValueError, match="exponent_bits"):
        F.FloatFormat("bad", 9, 3, 7, "ieee", 1, False)


# ---------------------------------------------------------------------------------------------------------
# MXFP4 and NVFP4 against the specs, on hand-computed blocks
# ---------------------------------------------------------------------------------------------------------

def test_mxfp4_hand_computed_blocks() -> None:
    x = torch.zeros(4, 32)
    x[0, :4] = torch.tensor([7.0, 1.0, -0.3, 2.5])   # amax 7: floor(log2 7) - 2 = 0, X = 1
    x[1, :3] = torch.tensor([0.75, 0.1, -0.2])       # amax 0.75: X = 2**(-1 - 2) = 1/8
    x[2, :2] = torch.tensor([1.0, 0.25])             # amax exactly 1: X = 2**-2
    # x[3] all zero
    codes, scales = F.mxfp4_encode(x)
    assert (scales.to(torch.int64) - 127).flatten().tolist() == [0, -3, -2, -127]
    y = F.mxfp4_decode(codes, scales)
    assert y[0, :4].tolist() == [6.0, 1.0, -0.5, 2.0]       # 7 clamps to 6; 2.5 ties to 2 (even)
    assert y[1, :3].tolist() == [0.75, 0.125, -0.1875]      # 0.1/0.125 = 0.8 -> 1;  -1.6 -> -1.5
    assert y[2, :2].tolist() == [1.0, 0.25]
    assert not y[3].any()
    assert codes.dtype == torch.uint8 and scales.shape == (4, 1)


def test_mxfp4_special_values_and_extremes() -> None:
    x = torch.ones(3, 32)
    x[0, 5] = math.nan
    x[1, 0] = math.inf
    x[2] = 1e-39  # subnormal float32: the shared exponent clamps at E8M0's smallest, 2**-127
    codes, scales = F.mxfp4_encode(x)
    assert scales.tolist() == [[F.E8M0_NAN], [F.E8M0_NAN], [0]]
    y = F.mxfp4_decode(codes, scales)
    assert torch.isnan(y[:2]).all()
    assert (y[2] == 0).all()  # 1e-39 / 2**-127 = 0.17 rounds to 0 in E2M1
    with pytest.raises(ValueError, match="multiple of 32"):
        F.mxfp4_encode(torch.ones(3, 30))


def test_nvfp4_hand_computed_blocks() -> None:
    x = torch.zeros(3, 16)
    x[0, 0] = 2688.0                      # tensor amax 2688 = 6 * 448 -> global scale 1
    x[1, :2] = torch.tensor([3.0, -1.0])  # block amax 3: s = E4M3(0.5) = 0.5; 3/0.5 = 6, -1/0.5 = -2
    x[2, :2] = torch.tensor([1.8, 0.7])   # 1.8/6 = 0.3 -> E4M3 0.3125; 1.8/0.3125 = 5.76 -> 6; 2.24 -> 2
    codes, scales, g = F.nvfp4_encode(x)
    assert g == 1.0
    assert E4M3.decode(scales.to(torch.int64)).flatten().tolist() == [448.0, 0.5, 0.3125]
    y = F.nvfp4_decode(codes, scales, g)
    assert y[0, 0].item() == 2688.0
    assert y[1, :2].tolist() == [3.0, -1.0]
    assert y[2, :2].tolist() == [6 * 0.3125, 2 * 0.3125]


def test_nvfp4_global_scale_and_errors() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, generator=gen) * 1e-3
    codes, scales, g = F.nvfp4_encode(x)
    assert g == pytest.approx(float(x.abs().max()) / (6 * 448), rel=1e-6)
    assert E4M3.decode(scales.to(torch.int64)).max().item() == 448.0  # the amax block uses the top scale
    assert F.relative_mse(x, F.nvfp4_decode(codes, scales, g)) < 0.02
    assert not F.nvfp4_decode(*F.nvfp4_encode(torch.zeros(16))).any()
    with pytest.raises(ValueError, match="NaN or Inf"):
        F.nvfp4_encode(torch.tensor([math.nan] * 16))
    with pytest.raises(ValueError, match="multiple of 16"):
        F.nvfp4_encode(torch.ones(20))


def test_nvfp4_beats_mxfp4_on_gaussian_weights() -> None:
    # finer (E4M3) block scales waste less of E2M1's range than power-of-two ones
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    assert F.relative_mse(w, F.quantize(w, "nvfp4")) < F.relative_mse(w, F.quantize(w, "mxfp4"))


# ---------------------------------------------------------------------------------------------------------
# quantize at a granularity, errors
# ---------------------------------------------------------------------------------------------------------

def test_quantize_every_format_and_granularity() -> None:
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    for fmt in F.FORMAT_NAMES:
        nat = F.natural_granularity(fmt)
        grans = [None] if nat is not None else [None, *F.GRANULARITIES]
        for g in grans:
            y = F.quantize(w, fmt, g)
            assert y.shape == w.shape and y.dtype == torch.float32 and torch.isfinite(y).all()


def test_quantize_error_ordering_on_gaussian_weights() -> None:
    w = torch.randn(32, 128, generator=torch.Generator().manual_seed(3))
    err = {f: F.relative_mse(w, F.quantize(w, f, "block32" if F.natural_granularity(f) is None else None))
           for f in F.FORMAT_NAMES}
    assert err["fp32"] == 0.0
    assert err["bf16"] < err["fp8_e4m3"] < err["int4"] < err["ternary"] < err["binary"]
    assert err["fp16"] < err["bf16"]  # 10 mantissa bits vs 7
    assert err["fp8_e4m3"] < err["fp8_e5m2"]  # one more mantissa bit where the scale puts the values
    assert err["int8"] < err["fp8_e4m3"]  # uniform 8-bit grid wins on a light-tailed block
    # a Gaussian's optimal ternary/binary relative MSE (REFERENCE §7: 0.2634 and 0.3634 for unit variance)
    assert 0.2 < err["ternary"] < 0.33 and 0.3 < err["binary"] < 0.42


def test_finer_granularity_helps_rows_of_different_scale() -> None:
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(8, 64, generator=gen) * torch.logspace(-3, 0, 8)[:, None]
    e = {g: F.relative_mse(w, F.quantize(w, "int4", g)) for g in ("tensor", "channel", "block16")}
    assert e["block16"] < e["channel"] < e["tensor"]


def test_quantize_exact_cases() -> None:
    w = torch.tensor([[-6.0, -3.0, 0.0, 0.5, 1.5, 4.0] + [0.0] * 26])
    assert torch.equal(F.quantize(w, "mxfp4"), w)  # amax 6: X = 2**(2-2) = 1, all on the E2M1 grid
    c = torch.full((2, 16), 0.37)
    assert torch.allclose(F.quantize(c, "int4_asym", "channel"), c)  # a constant group is reproduced
    t = F.quantize(w, "ternary")
    gamma = w.abs().mean()
    assert set(torch.unique(t / gamma).round().tolist()) <= {-1.0, 0.0, 1.0}
    b = F.quantize(torch.tensor([[0.0, -2.0, 1.0, 1.0]]), "binary")
    assert b.tolist() == [[1.0, -1.0, 1.0, 1.0]]  # sign(0) = +1, scale mean|w| = 1


def test_quantize_refuses_bad_input() -> None:
    w = torch.randn(4, 32)
    with pytest.raises(ValueError, match="fmt must be one of"):
        F.quantize(w, "int5")
    with pytest.raises(ValueError, match="granularity must be one of"):
        F.quantize(w, "int4", "row")
    with pytest.raises(ValueError, match="fixes its own granularity"):
        F.quantize(w, "mxfp4", "channel")
    with pytest.raises(ValueError, match="fixes its own granularity"):
        F.quantize(w, "bf16", "tensor")
    with pytest.raises(ValueError, match="multiple of 16"):
        F.quantize(torch.randn(4, 24), "int4", "block16")
    with pytest.raises(ValueError, match="NaN or Inf"):
        F.quantize(torch.tensor([1.0, math.nan]), "int8")
    with pytest.raises(TypeError, match="floating-point"):
        F.quantize(torch.ones(4, dtype=torch.int64), "int8")
    with pytest.raises(ValueError, match="'channel' needs"):
        F.quantize(torch.ones(32), "int8", "channel")
    with pytest.raises(ValueError, match="all zeros"):
        F.relative_mse(torch.zeros(3), torch.zeros(3))


@pytest.mark.parametrize("shape", [(0,), (0, 32), (4, 0), (2, 0, 32)])
@pytest.mark.parametrize("fmt", F.FORMAT_NAMES)
def test_quantize_empty_tensor_returns_an_empty_tensor(fmt: str, shape: tuple[int, ...]) -> None:
    # issue 9: an empty tensor raised IndexError (amax over nothing) or a reshape RuntimeError
    w = torch.empty(shape)
    nat = F.natural_granularity(fmt)
    grans = [None] if nat is not None else [None, "tensor", "block32", "block16"]
    if nat is None and len(shape) >= 2:
        grans.append("channel")
    for g in grans:
        y = F.quantize(w, fmt, g)
        assert y.shape == w.shape and y.dtype == torch.float32, (fmt, g)
    if nat is None:  # shape rules still apply to an empty tensor
        with pytest.raises(ValueError, match="multiple of 32"):
            F.quantize(torch.empty(0, 24), fmt, "block32")
    if fmt in ("mxfp4", "nvfp4"):
        block = 32 if fmt == "mxfp4" else 16
        enc = F.mxfp4_encode if fmt == "mxfp4" else F.nvfp4_encode
        dec = F.mxfp4_decode if fmt == "mxfp4" else F.nvfp4_decode
        parts = enc(torch.empty(0, 2 * block))
        assert parts[0].shape == (0, 2 * block) and parts[1].shape == (0, 2)
        assert dec(*parts).shape == (0, 2 * block)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool, torch.complex64])
def test_non_float_tensors_are_refused_naming_their_dtype(dtype: torch.dtype) -> None:
    # issue 9: the message said "got Tensor" instead of the dtype
    w = torch.ones(4, 32, dtype=dtype)
    for call in (lambda: F.quantize(w, "int8"), lambda: F.mxfp4_encode(w), lambda: F.nvfp4_encode(w),
                 lambda: F.relative_error(w, "int8"), lambda: F.student_t_like(w)):
        with pytest.raises(TypeError, match=f"floating-point .*got {dtype}"):
            call()
    with pytest.raises(TypeError, match="got list"):
        F.quantize([1.0, 2.0], "int8")


def test_zero_dim_tensors_keep_their_shape() -> None:
    x = torch.tensor(1.3)
    for f in (F.FP32, F.BF16, F.E4M3, F.E2M1):
        assert f.round(x).shape == () and f.encode(x).shape == ()
        assert f.decode(torch.tensor(1)).shape == ()
    for fmt in ("fp32", "bf16", "fp16", "int8", "ternary"):
        assert F.quantize(x, fmt).shape == ()


def test_relative_error_across_magnitudes() -> None:
    x = F.magnitude_sweep(1e-8, 1e5, 4001)
    # inside the normal range every float format keeps relative error <= 2**-(M+1)
    for name in ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2"):
        f = F.FLOAT_FORMATS[name]
        inside = (x >= f.min_normal) & (x <= f.max_value)
        assert F.relative_error(x[inside], name).max().item() <= 2.0 ** -(f.mantissa_bits + 1) + 1e-7
    # below half the smallest subnormal a value flushes to zero: relative error 1
    e4 = F.relative_error(x, "fp8_e4m3")
    assert (e4[x < E4M3.min_subnormal / 2] == 1).all()
    assert F.relative_error(x, "bf16").max().item() <= 2**-8 + 1e-7  # BF16 covers the whole sweep
    with pytest.raises(ValueError, match="nonzero"):
        F.relative_error(torch.tensor([0.0]), "bf16")


def test_range_table() -> None:
    rows = {r["name"]: r for r in F.range_table()}
    assert rows["FP8 E4M3"]["min_subnormal"] == 2**-9 and rows["FP8 E5M2"]["min_subnormal"] == 2**-16
    assert rows["BF16"]["decades"] > rows["FP16"]["decades"] > rows["FP8 E4M3"]["decades"]
    assert rows["FP16"]["decimal_digits"] > rows["BF16"]["decimal_digits"]
    with pytest.raises(ValueError, match="float formats"):
        F.range_table(["int8"])


# ---------------------------------------------------------------------------------------------------------
# bits per weight and model size
# ---------------------------------------------------------------------------------------------------------

def test_bits_per_weight_values() -> None:
    bpw = F.bits_per_weight
    assert bpw("int4", 128, 16, 16) == 4.25
    assert bpw("int4", 128) == 4.125
    assert bpw("mxfp4") == 4.25 and bpw("mxfp4", 32, 8) == 4.25
    assert bpw("nvfp4") == 4.5
    assert bpw("int2", 64, 16, 16) == 2.5 and bpw("int3", 128, 16, 16) == 3.25
    assert bpw("fp16") == 16.0 and bpw("fp8_e4m3", 32, 8) == 8.25
    assert bpw("ternary") == pytest.approx(1.5849625)
    assert bpw("binary", 8192, 16) == 1 + 16 / 8192


def test_bits_per_weight_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="fmt must be one of"):
        F.bits_per_weight("int9")
    with pytest.raises(ValueError, match="group_size"):
        F.bits_per_weight("int4", 0)
    with pytest.raises(ValueError, match="fixes group_size=32"):
        F.bits_per_weight("mxfp4", 16)
    with pytest.raises(ValueError, match="fixes group_size=16"):
        F.bits_per_weight("nvfp4", scale_bits=16)
    with pytest.raises(ValueError, match="scale_bits"):
        F.bits_per_weight("int4", 128, -1)


# ---------------------------------------------------------------------------------------------------------
# the lesson's figures and widget (thin wrappers over the functions above)
# ---------------------------------------------------------------------------------------------------------

def test_viz_figures_draw() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qcourse import viz

    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    figs = [viz.plot_bit_layouts(), viz.plot_block_layouts(), viz.plot_value_grids(),
            viz.plot_relative_error(F.magnitude_sweep(1e-6, 1e4, 200), ["bf16", "fp8_e4m3", "int8"],
                                    {"int8": 1e4 / 127})]
    for fmt in F.FORMAT_NAMES:
        figs.append(viz.plot_grid_over_histogram(w, fmt, "block32", rel_mse=0.1))
    assert all(len(f.axes) >= 1 for f in figs)
    for f in figs:
        plt.close(f)


def test_grid_for_display_matches_quantize_per_tensor() -> None:
    from qcourse import viz

    w = torch.randn(8, 32, generator=torch.Generator().manual_seed(6))
    for fmt in ("fp8_e4m3", "fp4_e2m1", "int4", "int8", "ternary", "binary", "int4_asym"):
        grid, caption = viz.grid_for_display(w, fmt, "tensor")
        q = F.quantize(w, fmt, "tensor")
        # every dequantized value lies on the drawn grid
        assert torch.isclose(q.flatten()[:, None], grid[None, :], rtol=1e-5, atol=1e-7).any(dim=1).all(), fmt
        assert "per-tensor" in caption
    grid, caption = viz.grid_for_display(w, "mxfp4", "tensor")
    assert "block of 32" in caption


def test_format_readout_and_widget() -> None:
    pytest.importorskip("ipywidgets")
    from qcourse import widgets as W

    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(7))
    r = W.format_readout(w, "mxfp4", "channel")
    assert r["granularity"] == "block32" and "fixes its own granularity" in r["note"]
    assert r["rel_mse"] == F.relative_mse(w, F.quantize(w, "mxfp4")) and r["bits_per_weight"] == 4.25
    r = W.format_readout(w, "int4_asym", "block16")
    assert r["bits_per_weight"] == 4 + 32 / 16 and "relative MSE" in r["html"]
    assert W.format_readout(w, "bf16", "tensor")["bits_per_weight"] == 16
    box = W.format_explorer(w)
    fmt_dd, gran_dd = box.children[0].children
    readout = box.children[1]
    assert fmt_dd.description == "format" and gran_dd.description == "granularity"
    before = readout.value
    fmt_dd.value = "int4"
    assert readout.value != before and "relative MSE" in readout.value


def test_student_t_like_and_error_table() -> None:
    from qcourse.diagnostics import kurtosis

    w = torch.randn(128, 128, generator=torch.Generator().manual_seed(8)) * 0.02
    t = F.student_t_like(w, df=3, seed=1)
    assert t.shape == w.shape and t.std().item() == pytest.approx(w.std().item(), rel=1e-4)
    assert kurtosis(t) > 8 > kurtosis(F.student_t_like(w, df=30, seed=1))  # heavier tails at low df
    assert torch.equal(t, F.student_t_like(w, df=3, seed=1))  # seeded
    with pytest.raises(ValueError, match="df"):
        F.student_t_like(w, df=2.5)
    rows = F.error_table({"gauss": w, "t3": t}, ["int4", "fp8_e4m3", "nvfp4"], "tensor")
    by = {r["fmt"]: r for r in rows}
    # heavy tails wreck a uniform per-tensor grid but barely touch a float grid's relative precision
    assert by["int4"]["t3"] > 5 * by["int4"]["gauss"]
    assert by["fp8_e4m3"]["t3"] < 2 * by["fp8_e4m3"]["gauss"]
    assert by["nvfp4"]["granularity"] == "block16"
    with pytest.raises(ValueError, match="empty"):
        F.error_table({})


def test_block_scale_ranges_mxfp4_vs_nvfp4() -> None:
    # NVFP4's E4M3 block scales cover ~5 decades below the tensor's max; E8M0 covers 2**-127..2**127
    gen = torch.Generator().manual_seed(9)
    wide = torch.randn(64, 32, generator=gen) * torch.logspace(-3, 3, 64)[:, None]
    err = {f: ((F.quantize(wide, f) - wide) ** 2).sum(1) / (wide**2).sum(1) for f in ("mxfp4", "nvfp4")}
    assert err["nvfp4"][0].item() == 1.0 and err["mxfp4"][0].item() < 0.05
    narrow = wide[24:40]  # about 1.5 decades: NVFP4 is the more accurate of the two
    nv, mx = (F.relative_mse(narrow, F.quantize(narrow, f)) for f in ("nvfp4", "mxfp4"))
    assert nv < mx
