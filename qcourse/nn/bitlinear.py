"""``BitLinear``: BitNet b1.58's linear layer — ternary weights, 8-bit activations, trained through STEs.

Forward pass, as in BitNet b1.58's released training code (Ma et al. 2024, arXiv 2402.17764):

1. ``x_n = RMSNorm(x)`` without a learnable gain (BitNet's SubLN: normalising right before the activation
   quantizer keeps the quantizer's range meaningful; the block's own pre-norms stay as they are);
2. ``x̂ = AbsMaxInt8(x_n)`` per token (:func:`qcourse.methods.bitnet.absmax_int8`);
3. ``Ŵ = γ·RoundClip(W/γ, −1, 1)`` with ``γ = mean|W|`` (:func:`qcourse.methods.bitnet.absmean_ternary`);
4. ``y = x̂ Ŵᵀ`` (+ bias, which BitNet does not use).

During training the layer keeps *latent* float weights ``W`` that the optimizer updates; both quantizers
use the straight-through estimator, so the gradient reaches ``W`` and ``x`` as if the quantizers were the
identity. :meth:`BitLinear.freeze` packs the trits (2 bits each, the layout of lesson 08's kernels) and
``γ``, drops the latent weights, and from then on runs from the packed form; its forward output equals the
training-mode forward exactly (same decoded values, same matmul).

>>> import torch
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> layer = BitLinear(16, 4)
>>> x = torch.randn(3, 16)
>>> y = layer(x)
>>> y.sum().backward()
>>> layer.weight.grad.shape                 # the latent weights learn through the STE
torch.Size([4, 16])
>>> packed = BitLinear.from_bitlinear(layer).freeze()
>>> torch.equal(packed(x), y.detach()), packed.weight_bytes
(True, 16)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from qcourse import packing
from qcourse.methods.bitnet import (
    absmax_dequantize,
    absmax_quantize,
    absmean_ternary,
    check_act_bits,
    fake_quant_activation,
    fake_quant_weight,
    ternary_dequantize,
)
from qcourse.nn.linear import swap_linears

__all__ = ["BitLinear", "SeedArticleBitLinear", "rms_norm", "to_bitlinear"]

_NORM_EPS = 1e-5


def rms_norm(x: torch.Tensor, eps: float = _NORM_EPS) -> torch.Tensor:
    """``x / sqrt(mean(x²) + eps)`` over the last dimension, no gain (BitNet's SubLN inside BitLinear)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)


class BitLinear(nn.Module):
    """A BitNet b1.58 linear layer ``[in_features] → [out_features]``.

    Parameters
    ----------
    in_features, out_features
        Sizes, as for ``nn.Linear``.
    bias
        BitNet uses none (default ``False``).
    act_bits
        Activation bits: 8 (BitNet b1.58) or any width 2–8 (``127`` becomes ``2^(b−1) − 1``), or ``None`` to
        keep activations in float (a weight-only ternary model, for ablations).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, act_bits: int | None = 8
                 ) -> None:
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        self.in_features, self.out_features = in_features, out_features
        self.act_bits = check_act_bits(act_bits)
        self.weight: nn.Parameter | None = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.register_buffer("packed", None)
        self.register_buffer("gamma", None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, act_bits: int | None = 8) -> BitLinear:
        """A BitLinear whose latent weights (and bias) start as copies of ``linear``'s."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be a torch.nn.Linear; got {type(linear).__name__}")
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, act_bits=act_bits)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        return new.to(linear.weight.device)

    @classmethod
    def from_bitlinear(cls, layer: BitLinear) -> BitLinear:
        """A copy of ``layer`` (latent weights included), e.g. to freeze while keeping the trainable one."""
        new = cls(layer.in_features, layer.out_features, bias=layer.bias is not None, act_bits=layer.act_bits)
        new.load_state_dict(layer.state_dict())
        return new

    @classmethod
    def from_trits(cls, t: torch.Tensor, gamma: torch.Tensor | float, act_bits: int | None = 8) -> BitLinear:
        """A frozen BitLinear computing with the trits ``t`` (``[out, in]``, in ``{−1, 0, 1}``) and ``γ``."""
        if not isinstance(t, torch.Tensor) or t.ndim != 2:
            raise ValueError(f"t must be a 2-D tensor of trits [out, in]; got {getattr(t, 'shape', t)!r}")
        if t.is_floating_point() or (t.abs() > 1).any():
            raise ValueError("t must hold integer trits in {-1, 0, 1}")
        new = cls(int(t.shape[1]), int(t.shape[0]), act_bits=act_bits)
        new._pack(t, torch.as_tensor(gamma, dtype=torch.float32))
        return new.eval()

    def _pack(self, t: torch.Tensor, gamma: torch.Tensor) -> None:
        self.packed = packing.pack((t.to(torch.int16) + 1).to(torch.uint8).flatten(), 2)
        self.gamma = gamma.detach().float().reshape(())
        self.weight = None

    @property
    def frozen(self) -> bool:
        """Whether the layer runs from packed trits (after :meth:`freeze`)."""
        return self.packed is not None

    @property
    def weight_bytes(self) -> int:
        """Bytes of the packed trits (2 bits each); the scale ``γ`` adds 4."""
        return packing.packed_nbytes(self.in_features * self.out_features, 2)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, quantized input ``x̂`` (straight-through in training)."""
        x = rms_norm(x)
        if self.act_bits is None:
            return x
        if self.training:
            return fake_quant_activation(x, self.act_bits)
        return absmax_dequantize(*absmax_quantize(x, self.act_bits)).to(x.dtype)

    def ternary_weight(self) -> torch.Tensor:
        """``Ŵ = γ·t``: from the packed trits once frozen, straight-through from the latent weights before."""
        if self.frozen:
            codes = packing.unpack(self.packed, 2, self.in_features * self.out_features)
            t = codes.to(torch.int8).reshape(self.out_features, self.in_features) - 1
            return ternary_dequantize(t, self.gamma)
        return fake_quant_weight(self.weight)

    def trits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, γ)``: the ternary codes (``int8``) and scale this layer computes with."""
        if self.frozen:
            codes = packing.unpack(self.packed, 2, self.in_features * self.out_features)
            return codes.to(torch.int8).reshape(self.out_features, self.in_features) - 1, self.gamma
        return absmean_ternary(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"input must end in in_features={self.in_features}; got shape {tuple(x.shape)}")
        w = self.ternary_weight().to(x.dtype)
        return F.linear(self.quantize_input(x), w, self.bias)

    @torch.no_grad()
    def freeze(self) -> BitLinear:
        """Pack the trits (2-bit codes ``t + 1``) and ``γ``, drop the latent weights; returns ``self``."""
        if self.frozen:
            return self
        self._pack(*absmean_ternary(self.weight))
        return self.eval()

    def extra_repr(self) -> str:
        state = "frozen (packed trits)" if self.frozen else "training (latent float weights)"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, act_bits={self.act_bits}, {state}")


