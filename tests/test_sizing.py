"""Tests for qcourse.sizing: model bytes, GPU fit, and the 70B precision table."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse import formats as F
from qcourse import sizing as S
from qcourse.methods.aqlm import bits_per_weight_layers


def test_units_and_model_bytes() -> None:
    assert S.GB == 1e9 and S.GiB == 1024**3
    assert S.model_bytes(70e9, 16) == 140e9
    assert S.model_bytes(1, 8) == 1.0
    # "140 GB" of FP16 weights is 130.4 GiB: the figure nvidia-smi would show
    assert round(S.model_bytes(70e9, 16) / S.GiB, 1) == 130.4
    for bad in (0, -1, math.inf, math.nan, True, "70e9"):
        with pytest.raises(ValueError, match="n_params"):
            S.model_bytes(bad, 4)
        with pytest.raises(ValueError, match="bits_per_weight"):
            S.model_bytes(70e9, bad)


def test_smallest_gpu_is_the_first_that_holds_it() -> None:
    assert [name for name, _ in S.GPUS][0] == "RTX 3060 (12 GB)"
    mems = [m for _, m in S.GPUS]
    assert mems == sorted(mems)
    assert S.smallest_gpu(0) == S.GPUS[0][0]
    assert S.smallest_gpu(12e9) == "RTX 3060 (12 GB)"          # exactly full fits
    assert S.smallest_gpu(12e9 + 1) == "RTX 4090 (24 GB)"
    assert S.smallest_gpu(12e9, headroom=0.1) == "RTX 4090 (24 GB)"
    assert S.smallest_gpu(641e9) is None
    with pytest.raises(ValueError, match="headroom"):
        S.smallest_gpu(1e9, headroom=1.0)
    with pytest.raises(ValueError, match="n_bytes"):
        S.smallest_gpu(-1.0)


@settings(max_examples=100, deadline=None)
@given(st.floats(0, 1e12), st.floats(0, 0.9))
def test_smallest_gpu_matches_a_linear_scan(n_bytes: float, headroom: float) -> None:
    holds = [name for name, mem in S.GPUS if n_bytes <= mem * 1e9 * (1 - headroom)]
    assert S.smallest_gpu(n_bytes, headroom) == (holds[0] if holds else None)


def test_aqlm_bits_on_70b_shapes_reproduce_the_reference_table() -> None:
    # REFERENCE.md §2.2, Llama-2-70B column (the AQLM paper's Eq. 10 over the real layer shapes)
    shapes = S.llama2_70b_linear_shapes()
    assert len(shapes) == 80 * 7 and sum(o * i for o, i in shapes) == 68_451_041_280
    for (m, b), expect in {(1, 16): 2.070, (1, 15): 1.911, (2, 8): 2.002, (1, 8): 1.002}.items():
        assert round(bits_per_weight_layers(shapes, m, b, 8), 3) == expect
    by = {r["name"]: r for r in S.precision_table(70e9)}
    assert by["AQLM 2×8 g8"]["bits_per_weight"] == bits_per_weight_layers(shapes)


def test_precision_table() -> None:
    rows = S.precision_table(70e9)
    assert all({"name", "bits_per_weight", "gigabytes", "fits_on"} <= set(r) for r in rows)
    by = {r["name"]: r for r in rows}
    assert by["FP16/BF16"]["gigabytes"] == 140.0
    assert by["INT4 g128 (scale+zero fp16)"]["fits_on"] == "A100 (40 GB)"
    assert by["2-bit g64 (scale+zero fp16)"]["gigabytes"] == pytest.approx(21.875)
    # the article's 3.1-bit and 1.58-bit rows do not fit the GPUs it names
    assert by["3-bit g128 (scale+zero fp16)"]["article_gigabytes"] > 24
    assert 70e9 * 1.58 / 8 / 1e9 > 12
    for r in rows:
        assert r["gigabytes"] == pytest.approx(70e9 * r["bits_per_weight"] / 8e9)
        assert r["gibibytes"] == pytest.approx(r["gigabytes"] * 1e9 / 2**30)
    # the table charges the formats module's own accounting
    assert by["MXFP4"]["bits_per_weight"] == F.bits_per_weight("mxfp4")
    # headroom can only push a model to a bigger GPU
    order = [g for g, _ in S.GPUS]
    tight = {r["name"]: r["fits_on"] for r in S.precision_table(70e9, headroom=0.2)}
    for r in rows:
        if r["fits_on"] and tight[r["name"]]:
            assert order.index(tight[r["name"]]) >= order.index(r["fits_on"])
    assert S.precision_table(1e15)[0]["fits_on"] is None
    assert [r["name"] for r in S.precision_table(7e9, formats=["MXFP4"])] == ["MXFP4"]
    with pytest.raises(ValueError, match="headroom"):
        S.precision_table(70e9, headroom=1.0)
    with pytest.raises(ValueError, match="unknown"):
        S.precision_table(70e9, formats=["FP64"])
