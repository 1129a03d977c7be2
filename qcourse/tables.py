"""One plain-text table printer for the whole package: aligned columns, sensibly formatted numbers.

Every table the course prints (format ranges, error tables, sweep results, quantization reports, outlier
statistics) goes through :func:`format_table`, so they all look alike and need neither pandas nor HTML.

>>> rows = [{"method": "rtn", "bits": 2, "ppl": 412.3456, "note": None},
...         {"method": "hqq", "bits": 2, "ppl": 9.87654, "note": "best"}]
>>> print(format_table(rows))
method  bits   ppl  note
rtn        2   412  -
hqq        2  9.88  best
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["format_table", "format_number", "MISSING"]

#: what a cell shows for ``None`` or for a key its row does not have
MISSING = "-"

#: one column's format: a format spec for :func:`format` (``".2e"``, ``",d"``) or a function value -> text
CellFormat = str | Callable[[Any], str]


def _as_number(v: Any) -> int | float | None:
    """``v`` as a Python int/float when it is a real number (numpy and 0-d torch scalars too), else None.

    ``bool`` is not a number here: ``True`` prints as text, not as 1.
    """
    if isinstance(v, bool):
        return None
    if type(v).__name__ == "Tensor" and getattr(v, "ndim", None) == 0:  # a 0-d torch tensor, without torch
        v = v.item()
        if isinstance(v, bool):
            return None
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        return float(v)
    return None


def _check_digits(digits: Any) -> None:
    if isinstance(digits, bool) or not isinstance(digits, int) or not 1 <= digits <= 17:
        raise ValueError(f"digits must be an int in 1..17; got {digits!r}")


def format_number(v: float, digits: int = 3) -> str:
    """A float as text with ``digits`` significant digits, switching to scientific notation only when needed.

    Between 1e-3 and ``10**digits`` the value keeps ``digits`` significant digits (trailing zeros dropped);
    from ``10**digits`` up to 1e6 it is rounded to an integer (exponents there read worse than the extra
    digits); outside that range, and for integers of 1e6 and beyond, it is written as ``1.23e+07``.

    >>> [format_number(v) for v in (0.0, 4.3125, 20.0, 0.0012345, 1234.5, 3.5e7, -2.5e-6, float("nan"))]
    ['0', '4.31', '20', '0.00123', '1234', '3.5e+07', '-2.5e-06', 'nan']
    >>> format_number(4.3125, digits=5)
    '4.3125'
    """
    _check_digits(digits)
    v = float(v)
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return str(v)
    a = abs(v)
    if 1e-3 <= a < 10**digits:
        return f"{v:.{digits}g}"
    if 10**digits <= a < 1e6:
        return f"{v:.0f}"
    return _sci(v, digits)


def _sci(v: float, digits: int) -> str:
    """Scientific notation with at most ``digits`` significant digits (trailing mantissa zeros dropped)."""
    mant, exp = f"{v:.{digits - 1}e}".split("e")
    if "." in mant:
        mant = mant.rstrip("0").rstrip(".")
    return f"{mant}e{exp}"


def _resolve_columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        if not rows:
            raise ValueError("rows is empty and no columns were given: nothing to print")
        seen: dict[str, None] = {}
        for r in rows:
            seen.update(dict.fromkeys(r))
        return list(seen)
    if isinstance(columns, str) or not all(isinstance(c, str) for c in columns):
        raise TypeError(f"columns must be a sequence of str (column keys); got {columns!r}")
    if rows:
        absent = [c for c in columns if not any(c in r for r in rows)]
        if absent:
            keys = sorted({k for r in rows for k in r})
            raise ValueError(f"columns {absent} are in no row; available keys: {keys}")
    return list(columns)


def _resolve_headers(columns: list[str], headers: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    if headers is None:
        return columns
    if isinstance(headers, Mapping):
        unknown = [k for k in headers if k not in columns]
        if unknown:
            raise ValueError(f"headers names columns {unknown} that are not printed; columns: {columns}")
        return [str(headers.get(c, c)) for c in columns]
    if isinstance(headers, str) or len(headers) != len(columns):
        raise ValueError(f"headers must be a mapping column -> text or a sequence of {len(columns)} texts "
                         f"(one per column); got {headers!r}")
    return [str(h) for h in headers]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
                 headers: Mapping[str, str] | Sequence[str] | None = None, digits: int = 3,
                 formats: Mapping[str, CellFormat] | None = None) -> str:
    """Rows of dicts as a plain-text table with aligned columns.

    Parameters
    ----------
    rows
        One mapping per row (column key -> value). A row may lack a column: its cell shows ``-``.
    columns
        Keys to print, in order; ``None`` prints every key, in order of first appearance.
        A key that no row has is an error (a typo, not an empty column).
    headers
        Header texts: a mapping ``column -> text`` (others keep their key) or one text per column.
    digits
        Significant digits of floats without a format of their own (see :func:`format_number`).
    formats
        Per-column format: a spec for :func:`format` (``".2e"``, ``".1f"``, ``",d"``) or a function
        ``value -> str``. Applied to every value of the column except ``None``.

    Returns
    -------
    str
        The header line and one line per row, columns two spaces apart, trailing spaces stripped.
        A column whose values are all numbers is right-aligned, any other left-aligned. ``None`` is ``-``;
        ints print in full; floats follow :func:`format_number`; other values print as ``str(value)``.

    Examples
    --------
    >>> rows = [{"name": "a", "x": 1.23456, "n": 3}, {"name": "bb", "x": 20.0, "n": None}]
    >>> print(format_table(rows, ["name", "x", "n"]))
    name     x  n
    a     1.23  3
    bb      20  -
    >>> print(format_table(rows, ["x", "name"], headers={"x": "value"}, formats={"x": ".1f"}))
    value  name
      1.2  a
     20.0  bb
    >>> format_table(rows, ["name", "size"])
    Traceback (most recent call last):
    ...
    ValueError: columns ['size'] are in no row; available keys: ['n', 'name', 'x']
    """
    if isinstance(rows, Mapping) or isinstance(rows, str) or not isinstance(rows, Sequence):
        raise TypeError(f"rows must be a sequence of mappings (one dict per row); got {type(rows).__name__}")
    bad = [i for i, r in enumerate(rows) if not isinstance(r, Mapping)]
    if bad:
        raise TypeError(f"rows must hold mappings (one dict per row); row {bad[0]} is "
                        f"{type(rows[bad[0]]).__name__}")
    _check_digits(digits)
    cols = _resolve_columns(rows, columns)
    heads = _resolve_headers(cols, headers)
    formats = dict(formats or {})
    unknown = [k for k in formats if k not in cols]
    if unknown:
        raise ValueError(f"formats names columns {unknown} that are not printed; columns: {cols}")
    for k, f in formats.items():
        if not (isinstance(f, str) or callable(f)):
            raise TypeError(f"formats[{k!r}] must be a format spec (str) or a function; "
                            f"got {type(f).__name__}")

    def cell(col: str, v: Any) -> tuple[str, bool]:
        """(text, is_number) of one value."""
        if v is None:
            return MISSING, True  # a gap does not make a numeric column textual
        num = _as_number(v)
        spec = formats.get(col)
        if spec is not None:
            try:
                text = spec(v) if callable(spec) else format(v if num is None else num, spec)
            except (ValueError, TypeError) as e:
                raise ValueError(f"formats[{col!r}] = {spec!r} cannot format {v!r}: {e}") from None
            return str(text), num is not None
        if num is None:
            return str(v), False
        return (str(num) if isinstance(num, int) else format_number(num, digits)), True

    grid = [[cell(c, r.get(c)) for c in cols] for r in rows]
    # numbers right-aligned so their digits line up; a column of gaps only is text
    right = [all(row[j][1] for row in grid) and any(r.get(c) is not None for r in rows)
             for j, c in enumerate(cols)]
    widths = [max([len(heads[j])] + [len(row[j][0]) for row in grid]) for j in range(len(cols))]

    def line(texts: Sequence[str]) -> str:
        parts = [t.rjust(w) if r else t.ljust(w) for t, w, r in zip(texts, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(heads), *(line([t for t, _ in row]) for row in grid)])
