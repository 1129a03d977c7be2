"""Where a quantized layer's error sits: on the outputs, on the weights weighted by their inputs' energy, and
on each group's extreme weights.

Used by lesson 02 to test why HQQ loses to RTN on SmolLM2: does a shifted zero point clip the group's
extreme weights, and do those errors land on input channels with large activations? ``diag(H)`` (``H =
E[x xᵀ]``) is the mean squared activation of each input channel, so ``Σ (ΔW_ij)² H_jj`` is the output error
without the cross terms.
"""
from __future__ import annotations

import torch

__all__ = ["error_breakdown"]


def error_breakdown(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor, group_size: int
                    ) -> dict[str, float]:
    """Output error and diag(H)-weighted weight error of ``w_hat``, overall and on each group's extremes.

    Groups are ``group_size`` consecutive inputs of each row (as RTN/HQQ/GPTQ group with ``axis=1``); the
    extremes of a group are its largest and its smallest weight.

    Returns
    -------
    dict with
        ``output``: ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)``;
        ``weighted``: ``Σ ΔW_ij² H_jj`` over all weights;
        ``extremes``: the same sum over each group's two extreme weights only;
        ``extreme_share``: ``extremes / weighted``.

    >>> w = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    >>> h = torch.diag(torch.tensor([4.0, 1, 1, 1]))
    >>> err = error_breakdown(w, torch.tensor([[0.5, 0.0, -1.0, 0.5]]), h, 4)
    >>> err["weighted"], err["extremes"], err["extreme_share"]        # 0.5² · 4 on the group's maximum
    (1.0, 1.0, 1.0)
    """
    for name, t in (("w", w), ("w_hat", w_hat), ("hessian", hessian)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor; got {type(t).__name__}")
    if w.ndim != 2 or w_hat.shape != w.shape:
        raise ValueError(f"w must be 2-D and w_hat shaped like it; got {tuple(w.shape)} and "
                         f"{tuple(w_hat.shape)}")
    if hessian.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"hessian must be [in, in] = {(w.shape[1], w.shape[1])}; got "
                         f"{tuple(hessian.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
            or w.shape[1] % group_size:
        raise ValueError(f"group_size must be a positive divisor of in_features={w.shape[1]}; "
                         f"got {group_size!r}")
    h = hessian.double()
    d = (w - w_hat).double()
    out = float(torch.einsum("ri,ij,rj->", d, h, d) / torch.einsum("ri,ij,rj->", w.double(), h, w.double()))
    weighted = d.pow(2) * h.diagonal()
    g = w.reshape(w.shape[0], -1, group_size)
    extreme = torch.zeros_like(g, dtype=torch.bool)
    extreme.scatter_(-1, g.argmax(-1, keepdim=True), True)
    extreme.scatter_(-1, g.argmin(-1, keepdim=True), True)
    total = float(weighted.sum())
    ext = float(weighted.reshape_as(g)[extreme].sum())
    return {"output": out, "weighted": total, "extremes": ext, "extreme_share": ext / total if total else 0.0}
