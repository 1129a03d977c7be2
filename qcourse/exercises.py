"""Build ``exercises/`` from ``solutions/``, and check that the two are in sync.

A solution notebook ``solutions/NN_slug.ipynb`` marks each answer with nbgrader's markers, inside a
function body::

    def round_to_grid(x, grid):
        ### BEGIN SOLUTION
        idx = (x[..., None] - grid).abs().argmin(-1)
        return grid[idx]
        ### END SOLUTION

``python -m qcourse.exercises build`` writes ``exercises/NN_slug.ipynb`` with every region replaced by a stub
at the indentation of the ``BEGIN`` line, all outputs cleared, and a first cell saying the file is generated.
``python -m qcourse.exercises check`` exits non-zero and lists every exercise notebook that differs from what
``build`` would write (edited by hand, stale, missing, or without a solution).

>>> src = '''def f(x):
...     ### BEGIN SOLUTION
...     return 2 * x
...     ### END SOLUTION'''
>>> print(strip_solutions(src))
def f(x):
    # YOUR CODE HERE
    raise NotImplementedError()
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nbformat

__all__ = [
    "BEGIN",
    "END",
    "STUB",
    "SolutionMarkerError",
    "Difference",
    "strip_solutions",
    "exercise_notebook",
    "exercise_text",
    "solution_digest",
    "solution_files",
    "build",
    "check",
    "main",
]

BEGIN = "### BEGIN SOLUTION"
END = "### END SOLUTION"
#: the two lines that replace each solution region (indented like the ``BEGIN`` line)
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")

# lesson stems shared by notebooks/, solutions/ and exercises/ (DESIGN.md): "NN_slug"
_STEM = re.compile(r"^\d\d_[a-z0-9_]+$")
# any line mentioning a marker word, to catch typos ("## BEGIN SOLUTION", "### BEGIN SOLUTIONS") that
# would otherwise leak an answer into the exercise
_MARKERISH = re.compile(r"(BEGIN|END)\s+SOLUTION", re.IGNORECASE)
_HEADER_ID = "qcourse-generated-header"


class SolutionMarkerError(ValueError):
    """A malformed solution region: nested, unterminated, unmatched, misspelt, or not inside a function."""


@dataclass(frozen=True)
class Difference:
    """One exercise notebook that is not what ``build`` would write."""

    path: Path
    reason: str  # "differs" | "missing" | "extra"

    def __str__(self) -> str:
        text = {
            "differs": "differs from what `build` writes (edited by hand, or its solution changed since)",
            "missing": "is missing (its solution exists)",
            "extra": "has no solution notebook (stale: delete it, or restore its solution)",
        }[self.reason]
        return f"{self.path}: {text}"


def strip_solutions(source: str, where: str = "<cell>") -> str:
    """Replace every ``### BEGIN SOLUTION`` … ``### END SOLUTION`` region of ``source`` with a stub.

    The stub is ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` at the indentation of the ``BEGIN``
    line. A region must sit inside a function body (indented), so the exercise notebook still runs from top
    to bottom and raises only when the learner's unfinished function is called.

    Parameters
    ----------
    source : str
        The code cell's source.
    where : str
        Names the file and cell in error messages, e.g. ``"solutions/01_x.ipynb, cell 4"``.

    Returns
    -------
    str
        The source with every region replaced; unchanged when it has none.

    Raises
    ------
    SolutionMarkerError
        For a nested or unterminated ``BEGIN``, an ``END`` without ``BEGIN``, a misspelt marker, or a region
        at top level. The message names ``where`` and the 1-based line.

    Examples
    --------
    >>> strip_solutions("x = 1")
    'x = 1'
    >>> strip_solutions("### BEGIN SOLUTION\\nx = 1\\n### END SOLUTION", where="s.ipynb, cell 2")
    Traceback (most recent call last):
    ...
    qcourse.exercises.SolutionMarkerError: s.ipynb, cell 2, line 1: a solution region must be inside a \
function body (indented); top-level code in a region would break the exercise notebook
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str; got {type(source).__name__}")
    out: list[str] = []
    begin_line: int | None = None
    for lineno, line in enumerate(source.split("\n"), start=1):
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if stripped == BEGIN:
            if begin_line is not None:
                raise SolutionMarkerError(
                    f"{where}, line {lineno}: nested {BEGIN!r} (the region opened on line {begin_line} "
                    f"has no {END!r} yet)")
            if not indent:
                raise SolutionMarkerError(
                    f"{where}, line {lineno}: a solution region must be inside a function body (indented); "
                    "top-level code in a region would break the exercise notebook")
            begin_line = lineno
            out.extend(indent + stub for stub in STUB)
        elif stripped == END:
            if begin_line is None:
                raise SolutionMarkerError(f"{where}, line {lineno}: {END!r} without a matching {BEGIN!r}")
            begin_line = None
        elif _MARKERISH.search(line):
            raise SolutionMarkerError(
                f"{where}, line {lineno}: misspelt solution marker {stripped!r}; write exactly {BEGIN!r} or "
                f"{END!r} on a line of its own")
        elif begin_line is None:
            out.append(line)
    if begin_line is not None:
        raise SolutionMarkerError(f"{where}, line {begin_line}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(out)


def _header_cell(solution_rel: str) -> nbformat.NotebookNode:
    text = (
        "> **Generated file: do not edit.** This exercise notebook was generated from "
        f"[`{solution_rel}`](../{solution_rel}) by `python -m qcourse.exercises build`, which replaced each "
        "answer with `# YOUR CODE HERE` / `raise NotImplementedError()`.\n"
        ">\n"
        "> Fill in each function, run its cell, then run the check cell below it. To change the exercise "
        "itself, edit the solution notebook and run `python -m qcourse.exercises build` from the repository "
        "root."
    )
    cell = nbformat.v4.new_markdown_cell(text)
    cell["id"] = _HEADER_ID
    return cell


