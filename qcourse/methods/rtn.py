"""Round-to-nearest (RTN): the uniform affine quantizer every other method is measured against.

Each group of weights ``x`` gets a step ``scale`` and an integer ``zero`` point; a weight becomes the code
``q = clamp(round(x/scale) + zero, 0, 2^b − 1)`` and is rebuilt as ``x̂ = scale·(q − zero)``.

Grids (per group; the same code serves GPTQ through :class:`Grid`):

* **asymmetric min–max** (default): ``scale = (max − min)/(2^b − 1)``, ``zero = clamp(round(−min/scale),
  0, 2^b − 1)``. The zero is an integer on the code grid, so ``0.0`` is represented exactly. The clamp only
  acts on one-signed groups (all weights > 0 or all < 0), where it costs range; GPTQ's own quantizer instead
  widens such a range to include 0 — both agree whenever a group has weights of both signs.
* **symmetric** (``symmetric=True``), the "restricted range" absmax grid of LLM.int8/TensorRT:
  ``scale = max|x| / (2^(b−1) − 1)`` and a fixed zero ``2^(b−1)`` (not stored), so codes span
  ``−(2^(b−1) − 1) … 2^(b−1) − 1`` around it and ``±max|x|`` are exact; one code (``0``) is never used.
  At 2 bits this leaves three levels ``{−s, 0, s}``; symmetric needs ``bits ≥ 2``.
* **degenerate groups** (``max = min``, e.g. a constant or all-zero group): the range is widened to include
  0, so a constant ``c`` is stored exactly with ``scale = |c|/(2^b − 1)``; an all-zero group gets
  ``scale = 1``. No division by zero.

Storage and ``bits_per_weight`` (:class:`AffineQuantizedWeight`): the codes bit-packed with
:mod:`qcourse.packing` (``ceil(n·b/8)`` bytes), one fp16 scale per group (16 bits), and one zero per group at
its stored precision — an integer zero costs ``b`` bits, a float zero (HQQ) 16 bits, the implicit symmetric
zero 0 bits. Asymmetric RTN at 4 bits, group 64: ``4 + 16/64 + 4/64 = 4.3125`` bits per weight. Codes are
computed with the stored fp16 scale (rounded up, :func:`round_scale`), so quantization and dequantization
agree exactly.

>>> import torch
>>> w = torch.tensor([[-1.0, 0.0, 0.7, 2.0]])
>>> codes, scale, zero = quantize_groups(w, bits=2, group_size=4)
>>> scale.item(), zero.item(), codes.tolist()           # scale = (2 − (−1))/3, zero = round(1/1)
(1.0, 1.0, [[0, 1, 2, 3]])
>>> dequantize_groups(codes, scale, zero).tolist()      # 0.7 lands on the level 1.0
[[-1.0, 0.0, 1.0, 2.0]]
>>> from qcourse import methods
>>> qw = methods.get("rtn").quantize(torch.randn(16, 128), bits=4, group_size=64)
>>> qw.bits_per_weight
4.3125
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qcourse import grouping, packing
from qcourse.methods.base import Method, QuantizedWeight, check_weight

__all__ = [
    "Grid", "grid_params", "quantize_to_grid", "dequantize_grid", "quantize_groups", "dequantize_groups",
    "AffineQuantizedWeight", "RTN", "METHODS",
]

_FP16_MAX = 65504.0


def _check_bits(bits: Any, symmetric: bool) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int from 1 to 8; got {bits!r}")
    if symmetric and bits < 2:
        raise ValueError("bits must be ≥ 2 for symmetric=True (a 1-bit symmetric grid has no nonzero level)")
    return bits


def round_scale(scale: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Round ``scale`` **up** to the precision it will be stored in (``None``: keep as is).

    Rounding up (to the next representable value at or above ``scale``) keeps the stored grid wide enough
    to cover the group's ``[min, max]``, so no weight is clamped by more than half a step because of the
    storage precision. A scale beyond the dtype's range raises ``ValueError``; a positive scale too small
    for it becomes the smallest positive value, never 0.

    >>> import torch
    >>> round_scale(torch.tensor([0.1, 1e-12, 0.5]), torch.float16).tolist()
    [0.10003662109375, 5.960464477539063e-08, 0.5]
    """
    if dtype is None:
        return scale
    out = scale.to(dtype)
    up = torch.nextafter(out, torch.full_like(out, float("inf")))
    out = torch.where(out.to(scale.dtype) < scale, up, out)
    if not torch.isfinite(out).all():
        raise ValueError(f"w has a group whose range needs a scale beyond {dtype} (max {_FP16_MAX:g} for "
                         "float16); rescale the weight or use a larger scale dtype")
    return out.to(scale.dtype)


