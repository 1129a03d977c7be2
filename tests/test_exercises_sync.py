"""exercises/ is generated from solutions/, and the two stay in sync.

Unit tests of the generator use tiny synthetic notebooks in tmp dirs. The sync tests run over every solution
notebook present and prove three things:

(a) regenerating exercises/ into a tmp dir gives byte-identical files;
(b) every solution notebook runs end to end with every check passing (``QCOURSE_CHECKS_STRICT=1``);
(c) every exercise notebook runs end to end in strict mode, every check in it reports "not implemented yet",
    each ``NotImplementedError`` it sees was raised by a stub line (a former solution region), and every
    function that holds a stub is reached by some check.
"""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from qcourse import exercises
from qcourse.checks._harness import STRICT_ENV
from qcourse.exercises import SolutionMarkerError, strip_solutions

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))
KERNEL = "python3"
# appended to a notebook under test: prints what every check reported, as one JSON line
_HISTORY_CELL = ("import json as _j, qcourse.checks._harness as _h\n"
                 "print('QCOURSE_HISTORY=' + _j.dumps(_h.history()))")


# ----------------------------------------------------------------------------------------------- generator
def test_strip_keeps_indentation_and_code_around_regions():
    src = (
        "import torch\n"
        "\n"
        "def f(x):\n"
        "    y = x + 1\n"
        "    ### BEGIN SOLUTION\n"
        "    return y * 2\n"
        "    ### END SOLUTION\n"
        "\n"
        "class A:\n"
        "    def g(self):\n"
        "        if True:\n"
        "            ### BEGIN SOLUTION   \n"
        "            return 3\n"
        "            ### END SOLUTION\n"
        "print('done')"
    )
    want = (
        "import torch\n"
        "\n"
        "def f(x):\n"
        "    y = x + 1\n"
        "    # YOUR CODE HERE\n"
        "    raise NotImplementedError()\n"
        "\n"
        "class A:\n"
        "    def g(self):\n"
        "        if True:\n"
        "            # YOUR CODE HERE\n"
        "            raise NotImplementedError()\n"
        "print('done')"
    )
    assert strip_solutions(src) == want
    ast.parse(strip_solutions(src))  # still valid Python


def test_strip_without_markers_is_identity():
    src = "def f():\n    return 1\n"
    assert strip_solutions(src) == src


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("def f():\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n    ### END SOLUTION",
         r"c, line 3: nested '### BEGIN SOLUTION' \(the region opened on line 2"),
        ("def f():\n    ### BEGIN SOLUTION\n    return 1",
         r"c, line 2: '### BEGIN SOLUTION' is never closed"),
        ("def f():\n    return 1\n    ### END SOLUTION", r"c, line 3: '### END SOLUTION' without a matching"),
        ("### BEGIN SOLUTION\nx = 1\n### END SOLUTION",
         r"c, line 1: a solution region must be inside a function"),
        ("def f():\n    ## BEGIN SOLUTION\n    return 1", r"c, line 2: misspelt solution marker"),
        ("def f():\n    ### BEGIN SOLUTIONS\n    return 1", r"c, line 2: misspelt solution marker"),
    ],
)
def test_strip_errors_name_place(src, message):
    with pytest.raises(SolutionMarkerError, match=message):
        strip_solutions(src, where="c")


