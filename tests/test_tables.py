"""Tests for qcourse.tables: the one table printer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse.tables import MISSING, format_number, format_table


def test_alignment_and_defaults() -> None:
    rows = [{"name": "a", "x": 1.23456, "n": 3}, {"name": "longer", "x": 20.0, "n": 12345678}]
    lines = format_table(rows).splitlines()
    assert lines == [
        "name       x         n",
        "a       1.23         3",
        "longer    20  12345678",
    ]


def test_none_and_missing_keys_are_dashes_and_keep_numeric_alignment() -> None:
    rows = [{"a": 1.5, "b": None}, {"a": None}, {"a": 10.0, "b": 2}]
    lines = format_table(rows, ["a", "b"]).splitlines()
    assert lines == ["  a  b", "1.5  -", "  -  -", " 10  2"]
    assert MISSING == "-"


def test_columns_default_is_union_in_first_appearance_order() -> None:
    text = format_table([{"b": 1}, {"a": 2, "b": 3}])
    assert text.splitlines()[0] == "b  a"


def test_headers_mapping_and_sequence() -> None:
    rows = [{"x": 1.0, "y": "t"}]
    assert format_table(rows, headers={"x": "value"}).splitlines()[0] == "value  y"
    assert format_table(rows, ["y", "x"], headers=["Y", "X"]).splitlines()[0] == "Y  X"
    with pytest.raises(ValueError, match="one per column"):
        format_table(rows, headers=["only one"])
    with pytest.raises(ValueError, match="headers names columns"):
        format_table(rows, headers={"z": "Z"})


def test_per_column_formats_spec_and_callable() -> None:
    rows = [{"p": 0.000123, "shape": (4, 8), "n": 1234567}]
    text = format_table(rows, formats={"p": ".2e", "shape": lambda s: "×".join(map(str, s)), "n": ",d"})
    assert text.splitlines()[1].split() == ["1.23e-04", "4×8", "1,234,567"]
    with pytest.raises(ValueError, match=r"formats\['p'\] = '\.2e' cannot format 'text'"):
        format_table([{"p": "text"}], formats={"p": ".2e"})
    with pytest.raises(ValueError, match="formats names columns"):
        format_table(rows, ["p"], formats={"nope": ".1f"})
    with pytest.raises(TypeError, match="format spec"):
        format_table(rows, formats={"p": 3})


def test_numpy_and_torch_scalars_are_numbers_bools_are_text() -> None:
    rows = [{"a": np.float32(0.5), "b": np.int64(7), "c": torch.tensor(2.25), "d": True}]
    assert format_table(rows).splitlines()[1].split() == ["0.5", "7", "2.25", "True"]
    # bools are text: left-aligned
    assert format_table([{"d": True}, {"d": False}]).splitlines() == ["d", "True", "False"]


def test_digits() -> None:
    assert format_table([{"x": math.pi}], digits=5).splitlines()[1] == "3.1416"
    with pytest.raises(ValueError, match="digits must be an int in 1..17"):
        format_table([{"x": 1.0}], digits=0)
    with pytest.raises(ValueError, match="digits"):
        format_number(1.0, digits=True)


def test_bad_rows_and_columns() -> None:
    with pytest.raises(ValueError, match="columns \\['size'\\] are in no row"):
        format_table([{"name": "a"}], ["name", "size"])
    with pytest.raises(ValueError, match="rows is empty"):
        format_table([])
    with pytest.raises(TypeError, match="sequence of mappings"):
        format_table({"a": 1})
    with pytest.raises(TypeError, match="row 1 is list"):
        format_table([{"a": 1}, [1, 2]])
    with pytest.raises(TypeError, match="columns must be a sequence of str"):
        format_table([{"a": 1}], "a")
    # an empty table with explicit columns is just its header
    assert format_table([], ["a", "b"]) == "a  b"


def test_format_number_ranges() -> None:
    cases = [(0.0, "0"), (-0.0, "0"), (1.0, "1"), (0.5, "0.5"), (123.456, "123"), (999.4, "999"),
             (1234.5, "1234"), (999999.0, "999999"), (1e6, "1e+06"), (2.5e-4, "2.5e-04"),
             (float("inf"), "inf"), (float("-inf"), "-inf")]
    for v, text in cases:
        assert format_number(v) == text, v
    assert format_number(float("nan")) == "nan"


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e30, max_value=1e30),
       st.integers(1, 8))
def test_format_number_round_trips_to_its_digits(v: float, digits: int) -> None:
    text = format_number(v, digits)
    back = float(text)
    # never more error than rounding to `digits` significant digits (or to an integer in [10**d, 1e6))
    tol = 0.5 * 10 ** (math.floor(math.log10(abs(v))) - digits + 1) if v else 0.0
    assert abs(back - v) <= max(tol, 0.5 if abs(v) >= 10**digits else 0.0) * (1 + 1e-9)
    assert len(text) <= digits + 8


@settings(max_examples=100, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "s": st.text(alphabet="abcxyz", max_size=6),
    "v": st.one_of(st.none(), st.floats(-1e9, 1e9), st.integers(-10**9, 10**9)),
}), min_size=1, max_size=6))
def test_every_line_has_the_same_cells_and_widths(rows: list[dict]) -> None:
    lines = format_table(rows, ["s", "v"]).splitlines()
    assert len(lines) == len(rows) + 1
    # the numeric column is right-aligned: every line ends at the same place (nothing after it)
    assert len({len(line) for line in lines}) == 1


def test_statistics_table_like_the_lessons_print() -> None:
    rows = [{"name": "layers.0.q", "kurtosis": 3.01234, "frac": 0.0},
            {"name": "x", "kurtosis": 26.5, "frac": 2e-6}]
    lines = format_table(rows, ["name", "kurtosis", "frac"]).splitlines()
    assert lines == [
        "name        kurtosis   frac",
        "layers.0.q      3.01      0",
        "x               26.5  2e-06",
    ]
