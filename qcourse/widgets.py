"""Interactive widgets for the lessons: thin ipywidgets wrappers over tested pure functions.

The computation lives in :func:`format_readout` (pure, tested); the widget only wires controls to it and
redraws :func:`qcourse.viz.plot_grid_over_histogram`.

>>> import torch
>>> w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
>>> r = format_readout(w, "int4", "channel")
>>> r["granularity"], 0 < r["rel_mse"] < 0.05, "relative MSE" in r["html"]
('channel', True, True)
"""

from __future__ import annotations

from typing import Any

import torch

from qcourse import formats as F

__all__ = ["GRANULARITY_OPTIONS", "format_readout", "format_explorer", "sweep_readout",
           "quantization_explorer"]

#: (label shown, value passed to :func:`qcourse.formats.quantize`)
GRANULARITY_OPTIONS: tuple[tuple[str, str], ...] = (
    ("per-tensor", "tensor"), ("per-channel", "channel"), ("block 32", "block32"), ("block 16", "block16"),
)

_FIXED_NOTES = {
    "none": "{label} is used as is, without a scale: the granularity control does not apply.",
    "block32": "{label} fixes its own granularity: one E8M0 (power-of-two) scale per block of 32.",
    "block16": "{label} fixes its own granularity: one E4M3 scale per block of 16, plus one FP32 scale "
               "per tensor.",
}


def format_readout(w: torch.Tensor, fmt: str, granularity: str = "tensor") -> dict[str, Any]:
    """Quantize ``w`` with ``fmt`` at ``granularity`` and describe the result.

    Formats that fix their own granularity (FP32/BF16/FP16: none; MXFP4: blocks of 32; NVFP4: blocks of
    16) ignore ``granularity`` and say so in ``note``.

    Returns
    -------
    dict with ``fmt, granularity`` (the one used), ``note``, ``rel_mse``, ``bits_per_weight`` (for a
    ``[rows, cols]`` tensor: fp16 scales, a per-channel scale counted over a row) and ``html`` (the
    read-out text, containing "relative MSE").
    """
    nat = F.natural_granularity(fmt)
    gran = nat if nat is not None else granularity
    label = F.FORMAT_LABELS[fmt]
    w_hat = F.quantize(w, fmt, None if nat is not None else gran)
    err = F.relative_mse(w, w_hat)
    bpw = _bits(fmt, gran, w)
    note = _FIXED_NOTES[nat].format(label=label) if nat is not None else ""
    html = (f"<b>{label}</b>, {dict((v, k) for k, v in GRANULARITY_OPTIONS).get(gran, 'no scale')}: "
            f"relative MSE = <b>{err:.4g}</b> &nbsp;·&nbsp; {bpw:.3g} bits/weight"
            + (f"<br><i>{note}</i>" if note else ""))
    return {"fmt": fmt, "granularity": gran, "note": note, "rel_mse": err, "bits_per_weight": bpw,
            "html": html, "w_hat": w_hat}


def _bits(fmt: str, gran: str, w: torch.Tensor) -> float:
    if fmt in ("mxfp4", "nvfp4") or gran in ("none", "tensor"):
        return F.bits_per_weight(fmt)
    group = {"block32": 32, "block16": 16}.get(gran) or w[0].numel()
    return F.bits_per_weight(fmt, group, 16, 16 if fmt == "int4_asym" else 0)


