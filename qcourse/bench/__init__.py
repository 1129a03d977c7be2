"""Benchmarks: ``python -m qcourse.bench NAME [options]`` prints one JSON object.

Each benchmark is a module ``qcourse.bench.NAME`` with a ``main(argv) -> dict`` function. Benchmarks
measure; they never fail because a machine is slow.

Bad arguments never end in a traceback: every benchmark parses with :class:`ArgumentParser`, whose errors
raise :class:`UsageError` (a library call must not ``sys.exit``), and the command line turns that into the
benchmark's usage line, the error, and exit status 2. The argument types below validate values before any
work starts.

>>> positive_int("3")
3
>>> positive_int("-5")
Traceback (most recent call last):
...
argparse.ArgumentTypeError: must be a positive integer; got '-5'
>>> bits_list("2,1.58,4")
[2, 1.58, 4]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "median_seconds", "ArgumentParser", "UsageError", "available", "bits_list", "group_size", "main", "names",
    "non_negative_int", "positive_int", "run",
]


class UsageError(ValueError):
    """Bad benchmark arguments; ``usage`` is the benchmark's usage line, ``prog`` its command."""

    def __init__(self, message: str, usage: str = "", prog: str = "python -m qcourse.bench") -> None:
        super().__init__(message)
        self.usage, self.prog = usage, prog


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors raise :class:`UsageError` instead of exiting.

    >>> p = ArgumentParser(prog="python -m qcourse.bench demo")
    >>> _ = p.add_argument("--size", type=positive_int, default=4)
    >>> p.parse_args(["--size", "0"])
    Traceback (most recent call last):
    ...
    qcourse.bench.UsageError: argument --size: must be a positive integer; got '0'
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, self.format_usage(), self.prog)

    def fail(self, message: str) -> None:
        """Refuse a combination of values that each parsed (e.g. bits a method does not support)."""
        self.error(message)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    if not text.strip().isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text!r}")
    return int(text)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (seeds).

    >>> non_negative_int("0")
    0
    """
    if not text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {text!r}")
    return int(text)


def bits_list(text: str) -> list[int | float]:
    """argparse type: bit widths separated by commas (``2,3,4``; ``1.58`` for ternary); whole numbers as int.

    Which widths a method supports is checked by the benchmark, against the method's ``supported_bits``.
    """
    out: list[int | float] = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bits must be numbers separated by commas, e.g. 2,3,4; got {text!r}"
            ) from None
        if not 0 < v < float("inf"):
            raise argparse.ArgumentTypeError(f"bits must be positive; got {text!r}")
        out.append(int(v) if v.is_integer() else v)
    return out


def group_size(text: str) -> int | None:
    """argparse type: a positive group size, or ``none`` / ``per-channel`` / ``row`` for one group per row.

    >>> group_size("64"), group_size("none")
    (64, None)
    """
    if text.lower() in {"none", "per-channel", "row"}:
        return None
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"group size must be a positive integer or 'none'; got {text!r}")
    return int(text)


def names(text: str) -> list[str]:
    """argparse type: comma-separated names (at least one).

    >>> names("rtn, hqq")
    ['rtn', 'hqq']
    """
    out = [s.strip() for s in text.split(",") if s.strip()]
    if not out:
        raise argparse.ArgumentTypeError("give at least one name, e.g. rtn,hqq,gptq")
    return out


def available() -> list[str]:
    """Names of the benchmarks that ship.

    >>> "hqq" in available() and "quality" in available()
    True
    """
    import qcourse.bench as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


def run(name: str, argv: Sequence[str] = ()) -> dict:
    """Run benchmark ``name`` with command-line style ``argv`` and return its result.

    Raises :class:`UsageError` for an unknown name or bad arguments.
    """
    if name not in available():
        raise UsageError(f"unknown benchmark {name!r}; choose from {available()}", _USAGE)
    return importlib.import_module(f"qcourse.bench.{name}").main(list(argv))


_USAGE = "usage: python -m qcourse.bench NAME [options]\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run a benchmark and print its JSON; bad arguments print usage and return 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        text = _USAGE + "benchmarks: " + ", ".join(available()) + "\n" + \
            "options of one: python -m qcourse.bench NAME --help\n"
        print(text, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        result = run(argv[0], argv[1:])
    except UsageError as exc:
        print(exc.usage, end="", file=sys.stderr)
        print(f"{exc.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` after one untimed warm-up call (allocator, first-call
    dispatch, numba compilation).

    >>> median_seconds(lambda: sum(range(100)), repeats=3) >= 0
    True
    """
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
