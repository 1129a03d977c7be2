"""BitNet b1.58: the absmean ternary weight quantizer and the per-token absmax 8-bit activation quantizer.

BitNet b1.58 (Ma et al. 2024, arXiv 2402.17764) stores every weight of a linear layer as a *trit*
``t ∈ {−1, 0, +1}`` times one scale per tensor:

* **weights** (absmean, per tensor): ``γ = mean|W|``, ``t = RoundClip(W/(γ + ε), −1, 1)`` with
  ``RoundClip(x, a, b) = max(a, min(b, round(x)))``; ``Ŵ = γ·t``. The reference training code writes the
  guard as ``γ = max(mean|W|, 1e-5)`` (no ``+ ε``); both agree unless ``mean|W| < 1e-5``; this module uses
  the code's form, so an all-zero weight gets ``γ = 1e-5`` and all-zero trits.
* **activations** (absmax, per token, 8 bits): ``s = 127 / max(max|x|, 1e-5)`` over the last dimension,
  ``q = clamp(round(x·s), −128, 127)``, ``x̂ = q/s``. (The paper writes the range as ``[−Q_b, Q_b]`` with
  ``Q_b = 2^(b−1) = 128``; the released code uses 127 and clamps to ``[−128, 127]``, as here.)

``round`` is round-half-to-even (``torch.round``), as in the reference code.

``RoundClip(W/γ)`` is the same as thresholding at ``γ/2``: ``t = sign(W)`` where ``|W| > γ/2`` and ``0``
elsewhere, except at the tie ``|W| = γ/2`` exactly, where round-half-to-even gives ``0`` as well — the seed
article's ``where(|W| > γ/2, sign(W), 0)`` is therefore the same quantizer (:func:`threshold_ternary`).

As a post-training method (``methods.get("bitnet")``), any trained weight is quantized this way; the
storage is the trits packed base-3 (five per byte, 1.6 bits each; ``packing="2bit"`` stores four per byte
instead, the layout fast kernels read) plus one fp32 scale per tensor.

>>> import torch
>>> w = torch.tensor([[0.4, -0.05, -1.0, 0.1]])          # mean|w| = 0.3875
>>> t, gamma = absmean_ternary(w)
>>> t.tolist(), round(gamma.item(), 4)
([[1, 0, -1, 0]], 0.3875)
>>> q, s = absmax_int8(torch.tensor([[0.5, -1.0, 0.25]]))
>>> q.tolist(), s.flatten().tolist()                     # 127/max|x| per token
([[64, -127, 32]], [127.0])
"""

from __future__ import annotations

import torch

__all__ = [
    "WEIGHT_EPS", "ACT_EPS", "absmean_ternary", "ternary_dequantize", "threshold_ternary", "absmax_int8",
    "absmax_dequantize", "fake_quant_weight", "fake_quant_activation",
]

#: lower bound of the weight scale ``mean|W|`` in the reference code
WEIGHT_EPS = 1e-5
#: lower bound of a token's ``max|x|`` in the reference code
ACT_EPS = 1e-5


def _check_float(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty; got shape {tuple(x.shape)}")


def absmean_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Trits ``t`` (``int8`` in ``{−1, 0, 1}``, shaped like ``w``) and the scale ``γ`` (0-d float32).

    ``γ = max(mean|W|, 1e-5)`` over the whole tensor; ``t = clamp(round(W/γ), −1, 1)``.

    >>> import torch
    >>> absmean_ternary(torch.zeros(2, 3))[0].abs().sum().item()      # γ = 1e-5: no division by zero
    0
    >>> t, g = absmean_ternary(torch.tensor([[1.0, 1.0, 1.0, 100.0]]))  # one outlier inflates γ = 25.75
    >>> t.tolist()
    [[0, 0, 0, 1]]
    """
    _check_float(w, "w")
    w = w.detach().float()
    gamma = w.abs().mean().clamp_min(WEIGHT_EPS)
    t = torch.round(w / gamma).clamp_(-1, 1)
    return t.to(torch.int8), gamma


def ternary_dequantize(t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``Ŵ = γ·t`` in float32 (exact: every value is ``0`` or ``±γ``)."""
    return t.float() * gamma.float()


def threshold_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The seed article's form: ``t = sign(W)`` where ``|W| > γ/2``, else ``0`` (same result as
    :func:`absmean_ternary`, see the module docstring).

    >>> import torch
    >>> w = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    >>> torch.equal(threshold_ternary(w)[0], absmean_ternary(w)[0])
    True
    """
    _check_float(w, "w")
    w = w.detach().float()
    gamma = w.abs().mean().clamp_min(WEIGHT_EPS)
    t = torch.where(w.abs() > gamma / 2, torch.sign(w), torch.zeros_like(w))
    return t.to(torch.int8), gamma


def absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token 8-bit codes ``q`` (``int8``) and scales ``s = 127/max|x|`` (``[..., 1]``, float32).

    The last dimension is the feature dimension; every other index is a token.

    >>> import torch
    >>> q, s = absmax_int8(torch.tensor([[0.0, 0.0], [2.0, -0.5]]))
    >>> q.tolist(), s.flatten().tolist()        # an all-zero token keeps zeros (its scale is 127/1e-5)
    ([[0, 0], [127, -32]], [12700000.0, 63.5])
    """
    _check_float(x, "x")
    x = x.float()
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp_min(ACT_EPS)
    q = torch.round(x * s).clamp_(-128, 127)
    return q.to(torch.int8), s


def absmax_dequantize(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``x̂ = q/s`` in float32."""
    return q.float() / s


def _straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    # value exactly q (x − x.detach() is exactly 0), gradient exactly the identity; the textbook form
    # x + (q − x).detach() has the same gradient but can differ from q by one ulp where q − x is inexact
    return q + (x - x.detach())


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """``γ·t`` in the forward pass, the identity in the backward pass (straight-through estimator).

    >>> import torch
    >>> w = torch.tensor([0.3, -2.0, 0.01], requires_grad=True)
    >>> y = fake_quant_weight(w)
    >>> [round(v, 4) for v in y.tolist()]                # γ = 0.77: trits 0, −1, 0
    [0.0, -0.77, 0.0]
    >>> y.sum().backward(); w.grad.tolist()              # STE: every weight gets gradient 1
    [1.0, 1.0, 1.0]
    """
    with torch.no_grad():
        t, gamma = absmean_ternary(w)
        q = ternary_dequantize(t, gamma).to(w.dtype)
    return _straight_through(w, q)


def fake_quant_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 ``q/s`` in the forward pass, the identity in the backward pass."""
    with torch.no_grad():
        q, s = absmax_int8(x)
        xq = absmax_dequantize(q, s).to(x.dtype)
    return _straight_through(x, xq)
