"""A real browser drives JupyterLab: open lesson 01, run all cells, change the widget, see the lesson respond;
and lesson 02's ``quantization_explorer``: change the method, then the bits, see read-out and figure change.

JupyterLab is started on 127.0.0.1 (free port, random token) with the repository as its root, and headless
Debian Chromium is driven by Playwright (never ``playwright install``: no download). Lesson 01's widget has
a ``Dropdown`` described "format", one described "granularity", an ``HTML`` read-out with "relative MSE"
followed by a number, and a matplotlib figure in an ``Output`` widget. The test changes "format" and asserts
the read-out and the figure both change. A screenshot lands in ``test-artifacts/`` when it fails.

Lesson 02 as a whole takes minutes (it loads SmolLM2), so its test runs a two-cell notebook: the embedded
model's ``Sweep``, then the lesson's own explorer cell (read from the lesson by its cell id), whose
``ToggleButtons`` "method" and "bits" it clicks; the read-out names the setting and its perplexity.

Skipped when ``/usr/bin/chromium`` is absent, unless ``QCOURSE_REQUIRE_BROWSER=1`` (CI sets it).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
LESSON = "notebooks/01_number_formats.ipynb"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
READOUT = re.compile(r"relative MSE\D{0,20}?(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def _require_browser() -> None:
    if CHROMIUM.exists():
        return
    reason = (f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium) "
              "to run browser tests")
    if os.environ.get("QCOURSE_REQUIRE_BROWSER") == "1":
        pytest.fail(reason + " (QCOURSE_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server started as a child process, stopped by its PID."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(workdir / "config"),
                   JUPYTER_RUNTIME_DIR=str(workdir / "runtime"), QCOURSE_CHECKS_STRICT="1")
        # start the notebook's kernel without a "Select Kernel" dialog, and do not ask about news
        settings = workdir / "settings"
        for plugin, value in {"docmanager-extension/plugin": {"autoStartDefaultKernel": True},
                              "apputils-extension/notification": {"fetchNews": "false"}}.items():
            path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(value))
        self.log = open(workdir / "jupyterlab.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={self.port}", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={workdir / 'workspaces'}",
             f"--LabApp.user_settings_dir={workdir / 'settings'}", "--ServerApp.open_browser=False"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=root)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(f"{self.url}/api/status",
                                         headers={"Authorization": f"token {self.token}"})
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"JupyterLab exited with status {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(request, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except (OSError, http.client.HTTPException):   # not listening yet, or answering half-started
                time.sleep(0.5)
        raise TimeoutError(f"JupyterLab did not answer /api/status within {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()


@contextlib.contextmanager
def _notebook_page(root: Path, rel: str, workdir: Path, shot_name: str) -> Iterator[Any]:
    """JupyterLab serving ``root``, ``rel`` open in headless Chromium with every cell run (Run → Run All, as a
    learner would); yields the page. A failure leaves a full-page screenshot in test-artifacts/."""
    from playwright.sync_api import sync_playwright

    lab = Lab(root, workdir)
    page = None
    try:
        lab.wait_ready()
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(workdir / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 1000})
            try:
                page = context.new_page()
                page.set_default_timeout(180_000)
                page.goto(f"{lab.url}/lab/tree/{rel}?token={lab.token}&reset")
                page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
                # a kernel picker, should one still appear, gets the notebook's own kernel
                dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
                page.wait_for_timeout(2000)
                if dialog.count():
                    dialog.locator("button", has_text=re.compile(r"^Select$")).click()
                page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for()
                _run_all(page)
                yield page
            except BaseException:
                if page is not None:
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / f"{shot_name}.png"), full_page=True)
                raise
            finally:
                context.close()
    finally:
        lab.stop()


def _run_widget_notebook(root: Path, rel: str, workdir: Path, shot_name: str) -> dict[str, str]:
    """Open ``rel`` in JupyterLab, run all cells, change "format"; return read-outs and figures, before and
    after."""
    with _notebook_page(root, rel, workdir, shot_name) as page:
        fmt = page.locator(".widget-dropdown",
                           has=page.locator("label", has_text=re.compile(r"^format$")))
        gran = page.locator(".widget-dropdown",
                            has=page.locator("label", has_text=re.compile(r"^granularity$")))
        readout = page.locator(".widget-html", has_text="relative MSE").first
        figure = page.locator(".widget-output img").first
        fmt.first.wait_for()
        gran.first.wait_for()
        readout.wait_for()
        figure.wait_for()
        fmt.first.scroll_into_view_if_needed()
        before = {"readout": readout.inner_text(), "figure": figure.get_attribute("src") or ""}
        select = fmt.first.locator("select")
        current = select.input_value()
        options = [v for v in select.locator("option").evaluate_all("os => os.map(o => o.value)")
                   if v != current]
        assert options, "the format dropdown offers only one value"
        select.select_option(options[0])
        deadline = time.monotonic() + 120
        after = before
        while time.monotonic() < deadline:
            after = {"readout": readout.inner_text(), "figure": figure.get_attribute("src") or ""}
            if after["readout"] != before["readout"] and after["figure"] != before["figure"]:
                break
            page.wait_for_timeout(250)
        return {"before_readout": before["readout"], "after_readout": after["readout"],
                "before_figure": before["figure"], "after_figure": after["figure"],
                "from": current, "to": options[0]}


def _assert_changed(result: dict[str, str]) -> None:
    for key in ("before_readout", "after_readout"):
        assert READOUT.search(result[key]), f"read-out {result[key]!r} lacks 'relative MSE' and a number"
    assert result["after_readout"] != result["before_readout"], (
        f"read-out did not change when format went {result['from']} → {result['to']}: "
        f"{result['after_readout']!r}")
    assert result["before_figure"].startswith("data:image/") or result["before_figure"].startswith("blob:")
    assert result["after_figure"] != result["before_figure"], "the figure did not change"


def _scratch_notebook(path: Path) -> None:
    """The widget structure lesson 01 uses, for testing the browser machinery on its own."""
    cells = [
        "import ipywidgets as w, numpy as np, matplotlib.pyplot as plt\nfrom IPython.display import display\n"
        "x = np.random.default_rng(0).standard_normal(4096)",
        "GRIDS = {'int4': np.arange(-8, 8) / 7, 'int2': np.arange(-2, 2) / 1.5,\n"
        "         'ternary': np.array([-1., 0, 1])}\n"
        "fmt = w.Dropdown(options=list(GRIDS), value='int4', description='format')\n"
        "gran = w.Dropdown(options=['tensor', 'channel'], value='tensor', description='granularity')\n"
        "out, html = w.Output(), w.HTML()\n"
        "def update(*_):\n"
        "    g = GRIDS[fmt.value] * np.abs(x).max()\n"
        "    q = g[np.abs(x[:, None] - g).argmin(1)]\n"
        "    html.value = f'relative MSE {np.mean((x - q) ** 2) / np.mean(x ** 2):.4f}'\n"
        "    with out:\n"
        "        out.clear_output(wait=True)\n"
        "        fig, ax = plt.subplots(figsize=(4, 2))\n"
        "        ax.hist(x, 80); ax.vlines(g, 0, 50, 'r'); plt.show()\n"
        "fmt.observe(update, 'value'); gran.observe(update, 'value'); update()\n"
        "display(w.VBox([w.HBox([fmt, gran]), html, out]))",
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    _require_browser()
    yield tmp_path


def test_lesson01_widget_responds(workdir):
    if not (ROOT / LESSON).exists():
        pytest.skip(f"{LESSON} not written yet "
                    "(test_browser_machinery_on_scratch_notebook covers the driver)")
    _assert_changed(_run_widget_notebook(ROOT, LESSON, workdir, "lesson01-widget"))


def test_browser_machinery_on_scratch_notebook(workdir):
    if (ROOT / LESSON).exists():
        pytest.skip(f"{LESSON} exists and is tested by test_lesson01_widget_responds")
    root = workdir / "lab-root"
    root.mkdir()
    _scratch_notebook(root / "scratch.ipynb")
    _assert_changed(_run_widget_notebook(root, "scratch.ipynb", workdir, "scratch-widget"))


LESSON02 = "notebooks/02_rtn_hqq.ipynb"
EXPLORER_CELL = "8a72e444"          # the lesson's quantization_explorer cell
PPL_READOUT = re.compile(r"perplexity\D{0,20}?(\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def _explorer_notebook(path: Path) -> str:
    """Two cells: the embedded model's Sweep, then lesson 02's explorer cell verbatim; returns its source."""
    lesson = nbformat.read(ROOT / LESSON02, as_version=4)
    (cell,) = [c for c in lesson.cells if c.get("id") == EXPLORER_CELL]
    setup = ("from qcourse import lm, widgets\nfrom qcourse.sweeps import Sweep\n"
             "model = lm.load()\nsweep = Sweep(model, tokens=4096)")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(setup),
                                         nbformat.v4.new_code_cell(cell.source)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return cell.source


def _click_and_wait(page, group, value: str, readout, figure, before: dict[str, str]) -> dict[str, str]:
    group.locator("button", has_text=re.compile(rf"^\s*{re.escape(value)}\s*$")).first.click()
    deadline = time.monotonic() + 150
    after = before
    while time.monotonic() < deadline:
        after = {"readout": readout.inner_text(), "figure": figure.get_attribute("src") or ""}
        if (after["readout"] != before["readout"] and after["figure"] != before["figure"]
                and PPL_READOUT.search(after["readout"])):
            break
        page.wait_for_timeout(250)
    return after


def _run_all(page) -> None:
    """Run → Run All Cells; if no cell has started within 30 s (the kernel was still starting), run the
    cells one by one with Shift+Enter, as a learner would."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    started = page.locator(".jp-InputPrompt", has_text=re.compile(r"\[(\*|\d+)\]"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if started.count():
            return
        page.wait_for_timeout(500)
    page.locator(".jp-Cell .jp-InputArea-editor").first.click()
    for _ in range(page.locator(".jp-NotebookPanel .jp-Cell").count()):
        page.keyboard.press("Shift+Enter")
        page.wait_for_timeout(500)


