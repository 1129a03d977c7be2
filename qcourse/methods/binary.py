"""Sign binarization of weights: one bit per weight plus the scales the literature uses.

Three quantizers, all of the form ``Ŵ = α ⊙ B`` with ``B ∈ {−1, +1}`` (one bit) and a scale ``α`` shared by
a group of weights (a whole tensor, a row, or ``group_size`` consecutive inputs of a row):

* **XNOR-Net** (Rastegari et al. 2016, "binary-weight networks"): ``B = sign(W)``, ``α = mean|W|`` per
  output row. For ``B = sign(W)`` this ``α`` minimises ``‖W − αB‖²``: expanding,
  ``‖W‖² − 2α Σ|Wᵢ| + α² n`` is a parabola in ``α`` with its minimum at ``α = Σ|Wᵢ|/n``, and no other sign
  vector does better for any ``α > 0`` (``Σ Wᵢ Bᵢ ≤ Σ|Wᵢ|``).
* **BitNet (v1)** (Wang et al. 2023): centre first, ``B = Sign(W − mean W)`` with ``Sign(0) = −1``, scale
  ``β = mean|W|`` over the whole tensor; ``Ŵ = β·B`` (the mean is *not* added back: BitNet's layer
  computes ``B x`` and rescales by ``β``). Centring balances the +1 and −1 counts.
* **residual binarization** (the 1-bit PTQ literature's remedy, e.g. BiLLM's residual approximation of
  salient weights, Huang et al. 2024): ``W ≈ α₁B₁ + α₂B₂`` with ``B₁, α₁`` as in XNOR-Net and
  ``B₂ = sign(R)``, ``α₂ = mean|R|`` for the residual ``R = W − α₁B₁``: two bits per weight.

``sign(0) = +1`` (every weight gets a bit; BitNet's centred form uses ``−1``, as the paper defines).
Scales are stored as fp16 and ``Ŵ`` is computed from the stored fp16 values, so the bit count is honest:
``bits_per_weight = bases + bases·16·(number of scales)/numel``.

As a post-training method (``methods.get("binary")``): ``bits=1`` (one basis) or ``bits=2`` (residual),
``group_size=None`` for one scale per row (XNOR-Net) or a divisor of ``in_features``; options
``center`` (BitNet's centring) and ``granularity`` (``"row"`` or ``"tensor"``; ``"tensor"`` with
``center=True`` is BitNet v1 exactly).

>>> import torch
>>> w = torch.tensor([[0.5, -1.5, 1.0, 0.0], [2.0, 2.0, -2.0, 2.0]])
>>> b, alpha = xnor_binarize(w)
>>> b.tolist(), alpha.flatten().tolist()                # α = mean|W| per row
([[1, -1, 1, 1], [1, 1, -1, 1]], [0.75, 2.0])
>>> b, beta = bitnet_binarize(w)                        # mean W = 0.5: W − 0.5 = 0 gives −1
>>> b.tolist(), beta.item()
([[-1, -1, 1, -1], [1, 1, -1, 1]], 1.375)
>>> qw = methods_binary().quantize(torch.randn(16, 64), bits=1)
>>> qw.bits_per_weight                                  # 1 bit + one fp16 scale per 64-weight row
1.25
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from qcourse import packing
from qcourse.methods.base import Method, QuantizedWeight, state_tensor

__all__ = [
    "SCALE_DTYPE", "GRANULARITIES", "sign", "xnor_binarize", "bitnet_binarize", "binarize",
    "residual_binarize", "BinaryWeight", "BinaryPTQ", "METHODS", "methods_binary",
]

#: dtype the scales are stored in (and computed with at dequantization)
SCALE_DTYPE = torch.float16
#: the scale granularities; an int ``group_size`` selects groups within a row
GRANULARITIES = ("row", "tensor")


def _check_2d(w: torch.Tensor, name: str = "w") -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(w).__name__}")
    if not w.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {w.dtype}")
    if w.ndim != 2 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 2-D tensor [out_features, in_features]; "
                         f"got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return w.detach().float()


def sign(x: torch.Tensor, zero: int = 1) -> torch.Tensor:
    """``±1`` as ``int8``: ``+1`` where ``x > 0``, ``−1`` where ``x < 0``, and ``zero`` (±1) where ``x = 0``.

    >>> sign(torch.tensor([2.0, 0.0, -3.0])).tolist(), sign(torch.tensor([0.0]), zero=-1).tolist()
    ([1, 1, -1], [-1])
    """
    if zero not in (1, -1):
        raise ValueError(f"zero must be 1 or -1 (the sign given to 0); got {zero!r}")
    pos = x > 0 if zero == -1 else x >= 0
    return torch.where(pos, 1, -1).to(torch.int8)


def _groups(w: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """``w`` reshaped to ``[n_scales, weights per scale]``."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {list(GRANULARITIES)}; got {granularity!r}")
    if granularity == "tensor":
        if group_size is not None:
            raise ValueError(f"group_size must be None with granularity='tensor'; got {group_size!r}")
        return w.reshape(1, -1)
    if group_size is None:
        return w
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0 \
            or w.shape[1] % group_size:
        raise ValueError(f"group_size must be None or a positive divisor of in_features={w.shape[1]}; "
                         f"got {group_size!r}")
    return w.reshape(-1, group_size)


