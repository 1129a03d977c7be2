"""``python -m qcourse.exercises grade DIR``: grading submitted exercise notebooks.

The kernel tests build a class of submissions in a tmp dir from the course's own notebooks — lesson 07
(fast checks) and lesson 01 — and grade it once (a module fixture): the solutions (all pass), the untouched
exercises (all not attempted), wrong answers taken from the checks' mutation suite (each fails with the
first message its check gives in this process), a student who broke the setup cell and deleted the check
cells (graded with the course's cells anyway), missing/broken/crashing answers, an infinite loop (timed
out, in a second run with a short limit), and files that are not notebooks. Every file in the folder is
hashed before and after: nothing is modified or added.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcourse import exercises, grading
from qcourse.checks import l01_formats, l07_rate_distortion
from qcourse.checks._harness import STRICT_ENV, Mutant, try_mutant
from qcourse.grading import Grade

ROOT = Path(__file__).resolve().parent.parent
L07, L01 = "07_rate_distortion", "01_number_formats"
CHECKS07 = ["check_lloyd_step", "check_distortion_rate_gap", "check_water_filling"]
CHECKS01 = ["check_decode_bits", "check_round_to_grid", "check_bits_per_weight_block",
            "check_quantile_levels"]
MODULES = {L07: l07_rate_distortion, L01: l01_formats}


# ------------------------------------------------------------------------------------------- helpers
def _exercise(stem: str) -> nbformat.NotebookNode:
    """The exercise notebook exactly as ``build`` writes it."""
    return nbformat.reads(exercises.exercise_text(ROOT / "solutions" / f"{stem}.ipynb", ROOT), as_version=4)


def _solution(stem: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "solutions" / f"{stem}.ipynb", as_version=4)


def _cell_defining(nb: nbformat.NotebookNode, fn: str) -> nbformat.NotebookNode:
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and f"def {fn}(" in c.source]
    return cell


def _with(stem: str, answers: dict[str, str]) -> nbformat.NotebookNode:
    """The exercise of ``stem`` with the cell of each named function replaced by ``answers[fn]``."""
    nb = _exercise(stem)
    for fn, source in answers.items():
        _cell_defining(nb, fn).source = source
    return nb


def _mutant(stem: str, check: str, mutant_id: str) -> Mutant:
    (mutant,) = [m for m in MODULES[stem].MUTANTS[check] if m.id == mutant_id]
    return mutant


def _mutant_cell(stem: str, check: str, mutant_id: str) -> str:
    """An exercise cell whose answer is a mutant of the checks' mutation suite (helper code in the cell)."""
    _mutant(stem, check, mutant_id)  # it exists
    mod = MODULES[stem].__name__
    fn = check.removeprefix("check_")
    return (f"from {mod} import MUTANTS\n\n"
            f"{fn} = next(m.fn for m in MUTANTS[{check!r}] if m.id == {mutant_id!r})")


def _first_failure(stem: str, check: str, mutant_id: str) -> str:
    """What the check reports first for that mutant, computed in this process."""
    ok, text = try_mutant(getattr(MODULES[stem], check), _mutant(stem, check, mutant_id))
    assert ok, text
    return " ".join(text.splitlines()[0].split())


def _solution_source(stem: str, fn: str) -> str:
    return _cell_defining(_solution(stem), fn).source


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _rows(rows: list[Grade], student: str) -> dict[str, Grade]:
    return {r.check: r for r in rows if r.student == student}


# ------------------------------------------------------------------------------------------ the class
# wrong answers from the mutation suite: an in-place edit, a wrong formula, a missing clamp (cat, lesson 07);
# a partial implementation, an in-place edit, a missing term, a wrong dtype (ivy, lesson 01)
CAT = {"check_lloyd_step": "modifies its input", "check_distortion_rate_gap": "2^(-R)",
       "check_water_filling": "negative rates"}
IVY = {"check_decode_bits": "partial", "check_round_to_grid": "in-place", "check_bits_per_weight_block":
       "no-scale", "check_quantile_levels": "float64"}


