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
``build`` would write: edited by hand (a learner's work), stale (its solution changed), missing, or without
a solution.

``build`` never destroys a learner's work. Each exercise records the digest of the cells it was built with;
an exercise whose cells no longer match that digest (and are not what ``build`` writes now) was edited by
hand, and ``build`` leaves it alone and says so. ``build --force`` regenerates it after moving the edited
file to ``exercises/.backup/NN_slug.<UTC time>.ipynb``; nothing is ever deleted.

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
import ast
import copy
import datetime
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
    "BACKUP_DIR",
    "SolutionError",
    "SolutionMarkerError",
    "Difference",
    "strip_solutions",
    "exercise_notebook",
    "exercise_digest",
    "exercise_text",
    "solution_digest",
    "solution_files",
    "course_root",
    "BuildResult",
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
#: where ``build --force`` moves an edited exercise before regenerating it (relative to ``exercises/``)
BACKUP_DIR = ".backup"


class SolutionError(ValueError):
    """A solution notebook ``build`` cannot turn into an exercise: unreadable, not nbformat 4, or code that
    does not compile (the message names the file, and the cell and line where there is one)."""


class SolutionMarkerError(SolutionError):
    """A malformed solution region: nested, unterminated, unmatched, misspelt, misindented, or not inside a
    function."""


_REASONS = {
    "stale": "stale: its solution changed since it was built (no edits by hand); `build` updates it",
    "run": ("its cells are unedited but the file differs (saved with outputs, or by an older qcourse); "
            "`build` rewrites it"),
    "edited": ("edited by hand (your work?): `build` leaves it alone; `build --force` regenerates it after "
               f"moving it to exercises/{BACKUP_DIR}/"),
    "missing": "is missing (its solution exists); `build` writes it",
    "extra": ("has no solution notebook: restore its solution, or move it away yourself "
              "(`build` never deletes)"),
}


@dataclass(frozen=True)
class Difference:
    """One exercise notebook that is not what ``build`` would write.

    ``reason`` is ``"edited"`` (its cells differ from what the last build wrote: someone's work, which
    ``build`` will not overwrite), ``"stale"`` (untouched, but its solution changed), ``"run"`` (untouched
    cells, saved with outputs), ``"missing"`` or ``"extra"`` (no solution notebook).
    """

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {_REASONS[self.reason]}"


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
        For a nested or unterminated ``BEGIN``, an ``END`` without ``BEGIN``, a misspelt marker, a region
        at top level, or a ``BEGIN`` indented differently from the first line of code it encloses. The
        message names ``where`` and the 1-based line.

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
    begin_indent = ""
    first_code: bool = False  # whether the open region's first code line has been seen
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
            begin_line, begin_indent, first_code = lineno, indent, False
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
        elif not first_code and stripped and not stripped.startswith("#"):
            # the stub takes the BEGIN line's indentation, so the block it replaces must start at exactly
            # that indentation; otherwise the stub is misplaced or the exercise raises IndentationError
            # (later lines may be continuation lines at any indentation: exercise_notebook compiles the
            # result, which catches the rest)
            if indent != begin_indent:
                raise SolutionMarkerError(
                    f"{where}, line {begin_line}: {BEGIN!r} is indented by {len(begin_indent)} but the code "
                    f"it encloses starts at indentation {len(indent)} (line {lineno}); indent the markers "
                    "exactly like the block they enclose, or the stub would break the exercise's indentation")
            first_code = True
    if begin_line is not None:
        raise SolutionMarkerError(f"{where}, line {begin_line}: {BEGIN!r} is never closed by {END!r}")
    return "\n".join(out)


def _header_cell(solution_rel: str) -> nbformat.NotebookNode:
    text = (
        "> **Your exercise notebook.** It was generated from "
        f"[`{solution_rel}`](../{solution_rel}) by `python -m qcourse.exercises build`, which replaced each "
        "answer with `# YOUR CODE HERE` / `raise NotImplementedError()`.\n"
        ">\n"
        "> Fill in each function here, run its cell, then run the check cell below it. Your edits are safe: "
        "`build` never overwrites an exercise you have edited (`build --force` first moves it to "
        f"`exercises/{BACKUP_DIR}/`). Instructors change the exercise itself by editing the solution "
        "notebook and running `build` again."
    )
    cell = nbformat.v4.new_markdown_cell(text)
    cell["id"] = _HEADER_ID
    return cell


def _python_source(source: str) -> str:
    """A cell's source as plain Python: IPython syntax (``%magic``, ``!cmd``) turned into calls, line for
    line, so ``compile`` judges only the Python."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager
    except ImportError:  # pragma: no cover - IPython ships with Jupyter; without it, compile as is
        return source
    return TransformerManager().transform_cell(source)


def _compile_cell(source: str, where: str, what: str) -> None:
    try:
        compile(_python_source(source), where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT,
                dont_inherit=True)
    except SyntaxError as exc:
        line = f", line {exc.lineno}" if exc.lineno else ""
        text = f": {exc.text.strip()!r}" if exc.text and exc.text.strip() else ""
        raise SolutionError(f"{where}{line}: {what} does not compile ({type(exc).__name__}: {exc.msg}){text}"
                            ) from None


def exercise_notebook(solution: nbformat.NotebookNode, solution_rel: str) -> nbformat.NotebookNode:
    """The exercise notebook for a solution notebook: regions stubbed, outputs cleared, header cell first.

    Every code cell of the solution, and of the exercise made from it, must compile (IPython magics
    allowed), so a typo in a solution never ships as a broken exercise.

    Parameters
    ----------
    solution : nbformat.NotebookNode
        A version-4 notebook.
    solution_rel : str
        Its path relative to the repository root (``"solutions/NN_slug.ipynb"``), quoted in the header cell
        and in error messages.

    Raises
    ------
    SolutionError
        Not nbformat 4, or a code cell with a syntax error (the message names file, cell and line).
    SolutionMarkerError
        A malformed solution region (see :func:`strip_solutions`).

    Examples
    --------
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
    ...     "def f():\\n    ### BEGIN SOLUTION\\n    return 1\\n    ### END SOLUTION")])
    >>> ex = exercise_notebook(nb, "solutions/99_demo.ipynb")
    >>> [c.cell_type for c in ex.cells]
    ['markdown', 'code']
    >>> ex.cells[1].source.splitlines()[-1]
    '    raise NotImplementedError()'
    >>> nb.cells[0].source = "def f(:\\n    return 1"
    >>> exercise_notebook(nb, "solutions/99_demo.ipynb")
    Traceback (most recent call last):
    ...
    qcourse.exercises.SolutionError: solutions/99_demo.ipynb, cell 0, line 1: the solution does not \
