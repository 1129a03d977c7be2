"""The contract every quantization method follows.

A method turns a float weight ``w`` (``[out_features, in_features]``, PyTorch layout) into a
:class:`QuantizedWeight`: an object that knows how to rebuild an approximation of ``w`` and how many bits
it really stores per weight (codes, scales, zero points, codebooks, sign vectors, all at their stored
precision). Calibration-aware methods also take ``hessian = E[x xᵀ]`` of the layer's inputs.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


class QuantizedWeight(abc.ABC):
    """A quantized weight matrix.

    Subclasses hold their own packed codes and metadata; this base fixes the interface.
    """

    #: shape of the original weight, ``(out_features, in_features)``
    shape: tuple[int, int]

    @abc.abstractmethod
    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rebuild the approximation ``Ŵ`` of the original weight, shaped like it."""

    @property
    @abc.abstractmethod
    def storage_bits(self) -> int:
        """Total bits stored: codes + scales + zero points + codebooks + anything else needed to decode."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def bits_per_weight(self) -> float:
        """Honest bits per weight: :attr:`storage_bits` divided by the number of weights."""
        return self.storage_bits / self.numel

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, bits_per_weight={self.bits_per_weight:.4g})"


@dataclass
class Method(abc.ABC):
    """A quantization method: a name, what it supports, and :meth:`quantize`."""

    name: str
    supported_bits: Sequence[float]
    needs_hessian: bool = False
    #: group sizes the method accepts; ``None`` in the tuple means "whole row" (per-channel)
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    @abc.abstractmethod
    def quantize(
        self,
        w: torch.Tensor,
        bits: float,
        group_size: int | None = None,
        hessian: torch.Tensor | None = None,
        seed: int = 0,
        **options: Any,
    ) -> QuantizedWeight:
        """Quantize ``w`` (``[out, in]``) to ``bits`` bits with groups of ``group_size`` inputs.

        ``group_size=None`` means one group per output row (per-channel). ``hessian`` is
        ``E[x xᵀ]`` (``[in, in]``, float64) for calibration-aware methods and ignored by the others.
        """

    def check_args(self, w: torch.Tensor, bits: float, group_size: int | None) -> None:
        """Shared validation: raises ``ValueError``/``TypeError`` naming the argument and what is allowed."""
        check_weight(w)
        if bits not in self.supported_bits:
            raise ValueError(f"bits must be one of {list(self.supported_bits)} for {self.name}; got {bits!r}")
        check_group_size(group_size, w.shape[1])


def check_weight(w: torch.Tensor) -> None:
    """Refuse anything but a finite, floating-point 2-D tensor."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor; got {type(w).__name__}")
    if w.ndim != 2:
        raise ValueError(f"w must be 2-D [out_features, in_features]; got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"w must be a floating-point tensor; got dtype {w.dtype}")
    if w.numel() == 0:
        raise ValueError("w must not be empty")
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or Inf; quantization needs finite weights")


def check_group_size(group_size: int | None, in_features: int) -> None:
    """``group_size`` must be ``None`` (whole row) or a positive integer dividing ``in_features``."""
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int or None (per-channel); got {group_size!r}")
    if in_features % group_size:
        raise ValueError(
            f"group_size={group_size} does not divide in_features={in_features}; "
            f"choose a divisor of {in_features} or None for per-channel"
        )


def check_hessian(hessian: torch.Tensor | None, in_features: int, required: bool, method: str) -> None:
    """Validate a calibration second moment ``E[x xᵀ]``."""
    if hessian is None:
        if required:
            raise ValueError(f"{method} needs hessian=E[x xᵀ] from calibration data ([in, in]); got None")
        return
    if not isinstance(hessian, torch.Tensor) or not hessian.is_floating_point():
        raise TypeError(f"hessian must be a floating-point torch.Tensor; got {type(hessian).__name__}")
    if tuple(hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"hessian must be [{in_features}, {in_features}] (in_features squared); "
            f"got {tuple(hessian.shape)}"
        )
    if not torch.isfinite(hessian).all():
        raise ValueError("hessian contains NaN or Inf")