def _write_class(folder: Path) -> None:
    folder.mkdir()
    nbformat.write(_solution(L07), folder / "ann.ipynb")
    nbformat.write(_exercise(L07), folder / "bob.ipynb")
    nbformat.write(_with(L07, {c.removeprefix("check_"): _mutant_cell(L07, c, m) for c, m in CAT.items()}),
                   folder / "cat.ipynb")

    # eve: finished every exercise, then broke the setup cell, deleted the check cells and added cells
    # that would hang the kernel and write into the submissions folder, were they run
    eve = _with(L07, {fn: _solution_source(L07, fn) for fn in ("lloyd_step", "distortion_rate_gap",
                                                                "water_filling")})
    setup = next(c for c in eve.cells if c.cell_type == "code" and "seed_everything(0)" in c.source)
    setup.source = "assert False, 'I broke the setup'"
    eve.cells = [c for c in eve.cells if not c.source.startswith("check_")]
    eve.cells.append(nbformat.v4.new_code_cell(f"open({str(folder / 'eve-was-here.txt')!r}, 'w').write('x')"))
    eve.cells.append(nbformat.v4.new_code_cell("while True:\n    pass"))
    nbformat.write(eve, folder / "eve.ipynb")

    # frank: deleted the lloyd_step cell, left a syntax error, and wrote a function that always raises
    frank = _with(L07, {"distortion_rate_gap": "def distortion_rate_gap(mse, rate, variance):\n    return (",
                        "water_filling": "def water_filling(variances, total_rate):\n    return 1 / 0"})
    frank.cells.remove(_cell_defining(frank, "lloyd_step"))
    nbformat.write(frank, folder / "frank.ipynb")

    # gil: two right answers, and a water_filling that kills the kernel
    gil = _with(L07, {"lloyd_step": _solution_source(L07, "lloyd_step"),
                      "distortion_rate_gap": _solution_source(L07, "distortion_rate_gap"),
                      "water_filling": "import os\n\n\ndef water_filling(variances, total_rate):\n"
                                       "    os._exit(3)"})
    nbformat.write(gil, folder / "gil.ipynb")

    nbformat.write(_solution(L01), folder / "hal.ipynb")
    # ivy: lesson 01 mutants, saved by a tool that dropped cell ids and qcourse metadata (nbformat 4.4)
    ivy = _with(L01, {c.removeprefix("check_"): _mutant_cell(L01, c, m) for c, m in IVY.items()})
    ivy.nbformat_minor = 4
    for c in ivy.cells:
        c.pop("id", None)
    ivy.metadata.pop("qcourse")
    nbformat.write(ivy, folder / "ivy.ipynb", version=nbformat.NO_CONVERT)

    # files that are not gradable notebooks
    (folder / "corrupt.ipynb").write_text((ROOT / "exercises" / f"{L07}.ipynb").read_text()[:500])
    (folder / "notes.txt").write_text("I did the exercises on paper.\n")
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    other = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('my own project')")])
    nbformat.write(other, folder / "other.ipynb")
    (folder / ".DS_Store").write_bytes(b"\x00\x01")
    (folder / ".ipynb_checkpoints").mkdir()
    nbformat.write(_exercise(L07), folder / ".ipynb_checkpoints" / "bob-checkpoint.ipynb")


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Grade], Path, dict[str, str], float]:
    folder = tmp_path_factory.mktemp("class") / "submissions"
    _write_class(folder)
    before = _tree_hashes(folder)
    start = time.monotonic()
    rows = grading.grade(folder, ROOT, timeout=90, jobs=2)  # two kernels at a time: rows still in name order
    seconds = time.monotonic() - start
    print("\n" + grading.summary(rows) + f"\n(graded in {seconds:.1f} s)")
    return rows, folder, before, seconds


# ----------------------------------------------------------------------------------------- kernel tests
@pytest.mark.slow
def test_solutions_pass(graded):
    rows, *_ = graded
    assert [r.student for r in rows] == sorted(r.student for r in rows)
    for student, stem, checks in (("ann.ipynb", L07, CHECKS07), ("hal.ipynb", L01, CHECKS01)):
        got = _rows(rows, student)
        assert list(got) == checks
        assert {(r.lesson, r.status, r.message) for r in got.values()} == {(stem, "passed", "")}, got


@pytest.mark.slow
def test_untouched_exercise_is_not_attempted(graded):
    got = _rows(graded[0], "bob.ipynb")
    assert list(got) == CHECKS07
    assert {r.status for r in got.values()} == {"not attempted"}
    assert all("not implemented yet" in r.message for r in got.values())


@pytest.mark.slow
def test_mutants_fail_with_their_checks_first_message(graded):
    got = _rows(graded[0], "cat.ipynb")
    assert list(got) == CHECKS07
    for check, mutant_id in CAT.items():
        assert got[check].status == "failed", got[check]
        assert got[check].message == _first_failure(L07, check, mutant_id)
        assert got[check].exercise == check.removeprefix("check_")
    assert "modified its input levels" in got["check_lloyd_step"].message


