"""Grade submitted exercise notebooks: ``python -m qcourse.exercises grade DIR``.

Every file in ``DIR`` is one student's submission (any file name). For each, the grader

1. reads it (a corrupt file, a text file, anything that is not a notebook is reported, never fatal);
2. finds its lesson: the ``qcourse.generated_from`` metadata that ``build`` writes, else the lesson whose
   exercise cells, check cells and cell ids the submission shares most;
3. runs, in a fresh kernel started in an empty temporary folder, only

   - the lesson's setup cells (the imports) **as the course's exercise notebook has them**, never the
     student's copy, which may have been edited;
   - the student's exercise cells: the submission's cells that correspond to the cells holding
     ``# YOUR CODE HERE`` in the exercise ``build`` generates (same cell id, else the cell that defines the
     exercise's function), whole, with any helper code the student put in them;
   - the course's check cells, each followed by a small cell of the grader's that reads the check's
     outcome from :func:`qcourse.checks._harness.history` (the course's demo cells that call the student's
     functions outside a check are not run);

4. records, for every check, ``passed``, ``failed`` (with the check's first failing case),
   ``not attempted`` (the function still raises ``NotImplementedError``), ``error`` (the student's code
   raised: type and message), ``timed out`` (the notebook ran past its time limit, counted from the
   moment its kernel is ready; the kernel is killed, and the checks not reached get this status too) or
   ``crashed`` (the kernel died). A file that could not be graded gets one row with status ``not graded``
   and the reason.

``--jobs N`` grades N notebooks at once, each in its own kernel; the table is in file-name order either
way.

Nothing in ``DIR`` is written: the kernel runs in a temporary folder, and the table goes to ``--out``,
which must lie outside ``DIR``. The course's exercise notebooks are generated in memory from
``solutions/`` exactly as ``build`` would write them, so grading does not depend on the state of
``exercises/``. When the course root holds a ``qcourse/`` package it is put first on the kernel's
``PYTHONPATH``, so the checks come from the same checkout as the notebooks.

The grader is for following a class's progress, not for proctoring: student code runs with the grader's
own permissions and in the same process as the checks, so a determined student could fool a check.

>>> g = Grade("ann.ipynb", "07_rate_distortion", "lloyd_step", "check_lloyd_step", "passed", "")
>>> print(summary([g]))
07_rate_distortion  lloyd_step
ann.ipynb           passed
<BLANKLINE>
1 check(s): 1 passed
"""

from __future__ import annotations

import argparse
import ast
import csv
import json
import logging
import math
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat

from qcourse import exercises

__all__ = [
    "STATUSES",
    "KERNEL_NAME",
    "Grade",
    "Lesson",
    "SubmissionError",
    "course_lessons",
    "read_submission",
    "identify_lesson",
    "grade_notebook",
    "grade",
    "write_csv",
    "summary",
    "main",
]

#: every status a row of the table can have
STATUSES = ("passed", "failed", "not attempted", "error", "timed out", "crashed", "not graded")
#: the kernel the submissions run in (the same one nbval and the sync tests use)
KERNEL_NAME = "python3"
CSV_COLUMNS = ("student", "lesson", "exercise", "check", "status", "message")
_MAX_MESSAGE = 400  # characters of a message kept in the table; a check's first failure fits easily
_STUB_LINE = exercises.STUB[0]
# nbclient logs a timeout or a dead kernel as an error; the table reports them instead
_KERNEL_LOG = logging.getLogger(f"{__name__}.kernel")
_KERNEL_LOG.propagate = False
_KERNEL_LOG.addHandler(logging.NullHandler())


class SubmissionError(ValueError):
    """A file in the submissions folder that is not a notebook the grader can read."""


@dataclass(frozen=True)
class Grade:
    """One row of the table: a student's outcome on one check (or one file that was not graded)."""

    student: str
    lesson: str
    exercise: str
    check: str
    status: str
    message: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {self.status!r}")


