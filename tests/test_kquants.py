"""llama.cpp Q4_0 / Q2_K: our encoders against the gguf package and llama.cpp's reference; GPTQ in the format;
GGUF files with k-quant linears; bits per byte."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import kquants as K
from qcourse.ldlq import proxy_loss
from qcourse.lm import toy_model
from qcourse.lm.evaluate import bits_per_byte, nll, text_bytes
from qcourse.lm.gguf import load_gguf
from qcourse.lm.gguf_export import apply_kquant, kquant_tensors, write_gguf


def _gguf_decode(data: bytes, qtype: str, rows: int) -> np.ndarray:
    return dequantize(np.frombuffer(data, np.uint8).reshape(rows, -1), gguf.GGMLQuantizationType[qtype])


def _weights(seed: int, rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    w[0, :32] = 0                       # an all-zero block (and zero sub-blocks of Q2_K)
    w[1, :32] = 0.125                   # a constant block
    w[min(2, rows - 1), 40] = 3.0       # one huge outlier
    w[min(3, rows - 1), 300 % cols] = -2.5
    return w


# ------------------------------------------------------------------------------ llama.cpp's C, by loop

def _nearest_int(v: np.float32) -> int:
    return int(np.rint(np.float32(v)))


def _c_make_qkx2(x, weights, nmax=3, rmin=-0.5, rdelta=0.1, nstep=15):
    """make_qkx2_quants, statement by statement in float32 scalars (use_mad = true)."""
    f = np.float32
    n = len(x)
    mn, mx = x[0], x[0]
    sum_w = weights[0]
    sum_x = f(sum_w * x[0])
    for i in range(1, n):
        mn = min(mn, x[i])
        mx = max(mx, x[i])
        sum_w = f(sum_w + weights[i])
        sum_x = f(sum_x + f(weights[i] * x[i]))
    mn = min(mn, f(0))
    if mx == mn:
        return f(0), f(-mn), [0] * n
    iscale = f(f(nmax) / f(mx - mn))
    scale = f(f(1) / iscale)
    L = [max(0, min(nmax, _nearest_int(f(iscale * f(x[i] - mn))))) for i in range(n)]
    best = f(0)
    for i in range(n):
        best = f(best + f(weights[i] * abs(f(f(scale * L[i]) + mn) - x[i])))
    for s in range(nstep + 1):
        isc = f(f(f(f(rmin) + f(f(rdelta) * s)) + nmax) / f(mx - mn))
        La = [max(0, min(nmax, _nearest_int(f(isc * f(x[i] - mn))))) for i in range(n)]
        sl = sl2 = sxl = f(0)
        for i in range(n):
            w = weights[i]
            sl = f(sl + f(w * La[i]))
            sl2 = f(sl2 + f(f(w * La[i]) * La[i]))
            sxl = f(sxl + f(f(w * La[i]) * x[i]))
        D = f(f(sum_w * sl2) - f(sl * sl))
        if D > 0:
            this_scale = f(f(f(sum_w * sxl) - f(sum_x * sl)) / D)
            this_min = f(f(f(sl2 * sum_x) - f(sl * sxl)) / D)
            if this_min > 0:
                this_min = f(0)
                this_scale = f(sxl / sl2)
            mad = f(0)
            for i in range(n):
                mad = f(mad + f(weights[i] * abs(f(f(this_scale * La[i]) + this_min) - x[i])))
            if mad < best:
                L, best, scale, mn = La, mad, this_scale, this_min
    return scale, f(-mn), L


def _c_q2_k_block(x: np.ndarray) -> bytes:
    """quantize_row_q2_K_ref for one super-block of 256, by loops."""
    f = np.float32
    scales, mins, L = [], [], []
    for j in range(16):
        sub = x[16 * j:16 * j + 16]
        s, m, Lj = _c_make_qkx2(sub, np.abs(sub))
        scales.append(s)
        mins.append(m)
        L.extend(Lj)
    max_scale, max_min = max(max(scales), f(0)), max(max(mins), f(0))
    sc = [0] * 16
    if max_scale > 0:
        iscale = f(f(15) / max_scale)
        sc = [_nearest_int(f(iscale * s)) for s in scales]
        d = np.float16(f(max_scale / f(15)))
    else:
        d = np.float16(0)
    if max_min > 0:
        iscale = f(f(15) / max_min)
        sc = [sc[j] | (_nearest_int(f(iscale * mins[j])) << 4) for j in range(16)]
        dmin = np.float16(f(max_min / f(15)))
    else:
        dmin = np.float16(0)
    for j in range(16):
        dl = f(f(d) * (sc[j] & 15))
        if dl == 0:
            continue
        dm = f(f(dmin) * (sc[j] >> 4))
        for ii in range(16):
            L[16 * j + ii] = max(0, min(3, _nearest_int(f(f(x[16 * j + ii] + dm) / dl))))
    qs = [L[j + i] | (L[j + i + 32] << 2) | (L[j + i + 64] << 4) | (L[j + i + 96] << 6)
          for j in (0, 128) for i in range(32)]
    return bytes(sc) + bytes(qs) + np.array([d, dmin], np.float16).tobytes()


# ------------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("qtype", ["Q4_0", "Q2_K"])
def test_gguf_dequantizer_returns_exactly_our_weights(qtype):
    w = _weights(0, 6, 512)
    data, deq = K.encode(w, qtype)
    assert len(data) == 6 * 512 // K.KQUANT_TYPES[qtype][0] * K.KQUANT_TYPES[qtype][1]
    assert np.array_equal(_gguf_decode(data, qtype, 6), deq)
    assert np.array_equal(K.decode(data, qtype, w.shape), deq)
    # a sane quantizer: error well below the weights' spread (Q4_0 finer than Q2_K)
    err = float(np.abs(deq - w)[4:].mean())
    assert err < (0.006 if qtype == "Q4_0" else 0.02)


def test_q4_0_bytes_equal_the_gguf_package_encoder():
    w = _weights(1, 8, 256)
    w[5, :32] = -np.linspace(0, 1, 32)      # the negative extreme maps to code 0 (d = max / -8)
    data, _ = K.encode(w, "Q4_0")
    assert data == quantize(w, gguf.GGMLQuantizationType.Q4_0).tobytes()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1e-4, 1.0, 300.0]))
def test_q4_0_property_matches_package(seed, scale):
    w = (np.random.default_rng(seed).standard_normal((2, 64)) * scale).astype(np.float32)
    data, deq = K.encode(w, "Q4_0")
    assert data == quantize(w, gguf.GGMLQuantizationType.Q4_0).tobytes()
    assert np.array_equal(_gguf_decode(data, "Q4_0", 2), deq)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1e-3, 1.0, 1000.0]), st.booleans())
def test_q2_k_property_decodes_exactly_and_stays_on_its_grid(seed, scale, positive):
    w = (np.random.default_rng(seed).standard_normal((2, 256)) * scale).astype(np.float32)
    if positive:
        w = np.abs(w)
    data, deq = K.encode(w, "Q2_K")
    assert np.array_equal(_gguf_decode(data, "Q2_K", 2), deq)
    # every weight is within its sub-block's range, up to the 4-bit rounding of scale and min
    sub, dsub = w.reshape(-1, 16), deq.reshape(-1, 16)
    spread = sub.max(1) - np.minimum(sub.min(1), 0)
    assert (np.abs(dsub - sub).max(1) <= 0.75 * spread + 1e-6 * scale).all()


def test_q2_k_bytes_equal_llama_cpp_reference_by_loops():
    # the gguf package has no Q2_K encoder: compare with llama.cpp's quantize_row_q2_K_ref ported loop by loop
    w = _weights(2, 4, 256)
    w[2, :16] = np.linspace(0.1, 0.4, 16)   # an all-positive sub-block (min capped at 0)
    ours, _ = K.encode(w, "Q2_K")
    ref = b"".join(_c_q2_k_block(row) for row in w)
    a, b = np.frombuffer(ours, np.uint8), np.frombuffer(ref, np.uint8)
    # float32 sums in a different order could flip a near-tie of the scale search; none occur on these blocks
    assert np.array_equal(a, b), f"{int((a != b).sum())} bytes differ"


def test_q2_k_bytes_equal_llama_cpp_reference_on_a_real_layer():
    from qcourse.lm.embedded import load_embedded

    w = load_embedded().layers[0].mlp.down_proj.weight.detach().numpy()[:8]   # 24 super-blocks
    ours, _ = K.encode(w, "Q2_K")
    assert ours == b"".join(_c_q2_k_block(row) for row in w.reshape(-1, 256))


def test_q2_k_beats_plain_min_max_rounding():
    w = _weights(3, 8, 256)[4:]
    _, deq = K.encode(w, "Q2_K")
    sub = w.reshape(-1, 16)
    lo, hi = np.minimum(sub.min(1, keepdims=True), 0), sub.max(1, keepdims=True)
    step = (hi - lo) / 3
    naive = np.clip(np.rint((sub - lo) / step), 0, 3) * step + lo
    # the reference minimises |x|-weighted absolute error; it should beat min-max on that criterion
    weighted = (lambda r: float((np.abs(sub) * np.abs(r.reshape(-1, 16) - sub)).sum()))
    assert weighted(deq) < weighted(naive)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q2_K"])
def test_gptq_in_the_format_decodes_exactly_and_lowers_proxy_loss_on_a_real_layer(qtype):
    from qcourse.lm.corpus import calibration_tokens
    from qcourse.lm.embedded import load_embedded
    from qcourse.nn import collect_hessians

    torch.manual_seed(0)
    model = load_embedded()
    name = "layers.1.mlp.down_proj"        # 768 inputs: three Q2_K super-blocks per row
    calib = calibration_tokens(model.tokenizer, 8, 128, seed=0)
    H = collect_hessians(model, calib, include=[name])[name]
    w = model.get_submodule(name).weight.detach()[:64]
    t, res = K.encode_gptq(w, H, qtype)
    assert np.array_equal(_gguf_decode(t.data, qtype, 64), t.dequantized)
    assert np.array_equal(t.dequantized, res.w_q.float().numpy())
    _, rtn = K.encode(w, qtype)
    loss_rtn = proxy_loss(w.double(), torch.from_numpy(rtn).double(), H)
    loss_gptq = proxy_loss(w.double(), torch.from_numpy(t.dequantized).double(), H)
    assert loss_gptq < 0.9 * loss_rtn, (loss_gptq, loss_rtn)


@pytest.mark.parametrize("qtype", ["Q4_0", "Q2_K"])
@pytest.mark.parametrize("gptq", [False, True])
def test_gguf_with_kquant_linears_loads_back_with_identical_logits(tmp_path, qtype, gptq):
    model = toy_model(seed=1, d_model=256, d_ff=256, n_heads=4, n_kv_heads=2, n_layers=1, max_seq_len=32)
    hessians = None
    if gptq:
        from qcourse.nn import collect_hessians

        calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
        hessians = collect_hessians(model, calib)
    tensors = kquant_tensors(model, qtype, hessians)
    info = write_gguf(model, tmp_path / "m.gguf", tensors=tensors)
    assert set(info["types"][n] for n in tensors) == {qtype}
    assert info["kquant_bits_per_weight"] == pytest.approx(4.5 if qtype == "Q4_0" else 2.625)
    loaded = load_gguf(tmp_path / "m.gguf", tokenizer=False)
    apply_kquant(model, tensors)
    x = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    if not gptq:   # linear_type= gives the same file as the round-to-nearest tensors
        write_gguf(toy_model(seed=1, d_model=256, d_ff=256, n_heads=4, n_kv_heads=2, n_layers=1,
                             max_seq_len=32), tmp_path / "n.gguf", linear_type=qtype)
        assert (tmp_path / "n.gguf").read_bytes() == (tmp_path / "m.gguf").read_bytes()


def test_bad_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="qtype"):
        K.encode(np.zeros((1, 32), np.float32), "Q5_0")
    with pytest.raises(ValueError, match="multiple of 256"):
        K.encode(np.zeros((1, 32), np.float32), "Q2_K")
    with pytest.raises(TypeError, match="2-D float"):
        K.encode(np.zeros(32, np.float32), "Q4_0")
    with pytest.raises(ValueError, match="finite"):
        K.encode(np.full((1, 32), np.nan, np.float32), "Q4_0")
    with pytest.raises(ValueError, match="fp16 scales overflow"):
        K.encode(np.full((1, 256), 1e6, np.float32), "Q2_K")
    with pytest.raises(ValueError, match="needs 18"):
        K.decode(b"\0" * 17, "Q4_0", (1, 32))
    with pytest.raises(ValueError, match="fitted"):
        K.Q2_KGrid().quantize(torch.zeros(2, 1))
    model = toy_model()
    with pytest.raises(ValueError, match="linear_type"):
        write_gguf(model, tmp_path / "x.gguf", linear_type="Q8_0")
    with pytest.raises(ValueError, match="block linear"):
        write_gguf(model, tmp_path / "x.gguf", tensors={"lm_head": None})


def test_bits_per_byte_of_a_byte_model_is_nats_per_token_over_ln2():
    model = toy_model(max_seq_len=32)
    bpb = bits_per_byte(model, tokens=96, context=32)
    assert bpb == pytest.approx(nll(model, tokens=96, context=32) / math.log(2), rel=1e-12)
    stream = torch.tensor([72, 105, 226, 128, 153, 33], dtype=torch.long)    # "Hi’!" in bytes
    assert text_bytes(model.tokenizer, stream) == 6


def test_write_gguf_encodes_quantlinear_layers_from_their_decoded_weights(tmp_path):
    from qcourse.nn import quantize_model
    from qcourse.nn.linear import QuantLinear

    model = toy_model(seed=2, d_model=64, d_ff=128, n_layers=1, max_seq_len=32)
    model, _ = quantize_model(model, "rtn", bits=4, group_size=32, progress=False)
    layer = model.layers[0].mlp.down_proj
    assert isinstance(layer, QuantLinear)
    info = write_gguf(model, tmp_path / "q.gguf", linear_type="Q4_0")
    assert info["types"]["layers.0.mlp.down_proj"] == "Q4_0"
    loaded = load_gguf(tmp_path / "q.gguf", tokenizer=False)
    _, expected = K.encode(layer.weight.detach(), "Q4_0")
    assert np.array_equal(loaded.layers[0].mlp.down_proj.weight.detach().numpy(), expected)