@pytest.mark.slow
def test_lesson_found_by_content_when_ids_and_metadata_are_gone(graded):
    got = _rows(graded[0], "ivy.ipynb")
    assert list(got) == CHECKS01
    for check, mutant_id in IVY.items():
        assert (got[check].lesson, got[check].status) == (L01, "failed")
        assert got[check].message == _first_failure(L01, check, mutant_id)


@pytest.mark.slow
def test_only_the_courses_setup_and_check_cells_run(graded):
    rows, folder, *_ = graded
    got = _rows(rows, "eve.ipynb")
    assert {r.status for r in got.values()} == {"passed"}, got  # her broken setup and loop never ran
    assert not (folder / "eve-was-here.txt").exists()


@pytest.mark.slow
def test_missing_broken_and_raising_answers(graded):
    got = _rows(graded[0], "frank.ipynb")
    assert got["check_lloyd_step"].status == "not attempted"
    assert "no cell defining lloyd_step" in got["check_lloyd_step"].message
    gap = got["check_distortion_rate_gap"]
    assert gap.status == "error" and "the exercise cell raised SyntaxError" in gap.message
    water = got["check_water_filling"]
    assert water.status == "error" and "ZeroDivisionError: division by zero" in water.message


@pytest.mark.slow
def test_a_crashing_kernel_is_reported(graded):
    got = _rows(graded[0], "gil.ipynb")
    assert [got[c].status for c in CHECKS07] == ["passed", "passed", "crashed"]
    assert "kernel died while running check_water_filling" in got["check_water_filling"].message


@pytest.mark.slow
def test_files_that_are_not_notebooks_are_reported(graded):
    rows, *_ = graded
    not_graded = {r.student: r.message for r in rows if r.status == "not graded"}
    assert set(not_graded) == {"corrupt.ipynb", "notes.txt", "photo.png", "other.ipynb"}
    assert not_graded["corrupt.ipynb"].startswith("not a notebook: truncated or corrupt JSON")
    assert not_graded["notes.txt"].startswith("not a notebook: not JSON")
    assert not_graded["photo.png"].startswith("not a notebook: not UTF-8")
    assert not_graded["other.ipynb"].startswith("unknown lesson")
    assert not any(r.student.startswith(".") for r in rows)  # hidden files and folders are skipped


@pytest.mark.slow
def test_nothing_in_the_folder_changes(graded):
    _, folder, before, _ = graded
    assert _tree_hashes(folder) == before


@pytest.mark.slow
def test_summary_grid(graded):
    rows, *_ = graded
    text = grading.summary(rows)
    head = next(line for line in text.splitlines() if line.startswith(L07))
    assert head.split() == [L07, "lloyd_step", "distortion_rate_gap", "water_filling"]
    assert next(line for line in text.splitlines() if line.startswith("ann.ipynb")).split() == [
        "ann.ipynb", "passed", "passed", "passed"]
    assert "not graded:\n  corrupt.ipynb: not a notebook" in text
    n = sum(r.status != "not graded" for r in rows)
    assert text.splitlines()[-1].startswith(f"{n} check(s): ")


@pytest.mark.slow
def test_an_infinite_loop_times_out(tmp_path):
    folder = tmp_path / "late"
    folder.mkdir()
    nb = _with(L07, {"lloyd_step": _solution_source(L07, "lloyd_step"),
                     "distortion_rate_gap": "def distortion_rate_gap(mse, rate, variance):\n"
                                            "    while True:\n        pass"})
    nbformat.write(nb, folder / "loop.ipynb")
    start = time.monotonic()
    rows = grading.grade(folder, ROOT, timeout=20)
    assert time.monotonic() - start < 20 + 60  # the kernel's start and kill are not part of the limit
    got = _rows(rows, "loop.ipynb")
    assert [got[c].status for c in CHECKS07] == ["passed", "timed out", "timed out"]
    assert "ran past its 20 s limit while running check_distortion_rate_gap" in got[
        "check_distortion_rate_gap"].message


# ------------------------------------------------------------------------------ without a kernel
def test_lesson_cells_sorted_by_role():
    lesson = grading.course_lessons(ROOT)[0][L07]
    assert lesson.functions == ["lloyd_step", "distortion_rate_gap", "water_filling"]
    assert lesson.checks == [(c, c.removeprefix("check_")) for c in CHECKS07]
    kinds = [c.kind for c in lesson.cells]
    assert kinds[0] == "setup" and "demo" in kinds  # the Lloyd iteration demo calls lloyd_step: not run


