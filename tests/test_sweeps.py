"""qcourse.sweeps: cached quantize-and-score, on a tiny seeded model (seconds)."""

from __future__ import annotations

import pytest
import torch

from qcourse.lm.evaluate import perplexity
from qcourse.lm.model import Llama, LlamaConfig
from qcourse.lm.tokenizer import ByteTokenizer
from qcourse.nn import quantize_model
from qcourse.sweeps import Sweep, format_rows, weight_errors


@pytest.fixture(scope="module")
def tiny() -> Llama:
    torch.manual_seed(0)
    m = Llama(LlamaConfig(d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32))
    m.tokenizer = ByteTokenizer()
    return m


def test_fp_ppl_is_the_evaluator_on_the_same_tokens(tiny: Llama) -> None:
    sw = Sweep(tiny, tokens=96)
    assert sw.fp_ppl == pytest.approx(perplexity(tiny, split="validation", tokens=96), rel=1e-9)


def test_run_matches_quantize_model_and_caches(tiny: Llama) -> None:
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    sw = Sweep(tiny, tokens=96, sample=500)
    row = sw.run("hqq", 3, 32)
    assert sw.run("hqq", 3, 32) is row and len(sw.cached()) == 1
    q, report = quantize_model(tiny, "hqq", bits=3, group_size=32, progress=False)
    assert row["bits_per_weight"] == report.bits_per_weight == 3 + 32 / 32
    assert row["ppl"] == pytest.approx(perplexity(q, split="validation", tokens=96), rel=1e-9)
    assert row["ppl_ratio"] == pytest.approx(row["ppl"] / sw.fp_ppl)
    assert row["rel_error"] == pytest.approx(report.rel_error)
    assert row["errors"].shape == (500,)
    # the model itself is untouched
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())


def test_more_bits_less_error_and_8_bits_is_nearly_lossless(tiny: Llama) -> None:
    sw = Sweep(tiny, tokens=64)
    errs = [sw.run("rtn", b, 32)["rel_error"] for b in (2, 4, 8)]
    assert errs[0] > errs[1] > errs[2]
    assert abs(sw.run("rtn", 8, 32)["ppl_ratio"] - 1) < 1e-3


def test_gptq_needs_calibration_and_runs_with_it(tiny: Llama) -> None:
    from qcourse.lm.corpus import calibration_tokens

    with pytest.raises(ValueError, match="calib"):
        Sweep(tiny, tokens=64).run("gptq", 4, 32)
    sw = Sweep(tiny, tokens=64, calib=calibration_tokens(tiny.tokenizer, 4, 32, seed=0))
    rows = sw.table(["rtn", "gptq"], [4], 32, progress=False)
    assert [r["method"] for r in rows] == ["rtn", "gptq"] and "errors" not in rows[0]
    assert all(torch.isfinite(torch.tensor(r["ppl"])) for r in rows)
    assert "gptq" in format_rows(rows, sw.fp_ppl)


@pytest.mark.parametrize("kwargs, match", [
    ({"tokens": 0}, "tokens"), ({"tokens": True}, "tokens"), ({"sample": -1}, "sample"),
    ({"split": "dev"}, "split"), ({"split": "train", "calib": torch.zeros(1, 4, dtype=torch.long)}, "train"),
])
def test_bad_arguments_are_refused(tiny: Llama, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Sweep(tiny, **kwargs)


def test_bad_settings_are_refused(tiny: Llama) -> None:
    sw = Sweep(tiny, tokens=64)
    with pytest.raises(ValueError):
        sw.run("nope", 4, 32)
    with pytest.raises(ValueError, match="group_size"):
        sw.run("rtn", 4, 48)
    with pytest.raises(TypeError):
        Sweep(torch.nn.Linear(2, 2))


def test_weight_errors_are_seeded_and_scaled(tiny: Llama) -> None:
    q, report = quantize_model(tiny, "rtn", bits=2, group_size=32, progress=False)
    names = [r.name for r in report.layers]
    a = weight_errors(tiny, q, names, sample=300, seed=1)
    assert torch.equal(a, weight_errors(tiny, q, names, sample=300, seed=1))
    full = weight_errors(tiny, q, names, sample=10**7)
    assert full.numel() == report.numel
    # mean squared normalized error = size-weighted relative error when every layer has the same RMS scale
    w = tiny.layers[0].mlp.down_proj.weight
    one = weight_errors(tiny, q, ["layers.0.mlp.down_proj"], sample=10**7)
    assert float(one.pow(2).mean()) == pytest.approx(report["layers.0.mlp.down_proj"].rel_error, rel=1e-4)
    assert one.numel() == w.numel()
    with pytest.raises(ValueError, match="no layer"):
        weight_errors(tiny, q, ["missing"])
