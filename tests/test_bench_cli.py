"""``python -m qcourse.bench``: every benchmark answers bad arguments with a usage line and exit status 2,
never a traceback (issue 9), and accepts what its method supports (``hqq --bits 1.58``)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qcourse import bench
from qcourse.bench import UsageError

ROOT = Path(__file__).resolve().parent.parent

# bad arguments of the benchmarks written with this test (later ones get the generic test below)
BAD = {
    "hqq": [
        (["--bits", "abc"], "argument --bits: bits must be numbers"),
        (["--bits", "nan"], "argument --bits: bits must be positive"),
        (["--bits", "1.5"], r"argument --bits: \[1.5\] not supported by HQQ; it supports \[1, 1.58, 2"),
        (["--bits", "9"], r"argument --bits: \[9\] not supported by HQQ"),
        (["--size", "-5"], "argument --size: must be a positive integer; got '-5'"),
        (["--size", "0"], "argument --size: must be a positive integer"),
        (["--size", "1e3"], "argument --size: must be a positive integer"),
        (["--threads", "0"], "argument --threads: must be a positive integer; got '0'"),
        (["--group-size", "0"], "argument --group-size: must be a positive integer"),
        (["--size", "96", "--group-size", "64"], "argument --group-size: 64 does not divide --size 96"),
        (["--seed", "-1"], "argument --seed: must be a non-negative integer"),
        (["--dist", "cauchy"], "argument --dist: invalid choice"),
        (["--axis", "2"], "argument --axis: invalid choice"),
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    ],
    "quality": [
        (["--bits", "abc"], "argument --bits: bits must be numbers"),
        (["--bits", "-2"], "argument --bits: bits must be positive"),
        (["--methods", "rtn", "--bits", "1.58"], r"argument --bits: \[1.58\] not supported by method 'rtn'"),
        (["--methods", "nope"], r"argument --methods: unknown method\(s\) \['nope'\]; available: \["),
        (["--methods", ","], "argument --methods: give at least one name"),
        (["--tokens", "-5"], "argument --tokens: must be a positive integer"),
        (["--calib-sequences", "0"], "argument --calib-sequences: must be a positive integer"),
        (["--group-size", "x"], "argument --group-size: group size must be a positive integer or 'none'"),
        (["--seed", "-1"], "argument --seed: must be a non-negative integer"),
        (["--model", "gpt5"], "argument --model: invalid choice"),
    ],
}


def _print_help(name: str) -> None:
    with pytest.raises(SystemExit) as info:  # argparse prints the help and exits 0
        bench.run(name, ["--help"])
    assert info.value.code == 0


@pytest.mark.parametrize("name", bench.available())
def test_every_benchmark_refuses_generic_bad_arguments(name, capsys, monkeypatch):
    """Benchmarks added later are held to the same rule: usage line and exit 2 for what every bench
    shares (unknown options; seeds and thread counts where the bench has them)."""
    import qcourse.lm

    monkeypatch.setattr(qcourse.lm, "load", lambda *a, **k: pytest.fail("work started before validation"))
    _print_help(name)
    options = capsys.readouterr().out
    cases = [(["--no-such-option"], "unrecognized arguments: --no-such-option")]
    if "--seed" in options:
        cases.append((["--seed", "-1"], "argument --seed: must be a non-negative integer"))
    if "--threads" in options:
        cases.append((["--threads", "0"], "argument --threads: must be a positive integer"))
    for argv, message in cases:
        assert bench.main([name, *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"usage: python -m qcourse.bench {name}") and message in err, err


@pytest.mark.parametrize(("name", "argv", "message"),
                         [(n, a, m) for n, cases in BAD.items() for a, m in cases],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_arguments_print_usage_and_exit_2(name, argv, message, capsys, monkeypatch):
    import qcourse.lm

    monkeypatch.setattr(qcourse.lm, "load", lambda *a, **k: pytest.fail("work started before validation"))
    assert bench.main([name, *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"usage: python -m qcourse.bench {name}")
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"python -m qcourse.bench {name}: error: ")
    assert re.search(message, last), last
    with pytest.raises(UsageError, match=message):  # a library call raises instead of exiting
        bench.run(name, argv)


def test_unknown_benchmark_and_no_arguments(capsys):
    assert bench.main(["nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m qcourse.bench NAME [options]")
    assert f"error: unknown benchmark 'nope'; choose from {bench.available()}" in err
    listing = "benchmarks: " + ", ".join(bench.available())
    assert bench.main([]) == 2
    assert listing in capsys.readouterr().err
    assert bench.main(["--help"]) == 0
    assert listing in capsys.readouterr().out


def test_real_process_exit_code_and_no_traceback():
    res = subprocess.run([sys.executable, "-m", "qcourse.bench", "hqq", "--bits", "abc"],
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("usage: python -m qcourse.bench hqq")


def test_hqq_accepts_ternary(capsys):
    assert bench.main(["hqq", "--size", "64", "--bits", "1.58", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert row["bits"] == 1.58 and 0 < row["ours_rel_error"] < 1
    if row["ref_rel_error"] is not None:  # the hqq package supports 1.58 bits too
        assert row["ours_rel_error"] == pytest.approx(row["ref_rel_error"], rel=0.05)


def test_hqq_width_the_reference_lacks_is_noted():
    out = bench.run("hqq", ["--size", "64", "--bits", "7", "--threads", "1"])
    (row,) = out["rows"]
    assert row["ours_rel_error"] > 0
    if out["reference_version"][0].isdigit():  # the hqq package is installed
        assert row["ref_rel_error"] is None and "supports nbits" in row["ref_note"]