def exercise_notebook(solution: nbformat.NotebookNode, solution_rel: str) -> nbformat.NotebookNode:
    """The exercise notebook for a solution notebook: regions stubbed, outputs cleared, header cell first.

    Parameters
    ----------
    solution : nbformat.NotebookNode
        A version-4 notebook.
    solution_rel : str
        Its path relative to the repository root (``"solutions/NN_slug.ipynb"``), quoted in the header cell
        and in error messages.

    Examples
    --------
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
    ...     "def f():\\n    ### BEGIN SOLUTION\\n    return 1\\n    ### END SOLUTION")])
    >>> ex = exercise_notebook(nb, "solutions/99_demo.ipynb")
    >>> [c.cell_type for c in ex.cells]
    ['markdown', 'code']
    >>> ex.cells[1].source.splitlines()[-1]
    '    raise NotImplementedError()'
    """
    if solution.get("nbformat") != 4:
        raise ValueError(f"{solution_rel}: notebooks must be nbformat 4; got {solution.get('nbformat')!r}")
    nb = copy.deepcopy(solution)
    # widget state saved by a front end is output, not source
    nb.metadata.pop("widgets", None)
    cells = []
    for index, cell in enumerate(nb.cells):
        where = f"{solution_rel}, cell {index}"
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source, where=where)
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        elif _MARKERISH.search(cell.source):
            raise SolutionMarkerError(
                f"{where}: solution markers are only allowed in code cells (inside function bodies); "
                f"this is a {cell.cell_type} cell")
        cells.append(cell)
    if any(c.get("id") == _HEADER_ID for c in cells):
        raise ValueError(f"{solution_rel}: cell id {_HEADER_ID!r} is reserved for the generated header")
    header = _header_cell(solution_rel)
    if nb.get("nbformat_minor", 0) < 5:
        del header["id"]  # cell ids exist from nbformat 4.5 on; keep the solution's minor version
    nb.cells = [header, *cells]
    meta = nb.metadata.setdefault("qcourse", {})
    meta["generated_from"] = solution_rel
    # the hash makes `check` see any edit of the solution, even one inside a region that the stub hides
    meta["solution_sha256"] = solution_digest(solution)
    return nb


