"""The course's references page: every lesson cites through it, every link resolves, and no notebook cites a
file that does not ship with the course (the maintainers' ``REFERENCE.md``, the ``seed/`` article, anything
under ``../shared``, or "the course notes")."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = ROOT / "notebooks" / "references.md"
NOTEBOOKS = sorted(p for d in ("notebooks", "solutions", "exercises") for p in (ROOT / d).glob("*.ipynb"))
LESSONS = [p for p in NOTEBOOKS if p.parent.name == "notebooks"]

#: what a learner's checkout does not contain, so a lesson must never point at it
FORBIDDEN = {
    "REFERENCE.md": re.compile(r"REFERENCE\.md"),
    "seed/": re.compile(r"\bseed/"),
    "../shared": re.compile(r"\.\./shared|/work/shared"),
    "the course notes": re.compile(r"course notes", re.IGNORECASE),
}
#: a markdown or HTML link to the references page, with the path as written and the anchor
LINK = re.compile(r"(?P<path>[\w./-]*references\.md)#(?P<key>[A-Za-z0-9_-]+)")
ANCHOR = re.compile(r'<a id="(?P<key>[A-Za-z0-9_-]+)"></a>\*\*(?P<label>[A-Za-z0-9_-]+)\*\*')

nb_param = pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")


def anchors(text: str) -> list[str]:
    """The anchor ids of the references page, in order."""
    return [m["key"] for m in ANCHOR.finditer(text)]


def forbidden_citations(text: str) -> list[str]:
    """The names of the non-shipping sources ``text`` points at."""
    return [name for name, pattern in FORBIDDEN.items() if pattern.search(text)]


def _sources(path: Path) -> str:
    return "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)


def test_references_page_anchors_are_unique_and_match_their_labels():
    text = REFERENCES.read_text(encoding="utf-8")
    keys = anchors(text)
    assert len(keys) >= 30, f"expected the full references page, found {len(keys)} entries"
    assert len(keys) == len(set(keys)), f"duplicate anchors: {sorted(k for k in keys if keys.count(k) > 1)}"
    for m in ANCHOR.finditer(text):
        assert m["key"] == m["label"], f"anchor {m['key']!r} is labelled {m['label']!r}"
    assert not forbidden_citations(text), "the references page itself cites a non-shipping file"


@nb_param
def test_no_citation_of_files_that_do_not_ship(path):
    bad = forbidden_citations(_sources(path))
    assert not bad, (f"{path.relative_to(ROOT)} cites {bad}, which learners do not have: cite the paper or "
                     "project page through notebooks/references.md#key instead")


@nb_param
def test_every_references_link_resolves(path):
    keys = set(anchors(REFERENCES.read_text(encoding="utf-8")))
    for m in LINK.finditer(_sources(path)):
        target = (path.parent / m["path"]).resolve()
        assert target == REFERENCES.resolve(), (
            f"{path.relative_to(ROOT)}: link {m[0]!r} does not point at notebooks/references.md from "
            f"{path.parent.name}/")
        assert m["key"] in keys, f"{path.relative_to(ROOT)}: {m[0]!r} has no anchor in references.md"


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_every_lesson_links_the_references_page(path):
    assert LINK.search(_sources(path)), f"{path.name} never links notebooks/references.md#key"


def test_the_checks_catch_what_they_should():
    # the patterns themselves: each forbidden form is caught, ordinary prose is not
    assert forbidden_citations("see REFERENCE.md §1.3") == ["REFERENCE.md"]
    assert forbidden_citations("(`seed/000_x.txt`)") == ["seed/"]
    assert forbidden_citations("computed in the Course Notes") == ["the course notes"]
    assert forbidden_citations("open ../shared/DESIGN.md") == ["../shared"]
    assert forbidden_citations("seeded inputs; the seed article; shared block scales") == []
    text = "[GPTQ](references.md#gptq), ../notebooks/references.md#obs"
    assert [m["key"] for m in LINK.finditer(text)] == ["gptq", "obs"]
    assert anchors('- <a id="gptq"></a>**gptq** — E. Frantar') == ["gptq"]