def format_explorer(w: torch.Tensor, fmt: str = "fp8_e4m3", granularity: str = "tensor") -> Any:
    """A widget: pick a format and a scale granularity; see the grid over the weights' histogram.

    Controls: ``Dropdown(description="format")`` over :data:`qcourse.formats.FORMAT_NAMES`,
    ``Dropdown(description="granularity")`` over :data:`GRANULARITY_OPTIONS`; an ``HTML`` read-out with
    the relative MSE, and an ``Output`` holding the figure. Returns the ``VBox``.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from qcourse.viz import plot_grid_over_histogram

    F.quantize(w, "fp32")  # validates w up front (finite float tensor)
    fmt_dd = widgets.Dropdown(options=[(F.FORMAT_LABELS[n], n) for n in F.FORMAT_NAMES], value=fmt,
                              description="format")
    gran_dd = widgets.Dropdown(options=list(GRANULARITY_OPTIONS), value=granularity,
                               description="granularity")
    readout = widgets.HTML()
    out = widgets.Output()

    def update(_: Any = None) -> None:
        r = format_readout(w, fmt_dd.value, gran_dd.value)
        readout.value = r["html"]
        with out:
            out.clear_output(wait=True)
            fig = plot_grid_over_histogram(w, r["fmt"], r["granularity"], rel_mse=r["rel_mse"])
            display(fig)
            plt.close(fig)

    fmt_dd.observe(update, names="value")
    gran_dd.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([fmt_dd, gran_dd]), readout, out])


def sweep_readout(sweep: Any, method: str, bits: int, group_size: int | None) -> dict[str, Any]:
    """One :class:`qcourse.sweeps.Sweep` result plus the read-out text the quantization explorer shows.

    >>> from qcourse import lm
    >>> from qcourse.sweeps import Sweep
    >>> r = sweep_readout(Sweep(lm.load(), tokens=64), "rtn", 4, 32)
    >>> r["row"]["bits_per_weight"], "perplexity" in r["html"]
    (4.625, True)
    """
    row = sweep.run(method, bits, group_size)
    group = "per-channel" if group_size is None else f"group {group_size}"
    html = (f"<b>{method}</b>, {bits} bits, {group}: perplexity <b>{row['ppl']:.4g}</b> "
            f"(full precision {sweep.fp_ppl:.4g}, ×{row['ppl_ratio']:.3f}) &nbsp;·&nbsp; "
            f"{row['bits_per_weight']:.4g} bits/weight &nbsp;·&nbsp; rel. weight error {row['rel_error']:.3g}"
            f" &nbsp;·&nbsp; quantized in {row['quantize_seconds']:.1f} s")
    return {"row": row, "html": html}


def quantization_explorer(sweep: Any, methods: tuple[str, ...] = ("rtn", "hqq", "gptq"),
                          bits: tuple[int, ...] = (2, 3, 4),
                          group_sizes: tuple[int | None, ...] = (32, 64, 128),
                          method: str = "rtn", bit: int = 2, group_size: int | None = 64) -> Any:
    """A widget: method × bits × group size → histogram of the weight errors and perplexity.

    Each setting is quantized and scored once by ``sweep`` (a :class:`qcourse.sweeps.Sweep`) and then
    cached, so revisiting a setting is instant. Controls: ``ToggleButtons`` ``method``, ``bits`` and
    ``group``; an ``HTML`` read-out and an ``Output`` with the figure. Returns the ``VBox``.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    from qcourse.viz import plot_error_histogram

    opts = [("per-channel" if g is None else str(g), g) for g in group_sizes]
    method_w = widgets.ToggleButtons(options=list(methods), value=method, description="method")
    bits_w = widgets.ToggleButtons(options=list(bits), value=bit, description="bits")
    group_w = widgets.ToggleButtons(options=opts, value=group_size, description="group")
    readout = widgets.HTML()
    out = widgets.Output()

    def update(_: Any = None) -> None:
        readout.value = "<i>quantizing and scoring…</i>"
        r = sweep_readout(sweep, method_w.value, bits_w.value, group_w.value)
        readout.value = r["html"]
        with out:
            out.clear_output(wait=True)
            label = f"{method_w.value} {bits_w.value}-bit, {dict((v, k) for k, v in opts)[group_w.value]}"
            fig = plot_error_histogram({label: r["row"]["errors"]}, lim=3.0)
            display(fig)
            plt.close(fig)

    for w in (method_w, bits_w, group_w):
        w.observe(update, names="value")
    update()
    return widgets.VBox([method_w, bits_w, group_w, readout, out])
