"""Figures, tables and the widget of lesson 04 (QuIP#): thin wrappers over :mod:`qcourse.methods.quip`.

>>> import torch
>>> w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
>>> h = torch.eye(64, dtype=torch.float64)
>>> r = quip_readout(w, h, transform=True, codebook="e8p")
>>> sorted(r)
['bits_per_weight', 'kurtosis', 'mu_w', 'rel_proxy_loss', 'scaled']
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from qcourse import lattice
from qcourse.diagnostics import kurtosis
from qcourse.ldlq import proxy_loss
from qcourse.methods import quip

__all__ = ["rotate", "quip_readout", "ablation", "format_ablation", "plot_before_after",
           "plot_gaussian_mse", "plot_readout", "quip_explorer", "ABLATION_CELLS"]

#: the eight cells of the ablation, in table order: (transform, codebook, rounding)
ABLATION_CELLS = list(itertools.product((False, True), ("scalar", "e8p"), ("nearest", "ldlq")))


def _plt() -> Any:
    import matplotlib.pyplot as plt

    return plt


def rotate(w: torch.Tensor, h: torch.Tensor | None = None, seed: int = 0
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W̃, H̃)``: the two-sided randomized Hadamard transform of a weight (and its Hessian), in float64.

    >>> w = torch.randn(12, 16, generator=torch.Generator().manual_seed(1))
    >>> wt, _ = rotate(w)
    >>> torch.allclose(wt.norm(), w.double().norm())
    True
    """
    m, n = w.shape
    s_out, s_in = quip.incoherence_signs(m, n, seed)
    wt = quip.transform_weight(w.detach().double(), s_out.double(), s_in.double())
    ht = quip.transform_hessian(h.double(), s_in.double()) if h is not None else None
    return wt, ht


def quip_readout(w: torch.Tensor, h: torch.Tensor, transform: bool, codebook: str, bits: int = 2,
                 rounding: str = "ldlq", seed: int = 0, qw: quip.QuIPWeight | None = None) -> dict[str, Any]:
    """What the widget shows for one setting: the weights as rounded (scaled to the codebook's RMS), their
    μ and Pearson kurtosis, and the relative proxy loss ``tr(ΔW H ΔWᵀ)/tr(W H Wᵀ)``.

    ``qw``: the result of that setting if already computed (e.g. kept by :func:`ablation`)."""
    if qw is None:
        qw = quip.quip_quantize(w, h, bits, codebook=codebook, transform=transform, rounding=rounding,
                                seed=seed)
    shown = rotate(w, None, seed)[0] if transform else w.detach().double()
    scaled = shown / float(qw.wscale)
    ref = proxy_loss(w, torch.zeros_like(w), h)
    return {"scaled": scaled, "mu_w": quip.incoherence(shown)["mu_w"], "kurtosis": kurtosis(shown),
            "rel_proxy_loss": qw.loss / ref, "bits_per_weight": qw.bits_per_weight}


def ablation(layers: dict[str, tuple[torch.Tensor, torch.Tensor]], bits: int = 2, seed: int = 0,
             keep: dict[tuple[tuple[bool, str, str], str], quip.QuIPWeight] | None = None
             ) -> dict[tuple[bool, str, str], dict[str, float]]:
    """Relative proxy loss of every ablation cell (:data:`ABLATION_CELLS`) on every layer ``{name: (W, H)}``.

    ``keep``, if given, receives every quantized weight under ``(cell, layer name)``.

    >>> w = torch.randn(16, 64, generator=torch.Generator().manual_seed(0))
    >>> res = ablation({"toy": (w, torch.eye(64, dtype=torch.float64))})
    >>> len(res), sorted(res[(True, "e8p", "ldlq")])
    (8, ['toy'])
    """
    out: dict[tuple[bool, str, str], dict[str, float]] = {}
    for cell in ABLATION_CELLS:
        transform, codebook, rounding = cell
        out[cell] = {}
        for name, (w, h) in layers.items():
            qw = quip.quip_quantize(w, h, bits, codebook=codebook, transform=transform, rounding=rounding,
                                    seed=seed)
            out[cell][name] = qw.loss / proxy_loss(w, torch.zeros_like(w), h)
            if keep is not None:
                keep[(cell, name)] = qw
    return out