compile (SyntaxError: invalid syntax): 'def f(:'
    """
    if solution.get("nbformat") != 4:
        raise SolutionError(
            f"{solution_rel}: is nbformat {solution.get('nbformat')!r}; qcourse builds exercises from "
            "nbformat 4 notebooks only (open and save it in JupyterLab, which writes nbformat 4)")
    nb = copy.deepcopy(solution)
    # widget state saved by a front end is output, not source
    nb.metadata.pop("widgets", None)
    cells = []
    for index, cell in enumerate(nb.cells):
        where = f"{solution_rel}, cell {index}"
        if cell.cell_type == "code":
            stripped = strip_solutions(cell.source, where=where)  # marker errors first: most specific
            _compile_cell(cell.source, where, "the solution")
            cell.source = stripped
            _compile_cell(cell.source, where, "the exercise made from it (after stubbing its regions)")
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
        elif _MARKERISH.search(cell.source):
            raise SolutionMarkerError(
                f"{where}: solution markers are only allowed in code cells (inside function bodies); "
                f"this is a {cell.cell_type} cell")
        cells.append(cell)
    if any(c.get("id") == _HEADER_ID for c in cells):
        raise SolutionError(f"{solution_rel}: cell id {_HEADER_ID!r} is reserved for the generated header")
    header = _header_cell(solution_rel)
    if nb.get("nbformat_minor", 0) < 5:
        del header["id"]  # cell ids exist from nbformat 4.5 on; keep the solution's minor version
    nb.cells = [header, *cells]
    meta = nb.metadata.setdefault("qcourse", {})
    meta["generated_from"] = solution_rel
    # the hash makes `check` see any edit of the solution, even one inside a region that the stub hides
    meta["solution_sha256"] = solution_digest(solution)
    # what build wrote, so that a later build can tell an untouched exercise from a learner's work
    meta["exercise_sha256"] = exercise_digest(nb)
    return nb


def _digest(content: object) -> str:
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


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
    return _digest({
        "metadata": {k: v for k, v in solution.metadata.items() if k != "widgets"},
        "cells": [{k: v for k, v in c.items() if k not in ("outputs", "execution_count")}
                  for c in solution.cells],
    })


def exercise_digest(exercise: nbformat.NotebookNode) -> str:
    """SHA-256 of what a learner can edit in an exercise: the type and source of every cell, in order.

    ``build`` records it in the exercise's metadata; an exercise whose digest no longer matches was edited
    (a cell changed, added or removed). Outputs, execution counts and metadata are not part of it, so
    running an exercise and saving it is not an edit.

    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    >>> d = exercise_digest(nb)
    >>> nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="1")]
    >>> exercise_digest(nb) == d
    True
    >>> nb.cells.append(nbformat.v4.new_code_cell("my_scratch = 2"))
    >>> exercise_digest(nb) == d
    False
    """
    return _digest([[c.get("cell_type"), c.get("source")] for c in exercise.cells])


def _read_notebook(path: Path, rel: str) -> nbformat.NotebookNode:
    """Read a solution notebook, turning every way it can be unreadable into a :class:`SolutionError`."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SolutionError(f"{rel}: not a notebook (not valid UTF-8 JSON: {exc})") from None
    version = raw.get("nbformat") if isinstance(raw, dict) else None
    if version != 4:
        # nbformat would convert a version-3 notebook with random cell ids (a different exercise on every
        # build), or fail inside jsonschema: refuse it by name instead
        raise SolutionError(
            f"{rel}: is nbformat {version!r}; qcourse builds exercises from nbformat 4 notebooks only "
            "(open and save it in JupyterLab, or run `jupyter nbconvert --to notebook --nbformat 4 "
            f"--inplace {rel}`)")
    try:
        nbformat.validate(nbformat.from_dict(raw))  # the file's own form: sources may be lists of lines
    except nbformat.ValidationError as exc:
        raise SolutionError(f"{rel}: not a valid nbformat 4 notebook: {exc.message}") from None
    return nbformat.reads(text, as_version=4)  # joins list-of-lines sources


