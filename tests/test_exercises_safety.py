"""``python -m qcourse.exercises build`` never destroys a learner's work, acts only where it is pointed,
and refuses solutions that would make a broken exercise (issue 9).

Each test reproduces a reported failure: an overwritten exercise, a build that wrote into the installed
package's checkout, a misindented ``BEGIN`` that produced an IndentationError, a solution with a syntax
error, an nbformat-3 solution that crashed inside jsonschema.
"""

from __future__ import annotations

import ast
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from qcourse import exercises
from qcourse.exercises import BACKUP_DIR, SolutionError, SolutionMarkerError

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.datetime(2026, 11, 30, 4, 5, 6, tzinfo=datetime.UTC)

CELLS = [
    nbformat.v4.new_markdown_cell("# Demo"),
    nbformat.v4.new_code_cell("def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n"
                              "    ### END SOLUTION"),
    nbformat.v4.new_code_cell("print(double)"),
]


def _solution(root: Path, cells=CELLS, name: str = "99_demo.ipynb") -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.from_dict(dict(c)) for c in cells])
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    (root / "solutions").mkdir(parents=True, exist_ok=True)
    path = root / "solutions" / name
    nbformat.write(nb, path)
    return path


def _built(root: Path) -> Path:
    """A course folder with one solution and its freshly built exercise; returns the exercise's path."""
    _solution(root)
    exercises.build(root)
    return root / "exercises" / "99_demo.ipynb"


def _fill_in(exercise: Path, answer: str = "return x + x  # my answer") -> None:
    """What a learner does in JupyterLab: replace the stub, run the cell, save (outputs included)."""
    nb = nbformat.read(exercise, as_version=4)
    cell = nb.cells[2]
    cell.source = cell.source.replace("# YOUR CODE HERE\n    raise NotImplementedError()", answer)
    cell.outputs = [nbformat.v4.new_output("stream", text="ok\n")]
    cell.execution_count = 3
    nbformat.write(nb, exercise)


@pytest.fixture
def cli(capsys, monkeypatch):
    """``python -m qcourse.exercises ARGS`` run in ``cwd``, in process (fast): code, stdout, stderr."""

    def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = exercises.main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


# ------------------------------------------------------------------------------------------ data loss
def test_build_keeps_a_filled_in_exercise_and_check_says_it_is_your_work(tmp_path):
    ex = _built(tmp_path)
    _fill_in(ex)
    mine = ex.read_bytes()
    (diff,) = exercises.check(tmp_path)
    assert diff.reason == "edited" and "edited by hand (your work?)" in str(diff)
    result = exercises.build(tmp_path)
    assert result.kept == [ex] and result.written == [] and result.backups == {}
    assert ex.read_bytes() == mine
    assert not (tmp_path / "exercises" / BACKUP_DIR).exists()


def test_build_keeps_edits_even_after_the_solution_changed(tmp_path):
    ex = _built(tmp_path)
    sol = tmp_path / "solutions" / "99_demo.ipynb"
    _fill_in(ex)
    mine = ex.read_bytes()
    nb = nbformat.read(sol, as_version=4)
    nb.cells[2].source = "print(double(2))"
    nbformat.write(nb, sol)
    assert [d.reason for d in exercises.check(tmp_path)] == ["edited"]
    assert exercises.build(tmp_path).kept == [ex]
    assert ex.read_bytes() == mine


def test_added_cell_and_unparsable_file_count_as_work(tmp_path):
    ex = _built(tmp_path)
    nb = nbformat.read(ex, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("my_notes = 'scratch'"))
    nbformat.write(nb, ex)
    assert [d.reason for d in exercises.check(tmp_path)] == ["edited"]
    ex.write_text('{"cells": [ half-saved')
    assert [d.reason for d in exercises.check(tmp_path)] == ["edited"]
    assert exercises.build(tmp_path).kept == [ex]
    assert ex.read_text() == '{"cells": [ half-saved'


def test_untouched_exercise_is_updated_when_its_solution_changes(tmp_path):
    ex = _built(tmp_path)
    sol = tmp_path / "solutions" / "99_demo.ipynb"
    nb = nbformat.read(sol, as_version=4)
    nb.cells[0].source = "# Demo, revised"
    nbformat.write(nb, sol)
    assert [d.reason for d in exercises.check(tmp_path)] == ["stale"]
    assert exercises.build(tmp_path).written == [ex]
    assert "# Demo, revised" in ex.read_text() and exercises.check(tmp_path) == []