@dataclass(frozen=True)
class _Cell:
    kind: str  # "setup" | "exercise" | "check" | "demo"
    source: str
    cell_id: str | None
    functions: tuple[str, ...] = ()  # exercise: the functions holding a stub
    checks: tuple[tuple[str, str], ...] = ()  # check: (check function, the student function it is given)


@dataclass(frozen=True)
class Lesson:
    """A lesson's exercise notebook as ``build`` writes it, its code cells sorted by role."""

    stem: str
    cells: tuple[_Cell, ...]

    @property
    def checks(self) -> list[tuple[str, str]]:
        """``(check function, exercise function)`` for every check, in notebook order."""
        return [c for cell in self.cells for c in cell.checks]

    @property
    def functions(self) -> list[str]:
        """The functions the student writes, in notebook order."""
        return [f for cell in self.cells for f in cell.functions]


# ---- the course's side ------------------------------------------------------------------------------

def _parse(source: str) -> ast.Module | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # IPython's transformer warns about odd line endings
            return ast.parse(exercises._python_source(source))
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in a student's cell
        return None


def _stub_functions(tree: ast.Module) -> tuple[str, ...]:
    """Names of the functions (outermost) whose bodies hold a stub line."""
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if any(isinstance(n, ast.Raise) and isinstance(n.exc, ast.Call)
                   and isinstance(n.exc.func, ast.Name) and n.exc.func.id == "NotImplementedError"
                   for n in ast.walk(node)):
                names.append(node.name)
    return tuple(names)


def _bound_names(tree: ast.Module) -> set[str]:
    """Top-level names a cell defines (functions, classes, assignment targets)."""
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def _check_calls(tree: ast.Module) -> tuple[tuple[str, str], ...] | None:
    """``((check_x, fn), ...)`` when every statement of the cell is a call of a ``check_*`` function."""
    calls = []
    for node in tree.body:
        if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)):
            return None
        func = node.value.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if not name.startswith("check_"):
            return None
        args = node.value.args
        fn = args[0].id if args and isinstance(args[0], ast.Name) else name.removeprefix("check_")
        calls.append((name, fn))
    return tuple(calls) or None


def lesson_from_exercise(stem: str, nb: nbformat.NotebookNode) -> Lesson:
    """Sort the code cells of a generated exercise notebook by role.

    An *exercise* cell holds ``# YOUR CODE HERE``; a *check* cell only calls ``check_*`` functions; a
    cell that uses a name an exercise cell defines is a *demo* (not run when grading); every other code
    cell is *setup*.

    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in (
    ...     "from qcourse.checks import check_f",
    ...     "def f(x):\\n    # YOUR CODE HERE\\n    raise NotImplementedError()",
    ...     "check_f(f)", "print(f(2))")])
    >>> [(c.kind, c.functions, c.checks) for c in lesson_from_exercise("99_demo", nb).cells]
    [('setup', (), ()), ('exercise', ('f',), ()), ('check', (), (('check_f', 'f'),)), ('demo', (), ())]
    """
    parsed = []
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        tree = _parse(cell.source)
        if tree is None:  # build compiles every cell, so this is a hand-made notebook
            raise exercises.SolutionError(f"{stem}: a code cell does not compile: {cell.source[:60]!r}")
        parsed.append((cell, tree))
    student_names: set[str] = set()
    for cell, tree in parsed:
        if _STUB_LINE in cell.source:
            student_names |= _bound_names(tree)
    cells = []
    for cell, tree in parsed:
        cid = cell.get("id")
        if _STUB_LINE in cell.source:
            cells.append(_Cell("exercise", cell.source, cid, functions=_stub_functions(tree)))
        elif (calls := _check_calls(tree)) is not None:
            cells.append(_Cell("check", cell.source, cid, checks=calls))
        elif any(isinstance(n, ast.Name) and n.id in student_names for n in ast.walk(tree)):
            cells.append(_Cell("demo", cell.source, cid))
        else:
            cells.append(_Cell("setup", cell.source, cid))
    return Lesson(stem, tuple(cells))


