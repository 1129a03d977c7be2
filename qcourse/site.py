"""The course as a static website:
``python -m qcourse.site build [--lessons 00,01] [--out DIR] [--no-execute] [--keep-going]``.

The build discovers the lessons by pattern (``notebooks/NN_slug.ipynb``, with ``exercises/NN_slug.ipynb``
and ``solutions/NN_slug.ipynb`` when they exist), executes each lesson once with the same per-notebook time
budget as the test suite (notebook metadata ``{"qcourse": {"time_budget_s": N}}``, else
``QCOURSE_NOTEBOOK_BUDGET_S``, else 120 s; ``0`` = no budget), and writes a temporary docs tree that
mirrors the repository's layout, so the notebooks' relative links (``references.md#key``,
``../solutions/NN_slug.ipynb``) keep pointing at the same pages:

- ``index.md``: the README's introduction and quick start, and a table of the lessons (number, title, time,
  exercises, solutions), in lesson order;
- ``notebooks/``, ``exercises/``, ``solutions/``: the executed lessons and the exercise and solution notebooks
  (these two are shown as written, not executed); links to course notebooks and Markdown pages are rewritten
  to the ``.html`` pages they become, and every widget is replaced by a static snapshot of its default state
  (its settings and read-out; the lessons draw the widget's default figure right after it);
- ``notebooks/references.md`` and ``about.md`` (``docs/site.md``: how the site is built and why this tool);
- ``assets/``: the site's stylesheet and MathJax, copied from the ``jupyter-server-mathjax`` package so that
  equations render offline (no CDN).

MkDocs (Material theme, ``mkdocs-jupyter``) then renders it with ``mkdocs.yml`` as the base config and the
navigation in lesson order, into ``site/`` (never committed). Finally every internal ``href``/``src`` of the
built site is checked: a link to a missing file or a missing ``#anchor`` fails the build. A lesson that
fails or runs over its budget fails the build too, after every other lesson has run (one report lists
them all); ``--keep-going`` still writes the site, with each failed lesson shown as committed under a
warning, and exits 1.

>>> lesson_number("07_rate_distortion.ipynb"), lesson_number("references.md")
('07', None)
>>> time_budget({"qcourse": {"time_budget_s": 240}}, environ={})
240.0
>>> time_budget({}, environ={"QCOURSE_NOTEBOOK_BUDGET_S": "0"})
inf
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import posixpath
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["DEFAULT_BUDGET_S", "BUDGET_ENV", "Lesson", "BuildError", "lesson_number", "discover",
           "lesson_info", "time_budget", "execute_notebook", "static_widgets", "rewrite_links",
           "site_link", "broken_links", "build", "main"]

#: the budget rules of the test suite (the repository's conftest.py applies the same to nbval runs)
DEFAULT_BUDGET_S = 120.0
BUDGET_ENV = "QCOURSE_NOTEBOOK_BUDGET_S"
FOLDERS = ("notebooks", "exercises", "solutions")
SITE_MARKER = ".qcourse-site"          # written into every site we build: only such a folder is ever cleaned
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
_LESSON_RE = re.compile(r"^(\d{2})_[A-Za-z0-9_]+\.ipynb$")
_NUMBERS_RE = re.compile(r"^\d{2}$")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BuildError(RuntimeError):
    """The site cannot be built as asked (a lesson failed or ran over its budget, a broken link, ...)."""


@dataclass(frozen=True)
class Lesson:
    """One lesson: its notebook, exercise and solution (when they exist), and what its first cells say."""

    number: str
    stem: str
    notebook: Path
    exercise: Path | None
    solution: Path | None
    title: str
    time: str | None
    goals: tuple[str, ...] = field(default=())

    @property
    def short_title(self) -> str:
        """The title up to its first colon: ``01 · Number formats: what a weight can be`` → ``01 · Number
        formats``."""
        return self.title.split(":", 1)[0].strip()


def lesson_number(name: str) -> str | None:
    """``"NN"`` for a lesson file name ``NN_slug.ipynb``, else ``None``."""
    m = _LESSON_RE.match(name)
    return m.group(1) if m else None


def _markdown_sources(nb: Mapping[str, Any]) -> list[str]:
    return [_source(c) for c in nb.get("cells", []) if c.get("cell_type") == "markdown"]


def _source(cell: Mapping[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


_TIME_RE = re.compile(r"\*\*Estimated time(?::\*\*|\*\*:)\s*([^.(\n]+)")
_GOALS_RE = re.compile(r"\*\*(?:You will learn to|Goals)\b[^\n]*\n")
_ITEM_RE = re.compile(r"^(?:[-*]|\d+[.)])\s+(.*)$")


def _goals(text: str) -> tuple[str, ...]:
    """The list right after a "**You will learn to**" or "**Goals.**" line (items may wrap, indented)."""
    m = _GOALS_RE.search(text)
    if m is None:
        return ()
    items: list[str] = []
    for line in text[m.end():].splitlines():
        item = _ITEM_RE.match(line.strip())
        if item and not line.startswith((" ", "\t")):
            items.append(item.group(1))
        elif items and line.startswith((" ", "\t")) and line.strip():
            items[-1] += " " + line.strip()
        else:
            break
    return tuple(" ".join(i.split()) for i in items)


def lesson_info(nb: Mapping[str, Any]) -> tuple[str, str | None, tuple[str, ...]]:
    """Title (the first ``#`` heading), estimated time and goals, read from a lesson's first markdown cells.

    >>> nb = {"cells": [{"cell_type": "markdown", "source": "# 09 · Capstone\\n\\n**You will learn to**\\n"
    ...       "- pick a method\\n- beat a smaller model\\n\\n**Estimated time:** 90 minutes (or so)."}]}
    >>> lesson_info(nb)
    ('09 · Capstone', '90 minutes', ('pick a method', 'beat a smaller model'))
    """
    head = "\n\n".join(_markdown_sources(nb)[:3])
    title = next((m.group(1).strip() for m in re.finditer(r"(?m)^# (.+)$", head)), None)
    if title is None:
        raise ValueError("a lesson's first markdown cells must hold its title as a '# ' heading; found none")
    t = _TIME_RE.search(head)
    return title, (t.group(1).strip() if t else None), _goals(head)


def discover(root: Path, numbers: Iterable[str] | None = None) -> list[Lesson]:
    """The lessons under ``root/notebooks`` (``NN_slug.ipynb``), in lesson order; only ``numbers`` if given.

    Raises ``ValueError`` for a number that is not two digits or names no lesson.
    """
    root = Path(root)
    found = {}
    for path in sorted((root / "notebooks").glob("*.ipynb")):
        n = lesson_number(path.name)
        if n is not None:
            if n in found:
                raise ValueError(f"two lessons share number {n}: {found[n].name} and {path.name}")
            found[n] = path
    if numbers is not None:
        wanted = list(dict.fromkeys(numbers))
        bad = [n for n in wanted if not _NUMBERS_RE.match(n)]
        if bad:
            raise ValueError(f"lessons must be two-digit numbers such as 00,01; got {bad}")
        missing = [n for n in wanted if n not in found]
        if missing:
            raise ValueError(f"no lesson notebooks/{missing[0]}_*.ipynb; lessons here: {sorted(found)}")
        found = {n: found[n] for n in wanted}
    lessons = []
    for n in sorted(found):
        path = found[n]
        nb = json.loads(path.read_text(encoding="utf-8"))
        try:
            title, minutes, goals = lesson_info(nb)
        except ValueError as exc:
            raise ValueError(f"{path.relative_to(root)}: {exc}") from None
        ex, sol = root / "exercises" / path.name, root / "solutions" / path.name
        lessons.append(Lesson(n, path.stem, path, ex if ex.exists() else None, sol if sol.exists() else None,
                              title, minutes, goals))
    return lessons


def time_budget(metadata: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> float:
    """A notebook's wall-clock budget in seconds, by the test suite's rules (``inf`` = none).

    ``metadata["qcourse"]["time_budget_s"]`` if set (a positive number), else ``QCOURSE_NOTEBOOK_BUDGET_S``
    from ``environ`` (``os.environ`` by default; ``0`` = no budget), else 120 s.
    """
    env = os.environ if environ is None else environ
    value = metadata.get("qcourse", {}).get("time_budget_s")
    if value is not None:
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        raise ValueError(f"metadata qcourse.time_budget_s must be a positive number of seconds; "
                         f"got {value!r}")
    raw = env.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_S
    try:
        seconds = float(raw)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV} must be a number of seconds (0 = no budget); got {raw!r}") from None
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"{BUDGET_ENV} must be >= 0 seconds (0 = no budget); got {raw!r}")
    return seconds if seconds > 0 else math.inf


def execute_notebook(path: Path, budget: float | None = None) -> tuple[Any, float]:
    """Run ``path`` top to bottom in a fresh kernel of this Python, in the notebook's own folder (as nbval
    does); return the executed notebook and its wall time (kernel start included, as the tests count it).

    Raises :class:`BuildError` naming the notebook and cell when a cell fails or the total time crosses
    ``budget`` (default: :func:`time_budget` of the notebook; a running cell is stopped when it is reached).
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    limit = time_budget(nb.metadata) if budget is None else budget
    # jupyter_client resolves the python3 kernelspec's "python" to this interpreter: --nbval-current-env
    client = NotebookClient(nb, timeout=None, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.monotonic()
    index = -1
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                left = limit - (time.monotonic() - start)
                if left <= 0:
                    raise CellTimeoutError(f"over budget before cell {index}")
                client.timeout = None if math.isinf(left) else max(1, math.ceil(left))
                client.execute_cell(cell, index)
            client.set_widgets_metadata()
    except CellTimeoutError:
        took = time.monotonic() - start
        own = "time_budget_s" in nb.metadata.get("qcourse", {})
        how = ("its metadata qcourse.time_budget_s sets it" if own
               else f"set metadata qcourse.time_budget_s, or {BUDGET_ENV} for every notebook without one")
        raise BuildError(f"{path.name} ran over its {limit:g} s budget ({took:.0f} s, at cell {index}; "
                         f"{how})") from None
    except CellExecutionError as exc:   # the traceback without the terminal's colour codes
        raise BuildError(f"{path.name}: cell {index} failed:\n{_ANSI.sub('', str(exc))}") from None
    return nb, time.monotonic() - start


# --- widgets: a static snapshot of the default state ----------------------------------------------------

_CHOICE_MODELS = {"DropdownModel", "ToggleButtonsModel", "RadioButtonsModel", "SelectModel"}
_VALUE_MODELS = {"IntSliderModel", "FloatSliderModel", "FloatLogSliderModel", "IntTextModel",
                 "FloatTextModel", "BoundedIntTextModel", "BoundedFloatTextModel", "CheckboxModel",
                 "ToggleButtonModel", "TextModel", "IntRangeSliderModel", "FloatRangeSliderModel",
                 "SelectionSliderModel"}
_PROGRESS_MODELS = {"FloatProgressModel", "IntProgressModel"}


def _model_id(ref: Any) -> str | None:
    return ref[len("IPY_MODEL_"):] if isinstance(ref, str) and ref.startswith("IPY_MODEL_") else None


def _strip_tags(text: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _progress_text(state: Mapping[str, Any], models: Mapping[str, Any]) -> str | None:
    """tqdm's notebook bar (HBox of HTML, progress, HTML) as the text line its console bar would show."""
    kids = [models.get(_model_id(c) or "", {}) for c in state.get("children", [])]
    names = [k.get("model_name") for k in kids]
    if not any(n in _PROGRESS_MODELS for n in names):
        return None
    parts = []
    for kid in kids:
        s = kid.get("state", {})
        if kid.get("model_name") in _PROGRESS_MODELS:
            hi = s.get("max") or 1
            frac = min(max((s.get("value") or 0) / hi, 0.0), 1.0)
            parts.append("|" + "█" * round(20 * frac) + " " * (20 - round(20 * frac)) + "|")
        else:
            parts.append(_strip_tags(str(s.get("value", ""))).strip())
    return " ".join(p for p in parts if p)


def _snapshot(model_id: str, models: Mapping[str, Any], depth: int = 0) -> tuple[list[str], list[str]]:
    """(settings, read-outs) of a widget tree: each control as ``description: value`` and each HTML/Label
    value; Output widgets are left out (the lesson draws the default figure right after the widget)."""
    entry = models.get(model_id)
    if entry is None or depth > 50:
        return [], []
    name, state = entry.get("model_name", ""), entry.get("state", {})
    desc = _strip_tags(str(state.get("description", ""))).strip()
    if name in _CHOICE_MODELS:
        labels, index = state.get("_options_labels", []), state.get("index")
        value = labels[index] if isinstance(index, int) and 0 <= index < len(labels) else "—"
        return [f"{desc}: {value}" if desc else str(value)], []
    if name in _VALUE_MODELS:
        return [f"{desc}: {state.get('value')}" if desc else str(state.get("value"))], []
    if name in {"HTMLModel", "HTMLMathModel"}:
        return [], [str(state.get("value", ""))] if state.get("value") else []
    if name == "LabelModel":
        return [], [html.escape(str(state.get("value", "")))] if state.get("value") else []
    settings, readouts = [], []
    for child in state.get("children", []):
        cid = _model_id(child)
        if cid:
            s, r = _snapshot(cid, models, depth + 1)
            settings += s
            readouts += r
    return settings, readouts


def static_widgets(nb: Any) -> int:
    """Replace every widget output of an executed notebook by static content; drop the widget state.

    A tqdm progress bar becomes its final text line; any other widget becomes a box with its default
    settings and read-outs, saying that it is interactive in JupyterLab and that the figure after it shows
    its default; a widget that was closed before the run ended (a finished ``tqdm(leave=False)`` bar) is
    removed, as JupyterLab removes it. Returns how many widget outputs were replaced or removed. A page
    built from the result loads no widget JavaScript (which a static site could only fetch from a CDN).

    >>> state = {"state": {
    ...   "a": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_b", "IPY_MODEL_c"]}},
    ...   "b": {"model_name": "DropdownModel", "state": {"description": "bits", "_options_labels": ["2", "3"],
    ...         "index": 1}},
    ...   "c": {"model_name": "HTMLModel", "state": {"value": "<b>ppl 12.5</b>"}}}}
    >>> out = {"output_type": "display_data", "metadata": {},
    ...        "data": {WIDGET_VIEW: {"model_id": "a"}, "text/plain": "VBox(...)"}}
    >>> nb = {"metadata": {"widgets": {WIDGET_STATE: state}},
    ...       "cells": [{"cell_type": "code", "outputs": [out]}]}
    >>> static_widgets(nb), "widgets" in nb["metadata"]
    (1, False)
    >>> data = nb["cells"][0]["outputs"][0]["data"]
    >>> sorted(data), "bits: 3" in data["text/html"], "ppl 12.5" in data["text/html"]
    (['text/html', 'text/plain'], True, True)
    """
    models = nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        closed = [o for o in cell.get("outputs", []) if WIDGET_VIEW in o.get("data", {})
                  and o["data"][WIDGET_VIEW].get("model_id") not in models]
        if closed:
            cell["outputs"] = [o for o in cell["outputs"] if all(o is not c for c in closed)]
            replaced += len(closed)
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW not in data:
                continue
            mid = data[WIDGET_VIEW]["model_id"]
            bar = _progress_text(models[mid].get("state", {}), models)
            if bar is not None:
                out["data"] = {"text/plain": bar}
            else:
                settings, readouts = _snapshot(mid, models)
                parts = ['<div class="qc-widget">',
                         '<p class="qc-widget-note"><b>Interactive widget</b> — it runs when you open this '
                         "notebook in JupyterLab. Its default setting is shown here, and the figure after it "
                         "is drawn for that setting.</p>"]
                if settings:
                    parts.append('<p class="qc-widget-settings">'
                                 + " · ".join(html.escape(s) for s in settings) + "</p>")
                parts += [f'<div class="qc-widget-readout">{r}</div>' for r in readouts]
                parts.append("</div>")
                plain = "Interactive widget (open the notebook in JupyterLab). " + "; ".join(settings)
                out["data"] = {"text/html": "".join(parts), "text/plain": plain.strip()}
            replaced += 1
    nb.get("metadata", {}).pop("widgets", None)
    return replaced


# --- links ------------------------------------------------------------------------------------------------

def site_link(target: str, page: str, pages: set[str]) -> str:
    """The site URL for a relative link ``target`` written on the page whose source is ``page`` (a posix
    path in the docs tree); ``pages`` holds every source path in the docs tree. A link to a notebook or a
    Markdown page of the tree becomes a link to its ``.html`` page (anchor kept); anything else is returned
    unchanged (external URLs, ``#anchors``, files that are not pages).

    >>> pages = {"notebooks/references.md", "notebooks/01_x.ipynb", "solutions/01_x.ipynb"}
    >>> site_link("references.md#gptq", "notebooks/01_x.ipynb", pages)
    'references.html#gptq'
    >>> site_link("../solutions/01_x.ipynb", "exercises/01_x.ipynb", pages)
    '../solutions/01_x.html'
    >>> site_link("https://arxiv.org/abs/2210.17323", "notebooks/01_x.ipynb", pages)
    'https://arxiv.org/abs/2210.17323'
    """
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
        return target
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(page), unquote(parts.path)))
    if resolved not in pages or not resolved.endswith((".md", ".ipynb")):
        return target
    stem = parts.path.rsplit(".", 1)[0]
    return stem + ".html" + (f"#{parts.fragment}" if parts.fragment else "")