def test_running_an_untouched_exercise_is_not_an_edit(tmp_path):
    ex = _built(tmp_path)
    nb = nbformat.read(ex, as_version=4)
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", text="<function double>\n")]
    nb.cells[3].execution_count = 1
    nbformat.write(nb, ex)
    assert [d.reason for d in exercises.check(tmp_path)] == ["run"]
    assert exercises.build(tmp_path).written == [ex]
    assert exercises.check(tmp_path) == []


def test_force_moves_the_edited_file_to_a_named_backup_first(tmp_path):
    ex = _built(tmp_path)
    _fill_in(ex)
    mine = ex.read_bytes()
    result = exercises.build(tmp_path, force=True, now=NOW)
    backup = tmp_path / "exercises" / BACKUP_DIR / "99_demo.20261130T040506Z.ipynb"
    assert result.backups == {ex: backup} and result.written == [ex]
    assert backup.read_bytes() == mine
    assert "raise NotImplementedError()" in ex.read_text() and exercises.check(tmp_path) == []
    # a second forced build in the same second never replaces the first backup
    _fill_in(ex, "return 2 * x  # second try")
    second = exercises.build(tmp_path, force=True, now=NOW).backups[ex]
    assert second.name == "99_demo.20261130T040506Z-1.ipynb" and backup.read_bytes() == mine
    assert "second try" in second.read_text()


