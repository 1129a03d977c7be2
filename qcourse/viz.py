"""Figures for the lessons: bit layouts, value grids, error across magnitudes, a grid over a histogram,
HQQ's shrinkage and convergence, quality against bits, and the outlier statistics of a model's layers.

Every function returns a :class:`matplotlib.figure.Figure` (or draws on the ``ax`` it is given) and
computes nothing a test cannot check elsewhere: the numbers come from :mod:`qcourse.formats`,
:mod:`qcourse.sweeps` and :mod:`qcourse.diagnostics`.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> fig = plot_bit_layouts(["fp32", "fp8_e4m3"])
>>> len(fig.axes)
1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from qcourse import formats as F
from qcourse.diagnostics import kurtosis

__all__ = [
    "FIELD_COLORS", "bit_fields", "plot_bit_layouts", "plot_block_layouts", "plot_value_grids",
    "plot_relative_error", "grid_for_display", "plot_grid_over_histogram",
    "plot_shrinkage", "plot_convergence", "plot_error_histogram", "plot_quality_vs_bits",
    "plot_layer_stats", "plot_weight_histograms", "plot_activation_channels",
]

FIELD_COLORS = {"sign": "#d62728", "exponent": "#1f77b4", "mantissa": "#2ca02c", "integer": "#9467bd",
                "scale": "#ff7f0e", "trit": "#8c564b"}


def _plt() -> Any:
    import matplotlib.pyplot as plt

    return plt


def _fig_ax(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
    """Draw on ``ax`` when given (a panel of a larger figure), else on a new figure of ``figsize``."""
    if ax is None:
        return _plt().subplots(figsize=figsize)
    return ax.figure, ax


def bit_fields(fmt: str) -> list[tuple[str, int]]:
    """The fields of one element of ``fmt`` from the most significant bit: ``[(field, width), ...]``.

    >>> bit_fields("fp8_e4m3"), bit_fields("int4")
    ([('sign', 1), ('exponent', 4), ('mantissa', 3)], [('integer', 4)])
    """
    if fmt in F.FLOAT_FORMATS or fmt in ("mxfp4", "nvfp4"):
        f = F.get_format(fmt)
        return [("sign", 1), ("exponent", f.exponent_bits), ("mantissa", f.mantissa_bits)]
    if fmt in ("int8", "int4", "int4_asym"):
        return [("integer", F.get_format(fmt).bits)]
    if fmt == "ternary":
        return [("trit", 2)]  # stored in 2 bits (or 5 trits per byte); log2 3 = 1.58 bits of information
    if fmt == "binary":
        return [("sign", 1)]
    raise ValueError(f"fmt must be one of {list(F.FORMAT_NAMES)}; got {fmt!r}")


def plot_bit_layouts(names: Sequence[str] = ("fp32", "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1",
                                             "int8", "int4", "ternary", "binary")) -> Any:
    """One row of coloured boxes per format: sign, exponent and mantissa bits (or integer bits)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 0.8))
    for row, name in enumerate(names):
        y = len(names) - 1 - row
        x = 0
        for field, width in bit_fields(name):
            for _ in range(width):
                ax.add_patch(plt.Rectangle((x, y + 0.1), 0.95, 0.8, color=FIELD_COLORS[field], alpha=0.85))
                x += 1
        ax.text(-0.5, y + 0.5, F.FORMAT_LABELS[name], ha="right", va="center", fontsize=9)
        ax.text(x + 0.4, y + 0.5, f"{x} bit{'s' if x > 1 else ''}", va="center", fontsize=8, color="0.3")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in FIELD_COLORS.values()]
    ax.legend(handles, list(FIELD_COLORS), ncol=6, loc="upper center", bbox_to_anchor=(0.5, -0.02),
              fontsize=8, frameon=False)
    ax.set_xlim(-7, 36)
    ax.set_ylim(0, len(names))
    ax.axis("off")
    ax.set_title("Bit layouts (most significant bit on the left)")
    fig.tight_layout()
    return fig


