"""Lesson 09's capstone: rows, byte accounting, the disk cache, Pareto, the guide, the widget, the bench."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import capstone as C
from qcourse import lm
from qcourse.bench import UsageError
from qcourse.bench import capstone as bench


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch):
    """``run`` on a tiny untrained byte model standing in for "austen-small" (256 bytes, 4×32 calibration)."""
    model = lm.toy_model(seed=0, max_seq_len=32, d_model=64, d_ff=128)   # rows of 64: one group each
    monkeypatch.setattr(C, "_model", lambda name: model)
    monkeypatch.setattr(C, "_calib", lambda name: torch.randint(0, 256, (4, 32),
                                                                generator=torch.Generator().manual_seed(0)))
    monkeypatch.setitem(C.SETTINGS, "embedded", {"split": "validation", "tokens": 256, "calib_sequences": 4,
                                                 "calib_seq_len": 32, "seed": 0})
    return model


def _row(model: str, method: str, bits: float | None, nbytes: int, bpb: float, ppl: float | None = None,
         kernel: str | None = None, **extra) -> dict:
    return {"model": model, "params": 100, "method": method, "bits": bits,
            "group_size": 64 if method in ("rtn", "hqq", "gptq") else None,
            "bits_per_weight": 32.0 if method == "fp32" else (bits or 1.58) + 0.3, "model_bytes": nbytes,
            "ppl": ppl if ppl is not None else 2 ** bpb, "bits_per_byte": bpb, "quantize_seconds": 0.0,
            "tokens_per_second": None, "source": C.SOURCES[method], "kernel": kernel, **extra}


#: a hand-made table: a large model (fp 1.60 bits/byte) and a small one (fp 1.80)
TABLE = [
    _row("austen", "fp32", None, 4000, 1.60),
    _row("austen", "gptq", 2, 600, 1.75, kernel="int2"),
    _row("austen", "rtn", 2, 600, 1.95, kernel="int2"),
    _row("austen", "aqlm", 2, 650, 1.70, kernel="aqlm-2x8", config="2x8"),
    _row("austen", "quip", 2, 580, 1.72),
    _row("austen", "rtn", 4, 1000, 1.62, kernel="int4"),
    _row("austen-bitnet", "bitnet-trained", 1.58, 500, 1.78, kernel="ternary"),
    _row("austen", "binary", 1, 400, 3.50),
    _row("austen-small", "fp32", None, 1100, 1.80),
    _row("austen-small", "rtn", 4, 300, 1.83, kernel="int4"),
    _row("austen-small", "rtn", 8, 450, 1.805, kernel="int8"),
]


# ------------------------------------------------------------------------------------------- rows
def test_row_schema_and_values(toy, tmp_path):
    row = C.run("austen-small", "rtn", 4, cache=tmp_path)
    assert tuple(row)[: len(C.ROW_KEYS)] == C.ROW_KEYS
    assert set(row) == set(C.ROW_KEYS) | set(C.EXTRA_KEYS)
    assert row["model"] == "austen-small" and row["method"] == "rtn" and row["bits"] == 4
    assert row["group_size"] == C.GROUP_SIZE and row["source"] == "02_rtn_hqq" and row["family"] == "embedded"
    assert row["params"] == sum(p.numel() for p in toy.parameters())
    assert row["bits_per_weight"] == 4 + 16 / 64 + 4 / 64          # codes + fp16 scale + 4-bit zero per 64
    assert row["model_bytes"] == row["quantized_bytes"] + row["float_bytes"]
    # byte-level model: bits per byte is log2 of the per-byte perplexity
    assert row["bits_per_byte"] == pytest.approx(math.log2(row["ppl"]), rel=1e-12)
    assert row["eval_tokens"] == row["eval_bytes"] == 256 and row["calibration"] is None
    assert row["tokens_per_second"] is None and row["kernel"] in ("int4", None)
    json.dumps(row)   # plain JSON


def test_ppl_matches_the_evaluator(toy, tmp_path):
    from qcourse.nn import quantize_model

    row = C.run("austen-small", "hqq", 3, cache=tmp_path)
    q, _ = quantize_model(toy, "hqq", bits=3, group_size=64, progress=False)
    assert row["ppl"] == pytest.approx(lm.perplexity(q, tokens=256), rel=1e-9)


def test_float_and_calibrated_rows(toy, tmp_path):
    fp = C.run("austen-small", "fp32", cache=tmp_path)
    assert fp["bits"] is None and fp["bits_per_weight"] == 32.0 and fp["quantized_bytes"] == 0
    assert fp["model_bytes"] == 4 * fp["params"] and fp["quantize_seconds"] == 0.0
    g = C.run("austen-small", "gptq", 2, cache=tmp_path)
    assert g["calibration"] == {"split": "train", "sequences": 4, "seq_len": 32, "seed": 0}
    a = C.run("austen-small", "aqlm", 1, cache=tmp_path, options={"rounds": 1})
    assert a["config"] == "1x8" and a["group_size"] is None and a["source"] == "03_aqlm_codebooks"
    t = C.run("austen-small", "bitnet", 1.58, cache=tmp_path)
    assert t["bits"] == 1.58 and t["kernel"] in ("ternary", None)   # 2-bit packed trits: the kernel's layout
    assert fp["model_bytes"] > g["model_bytes"] > t["model_bytes"]


def test_bad_configurations(tmp_path):
    with pytest.raises(ValueError, match="model must be one of"):
        C.run("gpt2", "rtn", 4, cache=tmp_path)
    with pytest.raises(ValueError, match="method must be one of"):
        C.run("austen", "awq", 4, cache=tmp_path)
    with pytest.raises(ValueError, match="bits must be one of"):
        C.run("austen", "quip", 8, cache=tmp_path)
    with pytest.raises(ValueError, match="bits must be None for the float model"):
        C.run("austen", "fp32", 4, cache=tmp_path)
    with pytest.raises(ValueError, match="trained model"):
        C.run("austen-bitnet", "rtn", 4, cache=tmp_path)
    with pytest.raises(ValueError, match="belongs to the trained"):
        C.run("austen", "bitnet-trained", 1.58, cache=tmp_path)
    with pytest.raises(ValueError, match="group_size"):
        C.run("austen", "rtn", 4, group_size=0, cache=tmp_path)
    with pytest.raises(TypeError, match="options"):
        C.run("austen", "rtn", 4, options=[1], cache=tmp_path)


# ------------------------------------------------------------------------------------------- cache
def test_cache_reuse(toy, tmp_path, monkeypatch):
    import qcourse.nn

    calls = []
    real = qcourse.nn.quantize_model

    def counting(*a, **k):
        calls.append(a[1])
        return real(*a, **k)

    monkeypatch.setattr(qcourse.nn, "quantize_model", counting)
    first = C.run("austen-small", "rtn", 2, cache=tmp_path)
    second = C.run("austen-small", "rtn", 2, cache=tmp_path)
    assert calls == ["rtn"] and second == first                      # read from disk, not recomputed
    assert C.cache_path("austen-small", "rtn", 2, directory=tmp_path).is_file()
    C.run("austen-small", "rtn", 2, cache=tmp_path, recompute=True)
    assert calls == ["rtn", "rtn"]
    # another setting is another file
    assert C.cache_path("austen-small", "rtn", 2, group_size=32, directory=tmp_path) != \
        C.cache_path("austen-small", "rtn", 2, directory=tmp_path)
    C.run("austen-small", "rtn", 2, group_size=32, cache=tmp_path)
    assert calls == ["rtn", "rtn", "rtn"]


def test_cache_dir_default(monkeypatch, tmp_path):
    monkeypatch.setenv("QCOURSE_CACHE", str(tmp_path))
    assert C.cache_dir() == tmp_path / "capstone"
    with pytest.raises(TypeError, match="cache_dir"):
        C.cache_dir(3)


# ------------------------------------------------------------------------------------------- bytes
def test_bytes_hand_count_rtn():
    """Every tensor once: embedding, head, 3 norms in float32; each linear's codes + fp16 scale + zero."""
    from qcourse.nn import quantize_model

    m = lm.toy_model(seed=0)          # d=32, 1 block, d_ff=64, 4 heads (kv heads = heads), vocab 256
    q, report = quantize_model(m, "rtn", bits=2, group_size=32, progress=False)
    d, ff, vocab = 32, 64, 256
    float_bytes = 4 * (vocab * d + vocab * d + 3 * d)               # embed, head, 2 block norms + final norm
    shapes = [(d, d)] * 4 + [(ff, d), (ff, d), (d, ff)]             # q k v o, gate up, down
    bits = sum(o * i * 2 + (o * i // 32) * (16 + 2) for o, i in shapes)
    counts = C.byte_counts(q)
    assert counts == {"quantized": math.ceil(bits / 8), "float": float_bytes,
                      "total": math.ceil(bits / 8) + float_bytes}
    assert bits == report.storage_bits
    assert C.byte_counts(m)["total"] == 4 * sum(p.numel() for p in m.parameters())


def test_bytes_tied_head_counted_once():
    m = lm.toy_model(seed=0, tie_embeddings=True)
    n_unique = sum(p.numel() for p in m.parameters())              # parameters() yields a tied tensor once
    assert m.lm_head.weight is m.embed_tokens.weight
    assert C.byte_counts(m)["total"] == 4 * n_unique
    assert C.count_params(m) == n_unique


def test_bytes_frozen_bitlinear():
    from qcourse.nn.bitlinear import to_bitlinear

    m = to_bitlinear(lm.toy_model(seed=0))
    for mod in m.modules():
        if hasattr(mod, "freeze") and hasattr(mod, "packed"):
            mod.freeze()
    counts = C.byte_counts(m)
    d, ff = 32, 64
    shapes = [(d, d)] * 4 + [(ff, d), (ff, d), (d, ff)]
    assert counts["quantized"] == sum(math.ceil(o * i * 2 / 8) + 4 for o, i in shapes)   # trits + fp32 γ
    assert counts["float"] == 4 * (2 * 256 * d + 3 * d)
    assert C.count_params(m) == C.count_params(lm.toy_model(seed=0))


@pytest.mark.parametrize("method,bits,opts", [("hqq", 3, {}), ("binary", 1, {}), ("bitnet", 1.58, {}),
                                              ("gptq", 4, {}), ("quip", 2, {}),
                                              ("aqlm", 2, {"rounds": 1, "config": "2x8"})])
def test_quantized_bytes_are_the_stored_tensors(method, bits, opts):
    """byte_counts' quantized part is the layers' storage_bits, and the state dict holds that many bytes."""
    from qcourse.nn import quantize_model
    from qcourse.nn.linear import QuantLinear

    m = lm.toy_model(seed=0, max_seq_len=32, d_model=64, d_ff=128)   # AQLM 2x8 needs >= 256 groups of 8
    calib = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(0))
    gs = 32 if method in ("hqq", "gptq") else None
    q, report = quantize_model(m, method, bits=bits, group_size=gs, calib=calib if method in C.CALIBRATED
                               else None, progress=False, **opts)
    counts = C.byte_counts(q)
    assert counts["quantized"] == math.ceil(report.storage_bits / 8)
    state = q.state_dict()
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if ".qweight." in k)
    n_tensors = sum(1 for k in state if ".qweight." in k)
    # each stored tensor rounds its bits up to whole bytes at most once
    assert 0 <= stored - report.storage_bits / 8 < n_tensors
    assert all(isinstance(mod, QuantLinear) for n, mod in q.named_modules() if n.startswith("layers.0.mlp."))