_MD_LINK = re.compile(r"(\]\()(<?)([^)\s>]+)(>?(?:\s+\"[^\"]*\")?\))")
_HTML_LINK = re.compile(r"""(\b(?:href|src)\s*=\s*)(["'])([^"']+)(\2)""")


def rewrite_links(text: str, page: str, pages: set[str]) -> str:
    """Apply :func:`site_link` to every Markdown link ``[..](target)`` and HTML ``href=``/``src=`` in
    ``text``.

    >>> rewrite_links('[gptq](references.md#gptq), <a href="../notebooks/references.md">refs</a>',
    ...               "notebooks/01_x.ipynb", {"notebooks/references.md"})
    '[gptq](references.html#gptq), <a href="../notebooks/references.html">refs</a>'
    """
    text = _MD_LINK.sub(lambda m: m.group(1) + m.group(2) + site_link(m.group(3), page, pages) + m.group(4),
                        text)
    return _HTML_LINK.sub(lambda m: m.group(1) + m.group(2) + site_link(m.group(3), page, pages) + m.group(4),
                          text)


def _rewrite_notebook_links(nb: Any, page: str, pages: set[str]) -> None:
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = rewrite_links(_source(cell), page, pages)
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            for mime in ("text/html", "text/markdown"):
                if mime in out.get("data", {}):
                    value = out["data"][mime]
                    value = "".join(value) if isinstance(value, list) else value
                    out["data"][mime] = rewrite_links(value, page, pages)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.refs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for key, value in attrs:
            if value is None:
                continue
            if key in {"href", "src"}:
                self.refs.append(value)
            elif key == "id" or (key == "name" and tag == "a"):
                self.ids.add(value)