def _run_explorer(root: Path, rel: str, workdir: Path) -> list[dict[str, str]]:
    """Open ``rel``, run all, click method → hqq and then bits → 3; the read-out and figure at each stage."""
    with _notebook_page(root, rel, workdir, "lesson02-explorer") as page:
        def group(name: str):
            return page.locator(".widget-toggle-buttons",
                                has=page.locator("label", has_text=re.compile(rf"^{name}$"))).first

        readout = page.locator(".widget-html", has_text="perplexity").first
        figure = page.locator(".widget-output img").first
        for loc in (group("method"), group("bits"), readout, figure):
            loc.wait_for()
        stages = [{"readout": readout.inner_text(), "figure": figure.get_attribute("src") or ""}]
        stages.append(_click_and_wait(page, group("method"), "hqq", readout, figure, stages[-1]))
        stages.append(_click_and_wait(page, group("bits"), "3", readout, figure, stages[-1]))
        return stages


def test_lesson02_explorer_responds_to_method_and_bits(workdir):
    root = workdir / "lab-root"
    root.mkdir()
    source = _explorer_notebook(root / "explorer.ipynb")
    assert "quantization_explorer(sweep" in source and 'method="rtn"' in source and "bit=2" in source
    stages = _run_explorer(root, "explorer.ipynb", workdir)
    texts = [s["readout"] for s in stages]
    assert all(PPL_READOUT.search(t) for t in texts), texts
    assert "rtn" in texts[0] and "2 bits" in texts[0], texts[0]
    assert "hqq" in texts[1] and "2 bits" in texts[1], texts[1]      # method changed, bits kept
    assert "hqq" in texts[2] and "3 bits" in texts[2], texts[2]      # then the bits
    figures = [s["figure"] for s in stages]
    assert figures[0].startswith(("data:image/", "blob:"))
    assert figures[0] != figures[1] != figures[2], "the figure did not change with the setting"
