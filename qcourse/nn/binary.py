"""Binary linear layers: ±1 weights, float / ±1 / 8-bit inputs, trained through straight-through estimators.

One layer, :class:`BinaryLinear`, covers the binary networks of lesson 06 by its options; the factories
name the published combinations:

===================  ==================  =====================  =========================================
factory              weights             inputs                 paper
===================  ==================  =====================  =========================================
``binary_connect``   ``sign(W)``         float                  BinaryConnect (Courbariaux et al. 2015)
``bnn``              ``sign(W)``         ``sign(x)``            Binarized NNs (Hubara et al. 2016)
``xnor_net``         ``α·sign(W)``,      ``β·sign(x)``,         XNOR-Net (Rastegari et al. 2016)
                     ``α = mean|W|``/row  ``β = mean|x|``/sample
``bitnet_v1``        ``β·Sign(W−mean W)``  absmax int8 per token  BitNet (Wang et al. 2023), W1A8
                     ``β = mean|W|``      after SubLN RMSNorm
===================  ==================  =====================  =========================================

The matmul always runs on the ±1 signs (``F.linear(x̂, B)``) and the scales multiply the output, so with
±1 inputs every pre-activation is an exact integer in float32 (``|n| < 2²⁴``) that the packed
XNOR-popcount path (:mod:`qcourse.xnor`) reproduces bit for bit.

**Training.** The layer keeps latent float weights. ``sign`` has zero gradient almost everywhere, so the
backward pass uses the straight-through estimator (Bengio et al. 2013) **with the hard-tanh clip** as
BNN and XNOR-Net train it: ``∂sign(r)/∂r ≈ 1_{|r| ≤ 1}`` (:func:`sign_ste`) — the gradient of
``hardtanh`` — applied to the binarized inputs; the latent weights get the plain straight-through gradient
and are clipped to ``[−1, 1]`` after every update (:meth:`BinaryLinear.clip_weights_`), as BinaryConnect
and BNN do, so the clip of the estimator never silences a weight for good. XNOR-Net's ``α = mean|W|``
keeps its own gradient (``sign(W)/n`` per weight, the paper's extra term). BitNet v1 uses the identity
estimator for both (its 8-bit inputs are almost the identity anyway), no weight clipping.

>>> import torch
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> layer = bnn(8, 3)
>>> x = torch.randn(4, 8, requires_grad=True)
>>> y = layer(x)
>>> bool((y == y.round()).all()), bool((y.abs() <= 8).all())       # integer dot products of ±1 vectors
(True, True)
>>> y.sum().backward()
>>> bool((x.grad[x.detach().abs() > 1] == 0).all())                 # the clip: no gradient beyond |x| > 1
True
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcourse.methods.bitnet import fake_quant_activation
from qcourse.nn.bitlinear import rms_norm
from qcourse.nn.linear import swap_linears

__all__ = ["SignSTE", "sign_ste", "BinaryLinear", "binary_connect", "bnn", "xnor_net", "bitnet_v1",
           "PRESETS", "to_binary_linear", "clip_binary_weights_"]

WEIGHT_SCALES = ("none", "row", "tensor")
ACTIVATIONS = ("float", "sign", "int8")


class SignSTE(torch.autograd.Function):
    """``sign`` forward (``±1``; ``0 ↦ zero``), straight-through backward, cancelled where ``|x| > 1`` if
    ``clip``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, clip: bool, zero: int) -> torch.Tensor:
        ctx.clip = clip
        if clip:
            ctx.save_for_backward(x)
        pos = x >= 0 if zero == 1 else x > 0
        return torch.where(pos, 1.0, -1.0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        if ctx.clip:
            (x,) = ctx.saved_tensors
            return grad * (x.abs() <= 1).to(grad.dtype), None, None
        return grad, None, None


def sign_ste(x: torch.Tensor, clip: bool = True, zero: int = 1) -> torch.Tensor:
    """``sign(x)`` (``sign(0) = zero``) whose gradient is ``1_{|x| ≤ 1}`` (``clip=True``, BNN's estimator,
    the derivative of ``hardtanh``) or ``1`` (``clip=False``, the plain straight-through estimator).

    >>> x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    >>> y = sign_ste(x)
    >>> y.tolist()
    [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    >>> y.sum().backward(); x.grad.tolist()
    [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor; got {type(x).__name__}")
    if zero not in (1, -1):
        raise ValueError(f"zero must be 1 or -1 (the sign given to 0); got {zero!r}")
    return SignSTE.apply(x, bool(clip), zero)


class BinaryLinear(nn.Module):
    """A linear layer with ±1 weights (see the module docstring for the options' papers).

    Parameters
    ----------
    in_features, out_features
        Sizes, as for ``nn.Linear``.
    bias
        Add a float bias (default ``False``; a following BatchNorm makes it redundant).
    weight_scale
        ``"none"`` (plain ``sign(W)``), ``"row"`` (``α = mean|W|`` per output row, XNOR-Net) or ``"tensor"``
        (``β = mean|W|``, BitNet v1).
    center
        Binarize ``W − mean W`` with ``Sign(0) = −1`` (BitNet v1).
    act
        Inputs: ``"float"`` (kept), ``"sign"`` (binarized with the clipped STE) or ``"int8"`` (absmax per
        token with the identity STE, BitNet).
    input_scale
        With ``act="sign"``: multiply the output by ``β = mean|x|`` per sample (XNOR-Net).
    subln
        Normalise the input with a gain-free RMSNorm first (BitNet's SubLN).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, weight_scale: str = "none",
                 center: bool = False, act: str = "sign", input_scale: bool = False, subln: bool = False
                 ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        if weight_scale not in WEIGHT_SCALES:
            raise ValueError(f"weight_scale must be one of {list(WEIGHT_SCALES)}; got {weight_scale!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {list(ACTIVATIONS)}; got {act!r}")
        if input_scale and act != "sign":
            raise ValueError(f"input_scale=True needs act='sign' (XNOR-Net's β of binary inputs); "
                             f"got act={act!r}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_scale, self.center, self.act = weight_scale, bool(center), act
        self.input_scale, self.subln = bool(input_scale), bool(subln)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    # the STE on weights is the identity (clip=False): latent weights are clipped after updates instead
    def weight_signs(self) -> torch.Tensor:
        """``B`` as float ±1 (straight-through to the latent weights)."""
        w = self.weight
        if self.center:
            return sign_ste(w - w.mean().detach(), clip=False, zero=-1)
        return sign_ste(w, clip=False)

    def weight_scales(self) -> torch.Tensor | None:
        """``α`` per output (``[out]``) or ``β`` (0-d), with gradient; ``None`` if ``weight_scale="none"``."""
        if self.weight_scale == "row":
            return self.weight.abs().mean(dim=1)
        if self.weight_scale == "tensor":
            return self.weight.abs().mean()
        return None

    def quantize_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(x̂, β)``: the input the matmul sees and XNOR-Net's per-sample scale (or ``None``)."""
        if self.subln:
            x = rms_norm(x)
        if self.act == "sign":
            beta = x.abs().mean(dim=-1, keepdim=True) if self.input_scale else None
            return sign_ste(x, clip=True), beta
        if self.act == "int8":
            return fake_quant_activation(x), None
        return x, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input must end in in_features={self.in_features}; got shape {tuple(x.shape)}")
        xq, beta = self.quantize_input(x)
        y = F.linear(xq, self.weight_signs().to(xq.dtype))
        scale = self.weight_scales()
        if scale is not None:
            y = y * scale
        if beta is not None:
            y = y * beta
        return y if self.bias is None else y + self.bias

    @torch.no_grad()
    def clip_weights_(self, bound: float = 1.0) -> BinaryLinear:
        """Clip the latent weights to ``[−bound, bound]`` in place (BinaryConnect, BNN: after each step)."""
        self.weight.clamp_(-bound, bound)
        return self

    @torch.no_grad()
    def signs(self) -> torch.Tensor:
        """The binary weights ``B`` as ``int8`` ±1."""
        return self.weight_signs().to(torch.int8)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight_scale={self.weight_scale!r}, center={self.center}, "
                f"act={self.act!r}, input_scale={self.input_scale}, subln={self.subln}")


def binary_connect(in_features: int, out_features: int, bias: bool = False) -> BinaryLinear:
    """BinaryConnect: ``sign(W)`` weights, float inputs."""
    return BinaryLinear(in_features, out_features, bias, weight_scale="none", act="float")


def bnn(in_features: int, out_features: int, bias: bool = False) -> BinaryLinear:
    """Binarized neural network layer: ``sign(W)`` weights, ``sign(x)`` inputs (clipped STE)."""
    return BinaryLinear(in_features, out_features, bias, weight_scale="none", act="sign")


def xnor_net(in_features: int, out_features: int, bias: bool = False) -> BinaryLinear:
    """XNOR-Net layer: ``α·sign(W)`` with ``α = mean|W|`` per row, ``β·sign(x)`` with ``β = mean|x|``."""
    return BinaryLinear(in_features, out_features, bias, weight_scale="row", act="sign", input_scale=True)


def bitnet_v1(in_features: int, out_features: int, bias: bool = False) -> BinaryLinear:
    """BitNet v1's W1A8 BitLinear: SubLN, absmax int8 inputs, ``β·Sign(W − mean W)``, ``β = mean|W|``."""
    return BinaryLinear(in_features, out_features, bias, weight_scale="tensor", center=True, act="int8",
                        subln=True)


#: name -> factory, for :func:`to_binary_linear` and loops over the schemes
PRESETS = {"binary_connect": binary_connect, "bnn": bnn, "xnor_net": xnor_net, "bitnet_v1": bitnet_v1}


def to_binary_linear(model: nn.Module, preset: str = "bitnet_v1", include: tuple[str, ...] = ("layers.",)
                     ) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` whose qualified name starts with one of ``include`` by a
    :class:`BinaryLinear` of ``preset`` whose latent weights start as copies; returns ``model``.

    The default converts a transformer's blocks and keeps the embedding and the head in full precision,
    as BitNet does.

    >>> m = to_binary_linear(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), include=("0",))
    >>> type(m[0]).__name__, m[0].act
    ('BinaryLinear', 'int8')
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}; got {preset!r}")

    def make(old: nn.Linear) -> BinaryLinear:
        new = PRESETS[preset](old.in_features, old.out_features, bias=old.bias is not None)
        with torch.no_grad():
            new.weight.copy_(old.weight)
            if old.bias is not None:
                new.bias.copy_(old.bias)
        return new.to(old.weight.device)

    swap_linears(model, include, make)
    return model


def clip_binary_weights_(model: nn.Module, bound: float = 1.0) -> int:
    """Clip the latent weights of every :class:`BinaryLinear` in ``model`` that clips (all but BitNet's
    centred layers); returns how many layers were clipped. Call after each optimizer step."""
    n = 0
    for m in model.modules():
        if isinstance(m, BinaryLinear) and not m.center:
            m.clip_weights_(bound)
            n += 1
    return n