def _fp16_scale(a: torch.Tensor) -> torch.Tensor:
    if (a > torch.finfo(SCALE_DTYPE).max).any():
        raise ValueError(f"a scale mean|W| = {float(a.max()):.3g} exceeds fp16's range; rescale the weight")
    return a.to(SCALE_DTYPE)


def binarize(w: torch.Tensor, granularity: str = "row", group_size: int | None = None, center: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Signs ``B`` (``int8`` ±1, shaped like ``w``) and fp16 scales ``α = mean|W|`` per group
    (``[n_groups, 1]``): the general form behind :func:`xnor_binarize` and :func:`bitnet_binarize`.

    ``center=True`` takes ``B = Sign(W − mean W)`` with the mean over the same group and ``Sign(0) = −1``
    (BitNet v1); the scale stays ``mean|W|`` (not ``mean|W − mean W|``), as BitNet defines it.
    """
    w = _check_2d(w)
    g = _groups(w, granularity, group_size)
    if center:
        b = sign(g - g.mean(dim=1, keepdim=True), zero=-1)
    else:
        b = sign(g)
    alpha = _fp16_scale(g.abs().mean(dim=1, keepdim=True))
    return b.reshape(w.shape), alpha


def xnor_binarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """XNOR-Net's binary weights: ``B = sign(W)``, ``α = mean|W|`` per output row (``[out, 1]``, fp16)."""
    return binarize(w, "row")


def bitnet_binarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet v1's binary weights: ``B = Sign(W − mean W)`` (``Sign(0) = −1``), ``β = mean|W|`` per tensor
    (0-d, fp16)."""
    b, beta = binarize(w, "tensor", center=True)
    return b, beta.reshape(())


def _dequant(b: torch.Tensor, alpha: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    n_scales = alpha.numel()
    return (b.float().reshape(n_scales, -1) * alpha.float().reshape(n_scales, 1)).reshape(shape)


def residual_binarize(w: torch.Tensor, bases: int = 2, granularity: str = "row",
                      group_size: int | None = None, center: bool = False
                      ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Greedy residual binarization: ``W ≈ Σₖ αₖ Bₖ``, each basis the sign binarization of what the previous
    ones left (computed from the *stored* fp16 scales). Returns the lists ``[B₁, …]`` and ``[α₁, …]``.

    >>> w = torch.randn(8, 4096, generator=torch.Generator().manual_seed(0))
    >>> errs = []
    >>> for k in (1, 2, 3):
    ...     bs, als = residual_binarize(w, bases=k)
    ...     w_hat = sum(_dequant(b, a, w.shape) for b, a in zip(bs, als))
    ...     errs.append(((w - w_hat) ** 2).mean().item())
    >>> errs[0] > errs[1] > errs[2], round(errs[0], 2)     # 1 − 2/π ≈ 0.36 for a Gaussian
    (True, 0.36)
    """
    if isinstance(bases, bool) or not isinstance(bases, int) or bases < 1:
        raise ValueError(f"bases must be a positive int; got {bases!r}")
    r = _check_2d(w)
    bs, alphas = [], []
    for k in range(bases):
        b, a = binarize(r, granularity, group_size, center=center and k == 0)
        bs.append(b)
        alphas.append(a)
        r = r - _dequant(b, a, tuple(r.shape))
    return bs, alphas


class BinaryWeight(QuantizedWeight):
    """``Σₖ αₖ Bₖ``: per basis, the signs packed one bit each (``1 ↔ +1``) and fp16 scales.

    >>> qw = BinaryWeight([torch.tensor([[1, -1, -1, 1]], dtype=torch.int8)],
    ...                   [torch.tensor([[0.5]], dtype=torch.float16)])
    >>> qw.dequantize().tolist(), qw.storage_bits                # one byte of signs + one fp16 scale
    ([[0.5, -0.5, -0.5, 0.5]], 24)
    """

    def __init__(self, signs: list[torch.Tensor], scales: list[torch.Tensor]) -> None:
        if not signs or len(signs) != len(scales):
            raise ValueError("signs and scales must be non-empty lists of the same length (one per basis)")
        shape = tuple(signs[0].shape)
        if len(shape) != 2 or any(tuple(b.shape) != shape for b in signs):
            raise ValueError(f"every sign matrix must be 2-D and of the same shape; got "
                             f"{[tuple(b.shape) for b in signs]}")
        if any(((b != 1) & (b != -1)).any() for b in signs):
            raise ValueError("signs must hold only -1 and +1")
        if any(a.dtype != SCALE_DTYPE for a in scales) or len({a.numel() for a in scales}) != 1 \
                or (shape[0] * shape[1]) % scales[0].numel():
            raise ValueError(f"scales must be {SCALE_DTYPE} tensors of one size dividing the weight count")
        self.shape = (int(shape[0]), int(shape[1]))
        self.packed = [packing.pack((b > 0).to(torch.uint8).flatten(), 1) for b in signs]
        self.scales = [a.detach().reshape(-1).clone() for a in scales]

    @property
    def bases(self) -> int:
        """Number of binary bases (bits of sign per weight)."""
        return len(self.packed)

    def signs(self) -> list[torch.Tensor]:
        """The sign matrices ``Bₖ`` (``int8`` ±1)."""
        return [(2 * packing.unpack(p, 1, self.numel).to(torch.int8) - 1).reshape(self.shape)
                for p in self.packed]

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out = torch.zeros(self.shape)
        for b, a in zip(self.signs(), self.scales, strict=True):
            out += _dequant(b, a, self.shape)
        return out.to(dtype)

    @property
    def storage_bits(self) -> int:
        return sum(p.numel() * 8 + a.numel() * 16 for p, a in zip(self.packed, self.scales, strict=True))

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        for k, (p, a) in enumerate(zip(self.packed, self.scales, strict=True)):
            tensors[f"packed{k}"], tensors[f"scale{k}"] = p, a
        return tensors, self.state_meta(bases=self.bases, n_scales=int(self.scales[0].numel()))

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> BinaryWeight:
        bases, n_scales = meta.get("bases"), meta.get("n_scales")
        shape = (int(meta["shape"][0]), int(meta["shape"][1]))
        for name, v in (("bases", bases), ("n_scales", n_scales)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"meta[{name!r}] must be a positive int; got {v!r}")
        if (shape[0] * shape[1]) % n_scales:
            raise ValueError(f"meta['n_scales']={n_scales} must divide the weight count "
                             f"{shape[0] * shape[1]}")
        new = cls.__new__(cls)
        new.shape = shape
        nbytes = packing.packed_nbytes(shape[0] * shape[1], 1)
        new.packed = [state_tensor(tensors, f"packed{k}", torch.uint8, (nbytes,)) for k in range(bases)]
        new.scales = [state_tensor(tensors, f"scale{k}", SCALE_DTYPE, (n_scales,)) for k in range(bases)]
        return new


class BinaryPTQ(Method):
    """Post-training sign binarization (XNOR-Net scale per row by default; see the module docstring).

    ``bits``: 1 (one basis) or 2 (residual binarization, two bases). ``group_size``: ``None`` (one scale per
    row) or a divisor of ``in_features``. Options: ``center`` (BitNet v1's centring, default ``False``),
    ``granularity`` (``"row"`` or ``"tensor"``).
    """

    def check_group(self, shape: tuple[int, int], group_size: Any, opts: dict[str, Any]) -> None:
        _groups(torch.empty(shape, device="meta"), opts["granularity"], group_size)

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["granularity"] not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {list(GRANULARITIES)} for binary; "
                             f"got {opts['granularity']!r}")

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> BinaryWeight:
        bs, alphas = residual_binarize(w, int(bits), opts["granularity"], group_size, opts["center"])
        return BinaryWeight(bs, alphas)


METHODS = {
    "binary": BinaryPTQ(name="binary", supported_bits=(1, 2),
                        description="sign binarization, mean|W| scale per row/group/tensor (XNOR-Net, "
                                    "BitNet v1 centring), residual second basis at 2 bits",
                        defaults={"center": False, "granularity": "row"}),
}


def methods_binary() -> BinaryPTQ:
    """The registered ``"binary"`` method (same object as ``qcourse.methods.get("binary")``)."""
    return METHODS["binary"]