def broken_links(site: Path) -> list[str]:
    """Every internal ``href``/``src`` of the HTML pages under ``site`` that names a missing file, or a
    missing ``#anchor`` of an HTML page; as ``"page -> target (why)"``. External URLs, ``data:``, ``mailto:``
    and ``javascript:`` are not followed.
    """
    site = Path(site)
    pages = {p.relative_to(site).as_posix(): p for p in site.rglob("*.html")}
    parsed = {}
    for rel, path in pages.items():
        parser = _Refs()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        parsed[rel] = parser
    problems = []
    for rel, parser in sorted(parsed.items()):
        for ref in parser.refs:
            parts = urlsplit(ref)
            if parts.scheme or parts.netloc or ref.startswith("//"):
                continue
            if not parts.path:
                target = rel
            elif parts.path.startswith("/"):
                if rel != "404.html":   # the server's 404 page answers any path, so it links from the root
                    problems.append(f"{rel} -> {ref} (absolute path: breaks when the site is opened from "
                                    "disk)")
                    continue
                target = posixpath.normpath(unquote(parts.path).lstrip("/"))
            else:
                target = posixpath.normpath(posixpath.join(posixpath.dirname(rel), unquote(parts.path)))
            file = site / target
            if target.startswith("../") or not file.exists():
                problems.append(f"{rel} -> {ref} (no file {target})")
                continue
            if file.is_dir():
                target = posixpath.join(target, "index.html")
                if not (site / target).exists():
                    problems.append(f"{rel} -> {ref} (a folder without index.html)")
                    continue
            frag = unquote(parts.fragment)
            if frag and target in parsed and frag not in parsed[target].ids:
                problems.append(f"{rel} -> {ref} (no id {frag!r} in {target})")
    return problems


