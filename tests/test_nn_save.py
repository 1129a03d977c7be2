"""Saving and reloading quantized models (issue 9 item 3): QuantLinear's state dict and safetensors files."""

from __future__ import annotations

import io
import json
import struct

import pytest
import torch
from torch import nn

import qcourse.lm
from qcourse.lm.model import Llama, LlamaConfig
from qcourse.methods.base import QuantizedWeight
from qcourse.nn import QuantLinear, load_quantized, quantize_model, save_quantized
from qcourse.nn.serialize import saved_sizes


def layer(seed: int = 0, out: int = 24, inp: int = 64) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(inp, out)


def hessian(n: int = 64, seed: int = 1) -> torch.Tensor:
    x = torch.randn(256, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x.T @ x / 256


METHODS = [
    ("rtn", 2, {}),
    ("rtn", 4, {"symmetric": True}),
    ("hqq", 3, {}),
    ("gptq", 3, {}),
    ("gptq", 2, {"act_order": True}),
]


@pytest.mark.parametrize(("method", "bits", "options"), METHODS)
def test_quantlinear_state_dict_round_trips_bit_exactly(method, bits, options):
    lin = layer()
    q = QuantLinear.from_linear(lin, method, bits=bits, group_size=16, hessian=hessian(), **options)
    state = q.state_dict()
    assert "bias" in state and "qweight_meta" in state and any(k.startswith("qweight.") for k in state)
    assert all(isinstance(t, torch.Tensor) for t in state.values())
    # every stored tensor but the metadata is the weight's packed storage, at the size it accounts for
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if k.startswith("qweight."))
    assert stored * 8 == q.qweight.storage_bits
    # into a layer holding another weight: replaced entirely
    other = QuantLinear.from_linear(layer(seed=5), "rtn", bits=8, group_size=64)
    other.load_state_dict(state)
    assert type(other.qweight) is type(q.qweight)
    torch.testing.assert_close(other.weight, q.weight, rtol=0, atol=0)
    torch.testing.assert_close(other.bias, q.bias, rtol=0, atol=0)
    # torch.save / torch.load with weights_only=True: plain tensors, nothing to unpickle
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    again = QuantLinear.from_state_dict(torch.load(buf, weights_only=True))
    x = torch.randn(5, 64)
    torch.testing.assert_close(again(x), q(x), rtol=0, atol=0)


def test_quantlinear_state_refusals():
    q = QuantLinear.from_linear(layer(), "rtn", bits=4, group_size=16)
    small = QuantLinear.from_linear(layer(out=8), "rtn", bits=4, group_size=16)
    with pytest.raises(RuntimeError, match=r"saved weight is 24×64; this layer is 8×64"):
        small.load_state_dict(q.state_dict())
    state = q.state_dict()
    del state["qweight_meta"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"qweight_meta\""):
        small.load_state_dict(state)
    state = q.state_dict()
    state["qweight_meta"] = torch.tensor(list(b"not json"), dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="metadata is not UTF-8 JSON"):
        q.load_state_dict(state)

    class Unsaveable(QuantizedWeight):
        shape = (2, 2)

        def dequantize(self, dtype=torch.float32):
            return torch.zeros(2, 2, dtype=dtype)

        @property
        def storage_bits(self):
            return 4

    with pytest.raises(NotImplementedError, match=r"QuantLinear \(root\): its Unsaveable cannot be saved"):
        QuantLinear(Unsaveable()).state_dict()


# --------------------------------------------------------------------------------------------------------
# whole models through safetensors


def tiny_llama(tie: bool) -> Llama:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16,
                      tie_embeddings=tie)
    return Llama(cfg)