def _code(src: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(src)


def _write_solution(root: Path, name: str, cells: list[nbformat.NotebookNode]) -> Path:
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"  # deterministic ids, as a committed notebook has
    (root / "solutions").mkdir(parents=True, exist_ok=True)
    path = root / "solutions" / name
    nbformat.write(nb, path)
    return path


DEMO_CELLS = [
    nbformat.v4.new_markdown_cell("# Demo\nDouble a number."),
    _code("import torch\nfrom qcourse.checks import Case, run_check"),
    _code('def double(x):\n    """Return 2x."""\n'
          "    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
    _code("run_check('double', double, lambda x: x + x, [Case('ones', (torch.ones(3),))])"),
]


def test_build_writes_header_stub_and_clears_outputs(tmp_path):
    cells = [nbformat.from_dict(dict(c)) for c in DEMO_CELLS]
    cells[3].outputs = [nbformat.v4.new_output("stream", text="double: 1/1 cases match the reference\n")]
    cells[3].execution_count = 7
    _write_solution(tmp_path, "99_demo.ipynb", cells)
    written = exercises.build(tmp_path).written
    assert written == [tmp_path / "exercises" / "99_demo.ipynb"]
    ex = nbformat.read(written[0], as_version=4)
    assert ex.cells[0].cell_type == "markdown" and "generated from" in ex.cells[0].source
    assert "solutions/99_demo.ipynb" in ex.cells[0].source and "python -m qcourse.exercises build" in (
        ex.cells[0].source)
    assert "return 2 * x" not in written[0].read_text()
    assert ex.cells[3].source.endswith("    # YOUR CODE HERE\n    raise NotImplementedError()")
    assert all(c.outputs == [] and c.execution_count is None for c in ex.cells if c.cell_type == "code")
    assert ex.metadata.qcourse.generated_from == "solutions/99_demo.ipynb"
    nbformat.validate(ex)
    # deterministic: a second build writes nothing and the bytes are those of exercise_text
    before = written[0].read_bytes()
    assert exercises.build(tmp_path).written == []
    assert written[0].read_bytes() == before
    assert exercises.exercise_text(tmp_path / "solutions" / "99_demo.ipynb", tmp_path).encode() == before
    assert before.startswith(b'{\n "cells": [\n  {\n') and before.endswith(b"}\n")


def test_build_error_names_file_cell_and_line(tmp_path):
    _write_solution(tmp_path, "01_bad.ipynb", [_code("x = 1"), _code("def f():\n    ### BEGIN SOLUTION\n")])
    with pytest.raises(SolutionMarkerError, match=r"solutions/01_bad.ipynb, cell 1, line 2: .* never closed"):
        exercises.build(tmp_path)
    assert not (tmp_path / "exercises" / "01_bad.ipynb").exists()


def test_markers_in_markdown_are_refused(tmp_path):
    _write_solution(tmp_path, "01_md.ipynb", [nbformat.v4.new_markdown_cell("### BEGIN SOLUTION\nanswer")])
    with pytest.raises(SolutionMarkerError, match="cell 0: solution markers are only allowed in code cells"):
        exercises.build(tmp_path)


def test_bad_solution_names_are_refused(tmp_path):
    _write_solution(tmp_path, "Lesson One.ipynb", [_code("x = 1")])
    with pytest.raises(ValueError, match="NN_slug.ipynb"):
        exercises.check(tmp_path)


def test_check_detects_edits_missing_and_extra(tmp_path):
    sol = _write_solution(tmp_path, "99_demo.ipynb", DEMO_CELLS)
    exercises.build(tmp_path)
    assert exercises.check(tmp_path) == []
    # editing inside a solution region without rebuilding: the stub hides the answer, but the exercise
    # records its solution's digest, so it is stale all the same
    nb = nbformat.read(sol, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("return 2 * x", "return x + x")
    nbformat.write(nb, sol)
    (diff,) = exercises.check(tmp_path)
    assert diff.reason == "stale" and diff.path.name == "99_demo.ipynb"
    exercises.build(tmp_path)
    assert exercises.check(tmp_path) == []
    # running the solution and saving its outputs does not make the exercise stale
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="ok\n")]
    nb.cells[3].execution_count = 1
    nbformat.write(nb, sol)
    assert exercises.check(tmp_path) == []
    # editing outside a region (the docstring) changes the exercise text itself
    nb.cells[2].source = nb.cells[2].source.replace("Return 2x.", "Return twice x.")
    nbformat.write(nb, sol)
    (diff,) = exercises.check(tmp_path)
    assert diff.reason == "stale"
    exercises.build(tmp_path)
    # a hand edit of the exercise
    ex = tmp_path / "exercises" / "99_demo.ipynb"
    ex.write_text(ex.read_text().replace("YOUR CODE HERE", "my answer"))
    assert [d.reason for d in exercises.check(tmp_path)] == ["edited"]
    # missing and extra
    ex.unlink()
    (tmp_path / "exercises" / "42_orphan.ipynb").write_text("{}")
    assert sorted(d.reason for d in exercises.check(tmp_path)) == ["extra", "missing"]


def test_cli_build_and_check_exit_codes(tmp_path):
    sol = _write_solution(tmp_path, "99_demo.ipynb", DEMO_CELLS)
    run = lambda *a: subprocess.run([sys.executable, "-m", "qcourse.exercises", *a, "--root", str(tmp_path)],
                                    capture_output=True, text=True, check=False)
    res = run("check")
    assert res.returncode == 1 and "99_demo.ipynb: is missing" in res.stderr
    assert run("build").returncode == 0
    res = run("check")
    assert res.returncode == 0, res.stderr
    # editing a solution region without rebuilding makes check fail, naming the file
    nb = nbformat.read(sol, as_version=4)
    nb.cells[2].source = nb.cells[2].source.replace("return 2 * x", "return x * 2")
    nbformat.write(nb, sol)
    res = run("check")
    assert res.returncode == 1 and "99_demo.ipynb: stale: its solution changed" in res.stderr
    nb.cells[2].source = "def f():\n    ### BEGIN SOLUTION\n"
    nbformat.write(nb, sol)
    res = run("check")
    assert res.returncode == 2 and "cell 2, line 2" in res.stderr


# ------------------------------------------------------------------------------------ notebook execution
def _execute(path: Path, monkeypatch) -> tuple[nbformat.NotebookNode, list[dict]]:
    """Run a notebook in a fresh python3 kernel in strict mode; return it and its check history."""
    monkeypatch.setenv(STRICT_ENV, "1")  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_HISTORY_CELL))
    client = NotebookClient(nb, timeout=600, kernel_name=KERNEL,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path} did not run end to end:\n{exc}")
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    (line,) = [ln for ln in text.splitlines() if ln.startswith("QCOURSE_HISTORY=")]
    return nb, json.loads(line.removeprefix("QCOURSE_HISTORY="))