def to_bitlinear(model: nn.Module, include: tuple[str, ...] = ("layers.",), act_bits: int | None = 8
                 ) -> nn.Module:
    """Replace, in place, every ``nn.Linear`` whose qualified name starts with one of ``include`` by a
    :class:`BitLinear` starting from its weights; returns ``model``.

    The default ``("layers.",)`` converts a transformer's blocks and leaves the embedding and the output head
    in full precision, as BitNet does.
    """
    swap_linears(model, include, lambda lin: BitLinear.from_linear(lin, act_bits=act_bits))
    return model


class SeedArticleBitLinear(nn.Module):
    """The seed article's ``BitLinear``, kept as written, as a named comparison (lesson 05).

    Its weight ternarization ``sign(W)·(|W| > γ/2)`` is BitNet's absmean RoundClip (see
    :func:`qcourse.methods.bitnet.threshold_ternary`), but it has no straight-through estimator: ``sign``,
    the comparison and ``round`` have zero gradient, so the weights only receive the gradient of the scale
    ``γ = mean|W|`` (the same ``±1/n`` for every weight: a uniform change of all magnitudes, never a choice of
    which trit to flip), and the input receives gradient only through the activation scale ``127/max|x|``
    (one element per tensor). Activations are quantized per tensor, not per token. The tests and lesson 05
    show that a model built from it does not learn.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randint(-1, 2, (out_features, in_features)).float())
        self.scale = nn.Parameter(torch.ones(1))

    def ternarize_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        gamma = self.weight.abs().mean()
        w_ternary = torch.sign(self.weight) * (self.weight.abs() > gamma * 0.5).float()
        return w_ternary, gamma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_scale = 127.0 / x.abs().max().clamp(min=1e-5)
        x_quant = (x * x_scale).round().clamp(-128, 127)
        w_ternary, w_scale = self.ternarize_weight()
        y = F.linear(x_quant, w_ternary)
        return y * (w_scale / x_scale) * self.scale