def test_byte_counts_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        C.byte_counts({"w": torch.zeros(2)})


# ------------------------------------------------------------------------------------------- grid
def test_grid():
    g = C.grid()
    assert len(g) == 3 * 20 + 1 and g[0] == ("austen-small", "fp32", None)
    assert ("austen-bitnet", "bitnet-trained", 1.58) in g and ("austen", "aqlm", 2) in g
    assert C.grid(["austen-small"], ["quip"]) == [("austen-small", "quip", b) for b in (2, 3, 4)]
    with pytest.raises(ValueError, match="methods must be labels"):
        C.grid(methods=["awq"])
    with pytest.raises(ValueError, match="trained twin"):
        C.grid(["austen-bitnet"])


# ------------------------------------------------------------------------------------------- pareto
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 50)), min_size=1, max_size=25))
@settings(max_examples=60, deadline=None)
def test_pareto_is_the_non_dominated_set(points):
    rows = [{"model_bytes": b, "bits_per_byte": float(q), "i": i} for i, (b, q) in enumerate(points)]
    front = C.pareto(rows)
    # brute force: on the front iff no other point is <= on both and < on one (ties: kept once)
    def dominated(r):
        return any((o["model_bytes"] <= r["model_bytes"] and o["bits_per_byte"] < r["bits_per_byte"])
                   or (o["model_bytes"] < r["model_bytes"] and o["bits_per_byte"] <= r["bits_per_byte"])
                   for o in rows)
    expected = {(r["model_bytes"], r["bits_per_byte"]) for r in rows if not dominated(r)}
    assert {(r["model_bytes"], r["bits_per_byte"]) for r in front} == expected
    assert len(front) == len(expected)
    assert [r["model_bytes"] for r in front] == sorted(r["model_bytes"] for r in front)


