"""BitNet b1.58: quantizers, straight-through estimators, BitLinear, training hooks and TQ1_0/TQ2_0 export.

Independent checks: hand-worked quantizer examples; the ``gguf`` package's own TQ decoders (and encoders)
against ours; a GGUF written by us read back through ``load_gguf``; gradients compared with the identity's.
"""

from __future__ import annotations

import gguf
import gguf.quants
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcourse import packing
from qcourse.lm.gguf_export import (
    QK_K,
    decode_ternary,
    encode_tq1_0,
    encode_tq2_0,
    load_bitnet_gguf,
    write_gguf,
)
from qcourse.lm.model import Llama, LlamaConfig
from qcourse.lm.train import TrainConfig, lr_at, train, weight_decay_at
from qcourse.methods.bitnet import (
    absmax_int8,
    absmean_ternary,
    fake_quant_activation,
    fake_quant_weight,
    threshold_ternary,
)
from qcourse.nn.bitlinear import BitLinear, SeedArticleBitLinear, to_bitlinear

# --------------------------------------------------------------------------------------------- quantizers


def test_absmean_zero_weight_has_floor_scale_and_zero_trits():
    t, gamma = absmean_ternary(torch.zeros(3, 4))
    assert gamma.item() == pytest.approx(1e-5)
    assert t.dtype == torch.int8 and not t.any()


def test_absmean_all_equal_weights_are_exact():
    for c in (0.3, -2.0):
        t, gamma = absmean_ternary(torch.full((2, 5), c))
        assert gamma.item() == pytest.approx(abs(c))
        assert (t == (1 if c > 0 else -1)).all()


def test_absmean_huge_outlier_zeroes_the_rest():
    w = torch.full((1, 100), 0.01)
    w[0, 7] = 1000.0  # γ ≈ 10.01: every small weight rounds to 0, the outlier clips to 1
    t, gamma = absmean_ternary(w)
    assert gamma.item() == pytest.approx((99 * 0.01 + 1000) / 100)
    assert t.sum().item() == 1 and t[0, 7].item() == 1


def test_absmean_ties_round_half_to_even():
    # W/γ = ±0.5 rounds to 0 and ±1.5 to ±2, which clips to ±1
    w = torch.tensor([0.5, -0.5, 1.5, -1.5, 1.0, -1.0])  # mean|w| = 1
    assert absmean_ternary(w)[0].tolist() == [0, 0, 1, -1, 1, -1]


@given(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=2, max_size=64))
def test_threshold_form_equals_roundclip(values):
    w = torch.tensor(values, dtype=torch.float32)
    t1, g1 = absmean_ternary(w)
    t2, g2 = threshold_ternary(w)
    assert g1 == g2
    # the two agree except where W/γ rounds onto the tie 0.5 although |W| > γ/2 (a one-ulp effect)
    differ = t1 != t2
    assert torch.all((w / g1).abs()[differ] == 0.5)


def test_absmax_int8_per_token():
    x = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [-4.0, 2.0, 1.0]])
    q, s = absmax_int8(x)
    assert q.dtype == torch.int8
    assert q.tolist() == [[127, -64, 32], [0, 0, 0], [-127, 64, 32]]
    assert s.flatten().tolist()[0] == 127.0 and s.flatten().tolist()[2] == pytest.approx(127 / 4)


def test_quantizers_refuse_bad_input():
    with pytest.raises(TypeError, match="floating-point"):
        absmean_ternary(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="empty"):
        absmax_int8(torch.empty(0, 3))
    with pytest.raises(TypeError, match="torch.Tensor"):
        absmean_ternary([1.0, 2.0])


# -------------------------------------------------------------------------------- straight-through estimators