def exercise_text(solution_path: Path, root: Path) -> str:
    """The exact text ``build`` writes for ``solution_path`` (sorted keys, indent 1, trailing newline)."""
    solution_path = Path(solution_path)
    rel = solution_path.resolve().relative_to(Path(root).resolve()).as_posix()
    nb = exercise_notebook(_read_notebook(solution_path, rel), rel)
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


def course_root(root: str | Path | None = None) -> Path:
    """The course checkout to act on: ``root`` if given, else the current directory; it must hold
    ``solutions/``. Never the checkout the package happens to be installed from.

    >>> course_root("/nonexistent-course")
    Traceback (most recent call last):
    ...
    FileNotFoundError: /nonexistent-course has no solutions/ folder: pass --root DIR naming a course \
checkout (the folder holding solutions/ and exercises/)
    """
    folder = Path.cwd() if root is None else Path(root)
    if not (folder / "solutions").is_dir():
        where = f"the current directory {folder}" if root is None else str(folder)
        raise FileNotFoundError(
            f"{where} has no solutions/ folder: "
            + ("run this from the root of a course checkout, or pass --root DIR" if root is None else
               "pass --root DIR naming a course checkout (the folder holding solutions/ and exercises/)"))
    return folder


def _expected(root: Path) -> dict[Path, str]:
    root = Path(root)
    return {root / "exercises" / p.name: exercise_text(p, root) for p in solution_files(root)}


