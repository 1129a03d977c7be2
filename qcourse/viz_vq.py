"""Vector quantization for lesson 03: scalar vs vector codebooks in 2-D, Voronoi cells, the beam-search
sweep (beam width × number of codebooks → objective and time) with its widget, and AQLM's objective per round.

The numbers come from :mod:`qcourse.kmeans` and :mod:`qcourse.methods.aqlm`; the functions here arrange
them and draw. Figures are returned (or drawn on the ``ax`` given).

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = correlated_pairs(500, rho=0.9, generator=g)
>>> r = vq_vs_scalar(x, bits_per_dim=2, seed=0, n_iter=10)
>>> r["vector"]["mse"] < r["scalar"]["mse"] < r["uniform"]["mse"]
True
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qcourse.kmeans import assign, kmeans
from qcourse.methods.aqlm import beam_search, objective, residual_kmeans_init

__all__ = [
    "correlated_pairs", "product_codebook", "vq_vs_scalar", "plot_cells", "BeamSweep", "beam_readout",
    "beam_explorer", "plot_beam_sweep", "plot_objective_history",
]


def correlated_pairs(n: int, rho: float = 0.9, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` pairs from a 2-D Gaussian with unit variances and correlation ``rho``, ``[n, 2]``.

    >>> correlated_pairs(5, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([5, 2])
    """
    if not -1 < rho < 1:
        raise ValueError(f"rho must be in (-1, 1); got {rho!r}")
    z = torch.randn(n, 2, generator=generator)
    return torch.stack([z[:, 0], rho * z[:, 0] + (1 - rho**2) ** 0.5 * z[:, 1]], 1)


def product_codebook(levels_x: torch.Tensor, levels_y: torch.Tensor) -> torch.Tensor:
    """All pairs of two scalar codebooks: a scalar quantizer per coordinate *is* this 2-D codebook.

    >>> product_codebook(torch.tensor([0.0, 1.0]), torch.tensor([5.0, 6.0])).tolist()
    [[0.0, 5.0], [0.0, 6.0], [1.0, 5.0], [1.0, 6.0]]
    """
    gx, gy = torch.meshgrid(levels_x, levels_y, indexing="ij")
    return torch.stack([gx.flatten(), gy.flatten()], 1)


def _mse(x: torch.Tensor, c: torch.Tensor) -> float:
    labels, _ = assign(x, c)
    return float(((x - c[labels]) ** 2).mean())


def _best_uniform(v: torch.Tensor, levels: int) -> torch.Tensor:
    """The symmetric uniform grid of ``levels`` points with the lowest MSE on ``v`` (step by a 1-D search)."""
    span = float(v.abs().max())
    best = None
    for frac in torch.linspace(0.05, 1.0, 96).tolist():
        step = 2 * span * frac / levels
        grid = (torch.arange(levels, dtype=v.dtype) - (levels - 1) / 2) * step
        err = _mse(v[:, None], grid[:, None])
        if best is None or err < best[0]:
            best = (err, grid)
    assert best is not None
    return best[1]


def vq_vs_scalar(x: torch.Tensor, bits_per_dim: int = 2, seed: int = 0, n_iter: int = 50) -> dict[str, Any]:
    """Three quantizers of 2-D points at the same bits per coordinate, with their codebooks and MSE.

    * ``vector``: k-means with ``2^(2·bits)`` centroids in 2-D (the best codebook k-means finds);
    * ``scalar``: the best non-uniform scalar quantizer per coordinate (1-D k-means, i.e. Lloyd–Max, with
      ``2^bits`` levels), as a product codebook;
    * ``uniform``: the MSE-best symmetric uniform grid per coordinate.

    ``mse`` is per coordinate.
    """
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must be [n, 2]; got shape {tuple(x.shape)}")
    k = 2 ** (2 * bits_per_dim)
    vec = kmeans(x, k, n_iter=n_iter, seed=seed).centroids
    per = [kmeans(x[:, i:i + 1], 2**bits_per_dim, n_iter=n_iter, seed=seed).centroids.flatten().sort().values
           for i in range(2)]
    sca = product_codebook(*per)
    uni = product_codebook(*[_best_uniform(x[:, i], 2**bits_per_dim) for i in range(2)])
    return {name: {"centroids": c, "mse": _mse(x, c) / 2}
            for name, c in (("vector", vec), ("scalar", sca), ("uniform", uni))}