def test_identify_lesson():
    lessons = grading.course_lessons(ROOT)[0]
    assert grading.identify_lesson(_exercise(L07), lessons) == (L07, f"metadata names solutions/{L07}.ipynb")
    assert grading.identify_lesson(_solution(L01), lessons)[0] == L01  # solutions carry no metadata
    mixed = nbformat.v4.new_notebook(cells=[_cell_defining(_exercise(L07), "lloyd_step"),
                                            _cell_defining(_exercise(L01), "decode_bits")])
    stem, why = grading.identify_lesson(mixed, lessons)
    assert stem is None and why.startswith("unknown lesson: matches") and L01 in why and L07 in why
    elsewhere = _exercise(L07)
    elsewhere.metadata.qcourse.generated_from = "solutions/99_future.ipynb"
    assert grading.identify_lesson(elsewhere, lessons)[0] == L07  # by its cells
    elsewhere.cells = elsewhere.cells[:1]
    stem, why = grading.identify_lesson(elsewhere, lessons)
    assert stem is None and "99_future" in why


def test_student_cell_matching():
    lesson = grading.course_lessons(ROOT)[0][L07]
    course = next(c for c in lesson.cells if c.functions == ("lloyd_step",))
    sub = _exercise(L07)
    own = _cell_defining(sub, "lloyd_step")
    own.source = "def helper():\n    return 1\n\n\ndef lloyd_step(levels):\n    return helper()"
    cells = [c for c in sub.cells if c.cell_type == "code"]
    assert grading._student_cell(cells, course) == (own.source, "")
    own.id = "renamed-by-a-tool"
    assert grading._student_cell(cells, course) == (own.source, "")  # found by the function it defines
    own.source = "def lloyd_step(levels:\n    return 1"  # does not parse: still found by its def line
    assert grading._student_cell(cells, course) == (own.source, "")
    cells.remove(own)
    source, note = grading._student_cell(cells, course)
    assert source == course.source and "no cell defining lloyd_step" in note


@pytest.mark.parametrize(("record", "want"), [
    ({"status": "passed", "cases": [{"label": "a", "ok": True, "detail": "exact", "error": None}]},
     ("passed", "")),
    ({"status": "not implemented", "cases": []}, ("not attempted", "not implemented yet (raises "
                                                                   "NotImplementedError)")),
    ({"status": "failed", "cases": [{"label": "a", "ok": True, "detail": "exact", "error": None},
                                    {"label": "b", "ok": False, "detail": "got 1, expected 2", "error": None},
                                    {"label": "c", "ok": False, "detail": "raised KeyError: 'x'",
                                     "error": "KeyError: 'x'"}]},
     ("failed", "b: got 1, expected 2")),
    ({"status": "failed", "cases": [{"label": "a", "ok": False, "detail": "raised NotImplementedError: ...",
                                     "error": "NotImplementedError"},
                                    {"label": "b", "ok": False, "detail": "raised TypeError: bad",
                                     "error": "TypeError: bad"}]},
     ("error", "raised TypeError: bad (in every case)")),
    ({"status": "failed", "cases": [{"label": "a", "ok": False, "detail": "raised NotImplementedError",
                                     "error": "NotImplementedError"},
                                    {"label": "b", "ok": False, "detail": "got 1, expected 2",
                                     "error": None}]},
     ("failed", "a: raised NotImplementedError")),
])
def test_outcome_from_history_record(record, want):
    assert grading._outcome(record, "") == want


def test_read_submission_errors(tmp_path):
    cases = {
        "empty.ipynb": (b"", "not a notebook: not JSON"),
        "list.ipynb": (b"[1, 2]", "not a notebook: JSON without a list of cells"),
        "v3.ipynb": (b'{"nbformat": 3, "cells": []}', "not a notebook qcourse can grade: nbformat 3"),
        "latin1.txt": ("café".encode("latin-1"), "not a notebook: not UTF-8"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(grading.SubmissionError, match="^" + message):
            grading.read_submission(tmp_path / name)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                 max_size=4),
                     max_leaves=20)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_file_is_graded_or_reported(tmp_path, data):
    """Whatever a file holds, reading, recognising and planning it either works or says why."""
    base = nbformat.writes(_exercise(L07))
    kind = data.draw(st.sampled_from(["bytes", "json", "cells", "truncated", "source"]))
    if kind == "bytes":
        blob = data.draw(st.binary(max_size=200))
    elif kind == "json":
        blob = json.dumps(data.draw(_JSON)).encode()
    elif kind == "cells":  # a notebook whose cells are arbitrary JSON
        raw = json.loads(base)
        raw["cells"] = data.draw(st.lists(_JSON, max_size=4))
        blob = json.dumps(raw).encode()
    elif kind == "truncated":
        blob = base.encode()[:data.draw(st.integers(0, len(base) - 1))]
    else:  # a real notebook whose exercise cell holds arbitrary text
        raw = json.loads(base)
        raw["cells"][4]["source"] = data.draw(st.text(max_size=60))
        blob = json.dumps(raw).encode()
    path = tmp_path / "sub.ipynb"
    path.write_bytes(blob)
    lessons = _lessons()
    try:
        nb = grading.read_submission(path)
    except grading.SubmissionError as exc:
        assert str(exc)
        return
    stem, why = grading.identify_lesson(nb, lessons)
    assert why
    if stem is not None:
        steps = grading._plan(lessons[stem], nb)
        assert [s.kind for s in steps].count("check") == len(lessons[stem].checks)