# --- the docs tree and the build ----------------------------------------------------------------------

def _readme_section(readme: str, heading: str) -> str:
    m = re.search(rf"(?ms)^## {re.escape(heading)}\s*\n(.*?)(?=^## |\Z)", readme)
    if m is None:
        raise BuildError(f"README.md has no '## {heading}' section (the site's home page quotes it)")
    return m.group(1).strip()


def _index_page(root: Path, lessons: Sequence[Lesson]) -> str:
    readme = (root / "README.md").read_text(encoding="utf-8")
    title = re.search(r"(?m)^# (.+)$", readme)
    intro = re.search(r"(?ms)^# .+?\n\n(.*?)(?=^## |\Z)", readme)
    rows = ["| # | lesson | time | exercises | solutions |", "|---|---|---|---|---|"]
    for les in lessons:
        ex = f"[exercises](exercises/{les.stem}.ipynb)" if les.exercise else "—"
        sol = f"[solutions](solutions/{les.stem}.ipynb)" if les.solution else "—"
        name = les.title.split("·", 1)[-1].strip()
        rows.append(f"| {les.number} | [{name}](notebooks/{les.stem}.ipynb) | {les.time or '—'} "
                    f"| {ex} | {sol} |")
    return "\n\n".join([
        f"# {title.group(1).strip() if title else 'qcourse'}",
        intro.group(1).strip() if intro else "",
        "## Lessons",
        "Every lesson below was executed when this site was built, on the machine that built it; the "
        "numbers and figures are that run's. Exercises and solutions are shown as written: run them in "
        "JupyterLab.",
        "\n".join(rows),
        "## Quick start",
        _readme_section(readme, "Quick start"),
        "## How to work through the course",
        _readme_section(readme, "How to work through the course"),
        "[How this site is built](about.md) · [References](notebooks/references.md)",
    ]) + "\n"


