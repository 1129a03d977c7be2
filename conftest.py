"""Repository-wide pytest setup: a wall-clock budget for every notebook that nbval runs.

Each notebook's time is the sum of the durations (setup, which starts the kernel; call; teardown) of its nbval
cell items. When the running total crosses the notebook's budget, the cell item that crossed it fails with a
report naming the notebook and its time. The terminal summary lists every notebook's time, and the same
figures are written to ``test-artifacts/notebook-times.json``.

Budget: the notebook's metadata ``qcourse.time_budget_s`` if set, else the environment variable
``QCOURSE_NOTEBOOK_BUDGET_S``, else 120 s (the CI budget on 2 cores). ``QCOURSE_NOTEBOOK_BUDGET_S=0`` turns
enforcement off (times are still reported).

Kernels of notebooks in ``solutions/`` and ``exercises/`` inherit ``QCOURSE_CHECKS_STRICT=1`` (unless it is
set otherwise), so a failing exercise check in a solution notebook fails its cell, while "not implemented yet"
in an exercise notebook never does. Lessons (``notebooks/``) run checks leniently: they may show a check
rejecting a wrong function on purpose.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path

import pytest

# one implementation of the budget rules, shared with the course website's build (stdlib-only import)
from qcourse.site import BUDGET_ENV, time_budget

STRICT_ENV = "QCOURSE_CHECKS_STRICT"  # same name as qcourse.checks._harness.STRICT_ENV (not imported: cheap)
ARTIFACTS = "test-artifacts"
STRICT_DIRS = ("solutions", "exercises")


def _global_budget() -> float:
    try:
        return time_budget({})
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _is_nbval_cell(item: pytest.Item) -> bool:
    return type(item).__name__ == "IPyNbCell" and str(item.path).endswith(".ipynb")


class NotebookBudget:
    """pytest plugin: per-notebook time accounting and budget enforcement for nbval runs."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.default = _global_budget()
        self.times: dict[str, float] = defaultdict(float)
        self.budgets: dict[str, float] = {}
        self.over: set[str] = set()

    def _name(self, item: pytest.Item) -> str:
        path = Path(item.path)
        try:
            return path.relative_to(self.config.rootpath).as_posix()
        except ValueError:
            return path.as_posix()

    def budget(self, item: pytest.Item) -> float:
        name = self._name(item)
        if name not in self.budgets:
            metadata = json.loads(Path(item.path).read_text(encoding="utf-8")).get("metadata", {})
            if metadata.get("qcourse", {}).get("time_budget_s") is None:
                self.budgets[name] = self.default
            else:
                try:
                    self.budgets[name] = time_budget(metadata)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None
        return self.budgets[name]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item):
        # the kernel of an nbval notebook starts during its first cell's setup and inherits os.environ
        strict_dir = Path(item.path).parent.name in STRICT_DIRS
        if not _is_nbval_cell(item) or not strict_dir or STRICT_ENV in os.environ:
            yield
            return
        os.environ[STRICT_ENV] = "1"
        try:
            yield
        finally:
            del os.environ[STRICT_ENV]

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        outcome = yield
        if not _is_nbval_cell(item):
            return
        report = outcome.get_result()
        name = self._name(item)
        self.times[name] += call.duration
        if call.when != "call" or name in self.over:
            return
        try:
            budget = self.budget(item)
        except ValueError as exc:
            self.over.add(name)
            report.outcome, report.longrepr = "failed", str(exc)
            return
        total = self.times[name]
        if total > budget:
            self.over.add(name)
            message = (f"{name} took {total:.1f} s, over its {budget:g} s budget "
                       f"(crossed at {item.name}; set metadata qcourse.time_budget_s or {BUDGET_ENV})")
            if report.failed and report.longrepr is not None:
                message = f"{report.longrepr}\n\n{message}"
            report.outcome, report.longrepr = "failed", message

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.times:
            return
        terminalreporter.section("notebook wall times")
        rows = []
        for name in sorted(self.times):
            budget = self.budgets.get(name, self.default)
            total = self.times[name]
            verdict = "OVER BUDGET" if total > budget else "ok"
            shown = "none" if math.isinf(budget) else f"{budget:g} s"
            terminalreporter.write_line(f"{name:<48} {total:8.1f} s   budget {shown:<8} {verdict}")
            rows.append({"notebook": name, "seconds": round(total, 2),
                         "budget_s": None if math.isinf(budget) else budget, "over": total > budget})
        terminalreporter.write_line(f"{'total':<48} {sum(self.times.values()):8.1f} s")
        out = Path(self.config.rootpath) / ARTIFACTS
        out.mkdir(exist_ok=True)
        (out / "notebook-times.json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(NotebookBudget(config), "qcourse-notebook-budget")