def plot_block_layouts() -> Any:
    """MXFP4 (32 E2M1 elements + one E8M0 scale) and NVFP4 (16 E2M1 + one E4M3 scale, FP32 per tensor).

    >>> import matplotlib; matplotlib.use("Agg")
    >>> len(plot_block_layouts().axes)
    1
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 2.0))
    rows = [("MXFP4: 32 × E2M1 + E8M0 scale (8 bits) = 136 bits → 4.25 bits/weight", 32, 8),
            ("NVFP4: 16 × E2M1 + E4M3 scale (8 bits) = 72 bits → 4.5 bits/weight (+ FP32 per tensor)", 16, 8)]
    for r, (label, n, sbits) in enumerate(rows):
        y = 1 - r
        ax.add_patch(plt.Rectangle((0, y + 0.15), sbits * 0.25 - 0.05, 0.6, color=FIELD_COLORS["scale"]))
        x0 = sbits * 0.25 + 0.2
        for i in range(n):
            ax.add_patch(plt.Rectangle((x0 + i * 1.0, y + 0.15), 0.95, 0.6, color=FIELD_COLORS["mantissa"],
                                       alpha=0.5 + 0.5 * (i % 2)))
        ax.text(0, y + 0.9, label, fontsize=9)
    ax.set_xlim(-0.5, 35)
    ax.set_ylim(0, 2.2)
    ax.axis("off")
    ax.set_title("Block-scaled 4-bit formats: orange = shared scale, green = one 4-bit element each")
    fig.tight_layout()
    return fig


def plot_value_grids(names: Sequence[str] = ("fp4_e2m1", "int4", "fp8_e4m3", "fp8_e5m2", "int8")) -> Any:
    """Every positive value of each format on a log axis: floats are log-spaced, integers are not.

    Integer grids are drawn as their integer codes 1..qmax (unscaled).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) + 1.2))
    for row, name in enumerate(names):
        if name in F.FLOAT_FORMATS:
            v = F.FLOAT_FORMATS[name].all_values()
        elif name in ("int8", "int4"):
            v = F.get_format(name).levels()
        else:
            raise ValueError(f"names must be float or symmetric int formats; got {name!r}")
        v = v[v > 0].numpy()
        ax.scatter(v, np.full(v.shape, row), marker="|", s=120, color=f"C{row}")
        ax.text(v.max() * 1.4, row, f"{v.size} positive values", va="center", fontsize=8)
    ax.set_yticks(range(len(names)), [F.FORMAT_LABELS[n] for n in names])
    ax.set_xscale("log", base=2)
    ax.set_xlabel("value (log scale, base 2)")
    ax.set_title("Every positive representable value")
    ax.set_ylim(-0.7, len(names) - 0.3)
    fig.tight_layout()
    return fig


