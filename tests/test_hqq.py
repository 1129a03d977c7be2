"""HQQ: operator formulas, the zero step's optimality, and a cross-check against the `hqq` package."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import grouping, methods
from qcourse.methods.hqq import init_minmax, lsq_refit, optimize, quantize_hqq, shrink_lp, zero_step

HQQ = methods.get("hqq")

pytestmark = pytest.mark.usefixtures("one_thread")


def _student_t(shape: tuple[int, int], seed: int, df: float = 3.0) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.distributions.StudentT(torch.tensor(df)).sample(shape) * 0.02


def _gauss(shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.02


def _rel(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w - w_hat).pow(2).sum() / w.pow(2).sum())


# --- the operators -----------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(x=st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=20),
       beta=st.floats(0.5, 100), p=st.floats(0.1, 1.0))
def test_shrink_lp_matches_its_formula(x: list[float], beta: float, p: float) -> None:
    t = torch.tensor(x, dtype=torch.float64)
    got = shrink_lp(t, beta, p)
    a = t.abs()
    shrunk = torch.sign(t) * torch.clamp(a - a.pow(p - 1) / beta, min=0)
    want = torch.where(a > 0, shrunk, torch.zeros_like(t))
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    # shrinkage never flips a sign and never grows a value
    assert (got.abs() <= a).all() and (got * t >= 0).all()


def test_p1_is_the_soft_threshold() -> None:
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    assert torch.allclose(shrink_lp(x, 5.0, 1.0), torch.nn.functional.softshrink(x, 0.2))


def test_shrink_lp_approximates_the_proximal_operator_of_lp() -> None:
    # the exact prox argmin_y |y|^p/p + β/2 (y − x)² solves y = x − y^(p−1)/β; HQQ's operator evaluates
    # the right-hand side at y = x (one fixed-point step), which is close once |x| ≫ β^(−1/(2−p)).
    x, beta, p = 3.0, 10.0, 0.7
    ys = torch.linspace(0, 4, 400001, dtype=torch.float64)
    prox = ys[torch.argmin(ys.abs() ** p / p + beta / 2 * (ys - x) ** 2)].item()
    assert shrink_lp(torch.tensor([x], dtype=torch.float64), beta, p).item() == pytest.approx(prox, abs=2e-3)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), bits=st.integers(1, 4))
def test_zero_step_is_the_l2_minimiser(seed: int, bits: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 16, generator=gen, dtype=torch.float64)
    w_e = 0.1 * torch.randn(3, 16, generator=gen, dtype=torch.float64)
    s, z0 = init_minmax(w.float(), bits)
    s, z0 = s.double(), z0.double()
    w_q = torch.round(w * s + z0).clamp(0, 2**bits - 1)
    z = zero_step(w, w_q, w_e, s)

    def objective(zz: torch.Tensor) -> torch.Tensor:
        return (((w - w_e) - (w_q - zz) / s) ** 2).sum(dim=1)

    # brute force: a fine grid of candidate zeros around the closed form for every group
    grid = z + torch.linspace(-2, 2, 4001, dtype=torch.float64)[None, :]
    brute = torch.stack([objective(grid[:, j:j + 1]) for j in range(grid.shape[1])], dim=1)
    best = grid[torch.arange(3), brute.argmin(dim=1)]
    assert torch.allclose(z.squeeze(1), best, atol=1.5e-3)
    assert (objective(z) <= brute.min(dim=1).values + 1e-12).all()


def test_init_minmax_guards() -> None:
    s, z = init_minmax(torch.tensor([[1.0, 1.00005], [-1.0, 1.0], [0.0, 1e-3]]), bits=4)
    assert s[0].item() == 1.0                # range ≤ 1e-4 → s' = 1
    assert s[1].item() == pytest.approx(7.5) and z[1].item() == pytest.approx(7.5)
    assert s[2].item() == pytest.approx(15 / 1e-3, rel=1e-5)   # range 1e-3 > 1e-4: the normal formula
    s, _ = init_minmax(torch.tensor([[0.0, 2e-4]]), bits=8)   # 255/2e-4 > 2e4 → clamped
    assert s.item() == pytest.approx(2e4)


# --- the solver -------------------------------------------------------------------------------------------

def test_history_starts_at_minmax_and_best_is_returned() -> None:
    w = grouping.to_groups(_student_t((32, 256), 0), 64).contiguous()
    s, z = init_minmax(w, 2)
    res = optimize(w, s, z, 2)
    w_hat0 = (torch.round(w * s + z).clamp(0, 3) - z) / s
    assert res.history[0] == pytest.approx(float((w - w_hat0).abs().mean()))
    assert res.history[res.best_iter] == min(res.history)
    w_hat = (res.codes - res.zero) / s
    assert float((w - w_hat).abs().mean()) == pytest.approx(min(res.history), rel=1e-6)
    # without early stopping the loop runs all 20 updates (21 scored iterates) and still keeps the best
    full = optimize(w, s, z, 2, early_stop=False)
    assert len(full.history) == 21 and full.history[full.best_iter] == min(full.history)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10**6), bits=st.integers(1, 8), g=st.sampled_from([8, 16, 64]),
       axis=st.sampled_from([0, 1]), scale=st.sampled_from([1e-3, 0.02, 5.0]))
def test_never_worse_than_its_start_and_stored_exactly(seed: int, bits: int, g: int, axis: int,
                                                        scale: float) -> None:
    w = _student_t((64, 128), seed) * (scale / 0.02)
    qw, res = quantize_hqq(w, bits, g, axis=axis)
    assert res is not None and res.history[res.best_iter] <= res.history[0]
    assert torch.equal(qw.codes(), grouping.from_groups(
        torch.round(grouping.to_groups(w, g, axis) / qw.scale.float()[:, None] + qw.zero.float()[:, None])
        .clamp(0, 2**bits - 1), w.shape, g, axis).to(torch.uint8))
    # the stored (fp16) parameters cost at most a hair over the solver's own float32 error
    w_hat = qw.dequantize()
    assert float((w - w_hat).abs().mean()) <= res.history[res.best_iter] * 1.01 + 1e-7


def test_ternary_158_bits() -> None:
    w = _student_t((32, 320), 13)
    qw = HQQ.quantize(w, 1.58, 64)
    assert set(qw.codes().unique().tolist()) <= {0, 1, 2}
    assert qw.bits_per_weight == pytest.approx(1.6 + 32 / 64)   # base-3 packing, 5 codes per byte
    e1, e158, e2 = (_rel(w, HQQ.quantize(w, b, 64).dequantize()) for b in (1, 1.58, 2))
    assert e2 < e158 < e1


def test_round_zero_keeps_integer_zero_points() -> None:
    w = _student_t((16, 128), 1)
    _, res = quantize_hqq(w, 3, 64, round_zero=True)
    assert torch.equal(res.zero, torch.round(res.zero))


@pytest.mark.parametrize("bits", [2, 3])
def test_hqq_beats_minmax_rtn_with_float_zero_on_heavy_tails(bits: int) -> None:
    w = _student_t((64, 512), 2, df=2.5)
    rtn = HQQ.quantize(w, bits, 64, optimize=False).dequantize()   # min–max grid, same float zero storage
    hqq = HQQ.quantize(w, bits, 64).dequantize()
    err_rtn, err_hqq = (w - rtn).abs(), (w - hqq).abs()
    assert err_hqq.pow(0.7).sum() < err_rtn.pow(0.7).sum()     # the L_p objective it optimises
    assert err_hqq.mean() < err_rtn.mean()                       # the L1 criterion it stops on
    assert err_hqq.pow(2).sum() < err_rtn.pow(2).sum()           # and, typically, plain MSE


def test_hqq_also_beats_integer_zero_rtn_method() -> None:
    w = _student_t((64, 512), 3)
    rtn = methods.get("rtn").quantize(w, 2, 64).dequantize()
    assert _rel(w, HQQ.quantize(w, 2, 64).dequantize()) < _rel(w, rtn)


def test_storage_accounting_and_axis0() -> None:
    w = _gauss((128, 256), 4)
    qw = HQQ.quantize(w, 4, 64)
    assert qw.bits_per_weight == 4 + 32 / 64
    assert qw.scale.dtype == torch.float16 and qw.zero.dtype == torch.float16
    assert qw.packed.dtype == torch.uint8
    q0 = HQQ.quantize(w, 3, 32, axis=0)
    assert q0.bits_per_weight == 3 + 32 / 32
    assert _rel(w, q0.dequantize()) < 0.05
    assert HQQ.quantize(w, 3, None).bits_per_weight == 3 + 32 / 256


def test_error_decreases_with_bits_and_lsq_beats_minmax_in_l2() -> None:
    w = _gauss((32, 256), 5)
    errs = [_rel(w, HQQ.quantize(w, b, 64).dequantize()) for b in (1, 2, 3, 4, 8)]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))
    lsq = methods.get("hqq-lsq").quantize(w, 2, 64)
    assert lsq.bits_per_weight == 2.5 and min(lsq.history) <= lsq.history[0]
    assert _rel(w, lsq.dequantize()) < _rel(w, HQQ.quantize(w, 2, 64, optimize=False).dequantize())
    s, z, hist = lsq_refit(grouping.to_groups(w, 64), 2, iters=0)
    assert len(hist) == 1


def test_bad_input_errors() -> None:
    w = _gauss((8, 64), 6)
    with pytest.raises(ValueError, match="bits must be one of"):
        HQQ.quantize(w, 9, 64)
    with pytest.raises(ValueError, match="group_size=48 does not divide in_features=64"):
        HQQ.quantize(w, 4, 48)
    with pytest.raises(ValueError, match="does not divide out_features=8"):
        HQQ.quantize(w, 4, 16, axis=0)
    with pytest.raises(ValueError, match="unknown option"):
        HQQ.quantize(w, 4, 64, lp_norm=0.7)
    with pytest.raises(ValueError, match="p must be in"):
        HQQ.quantize(w, 4, 64, p=1.5)
    with pytest.raises(ValueError, match="beta must be"):
        shrink_lp(w, 0.0, 0.7)
    with pytest.raises(ValueError, match="kappa must be"):
        HQQ.quantize(w, 4, 64, kappa=0.5)
    with pytest.raises(ValueError, match="NaN or Inf"):
        HQQ.quantize(torch.full((2, 8), float("inf")), 4, 8)
    with pytest.raises(ValueError, match="unknown option"):
        methods.get("hqq-lsq").quantize(w, 4, 64, p=0.7)


# --- cross-check against the authors' package -------------------------------------------------------------

os.environ.setdefault("DISABLE_CUDA", "1")
try:
    from hqq.core import optimize as hqq_optimize
    from hqq.core.quantize import Quantizer as HQQQuantizer
    HQQ_IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - depends on the environment
    HQQ_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

needs_hqq = pytest.mark.skipif(bool(HQQ_IMPORT_ERROR),
                               reason=f"hqq package not importable ({HQQ_IMPORT_ERROR})")


@needs_hqq
@pytest.mark.parametrize("dist", ["student-t", "gaussian"])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_within_one_percent_of_the_hqq_package(dist: str, bits: int) -> None:
    """Ours vs ``hqq.core.quantize.Quantizer.quantize(optimize=True)`` (its default solver).

    What differs: the package's default loop (``optimize_weights_proximal_legacy``) does not grow β by κ
    and, on early stop, returns the zero computed in the failing iteration; ours grows β and keeps the best
    zero (v2 semantics). Ours also stores fp16 scale/zero (the package's CPU path keeps float32).
    """
    w = _student_t((256, 1024), 10) if dist == "student-t" else _gauss((256, 1024), 10)
    w_q, meta = HQQQuantizer.quantize(w, nbits=bits, group_size=64, axis=1, optimize=True, round_zero=False,
                                      device="cpu")
    ref = HQQQuantizer.dequantize(w_q, meta).float()
    ours = HQQ.quantize(w, bits, 64).dequantize()
    assert _rel(w, ours) <= 1.01 * _rel(w, ref)


@needs_hqq
def test_ternary_matches_the_package_definition() -> None:
    w = _student_t((128, 512), 14)
    w_q, meta = HQQQuantizer.quantize(w, nbits=1.58, group_size=64, axis=1, optimize=True, device="cpu")
    ref = HQQQuantizer.dequantize(w_q, meta).float()
    assert _rel(w, HQQ.quantize(w, 1.58, 64).dequantize()) <= 1.01 * _rel(w, ref)


@needs_hqq
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_bit_exact_with_the_packages_v2_solver(bits: int) -> None:
    # optimize_weights_proximal_v2 has β·κ and restores the best zero on early stop, like ours; when the
    # early stop fires (it does here, before 20 iterations) the two return identical zeros and codes.
    w = grouping.to_groups(_student_t((64, 256), 11), 64).contiguous()
    s, z = init_minmax(w, bits)
    w_q, _, z_ref = hqq_optimize.optimize_weights_proximal_v2(w.clone(), s.clone(), z.clone(),
                                                             [0, 2**bits - 1], axis=1, device="cpu")
    res = optimize(w, s, z, bits)
    assert len(res.history) <= 20
    assert torch.equal(res.zero, z_ref) and torch.equal(res.codes, w_q)


@needs_hqq
def test_one_step_equals_the_packages_step_and_shrink() -> None:
    w = grouping.to_groups(_student_t((16, 128), 12), 32).contiguous()
    s, z = init_minmax(w, 3)
    w_r, w_q, z_ref, _ = hqq_optimize.optimize_weights_proximal_legacy_step(w, s, z, [0, 7], 10.0, 0.7, 1)
    w_q_ours = torch.round(w * s + z).clamp(0, 7)
    w_r_ours = (w_q_ours - z) / s
    z_ours = zero_step(w, w_q_ours, shrink_lp(w - w_r_ours, 10.0, 0.7), s)
    assert torch.equal(w_q, w_q_ours) and torch.equal(w_r, w_r_ours)
    assert torch.allclose(z_ours, z_ref, rtol=0, atol=1e-6)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    for p in (1.0, 0.7, 0.4):
        assert torch.allclose(shrink_lp(x, 7.0, p), hqq_optimize.shrink_lp_op(x.clone(), 7.0, p))


def test_optimize_is_built_from_shrink_lp_and_zero_step(monkeypatch: pytest.MonkeyPatch) -> None:
    # the solver is the lesson's two functions, not a second copy of their math
    from qcourse.methods import hqq

    w = grouping.to_groups(_student_t((16, 128), 15), 32).contiguous()
    s, z = init_minmax(w, 3)
    want = optimize(w, s, z, 3, early_stop=False, iters=4)
    calls = {"shrink_lp": 0, "zero_step": 0}

    def counted(name: str):
        real = getattr(hqq, name)

        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    for name in calls:
        monkeypatch.setattr(hqq, name, counted(name))
    got = optimize(w, s, z, 3, early_stop=False, iters=4)
    assert calls["shrink_lp"] >= 4 and calls["zero_step"] == calls["shrink_lp"]
    assert torch.equal(got.zero, want.zero) and got.history == want.history


def test_hqq_accepts_a_parameter_and_scalar_parameters() -> None:
    layer = torch.nn.Linear(64, 8)
    qw = HQQ.quantize(layer.weight, 4, 32)            # requires_grad: detached, no autograd error
    assert torch.equal(qw.dequantize(), HQQ.quantize(layer.weight.detach(), 4, 32).dequantize())
    w = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))
    s, z = init_minmax(w, 2)
    per_group = optimize(w, torch.full_like(s, 0.7), z, 2)   # one value per group ...
    shared = optimize(w, torch.tensor(0.7), z, 2)            # ... or one for all groups, broadcast
    assert torch.equal(shared.zero, per_group.zero) and shared.history == per_group.history
