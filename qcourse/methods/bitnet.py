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

from collections.abc import Mapping
from typing import Any

import torch

from qcourse import packing
from qcourse.methods.base import Method, QuantizedWeight, state_tensor
from qcourse.packing import TERNARY

__all__ = [
    "WEIGHT_EPS", "ACT_EPS", "absmean_ternary", "ternary_dequantize", "threshold_ternary", "check_act_bits",
    "absmax_quantize", "absmax_int8",
    "absmax_dequantize", "fake_quant_weight", "fake_quant_activation", "PACKINGS", "TernaryWeight",
    "BitNetPTQ", "METHODS",
]

#: storage layouts of the trits: name -> packing width (:mod:`qcourse.packing`)
PACKINGS = {"base3": TERNARY, "2bit": 2}

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


def check_act_bits(act_bits: int | None) -> int | None:
    """``act_bits`` must be ``None`` (float activations) or an int from 2 to 8; returned unchanged."""
    if act_bits is not None and (isinstance(act_bits, bool) or not isinstance(act_bits, int)
                                 or not 2 <= act_bits <= 8):
        raise ValueError(f"act_bits must be None or an int from 2 to 8; got {act_bits!r}")
    return act_bits


def absmax_quantize(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``bits``-bit codes ``q`` (``int8``) and scales ``s = Q/max|x|`` (``[..., 1]``, float32).

    ``Q = 2^(bits−1) − 1`` (127 at 8 bits) and ``q = clamp(round(x·s), −Q − 1, Q)``. The last dimension is
    the feature dimension; every other index is a token.

    >>> import torch
    >>> q, s = absmax_quantize(torch.tensor([[1.0, -0.5, 0.2]]), bits=4)     # Q = 7
    >>> q.tolist(), s.flatten().tolist()
    ([[7, -4, 1]], [7.0])
    """
    _check_float(x, "x")
    qmax = 2 ** (check_act_bits(bits) - 1) - 1
    x = x.float()
    s = qmax / x.abs().amax(dim=-1, keepdim=True).clamp_min(ACT_EPS)
    q = torch.round(x * s).clamp_(-qmax - 1, qmax)
    return q.to(torch.int8), s


def absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58's activation quantizer: :func:`absmax_quantize` at 8 bits (``s = 127/max|x|``).

    >>> import torch
    >>> q, s = absmax_int8(torch.tensor([[0.0, 0.0], [2.0, -0.5]]))
    >>> q.tolist(), s.flatten().tolist()        # an all-zero token keeps zeros (its scale is 127/1e-5)
    ([[0, 0], [127, -32]], [12700000.0, 63.5])
    """
    return absmax_quantize(x, 8)


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


def fake_quant_activation(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-token absmax ``q/s`` (:func:`absmax_quantize`) in the forward pass, the identity in the backward
    pass."""
    with torch.no_grad():
        q, s = absmax_quantize(x, bits)
        xq = absmax_dequantize(q, s).to(x.dtype)
    return _straight_through(x, xq)


class TernaryWeight(QuantizedWeight):
    """Trits packed base-3 (1.6 bits each) or 2 bits each, and one fp32 scale ``γ`` per tensor.

    >>> import torch
    >>> qw = TernaryWeight(torch.tensor([[1, 0, -1, 0, 1]], dtype=torch.int8), torch.tensor(0.5))
    >>> qw.dequantize().tolist(), qw.storage_bits                # one byte of trits + a 32-bit scale
    ([[0.5, 0.0, -0.5, 0.0, 0.5]], 40)
    """

    def __init__(self, trits: torch.Tensor, gamma: torch.Tensor, packing_kind: str = "base3") -> None:
        if packing_kind not in PACKINGS:
            raise ValueError(f"packing must be one of {sorted(PACKINGS)}; got {packing_kind!r}")
        self.shape = (int(trits.shape[0]), int(trits.shape[1]))
        self.packing_kind = packing_kind
        codes = (trits.to(torch.int16) + 1).to(torch.uint8).flatten()
        self.packed = packing.pack(codes, PACKINGS[packing_kind])
        self.gamma = gamma.detach().float().reshape(())

    def trits(self) -> torch.Tensor:
        """The ternary codes ``t ∈ {−1, 0, 1}`` (``int8``, shaped like the weight)."""
        codes = packing.unpack(self.packed, PACKINGS[self.packing_kind], self.numel)
        return (codes.to(torch.int8) - 1).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return ternary_dequantize(self.trits(), self.gamma).to(dtype)

    @property
    def storage_bits(self) -> int:
        return self.packed.numel() * 8 + 32

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"packed": self.packed, "gamma": self.gamma}, self.state_meta(packing=self.packing_kind)

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> TernaryWeight:
        kind = meta.get("packing")
        if kind not in PACKINGS:
            raise ValueError(f"meta['packing'] must be one of {sorted(PACKINGS)}; got {kind!r}")
        shape = (int(meta["shape"][0]), int(meta["shape"][1]))
        packed = state_tensor(tensors, "packed", torch.uint8,
                              (packing.packed_nbytes(shape[0] * shape[1], PACKINGS[kind]),))
        gamma = state_tensor(tensors, "gamma", torch.float32, ())
        new = cls.__new__(cls)
        new.shape, new.packing_kind, new.packed, new.gamma = shape, kind, packed, gamma
        return new


class BitNetPTQ(Method):
    """Ternary post-training quantization with BitNet b1.58's absmean quantizer (one scale per tensor).

    ``bits`` must be 1.58; the group size does not apply (the scale is per tensor, as BitNet trains it);
    option ``packing``: ``"base3"`` (1.6 bits per weight) or ``"2bit"`` (2 bits, the kernel layout).

    >>> import torch
    >>> from qcourse import methods
    >>> qw = methods.get("bitnet").quantize(torch.randn(64, 256), bits=1.58)
    >>> round(qw.bits_per_weight, 4)                          # 3277 bytes of trits + 32 bits of scale
    1.6021
    """

    uses_group_size = False

    def check_group(self, shape: tuple[int, int], group_size: Any, opts: dict[str, Any]) -> None:
        if group_size is not None:
            raise ValueError(f"group_size must be None for bitnet (one absmean scale per tensor); "
                             f"got {group_size!r}")

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["packing"] not in PACKINGS:
            raise ValueError(f"packing must be one of {sorted(PACKINGS)} for bitnet; got {opts['packing']!r}")

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> TernaryWeight:
        t, gamma = absmean_ternary(w)
        return TernaryWeight(t, gamma, opts["packing"])


METHODS = {
    "bitnet": BitNetPTQ(name="bitnet", supported_bits=(TERNARY,),
                        description="BitNet b1.58 absmean ternary, one scale per tensor (post-training)",
                        defaults={"packing": "base3"}),
}