def plot_relative_error(x: torch.Tensor, names: Sequence[str], scales: dict[str, float] | None = None,
                        bins: int = 160) -> Any:
    """Worst relative rounding error ``|Q(x) − x| / |x|`` against ``|x|`` (log–log), one line per format.

    The sweep ``x`` is split into ``bins`` log-spaced magnitude bins and each line is the largest
    relative error in each bin: the upper envelope, which shows the format's bound ``2**-(M+1)`` as a
    plateau instead of a cloud of points.
    """
    plt = _plt()
    scales = scales or {}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    xs = x.double().abs().numpy()
    edges = np.logspace(np.log10(xs.min()), np.log10(xs.max()), bins + 1)
    which = np.clip(np.searchsorted(edges, xs, side="right") - 1, 0, bins - 1)
    centers = np.sqrt(edges[:-1] * edges[1:])
    for i, name in enumerate(names):
        err = F.relative_error(x, name, scale=scales.get(name, 1.0)).double().numpy()
        env = np.full(bins, np.nan)
        np.fmax.at(env, which, err)
        env = np.maximum(env, 1e-9)  # exact bins would vanish from a log axis
        label = F.FORMAT_LABELS[name] + (f" (scale {scales[name]:.3g})" if name in scales else "")
        ax.step(centers, env, where="mid", lw=1.4, color=f"C{i}", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(1e-5, 2)
    ax.set_xlabel("|x|")
    ax.set_ylabel("worst relative error |Q(x) − x| / |x|")
    ax.set_title("Relative rounding error across magnitudes (no per-group scaling)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def grid_for_display(w: torch.Tensor, fmt: str, granularity: str | None) -> tuple[torch.Tensor, str]:
    """The representable values a format offers the weights, scaled as :func:`formats.quantize` scales them.

    For per-tensor scaling (and unscaled formats, clipped to the weights' range) that is exact. With one
    scale per channel or block every group has its own grid, so the grid shown is that of the group with
    the median scale, and the returned caption says so.

    >>> g, caption = grid_for_display(torch.tensor([[-1.0, 0.5, 0.25, 1.0]]), "int4", "tensor")
    >>> g.numel(), caption
    (15, 'INT4 grid, per-tensor scale')
    """
    label = F.FORMAT_LABELS[fmt]
    nat = F.natural_granularity(fmt)
    gran = granularity if nat is None else nat
    w64 = w.detach().double()
    if nat == "none":
        lim = float(w64.abs().max())
        v = F.FLOAT_FORMATS[fmt].all_values() if F.FLOAT_FORMATS[fmt].total_bits <= 16 else None
        if v is None:
            return torch.empty(0), f"{label}: 2³² values, too dense to draw"
        v = v[v.abs() <= lim * 1.05]
        return v, f"{label} values in the weights' range (no scale)"
    groups = F._grouped(w64, gran or "tensor")
    if fmt == "binary":
        scale = groups.abs().mean(dim=1)
        unit = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    elif fmt == "ternary":
        scale = groups.abs().mean(dim=1).clamp(min=1e-5)
        unit = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    elif fmt == "int4_asym":
        lo, hi = groups.amin(dim=1), groups.amax(dim=1)
        scale = (hi - lo) / 15
        k = int(torch.argsort(scale)[scale.numel() // 2])
        s = float(scale[k]) if float(scale[k]) > 0 else 1.0
        z = round(-float(lo[k]) / s)
        v = (torch.arange(16, dtype=torch.float64) - z) * s
        where = "per-tensor scale" if gran == "tensor" else f"{_gran_text(gran)}: the median group's grid"
        return v.float(), f"{label} grid, {where}"
    else:
        elem = F.get_format(fmt)
        if isinstance(elem, F.IntFormat):
            unit = elem.levels().double()
            top = elem.qmax
        else:
            unit = elem.all_values().double()
            top = elem.max_value
        amax = groups.abs().amax(dim=1)
        if fmt == "mxfp4":
            _, e = torch.frexp(amax)
            scale = torch.ldexp(torch.ones_like(amax), (e.long() - 1 - 2).clamp(-127, 127))
        elif fmt == "nvfp4":
            g = float(w64.abs().max()) / (6 * 448) or 1.0
            scale = F.E4M3.round(amax / 6 / g, saturate=True).double() * g
        else:
            scale = amax / top
    k = int(torch.argsort(scale)[scale.numel() // 2])
    s = float(scale[k]) if float(scale[k]) > 0 else 1.0
    where = "per-tensor scale" if gran == "tensor" else f"{_gran_text(gran)}: the median group's grid"
    return (unit * s).float(), f"{label} grid, {where}"


def _gran_text(gran: str | None) -> str:
    texts = {"tensor": "per-tensor scale", "channel": "one scale per channel (row)",
             "block32": "one scale per block of 32", "block16": "one scale per block of 16"}
    return texts.get(gran or "", "")


def plot_grid_over_histogram(w: torch.Tensor, fmt: str, granularity: str | None = None,
                             ax: Any = None, rel_mse: float | None = None) -> Any:
    """Histogram of ``w`` (log counts) with the format's scaled grid drawn as vertical lines."""
    fig, ax = _fig_ax(ax, (9, 3.6))
    x = w.detach().double().flatten().numpy()
    lim = float(np.abs(x).max()) * 1.08
    ax.hist(x, bins=201, range=(-lim, lim), color="0.6", log=True)
    grid, caption = grid_for_display(w, fmt, granularity)
    g = grid.double().numpy()
    g = g[np.abs(g) <= lim]
    if g.size <= 600:
        for v in g:
            ax.axvline(v, color="C3", lw=0.7, alpha=0.8)
    else:  # dense grids (FP16, BF16) would paint the plot solid: show a tick row instead
        ax.plot(g, np.full(g.shape, 0.8), "|", color="C3", ms=6, transform=ax.get_xaxis_transform())
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log)")
    title = caption + (f" — relative MSE {rel_mse:.3g}" if rel_mse is not None else "")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---- lesson 02: RTN, HQQ, GPTQ ----------------------------------------------------------------------------

def plot_shrinkage(ps: Sequence[float] = (1.0, 0.7, 0.5, 0.3), beta: float = 10.0, lim: float = 0.5) -> Any:
    """HQQ's shrinkage operator ``shrink_p(x; β)`` for several ``p`` (:func:`qcourse.methods.hqq.shrink_lp`).

    The identity is drawn dashed: where a curve sits on 0 the error is "explained" by the quantizer, where it
    approaches the identity the error is kept as an outlier. Returns the ``Figure``.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> len(plot_shrinkage().axes[0].lines)       # four curves and the identity
    5
    """
    from qcourse.methods.hqq import shrink_lp

    plt = _plt()
    x = torch.linspace(-lim, lim, 801, dtype=torch.float64)
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for p in ps:
        ax.plot(x.numpy(), shrink_lp(x, beta, p).numpy(), lw=1.4, label=f"p = {p:g}")
    ax.plot(x.numpy(), x.numpy(), "k--", lw=0.7, label="identity")
    ax.set_xlabel("error x = W − Ŵ")
    ax.set_ylabel(f"shrink_p(x; β = {beta:g})")
    ax.set_title("HQQ's generalized soft threshold", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_convergence(histories: dict[str, Sequence[float]]) -> Any:
    """Error per HQQ iteration (``HQQResult.history``), one line per label, best iterate marked.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = plot_convergence({"2-bit": [1.0, 0.8, 0.7, 0.72]})
    >>> fig.axes[0].get_xlabel()
    'iteration (0 = min–max zero point)'
    """
    if not histories:
        raise ValueError("histories is empty")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, h in histories.items():
        h = np.asarray(h, dtype=float)
        rel = h / h[0]
        line, = ax.plot(np.arange(len(h)), rel, ".-", label=label)
        k = int(np.argmin(h))
        ax.plot([k], [rel[k]], "o", mfc="none", ms=9, color=line.get_color())
    ax.set_xlabel("iteration (0 = min–max zero point)")
    ax.set_ylabel("mean |W − Ŵ| / its value at start")
    ax.set_title("HQQ convergence (circle: the iterate kept)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_error_histogram(errors: dict[str, torch.Tensor], ax: Any = None, lim: float | None = None) -> Any:
    """Histograms (log counts) of normalized weight errors ``(W − Ŵ)/rms(W)``, one per label.

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> fig = plot_error_histogram({"a": torch.randn(1000, generator=torch.Generator().manual_seed(0))})
    >>> fig.axes[0].get_yscale()
    'log'
    """
    if not errors:
        raise ValueError("errors is empty")
    fig, ax = _fig_ax(ax, (7, 3.6))
    if lim is None:
        lim = max(float(e.abs().max()) for e in errors.values()) * 1.05 or 1.0
    for label, e in errors.items():
        rms = float(e.double().pow(2).mean().sqrt())
        ax.hist(e.double().numpy(), bins=121, range=(-lim, lim), histtype="step", log=True,
                label=f"{label} (rms {rms:.3g})")
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("weight error (W − Ŵ) / rms(W)")
    ax.set_ylabel("count (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_quality_vs_bits(rows: Sequence[dict[str, Any]], fp_ppl: float, title: str = "",
                         ax: Any = None) -> Any:
    """Perplexity against bits per weight, one line per method, full precision as a dashed line.

    ``rows`` are :meth:`qcourse.sweeps.Sweep.table` rows (``method``, ``bits_per_weight``, ``ppl``).

    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> rows = [{"method": "rtn", "bits_per_weight": b, "ppl": p} for b, p in [(2.3, 9.0), (4.3, 5.1)]]
    >>> plot_quality_vs_bits(rows, 5.0).axes[0].get_yscale()
    'log'
    """
    if not rows:
        raise ValueError("rows is empty")
    fig, ax = _fig_ax(ax, (6, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted((r["bits_per_weight"], r["ppl"]) for r in rows if r["method"] == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
    ax.axhline(fp_ppl, color="k", ls="--", lw=0.8, label=f"full precision ({fp_ppl:.3g})")
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (codes + scales + zeros)")
    ax.set_ylabel("perplexity (log)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------
# outlier diagnostics (the statistics come from qcourse.diagnostics)

def plot_layer_stats(
    stats_by_model: dict[str, Sequence[dict[str, Any]]],
    metrics: Sequence[str] = ("kurtosis", "max_over_std"),
    log: bool = True,
) -> Any:
    """Per-layer weight statistics of several models side by side: one panel per metric.

    ``stats_by_model`` maps a model's label to its :func:`weight_stats` rows (or ``activation_stats``
    rows with metric ``"outlier_ratio"``). The x axis is the layer's position in the model, scaled to
    [0, 1] so models of different depth line up. Returns the matplotlib ``Figure``.
    """
    if not stats_by_model:
        raise ValueError("stats_by_model is empty")
    fig, axes = _plt().subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for label, rows in stats_by_model.items():
            if not rows or metric not in rows[0]:
                raise ValueError(f"metric {metric!r} missing from the rows of {label!r}")
            xs = [i / max(len(rows) - 1, 1) for i in range(len(rows))]
            ax.plot(xs, [r[metric] for r in rows], ".-", ms=3, lw=0.8, label=label)
        if metric == "kurtosis":
            ax.axhline(3.0, color="gray", ls="--", lw=0.8, label="Gaussian (3)")
        ax.set_xlabel("relative depth (layer index / last)")
        ax.set_ylabel(metric)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_weight_histograms(weights: dict[str, torch.Tensor], bins: int = 121, ax: Any = None) -> Any:
    """Histograms of standardized weights ``(w - μ)/σ`` on a log scale, with the Gaussian density for
    reference: heavy tails show as mass far above the parabola. Returns the ``Figure``.

    The legend gives each tensor's kurtosis (:func:`qcourse.diagnostics.kurtosis`, 3 for a Gaussian).
    """
    if not weights:
        raise ValueError("weights is empty")
    fig, ax = _fig_ax(ax, (6.5, 3.8))
    lim = 0.0
    for label, w in weights.items():
        v = w.detach().double().flatten()
        z = ((v - v.mean()) / v.std(unbiased=False)).numpy()
        lim = max(lim, float(abs(z).max()))
        ax.hist(z, bins=bins, density=True, histtype="step", log=True, label=f"{label} (k={kurtosis(v):.1f})")
    xs = torch.linspace(-lim, lim, 400, dtype=torch.float64)
    ax.plot(xs, torch.exp(-(xs**2) / 2) / math.sqrt(2 * math.pi), "k--", lw=0.8, label="Gaussian")
    # a single weight in a bin of 10⁶ already sits near 1e-6; heavy-tailed peaks stay below ~1
    ax.set_ylim(1e-7, 3.0)
    ax.set_xlabel("standardized weight (w - μ) / σ")
    ax.set_ylabel("density (log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_activation_channels(channel_absmax: dict[str, torch.Tensor]) -> Any:
    """Per-channel max |x| of one hooked point per model (one panel each), with the median marked.

    ``channel_absmax`` maps a label to the ``"channel_absmax"`` tensor of an :func:`activation_stats` row.
    Returns the ``Figure``.
    """
    if not channel_absmax:
        raise ValueError("channel_absmax is empty")
    n = len(channel_absmax)
    fig, axes = _plt().subplots(1, n, figsize=(5.5 * n, 3.4), squeeze=False)
    for ax, (label, a) in zip(axes[0], channel_absmax.items(), strict=True):
        a = a.detach().float().cpu()
        med = float(a.median())
        ax.bar(range(len(a)), a.numpy(), width=1.0)
        ax.axhline(med, color="red", lw=0.8, label=f"median {med:.3g}")
        ax.set_yscale("log")
        ax.set_title(f"{label}: max/median = {float(a.max()) / med:.0f}×", fontsize=10)
        ax.set_xlabel("channel")
        ax.set_ylabel("max |x| over tokens")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