def grid_params(x: torch.Tensor, bits: int, symmetric: bool = False,
                scale_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale, zero)`` of the RTN grid for ``x`` (``[rows, k]``); both returned ``[rows, 1]``.

    ``zero`` holds integers (as floats); for ``symmetric=True`` it is the constant ``2^(b−1)``.
    ``scale_dtype=torch.float16`` rounds the scale to what will be stored before the zero is derived.

    >>> import torch
    >>> s, z = grid_params(torch.tensor([[-1.0, 3.0], [2.0, 2.0], [0.0, 0.0]]), bits=2)
    >>> [round(v, 4) for v in s.flatten().tolist()], z.flatten().tolist()
    ([1.3333, 0.6667, 1.0], [1.0, 0.0, 0.0])
    >>> s, z = grid_params(torch.tensor([[-1.0, 3.0]]), bits=3, symmetric=True)
    >>> s.item(), z.item()                                       # 3/(2^2 − 1), zero 2^2
    (1.0, 4.0)
    """
    bits = _check_bits(bits, symmetric)
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"x must be a 2-D floating-point tensor [rows, k]; got {getattr(x, 'shape', x)!r}")
    maxq = 2**bits - 1
    if symmetric:
        half = 2 ** (bits - 1)
        absmax = x.abs().amax(dim=1, keepdim=True)
        absmax = torch.where(absmax == 0, torch.full_like(absmax, half - 1), absmax)
        scale = round_scale(absmax / (half - 1), scale_dtype)
        return scale, torch.full_like(scale, float(half))
    lo = x.amin(dim=1, keepdim=True)
    hi = x.amax(dim=1, keepdim=True)
    degenerate = hi == lo
    # a constant group is stored exactly by stretching its range to reach 0
    lo = torch.where(degenerate, lo.clamp(max=0), lo)
    hi = torch.where(degenerate, hi.clamp(min=0), hi)
    rng = hi - lo
    rng = torch.where(rng == 0, torch.full_like(rng, maxq), rng)
    scale = round_scale(rng / maxq, scale_dtype)
    zero = torch.round(-lo / scale).clamp(0, maxq) + 0.0  # + 0.0 turns −0.0 into 0.0
    return scale, zero


def quantize_to_grid(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``clamp(round(x/scale) + zero, 0, 2^b − 1)``, same dtype as ``x`` (whole numbers).

    >>> import torch
    >>> quantize_to_grid(torch.tensor([-2.0, 0.4, 9.0]), torch.tensor(1.0), torch.tensor(1.0), 2).tolist()
    [0.0, 1.0, 3.0]
    """
    return (torch.round(x / scale) + zero).clamp(0, 2**bits - 1)