def test_pareto_skips_missing_values():
    rows = [{"model_bytes": 1, "bits_per_byte": None}, {"model_bytes": 2, "bits_per_byte": float("nan")},
            {"model_bytes": 3, "bits_per_byte": 1.0}]
    assert [r["model_bytes"] for r in C.pareto(rows)] == [3]


def test_equal_bytes_comparison():
    out = C.equal_bytes_comparison(TABLE, "austen", ["austen-small"], large_bits=(2,), small_bits=(4, 8))
    assert [c["large"]["method"] for c in out] == ["quip", "gptq", "rtn", "aqlm"]
    quip = out[0]
    # 580 bytes: the small model at 8 bits (450 B, 1.805) is its best row that fits
    assert quip["small"]["bits"] == 8 and quip["margin"] == pytest.approx(1.805 - 1.72)
    assert out[-1]["margin"] == pytest.approx(1.805 - 1.70)
    small4 = C.equal_bytes_comparison(TABLE, "austen", ["austen-small"], large_bits=(2,), small_bits=(4,))
    assert small4[0]["small"]["bits"] == 4 and small4[0]["margin"] == pytest.approx(1.83 - 1.72)
    rtn = out[2]
    assert rtn["margin"] < 0     # RTN 2-bit on the large model loses to the small model at 8 bits
    binary = C.equal_bytes_comparison(TABLE, "austen", ["austen-small"], large_bits=(1,))[0]
    assert binary["small"]["bits"] == 4 and binary["margin"] == pytest.approx(1.83 - 3.50)
    tiny = [_row("austen", "binary", 1, 200, 3.0), _row("austen-small", "rtn", 4, 300, 1.83)]
    assert C.equal_bytes_comparison(tiny, "austen", ["austen-small"], large_bits=(1,)) == \
        [{"large": tiny[0], "small": None, "margin": None}]