def course_lessons(root: Path) -> tuple[dict[str, Lesson], dict[str, str]]:
    """Every lesson of the course at ``root``: ``({stem: Lesson}, {stem: why it cannot be graded})``.

    The exercise notebooks are generated from ``solutions/`` in memory, byte for byte as ``build`` would
    write them; a solution that does not build makes its lesson ungradable, not the whole run.
    """
    lessons: dict[str, Lesson] = {}
    broken: dict[str, str] = {}
    for path in exercises.solution_files(root):
        try:
            nb = nbformat.reads(exercises.exercise_text(path, root), as_version=4)
            lessons[path.stem] = lesson_from_exercise(path.stem, nb)
        except exercises.SolutionError as exc:
            broken[path.stem] = f"the course's solution notebook does not build: {exc}"
    return lessons, broken


# ---- the student's side -----------------------------------------------------------------------------

def read_submission(path: Path) -> nbformat.NotebookNode:
    """Read a submitted file as a version-4 notebook, or raise :class:`SubmissionError` saying why not.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "essay.txt"
    >>> _ = p.write_text("my answers are in my head")
    >>> read_submission(p)
    Traceback (most recent call last):
    ...
    qcourse.grading.SubmissionError: not a notebook: not JSON (Expecting value: line 1 column 1 (char 0))
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SubmissionError("not a notebook: not UTF-8 text (a binary file?)") from None
    except OSError as exc:
        raise SubmissionError(f"unreadable: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "truncated or corrupt JSON" if text.lstrip().startswith("{") else "not JSON"
        raise SubmissionError(f"not a notebook: {what} ({exc})") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list):
        raise SubmissionError("not a notebook: JSON without a list of cells")
    if raw.get("nbformat") != 4:
        raise SubmissionError(f"not a notebook qcourse can grade: nbformat {raw.get('nbformat')!r} "
                              "(save it with JupyterLab, which writes nbformat 4)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a slightly off schema is no reason not to grade
            nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # noqa: BLE001 - any way nbformat can fail is a file we cannot grade
        raise SubmissionError(f"not a notebook: {type(exc).__name__}: {exc}") from None
    for cell in nb.cells:
        if not isinstance(cell, dict) or not isinstance(cell.get("source"), str):
            raise SubmissionError("not a notebook: a cell without a source")
    return nb


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.get("cell_type") == "code"]


def _defines(source: str, name: str) -> bool:
    """Whether a cell defines ``name`` at top level (by ``def``/``class``/assignment; by a regex on the
    ``def`` line when the cell does not parse, so a half-finished answer is still found)."""
    tree = _parse(source)
    if tree is not None:
        return name in _bound_names(tree)
    return re.search(rf"^(async\s+)?(def|class)\s+{re.escape(name)}\b", source, re.MULTILINE) is not None


def identify_lesson(nb: nbformat.NotebookNode, lessons: dict[str, Lesson]) -> tuple[str | None, str]:
    """The stem of the lesson a submission belongs to, and how it was recognised (or why not).

    First the ``qcourse.generated_from`` metadata ``build`` writes; else the lesson whose exercise
    functions the submission defines, whose check cells it holds and whose cell ids it carries, most of
    them (a tie or no match at all is "unknown").
    """
    meta = nb.get("metadata", {}).get("qcourse", {})
    source = meta.get("generated_from") if isinstance(meta, dict) else None
    if isinstance(source, str):
        stem = Path(source).stem
        if stem in lessons:
            return stem, f"metadata names {source}"
    cells = _code_cells(nb)
    ids = {c.get("id") for c in cells} - {None}
    sources = {c.source.strip() for c in cells}
    scores = {}
    for stem, lesson in lessons.items():
        score = sum(any(_defines(c.source, f) for c in cells) for f in lesson.functions)
        score += sum(c.source.strip() in sources for c in lesson.cells if c.kind == "check")
        score += sum(c.cell_id in ids for c in lesson.cells if c.cell_id)
        scores[stem] = score
    best = max(scores.values(), default=0)
    winners = [s for s, v in scores.items() if v == best]
    named = f" (its metadata names {source}, which this course does not have)" if source else ""
    if best == 0:
        return None, f"unknown lesson: no cell matches any exercise of the course{named}"
    if len(winners) > 1:
        return None, f"unknown lesson: matches {', '.join(winners)} equally{named}"
    return winners[0], f"its cells match {winners[0]}"


def _student_cell(cells: list[nbformat.NotebookNode], course: _Cell) -> tuple[str, str]:
    """The submission's cell for one exercise cell of the course: ``(source, note)``.

    Same cell id first (if it still defines the exercise's functions), else the last cell that defines
    them, else the cell with the id anyway (its error will say what is wrong), else the course's stub.
    """
    by_id = [c for c in cells if course.cell_id and c.get("id") == course.cell_id]
    if by_id and all(_defines(by_id[-1].source, f) for f in course.functions):
        return by_id[-1].source, ""
    by_name = [c for c in cells if course.functions and all(_defines(c.source, f) for f in course.functions)]
    if by_name:
        return by_name[-1].source, ""
    if by_id:
        return by_id[-1].source, ""
    names = ", ".join(course.functions) or "this exercise"
    return course.source, f"the submission has no cell defining {names}; graded the exercise's unedited cell"


# ---- running one submission -------------------------------------------------------------------------

@dataclass
class _Step:
    kind: str  # "setup" | "exercise" | "check"
    source: str
    functions: tuple[str, ...] = ()
    checks: tuple[tuple[str, str], ...] = ()
    note: str = ""


def _plan(lesson: Lesson, submission: nbformat.NotebookNode) -> list[_Step]:
    cells = _code_cells(submission)
    steps = []
    for cell in lesson.cells:
        if cell.kind == "setup":
            steps.append(_Step("setup", cell.source))
        elif cell.kind == "exercise":
            source, note = _student_cell(cells, cell)
            steps.append(_Step("exercise", source, functions=cell.functions, note=note))
        elif cell.kind == "check":
            steps.append(_Step("check", cell.source, checks=cell.checks))
    return steps


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_MESSAGE else text[:_MAX_MESSAGE - 1] + "…"


def _cell_error(cell: nbformat.NotebookNode) -> str | None:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            ename, evalue = out.get("ename", "Error"), out.get("evalue", "")
            return f"{ename}: {evalue}" if evalue else ename
    return None


def _outcome(record: dict, note: str) -> tuple[str, str]:
    """Status and message of one check from its ``history()`` record."""
    cases = record.get("cases", [])
    status = record.get("status")
    if status == "passed":
        return "passed", ""
    if status == "not implemented":
        return "not attempted", _join("not implemented yet (raises NotImplementedError)", note)
    errors = [c.get("error") for c in cases]
    if cases and all(errors):
        real = [e for e in errors if not e.startswith("NotImplementedError")]
        if real:  # nothing got as far as a comparison: the function itself is broken
            return "error", _join(f"raised {real[0]} (in every case)", note)
    first = next((c for c in cases if not c.get("ok")), None)
    message = f"{first['label']}: {first['detail']}" if first else "failed"
    return "failed", _join(message, note)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


class _Run:
    """One submission in one kernel: executes steps with a shared deadline and collects the grades."""

    def __init__(self, student: str, lesson: Lesson, timeout: float, env: dict[str, str], cwd: str):
        from nbclient import NotebookClient

        self.student, self.lesson, self.timeout = student, lesson, timeout
        self.token = secrets.token_hex(8)  # marks the grader's own output lines
        self.nb = nbformat.v4.new_notebook()
        self.client = NotebookClient(self.nb, kernel_name=KERNEL_NAME, allow_errors=True, timeout=None,
                                     startup_timeout=120, shutdown_kernel="immediate",
                                     record_timing=False, log=_KERNEL_LOG)
        self.env, self.cwd = env, cwd
        self.grades: dict[str, Grade] = {}
        self.exercise_errors: dict[str, str] = {}

    def _grade(self, check: str, exercise: str, status: str, message: str) -> None:
        self.grades[check] = Grade(self.student, self.lesson.stem, exercise, check, status,
                                   _one_line(message))

    def _execute(self, source: str, deadline: float) -> nbformat.NotebookNode:
        from nbclient.exceptions import CellTimeoutError

        left = deadline - time.monotonic()
        if left <= 0:  # every cell so far was quick, but together they used up the notebook's time
            raise CellTimeoutError("the notebook's time is up")
        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        self.client.timeout = max(1, math.ceil(left))
        return self.client.execute_cell(cell, len(self.nb.cells) - 1, store_history=False)

    def _probe(self, deadline: float) -> list[dict]:
        cell = self._execute(
            "import json as _qcourse_json, qcourse.checks._harness as _qcourse_harness\n"
            f"print({self.token!r} + _qcourse_json.dumps(_qcourse_harness.history()))", deadline)
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
        lines = [ln for ln in text.splitlines() if ln.startswith(self.token)]
        return json.loads(lines[-1].removeprefix(self.token)) if lines else []

    def run(self, steps: list[_Step]) -> list[Grade]:
        from nbclient.exceptions import CellTimeoutError, DeadKernelError

        pending = [(check, fn) for step in steps for check, fn in step.checks]
        doing = "starting the kernel"
        running: tuple[str, ...] = ()  # the checks of the check cell being run, if one is
        try:
            # the kernel's own stderr carries only ZMQ/transport chatter; what a cell raises reaches us
            # as an error message on the iopub channel
            with self.client.setup_kernel(env=self.env, cwd=self.cwd, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL):
                deadline = time.monotonic() + self.timeout
                for step in steps:
                    if step.kind == "setup":
                        doing = "the lesson's setup cells"
                        if err := _cell_error(self._execute(step.source, deadline)):
                            self.exercise_errors["<setup>"] = f"the lesson's setup cell raised {err}"
                    elif step.kind == "exercise":
                        doing = f"the exercise cell of {', '.join(step.functions) or 'an exercise'}"
                        err = _cell_error(self._execute(step.source, deadline))
                        for fn in step.functions:
                            if err:
                                self.exercise_errors[fn] = f"the exercise cell raised {err}"
                            if step.note:
                                self.exercise_errors.setdefault(f"note:{fn}", step.note)
                    else:
                        running = tuple(c for c, _ in step.checks)
                        doing = " and ".join(running)
                        self._execute("import qcourse.checks._harness as _qcourse_harness\n"
                                      "_qcourse_harness.clear_history()", deadline)
                        err = _cell_error(self._execute(step.source, deadline))
                        records = self._probe(deadline)
                        self._record(step, records, err)
                        pending = [p for p in pending if p[0] not in self.grades]
                        running = ()
        except CellTimeoutError:
            for check, fn in pending:
                self._grade(check, fn, "timed out", _join(
                    "" if check in running else "not reached",
                    f"the notebook ran past its {self.timeout:g} s limit while running {doing}; "
                    "the kernel was stopped"))
        except DeadKernelError:
            for check, fn in pending:
                self._grade(check, fn, "crashed", _join("" if check in running else "not reached",
                                                        f"the kernel died while running {doing}"))
        except Exception as exc:  # noqa: BLE001 - a kernel that will not start is this student's row only
            for check, fn in pending:
                if check not in self.grades:
                    self._grade(check, fn, "crashed",
                                f"could not run the notebook ({doing}): {type(exc).__name__}: {exc}")
        return [self.grades[c] for c, _ in (p for s in steps for p in s.checks) if c in self.grades]

    def _record(self, step: _Step, records: list[dict], cell_error: str | None) -> None:
        for i, (check, fn) in enumerate(step.checks):
            note = self.exercise_errors.get(f"note:{fn}", "")
            if i < len(records):
                status, message = _outcome(records[i], note)
                if status == "not attempted" and fn in self.exercise_errors:
                    # the cell that should have replaced the stub failed, so the old stub ran
                    status, message = "error", self.exercise_errors[fn]
                self._grade(check, fn, status, message)
                continue
            why = self.exercise_errors.get(fn) or self.exercise_errors.get("<setup>")
            if why:
                self._grade(check, fn, "error",
                            _join(f"{why} (so {check} could not run: {cell_error})", note))
            else:
                self._grade(check, fn, "error", _join(
                    f"{check} raised {cell_error}" if cell_error else
                    f"{check} reported no result (did an exercise cell redefine {check}?)", note))


def _kernel_env(root: Path | None) -> dict[str, str]:
    from qcourse.checks._harness import STRICT_ENV

    env = dict(os.environ)
    env.pop(STRICT_ENV, None)  # strict mode turns a failed check into an exception: we want the record
    if root is not None and (Path(root) / "qcourse" / "__init__.py").is_file():
        # the checks must be the ones the course's notebooks were written for
        env["PYTHONPATH"] = os.pathsep.join([str(Path(root).resolve()),
                                             *filter(None, [env.get("PYTHONPATH")])])
    return env


def grade_notebook(path: Path, lessons: dict[str, Lesson], *, timeout: float = 120.0,
                   broken: dict[str, str] | None = None, root: Path | None = None) -> list[Grade]:
    """Grade one submitted file: one :class:`Grade` per check of its lesson, or one "not graded" row.

    Parameters
    ----------
    path : path-like
        The submission; it is only read.
    lessons : dict
        The course's lessons, from :func:`course_lessons`.
    timeout : float
        Seconds for running the notebook's cells (the kernel's start is not counted); past it the kernel
        is killed and every check not yet run is "timed out".
    broken : dict, optional
        Lessons whose solution notebook does not build, with the reason (from :func:`course_lessons`).
    root : path-like, optional
        The course checkout, put first on the kernel's ``PYTHONPATH`` when it holds ``qcourse/``.
    """
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    path = Path(path)
    student = path.name
    try:
        nb = read_submission(path)
    except SubmissionError as exc:
        return [Grade(student, "", "", "", "not graded", _one_line(str(exc)))]
    everything = {**lessons, **{s: Lesson(s, ()) for s in (broken or {})}}
    stem, how = identify_lesson(nb, everything)
    if stem is None:
        return [Grade(student, "", "", "", "not graded", _one_line(how))]
    if broken and stem in broken:
        return [Grade(student, stem, "", "", "not graded", _one_line(broken[stem]))]
    lesson = lessons[stem]
    if not lesson.checks:
        return [Grade(student, stem, "", "", "not graded", "this lesson has no check cells")]
    env = _kernel_env(root)
    with tempfile.TemporaryDirectory(prefix="qcourse-grade-") as cwd:
        return _Run(student, lesson, float(timeout), env, cwd).run(_plan(lesson, nb))


def grade(folder: Path, root: Path, *, timeout: float = 120.0, jobs: int = 1,
          progress: bool = False) -> list[Grade]:
    """Grade every file directly in ``folder`` (sorted by name; hidden files and folders are skipped).

    ``jobs`` notebooks run at once, each in its own kernel (the time limit is per notebook, so on a busy
    machine keep ``jobs`` at most the number of free cores). Returns the table's rows: per file, one row
    per check of its lesson in notebook order, files sorted by name whatever order they finished in.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a directory")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs must be an int >= 1; got {jobs!r}")
    lessons, broken = course_lessons(root)

    def one(path: Path) -> list[Grade]:
        start = time.monotonic()
        rows = grade_notebook(path, lessons, timeout=timeout, broken=broken, root=root)
        if progress:
            print(f"  graded {path.name} in {time.monotonic() - start:.1f} s", file=sys.stderr)
        return rows

    files = submissions(folder)
    if jobs == 1:
        return [row for path in files for row in one(path)]
    # threads suffice: each one only waits on its kernel (nbclient gives every thread its own event loop)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [row for rows in pool.map(one, files) for row in rows]