@pytest.mark.parametrize(("tie", "exclude"), [(True, ("lm_head",)), (True, None), (False, None)])
def test_tied_and_untied_heads_round_trip(tmp_path, tie, exclude):
    qmodel, _ = quantize_model(tiny_llama(tie), "rtn", bits=3, group_size=16, exclude=exclude, progress=False)
    path = tmp_path / "m.safetensors"
    size = save_quantized(qmodel, path)
    loaded = load_quantized(path, lambda: tiny_llama(tie))
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(tokens), qmodel(tokens), rtol=0, atol=0)
    assert type(loaded.lm_head) is type(qmodel.lm_head)
    sizes = saved_sizes(path)
    assert sizes["file"] == size == sizes["header"] + sizes["tensors"]
    if tie and exclude:  # embedding and head share one tensor: stored once
        assert sizes["tensors"] < 2 * 64 * 32 * 4 + sizes["quantized"] + 4 * 64 * 32 * 4
        assert loaded.lm_head.weight is loaded.embed_tokens.weight


def test_load_refuses_what_does_not_fit(tmp_path):
    qmodel, _ = quantize_model(tiny_llama(False), "rtn", bits=3, group_size=16, progress=False)
    path = tmp_path / "m.safetensors"
    save_quantized(qmodel, path)
    wider = Llama(LlamaConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16))
    fits = r"layer 'layers\.0\.[a-z_.]+' was saved as 32×\d+ linear; the model has Linear\(in_features=64"
    with pytest.raises(ValueError, match=fits):
        load_quantized(path, wider)
    shallow = Llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=16))
    with pytest.raises(ValueError, match=r"quantized layer 'layers.1.self_attn.q_proj', which Llama lacks"):
        load_quantized(path, shallow)
    with pytest.raises(TypeError, match="model must be an nn.Module .* or a function building one"):
        load_quantized(path, "llama")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_quantized(tmp_path / "missing.safetensors", tiny_llama(False))
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match="was not written by qcourse.nn.save_quantized"):
        load_quantized(plain, tiny_llama(False))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ValueError, match="is not a readable safetensors file"):
        load_quantized(tmp_path / "junk.safetensors", tiny_llama(False))


# --------------------------------------------------------------------------------------------------------
# the embedded model, as issue 9 asks: RTN 2-bit and GPTQ 3-bit, saved, reloaded, identical logits


def _float_bytes(model: nn.Module) -> int:
    """Bytes of the float tensors a quantized model keeps beside its codes (biases, norms, embeddings)."""
    seen, n = set(), 0
    for name, t in model.state_dict().items():
        if ".qweight." in f".{name}" or name.endswith("qweight_meta"):
            continue
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key not in seen:
            seen.add(key)
            n += t.numel() * t.element_size()
    return n


@pytest.mark.parametrize(("method", "bits"), [("rtn", 2), ("gptq", 3)])
def test_embedded_model_saved_and_reloaded_gives_identical_logits(tmp_path, method, bits):
    model = qcourse.lm.load()
    tokens = model.tokenizer.encode("It is a truth universally acknowledged, that a single man")
    tokens = torch.tensor([tokens[:48]])
    calib = None
    if method == "gptq":
        from qcourse.lm.corpus import calibration_tokens

        calib = calibration_tokens(model.tokenizer, n_sequences=8, seq_len=64, seed=0)
    qmodel, report = quantize_model(model, method, bits=bits, group_size=64, calib=calib, progress=False)
    path = tmp_path / "q.safetensors"
    size = save_quantized(qmodel, path)
    loaded = load_quantized(path, qcourse.lm.load())
    with torch.no_grad():
        assert torch.equal(loaded(tokens), qmodel(tokens))
    # the file is the packed codes at the reported bits per weight, the float tensors, and the header
    sizes = saved_sizes(path)
    assert sizes["quantized"] * 8 == report.storage_bits
    assert report.storage_bits == pytest.approx(report.bits_per_weight * report.numel)
    assert sizes["tensors"] == sizes["quantized"] + _float_bytes(qmodel)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    assert size == 8 + n + sizes["tensors"]
    doc = json.loads(header["__metadata__"]["qcourse"])
    assert sorted(doc["quantized"]) == sorted(r.name for r in report.layers)