# ------------------------------------------------------------------------------------------- guide
def _methods(ranked):
    return [(r["model"], r["method"], r["bits"]) for r in ranked]


def test_recommend_budget_excludes_larger_rows():
    ranked = C.recommend(620, rows=TABLE)
    assert all(r["model_bytes"] <= 620 for r in ranked)
    assert _methods(ranked)[0] == ("austen", "quip", 2)       # best bits/byte among what fits
    bpb = [r["bits_per_byte"] for r in ranked]
    assert bpb == sorted(bpb)
    assert ("austen", "aqlm", 2) not in _methods(ranked)      # 650 B > 620 B
    assert _methods(C.recommend(10_000, rows=TABLE))[0] == ("austen", "fp32", None)
    assert C.recommend(100, rows=TABLE) == []
    # within the resolution, fewer bytes first: small RTN 8-bit (1.805, 450 B) vs a 1.8052 row of 300 B
    near = [*TABLE, _row("austen-small", "hqq", 4, 300, 1.8052, kernel="int4")]
    assert _methods(C.recommend(460, rows=near, calibration_data=False))[0] == ("austen-small", "hqq", 4)
    assert _methods(C.recommend(460, rows=near, calibration_data=False, resolution=0))[0] == \
        ("austen-small", "rtn", 8)


