"""Figures and the widget of lesson 07 (rate–distortion): thin drawing layers over :mod:`qcourse.theory`.

>>> import matplotlib
>>> matplotlib.use("Agg")
>>> ax = plot_cells(2)
>>> len(ax.lines) >= 4
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from qcourse import theory as T

__all__ = ["plot_cells", "plot_gaussian_rd", "plot_sample_rd", "rd_explorer"]


def _ax(ax: Any, size: tuple[float, float] = (6.5, 4.0)) -> Any:
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def plot_cells(bits: int, ax: Any = None) -> Any:
    """N(0, 1) with the ``bits``-bit Lloyd–Max cells (thresholds dashed, levels dots) and the uniform grid."""
    ax = _ax(ax)
    g = T.gaussian()
    q = T.lloyd_max(g, 2**bits)
    u = T.best_uniform(g, 2**bits)
    x = np.linspace(-4, 4, 801)
    ax.plot(x, g.pdf(x), color="0.3", label="N(0, 1)")
    for t in q.thresholds:
        ax.axvline(t, color="C0", ls="--", lw=0.8)
    ax.plot(q.levels, g.pdf(q.levels), "o", color="C0", label=f"Lloyd–Max levels (MSE {q.mse(g):.4f})")
    ax.plot(u.levels, np.zeros_like(u.levels), "|", ms=14, color="C3",
            label=f"best uniform (MSE {u.mse(g):.4f})")
    ax.set(xlabel="weight", ylabel="density", xlim=(-4, 4),
           title=f"{bits} bit(s): bound D(R) = {T.gaussian_distortion_rate(bits):.4f}")
    ax.legend(loc="upper right", fontsize=8)
    return ax


def plot_gaussian_rd(rows: Sequence[dict[str, Any]], ax: Any = None, max_bits: float = 4.6) -> Any:
    """MSE against bits per weight on N(0, 1): the bound ``2^(−2R)``, the ECSQ curve, every method's point."""
    ax = _ax(ax, (7.5, 5.0))
    r = np.linspace(0.5, max_bits, 200)
    ax.semilogy(r, 2.0 ** (-2 * r), "k-", lw=2, label="Shannon bound D(R) = 2^(−2R)")
    ax.semilogy(r, (math.pi * math.e / 6) * 2.0 ** (-2 * r), "k:", lw=1,
                label="+1.53 dB (ideal ECSQ, high rate)")
    markers = "osD^v<>ph*XP"
    families: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        fam = row["method"].split(" (step")[0]
        families.setdefault(fam, []).append(row)
    for i, (fam, rs) in enumerate(families.items()):
        xs = [q["bits_per_weight"] for q in rs]
        ys = [q["mse"] for q in rs]
        ax.semilogy(xs, ys, markers[i % len(markers)], ls="-" if len(rs) > 1 else "", label=fam, alpha=0.85)
    ax.set(xlabel="bits per weight (scales included)", ylabel="MSE per weight", xlim=(0.8, max_bits))
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_sample_rd(rows_by_name: dict[str, list[dict[str, float]]], ax: Any = None) -> Any:
    """Per labelled sample: its Lloyd–Max MSE and its own Blahut–Arimoto bound; and the Gaussian bound."""
    ax = _ax(ax)
    first = next(iter(rows_by_name.values()))
    r = [row["rate"] for row in first]
    ax.semilogy(r, [row["gaussian_bound"] for row in first], "k-", lw=2, label="Gaussian bound")
    for i, (name, rows) in enumerate(rows_by_name.items()):
        ax.semilogy(r, [row["bound"] for row in rows], "--", color=f"C{i}", label=f"{name}: its bound (B–A)")
        ax.semilogy(r, [row["lloyd_max"] for row in rows], "o-", color=f"C{i}", label=f"{name}: Lloyd–Max")
    ax.set(xlabel="bits per weight", ylabel="MSE / variance")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return ax


def rd_explorer(bits: int = 2) -> Any:
    """A slider over the rate: the Lloyd–Max cells on the density and the numbers against the bound."""
    import ipywidgets as w

    def show(bits: int) -> None:
        fig, ax = plt.subplots(figsize=(6.5, 4.0))
        plot_cells(bits, ax)
        plt.show()

    return w.interactive(show, bits=w.IntSlider(value=bits, min=1, max=4, description="bits"))
