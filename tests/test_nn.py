"""Tests of qcourse.nn: QuantLinear, calibration hooks and quantize_model, on models the tests define."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import qcourse.methods
from qcourse.lm.model import Llama, LlamaConfig
from qcourse.methods.base import Method, QuantizedWeight
from qcourse.nn import (
    QuantLinear,
    QuantReport,
    check_calibration,
    collect_hessians,
    linear_layers,
    quantize_model,
)

# --------------------------------------------------------------------------------------------------------
# test-local methods (independent of the package's methods, so these tests pin down qcourse.nn alone)


class _Dense(QuantizedWeight):
    """Holds the decoded weight and a declared storage size."""

    def __init__(self, w_hat: torch.Tensor, storage: int) -> None:
        self.shape = tuple(w_hat.shape)
        self.w_hat = w_hat
        self._storage = storage

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.w_hat.to(dtype)

    @property
    def storage_bits(self) -> int:
        return self._storage


def toy_rtn(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Symmetric absmax round-to-nearest per group, written plainly."""
    out, n = w.shape
    g = n if group_size is None else group_size
    wg = w.reshape(out, n // g, g)
    qmax = 2 ** (bits - 1) - 1
    scale = wg.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    return (torch.round(wg / scale).clamp(-qmax - 1, qmax) * scale).reshape(out, n)


class ToyRTN(Method):
    def quantize(self, w, bits, group_size=None, hessian=None, seed=0, **options):
        self.check_args(w, bits, group_size)
        g = w.shape[1] if group_size is None else group_size
        storage = w.numel() * bits + 16 * w.shape[0] * (w.shape[1] // g)
        return _Dense(toy_rtn(w, bits, group_size), storage)


class Spy(Method):
    """Needs a Hessian; records every H it gets; quantizes with toy RTN (or exactly when bits == 32)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.seen: list[torch.Tensor] = []
        self.options: list[dict] = []

    def quantize(self, w, bits, group_size=None, hessian=None, seed=0, **options):
        self.check_args(w, bits, group_size)
        if hessian is None:
            raise ValueError("spy needs hessian")
        self.seen.append(hessian.clone())
        self.options.append(dict(options, seed=seed))
        w_hat = w.clone() if bits == 32 else toy_rtn(w, bits, group_size)
        return _Dense(w_hat, w.numel() * int(bits))


def toy() -> ToyRTN:
    return ToyRTN(name="toy-rtn", supported_bits=(2, 3, 4, 8))


def spy() -> Spy:
    return Spy(name="spy", supported_bits=(2, 3, 4, 8, 32), needs_hessian=True)


METHODS = {"toy-rtn": toy()}


@pytest.fixture
def registered(monkeypatch):
    """Make "toy-rtn" resolvable by name through qcourse.methods.get."""
    monkeypatch.setitem(qcourse.methods._MODULES, "toy-rtn", __name__)


# --------------------------------------------------------------------------------------------------------
# models


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.tanh(self.fc1(x)))))


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 16)
        self.out = nn.Linear(16, 10)

    def forward(self, x):
        return self.out(F.relu(self.fc(F.relu(self.conv(x)).flatten(1))))


def mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP()


def llama(seed: int = 0, tie: bool = False, n_layers: int = 2) -> Llama:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        d_model=32,
        n_layers=n_layers,
        n_heads=4,
        n_kv_heads=2,
        d_ff=64,
        max_seq_len=16,
        tie_embeddings=tie,
    )
    model = Llama(cfg)
    # trained-looking weights are not Gaussian around 0.02: spread them so quantization error is visible
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(5)
    return model


def tokens(n: int = 6, t: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 64, (n, t), generator=g)


# --------------------------------------------------------------------------------------------------------
# QuantLinear


def test_quantlinear_forward_matches_decoded_weight():
    lin = nn.Linear(16, 8)
    q = QuantLinear.from_linear(lin, toy(), bits=4, group_size=8)
    x = torch.randn(3, 5, 16)
    w_hat = toy_rtn(lin.weight.detach(), 4, 8)
    torch.testing.assert_close(q(x), F.linear(x, w_hat, lin.bias))
    assert q.in_features == 16 and q.out_features == 8
    assert q.bits_per_weight == pytest.approx(4 + 16 / 8)
    assert "bits_per_weight=6" in repr(q) and "in_features=16" in repr(q)


def test_quantlinear_cache_trade_off():
    lin = nn.Linear(16, 8, bias=False)
    cached = QuantLinear.from_linear(lin, toy(), bits=4, group_size=8)
    fresh = QuantLinear.from_linear(lin, toy(), bits=4, group_size=8, cache=False)
    x = torch.randn(4, 16)
    assert cached._cached is None
    torch.testing.assert_close(cached(x), fresh(x), rtol=0, atol=0)
    assert cached._cached is not None and fresh._cached is None
    # a float64 input gets a float64 weight (the cache follows dtype rather than silently casting the input)
    assert cached(x.double()).dtype == torch.float64
    cached.clear_cache()
    assert cached._cached is None


def test_quantlinear_gradients_reach_input_and_bias_not_codes():
    lin = nn.Linear(8, 4)
    q = QuantLinear.from_linear(lin, toy(), bits=8, group_size=None)
    x = torch.randn(2, 8, requires_grad=True)
    q(x).pow(2).sum().backward()
    assert x.grad is not None and q.bias.grad is not None
    assert not q.qweight.w_hat.requires_grad
    assert [n for n, _ in q.named_parameters()] == ["bias"]


def test_quantlinear_rejects_bad_arguments():
    lin = nn.Linear(8, 4)
    with pytest.raises(TypeError, match="qweight must be"):
        QuantLinear(lin.weight)
    qw = toy().quantize(lin.weight.detach(), 4, 4)
    with pytest.raises(ValueError, match=r"bias must be a tensor of shape \(4,\)"):
        QuantLinear(qw, bias=torch.zeros(5))
    with pytest.raises(ValueError, match="in_features=8"):
        QuantLinear(qw)(torch.randn(2, 7))
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        QuantLinear.from_linear(nn.Conv1d(1, 1, 1), toy(), 4)
    with pytest.raises(TypeError, match="method"):
        QuantLinear.from_linear(lin, 4, 4)


# --------------------------------------------------------------------------------------------------------
# layer selection


def test_linear_layers_globs_and_prefixes():
    model = llama()
    every = linear_layers(model)
    assert len(every) == 2 * 7 + 1
    assert list(linear_layers(model, include="layers.1.mlp")) == [
        "layers.1.mlp.gate_proj",
        "layers.1.mlp.up_proj",
        "layers.1.mlp.down_proj",
    ]
    assert set(linear_layers(model, include="*.self_attn.*", exclude=("*.o_proj",))) == {
        f"layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkv"
    }
    assert "lm_head" not in linear_layers(model, exclude="lm_head")
    with pytest.raises(ValueError, match="include pattern 'layer.*' matches no nn.Linear"):
        linear_layers(model, include=("layers.*", "layer.*"))
    with pytest.raises(ValueError, match="leave no nn.Linear"):
        linear_layers(model, include="lm_head", exclude="lm_head")
    with pytest.raises(TypeError, match="include must hold non-empty glob strings"):
        linear_layers(model, include=[3])


# --------------------------------------------------------------------------------------------------------
# collect_hessians


def test_hessians_of_mlp_match_explicit_computation():
    model = mlp()
    x = torch.randn(10, 32)
    H = collect_hessians(model, x, batch_size=3)
    with torch.no_grad():
        inputs = {"fc1": x, "fc2": torch.tanh(model.fc1(x))}
        inputs["head"] = torch.relu(model.fc2(inputs["fc2"]))
    for name, inp in inputs.items():
        inp = inp.double()
        # fc1's input is x itself (exact in float64); later inputs differ by float32 batching noise only
        tol = 1e-12 if name == "fc1" else 1e-5
        torch.testing.assert_close(H[name], inp.T @ inp / inp.shape[0], rtol=tol, atol=tol)
        assert H[name].dtype == torch.float64


def test_hessians_of_llama_flatten_batch_and_sequence():
    model = llama()
    toks = tokens(5, 12)
    H = collect_hessians(model, toks, include=("layers.0.self_attn.q_proj", "lm_head"), batch_size=2)
    with torch.no_grad():
        x0 = model.layers[0].input_layernorm(model.embed_tokens(toks)).reshape(-1, 32).double()
        h = model.embed_tokens(toks)
        cos, sin = model.rope_cos[:12], model.rope_sin[:12]
        for block in model.layers:
            h = block(h, cos, sin)
        xh = model.norm(h).reshape(-1, 32).double()
    torch.testing.assert_close(H["layers.0.self_attn.q_proj"], x0.T @ x0 / 60, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(H["lm_head"], xh.T @ xh / 60, rtol=1e-6, atol=1e-9)


def test_hessians_leave_model_as_found():
    model = mlp()
    model.train()
    collect_hessians(model, torch.randn(4, 32))
    assert model.training
    assert all(not m._forward_pre_hooks for m in model.modules())


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 9), batch_size=st.integers(1, 10), seed=st.integers(0, 2**16))
def test_hessians_do_not_depend_on_batching(n, batch_size, seed):
    torch.manual_seed(seed)
    model = MLP()
    x = torch.randn(n, 32)
    a = collect_hessians(model, x, batch_size=batch_size)
    b = collect_hessians(model, x, batch_size=n)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)  # float32 forward noise only
        torch.testing.assert_close(a[name], a[name].T, rtol=0, atol=0)  # symmetric by construction
        assert torch.linalg.eigvalsh(a[name]).min() > -1e-10  # positive semi-definite


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (torch.zeros(2, 8), TypeError, "integer token ids"),
        (torch.zeros(2, 8, dtype=torch.bool), TypeError, "integer token ids"),
        (torch.zeros(8, dtype=torch.long), ValueError, r"\[n_sequences, seq_len\]"),
        (torch.zeros(2, 3, 4, dtype=torch.long), ValueError, r"\[n_sequences, seq_len\]"),
        (torch.zeros(0, 8, dtype=torch.long), ValueError, "must not be empty"),
        (torch.full((2, 8), 64), ValueError, r"\[0, 64\)"),
        (torch.full((2, 8), -1), ValueError, r"\[0, 64\)"),
        (torch.zeros(2, 17, dtype=torch.long), ValueError, "max_seq_len is 16"),
        ([[1, 2]], TypeError, "calib must be a torch.Tensor"),
    ],
)
def test_calibration_data_is_validated(data, error, match):
    with pytest.raises(error, match=match):
        collect_hessians(llama(), data)
    with pytest.raises(error, match=match):
        quantize_model(llama(), spy(), 4, group_size=16, calib=data, progress=False)


def test_calibration_for_float_models_is_validated():
    with pytest.raises(TypeError, match="floating-point input batch"):
        check_calibration(mlp(), torch.zeros(4, 32, dtype=torch.long))
    with pytest.raises(ValueError, match="batched along dimension 0"):
        check_calibration(mlp(), torch.zeros(32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_calibration(mlp(), torch.full((2, 32), math.nan))
    assert check_calibration(llama(), tokens().int()).dtype == torch.long


def test_layer_never_called_is_named():
    class WithMHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            return self.fc(self.attn(x, x, x, need_weights=False)[0])

    with pytest.raises(ValueError, match=r"\['attn.out_proj'\] were never called"):
        collect_hessians(WithMHA(), torch.randn(3, 4, 8))
    assert set(collect_hessians(WithMHA(), torch.randn(3, 4, 8), exclude="attn")) == {"fc"}


# --------------------------------------------------------------------------------------------------------
# quantize_model on arbitrary models


def test_quantize_mlp_outputs_report_and_original_untouched(registered):
    model = mlp()
    x = torch.randn(7, 32)
    before = model(x).detach()
    qmodel, report = quantize_model(model, "toy-rtn", bits=8, group_size=16, exclude=None, progress=False)
    assert all(isinstance(getattr(model, n), nn.Linear) for n in ("fc1", "fc2", "head"))
    assert all(isinstance(getattr(qmodel, n), QuantLinear) for n in ("fc1", "fc2", "head"))
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    out = qmodel(x)
    assert (out - before).abs().max() < 0.02 * before.abs().max()
    assert not torch.equal(out, before)
    assert isinstance(report, QuantReport) and report.method == "toy-rtn" and not report.sequential
    assert [r.name for r in report.layers] == ["fc1", "fc2", "head"]
    assert report["fc2"].shape == (32, 64)
    for r, lin in zip(report.layers, (model.fc1, model.fc2, model.head), strict=True):
        w = lin.weight.detach().double()
        expected = (w - toy_rtn(lin.weight.detach(), 8, 16).double()).pow(2).sum() / w.pow(2).sum()
        assert r.rel_error == pytest.approx(float(expected), rel=1e-6)
        assert r.bits_per_weight == pytest.approx(8 + 16 / 16) and r.proxy_loss is None and r.seconds >= 0
    # biases are kept exactly, in float
    torch.testing.assert_close(qmodel.fc1.bias, model.fc1.bias, rtol=0, atol=0)


def test_report_totals_are_size_weighted():
    model = mlp()
    # per-channel storage differs per layer: 16 bits per row on top of 4 bits per weight
    _, report = quantize_model(model, toy(), bits=4, group_size=None, exclude=None, progress=False)
    numel = 32 * 64 + 64 * 32 + 5 * 32
    bits = 4 * numel + 16 * (64 + 32 + 5)
    assert report.numel == numel and report.storage_bits == bits
    assert report.bits_per_weight == pytest.approx(bits / numel)
    assert report.bits_per_weight != pytest.approx(sum(r.bits_per_weight for r in report.layers) / 3)
    num = sum(r.rel_error * r.weight_sq for r in report.layers)
    assert report.rel_error == pytest.approx(num / sum(r.weight_sq for r in report.layers))
    text = str(report)
    assert "toy-rtn · 4 bits · per-channel · 3 layers" in text and "fc2" in text and "32×64" in text
    rows = report.to_rows()
    assert set(rows[0]) >= {"name", "shape", "bits_per_weight", "rel_error", "proxy_loss", "seconds"}
    assert rows[1]["shape"] == [32, 64]
    assert report.summary()["layers"] == 3


def test_quantize_inplace_returns_the_same_model():
    model = mlp()
    qmodel, _ = quantize_model(model, toy(), bits=4, group_size=16, inplace=True, progress=False)
    assert qmodel is model and isinstance(model.fc1, QuantLinear)
    assert isinstance(model.head, nn.Linear) is False  # "lm_head" default exclusion does not match "head"


def test_convnet_linears_only_and_calibrated_proxy():
    torch.manual_seed(0)
    model = ConvNet()
    images = torch.randn(6, 3, 8, 8)
    qmodel, report = quantize_model(model, toy(), bits=4, group_size=16, calib=images, progress=False)
    assert isinstance(qmodel.conv, nn.Conv2d) and isinstance(qmodel.fc, QuantLinear)
    assert [r.name for r in report.layers] == ["fc", "out"]
    # the proxy loss is the relative output error on the calibration inputs: check it directly for "fc"
    with torch.no_grad():
        x = F.relu(model.conv(images)).flatten(1)
        exact, approx = model.fc(x), qmodel.fc(x)
    expected = ((exact - approx).double().pow(2).sum() / (exact - model.fc.bias).double().pow(2).sum()).item()
    assert report["fc"].proxy_loss == pytest.approx(expected, rel=1e-4)


def test_quantize_model_is_deterministic():
    model = llama()
    a, _ = quantize_model(model, toy(), bits=3, group_size=16, progress=False)
    b, _ = quantize_model(model, toy(), bits=3, group_size=16, progress=False)
    toks = tokens(2, 8)
    torch.testing.assert_close(a(toks), b(toks), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------
# refusals


def test_unknown_method_lists_choices():
    with pytest.raises(ValueError, match=r"method must be one of \[.*'rtn'.*\]; got 'rnt'"):
        quantize_model(mlp(), "rnt", bits=4, progress=False)


def test_unsupported_bits_name_the_method():
    with pytest.raises(ValueError, match=r"bits must be one of \[2, 3, 4, 8\] for .*toy-rtn.*; got 5"):
        quantize_model(mlp(), toy(), bits=5, progress=False)


def test_group_size_that_does_not_divide_names_the_layer():
    with pytest.raises(ValueError, match=r"layer 'head' \(in_features=32\): group_size=64 does not divide"):
        quantize_model(mlp(), toy(), bits=4, group_size=64, include=("fc2", "head"), progress=False)
    with pytest.raises(ValueError, match="group_size must be a positive int"):
        quantize_model(mlp(), toy(), bits=4, group_size=0, progress=False)


def test_method_errors_name_the_layer():
    class Picky(ToyRTN):
        def quantize(self, w, bits, group_size=None, hessian=None, seed=0, **options):
            if w.shape[0] < 8:
                raise ValueError("needs at least 8 output rows")
            return super().quantize(w, bits, group_size, hessian, seed)

    picky = Picky(name="picky", supported_bits=(4,))
    with pytest.raises(ValueError, match=r"layer 'head' \(5×32\): needs at least 8 output rows"):
        quantize_model(mlp(), picky, bits=4, group_size=16, exclude=None, progress=False)


def test_calibration_aware_method_needs_calib():
    with pytest.raises(ValueError, match="method 'spy' needs calibration data"):
        quantize_model(llama(), spy(), bits=4, group_size=16, progress=False)


def test_include_matching_nothing_and_bad_flags():
    with pytest.raises(ValueError, match="include pattern 'mlp' matches no nn.Linear"):
        quantize_model(llama(), toy(), bits=4, group_size=16, include="mlp", progress=False)
    with pytest.raises(ValueError, match="sequential=True needs a model offering qcourse.nn.BlockwiseModel"):
        quantize_model(
            mlp(), spy(), bits=4, group_size=16, calib=torch.randn(2, 32), sequential=True, progress=False
        )
    with pytest.raises(TypeError, match="inplace must be True or False"):
        quantize_model(mlp(), toy(), bits=4, group_size=16, inplace="yes", progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        quantize_model("model", toy(), bits=4, group_size=16, progress=False)


# --------------------------------------------------------------------------------------------------------
# sequential (block-by-block) calibration on Llama models


def test_sequential_equals_one_pass_when_quantization_is_exact():
    model, toks = llama(), tokens()
    seq, one = spy(), spy()
    _, r1 = quantize_model(model, seq, bits=32, group_size=16, calib=toks, batch_size=4, progress=False)
    _, r2 = quantize_model(model, one, bits=32, group_size=16, calib=toks, sequential=False, progress=False)
    assert r1.sequential and not r2.sequential
    assert len(seq.seen) == len(one.seen) == 14
    for a, b in zip(seq.seen, one.seen, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    explicit = collect_hessians(model, toks, exclude="lm_head")
    for a, name in zip(seq.seen, explicit, strict=True):
        torch.testing.assert_close(a, explicit[name], rtol=1e-6, atol=1e-9)


def test_sequential_calibrates_each_block_on_quantized_predecessors():
    model, toks = llama(), tokens()
    seq, one = spy(), spy()
    qmodel, report = quantize_model(model, seq, bits=2, group_size=16, calib=toks, progress=False)
    quantize_model(model, one, bits=2, group_size=16, calib=toks, sequential=False, progress=False)
    names = [r.name for r in report.layers]
    # block 0 sees the same embeddings either way
    for i, name in enumerate(names):
        if name.startswith("layers.0."):
            torch.testing.assert_close(seq.seen[i], one.seen[i], rtol=1e-6, atol=1e-9)
    # block 1's H is that of a model whose block 0 (only) is quantized: build that model and measure it
    first, _ = quantize_model(model, toy(), bits=2, group_size=16, include="layers.0", progress=False)
    expected = collect_hessians(first, toks, include="layers.1")
    block1 = [i for i, n in enumerate(names) if n.startswith("layers.1.")]
    for i in block1:
        torch.testing.assert_close(seq.seen[i], expected[names[i]], rtol=1e-6, atol=1e-9)
        assert not torch.allclose(seq.seen[i], one.seen[i], rtol=1e-3, atol=1e-6)
    # and the proxy loss reported is the relative output error of that layer on its calibration inputs
    assert all(0 < r.proxy_loss < 1 for r in report.layers)
    assert report.calibration_seconds > 0


def test_sequential_options_and_seed_reach_the_method():
    model, toks = llama(n_layers=1), tokens(2, 8)
    s = spy()
    quantize_model(model, s, bits=4, group_size=16, calib=toks, seed=7, damp=0.05, progress=False)
    assert s.options and all(o == {"damp": 0.05, "seed": 7} for o in s.options)


def test_tied_head_included_is_quantized_and_noted():
    model, toks = llama(tie=True), tokens()
    assert model.lm_head.weight is model.embed_tokens.weight
    s = spy()
    qmodel, report = quantize_model(model, s, bits=4, group_size=16, calib=toks, exclude=None, progress=False)
    assert isinstance(qmodel.lm_head, QuantLinear)
    assert "embed_tokens.weight" in report["lm_head"].note and "float" in report["lm_head"].note
    torch.testing.assert_close(qmodel.embed_tokens.weight, model.embed_tokens.weight, rtol=0, atol=0)
    assert torch.isfinite(qmodel(toks)).all()
    # lm_head's H was collected sequentially from the quantized blocks' final states
    partial, _ = quantize_model(model, toy(), bits=4, group_size=16, progress=False)
    expected = collect_hessians(partial, toks, include="lm_head")["lm_head"]
    torch.testing.assert_close(s.seen[-1], expected, rtol=1e-6, atol=1e-9)
    assert "tied to embed_tokens.weight" in str(report)


def test_tokenizer_is_shared_not_copied():
    model = llama()
    model.tokenizer = object()
    qmodel, _ = quantize_model(model, toy(), bits=4, group_size=16, progress=False)
    assert qmodel.tokenizer is model.tokenizer


def test_shared_input_product_is_reused_only_while_the_input_is_unchanged():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            x = x.clone()
            y = self.a(x) + self.b(x)  # same tensor twice: one Gram product serves both
            x.mul_(2)  # modified in place: c must see the new values
            return y + self.c(x)

    x = torch.randn(5, 3, 8)
    H = collect_hessians(Shared(), x, batch_size=2)
    flat = x.reshape(-1, 8).double()
    expected = flat.T @ flat / 15
    torch.testing.assert_close(H["a"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(H["b"], expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(H["c"], 4 * expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------------
# with the package's own round-to-nearest


def test_package_rtn_on_an_mlp_with_biases():
    rtn = qcourse.methods.get("rtn")
    model = mlp()
    qmodel, report = quantize_model(model, "rtn", bits=4, group_size=16, exclude=None, progress=False)
    for name in ("fc1", "fc2", "head"):
        lin = getattr(model, name)
        expected = rtn.quantize(lin.weight.detach(), bits=4, group_size=16).dequantize()
        torch.testing.assert_close(getattr(qmodel, name).weight, expected, rtol=0, atol=0)
    # asymmetric 4-bit, group 16: codes + fp16 scale + 4-bit zero per group
    assert report.bits_per_weight == pytest.approx(4 + 16 / 16 + 4 / 16)
    x = torch.randn(16, 32)
    rel = (qmodel(x) - model(x)).pow(2).sum() / model(x).pow(2).sum()
    assert 0 < rel < 0.01


def test_package_rtn_on_llama_degrades_with_fewer_bits():
    model, toks = llama(), tokens()
    errors = {}
    for bits in (2, 3, 4, 8):
        _, report = quantize_model(model, "rtn", bits=bits, group_size=16, calib=toks, progress=False)
        assert report.sequential and all(r.proxy_loss is not None for r in report.layers)
        errors[bits] = report.rel_error
    assert errors[2] > errors[3] > errors[4] > errors[8] > 0


def test_true_sequential_calibrates_each_stage_on_quantized_earlier_stages():
    model, toks = llama(n_layers=1), tokens()
    s, plain = spy(), spy()
    _, report = quantize_model(
        model, s, bits=2, group_size=16, calib=toks, true_sequential=True, progress=False
    )
    quantize_model(model, plain, bits=2, group_size=16, calib=toks, progress=False)
    names = [r.name for r in report.layers]
    assert report.options == {"true_sequential": True}
    seen, seen_plain = dict(zip(names, s.seen, strict=True)), dict(zip(names, plain.seen, strict=True))
    float_h = collect_hessians(model, toks)
    # o_proj sees the outputs of quantized q/k/v; down_proj those of quantized q/k/v/o/gate/up
    qkv, _ = quantize_model(
        model, toy(), bits=2, group_size=16, include="layers.0.self_attn.[qkv]_proj", progress=False
    )
    expected_o = collect_hessians(qkv, toks, include="layers.0.self_attn.o_proj")
    torch.testing.assert_close(
        seen["layers.0.self_attn.o_proj"], expected_o["layers.0.self_attn.o_proj"], rtol=1e-6, atol=1e-9
    )
    rest, _ = quantize_model(
        model, toy(), bits=2, group_size=16, exclude=("lm_head", "*.down_proj"), progress=False
    )
    expected_d = collect_hessians(rest, toks, include="*.down_proj")
    torch.testing.assert_close(
        seen["layers.0.mlp.down_proj"], expected_d["layers.0.mlp.down_proj"], rtol=1e-6, atol=1e-9
    )
    # without it, every layer of the (first) block is calibrated on the float block
    for name in names:
        torch.testing.assert_close(seen_plain[name], float_h[name], rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="true_sequential=True needs block-by-block calibration"):
        quantize_model(model, toy(), bits=2, group_size=16, true_sequential=True, progress=False)


_LLAMA = llama()


@settings(max_examples=12, deadline=None)
@given(
    pattern=st.sampled_from(["layers.0", "*.mlp.*", "*_proj", "layers.1.self_attn.[qk]_proj", "lm_head", "*"])
)
def test_include_and_exclude_of_one_pattern_partition_the_linears(pattern):
    model = _LLAMA
    every = linear_layers(model)
    inc = set(linear_layers(model, include=pattern))
    try:
        exc = set(linear_layers(model, exclude=pattern))
    except ValueError:  # the pattern selects everything: excluding it leaves nothing, which is refused
        exc = set()
        assert inc == set(every)
    assert inc | exc == set(every) and not inc & exc


def test_package_gptq_beats_rtn_proxy_loss_on_every_layer_with_the_same_hessians():
    model, toks = llama(), tokens(8, 16)
    kw = dict(bits=3, group_size=16, calib=toks, sequential=False, progress=False)
    _, gptq = quantize_model(model, "gptq", **kw)
    _, rtn = quantize_model(model, "rtn", **kw)
    for g, r in zip(gptq.layers, rtn.layers, strict=True):
        assert g.name == r.name and g.proxy_loss < r.proxy_loss
    # sequential mode runs the same method end to end and reports a calibration pass
    qmodel, seq = quantize_model(model, "gptq", bits=3, group_size=16, calib=toks, progress=False)
    assert seq.sequential and seq.calibration_seconds > 0 and torch.isfinite(qmodel(toks)).all()


def test_float32_gram_products_agree_with_float64():
    model, toks = llama(), tokens()
    exact = collect_hessians(model, toks)
    fast = collect_hessians(model, toks, gram_dtype=torch.float32)
    for name in exact:
        assert fast[name].dtype == torch.float64  # the running sum is float64 either way
        scale = exact[name].abs().max()
        assert (fast[name] - exact[name]).abs().max() <= 1e-5 * scale
    _, r64 = quantize_model(model, toy(), bits=4, group_size=16, calib=toks, progress=False)
    _, r32 = quantize_model(
        model, toy(), bits=4, group_size=16, calib=toks, gram_dtype=torch.float32, progress=False
    )
    for a, b in zip(r64.layers, r32.layers, strict=True):
        assert a.proxy_loss == pytest.approx(b.proxy_loss, rel=1e-4)
    with pytest.raises(ValueError, match="gram_dtype must be torch.float64 or torch.float32"):
        collect_hessians(model, toks, gram_dtype=torch.float16)
    with pytest.raises(ValueError, match="gram_dtype must be"):
        quantize_model(model, toy(), bits=4, group_size=16, gram_dtype="float32", progress=False)


def test_hessians_under_inference_mode():
    model, x = mlp(), torch.randn(6, 32)
    with torch.inference_mode():
        H = collect_hessians(model, x)
    torch.testing.assert_close(H["fc1"], x.double().T @ x.double() / 6, rtol=1e-12, atol=1e-12)


def test_package_method_refusals_name_the_layer():
    with pytest.raises(ValueError, match=r"layer 'fc1' \(64×32\): unknown option"):
        quantize_model(
            mlp(), "gptq", bits=4, group_size=16, calib=torch.randn(4, 32), progress=False, bogus=1
        )