def plot_cells(x: torch.Tensor, codebooks: dict[str, torch.Tensor], lim: float = 3.5, res: int = 300) -> Any:
    """One panel per codebook: its Voronoi cells (nearest-centroid regions), the points and the centroids."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(codebooks), figsize=(4.2 * len(codebooks), 4.2), squeeze=False)
    t = torch.linspace(-lim, lim, res)
    gx, gy = torch.meshgrid(t, t, indexing="xy")
    grid = torch.stack([gx.flatten(), gy.flatten()], 1)
    for ax, (name, c) in zip(axes[0], codebooks.items(), strict=True):
        labels, _ = assign(grid, c.to(grid.dtype))
        ax.imshow((labels.reshape(res, res) * 7919 % len(c)).numpy(), extent=(-lim, lim, -lim, lim),
                  origin="lower", cmap="tab20", alpha=0.35, interpolation="nearest")
        sub = x[:1500]
        ax.scatter(sub[:, 0], sub[:, 1], s=2, c="k", alpha=0.35)
        ax.scatter(c[:, 0], c[:, 1], s=30, c="red", marker="x")
        ax.set(title=name, xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")
    fig.tight_layout()
    return fig


@dataclass
class BeamSweep:
    """One pass of beam search from the residual k-means initialisation, per (codebooks, beam width).

    The layer ``w`` (``[out, in]``) and ``H`` are fixed; each setting's initialisation (``M`` codebooks of
    ``2^codebook_bits`` entries) is computed once and every result is cached, so the widget is instant on
    revisits. ``run(M, beam)`` returns ``{"init": rel. objective, "objective": rel. objective after one beam
    pass, "seconds": time of that pass}``; objectives are relative to ``tr(W H Wᵀ)``.
    """

    w: torch.Tensor
    hessian: torch.Tensor
    codebook_bits: int = 8
    seed: int = 0
    _inits: dict[int, Any] = field(default_factory=dict, repr=False)
    _cache: dict[tuple[int, int], dict[str, float]] = field(default_factory=dict, repr=False)

    def _init(self, M: int) -> Any:
        if M not in self._inits:
            self._inits[M] = residual_kmeans_init(self.w, M, self.codebook_bits, 8, seed=self.seed)
        return self._inits[M]

    def run(self, n_codebooks: int, beam_size: int) -> dict[str, float]:
        key = (n_codebooks, beam_size)
        if key not in self._cache:
            from qcourse.methods.aqlm import decode

            codes, books, scales = self._init(n_codebooks)
            ref = objective(self.w, torch.zeros_like(self.w), self.hessian)
            t0 = time.perf_counter()
            new, _ = beam_search(self.w, self.hessian, books, scales, codes, beam_size,
                                 torch.Generator().manual_seed(self.seed))
            seconds = time.perf_counter() - t0
            self._cache[key] = {
                "init": objective(self.w, decode(codes, books, scales), self.hessian) / ref,
                "objective": objective(self.w, decode(new, books, scales), self.hessian) / ref,
                "seconds": seconds,
            }
        return self._cache[key]

    def table(self, n_codebooks: Sequence[int], beams: Sequence[int]) -> list[dict[str, float]]:
        """Rows ``{"M", "beam", "init", "objective", "seconds"}`` for every combination."""
        return [{"M": m, "beam": b, **self.run(m, b)} for m in n_codebooks for b in beams]


def beam_readout(sweep: BeamSweep, n_codebooks: int, beam_size: int) -> dict[str, Any]:
    """One setting of the sweep and the read-out text of the widget."""
    r = sweep.run(n_codebooks, beam_size)
    html = (f"<b>{n_codebooks}×{sweep.codebook_bits}</b>, beam {beam_size}: relative output error "
            f"{r['init']:.4f} after k-means → <b>{r['objective']:.4f}</b> after one beam pass "
            f"({r['seconds']:.2f} s)")
    return {"row": r, "html": html}


def plot_beam_sweep(rows: Sequence[dict[str, float]], ax: Any = None) -> Any:
    """Objective after one beam pass against the pass's time, one line per number of codebooks."""
    import matplotlib.pyplot as plt

    fig, ax = (plt.subplots(figsize=(6, 4)) if ax is None else (ax.figure, ax))
    for m in sorted({r["M"] for r in rows}):
        pts = [r for r in rows if r["M"] == m]
        ax.plot([r["seconds"] for r in pts], [r["objective"] for r in pts], "o-", label=f"M = {m}")
        for r in pts:
            ax.annotate(f"beam {r['beam']}", (r["seconds"], r["objective"]), fontsize=7)
    ax.set(xlabel="seconds for one beam-search pass", ylabel="relative output error",
           title="beam width × codebooks", yscale="log")
    ax.legend()
    return fig


def beam_explorer(sweep: BeamSweep, n_codebooks: Sequence[int] = (1, 2, 3),
                  beams: Sequence[int] = (1, 2, 4, 8), m: int = 2, beam: int = 1) -> Any:
    """A widget: number of codebooks × beam width → objective and time (cached :class:`BeamSweep`)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    m_w = widgets.ToggleButtons(options=list(n_codebooks), value=m, description="codebooks")
    b_w = widgets.ToggleButtons(options=list(beams), value=beam, description="beam")
    readout, out = widgets.HTML(), widgets.Output()

    def update(_: Any = None) -> None:
        readout.value = beam_readout(sweep, m_w.value, b_w.value)["html"]
        rows = [dict(M=k[0], beam=k[1], **v) for k, v in sorted(sweep._cache.items())]
        with out:
            out.clear_output(wait=True)
            fig = plot_beam_sweep(rows)
            display(fig)
            plt.close(fig)

    m_w.observe(update, names="value")
    b_w.observe(update, names="value")
    update()
    return widgets.VBox([m_w, b_w, readout, out])


def plot_objective_history(histories: dict[str, Sequence[float]], ax: Any = None) -> Any:
    """Relative output error after initialisation (round 0) and after each AQLM round."""
    import matplotlib.pyplot as plt

    fig, ax = (plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax))
    for label, h in histories.items():
        ax.plot(range(len(h)), h, "o-", label=label)
    ax.set(xlabel="round (0 = residual k-means)", ylabel="relative output error", title="AQLM rounds")
    ax.legend()
    return fig
