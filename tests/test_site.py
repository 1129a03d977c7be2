"""The course website (``python -m qcourse.site build``, ``make site``).

The browser test builds the site for two lessons (00, and 01: equations and figures, and the fastest lesson
to execute), serves it with ``python -m http.server`` on 127.0.0.1, and opens it in headless Debian
Chromium through Playwright (the setup of ``tests/test_browser.py``). It checks that the navigation lists
both lessons in order, that lesson 01 shows a figure, equations typeset by MathJax (no raw ``$$``, no
MathJax error), its widget as a static snapshot (setting and read-out, no widget repr), and its goals and
time, and, crawling every page reachable from the
home page, that no ``href``/``src`` names a missing file or ``#anchor``, that no resource a page loads
answers an HTTP error, and that no page fetches anything from another host (learners are often offline).

The other tests check the driver's parts without a browser: lesson discovery, the time budget (the same as
the test suite's, compared with the repository conftest's plugin on every notebook), static widgets, link
rewriting, the link checker, and the command line.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urldefrag, urlsplit

import pytest

from qcourse import site
from qcourse.site import (
    WIDGET_STATE,
    WIDGET_VIEW,
    BuildError,
    broken_links,
    discover,
    lesson_info,
    rewrite_links,
    site_link,
    static_widgets,
    time_budget,
)

ROOT = Path(__file__).resolve().parent.parent
TEST_LESSONS = ("00", "01")


# --- discovery and what a lesson page shows --------------------------------------------------------------

def test_discover_finds_every_lesson_in_order_with_title_time_and_goals():
    lessons = discover(ROOT)
    files = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert [f"{les.stem}.ipynb" for les in lessons] == files
    for les in lessons:
        assert les.title.startswith(les.number), les.title
        assert les.time and any(ch.isdigit() for ch in les.time), (les.stem, les.time)
        assert len(les.goals) >= 2, (les.stem, les.goals)
        assert les.exercise == (ROOT / "exercises" / les.notebook.name if les.exercise else None)
        assert les.solution == (ROOT / "solutions" / les.notebook.name if les.solution else None)


def test_discover_subset_and_bad_numbers():
    assert [les.number for les in discover(ROOT, ["01", "00"])] == ["00", "01"]
    with pytest.raises(ValueError, match="two-digit"):
        discover(ROOT, ["1"])
    with pytest.raises(ValueError, match="no lesson notebooks/99_"):
        discover(ROOT, ["99"])


def test_lesson_info_reads_numbered_goals_and_both_time_spellings():
    nb = {"cells": [{"cell_type": "markdown", "source": [
        "# 05 · A lesson: with a subtitle\n", "\n", "**Goals.** After this lesson you can\n",
        "1. do one thing;\n", "2. do another thing that\n", "   wraps onto a second line.\n", "\n",
        "**Estimated time**: 75–90 minutes. The notebook runs in a minute."]}]}
    title, minutes, goals = lesson_info(nb)
    assert title == "05 · A lesson: with a subtitle"
    assert minutes == "75–90 minutes"
    assert goals == ("do one thing;", "do another thing that wraps onto a second line.")
    with pytest.raises(ValueError, match="title"):
        lesson_info({"cells": [{"cell_type": "markdown", "source": "no heading"}]})


# --- the time budget: the test suite's rules ------------------------------------------------------------

def test_time_budget_is_the_one_the_test_suite_applies(request):
    plugin = request.config.pluginmanager.get_plugin("qcourse-notebook-budget")
    assert plugin is not None, "the repository conftest's notebook-budget plugin is not registered"
    assert time_budget({}) == plugin.default
    for path in sorted(ROOT.glob("*/[0-9][0-9]_*.ipynb")):
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
        assert time_budget(metadata) == plugin.budget(SimpleNamespace(path=path)), path


@pytest.mark.parametrize(("metadata", "env", "expected"), [
    ({}, {}, 120.0),
    ({"qcourse": {"time_budget_s": 150}}, {}, 150.0),
    ({"qcourse": {"time_budget_s": 150}}, {"QCOURSE_NOTEBOOK_BUDGET_S": "0"}, 150.0),
    ({}, {"QCOURSE_NOTEBOOK_BUDGET_S": "300"}, 300.0),
    ({}, {"QCOURSE_NOTEBOOK_BUDGET_S": " "}, 120.0),
    ({}, {"QCOURSE_NOTEBOOK_BUDGET_S": "0"}, math.inf),
])
def test_time_budget_rules(metadata, env, expected):
    assert time_budget(metadata, environ=env) == expected


@pytest.mark.parametrize(("metadata", "env", "match"), [
    ({"qcourse": {"time_budget_s": 0}}, {}, "positive number"),
    ({"qcourse": {"time_budget_s": True}}, {}, "positive number"),
    ({"qcourse": {"time_budget_s": "90"}}, {}, "positive number"),
    ({}, {"QCOURSE_NOTEBOOK_BUDGET_S": "fast"}, "number of seconds"),
    ({}, {"QCOURSE_NOTEBOOK_BUDGET_S": "-5"}, ">= 0"),
    ({}, {"QCOURSE_NOTEBOOK_BUDGET_S": "nan"}, ">= 0"),
])
def test_time_budget_rejects_bad_values(metadata, env, match):
    with pytest.raises(ValueError, match=match):
        time_budget(metadata, environ=env)


def test_execute_notebook_stops_a_notebook_over_its_budget(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                         nbformat.v4.new_code_cell("import time\ntime.sleep(60)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "slow.ipynb"
    nbformat.write(nb, path)
    start = time.monotonic()
    with pytest.raises(BuildError, match=r"slow.ipynb ran over its 8 s budget .*at cell 1"):
        site.execute_notebook(path, budget=8)
    assert time.monotonic() - start < 45


def _tiny_course(root: Path, cells: dict[str, str]) -> None:
    """A course checkout with one lesson per ``{"NN_slug": code}``, a README and the real site config."""
    import nbformat

    (root / "notebooks").mkdir(parents=True)
    for stem, code in cells.items():
        intro = (f"# {stem[:2]} · Lesson {stem}\n\n**You will learn to**\n- one thing\n- another\n\n"
                 "**Estimated time:** 5 minutes.")
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(intro),
                                             nbformat.v4.new_code_cell(code)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, root / "notebooks" / f"{stem}.ipynb")
    (root / "notebooks" / "references.md").write_text("# References\n")
    (root / "README.md").write_text("# tiny\n\nA course.\n\n## Quick start\n\nRun it.\n\n"
                                    "## How to work through the course\n\nRead it.\n")
    shutil.copyfile(ROOT / "mkdocs.yml", root / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", root / "docs")


def test_build_runs_every_lesson_and_lists_every_failure(tmp_path, capsys):
    root = tmp_path / "course"
    _tiny_course(root, {"00_ok": "x = 1", "01_broken": "raise RuntimeError('lesson 01 is broken')",
                        "02_broken": "assert 1 == 2, 'a claim that does not hold'"})
    out = tmp_path / "site"
    assert site.main(["build", "--root", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 lessons failed; no site was written" in err
    assert "01_broken.ipynb: cell 1 failed" in err and "lesson 01 is broken" in err
    # the lessons after a failure still ran, and the error has no terminal colour codes
    assert "02_broken.ipynb: cell 1 failed" in err and "a claim that does not hold" in err
    assert "\x1b[" not in err
    assert sorted(p.name for p in out.iterdir()) == [".qcourse-site"]

    # --keep-going: the site is written, the failed lessons shown without outputs under a warning; exit 1
    argv = ["build", "--root", str(root), "--out", str(out), "--keep-going", "--lessons", "00,01"]
    assert site.main(argv) == 1
    err = capsys.readouterr().err
    assert "1 of 2 lessons failed; the site (" in err and "01_broken.ipynb: cell 1 failed" in err
    broken = (out / "notebooks" / "01_broken.html").read_text(encoding="utf-8")
    assert "This lesson failed when the site was built" in broken and "lesson 01 is broken" in broken
    report = json.loads((out / "build-report.json").read_text(encoding="utf-8"))
    assert [e.get("failed", "")[:20] for e in report["lessons"]] == ["", "01_broken.ipynb: cel"]
    assert report["lessons"][0]["seconds"] > 0 and broken_links(out) == []


# --- widgets, links, the link checker -------------------------------------------------------------------

def _tqdm_notebook(value: float, total: float) -> dict:
    state = {"bar": {"model_name": "HBoxModel", "state": {"children": [
        "IPY_MODEL_l", "IPY_MODEL_p", "IPY_MODEL_r"]}},
             "l": {"model_name": "HTMLModel", "state": {"value": "training: 100%"}},
             "p": {"model_name": "FloatProgressModel", "state": {"value": value, "max": total}},
             "r": {"model_name": "HTMLModel", "state": {"value": " 40/40 [00:03&lt;00:00, 12.1it/s]"}}}
    out = {"output_type": "display_data", "metadata": {},
           "data": {WIDGET_VIEW: {"model_id": "bar", "version_major": 2}, "text/plain": "HBox(...)"}}
    return {"metadata": {"widgets": {WIDGET_STATE: {"state": state}}},
            "cells": [{"cell_type": "code", "outputs": [out]}, {"cell_type": "markdown", "source": "x"}]}


def test_static_widgets_turns_a_progress_bar_into_its_final_line():
    nb = _tqdm_notebook(40, 40)
    assert static_widgets(nb) == 1
    data = nb["cells"][0]["outputs"][0]["data"]
    assert data == {"text/plain": "training: 100% |" + "█" * 20 + "| 40/40 [00:03<00:00, 12.1it/s]"}
    assert "widgets" not in nb["metadata"]
    half = _tqdm_notebook(10, 40)
    static_widgets(half)
    assert "|" + "█" * 5 + " " * 15 + "|" in half["cells"][0]["outputs"][0]["data"]["text/plain"]


def test_static_widgets_snapshot_names_each_setting():
    state = {"box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_t", "IPY_MODEL_s",
                                                                       "IPY_MODEL_u", "IPY_MODEL_o"]}},
             "t": {"model_name": "ToggleButtonsModel",
                   "state": {"description": "", "_options_labels": ["off", "on"], "index": 1}},
             "s": {"model_name": "IntSliderModel", "state": {"description": "bits", "value": 3}},
             "u": {"model_name": "LabelModel", "state": {"value": "a < b"}},
             "o": {"model_name": "OutputModel",
                   "state": {"outputs": [{"output_type": "stream", "text": "x"}]}}}
    out = {"output_type": "display_data", "metadata": {}, "data": {WIDGET_VIEW: {"model_id": "box"}}}
    nb = {"metadata": {"widgets": {WIDGET_STATE: {"state": state}}},
          "cells": [{"cell_type": "code", "outputs": [out]}]}
    assert static_widgets(nb) == 1
    page = nb["cells"][0]["outputs"][0]["data"]["text/html"]
    assert '<p class="qc-widget-settings">on · bits: 3</p>' in page
    assert '<div class="qc-widget-readout">a &lt; b</div>' in page and "Interactive widget" in page


def test_static_widgets_removes_a_widget_closed_before_the_run_ended():
    nb = _tqdm_notebook(40, 40)
    nb["metadata"]["widgets"][WIDGET_STATE]["state"].pop("bar")   # tqdm(leave=False) closes its bar
    nb["cells"][0]["outputs"].insert(0, {"output_type": "stream", "name": "stdout", "text": "epoch 1\n"})
    assert static_widgets(nb) == 1
    assert nb["cells"][0]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "epoch 1\n"}]


def test_static_widgets_leaves_a_notebook_without_widgets_alone():
    nb = {"metadata": {"kernelspec": {}}, "cells": [
        {"cell_type": "code", "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]}]}
    before = json.dumps(nb)
    assert static_widgets(nb) == 0
    assert json.dumps(nb) == before


PAGES = {"index.md", "notebooks/references.md", "notebooks/00_welcome.ipynb",
         "notebooks/01_number_formats.ipynb", "exercises/01_number_formats.ipynb",
         "solutions/01_number_formats.ipynb"}


@pytest.mark.parametrize(("target", "page", "expected"), [
    ("references.md", "notebooks/00_welcome.ipynb", "references.html"),
    ("references.md#gptq", "notebooks/00_welcome.ipynb", "references.html#gptq"),
    ("01_number_formats.ipynb#2-sign", "notebooks/00_welcome.ipynb", "01_number_formats.html#2-sign"),
    ("../solutions/01_number_formats.ipynb", "exercises/01_number_formats.ipynb",
     "../solutions/01_number_formats.html"),
    ("../notebooks/references.md#hqq", "solutions/01_number_formats.ipynb",
     "../notebooks/references.html#hqq"),
    # not pages of the site: left alone (the link checker reports them if they are broken)
    ("../solutions/02_rtn_hqq.ipynb", "exercises/01_number_formats.ipynb", "../solutions/02_rtn_hqq.ipynb"),
    ("figure.png", "notebooks/00_welcome.ipynb", "figure.png"),
    ("#section", "notebooks/00_welcome.ipynb", "#section"),
    ("https://arxiv.org/abs/2401.06118", "notebooks/00_welcome.ipynb", "https://arxiv.org/abs/2401.06118"),
    ("/notebooks/references.md", "notebooks/00_welcome.ipynb", "/notebooks/references.md"),
    ("mailto:someone@example.org", "index.md", "mailto:someone@example.org"),
])
def test_site_link(target, page, expected):
    assert site_link(target, page, PAGES) == expected


def test_rewrite_links_in_markdown_and_html():
    text = ('See [AQLM](references.md#aqlm "the paper") and '
            "[the solution](<../solutions/01_number_formats.ipynb>); <a href='references.md#gptq'>GPTQ</a>, "
            "![fig](plot.png), [arXiv](https://arxiv.org/abs/1).")
    out = rewrite_links(text, "notebooks/00_welcome.ipynb", PAGES)
    assert out == ('See [AQLM](references.html#aqlm "the paper") and '
                   "[the solution](<../solutions/01_number_formats.html>); "
                   "<a href='references.html#gptq'>GPTQ</a>, ![fig](plot.png), [arXiv](https://arxiv.org/abs/1).")


def _page(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<!doctype html><html><body>{body}</body></html>", encoding="utf-8")


def test_broken_links_finds_missing_files_and_anchors(tmp_path):
    _page(tmp_path / "index.html", '<a href="notebooks/a.html#intro">a</a> <a href="https://example.org/x">x</a>'
          ' <img src="data:image/png;base64,AAAA"> <a href="#top" id="top">top</a> <a href="sub/">sub</a>'
          ' <script src="assets/app.js"></script>')
    _page(tmp_path / "notebooks" / "a.html", '<h2 id="intro">Intro</h2><a href="../index.html">home</a>'
          '<a href="references.html#nope">ref</a><img src="missing.png"><a href="/index.html">abs</a>'
          '<a href="../../outside.html">out</a>')
    _page(tmp_path / "notebooks" / "references.html", '<a id="gptq"></a>')
    _page(tmp_path / "404.html",
          '<a href="/index.html">home</a><link href="/assets/gone.css" rel="stylesheet">')
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "app.js").write_text("")
    (tmp_path / "sub").mkdir()
    problems = broken_links(tmp_path)
    assert sorted(problems) == sorted([
        "404.html -> /assets/gone.css (no file assets/gone.css)",
        "index.html -> sub/ (a folder without index.html)",
        "notebooks/a.html -> references.html#nope (no id 'nope' in notebooks/references.html)",
        "notebooks/a.html -> missing.png (no file notebooks/missing.png)",
        "notebooks/a.html -> /index.html (absolute path: breaks when the site is opened from disk)",
        "notebooks/a.html -> ../../outside.html (no file ../outside.html)",
    ]), problems
    _page(tmp_path / "sub" / "index.html", "")
    assert "index.html -> sub/ (a folder without index.html)" not in broken_links(tmp_path)


# --- the command line -------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    [], ["serve"], ["build", "--lessons", "1"], ["build", "--lessons", "00,x"], ["build", "--lessons", ""],
    ["build", "--lessons", "99"], ["build", "--out", str(ROOT)], ["build", "--out", str(ROOT.parent)],
    ["build", "--root", "/nonexistent-qcourse-root"],
])
def test_cli_bad_arguments_exit_2_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        site.main(argv)
    assert exc.value.code == 2
    assert "usage: python -m qcourse.site" in capsys.readouterr().err


def test_cli_refuses_to_overwrite_a_folder_it_did_not_build(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        site.main(["build", "--root", str(ROOT), "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "no .qcourse-site" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- the real thing: build two lessons, open them in Chromium ------------------------------------------

@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> tuple[Path, dict]:
    from test_browser import _require_browser

    _require_browser()
    out = tmp_path_factory.mktemp("site") / "site"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.run([sys.executable, "-m", "qcourse.site", "build", "--lessons", ",".join(TEST_LESSONS),
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"site build failed:\n{proc.stdout}\n{proc.stderr}"
    return out, json.loads(proc.stdout)


class _Server:
    """``python -m http.server`` on 127.0.0.1 (free port) serving ``directory``, stopped by its PID."""

    def __init__(self, directory: Path) -> None:
        from test_browser import _free_port

        self.port = _free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1",
                                      str(self.port), "--directory", str(directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/index.html", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("python -m http.server did not start") from None
                time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


#: every element's href/src, resolved against the page (SVG <use href> included)
_REFS_JS = """() => Array.from(document.querySelectorAll('[href], [src]')).flatMap(e =>
    ['href', 'src'].filter(a => e.hasAttribute(a))
                   .map(a => new URL(e.getAttribute(a), document.baseURI).href))"""
_IDS_JS = """() => Array.from(document.querySelectorAll('[id], a[name]'))
    .map(e => e.id || e.getAttribute('name'))"""
_MATHJAX_DONE_JS = """() => new Promise(resolve => {
    if (!window.MathJax || !window.MathJax.Hub) { resolve(false); return; }
    window.MathJax.Hub.Queue(() => resolve(true)); })"""


@pytest.mark.browser
def test_site_in_a_real_browser(built_site):
    from playwright.sync_api import sync_playwright
    from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS

    out, report = built_site
    lessons = discover(ROOT, TEST_LESSONS)
    assert [e["lesson"] for e in report["lessons"]] == list(TEST_LESSONS)
    assert all(e["seconds"] > 0 for e in report["lessons"]), report
    html_pages = {p.relative_to(out).as_posix() for p in out.rglob("*.html")
                  if not p.relative_to(out).as_posix().startswith("assets/")}
    assert report["pages"] == len(html_pages)
    # home, about, references, 404, the two lessons, 01's exercises and solutions
    assert html_pages == {"index.html", "about.html", "404.html", "notebooks/references.html",
                          "notebooks/00_welcome.html", "notebooks/01_number_formats.html",
                          "exercises/01_number_formats.html", "solutions/01_number_formats.html"}

    server = _Server(out)
    external: list[str] = []
    failed: list[str] = []
    page = None
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1300, "height": 1000})

            def offline(route):   # anything not on our server is recorded and refused, as offline
                if route.request.url.startswith(server.url + "/") or route.request.url.startswith("data:"):
                    route.continue_()
                else:
                    external.append(route.request.url)
                    route.abort()

            context.route("**/*", offline)
            context.on("response",
                       lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
            page = context.new_page()
            page.set_default_timeout(60_000)
            try:
                # navigation: both lessons, in lesson order, under "Lessons"
                page.goto(f"{server.url}/index.html")
                nav = page.locator("nav.md-nav--primary a.md-nav__link[href]")
                nav.first.wait_for(state="attached")
                hrefs = [urldefrag(h)[0] for h in nav.evaluate_all("els => els.map(e => e.href)")]
                wanted = [f"{server.url}/notebooks/{les.stem}.html" for les in lessons]
                assert all(w in hrefs for w in wanted), hrefs
                assert [hrefs.index(w) for w in wanted] == sorted(hrefs.index(w) for w in wanted), hrefs
                labels = page.locator("nav.md-nav--primary").inner_text()
                assert labels.index(lessons[0].short_title) < labels.index(lessons[1].short_title), labels

                # lesson 01: figures, typeset equations, goals and time
                page.goto(f"{server.url}/notebooks/{lessons[1].stem}.html")
                assert page.evaluate(_MATHJAX_DONE_JS), "MathJax did not load"
                assert page.locator(".MathJax_Display").count() > 0, "no display equation was typeset"
                assert page.locator(".MathJax").count() > 10
                assert page.locator(".MathJax_Error, merror").count() == 0, "MathJax reported an error"
                text = page.locator(".jupyter-wrapper").inner_text()
                assert "$$" not in text, "raw $$ … $$ left on the page"
                img = page.locator(".jp-OutputArea-output img[src^='data:image/png']").first
                img.scroll_into_view_if_needed()
                assert img.evaluate("e => e.complete && e.naturalWidth > 100 && e.naturalHeight > 50")
                # the format explorer widget: its default setting and read-out, no widget repr
                widget = page.locator(".qc-widget", has_text="relative MSE")
                assert widget.count() == 1 and "format: " in widget.inner_text(), text[:2000]
                assert "VBox(" not in text and "HBox(" not in text
                assert "Estimated time" in text and lessons[1].time in text
                assert "You will learn to" in text and lessons[1].goals[0].split("(")[0].strip() in text

                # crawl everything reachable from the home page
                seen: dict[str, list[str]] = {}
                ids: dict[str, set[str]] = {}
                queue = deque([f"{server.url}/index.html"])
                while queue:
                    url = queue.popleft()
                    if url in seen:
                        continue
                    page.goto(url)
                    page.evaluate(_MATHJAX_DONE_JS)
                    seen[url] = page.evaluate(_REFS_JS)
                    ids[url] = set(page.evaluate(_IDS_JS))
                    for ref in seen[url]:
                        target = urldefrag(ref)[0].split("?")[0]
                        if target.startswith(server.url + "/") and target.endswith(".html"):
                            queue.append(target)
            except BaseException:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "site.png"), full_page=False)
                raise
            finally:
                context.close()
                browser.close()
    finally:
        server.stop()

    visited = {u[len(server.url) + 1:] for u in seen}
    assert visited == html_pages - {"404.html"}, "pages the navigation does not reach, or extra ones"
    missing = []
    for url, refs in seen.items():
        for ref in refs:
            target, frag = urldefrag(ref)
            if not target.startswith(server.url + "/"):
                continue
            path = out / urlsplit(target).path.lstrip("/")
            if path.is_dir():
                path = path / "index.html"
            if not path.is_file():
                missing.append(f"{url} -> {ref} (no file)")
            elif frag and target in ids and frag not in ids[target]:
                missing.append(f"{url} -> {ref} (no #{frag})")
    assert not missing, "\n".join(missing)
    assert not failed, f"resources that answered an HTTP error: {failed}"
    assert not external, f"pages fetched from other hosts (the site must work offline): {external}"