def submissions(folder: Path) -> list[Path]:
    """The files ``grade`` looks at: regular files directly in ``folder``, not hidden, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))


# ---- output -----------------------------------------------------------------------------------------

def write_csv(rows: Sequence[Grade], path: Path) -> None:
    """Write the table (columns ``student, lesson, exercise, check, status, message``), UTF-8."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([getattr(row, c) for c in CSV_COLUMNS])


def summary(rows: Sequence[Grade]) -> str:
    """The printed summary: per lesson a student × exercise grid of statuses, then the files not graded
    and the totals."""
    out: list[str] = []
    by_lesson: dict[str, dict[str, dict[str, str]]] = {}
    columns: dict[str, list[str]] = {}
    for r in rows:
        if r.status == "not graded":
            continue
        by_lesson.setdefault(r.lesson, {}).setdefault(r.student, {})[r.exercise] = r.status
        if r.exercise not in columns.setdefault(r.lesson, []):
            columns[r.lesson].append(r.exercise)
    for lesson, students in by_lesson.items():
        cols = columns[lesson]
        first = max([len(lesson), *map(len, students)]) + 2
        widths = [max(len(c), 13) + 2 for c in cols]
        line = lesson.ljust(first) + "".join(c.ljust(w) for c, w in zip(cols, widths, strict=True))
        out.append(line.rstrip())
        for student, got in students.items():
            line = student.ljust(first) + "".join(got.get(c, "").ljust(w) for c, w in zip(cols, widths,
                                                                                            strict=True))
            out.append(line.rstrip())
        out.append("")
    skipped = [r for r in rows if r.status == "not graded"]
    if skipped:
        out.append("not graded:")
        out.extend(f"  {r.student}: {r.message}" for r in skipped)
        out.append("")
    counts = {s: sum(r.status == s for r in rows) for s in STATUSES if s != "not graded"}
    n = sum(counts.values())
    out.append(f"{n} check(s): " + ", ".join(f"{v} {s}" for s, v in counts.items() if v)
               + (f"; {len(skipped)} file(s) not graded" if skipped else ""))
    return "\n".join(out)