def test_cli_build_refuses_to_overwrite_and_check_never_advises_plain_build(tmp_path, cli):
    _solution(tmp_path)
    assert cli("build", "--root", str(tmp_path), cwd=tmp_path).returncode == 0
    ex = tmp_path / "exercises" / "99_demo.ipynb"
    _fill_in(ex)
    mine = ex.read_bytes()
    res = cli("check", "--root", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 1 and "99_demo.ipynb: edited by hand (your work?)" in res.stderr
    assert "`build --force`" in res.stderr and "moves it to exercises/.backup/" in res.stderr
    assert "updates the stale" not in res.stderr  # nothing else to update: no plain-`build` advice
    res = cli("build", "--root", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 1 and ex.read_bytes() == mine
    assert f"kept {ex}: edited by hand (your work?)" in res.stderr and "--force" in res.stderr
    res = cli("build", "--force", "--root", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 0 and "moved your edited" in res.stdout
    (backup,) = (tmp_path / "exercises" / BACKUP_DIR).iterdir()
    assert backup.read_bytes() == mine
    assert cli("check", "--force", cwd=tmp_path).returncode == 2  # --force goes with build only


def test_header_says_the_learner_fills_in_the_exercise(tmp_path):
    _solution(tmp_path)
    exercises.build(tmp_path)
    header = nbformat.read(tmp_path / "exercises" / "99_demo.ipynb", as_version=4).cells[0].source
    assert "do not edit" not in header.lower()
    assert "Fill in each function here" in header and "never overwrites an exercise you have edited" in header


def test_committed_exercises_record_their_digest():
    for path in sorted((ROOT / "exercises").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.qcourse.exercise_sha256 == exercises.exercise_digest(nb), path


# ---------------------------------------------------------------------------------------- where it acts
def test_build_outside_a_checkout_is_an_error_and_writes_nowhere(tmp_path, cli):
    before = {p: p.stat().st_mtime_ns for p in (ROOT / "exercises").glob("*.ipynb")}
    # a real process, started outside any checkout, as a learner would
    res = subprocess.run([sys.executable, "-m", "qcourse.exercises", "build"], cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                         check=False)
    assert res.returncode == 2, res.stdout
    for command in ("build", "check"):
        res = cli(command, cwd=tmp_path)
        assert res.returncode == 2, res.stdout
        assert f"the current directory {tmp_path} has no solutions/ folder" in res.stderr
        assert "--root DIR" in res.stderr
    assert {p: p.stat().st_mtime_ns for p in (ROOT / "exercises").glob("*.ipynb")} == before
    assert not (tmp_path / "exercises").exists()
    res = cli("build", "--root", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert res.returncode == 2 and "nowhere has no solutions/ folder" in res.stderr


def test_build_in_the_current_directory_says_where_it_writes(tmp_path, cli):
    _solution(tmp_path)
    res = cli("build", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    here = tmp_path.resolve()
    assert f"building {here / 'exercises'} from {here / 'solutions'}" in res.stdout
    assert (tmp_path / "exercises" / "99_demo.ipynb").exists()


# ------------------------------------------------------------------------------- solutions refused
@pytest.mark.parametrize(
    ("source", "message"),
    [
        # BEGIN less indented than its block: the stub would dedent below `x = 1` (IndentationError)
        ("def f():\n    x = 1\n  ### BEGIN SOLUTION\n    return x\n  ### END SOLUTION",
         r"cell 1, line 3: '### BEGIN SOLUTION' is indented by 2 but the code it encloses starts at "
         r"indentation 4 \(line 4\)"),
        # also when the stub alone would compile: it would sit outside the block it replaces
        ("def f():\n  ### BEGIN SOLUTION\n    return 1\n  ### END SOLUTION",
         r"cell 1, line 2: '### BEGIN SOLUTION' is indented by 2 but the code it encloses starts at "
         r"indentation 4"),
        ("def f(x):\n    if x:\n    ### BEGIN SOLUTION\n        return 1\n    ### END SOLUTION\n    return 0",
         r"cell 1, line 3: '### BEGIN SOLUTION' is indented by 4 but the code it encloses starts at "
         r"indentation 8"),
        ("def f():\n        ### BEGIN SOLUTION\n    return 1\n        ### END SOLUTION",
         r"cell 1, line 2: '### BEGIN SOLUTION' is indented by 8 but the code it encloses starts at "
         r"indentation 4"),
    ],
)
def test_misindented_begin_is_refused(tmp_path, source, message):
    _solution(tmp_path, [CELLS[0], nbformat.v4.new_code_cell(source)])
    with pytest.raises(SolutionMarkerError, match=message):
        exercises.build(tmp_path)
    assert not (tmp_path / "exercises").exists()


def test_correctly_indented_regions_still_build(tmp_path):
    source = ("def f(x):\n    if x:\n        ### BEGIN SOLUTION\n        # a comment first is fine\n"
              "        return 1\n        ### END SOLUTION\n    return 0")
    _solution(tmp_path, [CELLS[0], nbformat.v4.new_code_cell(source)])
    exercises.build(tmp_path)
    ast.parse(nbformat.read(tmp_path / "exercises" / "99_demo.ipynb", as_version=4).cells[2].source)


def test_solution_with_a_syntax_error_is_refused_naming_cell_and_line(tmp_path, cli):
    source = "import math\n\ndef f(x):\n    ### BEGIN SOLUTION\n    return math.sqrt(x\n    ### END SOLUTION"
    _solution(tmp_path, [CELLS[0], nbformat.v4.new_code_cell(source)])
    with pytest.raises(SolutionError, match=r"solutions/99_demo.ipynb, cell 1, line 5: the solution does not "
                                            r"compile \(SyntaxError"):
        exercises.build(tmp_path)
    res = cli("build", "--root", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and "cell 1, line 5" in res.stderr and "Traceback" not in res.stderr


def test_ipython_magics_are_not_syntax_errors(tmp_path):
    source = ("%matplotlib inline\n!echo hi\ndef f():\n    ### BEGIN SOLUTION\n    return 1\n"
              "    ### END SOLUTION")
    _solution(tmp_path, [CELLS[0], nbformat.v4.new_code_cell(source)])
    assert len(exercises.build(tmp_path).written) == 1


def test_nbformat3_solution_is_refused_by_name(tmp_path, cli):
    (tmp_path / "solutions").mkdir()
    v3 = {"metadata": {"name": ""}, "nbformat": 3, "nbformat_minor": 0,
          "worksheets": [{"cells": [{"cell_type": "code", "input": "def f():\n    return 1",
                                     "language": "python", "metadata": {}, "outputs": []}],
                          "metadata": {}}]}
    (tmp_path / "solutions" / "01_old.ipynb").write_text(json.dumps(v3))
    with pytest.raises(SolutionError, match=r"solutions/01_old.ipynb: is nbformat 3; qcourse builds "
                                            r"exercises from nbformat 4 notebooks only"):
        exercises.build(tmp_path)
    res = cli("check", "--root", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and "nbformat 3" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "solutions" / "01_old.ipynb").write_text("{not json")
    with pytest.raises(SolutionError, match="01_old.ipynb: not a notebook"):
        exercises.build(tmp_path)
    (tmp_path / "solutions" / "01_old.ipynb").write_text(json.dumps({"nbformat": 4, "cells": 3}))
    with pytest.raises(SolutionError, match="01_old.ipynb: not a valid nbformat 4 notebook"):
        exercises.build(tmp_path)
