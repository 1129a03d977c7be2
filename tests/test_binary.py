"""Binary weights: qcourse.methods.binary, qcourse.nn.binary, qcourse.binary_nets, qcourse.digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from torch import nn

from qcourse import binary_nets, digits, methods, xnor
from qcourse.methods import binary as mb
from qcourse.methods.base import weight_from_state
from qcourse.nn import binary as nb
from qcourse.nn.bitlinear import rms_norm


def _w(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- methods.binary ----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 40))
def test_xnor_alpha_is_the_least_squares_scale(seed, n):
    w = _w(seed, 1, n)
    b, alpha = mb.xnor_binarize(w)
    # scipy's scalar minimiser of ‖W − αB‖² agrees with mean|W| (before the fp16 rounding of the store)
    wd, bd = w.double(), b.double()
    res = minimize_scalar(lambda a: float(((wd - a * bd) ** 2).sum()), bounds=(0, 10), method="bounded",
                          options={"xatol": 1e-10})
    assert math.isclose(res.x, float(wd.abs().mean()), abs_tol=1e-7)
    assert math.isclose(float(alpha), float(w.abs().mean()), rel_tol=1e-3)


def test_sign_of_w_is_the_best_sign_vector_brute_force():
    w = _w(3, 1, 10)
    best = math.inf
    for code in range(2 ** 10):
        b = torch.tensor([1.0 if code >> i & 1 else -1.0 for i in range(10)])
        a = max(float((w[0] * b).mean()), 0.0)
        best = min(best, float(((w[0] - a * b) ** 2).sum()))
    b, _ = mb.xnor_binarize(w)
    a = float(w.abs().mean())
    assert math.isclose(float(((w - a * b.float()) ** 2).sum()), best, rel_tol=1e-6)


def test_gaussian_mse_is_one_minus_two_over_pi():
    w = _w(0, 64, 4096)
    qw = methods.get("binary").quantize(w, bits=1)
    mse = float(((w - qw.dequantize()) ** 2).mean() / w.var())
    assert abs(mse - (1 - 2 / math.pi)) < 0.01


def test_bitnet_v1_centres_and_scales_per_tensor():
    w = _w(1, 8, 16) + 0.7                                   # a shifted weight: centring matters
    b, beta = mb.bitnet_binarize(w)
    centred = w - w.mean()
    assert torch.equal(b, torch.where(centred > 0, 1, -1).to(torch.int8))
    assert math.isclose(float(beta), float(w.abs().mean()), rel_tol=1e-3)
    assert abs(int(b.sum())) < abs(int(mb.sign(w).sum()))   # balanced signs, unlike sign(W)
    qw = methods.get("binary").quantize(w, bits=1, granularity="tensor", center=True)
    assert torch.equal(qw.dequantize(), b.float() * beta.float())


def test_sign_zero_conventions():
    z = torch.zeros(1, 3)
    assert mb.xnor_binarize(z)[0].tolist() == [[1, 1, 1]]
    assert mb.bitnet_binarize(z)[0].tolist() == [[-1, -1, -1]]
    assert methods.get("binary").quantize(z, bits=1).dequantize().abs().sum() == 0


@pytest.mark.parametrize("bits, group_size, granularity", [(1, None, "row"), (1, 16, "row"),
                                                           (2, None, "row"), (2, 32, "row"),
                                                           (1, None, "tensor"), (2, None, "tensor")])
def test_honest_bits_and_state_round_trip(bits, group_size, granularity):
    w = _w(2, 24, 64)
    qw = methods.get("binary").quantize(w, bits=bits, group_size=group_size, granularity=granularity)
    n_scales = 1 if granularity == "tensor" else 24 * 64 // (group_size or 64)
    assert qw.storage_bits == bits * (24 * 64 + 16 * n_scales)
    tensors, meta = qw.to_state()
    assert sum(t.numel() * t.element_size() for t in tensors.values()) * 8 == qw.storage_bits
    again = weight_from_state(tensors, meta)
    assert torch.equal(again.dequantize(), qw.dequantize())


def test_residual_second_basis_lowers_the_error_and_finer_groups_help():
    w = _w(4, 32, 256)
    err = {}
    for bits, gs in [(1, None), (1, 32), (2, None)]:
        qw = methods.get("binary").quantize(w, bits=bits, group_size=gs)
        err[bits, gs] = float(((w - qw.dequantize()) ** 2).mean())
    assert err[2, None] < 0.5 * err[1, None]
    assert err[1, 32] < err[1, None]


def test_dequantize_uses_the_stored_fp16_scales():
    w = _w(5, 4, 8) * 1.234567
    qw = methods.get("binary").quantize(w, bits=1)
    b, a = mb.xnor_binarize(w)
    assert torch.equal(qw.dequantize(), b.float() * a.float())


def test_bad_input_is_refused():
    m = methods.get("binary")
    with pytest.raises(ValueError, match="bits must be one of"):
        m.quantize(torch.ones(2, 4), bits=3)
    with pytest.raises(ValueError, match="granularity"):
        m.quantize(torch.ones(2, 4), bits=1, granularity="column")
    with pytest.raises(ValueError, match="group_size must be None with granularity='tensor'"):
        m.quantize(torch.ones(2, 4), bits=1, group_size=2, granularity="tensor")
    with pytest.raises(ValueError, match="divisor"):
        m.quantize(torch.ones(2, 6), bits=1, group_size=4)
    with pytest.raises(ValueError, match="fp16"):
        m.quantize(torch.full((2, 4), 1e6), bits=1)
    with pytest.raises(ValueError, match="NaN"):
        mb.xnor_binarize(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="zero must be"):
        mb.sign(torch.ones(2), zero=0)
    with pytest.raises(ValueError, match="bases"):
        mb.residual_binarize(torch.ones(2, 2), bases=0)
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        mb.BinaryWeight([torch.zeros(1, 2, dtype=torch.int8)], [torch.ones(1, dtype=torch.float16)])
    tensors, meta = m.quantize(torch.ones(2, 4), bits=1).to_state()
    with pytest.raises(ValueError, match="packed0"):
        weight_from_state({**tensors, "packed0": tensors["packed0"].to(torch.int16)}, meta)
    with pytest.raises(ValueError, match="bases"):
        weight_from_state(tensors, {**meta, "bases": 0})


def test_registered_and_works_through_quantize_model():
    assert "binary" in methods.available()
    from qcourse.nn import quantize_model
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    qmodel, _ = quantize_model(model, "binary", bits=1, group_size=None, progress=False)
    w = model[0].weight.detach()
    b, a = mb.xnor_binarize(w)
    x = torch.randn(3, 32)
    assert torch.allclose(qmodel[0](x), x @ (b.float() * a.float()).T + model[0].bias, atol=1e-5)


# --- nn.binary -----------------------------------------------------------------------------------------


def test_sign_ste_gradient_is_the_hardtanh_gradient():
    x = torch.linspace(-2, 2, 41, dtype=torch.float64).requires_grad_()
    g = torch.randn(41, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (nb.sign_ste(x) * g).sum().backward()
    assert torch.equal(x.grad, g * (x.detach().abs() <= 1))
    x2 = x.detach().clone().requires_grad_()
    (nb.sign_ste(x2, clip=False) * g).sum().backward()
    assert torch.equal(x2.grad, g)
    # away from the kinks the clipped STE is exactly hardtanh's derivative
    x3 = x.detach()[x.detach().abs() != 1].clone().requires_grad_()
    x4 = x3.detach().clone().requires_grad_()
    gg = g[x.detach().abs() != 1]
    (nb.sign_ste(x3) * gg).sum().backward()
    (torch.nn.functional.hardtanh(x4) * gg).sum().backward()
    assert torch.equal(x3.grad, x4.grad)


@pytest.mark.parametrize("preset", sorted(nb.PRESETS))
def test_presets_forward_matches_a_hand_computation(preset):
    torch.manual_seed(0)
    layer = nb.PRESETS[preset](16, 5)
    x = torch.randn(3, 16)
    w = layer.weight.detach()
    if preset == "binary_connect":
        want = x @ torch.where(w >= 0, 1.0, -1.0).T
    elif preset == "bnn":
        want = torch.where(x >= 0, 1.0, -1.0) @ torch.where(w >= 0, 1.0, -1.0).T
    elif preset == "xnor_net":
        want = (torch.where(x >= 0, 1.0, -1.0) @ torch.where(w >= 0, 1.0, -1.0).T) \
            * w.abs().mean(1) * x.abs().mean(-1, keepdim=True)
    else:
        xn = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
        s = 127.0 / xn.abs().amax(-1, keepdim=True)
        xq = torch.round(xn * s).clamp(-128, 127) / s
        want = (xq @ torch.where(w - w.mean() > 0, 1.0, -1.0).T) * w.abs().mean()
    assert torch.allclose(layer(x), want, atol=1e-5)


def test_xnor_net_alpha_carries_the_papers_extra_gradient_term():
    torch.manual_seed(1)
    layer = nb.xnor_net(6, 2)
    with torch.no_grad():
        layer.weight.mul_(0.1)                              # |W| < 1: every weight inside the clip
    x = torch.randn(4, 6)
    layer(x).sum().backward()
    w = layer.weight.detach()
    b, a = torch.where(w >= 0, 1.0, -1.0), w.abs().mean(1, keepdim=True)
    g_wb = (torch.where(x >= 0, 1.0, -1.0) * x.abs().mean(-1, keepdim=True)).sum(0)   # ∂L/∂(αB), per input
    dl_da = (g_wb * b).sum(1, keepdim=True)
    want = a * g_wb + dl_da * b / 6                          # α·∂L/∂W̃ + (∂L/∂α)·sign(W)/n
    assert torch.allclose(layer.weight.grad, want, atol=1e-6)


def test_bnn_outputs_are_integers_reproduced_by_popcount():
    torch.manual_seed(2)
    layer = nb.bnn(100, 7)
    x = torch.randn(5, 100)
    y = layer(x)
    z = xnor.xnor_matmul(xnor.pack_signs(layer.signs()), xnor.pack_signs(xnor.binarize(x)), 100)
    assert torch.equal(y, torch.from_numpy(z).float())


def test_to_binary_linear_and_clip():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    nb.to_binary_linear(model, "bnn", include=("0",))
    assert isinstance(model[0], nb.BinaryLinear) and isinstance(model[2], nn.Linear)
    with torch.no_grad():
        model[0].weight.mul_(10)
    assert nb.clip_binary_weights_(model) == 1 and float(model[0].weight.detach().abs().max()) <= 1
    with pytest.raises(ValueError, match="preset"):
        nb.to_binary_linear(model, "ternary")
    with pytest.raises(ValueError, match="no nn.Linear"):
        nb.to_binary_linear(nn.Sequential(nn.ReLU()))


def test_layer_refuses_bad_options():
    with pytest.raises(ValueError, match="weight_scale"):
        nb.BinaryLinear(4, 4, weight_scale="col")
    with pytest.raises(ValueError, match="act"):
        nb.BinaryLinear(4, 4, act="int4")
    with pytest.raises(ValueError, match="input_scale"):
        nb.BinaryLinear(4, 4, act="float", input_scale=True)
    with pytest.raises(ValueError, match="in_features"):
        nb.BinaryLinear(0, 4)
    with pytest.raises(ValueError, match="in_features=4"):
        nb.bnn(4, 2)(torch.ones(1, 5))
    with pytest.raises(TypeError, match="floating-point"):
        nb.sign_ste(torch.ones(2, dtype=torch.int64))


def test_bitnet_v1_trains_a_tiny_regression():
    torch.manual_seed(0)
    layer = nb.bitnet_v1(16, 1)
    x = torch.randn(256, 16)
    signs = torch.where(torch.rand(1, 16) < 0.5, -1.0, 1.0)     # a binary weight can represent this target
    target = 0.1 * rms_norm(x) @ signs.T
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    first = None
    for _ in range(120):
        loss = ((layer(x) - target) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3 * first and torch.equal(layer.signs().float(), signs)


# --- digits and the lesson's MLPs ----------------------------------------------------------------------


def test_digits_split_is_stratified_and_deterministic():
    (x1, y1), (x2, y2) = digits.load()
    (x3, _), _ = digits.load()
    assert torch.equal(x1, x3) and len(x1) + len(x2) == 1797
    counts = np.bincount(y2.numpy(), minlength=10)
    assert counts.min() >= 34 and counts.max() <= 37
    assert float(x1.min()) == 0.0 and float(x1.max()) == 1.0
    with pytest.raises(ValueError, match="test_fraction"):
        digits.load(test_fraction=1.0)


def test_packed_inference_equals_the_float_simulation():
    model, _ = binary_nets.train_digits("bnn", epochs=1, hidden=48, seed=1)
    (x_tr, _), (x_te, _) = digits.load()
    x = torch.cat([x_tr[:200], x_te])
    assert torch.equal(binary_nets.packed_predict(model, x), model(binary_nets.to_inputs(x)).argmax(-1))
    xm, _ = binary_nets.train_digits("xnor_net", epochs=1, hidden=48, seed=1)
    assert torch.equal(binary_nets.packed_predict(xm, x_te, word_bits=8),
                       xm(binary_nets.to_inputs(x_te)).argmax(-1))
    with pytest.raises(ValueError, match="bnn"):
        binary_nets.packed_predict(binary_nets.DigitsMLP("float", 8), x_te)


@pytest.mark.slow
def test_lesson_ordering_float_and_binaryconnect_beat_bnn():
    acc = {k: binary_nets.train_digits(k, epochs=6, seed=0)[1]["test_acc"][-1] for k in binary_nets.KINDS}
    assert min(acc["float"], acc["binary_connect"]) > max(acc["bnn"], acc["xnor_net"]) + 0.02
    assert min(acc.values()) > 0.8


def test_layer_costs_use_horowitz_values():
    c32 = binary_nets.layer_costs(1024, 1024, "fp32")
    c1 = binary_nets.layer_costs(1024, 1024, "binary")
    assert c32["compute_pj"] == pytest.approx(1024 ** 2 * (3.7 + 0.9))
    assert c32["memory_pj"] == pytest.approx(1024 ** 2 * 32 / 64 * 1300)
    assert c1["weight_bits"] * 32 == c32["weight_bits"]
    # the seed article's "FP16 FMA 3.7 pJ" is Horowitz's fp32 multiply; fp16 multiply + add is 1.5 pJ
    assert binary_nets.SEED_ARTICLE_PJ["fp16_fma"] == binary_nets.HOROWITZ_PJ["fp32_mult"]
    with pytest.raises(ValueError, match="scheme"):
        binary_nets.layer_costs(2, 2, "int4")
    with pytest.raises(ValueError, match="memory"):
        binary_nets.layer_costs(2, 2, "fp32", memory="fp32_add")


def test_ptq_digits_residual_beats_one_basis_and_refuses_bad_names():
    model, _ = binary_nets.train_digits("float", epochs=2, hidden=32, seed=0)
    one = binary_nets.ptq_digits(model, "sign · mean|W| (XNOR-Net)", "row")
    two = binary_nets.ptq_digits(model, "residual, 2 bases", "row")
    assert two["rel_mse"] < 0.5 * one["rel_mse"]
    assert 1 < one["bits_per_weight"] < 2 < two["bits_per_weight"] < 3
    with pytest.raises(ValueError, match="scheme"):
        binary_nets.ptq_digits(model, "ternary", "row")
    with pytest.raises(ValueError, match="scale"):
        binary_nets.ptq_digits(model, "residual, 2 bases", "column")
    with pytest.raises(ValueError, match="float"):
        binary_nets.ptq_digits(binary_nets.DigitsMLP("bnn", 8), "residual, 2 bases", "row")


def test_train_lm_short_twins_share_initial_latent_weights():
    from qcourse.lm.model import LlamaConfig
    cfg = LlamaConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=64,
                      max_seq_len=32)
    runs = {k: binary_nets.train_lm_short(k, steps=2, batch_size=2, seq_len=16, eval_tokens=64, config=cfg)
            for k in binary_nets.LM_KINDS}
    n_binary = sum(isinstance(m, nb.BinaryLinear) for m in runs["binary"]["model"].modules())
    assert n_binary > 0 and all(r["tokens"] == 64 and len(r["train_loss"]) == 2 for r in runs.values())
    # same seed, same batches: the first losses differ only by the block linears' quantization
    assert abs(runs["float"]["train_loss"][0] - runs["binary"]["train_loss"][0]) < 0.5
    with pytest.raises(ValueError, match="kind"):
        binary_nets.train_lm_short("int4", steps=1, config=cfg)