# ---- command line -----------------------------------------------------------------------------------

def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds; got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds; got {text!r}")
    return value


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qcourse.exercises grade DIR [--out grades.csv] [--timeout 120] [--jobs 1]
    [--root COURSE]``.

    Returns 0 when grading ran (whatever the students' results); bad arguments print the usage line and
    exit with status 2.
    """
    parser = argparse.ArgumentParser(
        prog="python -m qcourse.exercises grade",
        description="Run every exercise check on each submitted exercise notebook in DIR (one per student, "
                    "any file name) and write a table student x exercise -> passed / failed / not attempted "
                    "/ error / timed out. Only the lesson's own setup and check cells and the student's "
                    "exercise cells run; nothing in DIR is modified.")
    parser.add_argument("dir", metavar="DIR", type=Path, help="folder of submitted notebooks")
    parser.add_argument("--out", type=Path, default=Path("grades.csv"),
                        help="CSV file to write (default: grades.csv in the current directory; "
                             "not inside DIR)")
    parser.add_argument("--timeout", type=_seconds, default=120.0,
                        help="seconds per notebook (default 120); past it the kernel is stopped and the "
                             "remaining checks are 'timed out'")
    parser.add_argument("--jobs", type=_jobs, default=1,
                        help="notebooks graded at once, each in its own kernel (default 1)")
    parser.add_argument("--root", type=Path, default=None,
                        help="course checkout holding solutions/ (default: the current directory)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    if not args.dir.is_dir():
        parser.error(f"argument DIR: {args.dir} is not a directory")
    try:
        root = exercises.course_root(args.root)
        exercises.solution_files(root)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(f"argument --root: {exc}")
    out = args.out.resolve()
    if out.is_relative_to(args.dir.resolve()):
        parser.error(f"argument --out: {args.out} is inside DIR; the grader never writes into DIR")
    if not out.parent.is_dir():
        parser.error(f"argument --out: folder {out.parent} does not exist")
    files = submissions(args.dir)
    print(f"grading {len(files)} file(s) in {args.dir.resolve()} against the exercises of "
          f"{root.resolve() / 'solutions'} ({args.timeout:g} s per notebook)", file=sys.stderr)
    start = time.monotonic()
    rows = grade(args.dir, root, timeout=args.timeout, jobs=args.jobs, progress=True)
    write_csv(rows, out)
    print(summary(rows))
    print(f"table written to {out} ({len(rows)} row(s)) in {time.monotonic() - start:.1f} s")
    return 0
