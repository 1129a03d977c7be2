"""``python -m qcourse.bench kernels``: arguments and the shape of its JSON (tiny sizes, speed untested)."""

from __future__ import annotations

import pytest

from qcourse.bench import UsageError

pytest.importorskip("numba")

from qcourse.bench import kernels  # noqa: E402


def test_bench_rows_cover_every_format_thread_and_batch():
    out = kernels.main(["--size", "64", "--threads", "1", "--batches", "1,3", "--repeats", "1",
                        "--min-bytes", "2048", "--decode-models", "none"])
    assert out["copy_gb_s"] > 0 and out["matmul_gflops"] > 0
    got = {(r["format"], r["threads"], r["batch"]) for r in out["rows"]}
    assert got == {(f, 1, b) for f in kernels.FORMATS for b in (1, 3)}
    for r in out["rows"]:
        assert r["shape"] == [64, 64]
        assert r["speedup"] == pytest.approx(r["torch_seconds"] / r["seconds"])
        assert r["cpu_speedup"] == pytest.approx(r["torch_cpu_seconds"] / r["cpu_seconds"])
        assert r["gb_s"] == pytest.approx(r["weight_bytes"] / r["seconds"] / 1e9)
        assert r["bandwidth_fraction"] == pytest.approx(r["gb_s"] / out["copy_gb_s"])
        # 64x64 int4 = 2048 bytes: one copy reaches --min-bytes; binary (512 bytes) needs four
        assert r["copies"] == {"int4": 1, "int2": 2, "binary": 4}.get(r["format"], 2)  # aqlm-2x8, e8p: 2 bits
    assert out["missing"] == list(kernels.MISSING) and out["decode"] == []
    assert out["notes"] == []  # one thread: the OpenMP wait policy does not matter


def test_bench_decode_rows_compare_float_and_packed_models():
    out = kernels.main(["--size", "64", "--threads", "1", "--batches", "1", "--repeats", "1",
                        "--min-bytes", "0", "--formats", "int4", "--decode-models", "austen",
                        "--decode-bits", "2", "--decode-tokens", "2", "--decode-repeats", "1",
                        "--decode-heads", "float,packed"])
    rows = out["decode"]
    assert [(r["model"], r["bits"], r["head"], r["threads"]) for r in rows] == [
        ("austen", 2, "float", 1), ("austen", 2, "packed", 1)]
    for r in rows:
        assert r["speedup"] == pytest.approx(r["tokens_per_second"] / r["float_tokens_per_second"])
        assert r["cpu_speedup"] > 0
        assert r["new_tokens"] == 2 and r["text"].startswith(out["decode_prompt"])
        assert r["float_text"].startswith(out["decode_prompt"])
        assert r["kernels"] == [f"int{r['bits']}"]


@pytest.mark.parametrize("argv,msg", [
    (["--size", "100"], "multiple of 64"),
    (["--formats", "int3"], "formats must be among"),
    (["--batches", "0"], "must be a positive integer"),
    (["--threads", "999"], "--threads at most"),
    (["--decode-models", "gpt2"], "decode models must be among"),
    (["--decode-bits", "3"], "--decode-bits must be among"),
    (["--decode-heads", "int8"], "decode heads must be among"),
])
def test_bench_bad_arguments(argv, msg):
    with pytest.raises(UsageError, match=msg):
        kernels.main(argv)