def test_recommend_without_calibration_data():
    ranked = C.recommend(10_000, rows=TABLE, calibration_data=False)
    assert not {r["method"] for r in ranked} & {"gptq", "aqlm", "quip"}
    assert _methods(C.recommend(700, rows=TABLE, calibration_data=False))[0] == ("austen-small", "rtn", 8)


def test_recommend_training_budget():
    assert "bitnet-trained" not in {r["method"] for r in C.recommend(10_000, rows=TABLE)}
    ranked = C.recommend(520, rows=TABLE, training_budget=True)
    assert _methods(ranked)[0] == ("austen-bitnet", "bitnet-trained", 1.58)
    assert _methods(C.recommend(520, rows=TABLE))[0] == ("austen-small", "rtn", 8)


def test_recommend_quality_tolerance_and_hardware():
    ranked = C.recommend(10_000, rows=TABLE, max_ppl_ratio=2 ** (1.70 - 1.60))
    assert max(r["ppl_ratio"] for r in ranked) <= 2 ** 0.1 + 1e-12
    assert {r["method"] for r in ranked} == {"fp32", "rtn", "aqlm"}
    # AQLM has a packed kernel on the CPU (numba) but not on a GPU here (Triton: affine and ternary only)
    cpu = {r["method"]: r["kernel"] for r in C.recommend(700, rows=TABLE)}
    gpu = {r["method"]: r["kernel"] for r in C.recommend(700, rows=TABLE, hardware="gpu")}
    assert cpu["aqlm"] == "aqlm-2x8" and gpu["aqlm"] is None and gpu["gptq"] == "int2"
    strict = C.recommend(700, rows=TABLE, hardware="gpu", require_kernel=True)
    assert "aqlm" not in {r["method"] for r in strict} and "quip" not in {r["method"] for r in strict}


def test_recommend_cites_its_row():
    top = C.recommend(620, rows=TABLE, top=1)
    assert len(top) == 1 and top[0]["row"] is TABLE[4] and top[0]["rank"] == 1
    assert top[0]["cite"] == ("austen QuIP# 2-bit: 580 B, 2.3 bits/weight, ppl 3.294, 1.7200 bits/byte "
                              "(lesson 04_quip_incoherence)")


def test_screen_reasons():
    why = {(s["row"]["model"], s["row"]["method"], s["row"]["bits"]): s["excluded"]
           for s in C.screen(TABLE, 620, calibration_data=False, max_ppl_ratio=1.2)}
    assert why["austen", "fp32", None] == "over budget"
    assert why["austen", "quip", 2] == "needs calibration data"
    assert why["austen-bitnet", "bitnet-trained", 1.58] == "needs a training run"
    assert why["austen", "binary", 1] == "quality"
    assert why["austen-small", "rtn", 4] is None


@pytest.mark.parametrize("kwargs,err,match", [
    ({"memory_bytes": 0}, ValueError, "memory_bytes"), ({"memory_bytes": True}, ValueError, "memory_bytes"),
    ({"hardware": "tpu"}, ValueError, "hardware"), ({"calibration_data": 1}, TypeError, "calibration_data"),
    ({"training_budget": "no"}, TypeError, "training_budget"),
    ({"max_ppl_ratio": 0.5}, ValueError, "max_ppl"),
    ({"top": 0}, ValueError, "top"), ({"resolution": -1}, ValueError, "resolution"),
])
def test_recommend_bad_input(kwargs, err, match):
    args = {"memory_bytes": 1000, **kwargs}
    with pytest.raises(err, match=match):
        C.recommend(rows=TABLE, **args)