@pytest.mark.parametrize("fn", [fake_quant_weight, fake_quant_activation])
def test_ste_gradient_is_the_identity_and_value_is_exact(fn):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(8, 16, generator=g, requires_grad=True)
    upstream = torch.randn(8, 16, generator=g)
    y = fn(w)
    (y * upstream).sum().backward()
    assert torch.equal(w.grad, upstream)
    with torch.no_grad():
        if fn is fake_quant_weight:
            t, gamma = absmean_ternary(w)
            expected = t.float() * gamma
        else:
            q, s = absmax_int8(w)
            expected = q.float() / s
    assert torch.equal(y.detach(), expected)


# ------------------------------------------------------------------------------------------------ BitLinear


@pytest.mark.parametrize("shape,batch", [((16, 4), (3,)), ((64, 48), (2, 5)), ((256, 8), (1, 1))])
def test_packed_forward_equals_training_forward_exactly(shape, batch):
    torch.manual_seed(1)
    layer = BitLinear(*shape)
    x = torch.randn(*batch, shape[0])
    y_train = layer.train()(x)
    y_eval = layer.eval()(x)
    frozen = BitLinear.from_bitlinear(layer).freeze()
    assert frozen.weight is None and frozen.packed.dtype == torch.uint8
    assert frozen.packed.numel() == packing.packed_nbytes(shape[0] * shape[1], 2)
    assert torch.equal(frozen(x), y_train.detach())
    assert torch.equal(y_eval, y_train.detach())


def test_bitlinear_gradients_reach_latent_weights_and_input():
    torch.manual_seed(0)
    layer = BitLinear(32, 8)
    x = torch.randn(4, 32, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bitlinear_bad_arguments():
    with pytest.raises(ValueError, match="act_bits"):
        BitLinear(4, 4, act_bits=1)
    with pytest.raises(ValueError, match="in_features"):
        BitLinear(0, 4)
    with pytest.raises(ValueError, match="in_features=4"):
        BitLinear(4, 2)(torch.ones(3, 5))
    with pytest.raises(ValueError, match="trits"):
        BitLinear.from_trits(torch.tensor([[2, 0]]), 1.0)


def _fit(layer: torch.nn.Module, steps: int = 150) -> tuple[float, float]:
    """Train ``layer`` to reproduce a fixed ternary linear map; return (first loss, last loss)."""
    g = torch.Generator().manual_seed(123)  # not the layers' init stream
    target = torch.randint(-1, 2, (16, 32), generator=g).float()
    x = torch.randn(256, 32, generator=g)
    y = x @ target.T
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_seed_article_bitlinear_does_not_learn_but_bitlinear_does():
    torch.manual_seed(0)
    ours = BitLinear(32, 16, act_bits=8)
    first, last = _fit(ours)
    assert last < 0.2 * first  # the STE lets the trits move towards the target's
    torch.manual_seed(0)
    seed = SeedArticleBitLinear(32, 16)
    trits_before = seed.ternarize_weight()[0].clone()
    s_first, s_last = _fit(seed)
    flipped = (seed.ternarize_weight()[0] != trits_before).float().mean().item()
    assert s_last > 0.5 * s_first  # no straight-through estimator: it cannot fit the map
    assert flipped < 0.05


def test_to_bitlinear_converts_blocks_only():
    cfg = LlamaConfig(vocab_size=32, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_seq_len=8)
    model = to_bitlinear(Llama(cfg))
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.startswith("layers.") and "proj" in n}
    assert kinds == {"BitLinear"}
    assert isinstance(model.lm_head, torch.nn.Linear)
    with pytest.raises(ValueError, match="no nn.Linear"):
        to_bitlinear(torch.nn.Sequential(torch.nn.ReLU()))


# ------------------------------------------------------------------------------------------------- training


def test_two_stage_schedule():
    tc = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1, schedule="two-stage",
                     stage2_lr_ratio=0.5, weight_decay=0.1)
    plain = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(49, tc) == lr_at(49, plain) and weight_decay_at(49, tc) == 0.1
    assert lr_at(50, tc) == pytest.approx(0.5 * lr_at(50, plain)) and weight_decay_at(50, tc) == 0.0
    assert weight_decay_at(99, plain) == 0.1
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")
    with pytest.raises(ValueError, match="model"):
        TrainConfig(model="ternary")