@functools.cache
def _lessons() -> dict[str, grading.Lesson]:
    return grading.course_lessons(ROOT)[0]  # once: generating every exercise takes ~0.5 s


def test_grade_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        grading.grade_notebook(tmp_path / "x.ipynb", {}, timeout=0)
    with pytest.raises(NotADirectoryError):
        grading.grade(tmp_path / "missing", ROOT)
    with pytest.raises(ValueError, match="jobs must be an int >= 1"):
        grading.grade(tmp_path, ROOT, jobs=0)
    with pytest.raises(ValueError, match="status must be one of"):
        Grade("s", "l", "e", "c", "ok", "")


# --------------------------------------------------------------------------------------- command line
def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != STRICT_ENV}
    return subprocess.run([sys.executable, "-m", "qcourse.exercises", "grade", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_writes_csv_and_exits_0_without_touching_dir(tmp_path):
    folder = tmp_path / "subs"
    folder.mkdir()
    (folder / "notes.txt").write_text("no notebook here")
    (folder / "half.ipynb").write_text('{"cells": [')
    before = _tree_hashes(folder)
    res = _cli(str(folder), "--root", str(ROOT), "--out", str(tmp_path / "g.csv"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "2 file(s) not graded" in res.stdout and "table written to" in res.stdout
    with open(tmp_path / "g.csv", encoding="utf-8", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [(r["student"], r["status"]) for r in table] == [("half.ipynb", "not graded"),
                                                            ("notes.txt", "not graded")]
    assert list(table[0]) == list(grading.CSV_COLUMNS)
    assert _tree_hashes(folder) == before


@pytest.mark.parametrize(("args", "named"), [
    (["{missing}", "--root", "{root}"], "argument DIR"),
    (["{dir}", "--timeout", "0", "--root", "{root}"], "argument --timeout"),
    (["{dir}", "--timeout", "soon", "--root", "{root}"], "argument --timeout"),
    (["{dir}", "--jobs", "0", "--root", "{root}"], "argument --jobs"),
    (["{dir}", "--out", "{dir}/grades.csv", "--root", "{root}"], "argument --out"),
    (["{dir}", "--out", "{tmp}/no/such/folder/g.csv", "--root", "{root}"], "argument --out"),
    (["{dir}", "--root", "{tmp}"], "argument --root"),
    ([], "DIR"),
])
def test_cli_bad_arguments_exit_2_naming_the_argument(tmp_path, monkeypatch, capsys, args, named):
    (tmp_path / "subs").mkdir()
    monkeypatch.chdir(tmp_path)
    fill = {"missing": str(tmp_path / "nope"), "dir": str(tmp_path / "subs"), "tmp": str(tmp_path),
            "root": str(ROOT)}
    with pytest.raises(SystemExit) as exc:
        exercises.main(["grade", *(a.format(**fill) for a in args)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m qcourse.exercises grade") and named in err
    assert not list((tmp_path / "subs").iterdir()) and not (tmp_path / "grades.csv").exists()


def test_options_before_grade_go_with_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "subs").mkdir()
    monkeypatch.chdir(tmp_path)
    assert exercises.main(["--root", str(ROOT), "grade", "subs", "--out", "g.csv"]) == 0
    assert "0 check(s)" in capsys.readouterr().out and (tmp_path / "g.csv").read_text().startswith("student,")


def test_exercises_cli_lists_grade(capsys):
    with pytest.raises(SystemExit) as exc:
        exercises.main(["--help"])
    assert exc.value.code == 0 and "{build,check,grade}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        exercises.main(["grade", "--help"])
    assert exc.value.code == 0 and "--timeout" in capsys.readouterr().out