def format_ablation(res: dict[tuple[bool, str, str], dict[str, float]]) -> str:
    """A text table: one row per cell, one column per layer, plus the geometric mean.

    >>> print(format_ablation({(True, "e8p", "ldlq"): {"a": 0.01, "b": 0.04}}))
    transform  codebook  rounding         a        b  geo-mean
    yes        e8p       ldlq        0.0100   0.0400    0.0200
    """
    names = list(next(iter(res.values())))
    width = max(9, *(len(n) + 2 for n in names))
    head = f"{'transform':10s} {'codebook':9s} {'rounding':9s}" + "".join(f"{n:>{width}s}" for n in names)
    lines = [head + "  geo-mean"]
    for (t, c, r), row in res.items():
        geo = math.exp(sum(math.log(v) for v in row.values()) / len(row))
        cells = "".join(f"{row[n]:{width}.4f}" for n in names)
        lines.append(f"{'yes' if t else 'no':10s} {c:9s} {r:9s}{cells}  {geo:8.4f}")
    return "\n".join(lines)


def plot_before_after(w: torch.Tensor, wt: torch.Tensor, title: str = "", ax: Any = None) -> Any:
    """Histograms of a weight matrix before and after the transform, each standardised, log scale, with
    the N(0, 1) density: the heavy tails vanish."""
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3.4))
    else:
        fig = ax.figure
    edges = torch.linspace(-12, 12, 161)
    for x, label in ((w.detach().double(), "original W"), (wt, "after RHT on both sides")):
        z = ((x - x.mean()) / x.std()).flatten().clamp(-12, 12)
        ax.hist(z.numpy(), bins=edges.numpy(), density=True, histtype="step", lw=1.5,
                label=f"{label} (kurtosis {kurtosis(x):.1f})")
    g = torch.linspace(-12, 12, 400)
    ax.plot(g.numpy(), (torch.exp(-g**2 / 2) / math.sqrt(2 * math.pi)).numpy(), "k--", lw=1, label="N(0, 1)")
    ax.set_yscale("log")
    ax.set_ylim(1e-7, 1)
    ax.set_xlabel("weight / std")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_gaussian_mse(mse: dict[str, float], ax: Any = None) -> Any:
    """Bar chart of 2-bit MSE on N(0, 1) per quantizer, with the rate–distortion bound ``D(2) = 1/16``."""
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3))
    else:
        fig = ax.figure
    names = list(mse)
    ax.bar(names, [mse[n] for n in names], color="tab:blue")
    ax.axhline(0.0625, color="k", ls="--", lw=1, label="rate–distortion bound D(2) = 0.0625")
    for i, n in enumerate(names):
        ax.text(i, mse[n], f"{mse[n]:.4f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("MSE per weight, N(0, 1)")
    ax.set_title("2 bits per weight")
    ax.legend(fontsize=8, loc="lower left")
    return fig


def plot_readout(readout: dict[str, Any], codebook: str, ax: Any = None, title: str = "") -> Any:
    """The widget's figure: histogram of the weights as the codebook sees them, and its levels."""
    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 3))
    else:
        fig = ax.figure
    x = readout["scaled"].flatten().clamp(-8, 8).numpy()
    ax.hist(x, bins=200, range=(-8, 8), density=True, color="tab:gray")
    levels = sorted({v for v in lattice.e8p_codebook().unique().tolist()}) if codebook == "e8p" \
        else [-1.5, -0.5, 0.5, 1.5]
    for v in levels:
        ax.axvline(v, color="tab:red", lw=0.6, alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("weight / scale (red: the coordinate values the codebook uses)")
    ax.set_title(title or f"μ_W {readout['mu_w']:.1f}, kurtosis {readout['kurtosis']:.1f}, "
                          f"relative proxy loss {readout['rel_proxy_loss']:.4f}")
    return fig


def quip_explorer(w: torch.Tensor, h: torch.Tensor, bits: int = 2,
                  cache: dict[tuple[bool, str], dict[str, Any]] | None = None) -> Any:
    """Widget: transform on/off × codebook (E8P / scalar) → weight histogram and proxy loss.

    Each setting is computed once and kept in ``cache`` (``{(transform, codebook): quip_readout(...)}``,
    which may be pre-filled): BlockLDLQ takes a second or two on a SmolLM2 layer.
    """
    import ipywidgets as widgets
    from IPython.display import display

    plt = _plt()
    cache = {} if cache is None else cache
    transform = widgets.ToggleButtons(options=[("transform on", True), ("transform off", False)], value=True)
    codebook = widgets.ToggleButtons(options=[("E8P", "e8p"), ("scalar grid", "scalar")], value="e8p")
    out = widgets.Output()

    def draw(*_: Any) -> None:
        key = (transform.value, codebook.value)
        if key not in cache:
            cache[key] = quip_readout(w, h, key[0], key[1], bits=bits)
        with out:
            out.clear_output(wait=True)
            fig = plot_readout(cache[key], key[1])
            plt.show()
            plt.close(fig)

    transform.observe(draw, names="value")
    codebook.observe(draw, names="value")
    box = widgets.VBox([widgets.HBox([transform, codebook]), out])
    display(box)
    draw()
    return box
