"""AQLM: beam search = exhaustive search, monotone objective, k-means special case, exact least squares,
honest bits, storage round trips, the method API, and interop with the authors' ``aqlm`` package."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import methods
from qcourse.kmeans import assign, kmeans_plus_plus, update_centroids
from qcourse.methods.aqlm import (
    AQLMWeight,
    aqlm_quantize,
    beam_search,
    bits_per_weight,
    decode,
    objective,
    parse_config,
    row_objective,
    update_codebooks,
    update_scales,
)

pytestmark = pytest.mark.usefixtures("one_thread")

AQLM = methods.get("aqlm")


def _problem(out: int, inp: int, seed: int, n: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight and ``H = E[x xᵀ]`` of correlated inputs (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, inp, generator=g, dtype=torch.float64) @ torch.randn(inp, inp, generator=g,
                                                                            dtype=torch.float64)
    return torch.randn(out, inp, generator=g, dtype=torch.float64), x.T @ x / n


def _exhaustive(w: torch.Tensor, H: torch.Tensor, books: torch.Tensor, s: torch.Tensor,
                J: int, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    K = books.shape[1]
    codes, losses = [], []
    for o in range(w.shape[0]):
        best = None
        for combo in itertools.product(range(K), repeat=J * M):
            c = torch.tensor(combo).reshape(1, J, M)
            v = float(row_objective(w[o:o + 1], decode(c, books, s[o:o + 1]), H))
            if best is None or v < best[0]:
                best = (v, c[0])
        losses.append(best[0])
        codes.append(best[1])
    return torch.stack(codes), torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("M, B, g, inp", [(2, 2, 4, 8), (1, 3, 2, 4), (3, 1, 2, 6), (2, 1, 3, 6)])
@pytest.mark.parametrize("shuffle", [False, True])
def test_beam_at_least_combinations_is_exhaustive(M: int, B: int, g: int, inp: int, shuffle: bool) -> None:
    w, H = _problem(4, inp, seed=M * 10 + B)
    gen = torch.Generator().manual_seed(1)
    K, J = 2**B, inp // g
    books = torch.randn(M, K, g, generator=gen, dtype=torch.float64)
    s = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5
    start = torch.randint(0, K, (4, J, M), generator=gen)
    codes, losses = beam_search(w, H, books, s, start, beam_size=K ** (J * M),
                                generator=torch.Generator().manual_seed(2) if shuffle else None)
    ref_codes, ref_losses = _exhaustive(w, H, books, s, J, M)
    assert torch.allclose(losses, ref_losses, rtol=1e-10, atol=1e-12)
    assert torch.equal(codes, ref_codes)
    # the losses the search tracks incrementally are the true objective of the codes it returns
    assert torch.allclose(row_objective(w, decode(codes, books, s), H), losses, rtol=1e-10)


@given(seed=st.integers(0, 10**6), beam=st.integers(1, 4))
@settings(max_examples=15)
def test_beam_search_never_worse_than_start(seed: int, beam: int) -> None:
    w, H = _problem(6, 16, seed)
    gen = torch.Generator().manual_seed(seed)
    books = torch.randn(2, 8, 4, generator=gen, dtype=torch.float64) * 0.5
    s = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    start = torch.randint(0, 8, (6, 4, 2), generator=gen)
    before = row_objective(w, decode(start, books, s), H)
    codes, after = beam_search(w, H, books, s, start, beam_size=beam, generator=gen)
    assert (after <= before + 1e-9).all()
    assert torch.allclose(row_objective(w, decode(codes, books, s), H), after, rtol=1e-9, atol=1e-12)


def test_wider_beam_is_no_worse_in_one_pass_on_average() -> None:
    w, H = _problem(64, 32, seed=3)
    gen = torch.Generator().manual_seed(0)
    books = torch.randn(2, 16, 8, generator=gen, dtype=torch.float64) * 0.5
    s = torch.ones(64, dtype=torch.float64)
    start = torch.zeros(64, 4, 2, dtype=torch.long)
    l1 = beam_search(w, H, books, s, start, beam_size=1)[1].sum()
    l8 = beam_search(w, H, books, s, start, beam_size=8)[1].sum()
    assert l8 <= l1


@pytest.mark.parametrize("M, B, beam", [(1, 4, 1), (2, 4, 1), (2, 4, 3), (3, 3, 1)])
def test_objective_never_increases(M: int, B: int, beam: int) -> None:
    w, H = _problem(24, 32, seed=M + B)
    res = aqlm_quantize(w.float(), H, M, B, in_group_size=8, beam_size=beam, rounds=6, rel_tol=0, seed=1)
    h = res.history
    assert len(h) == 7 and all(b <= a for a, b in zip(h, h[1:], strict=False)), h
    assert h[-1] < h[0]
    # the logged objective is that of the stored (fp16) codebooks and scales
    assert res.objective == pytest.approx(objective(w.float(), res.dequantize(), H), rel=1e-9)
    assert torch.equal(res.codebooks, res.codebooks.half().float())
    assert torch.equal(res.scales, res.scales.half().float())


def test_one_codebook_identity_hessian_is_kmeans_step_by_step() -> None:
    # M = 1, H = I, scales fixed at 1: beam search is k-means' assignment, the codebook update its means
    w, _ = _problem(40, 16, seed=5)
    groups = w.reshape(-1, 4)
    books = kmeans_plus_plus(groups, 8, generator=torch.Generator().manual_seed(0))[None]
    ones, eye = torch.ones(40, dtype=torch.float64), torch.eye(16, dtype=torch.float64)
    codes, _ = beam_search(w, eye, books, ones, torch.zeros(40, 4, 1, dtype=torch.long))
    labels, d2 = assign(groups, books[0])
    assert torch.equal(codes.flatten(), labels)
    new = update_codebooks(w, eye, codes, books, ones, iters=1)
    means, mass = update_centroids(groups, labels, 8, previous=books[0])
    assert torch.allclose(new[0], means, atol=1e-12)


def test_one_codebook_identity_hessian_matches_kmeans_end_to_end() -> None:
    from qcourse.kmeans import kmeans

    w, _ = _problem(64, 32, seed=6)
    w = w.float()
    res = aqlm_quantize(w, torch.eye(32, dtype=torch.float64), 1, 4, 8, rounds=30, rel_tol=0,
                        kmeans_iters=0, train_scales=False, seed=0)
    km = kmeans(w.reshape(-1, 8), 16, n_iter=30, seed=0)
    # same seeding, same steps; only the fp16 storage of the codebook separates the two
    assert res.objective == pytest.approx(km.inertia, rel=2e-3)


def test_codebook_update_is_exact_least_squares() -> None:
    # dense normal equations of the quadratic in the codebooks, solved directly
    w, H = _problem(6, 8, seed=7)
    gen = torch.Generator().manual_seed(0)
    M, K, g = 2, 4, 4
    codes = torch.randint(0, K, (6, 2, M), generator=gen)
    s = torch.rand(6, generator=gen, dtype=torch.float64) + 0.5
    n = M * K * g
    basis = torch.eye(n, dtype=torch.float64).reshape(n, M, K, g)
    A = torch.stack([decode(codes, b, s).flatten() for b in basis], 1)          # vec(Ŵ) = A vec(C)
    Hbig = torch.kron(torch.eye(6, dtype=torch.float64), H)
    N, rhs = A.T @ Hbig @ A, A.T @ Hbig @ w.flatten()
    best = torch.linalg.lstsq(N, rhs).solution.reshape(M, K, g)
    start = torch.zeros(M, K, g, dtype=torch.float64)
    new = update_codebooks(w, H, codes, start, s, iters=n)
    assert objective(w, decode(codes, new, s), H) == pytest.approx(objective(w, decode(codes, best, s), H),
                                                                   rel=1e-8)
    # a few iterations already lower the objective, never raise it
    losses = [objective(w, decode(codes, update_codebooks(w, H, codes, start, s, iters=i), s), H)
              for i in range(5)]
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:], strict=False))


def test_scale_update_is_per_row_optimum() -> None:
    w, H = _problem(5, 8, seed=8)
    gen = torch.Generator().manual_seed(0)
    books = torch.randn(1, 4, 4, generator=gen, dtype=torch.float64)
    codes = torch.randint(0, 4, (5, 2, 1), generator=gen)
    s = update_scales(w, H, codes, books)
    base = row_objective(w, decode(codes, books, s), H)
    for eps in (1e-3, -1e-3):
        assert (row_objective(w, decode(codes, books, s + eps), H) >= base).all()


def test_calibration_objective_beats_weight_mse_on_output_error() -> None:
    w, H = _problem(64, 64, seed=9, n=256)
    w = w.float()
    with_h = aqlm_quantize(w, H, 2, 4, rounds=4, seed=0)
    with_i = aqlm_quantize(w, torch.eye(64, dtype=torch.float64), 2, 4, rounds=4, seed=0)
    assert objective(w, with_h.dequantize(), H) < 0.9 * objective(w, with_i.dequantize(), H)


@pytest.mark.parametrize("out, inp, M, B", [(256, 256, 2, 8), (768, 256, 1, 8), (256, 768, 1, 16),
                                            (28672, 8192, 2, 8), (48, 64, 3, 4)])
def test_bits_per_weight_hand_count(out: int, inp: int, M: int, B: int) -> None:
    codes = out * (inp // 8) * M * B
    books = M * 2**B * 8 * 16
    scales = 16 * out
    assert bits_per_weight(out, inp, M, B) == (codes + books + scales) / (out * inp)


def test_bits_per_weight_figures() -> None:
    assert bits_per_weight(256, 256) == pytest.approx(2 + 1 + 1 / 16)      # codebooks cost a whole bit
    assert bits_per_weight(256, 768, 1, 16) == pytest.approx(2 + 2**16 * 8 * 16 / (256 * 768) + 16 / 768)
    assert round(bits_per_weight(28672, 8192), 3) == 2.002                  # the paper's App. H example


def test_stored_weight_counts_what_it_stores() -> None:
    w, H = _problem(32, 64, seed=10)
    qw = AQLM.quantize(w.float(), bits=2, hessian=H, rounds=1)
    assert isinstance(qw, AQLMWeight) and qw.config == "2x8"
    assert qw.storage_bits == 32 * 8 * 2 * 8 + 2 * 256 * 8 * 16 + 32 * 16
    assert qw.bits_per_weight == pytest.approx(bits_per_weight(32, 64, 2, 8))
    tensors, meta = qw.to_state()
    assert sum(t.numel() * t.element_size() * 8 for t in tensors.values()) == qw.storage_bits
    back = AQLMWeight.from_state(tensors, meta)
    assert torch.equal(back.dequantize(), qw.dequantize())
    from qcourse.methods.base import weight_from_state

    assert torch.equal(weight_from_state(tensors, meta).dequantize(), qw.dequantize())


@pytest.mark.parametrize("B", [3, 16])
def test_storage_round_trip_other_widths(B: int) -> None:
    gen = torch.Generator().manual_seed(0)
    K = 2**B
    codes = torch.randint(0, K, (5, 3, 2), generator=gen)
    qw = AQLMWeight(codes, torch.randn(2, K, 4, generator=gen), torch.rand(5, generator=gen) + 0.5)
    assert torch.equal(qw.codes(), codes)
    assert qw.storage_bits == (5 * 3 * 2 * B + 7) // 8 * 8 + 2 * K * 4 * 16 + 5 * 16 if B == 3 else True
    t, meta = qw.to_state()
    assert torch.equal(AQLMWeight.from_state(t, meta).codes(), codes)


def test_method_api_and_errors() -> None:
    w, H = _problem(64, 32, seed=11)
    w = w.float()
    assert AQLM.needs_hessian and "aqlm" in methods.available()
    qw = AQLM.quantize(w, bits=1, hessian=H, rounds=1, group_size=32)   # group_size does not apply
    assert qw.config == "1x8"
    assert AQLM.quantize(w, bits=2, hessian=H, rounds=1, config="2x4", in_group_size=4).config == "2x4"
    with pytest.raises(ValueError, match="hessian"):
        AQLM.quantize(w, bits=2)
    with pytest.raises(ValueError, match="bits"):
        AQLM.quantize(w, bits=5, hessian=H)
    with pytest.raises(ValueError, match="stores 4 bits"):
        AQLM.quantize(w, bits=2, hessian=H, config="4x8")
    with pytest.raises(ValueError, match="has only 64 groups"):
        AQLM.quantize(w[:16], bits=2, hessian=H, config="1x16")
    with pytest.raises(ValueError, match="MxB"):
        parse_config("2by8")
    with pytest.raises(ValueError, match="codebook_bits"):
        parse_config("1x12")
    with pytest.raises(ValueError, match="unknown option"):
        AQLM.quantize(w, bits=2, hessian=H, beam=4)
    with pytest.raises(ValueError, match="in_group_size"):
        aqlm_quantize(w, H, 2, 8, in_group_size=5)
    with pytest.raises(ValueError, match="beam_size"):
        aqlm_quantize(w, H, 2, 4, beam_size=0)


def test_deterministic() -> None:
    w, H = _problem(32, 32, seed=12)
    a = AQLM.quantize(w.float(), bits=2, hessian=H, rounds=2, seed=3, config="2x4", in_group_size=4)
    b = AQLM.quantize(w.float(), bits=2, hessian=H, rounds=2, seed=3, config="2x4", in_group_size=4)
    assert torch.equal(a.dequantize(), b.dequantize())


def test_quantize_model_with_calibration() -> None:
    from qcourse.nn import QuantLinear, quantize_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))
    calib = torch.randn(64, 64)
    qmodel, report = quantize_model(model, "aqlm", bits=2, calib=calib, progress=False,
                                    rounds=2, config="2x4", in_group_size=4)
    assert isinstance(qmodel[0], QuantLinear) and isinstance(qmodel[2], QuantLinear)
    assert all(0 < row.proxy_loss < 1 for row in report.layers)


# --- interop with the authors' package ------------------------------------------------------------------

def _numba_one_thread():
    # aqlm 1.1.7's numba CPU kernel accumulates output rows inside a prange over input groups without a
    # reduction, a data race with more than one numba thread (wrong outputs, different on every call)
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    return numba, before


@pytest.mark.parametrize("config, out, inp", [("2x8", 48, 64), ("1x8", 64, 32), ("4x8", 32, 64)])
def test_aqlm_package_quantized_linear_gives_our_outputs(config: str, out: int, inp: int) -> None:
    pytest.importorskip("aqlm")
    from aqlm.inference_kernels.dequantization import dequantize_gemm

    from qcourse.nn import QuantLinear

    w, H = _problem(out, inp, seed=13)
    M = int(config[0])
    qw = AQLM.quantize(w.float(), bits=M, hessian=H, rounds=2)
    bias = torch.randn(out)
    ours = QuantLinear(qw, bias=bias)
    theirs = qw.to_aqlm_linear(bias)
    t = qw.aqlm_tensors()
    assert t["codes"].dtype == torch.int8 and tuple(t["codes"].shape) == (out, inp // 8, M)
    assert tuple(t["codebooks"].shape) == (M, 256, 1, 8) and tuple(t["scales"].shape) == (out, 1, 1, 1)
    x = torch.randn(10, inp)
    with torch.no_grad():
        y = ours(x)
        # the package's pure-torch path decodes exactly our weight
        assert torch.equal(dequantize_gemm(x, t["codes"], t["codebooks"], t["scales"], bias), y)
        numba, before = _numba_one_thread()
        try:
            for batch in (x[:1], x[:3], x):     # GEMV (≤ 6 rows) and GEMM paths of its numba kernel
                assert (theirs(batch) - ours(batch)).abs().max() < 1e-5
        finally:
            numba.set_num_threads(before)


def test_aqlm_package_1x16_layout() -> None:
    pytest.importorskip("aqlm")
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 2**16, (8, 2, 1), generator=gen)
    codes[0, 0, 0], codes[1, 0, 0] = 2**15, 2**16 - 1            # the codes stored as negative int16
    qw = AQLMWeight(codes, torch.randn(1, 2**16, 8, generator=gen), torch.rand(8, generator=gen) + 0.5)
    assert qw.aqlm_tensors()["codes"].dtype == torch.int16
    layer = qw.to_aqlm_linear()
    x = torch.randn(4, 16, generator=gen)
    with torch.no_grad():
        assert torch.equal(layer(x), x @ qw.dequantize().T)