def test_train_bitnet_ships_packed_trits_only(tmp_path):
    from safetensors.torch import load_file

    cfg = LlamaConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=32)
    tc = TrainConfig(steps=3, batch_size=2, seq_len=32, warmup_steps=1, eval_every=0, eval_tokens=256,
                     final_eval_tokens=512, model="bitnet", schedule="two-stage", threads=1)
    rec = train(cfg, tc, out=tmp_path, progress=False)
    assert rec["command"].endswith("--bitnet")
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "layers.0.mlp.up_proj.packed" in state and "layers.0.mlp.up_proj.weight" not in state
    assert state["layers.0.mlp.up_proj.packed"].dtype == torch.uint8
    # the loader recognises packed trits and rebuilds frozen BitLinear blocks with identical outputs
    from qcourse.lm.embedded import load_embedded

    back = load_embedded(path=tmp_path)
    assert isinstance(back.layers[0].mlp.up_proj, BitLinear) and back.layers[0].mlp.up_proj.frozen
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(back(tokens), rec["model"](tokens))


# ------------------------------------------------------------------------------------------ TQ1_0 / TQ2_0


@given(st.lists(st.integers(-1, 1), min_size=QK_K, max_size=QK_K), st.integers(1, 3),
       st.floats(0.0009765625, 8.0, width=16))
def test_ternary_blocks_match_the_gguf_package(trits, n_blocks, d):
    t = torch.tensor(trits * n_blocks, dtype=torch.int8)
    t[:QK_K] = 0 if n_blocks > 1 else t[:QK_K]  # an all-zero block when there are several
    for name, enc in (("TQ1_0", encode_tq1_0), ("TQ2_0", encode_tq2_0)):
        qtype = gguf.GGMLQuantizationType[name]
        data = np.frombuffer(enc(t, d), dtype=np.uint8)
        theirs = gguf.quants.dequantize(data, qtype).reshape(-1)
        expected = t.numpy().astype(np.float32) * np.float32(np.float16(d))
        np.testing.assert_array_equal(theirs, expected)
        np.testing.assert_array_equal(decode_ternary(data, name).reshape(-1), expected)
        # the package's own encoder, given our weights, writes the same bytes
        np.testing.assert_array_equal(gguf.quants.quantize(expected.reshape(1, -1), qtype).reshape(-1), data)


def test_ternary_encoders_refuse_bad_input():
    with pytest.raises(ValueError, match="multiple of 256"):
        encode_tq2_0(torch.zeros(100, dtype=torch.int8), 1.0)
    with pytest.raises(ValueError, match="trits"):
        encode_tq1_0(torch.full((256,), 2, dtype=torch.int8), 1.0)
    with pytest.raises(TypeError, match="integer"):
        encode_tq1_0(torch.zeros(256), 1.0)
    with pytest.raises(ValueError, match="qtype"):
        decode_ternary(b"", "Q4_0")


@pytest.mark.parametrize("ternary_type,bpw", [("TQ1_0", 1.6875), ("TQ2_0", 2.0625)])
def test_bitnet_gguf_round_trip(tmp_path, ternary_type, bpw, tiny_bitnet):
    model = tiny_bitnet  # scales already rounded to fp16: what a GGUF can hold
    out = tmp_path / "tiny.gguf"
    info = write_gguf(model, out, ternary_type)
    assert info["ternary_bits_per_weight"] == bpw
    n_ternary = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, BitLinear))
    assert info["bytes"] > n_ternary * bpw / 8
    back = load_bitnet_gguf(out)
    tokens = torch.randint(0, 256, (2, 16))
    with torch.no_grad():
        assert torch.equal(back(tokens), model(tokens))