def solution_digest(solution: nbformat.NotebookNode) -> str:
    """SHA-256 of a solution notebook's content: cell types, sources and metadata; outputs ignored.

    Running a solution and saving it leaves the digest unchanged; editing any cell (an answer included)
    changes it, so :func:`check` reports the exercise as stale.

    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", id="a")])
    >>> d = solution_digest(nb)
    >>> nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="1")]
    >>> solution_digest(nb) == d
    True
    >>> nb.cells[0].source = "x = 2"
    >>> solution_digest(nb) == d
    False
    """
    content = {
        "metadata": {k: v for k, v in solution.metadata.items() if k != "widgets"},
        "cells": [{k: v for k, v in c.items() if k not in ("outputs", "execution_count")}
                  for c in solution.cells],
    }
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def exercise_text(solution_path: Path, root: Path) -> str:
    """The exact text ``build`` writes for ``solution_path`` (sorted keys, indent 1, trailing newline)."""
    solution_path = Path(solution_path)
    rel = solution_path.resolve().relative_to(Path(root).resolve()).as_posix()
    solution = nbformat.read(solution_path, as_version=4)
    nb = exercise_notebook(solution, rel)
    # nbformat.writes sorts keys and indents by 1, as Jupyter does; pin the minor version we emit
    text = nbformat.writes(nb, version=4)
    return text if text.endswith("\n") else text + "\n"


def solution_files(root: Path) -> list[Path]:
    """Every ``solutions/NN_slug.ipynb`` under ``root``, sorted; other names are an error."""
    sol_dir = Path(root) / "solutions"
    if not sol_dir.is_dir():
        raise FileNotFoundError(f"no solutions/ folder under {Path(root).resolve()}; pass --root REPO")
    files = sorted(sol_dir.glob("*.ipynb"))
    bad = [p.name for p in files if not _STEM.match(p.stem)]
    if bad:
        raise ValueError(f"solution notebooks must be named NN_slug.ipynb (lower case); got {bad}")
    return files


def _expected(root: Path) -> dict[Path, str]:
    root = Path(root)
    return {root / "exercises" / p.name: exercise_text(p, root) for p in solution_files(root)}


def build(root: Path) -> list[Path]:
    """Write ``exercises/NN_slug.ipynb`` for every solution notebook; return the paths written.

    Files whose content is already right are left untouched (so their modification time does not change).
    Exercise notebooks without a solution are not deleted: :func:`check` reports them.
    """
    written = []
    expected = _expected(root)  # everything validated before anything is written
    (Path(root) / "exercises").mkdir(exist_ok=True)
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")
            written.append(path)
    return written


def check(root: Path) -> list[Difference]:
    """Every exercise notebook that differs from what :func:`build` would write; empty when in sync."""
    root = Path(root)
    expected = _expected(root)
    diffs = []
    for path, text in expected.items():
        if not path.exists():
            diffs.append(Difference(path, "missing"))
        elif path.read_text(encoding="utf-8") != text:
            diffs.append(Difference(path, "differs"))
    ex_dir = root / "exercises"
    if ex_dir.is_dir():
        for path in sorted(ex_dir.glob("*.ipynb")):
            if path not in expected:
                diffs.append(Difference(path, "extra"))
    return diffs


def _default_root() -> Path:
    cwd = Path.cwd()
    if (cwd / "solutions").is_dir():
        return cwd
    # an editable install lives in the repository: qcourse/ sits beside solutions/
    return Path(__file__).resolve().parent.parent


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m qcourse.exercises build|check [--root REPO]``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m qcourse.exercises",
        description="Generate exercises/ from solutions/ (build), or verify they are in sync (check).")
    parser.add_argument("command", choices=["build", "check"])
    parser.add_argument("--root", type=Path, default=None,
                        help="repository root holding solutions/ and exercises/ (default: the current "
                             "directory if it has solutions/, else the checkout qcourse is installed from)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    root = args.root if args.root is not None else _default_root()
    try:
        if args.command == "build":
            written = build(root)
            n = len(solution_files(root))
            for path in written:
                print(f"wrote {path}")
            print(f"{n} exercise notebook(s) from {root / 'solutions'}; {len(written)} changed")
            stale = [d for d in check(root) if d.reason == "extra"]
            for d in stale:
                print(f"warning: {d}", file=sys.stderr)
            return 0
        diffs = check(root)
    except (SolutionMarkerError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if diffs:
        print(f"{len(diffs)} exercise notebook(s) out of sync with solutions/:", file=sys.stderr)
        for d in diffs:
            print(f"  {d}", file=sys.stderr)
        print("run `python -m qcourse.exercises build` and commit the result", file=sys.stderr)
        return 1
    print(f"exercises/ in sync with solutions/ ({len(solution_files(root))} notebook(s))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