def _stub_functions(nb: nbformat.NotebookNode) -> set[str]:
    """Names of the functions whose bodies hold a stub, i.e. held a solution region."""
    names = set()
    for cell in nb.cells:
        if cell.cell_type != "code" or exercises.STUB[1] not in cell.source:
            continue
        lines = cell.source.split("\n")
        stubs = [i + 1 for i in range(1, len(lines))
                 if lines[i].strip() == exercises.STUB[1] and lines[i - 1].strip() == exercises.STUB[0]]
        funcs = [n for n in ast.walk(ast.parse(cell.source))
                 if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
        for lineno in stubs:
            enclosing = [f for f in funcs if f.lineno <= lineno <= f.end_lineno]
            assert enclosing, f"stub on line {lineno} is not inside a function"
            names.add(max(enclosing, key=lambda f: f.lineno).name)  # the innermost
    return names


def _assert_solution_passes(path: Path, monkeypatch) -> list[dict]:
    _, history = _execute(path, monkeypatch)
    assert history, f"{path} runs no check"
    bad = [r for r in history if r["status"] != "passed"]
    assert not bad, f"{path}: checks that did not pass: {bad}"
    return history


def _assert_exercise_fails_only_in_stubs(path: Path, monkeypatch) -> list[dict]:
    nb, history = _execute(path, monkeypatch)
    stubbed = _stub_functions(nb)
    assert stubbed, f"{path} has no exercise (no stubbed function)"
    not_impl = [r for r in history if r["status"] == "not implemented"]
    for r in not_impl:
        site = r["raised_in"]
        assert site["line"] == exercises.STUB[1] and site["function"] in stubbed, (
            f"{path}: check {r['name']} hit NotImplementedError outside a solution region: {site}")
    reached = {r["raised_in"]["function"] for r in not_impl}
    assert stubbed <= reached, (
        f"{path}: exercise functions never reached by a check: {sorted(stubbed - reached)}")
    failed = [r for r in history if r["status"] == "failed"]
    assert not failed, f"{path}: checks failed on the stubbed exercise: {failed}"
    return history


def test_execution_machinery_on_a_synthetic_pair(tmp_path, monkeypatch):
    _write_solution(tmp_path, "99_demo.ipynb", DEMO_CELLS)
    exercises.build(tmp_path)
    sol_hist = _assert_solution_passes(tmp_path / "solutions" / "99_demo.ipynb", monkeypatch)
    ex_hist = _assert_exercise_fails_only_in_stubs(tmp_path / "exercises" / "99_demo.ipynb", monkeypatch)
    assert [r["name"] for r in sol_hist] == [r["name"] for r in ex_hist] == ["double"]


def test_execution_machinery_catches_a_stray_not_implemented(tmp_path, monkeypatch):
    # a helper outside any region raises NotImplementedError: the exercise check must flag it
    cells = [*DEMO_CELLS[:2],
             _code("def helper(x):\n    raise NotImplementedError('forgot this one')\n\n"
                   "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION"),
             _code("run_check('helper', helper, lambda x: x, [Case('one', (1,))])\n"
                   "run_check('double', double, lambda x: x + x, [Case('ones', (torch.ones(3),))])")]
    _write_solution(tmp_path, "98_stray.ipynb", cells)
    exercises.build(tmp_path)
    with pytest.raises(AssertionError, match="outside a solution region"):
        _assert_exercise_fails_only_in_stubs(tmp_path / "exercises" / "98_stray.ipynb", monkeypatch)


# ------------------------------------------------------------------------------- the real notebooks
_no_solutions = pytest.mark.skipif(not SOLUTIONS, reason="no solution notebooks in solutions/ yet")


@_no_solutions
def test_regenerated_exercises_match_committed(tmp_path):
    shutil.copytree(ROOT / "solutions", tmp_path / "solutions")
    exercises.build(tmp_path)
    for sol in SOLUTIONS:
        fresh = (tmp_path / "exercises" / sol.name).read_bytes()
        committed = ROOT / "exercises" / sol.name
        assert committed.exists(), f"{committed} missing: run python -m qcourse.exercises build"
        assert committed.read_bytes() == fresh, (
            f"{committed} is not what `python -m qcourse.exercises build` writes from {sol}; rebuild it")
    assert exercises.check(ROOT) == [], "exercises/ out of sync: run python -m qcourse.exercises check"


@pytest.mark.parametrize("solution", SOLUTIONS or [None], ids=lambda p: p.stem if p else "none")
@_no_solutions
def test_solution_and_exercise_notebooks(solution, monkeypatch):
    sol_hist = _assert_solution_passes(solution, monkeypatch)
    ex_hist = _assert_exercise_fails_only_in_stubs(ROOT / "exercises" / solution.name, monkeypatch)
    assert [r["name"] for r in ex_hist] == [r["name"] for r in sol_hist], (
        f"{solution.name}: the exercise runs different checks from its solution")