def _untouched(text: str, expected: str) -> bool | None:
    """Whether an existing exercise holds nothing of a learner's: ``True`` if its cells are what some build
    wrote (its recorded digest matches) or what this build writes; ``False`` if edited; ``None`` if equal
    to ``expected`` byte for byte."""
    if text == expected:
        return None
    try:
        nb = nbformat.reads(text, as_version=nbformat.NO_CONVERT)
        digest = exercise_digest(nb)
        recorded = nb.metadata.get("qcourse", {}).get("exercise_sha256")
    except Exception:  # noqa: BLE001 - an exercise that does not even parse may be half-typed work: keep it
        return False
    if digest == recorded:
        return True
    # its cells below the header are exactly what this build writes: no one's work is in it (this also
    # recognises an exercise from an older qcourse, whose header differed and which recorded no digest)
    fresh = nbformat.reads(expected, as_version=4)
    return _body_digest(nb) == _body_digest(fresh)


def _body_digest(nb: nbformat.NotebookNode) -> str:
    body = copy.copy(nb)
    body.cells = nb.cells[1:]  # the generated header is always cell 0
    return exercise_digest(body)


def _classify(path: Path, expected: str, solution_sha: str) -> str | None:
    """``None`` (in sync), ``"missing"``, ``"stale"``, ``"run"`` or ``"edited"``."""
    if not path.exists():
        return "missing"
    text = path.read_text(encoding="utf-8", errors="replace")
    untouched = _untouched(text, expected)
    if untouched is None:
        return None
    if not untouched:
        return "edited"
    try:
        recorded = json.loads(text).get("metadata", {}).get("qcourse", {}).get("solution_sha256")
    except (json.JSONDecodeError, AttributeError):
        recorded = None
    return "run" if recorded == solution_sha else "stale"


def _differences(root: Path) -> tuple[dict[Path, str], list[Difference]]:
    root = Path(root)
    expected = _expected(root)  # validates every solution before anything is judged or written
    diffs = []
    for path, text in expected.items():
        solution_sha = json.loads(text)["metadata"]["qcourse"]["solution_sha256"]
        reason = _classify(path, text, solution_sha)
        if reason is not None:
            diffs.append(Difference(path, reason))
    ex_dir = root / "exercises"
    if ex_dir.is_dir():
        for path in sorted(ex_dir.glob("*.ipynb")):
            if path not in expected:
                diffs.append(Difference(path, "extra"))
    return expected, diffs


def _backup(path: Path, now: datetime.datetime) -> Path:
    folder = path.parent / BACKUP_DIR
    folder.mkdir(exist_ok=True)
    stamp = now.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = folder / f"{path.stem}.{stamp}.ipynb"
    n = 1
    while target.exists():  # two forced builds within a second: never replace an earlier backup
        target = folder / f"{path.stem}.{stamp}-{n}.ipynb"
        n += 1
    path.rename(target)
    return target


@dataclass
class BuildResult:
    """What :func:`build` did: files written, edited files it left alone, and backups it made."""

    written: list[Path]
    kept: list[Path]
    backups: dict[Path, Path]


def build(root: Path, force: bool = False, now: datetime.datetime | None = None) -> BuildResult:
    """Write ``exercises/NN_slug.ipynb`` for every solution notebook, never destroying anyone's edits.

    Files whose content is already right are left untouched (so their modification time does not change).
    An exercise edited by hand (see :class:`Difference`) is kept as it is and listed in ``kept``; with
    ``force=True`` it is first moved to ``exercises/.backup/NN_slug.<UTC time>.ipynb`` (listed in
    ``backups``) and then regenerated. Exercise notebooks without a solution are never deleted:
    :func:`check` reports them.

    Parameters
    ----------
    root : path-like
        The course checkout (holding ``solutions/``).
    force : bool
        Regenerate edited exercises too, after moving each to a timestamped backup.
    now : datetime, optional
        Time used in backup names (default: the current time).
    """
    root = Path(root)
    expected, diffs = _differences(root)
    (root / "exercises").mkdir(exist_ok=True)
    edited = {d.path for d in diffs if d.reason == "edited"}
    result = BuildResult(written=[], kept=[], backups={})
    for path, text in expected.items():
        if path in edited:
            if not force:
                result.kept.append(path)
                continue
            result.backups[path] = _backup(path, now or datetime.datetime.now(datetime.UTC))
        if path in edited or any(d.path == path for d in diffs):
            path.write_text(text, encoding="utf-8", newline="\n")
            result.written.append(path)
    return result


