"""Lesson 09's figure and widget: the measured table as a Pareto plot, and the decision guide with sliders.

Thin wrappers over tested pure functions of :mod:`qcourse.capstone`: :func:`pareto_figure` draws every row
(bits per byte against model bytes, one colour per model, one marker per method, each model's Pareto front
as a line) with an optional budget line; :func:`guide_readout` runs :func:`~qcourse.capstone.recommend` and
:func:`~qcourse.capstone.screen` and writes the read-out; :func:`guide_explorer` wires sliders to both. The
lesson shows :func:`pareto_figure` at the widget's default values as a static figure, so it reads where
widgets do not render.

>>> rows = [{"model": "austen", "params": 10, "method": "fp32", "bits": None, "group_size": None,
...          "bits_per_weight": 32.0, "model_bytes": 40, "ppl": 3.0, "bits_per_byte": 1.58,
...          "source": "00_welcome", "kernel": None},
...         {"model": "austen", "params": 10, "method": "rtn", "bits": 4, "group_size": 64,
...          "bits_per_weight": 4.3, "model_bytes": 8, "ppl": 3.1, "bits_per_byte": 1.63,
...          "source": "02_rtn_hqq", "kernel": "int4"}]
>>> r = guide_readout(rows, memory_bytes=20)
>>> [o["method"] for o in r["ranked"]], r["excluded"]
(['rtn'], {'over budget': 1})
>>> "RTN 4-bit" in r["html"]
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qcourse import capstone as C

__all__ = ["DEFAULTS", "MARKERS", "guide_explorer", "guide_readout", "pareto_figure"]

#: marker per method label
MARKERS = {"fp32": "*", "rtn": "o", "hqq": "s", "gptq": "^", "aqlm": "D", "quip": "P", "bitnet": "x",
           "bitnet-trained": "X", "binary": "v"}
#: the widget's default inputs (the lesson's static figure uses the same)
DEFAULTS = {"memory_bytes": 1.5e6, "hardware": "cpu", "calibration_data": True, "training_budget": False,
            "max_ppl_ratio": None, "require_kernel": False}


def _colors(models: Sequence[str]) -> dict[str, Any]:
    import matplotlib as mpl

    cmap = mpl.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(models)}


def pareto_figure(rows: Sequence[dict[str, Any]], budget: float | None = None, y: str = "bits_per_byte",
                  highlight: dict[str, Any] | None = None, ax: Any = None, title: str | None = None) -> Any:
    """Every row's ``y`` against its model bytes (log scale), each model's Pareto front drawn as a line.

    ``budget`` adds a vertical line (and shades what does not fit); ``highlight`` circles one row (the
    guide's choice). Returns the matplotlib ``Figure``.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> rows = [{"model": "m", "method": "fp32", "model_bytes": 400, "bits_per_byte": 1.6},
    ...         {"model": "m", "method": "rtn", "model_bytes": 60, "bits_per_byte": 2.0}]
    >>> fig = pareto_figure(rows, budget=100)
    >>> fig.axes[0].get_xscale(), len(fig.axes[0].lines) >= 2
    ('log', True)
    """
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("rows must hold at least one row")
    if y not in ("bits_per_byte", "ppl"):
        raise ValueError(f"y must be 'bits_per_byte' or 'ppl'; got {y!r}")
    if ax is None:
        fig, ax = plt.subplots(figsize=(8, 4.6))
    else:
        fig = ax.figure
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = _colors(models)
    for model in models:
        mine = [r for r in rows if r["model"] == model and r.get(y) is not None and math.isfinite(r[y])]
        for r in mine:
            ax.scatter(r["model_bytes"], r[y], marker=MARKERS.get(r["method"], "o"), color=colors[model],
                       s=60 if r["method"] == "fp32" else 28, zorder=3)
        front = C.pareto(mine, y=y)
        ax.plot([r["model_bytes"] for r in front], [r[y] for r in front], color=colors[model], lw=1.2,
                label=model, zorder=2)
    for method in dict.fromkeys(r["method"] for r in rows):
        ax.scatter([], [], marker=MARKERS.get(method, "o"), color="0.3",
                   label=C.METHOD_LABELS.get(method, method))
    if budget is not None:
        ax.axvline(budget, color="k", ls="--", lw=1)
        ax.axvspan(budget, max(r["model_bytes"] for r in rows) * 1.5, color="0.85", zorder=0)
    if highlight is not None:
        ax.scatter(highlight["model_bytes"], highlight[y], s=220, facecolors="none", edgecolors="crimson",
                   linewidths=2, zorder=4)
    ax.set_xscale("log")
    ax.set(xlabel="model bytes (everything stored)",
           ylabel="bits per byte" if y == "bits_per_byte" else "perplexity",
           title=title or "Quality against size: every measured configuration")
    worst = sorted(r[y] for r in rows if r.get(y) is not None and math.isfinite(r[y]))
    # keep the collapsed rows (ternary/binary PTQ) from flattening the interesting part of the plot
    top = worst[min(len(worst) - 1, int(0.9 * len(worst)))]
    ax.set_ylim(worst[0] * 0.97, top * 1.05)
    ax.legend(fontsize=7, ncol=2, loc="upper right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig


def guide_readout(rows: Sequence[dict[str, Any]], memory_bytes: float, hardware: str = "cpu",
                  calibration_data: bool = True, training_budget: bool = False,
                  max_ppl_ratio: float | None = None, require_kernel: bool = False, top: int = 5
                  ) -> dict[str, Any]:
    """The guide's answer for these inputs: ``{"ranked", "excluded", "html"}``.

    ``ranked`` is :func:`~qcourse.capstone.recommend`'s list (``top`` first), ``excluded`` counts the rows
    dropped per reason (:func:`~qcourse.capstone.screen`), ``html`` the read-out the widget shows.
    """
    screened = C.screen(rows, memory_bytes, hardware, calibration_data, training_budget, max_ppl_ratio,
                        require_kernel)
    ranked = C.recommend(memory_bytes, hardware, calibration_data, training_budget, max_ppl_ratio, rows=rows,
                         require_kernel=require_kernel, top=top)
    excluded: dict[str, int] = {}
    for s in screened:
        if s["excluded"]:
            excluded[s["excluded"]] = excluded.get(s["excluded"], 0) + 1
    head = f"budget <b>{memory_bytes / 1e6:.3g} MB</b> on {hardware.upper()}: "
    if not ranked:
        html = head + "<b>nothing measured fits</b>"
    else:
        items = "".join(
            f"<li>{o['cite']}"
            + (f" · ×{o['ppl_ratio']:.3f} the best float ppl" if o["ppl_ratio"] is not None else "")
            + (f" · packed kernel {o['kernel']}" if o["kernel"] not in (None, "float") else
               (" · no packed kernel here (decoded per layer: slower)" if o["kernel"] is None else ""))
            + "</li>" for o in ranked)
        html = head + f"{len(screened) - sum(excluded.values())} options fit<ol>{items}</ol>"
    if excluded:
        html += "excluded: " + ", ".join(f"{n} {why}" for why, n in excluded.items())
    return {"ranked": ranked, "excluded": excluded, "html": html}


def guide_explorer(rows: Sequence[dict[str, Any]] | None = None, **defaults: Any) -> Any:
    """A widget over the decision guide: memory budget (log slider, MB), hardware, calibration data, training
    budget, quality tolerance; shows the ranked options and the Pareto figure with the budget and the first
    choice marked. ``rows`` defaults to the shipped embedded table; ``defaults`` override :data:`DEFAULTS`.
    Returns the ``VBox``.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    rows = list(C.load_rows("embedded") if rows is None else rows)
    unknown = sorted(set(defaults) - set(DEFAULTS))
    if unknown:
        raise TypeError(f"guide_explorer takes the defaults {sorted(DEFAULTS)}; got {unknown}")
    d = {**DEFAULTS, **defaults}
    sizes = [r["model_bytes"] for r in rows]
    lo, hi = math.log10(min(sizes) * 0.8 / 1e6), math.log10(max(sizes) * 1.2 / 1e6)
    budget_w = widgets.FloatLogSlider(value=d["memory_bytes"] / 1e6, min=lo, max=hi, step=0.01,
                                      description="budget MB", readout_format=".3g")
    hw_w = widgets.ToggleButtons(options=["cpu", "gpu"], value=d["hardware"], description="hardware")
    calib_w = widgets.Checkbox(value=d["calibration_data"], description="calibration data")
    train_w = widgets.Checkbox(value=d["training_budget"], description="training budget")
    tol_w = widgets.FloatSlider(value=d["max_ppl_ratio"] or 3.0, min=1.0, max=3.0, step=0.01,
                                description="max ppl ×", readout_format=".2f")
    readout = widgets.HTML()
    out = widgets.Output()

    def update(_: Any = None) -> None:
        budget = budget_w.value * 1e6
        tol = None if tol_w.value >= 3.0 else tol_w.value   # the slider's end means "no limit"
        r = guide_readout(rows, budget, hw_w.value, calib_w.value, train_w.value, tol)
        readout.value = r["html"]
        with out:
            out.clear_output(wait=True)
            fig = pareto_figure(rows, budget=budget, highlight=r["ranked"][0]["row"] if r["ranked"] else None)
            display(fig)
            plt.close(fig)

    for w in (budget_w, hw_w, calib_w, train_w, tol_w):
        w.observe(update, names="value")
    update()
    return widgets.VBox([budget_w, hw_w, widgets.HBox([calib_w, train_w]), tol_w, readout, out])