def _mathjax_dir() -> Path:
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise BuildError("MathJax for the site comes from the jupyter-server-mathjax package: "
                         "pip install jupyter-server-mathjax==0.2.6 (it is in the dev extra)") from None
    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "MathJax.js").exists():
        raise BuildError(f"{static} holds no MathJax.js")
    return static


def _nav(lessons: Sequence[Lesson]) -> list[Any]:
    nav: list[Any] = [{"Home": "index.md"},
                      {"Lessons": [{les.short_title: f"notebooks/{les.stem}.ipynb"} for les in lessons]}]
    ex = [{f"{les.short_title}: exercises": f"exercises/{les.stem}.ipynb"}
          for les in lessons if les.exercise]
    sol = [{f"{les.short_title}: solutions": f"solutions/{les.stem}.ipynb"}
           for les in lessons if les.solution]
    if ex:
        nav.append({"Exercises": ex})
    if sol:
        nav.append({"Solutions": sol})
    nav += [{"References": "notebooks/references.md"}, {"About this site": "about.md"}]
    return nav


def _check_out_dir(out: Path, root: Path) -> None:
    out, root = out.resolve(), root.resolve()
    if out == root or out in root.parents or out == Path(out.anchor):
        raise ValueError(f"--out {out} would replace the repository (or a folder above it): "
                         "pick a new folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SITE_MARKER).exists():
        raise ValueError(f"--out {out} is a non-empty folder that no site build wrote (no {SITE_MARKER}); "
                         "the build replaces its contents, so give an empty or new folder")


def build(root: Path, out: Path | None = None, numbers: Iterable[str] | None = None, execute: bool = True,
          keep_going: bool = False, log: Any = None) -> dict[str, Any]:
    """Build the site of the lessons ``numbers`` (all by default) of the course at ``root`` into ``out``
    (default ``root/site``); returns a report (pages, seconds, each lesson's execution time and budget).

    Raises ``ValueError`` for bad arguments and :class:`BuildError` when a lesson fails, runs over its
    budget, MkDocs fails, or the built site links to a missing file or anchor. Every lesson runs even when
    an earlier one failed, and the error lists them all; no site is written, unless ``keep_going``: then
    a failed lesson is published as committed (no outputs) under a warning naming the failure, and the
    error is raised after the site is written.
    """
    import nbformat
    import yaml

    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    root = Path(root).resolve()
    out = (root / "site") if out is None else Path(out)
    out = out.resolve()
    _check_out_dir(out, root)
    base_config = root / "mkdocs.yml"
    if not base_config.exists():
        raise BuildError(f"{base_config} is missing (the site's base configuration)")
    lessons = discover(root, numbers)
    if not lessons:
        raise BuildError(f"no lessons (notebooks/NN_slug.ipynb) under {root}")
    # marks the folder as ours before anything can fail, so a rerun may replace a half-built site (MkDocs'
    # --clean keeps dot files)
    out.mkdir(parents=True, exist_ok=True)
    (out / SITE_MARKER).write_text("built by python -m qcourse.site build\n", encoding="utf-8")
    for les in lessons:
        if les.time is None or not les.goals:
            say(f"warning: {les.notebook.name}: its first cells state no "
                f"{'estimated time' if les.time is None else 'goals'}")
    t0 = time.monotonic()
    report: dict[str, Any] = {"out": str(out), "lessons": [], "executed": execute}
    with tempfile.TemporaryDirectory(prefix="qcourse-site-") as tmp:
        docs = Path(tmp) / "docs"
        for folder in FOLDERS:
            (docs / folder).mkdir(parents=True)
        pages = {"index.md", "about.md", "notebooks/references.md"}
        for les in lessons:
            pages.add(f"notebooks/{les.stem}.ipynb")
            pages.update(f"{f}/{les.stem}.ipynb" for f, p in (("exercises", les.exercise),
                                                              ("solutions", les.solution)) if p)
        failures = []
        for les in lessons:
            entry: dict[str, Any] = {"lesson": les.number, "title": les.title, "time": les.time}
            if execute:
                budget = time_budget(json.loads(les.notebook.read_text(encoding="utf-8")).get("metadata", {}))
                say(f"executing {les.notebook.relative_to(root)} (budget "
                    f"{'none' if math.isinf(budget) else f'{budget:g} s'})")
                try:
                    nb, seconds = execute_notebook(les.notebook, budget)
                except BuildError as exc:   # run the other lessons too: one report lists every failure
                    failures.append(str(exc))
                    say(f"  FAILED: {str(exc).splitlines()[0]}")
                    entry["failed"] = str(exc).splitlines()[0]
                    if not keep_going:
                        continue
                    nb = nbformat.read(les.notebook, as_version=4)
                    nb.cells.insert(1, nbformat.v4.new_markdown_cell(
                        '<div class="admonition warning"><p class="admonition-title">This lesson failed '
                        f"when the site was built</p><p>{html.escape(entry['failed'])}. It is shown as "
                        "committed, without outputs: run it in JupyterLab.</p></div>"))
                else:
                    entry.update(seconds=round(seconds, 1), budget_s=None if math.isinf(budget) else budget)
                    say(f"  done in {seconds:.1f} s")
            else:
                nb = nbformat.read(les.notebook, as_version=4)
            entry["widgets"] = static_widgets(nb)
            for folder, nb_, src in (("notebooks", nb, None), ("exercises", None, les.exercise),
                                     ("solutions", None, les.solution)):
                if folder != "notebooks" and src is None:
                    continue
                page_nb = nb_ if nb_ is not None else nbformat.read(src, as_version=4)
                if nb_ is None:
                    static_widgets(page_nb)
                page = f"{folder}/{les.stem}.ipynb"
                _rewrite_notebook_links(page_nb, page, pages)
                nbformat.write(page_nb, docs / page)
            report["lessons"].append(entry)
        if failures and not keep_going:
            raise BuildError(f"{len(failures)} of {len(lessons)} lessons failed; no site was written:\n"
                             + "\n".join(failures))
        refs = (root / "notebooks" / "references.md").read_text(encoding="utf-8")
        refs = rewrite_links(refs, "notebooks/references.md", pages)
        (docs / "notebooks" / "references.md").write_text(refs, encoding="utf-8")
        (docs / "index.md").write_text(_index_page(root, lessons), encoding="utf-8")
        shutil.copyfile(root / "docs" / "site.md", docs / "about.md")
        (docs / "assets").mkdir()
        shutil.copyfile(root / "docs" / "site.css", docs / "assets" / "site.css")
        mathjax = _mathjax_dir()
        shutil.copytree(mathjax, docs / "assets" / "mathjax",
                        ignore=shutil.ignore_patterns("localization", "*.txt", "*.md"))
        # MathJax loads it as [MathJax]/config/qcourse.js (mkdocs.yml: custom_mathjax_url)
        shutil.copyfile(root / "docs" / "mathjax-config.js",
                        docs / "assets" / "mathjax" / "config" / "qcourse.js")
        config = {"INHERIT": str(base_config), "docs_dir": str(docs), "site_dir": str(out),
                  "nav": _nav(lessons)}
        config_path = Path(tmp) / "mkdocs.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
        say(f"rendering {len(pages)} pages with MkDocs into {out}")
        t_render = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f",
                               str(config_path)], capture_output=True, text=True, cwd=tmp,
                              env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
        if proc.returncode != 0:
            raise BuildError(f"mkdocs build failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
        report["render_seconds"] = round(time.monotonic() - t_render, 1)
    problems = broken_links(out)
    if problems:
        raise BuildError("the built site links to missing files or anchors:\n  " + "\n  ".join(problems))
    html_pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html")
                        if not p.relative_to(out).as_posix().startswith("assets/"))
    report.update(pages=len(html_pages), page_list=html_pages, seconds=round(time.monotonic() - t0, 1))
    (out / "build-report.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if failures:
        raise BuildError(f"{len(failures)} of {len(lessons)} lessons failed; the site ({len(html_pages)} "
                         f"pages, {out}) shows them without outputs:\n" + "\n".join(failures))
    return report


def _numbers(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or any(not _NUMBERS_RE.match(s) for s in items):
        raise argparse.ArgumentTypeError(f"expected two-digit lesson numbers separated by commas, such as "
                                         f"00,01; got {text!r}")
    return items


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qcourse.site build [--lessons 00,01] [--out DIR] [--no-execute] [--keep-going]
    [--root DIR]``.

    Prints the build report as JSON on success (exit 0); a failed build prints why (exit 1); bad arguments
    print the usage line (exit 2).
    """
    parser = argparse.ArgumentParser(
        prog="python -m qcourse.site",
        description="Build the course website (MkDocs) from the executed lessons.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="execute the lessons once and render the static site")
    b.add_argument("--lessons", type=_numbers, default=None,
                   help="comma-separated lesson numbers (default: every notebooks/NN_*.ipynb)")
    b.add_argument("--out", type=Path, default=None, help="output folder (default: ROOT/site)")
    b.add_argument("--no-execute", action="store_true",
                   help="render the notebooks as committed (no outputs), without running them")
    b.add_argument("--keep-going", action="store_true",
                   help="publish a lesson that fails as committed (no outputs), under a warning; exit 1")
    b.add_argument("--root", type=Path, default=Path.cwd(), help="the course checkout (default: .)")
    args = parser.parse_args(argv)
    if not (args.root / "notebooks").is_dir():
        parser.error(f"--root {args.root} holds no notebooks/ folder (run from the course checkout)")
    try:
        report = build(args.root, args.out, args.lessons, execute=not args.no_execute,
                       keep_going=args.keep_going)
    except ValueError as exc:
        parser.error(str(exc))
    except BuildError as exc:
        print(f"site build failed: {exc}", file=sys.stderr)
        return 1
    summary = {k: v for k, v in report.items() if k != "page_list"}
    print(json.dumps(summary, indent=1))
    print(f"site: {report['pages']} pages in {report['seconds']} s -> {report['out']}/index.html",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