def check(root: Path) -> list[Difference]:
    """Every exercise notebook that differs from what :func:`build` would write; empty when in sync."""
    return _differences(Path(root))[1]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m qcourse.exercises build|check [--root DIR] [--force]``; returns the exit
    status (0 in sync, 1 out of sync or edited files kept, 2 bad input). ``grade DIR ...`` grades submitted
    exercise notebooks (see :mod:`qcourse.grading`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # `grade` has its own parser; options given before it (`--root DIR grade SUBS`) go with it
    at = next((i for i, a in enumerate(argv) if a == "grade" and (i == 0 or argv[i - 1] != "--root")), None)
    if at is not None:
        from qcourse import grading  # same layer; imported here so build/check never load nbclient

        return grading.main(argv[at + 1:] + argv[:at])
    parser = argparse.ArgumentParser(
        prog="python -m qcourse.exercises",
        description="Generate exercises/ from solutions/ (build), or verify they are in sync (check). "
                    "build never overwrites an exercise edited by hand. `grade DIR` grades submitted "
                    "exercise notebooks (`python -m qcourse.exercises grade --help`).")
    parser.add_argument("command", choices=["build", "check", "grade"])
    parser.add_argument("--root", type=Path, default=None,
                        help="course checkout holding solutions/ and exercises/ (default: the current "
                             "directory, which must hold solutions/)")
    parser.add_argument("--force", action="store_true",
                        help=f"build: also regenerate exercises edited by hand, after moving each to "
                             f"exercises/{BACKUP_DIR}/NN_slug.<UTC time>.ipynb")
    args = parser.parse_args(argv)
    if args.force and args.command != "build":
        parser.error("--force goes with build")
    try:
        root = course_root(args.root)
        if args.command == "build":
            return _main_build(root, args.force)
        diffs = check(root)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if diffs:
        print(f"{len(diffs)} exercise notebook(s) out of sync with {root / 'solutions'}:", file=sys.stderr)
        for d in diffs:
            print(f"  {d}", file=sys.stderr)
        reasons = {d.reason for d in diffs}
        if reasons & {"stale", "run", "missing"}:
            print("`python -m qcourse.exercises build` updates the stale and missing ones"
                  + (" and leaves the edited ones as they are" if "edited" in reasons else ""),
                  file=sys.stderr)
        if "edited" in reasons:
            print(f"an edited exercise is someone's work: keep it, or regenerate it with `build --force`, "
                  f"which first moves it to exercises/{BACKUP_DIR}/", file=sys.stderr)
        return 1
    print(f"exercises/ in sync with solutions/ in {root} ({len(solution_files(root))} notebook(s))")
    return 0


def _main_build(root: Path, force: bool) -> int:
    print(f"building {root.resolve() / 'exercises'} from {root.resolve() / 'solutions'}")
    result = build(root, force=force)
    for path, backup in result.backups.items():
        print(f"moved your edited {path} to {backup}")
    for path in result.written:
        print(f"wrote {path}")
    n = len(solution_files(root))
    print(f"{n} exercise notebook(s); {len(result.written)} written, {len(result.kept)} kept as edited")
    for d in check(root):
        if d.reason == "extra":
            print(f"warning: {d}", file=sys.stderr)
    if result.kept:
        for path in result.kept:
            print(f"kept {path}: edited by hand (your work?), so not regenerated", file=sys.stderr)
        print(f"to regenerate them anyway: `python -m qcourse.exercises build --force --root {root}` moves "
              f"each to exercises/{BACKUP_DIR}/ first (nothing is deleted)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
