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


# --- the tiled fast path (prepare_affine / prepare_ternary + gemm_tiles) -------------------------------

TILE_CASES = [  # bits, out, in, group (rows off a tile, several tiles, groups of 1-2 chunks, per channel)
    (4, 64, 64, 64), (4, 5, 128, 64), (4, 70, 192, 64), (4, 131, 256, 128), (4, 9, 128, None),
    (4, 3, 64, "tensor"), (2, 64, 64, 64), (2, 7, 128, 64), (2, 65, 320, 64), (2, 33, 256, 128),
    (2, 4, 192, None), (2, 6, 128, "tensor"),
]


@pytest.mark.parametrize("bits,n,k,group_size", TILE_CASES)
@pytest.mark.parametrize("threads", [1, 2])
def test_tiled_kernel_equals_reference(bits, n, k, group_size, threads):
    qw = _affine(bits, n, k, group_size, seed=n * k)
    p = reference.affine_params(qw)
    args = (p["packed"], p["bits"], p["shape"], p["group"], p["scale"], p["zero"])
    tiles = cpu.prepare_affine(*args)
    assert tiles.words.shape == (-(-n // cpu.TILE), k * bits // 32, cpu.TILE)
    before = __import__("numba").get_num_threads()
    cpu.set_threads(min(threads, __import__("numba").config.NUMBA_NUM_THREADS))
    try:
        for batch in (1, 2, 5, 8):
            x = torch.randn(batch, k, generator=torch.Generator().manual_seed(batch))
            torch.testing.assert_close(cpu.gemm_tiles(x, tiles), reference.gemm_affine(x, *args),
                                       rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(cpu.gemm_tiles(x[0], tiles), reference.gemm_affine(x[0], *args),
                                   rtol=1e-5, atol=1e-4)
    finally:
        cpu.set_threads(before)


@pytest.mark.parametrize("float_zero,symmetric", [(True, False), (False, True)])
def test_tiled_kernel_float_and_implicit_zeros(float_zero, symmetric):
    from qcourse import kernels

    qw = _affine(4, 20, 128, 64, seed=3, symmetric=symmetric, float_zero=float_zero)
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(0))
    tiles = kernels.prepare(qw)
    assert tiles is not None
    torch.testing.assert_close(kernels.matmul(x, qw, prepared=tiles), reference.matmul(x, qw),
                               rtol=1e-5, atol=1e-4)


def test_tiled_kernel_extreme_activations():
    """Codes are read unshifted and the activations pre-divided by 16^t: exact for large and tiny x."""
    qw = _affine(4, 8, 64, 64, seed=1)
    p = reference.affine_params(qw)
    args = (p["packed"], p["bits"], p["shape"], p["group"], p["scale"], p["zero"])
    tiles = cpu.prepare_affine(*args)
    for mag in (1e-30, 1e-3, 1e4, 1e30):
        x = torch.randn(2, 64, generator=torch.Generator().manual_seed(2)) * mag
        want = reference.gemm_affine(x, *args)
        torch.testing.assert_close(cpu.gemm_tiles(x, tiles), want, rtol=1e-4,
                                   atol=1e-5 * float(want.abs().max()))
    x = torch.zeros(1, 64)
    assert torch.equal(cpu.gemm_tiles(x, tiles), torch.zeros(1, 8))


@given(n=st.integers(1, 80), kc=st.integers(1, 4), batch=st.integers(1, 8), seed=st.integers(0, 999))
@settings(max_examples=25, deadline=None)
def test_tiled_ternary_equals_reference(n, kc, batch, seed):
    k = 64 * kc
    g = torch.Generator().manual_seed(seed)
    trits = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    qw = TernaryWeight(trits, torch.tensor(0.37), "2bit")
    x = torch.randn(batch, k, generator=g)
    want = reference.gemm_ternary(x, qw.packed, "2bit", qw.shape, qw.gamma)
    torch.testing.assert_close(cpu.gemm_tiles(x, cpu.prepare_ternary(qw.packed, qw.shape, qw.gamma)), want,
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bits,n,k,group", [(4, 4, 96, 32), (4, 4, 100, 4), (2, 4, 64, 32), (3, 4, 64, 64),
                                            (8, 4, 64, 64), (4, 4, 64, 128)])
def test_tiled_kernel_refuses_other_layouts(bits, n, k, group):
    packed = torch.zeros(n * k * bits // 8 if (n * k * bits) % 8 == 0 else n * k * bits // 8 + 1,
                         dtype=torch.uint8)
    ng = n * k // group
    assert not cpu.tiles_supported(bits, (n, k), group)
    with pytest.raises(ValueError, match="tiled kernel needs"):
        cpu.prepare_affine(packed, bits, (n, k), group, torch.ones(ng), torch.zeros(ng))


def test_gemm_tiles_type_check():
    with pytest.raises(TypeError, match="tiles must be an AffineTiles"):
        cpu.gemm_tiles(torch.randn(64), object())


# --- E8P, base-3 trits and binary weights: the formats dispatched by kernels.matmul ---------------------


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("m,n,transform", [(16, 32, True), (12, 40, False), (5, 8, False), (32, 64, True)])
def test_e8p_kernel_equals_decoded(bits, m, n, transform):
    from qcourse import kernels
    from qcourse.methods.quip import quip_quantize

    w = torch.randn(m, n, generator=torch.Generator().manual_seed(m * n + bits))
    qw = quip_quantize(w, None, bits, transform=transform, rounding="nearest", seed=bits)
    assert kernels.kernel_name(qw) == "e8p"
    prep = kernels.prepare(qw)
    assert prep.codes.dtype == np.uint16 and prep.nbytes == m * n // 8 * 2 * (1 if bits == 2 else 2)
    for batch in (1, 3, 8):
        x = torch.randn(batch, n, generator=torch.Generator().manual_seed(batch))
        want = (x.double() @ qw.dequantize(torch.float64).T).float()
        torch.testing.assert_close(cpu.gemm_e8p(x, qw), want, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(kernels.matmul(x, qw, prepared=prep), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(cpu.gemm_e8p(x[0], prep), want[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,k", [(4, 15), (3, 7), (5, 13), (2, 4), (1, 1), (9, 40), (6, 33)])
@pytest.mark.parametrize("batch", [1, 4, 8])
def test_base3_ternary_kernel_equals_reference(n, k, batch):
    from qcourse import kernels

    g = torch.Generator().manual_seed(n * 100 + k)
    trits = torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8)
    qw = TernaryWeight(trits, torch.tensor(0.37), "base3")
    x = torch.randn(batch, k, generator=g)
    want = reference.gemm_ternary(x, qw.packed, "base3", qw.shape, qw.gamma)
    torch.testing.assert_close(cpu.gemm_ternary_base3(x, qw.packed, qw.shape, qw.gamma), want,
                               rtol=1e-5, atol=1e-4)
    assert kernels.kernel_name(qw) == "ternary-base3"
    torch.testing.assert_close(kernels.matmul(x, qw), want, rtol=1e-5, atol=1e-4)


def test_base3_kernel_rejects_wrong_sizes_and_flags_non_trits():
    with pytest.raises(ValueError, match="base-3 packing of 2×5 trits"):
        cpu.gemm_ternary_base3(torch.randn(5), torch.zeros(3, dtype=torch.uint8), (2, 5), 1.0)
    y = cpu.gemm_ternary_base3(torch.ones(5), torch.tensor([255], dtype=torch.uint8), (1, 5), 1.0)
    assert torch.isnan(y).all()


@pytest.mark.parametrize("bits,options,group_size", [
    (1, {}, None), (2, {}, None), (1, {"granularity": "tensor"}, None), (1, {"center": True}, None),
    (1, {}, 16), (2, {}, 8),
])
@pytest.mark.parametrize("n,k", [(5, 48), (3, 64)])
def test_binary_weight_kernel_equals_decoded(bits, options, group_size, n, k):
    from qcourse import kernels, methods

    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n + k + bits))
    qw = methods.get("binary").quantize(w, bits=bits, group_size=group_size, **options)
    assert kernels.kernel_name(qw) == "binary-signs"
    for batch in (1, 2, 7):
        x = torch.randn(batch, k, generator=torch.Generator().manual_seed(batch))
        want = (x.double() @ qw.dequantize().double().T).float()
        torch.testing.assert_close(cpu.gemm_binary_weight(x, qw), want, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(kernels.matmul(x, qw), want, rtol=1e-5, atol=1e-4)


def test_quantlinear_runs_e8p_base3_and_binary_kernels():
    from qcourse.methods.quip import quip_quantize
    from qcourse.nn.linear import QuantLinear, set_kernel

    g = torch.Generator().manual_seed(0)
    weights = {
        "e8p": quip_quantize(torch.randn(16, 32, generator=g), None, 2, rounding="nearest"),
        "ternary-base3": TernaryWeight(torch.randint(-1, 2, (6, 32), generator=g, dtype=torch.int8),
                                       torch.tensor(0.2), "base3"),
    }
    from qcourse import methods

    weights["binary-signs"] = methods.get("binary").quantize(torch.randn(4, 32, generator=g), bits=2)
    for name, qw in weights.items():
        layer = torch.nn.Sequential(QuantLinear(qw, bias=torch.randn(qw.shape[0], generator=g)))
        x = torch.randn(2, 3, 32, generator=g)
        with torch.no_grad():
            want = layer(x)                         # decoding
            assert set_kernel(layer, "auto") == {"0": name}
            torch.testing.assert_close(layer(x), want, rtol=1e-4, atol=1e-4)
            assert layer[0]._cached is None
