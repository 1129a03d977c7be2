"""Tests of ``python -m qcourse.bench quality`` on a tiny model (the real run is a benchmark, not a test)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import qcourse.lm
import qcourse.methods
from qcourse.bench import quality
from qcourse.lm.model import Llama, LlamaConfig
from qcourse.lm.tokenizer import ByteTokenizer
from qcourse.methods.base import Method, QuantizedWeight


class _Dense(QuantizedWeight):
    def __init__(self, w_hat: torch.Tensor, bits: int) -> None:
        self.shape, self.w_hat, self.bits = tuple(w_hat.shape), w_hat, bits

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.w_hat.to(dtype)

    @property
    def storage_bits(self) -> int:
        return self.w_hat.numel() * self.bits


def _round(w: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    g = w.shape[1] if group_size is None else group_size
    wg = w.reshape(w.shape[0], -1, g)
    qmax = 2 ** (bits - 1) - 1
    scale = wg.abs().amax(-1, keepdim=True).clamp_min(1e-12) / qmax
    return (torch.round(wg / scale).clamp(-qmax - 1, qmax) * scale).reshape(w.shape)


class _Toy(Method):
    calls: list = []

    def quantize(self, w, bits, group_size=None, hessian=None, seed=0, **options):
        self.check_args(w, bits, group_size)
        if self.needs_hessian and hessian is None:
            raise ValueError("needs hessian")
        _Toy.calls.append((self.name, hessian is not None))
        return _Dense(_round(w, bits, group_size), bits)


METHODS = {
    "toy": _Toy(name="toy", supported_bits=(2, 4, 8)),
    "toy-calib": _Toy(name="toy-calib", supported_bits=(2, 4), needs_hessian=True),
}


@pytest.fixture
def tiny(monkeypatch):
    """A tiny byte-level Llama served as "austen", and the toy methods registered by name."""
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    model.tokenizer = ByteTokenizer()
    loaded = []

    def load(name="austen", **kwargs):
        loaded.append(name)
        return model

    monkeypatch.setattr(qcourse.lm, "load", load)
    for name in METHODS:
        monkeypatch.setitem(qcourse.methods._MODULES, name, __name__)
    _Toy.calls.clear()
    return loaded


ARGS = ["--tokens", "256", "--calib-sequences", "3", "--calib-seq-len", "16", "--group-size", "16"]


def test_json_schema_and_values(tiny):
    result = quality.main(["--methods", "toy,toy-calib", "--bits", "2,4", *ARGS])
    assert tiny == ["austen"]
    json.loads(json.dumps(result))  # JSON-serialisable as printed by the dispatcher
    assert {"model", "split", "tokens", "fp_ppl", "rows"} <= set(result)
    assert result["model"] == "austen" and result["split"] == "validation" and result["tokens"] == 256
    assert result["calibration"] == {
        "split": "train",
        "sequences": 3,
        "seq_len": 16,
        "true_sequential": False,
        "gram_dtype": "float64",
    }
    assert [(r["method"], r["bits"]) for r in result["rows"]] == [
        ("toy", 2),
        ("toy", 4),
        ("toy-calib", 2),
        ("toy-calib", 4),
    ]
    required = {"method", "bits", "group_size", "bits_per_weight", "ppl", "quantize_seconds"}
    for row in result["rows"]:
        assert required <= set(row)
        assert row["group_size"] == 16 and row["bits_per_weight"] == row["bits"]
        assert math.isfinite(row["ppl"]) and row["ppl"] > 1 and row["quantize_seconds"] >= 0
        assert row["ppl_ratio"] == pytest.approx(row["ppl"] / result["fp_ppl"])
        assert row["layers"] == 14  # block linears only: lm_head stays in float
    # 2-bit hurts more than 4-bit; the data-free method never got a Hessian, the calibrated one always did
    rows = {(r["method"], r["bits"]): r for r in result["rows"]}
    assert rows["toy", 2]["rel_error"] > rows["toy", 4]["rel_error"]
    assert {h for name, h in _Toy.calls if name == "toy"} == {False}
    assert {h for name, h in _Toy.calls if name == "toy-calib"} == {True}
    # the quality benchmark's perplexity is the package's: the full-precision figure matches a direct call
    model = qcourse.lm.load()
    assert result["fp_ppl"] == pytest.approx(qcourse.lm.perplexity(model, "validation", 256))
    assert result["torch"] == torch.__version__ and result["torch_threads"] >= 1


def test_deterministic(tiny):
    a = quality.main(["--methods", "toy-calib", "--bits", "2", *ARGS])
    b = quality.main(["--methods", "toy-calib", "--bits", "2", *ARGS])
    assert a["rows"][0]["ppl"] == b["rows"][0]["ppl"] and a["fp_ppl"] == b["fp_ppl"]


def test_per_channel_and_no_calibration_when_not_needed(tiny):
    result = quality.main(["--methods", "toy", "--bits", "8", "--tokens", "128", "--group-size", "none"])
    assert result["rows"][0]["group_size"] is None and result["calibration"] is None
    assert result["rows"][0]["ppl_ratio"] == pytest.approx(1, abs=0.05)


def test_model_defaults():
    assert quality.parse_args([]).tokens == 65536
    args = quality.parse_args(["--model", "smollm2-135m"])
    assert (args.tokens, args.calib_sequences, args.calib_seq_len) == (8192, 32, 512)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--methods", "nope"],
         r"--methods: unknown method\(s\) \['nope'\]; available: \[.*'toy'.*\] \(or 'all'\)"),
        (
            ["--methods", "toy", "--bits", "3"],
            r"--bits: \[3\] not supported by method 'toy'; it supports \[2, 4, 8\]",
        ),
        (["--group-size", "0"], "group size must be a positive integer or 'none'"),
        (["--bits", "two"], "bits must be numbers"),
        (["--model", "gpt5"], "invalid choice"),
        (["--tokens", "-3"], "must be a positive integer"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_options_are_refused_before_any_work(tiny, argv, match):
    with pytest.raises(ValueError, match=match):
        quality.main(argv)
    assert tiny == []  # nothing was loaded


def test_methods_come_from_the_registry_and_all_expands(tiny):
    args = quality.parse_args(["--methods", "all", "--bits", "2,8"])
    assert args.methods == qcourse.methods.available() and "toy" in args.methods
    assert [m.name for m in args.resolved] == args.methods
    # with 'all', widths a method lacks are skipped and reported; named explicitly, they are refused
    assert ("toy-calib", 8) not in [(m.name, b) for m, b in args.runs]
    assert {"method": "toy-calib", "bits": 8, "supported_bits": [2, 4]} in args.skipped
    assert all(b in m.supported_bits for m, b in args.runs)
    with pytest.raises(ValueError, match="no method supports"):
        quality.parse_args(["--methods", "all", "--bits", "9"])


def test_all_runs_each_method_at_the_widths_it_supports(tiny, monkeypatch):
    monkeypatch.setattr(qcourse.methods, "_MODULES", {name: __name__ for name in METHODS})
    result = quality.main(["--methods", "all", "--bits", "8", "--tokens", "64", "--group-size", "none"])
    assert [(r["method"], r["bits"]) for r in result["rows"]] == [("toy", 8)]
    assert result["calibration"] is None  # the calibrated method had nothing to run
    assert {"method": "toy-calib", "bits": 8, "supported_bits": [2, 4]} in result["skipped"]


def test_a_method_without_group_size_runs_per_tensor_structure(tiny, monkeypatch):
    import qcourse.nn

    seen = []
    real = qcourse.nn.quantize_model

    def spy(model, method, **kwargs):
        seen.append((method.name, kwargs["group_size"]))
        return real(model, method, **kwargs)

    monkeypatch.setattr(qcourse.nn, "quantize_model", spy)
    monkeypatch.setattr(METHODS["toy"], "uses_group_size", False, raising=False)
    result = quality.main(["--methods", "toy,toy-calib", "--bits", "4", *ARGS])
    assert seen == [("toy", None), ("toy-calib", 16)]
    assert [r["group_size"] for r in result["rows"]] == [None, 16]


def test_group_size_not_dividing_names_the_layer(tiny):
    with pytest.raises(ValueError, match=r"layer 'layers.0.self_attn.q_proj' \(in_features=32\)"):
        quality.main(["--methods", "toy", "--bits", "4", "--tokens", "64", "--group-size", "24"])


def test_true_sequential_flag_reaches_calibrated_methods_only(tiny, monkeypatch):
    import qcourse.nn

    calls = []
    real = qcourse.nn.quantize_model

    def spy(model, method, **kwargs):
        calls.append(
            (method.name, kwargs["true_sequential"], kwargs["calib"] is not None, kwargs["gram_dtype"])
        )
        return real(model, method, **kwargs)

    monkeypatch.setattr(qcourse.nn, "quantize_model", spy)
    argv = [
        "--methods",
        "toy,toy-calib",
        "--bits",
        "4",
        "--true-sequential",
        "--gram-dtype",
        "float32",
        *ARGS,
    ]
    result = quality.main(argv)
    assert (
        result["calibration"]["true_sequential"] is True and result["calibration"]["gram_dtype"] == "float32"
    )
    assert calls == [("toy", False, False, torch.float32), ("toy-calib", True, True, torch.float32)]
