"""Committed notebooks are clean (no outputs, python3 kernel, short cells), and the per-notebook time budget
of the root conftest.py works."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p for d in ("notebooks", "solutions", "exercises") for p in (ROOT / d).glob("*.ipynb"))
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}
MAX_MEDIAN_LINES = 12

nb_param = pytest.mark.parametrize(
    "path", NOTEBOOKS or [None], ids=lambda p: f"{p.parent.name}/{p.name}" if p else "none")
no_notebooks = pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks committed yet")


def _code_lines(source: str) -> int:
    return len([ln for ln in source.strip("\n").split("\n")]) if source.strip() else 0


@nb_param
@no_notebooks
def test_valid_and_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, (f"{path.relative_to(ROOT)}: code cells {dirty} have outputs or execution counts; "
                       "commit notebooks without outputs (clear them, or write the notebook with a script)")
    assert "widgets" not in nb.metadata, f"{path.relative_to(ROOT)}: saved widget state in metadata"


@nb_param
@no_notebooks
def test_kernelspec_is_python3(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec") == KERNELSPEC, (
        f"{path.relative_to(ROOT)}: kernelspec must be {KERNELSPEC}; got {nb.metadata.get('kernelspec')}")


@nb_param
@no_notebooks
def test_code_cells_are_short(path):
    nb = nbformat.read(path, as_version=4)
    lengths = [_code_lines(c.source) for c in nb.cells if c.cell_type == "code"]
    assert lengths, f"{path.relative_to(ROOT)} has no code cell"
    median = statistics.median(lengths)
    assert median <= MAX_MEDIAN_LINES, (
        f"{path.relative_to(ROOT)}: median code cell is {median} lines (> {MAX_MEDIAN_LINES}); "
        "move helpers into qcourse")


@nb_param
@no_notebooks
def test_stem_follows_layout(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+", path.stem), (
        f"{path.relative_to(ROOT)}: name must be NN_slug.ipynb")


LESSONS = [p for p in NOTEBOOKS if p.parent.name == "notebooks"]


@pytest.mark.parametrize("path", LESSONS or [None], ids=lambda p: p.name if p else "none")
@pytest.mark.skipif(not LESSONS, reason="no lessons committed yet")
def test_lesson_follows_template(path):
    """title · goals · prerequisites and time · setup cell · sections with asserts · summary · questions."""
    nb = nbformat.read(path, as_version=4)
    name = path.relative_to(ROOT)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {path.stem[:2]} · "), (
        f"{name}: the first cell must be the title, '# {path.stem[:2]} · ...'")
    intro = " ".join(c.source for c in nb.cells[:3]).lower()
    assert "estimated time" in intro and "prerequisite" in intro, (
        f"{name}: state prerequisites and the estimated time at the top")
    setup = [c for c in nb.cells[:4] if c.cell_type == "code"]
    assert setup and "seed_everything(" in setup[0].source, (
        f"{name}: the first code cell is the setup cell and calls qcourse.notebook.seed_everything")
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    headings = [ln.strip().lower() for src in markdown for ln in src.splitlines() if ln.startswith("#")]
    for want in ("## summary", "## check your understanding"):
        assert want in headings, f"{name}: missing a '{want}' section"
    assert any(re.search(r"^\s*assert ", c.source, re.M) for c in nb.cells if c.cell_type == "code"), (
        f"{name}: a lesson checks its claims with asserts")


def test_code_line_count():
    assert _code_lines("") == 0
    assert _code_lines("x = 1\n") == 1
    assert _code_lines("\nx = 1\n\ny = 2\n") == 3


# ------------------------------------------------------------------------------ the notebook time budget
def _notebook(path: Path, source: str, budget: float | None) -> None:
    cells = [nbformat.v4.new_code_cell(source), nbformat.v4.new_code_cell("1 + 1")]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = KERNELSPEC
    if budget is not None:
        nb.metadata["qcourse"] = {"time_budget_s": budget}
    nbformat.write(nb, path)


def _run_nbval(tmp_path: Path, *args: str, env_budget: str | None = None) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    drop = {"QCOURSE_NOTEBOOK_BUDGET_S", "QCOURSE_CHECKS_STRICT"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if env_budget is not None:
        env["QCOURSE_NOTEBOOK_BUDGET_S"] = env_budget
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"), *args],
        cwd=tmp_path, capture_output=True, text=True, env=env, check=False, timeout=300)


def test_budget_fails_the_slow_notebook_and_reports_times(tmp_path):
    _notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(1.2)", budget=1.0)
    _notebook(tmp_path / "fast.ipynb", "x = 1", budget=None)
    res = _run_nbval(tmp_path, "slow.ipynb", "fast.ipynb")
    out = res.stdout
    assert res.returncode == 1, out
    assert re.search(r"slow\.ipynb took \d+\.\d s, over its 1 s budget", out), out
    assert re.search(r"fast\.ipynb\s+\d+\.\d s\s+budget 120 s\s+ok", out), out
    assert re.search(r"slow\.ipynb\s+\d+\.\d s\s+budget 1 s\s+OVER BUDGET", out), out
    assert "1 failed, 3 passed" in out, out  # only the cell that crossed the budget fails
    rows = json.loads((tmp_path / "test-artifacts" / "notebook-times.json").read_text())
    assert {r["notebook"]: r["over"] for r in rows} == {"slow.ipynb": True, "fast.ipynb": False}


def test_budget_env_override_and_strict_checks_in_kernel(tmp_path):
    # the global budget comes from the environment; solution kernels run checks in strict mode, lessons not
    (tmp_path / "solutions").mkdir()
    (tmp_path / "notebooks").mkdir()
    _notebook(tmp_path / "solutions" / "env.ipynb",
              "import os\nassert os.environ['QCOURSE_CHECKS_STRICT'] == '1'", budget=None)
    _notebook(tmp_path / "notebooks" / "lesson.ipynb",
              "import os\nassert 'QCOURSE_CHECKS_STRICT' not in os.environ", budget=None)
    res = _run_nbval(tmp_path, "solutions/env.ipynb", env_budget="0.001")
    assert res.returncode == 1
    assert re.search(r"solutions/env\.ipynb took \d+\.\d s, over its 0\.001 s budget", res.stdout), res.stdout
    res = _run_nbval(tmp_path, "solutions/env.ipynb", "notebooks/lesson.ipynb", env_budget="0")
    assert res.returncode == 0 and "budget none" in res.stdout, res.stdout
    res = _run_nbval(tmp_path, "solutions/env.ipynb", env_budget="soon")
    assert res.returncode != 0 and "QCOURSE_NOTEBOOK_BUDGET_S must be a number" in res.stderr + res.stdout