def dequantize_grid(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``scale·(codes − zero)``."""
    return scale * (codes - zero)


@dataclass(frozen=True)
class Grid:
    """An RTN grid as an object: what GPTQ calls its ``quantizer``.

    >>> import torch
    >>> g = Grid(bits=2)
    >>> x = torch.tensor([[-1.0, 0.0, 0.7, 2.0]])
    >>> s, z = g.params(x)
    >>> g.dequant(g.codes(x, s, z), s, z).tolist()
    [[-1.0, 0.0, 1.0, 2.0]]
    """

    bits: int
    symmetric: bool = False
    scale_dtype: torch.dtype | None = torch.float16

    def __post_init__(self) -> None:
        _check_bits(self.bits, self.symmetric)

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``(scale, zero)``, each ``[rows, 1]``."""
        return grid_params(x, self.bits, self.symmetric, self.scale_dtype)

    def codes(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return quantize_to_grid(x, scale, zero, self.bits)

    def dequant(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return dequantize_grid(codes, scale, zero)

    @property
    def zero_bits(self) -> int:
        """Bits to store one zero point: ``b`` for an integer zero, 0 for the implicit symmetric one."""
        return 0 if self.symmetric else self.bits


def quantize_groups(w: torch.Tensor, bits: int, group_size: grouping.GroupSize, symmetric: bool = False,
                    *, scale_dtype: torch.dtype | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise RTN of ``w`` (``[out, in]``), groups along the input dimension.

    Parameters
    ----------
    w
        Finite float weight ``[out, in]``.
    bits
        1–8 (2–8 when ``symmetric``).
    group_size
        Inputs per group (must divide ``in``), ``None`` for per-channel or ``"tensor"`` for per-tensor.
    symmetric
        Absmax grid with the implicit zero ``2^(b−1)`` instead of min–max.
    scale_dtype
        Precision the scale is rounded to before use (``torch.float16`` is what :class:`RTN` stores);
        ``None`` keeps float32, the textbook formula.

    Returns
    -------
    codes, scale, zero
        ``codes`` is ``uint8`` shaped like ``w``; ``scale`` and ``zero`` are float32 ``[out, in/g]``
        (``[out, 1]`` per-channel, ``[1, 1]`` per-tensor); ``zero`` holds integers.

    >>> import torch
    >>> w = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 10.0, 20.0, 30.0]])
    >>> codes, scale, zero = quantize_groups(w, bits=2, group_size=4)
    >>> codes.tolist(), scale.tolist()
    ([[0, 1, 2, 3, 0, 1, 2, 3]], [[1.0, 10.0]])
    """
    check_weight(w)
    if group_size not in (None, "tensor"):
        grouping.check_layout(tuple(w.shape), group_size, axis=1)
    x = grouping.to_groups(w.float(), group_size, axis=1)
    scale, zero = grid_params(x, bits, symmetric, scale_dtype)
    codes = quantize_to_grid(x, scale, zero, bits)
    out = w.shape[0] if group_size != "tensor" else 1
    return (codes.to(torch.uint8).reshape(w.shape), scale.reshape(out, -1), zero.reshape(out, -1))


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`quantize_groups`: ``scale·(codes − zero)`` with each group's parameters.

    The grouping is read off the shapes: ``scale`` ``[R, C]`` for ``codes`` ``[out, in]`` means runs of
    ``in/C`` inputs in each of ``R`` row blocks (``R = out`` for groups/per-channel, ``1`` per-tensor).

    >>> import torch
    >>> dequantize_groups(torch.tensor([[0, 3]]), torch.tensor([[0.5]]), torch.tensor([[1.0]])).tolist()
    [[-0.5, 1.0]]
    """
    if codes.ndim != 2 or scale.ndim != 2 or tuple(zero.shape) != tuple(scale.shape):
        raise ValueError(f"codes must be 2-D and scale, zero 2-D of equal shape; got {tuple(codes.shape)}, "
                         f"{tuple(scale.shape)}, {tuple(zero.shape)}")
    (out, n_in), (r, c) = codes.shape, scale.shape
    if out % r or n_in % c:
        raise ValueError(f"scale shape {(r, c)} does not tile codes shape {(out, n_in)}")
    s = scale.repeat_interleave(out // r, 0).repeat_interleave(n_in // c, 1)
    z = zero.repeat_interleave(out // r, 0).repeat_interleave(n_in // c, 1)
    return dequantize_grid(codes.float(), s.float(), z.float())


class AffineQuantizedWeight(QuantizedWeight):
    """Packed codes + one scale (fp16) and one zero per group; ``Ŵ = scale·(codes − zero)``.

    Shared by RTN and HQQ. ``zero`` is ``None`` for the symmetric grid (implicit ``2^(b−1)``, 0 bits),
    a ``uint8`` tensor for integer zeros (``bits`` bits each) or a ``float16`` tensor for HQQ's float zeros
    (16 bits each).

    Parameters
    ----------
    codes
        Integer codes shaped like the weight.
    bits
        Code width (1–8).
    group_size, axis
        The grouping (:mod:`qcourse.grouping`).
    scale, zero
        One value per group, in :func:`qcourse.grouping.to_groups` order.
    """

    #: per-iterate error of the solver that produced this weight (HQQ), empty for RTN
    history: list[float]

    def __init__(self, codes: torch.Tensor, bits: int, group_size: grouping.GroupSize, axis: int,
                 scale: torch.Tensor, zero: torch.Tensor | None) -> None:
        self.shape = (int(codes.shape[0]), int(codes.shape[1]))
        self.bits = bits
        self.group_size = group_size
        self.axis = axis
        ng = grouping.n_groups(self.shape, group_size, axis)
        self.packed = packing.pack(codes.to(torch.uint8), bits)
        self.scale = scale.reshape(ng).to(torch.float16)
        if zero is not None and zero.dtype not in (torch.uint8, torch.float16):
            raise TypeError(f"zero must be uint8 (integer zero) or float16 (float zero); got {zero.dtype}")
        self.zero = None if zero is None else zero.reshape(ng)
        self.history = []

    @property
    def zero_bits(self) -> int:
        if self.zero is None:
            return 0
        return self.bits if self.zero.dtype == torch.uint8 else 16

    def codes(self) -> torch.Tensor:
        """The integer codes, unpacked (``uint8``, shaped like the weight)."""
        return packing.unpack(self.packed, self.bits, self.numel).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        groups = grouping.to_groups(self.codes().float(), self.group_size, self.axis)
        zero = (torch.full_like(self.scale, 2.0 ** (self.bits - 1)) if self.zero is None else self.zero)
        w = (groups - zero.float()[:, None]) * self.scale.float()[:, None]
        return grouping.from_groups(w, self.shape, self.group_size, self.axis).to(dtype)

    @property
    def storage_bits(self) -> int:
        return self.packed.numel() * 8 + self.scale.numel() * (16 + self.zero_bits)


class RTN(Method):
    """Round-to-nearest: options ``symmetric=False`` and ``granularity=None | "tensor"``."""

    def quantize(self, w: torch.Tensor, bits: float, group_size: int | None = None,
                 hessian: torch.Tensor | None = None, seed: int = 0, **options: Any) -> AffineQuantizedWeight:
        """Quantize ``w``; ``group_size=None`` is per-channel, ``granularity="tensor"`` per-tensor.

        ``hessian`` and ``seed`` are ignored (RTN is data-free and deterministic).
        """
        unknown = set(options) - {"symmetric", "granularity"}
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for rtn; allowed: symmetric, granularity")
        symmetric = options.get("symmetric", False)
        if not isinstance(symmetric, bool):
            raise TypeError(f"symmetric must be a bool; got {symmetric!r}")
        granularity = options.get("granularity")
        if granularity not in (None, "tensor"):
            raise ValueError(f"granularity must be None (use group_size) or 'tensor'; got {granularity!r}")
        self.check_args(w, bits, group_size)
        if granularity == "tensor":
            if group_size is not None:
                raise ValueError(f"group_size must be None with granularity='tensor'; got {group_size!r}")
            layout: grouping.GroupSize = "tensor"
        else:
            layout = group_size
        _check_bits(bits, symmetric)
        codes, scale, zero = quantize_groups(w, int(bits), layout, symmetric, scale_dtype=torch.float16)
        return AffineQuantizedWeight(codes, int(bits), layout, 1, scale,
                                     None if symmetric else zero.to(torch.uint8))


METHODS = {
    "rtn": RTN(
        name="rtn",
        supported_bits=(1, 2, 3, 4, 5, 6, 7, 8),
        description="round-to-nearest, min–max asymmetric (or absmax symmetric) per tensor/channel/group",
        defaults={"symmetric": False, "granularity": None},
    ),
}
