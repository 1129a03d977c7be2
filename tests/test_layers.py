"""The package's layering (README, "Layout"): a module imports only its own layer or the layers before it.

Imports are read from the source with ``ast`` (module-level and function-level alike), so a lazy import that
reaches up a layer is caught too. A new top-level module must be given a layer here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "qcourse"

#: top-level modules and sub-packages of qcourse, layer by layer, lowest first (as in README.md)
LAYERS: list[set[str]] = [
    {"formats", "fp4_blocks"},
    {"grouping", "packing", "affine", "quantized_weight", "ldlq", "hadamard", "lattice", "kmeans", "xnor",
     "kquants", "tables", "machine"},
    {"methods"},
    {"kernels"},
    {"nn", "lm"},
    {"theory", "sizing", "layer_errors", "hqq_shrinkage"},
    {"checks", "exercises", "grading", "site", "bench", "viz", "viz_vq", "quip_plots", "rd_plots",
     "bitnet_lesson", "binary_nets", "widgets", "sweeps", "diagnostics", "digits", "doctor", "notebook",
     "roofline", "capstone", "capstone_widgets",
     "__init__", "__main__"},
]


def layer_of(top: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    return None


def top_level(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_tops(path: Path) -> set[str]:
    """The qcourse top-level names a file imports (``from qcourse import x`` counts as ``x``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] != "qcourse":
                continue
            if len(parts) == 1:
                out.update(a.name for a in node.names)
            else:
                out.add(parts[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names
                       if a.name.startswith("qcourse.") and len(a.name.split(".")) > 1)
    return out


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


def test_every_top_level_module_has_a_layer():
    tops = {top_level(p) for p in MODULES}
    missing = sorted(t for t in tops if layer_of(t) is None)
    assert not missing, f"give these qcourse modules a layer in tests/test_layers.py and README.md: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_respect_the_layers(path):
    own = layer_of(top_level(path))
    if own is None:
        pytest.skip("no layer (reported by test_every_top_level_module_has_a_layer)")
    upward = sorted(t for t in imported_tops(path) if (layer_of(t) or 0) > own)
    assert not upward, (f"qcourse/{path.relative_to(PACKAGE)} (layer {own}) imports {upward} from a later "
                        "layer; move the shared code down a layer or the importer up")