# ------------------------------------------------------------------------------------------- widget
def test_default_figure_renders(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qcourse import capstone_widgets as W

    choice = W.guide_readout(TABLE, W.DEFAULTS["memory_bytes"])["ranked"][0]["row"]
    fig = W.pareto_figure(TABLE, budget=700, highlight=choice)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and len(ax.lines) >= 3        # two fronts + the budget line
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    plt.close(fig)
    with pytest.raises(ValueError, match="y must be"):
        W.pareto_figure(TABLE, y="bytes")


def test_guide_widget_updates():
    import matplotlib

    matplotlib.use("Agg")
    from qcourse import capstone_widgets as W

    box = W.guide_explorer(TABLE, memory_bytes=620)
    budget, readout = box.children[0], box.children[4]
    assert "QuIP#" in readout.value.split("<li>")[1]
    budget.value = 10_000 / 1e6
    assert "float32" in readout.value.split("<li>")[1]
    budget.value = 120 / 1e6 * 1.2     # below every row... the slider's minimum is 0.8 × the smallest row
    assert "nothing measured fits" in readout.value or "<li>" in readout.value
    with pytest.raises(TypeError, match="defaults"):
        W.guide_explorer(TABLE, budget=3)


# ------------------------------------------------------------------------------------------- bench
def test_bench_bad_arguments():
    with pytest.raises(UsageError, match="unknown method label"):
        bench.parse_args(["--methods", "awq"])
    with pytest.raises(UsageError, match="unknown member"):
        bench.parse_args(["--members", "austen-huge"])
    with pytest.raises(UsageError, match="only with --model austen"):
        bench.parse_args(["--model", "smollm2-135m", "--members", "austen"])
    from qcourse.bench import main

    assert main(["capstone", "--model", "gpt2"]) == 2


def test_bench_runs_from_cache(toy, tmp_path):
    out = bench.main(["--members", "austen-small", "--methods", "fp32,rtn", "--bits", "32,4", "--no-speed",
                      "--cache", str(tmp_path), "--out", str(tmp_path / "t.json")])
    assert [(r["method"], r["bits"]) for r in out["rows"]] == [("fp32", None), ("rtn", 4)]
    assert {"command", "machine", "note", "rows"} <= set(out)
    assert json.loads((tmp_path / "t.json").read_text())["rows"] == out["rows"]
    assert bench.configurations(bench.parse_args(["--model", "smollm2-135m", "--methods", "aqlm"])) == \
        [("smollm2-135m", "aqlm", 1), ("smollm2-135m", "aqlm", 2)]


# ------------------------------------------------------------------------------------------- shipped tables
@pytest.mark.parametrize("family", ["embedded", "smollm2-135m"])
def test_shipped_tables(family):
    if not C.RESULTS[family].is_file():
        pytest.skip(f"{C.RESULTS[family].name} not generated yet")
    doc = json.loads(C.RESULTS[family].read_text())
    assert {"command", "machine", "note", "rows"} <= set(doc)
    rows = C.load_rows(family)
    assert rows and all(tuple(r)[: len(C.ROW_KEYS)] == C.ROW_KEYS for r in rows)
    for r in rows:
        assert r["model_bytes"] == r["quantized_bytes"] + r["float_bytes"]
        assert r["source"] == C.SOURCES[r["method"]]
        assert r["eval_tokens"] == C.SETTINGS[family]["tokens"]
        if r["method"] == "fp32":
            assert r["model_bytes"] == 4 * r["params"]
        if family == "embedded":
            assert r["bits_per_byte"] == pytest.approx(math.log2(r["ppl"]), rel=1e-9)
    assert any(r["method"] == "fp32" for r in rows)


# ------------------------------------------------------------------------------------------- speed
def test_decode_tokens_per_second():
    from qcourse.kernels import cpu
    from qcourse.nn import quantize_model

    m = lm.toy_model(seed=0, max_seq_len=128, d_model=64, d_ff=128)
    assert C.decode_tokens_per_second(m) > 0                                   # float model
    q, _ = quantize_model(m, "rtn", bits=4, group_size=64, progress=False)
    tps = C.decode_tokens_per_second(q)
    assert (tps > 0) if cpu.AVAILABLE else tps is None
    int3, _ = quantize_model(m, "rtn", bits=3, group_size=64, progress=False)
    assert C.decode_tokens_per_second(int3) is None                            # no packed 3-bit kernel
    with pytest.raises(ValueError, match="formats must be among"):
        C.decode_speeds("austen", ["int3"])


def test_speed_formats_are_shared_per_format():
    rows = [{"model": "m", "method": "fp32", "bits": None, "kernel": None},
            {"model": "m", "method": "rtn", "bits": 4, "kernel": "int4"},
            {"model": "m", "method": "gptq", "bits": 4, "kernel": "int4"},
            {"model": "m", "method": "rtn", "bits": 3, "kernel": None},
            {"model": "m", "method": "quip", "bits": 2, "kernel": "e8p"},
            {"model": "m", "method": "quip", "bits": 4, "kernel": "e8p"},
            {"model": "other", "method": "rtn", "bits": 4, "kernel": "int4"}]
    bench.attach_speeds(rows, {"m": {"float": 10.0, "int4": 25.0, "e8p": 3.0}})
    assert [r["tokens_per_second"] for r in rows] == [10.0, 25.0, 25.0, None, 3.0, None, None]


def test_gptq_rows_have_the_int_kernels():
    # GPTQ without act-order stores RTN's affine grid in the original column order: same kernels
    from qcourse.kernels import cpu

    for bits in (2, 4, 8):
        assert C.format_kernel("gptq", bits) == (f"int{bits}" if cpu.AVAILABLE else None)
    assert C.format_kernel("gptq", 3) is None


def test_shipped_smollm2_speeds():
    """Every SmolLM2 row stored in a format with a packed kernel (and float32) has its decode tokens/s,
    shared by all rows of that format; the others have none."""
    if not C.RESULTS["smollm2-135m"].is_file():
        pytest.skip("capstone_smollm2.json not generated yet")
    doc = json.loads(C.RESULTS["smollm2-135m"].read_text())
    rows = doc["rows"]
    per_format = doc["speed"]["tokens_per_second"]["smollm2-135m"]
    for r in rows:
        fmt = bench.speed_format(r)
        if fmt is None:
            assert r["tokens_per_second"] is None, (r["method"], r["bits"])
        else:
            assert r["tokens_per_second"] > 0 and r["tokens_per_second"] == per_format[fmt], (r["method"],
                                                                                              r["bits"])
    timed = {bench.speed_format(r) for r in rows} - {None}
    assert {"float", "int2", "int4", "int8", "ternary", "aqlm-2x8", "e8p"} <= timed
    assert all(r["kernel"] == f"int{r['bits']}" for r in rows if r["method"] == "gptq" and r["bits"] != 3)


# ------------------------------------------------------------------------------------------- reproducible
@pytest.mark.parametrize("method,bits", [("rtn", 4), ("hqq", 2)])
def test_shipped_row_is_reproduced(method, bits, tmp_path):
    """A live run of a shipped configuration gives the shipped row (the timings aside)."""
    if not C.RESULTS["embedded"].is_file():
        pytest.skip("capstone_embedded.json not generated yet")
    shipped = next(r for r in C.load_rows("embedded")
                   if (r["model"], r["method"], r["bits"]) == ("austen-small", method, bits))
    live = C.run("austen-small", method, bits, cache=tmp_path)
    for key in ("params", "group_size", "bits_per_weight", "model_bytes", "quantized_bytes", "float_bytes",
                "eval_bytes", "source", "family"):
        assert live[key] == shipped[key], key
    assert live["ppl"] == pytest.approx(shipped["ppl"], rel=1e-6)
    assert live["bits_per_byte"] == pytest.approx(shipped["bits_per_byte"], rel=1e-6)
