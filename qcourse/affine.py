"""Affine integer grids: the building block RTN, HQQ and GPTQ share.

Each group of weights ``x`` gets a step ``scale`` and an integer ``zero`` point; a weight becomes the code
``q = clamp(round(x/scale) + zero, 0, 2^b − 1)`` and is rebuilt as ``x̂ = scale·(q − zero)``.

Grids (per group; :class:`Grid` is the same grid as an object, the scalar quantizer of
:mod:`qcourse.ldlq`'s error-feedback loop):

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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from qcourse import grouping, packing
from qcourse.quantized_weight import QuantizedWeight, check_weight, state_tensor, to_float_dtype

__all__ = [
    "Grid", "FittedGrid", "check_grid_bits", "check_resolvable", "round_scale", "grid_params",
    "quantize_to_grid", "dequantize_grid", "quantize_groups", "dequantize_groups", "AffineQuantizedWeight",
]

_FP16_MAX = 65504.0


def check_grid_bits(bits: Any, symmetric: bool = False) -> int:
    """``bits`` for an integer grid: an int from 1 to 8 (2 to 8 when ``symmetric``)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int from 1 to 8; got {bits!r}")
    if symmetric and bits < 2:
        raise ValueError("bits must be ≥ 2 for symmetric=True (a 1-bit symmetric grid has no nonzero level)")
    return bits


def check_resolvable(w: torch.Tensor, smallest: float, grid: str) -> None:
    """Refuse a nonzero ``w`` whose values all lie below ``smallest``, the finest step ``grid`` can store.

    Such a weight would come back as (nearly) all zeros, silently; an all-zero weight is fine.

    >>> import torch
    >>> check_resolvable(torch.full((2, 2), 1e-9), 2.0**-24, "a float16 scale")
    Traceback (most recent call last):
    ...
    ValueError: w's largest |value| is 1e-09, below 5.96e-08, the finest step a float16 scale can store: ...
    """
    biggest = float(w.abs().max())
    if 0 < biggest < smallest:
        raise ValueError(f"w's largest |value| is {biggest:.3g}, below {smallest:.3g}, the finest step "
                         f"{grid} can store: every weight would round to 0. Multiply the weight by a power "
                         "of two (and divide the layer's output by it) before quantizing")


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
    bits = check_grid_bits(bits, symmetric)
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
    """An affine grid as an object: what GPTQ calls its ``quantizer``, and a ``dim = 1`` BlockQuantizer.

    :meth:`fit` fixes per-row parameters from weights (a :class:`FittedGrid`); :meth:`quantize` fits on
    the block itself and rounds it (plain RTN of the block).

    >>> import torch
    >>> g = Grid(bits=2)
    >>> x = torch.tensor([[-1.0, 0.0, 0.7, 2.0]])
    >>> s, z = g.params(x)
    >>> g.dequant(g.codes(x, s, z), s, z).tolist()
    [[-1.0, 0.0, 1.0, 2.0]]
    >>> g.fit(x).quantize(torch.tensor([[0.4]]))          # (codes, dequantized) on the fitted grid
    (tensor([[1.]]), tensor([[0.]]))
    """

    bits: int
    symmetric: bool = False
    scale_dtype: torch.dtype | None = torch.float16
    #: the seam's vector length: one column at a time
    dim = 1

    def __post_init__(self) -> None:
        check_grid_bits(self.bits, self.symmetric)

    def params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``(scale, zero)``, each ``[rows, 1]``."""
        return grid_params(x, self.bits, self.symmetric, self.scale_dtype)

    def codes(self, x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return quantize_to_grid(x, scale, zero, self.bits)

    def dequant(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        return dequantize_grid(codes, scale, zero)

    def fit(self, w: torch.Tensor) -> FittedGrid:
        """This grid with per-row parameters fitted to ``w`` (``[rows, k]``)."""
        return FittedGrid(self, *self.params(w))

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes, dequantized)`` of ``block`` rounded on a grid fitted to itself."""
        return self.fit(block).quantize(block)

    @property
    def zero_bits(self) -> int:
        """Bits to store one zero point: ``b`` for an integer zero, 0 for the implicit symmetric one."""
        return 0 if self.symmetric else self.bits


@dataclass(frozen=True)
class FittedGrid:
    """A :class:`Grid` with per-row ``scale`` and ``zero`` (``[rows, 1]``): rounds ``[rows, 1]`` blocks."""

    grid: Grid
    scale: torch.Tensor
    zero: torch.Tensor
    dim = 1

    def fit(self, w: torch.Tensor) -> FittedGrid:
        return self.grid.fit(w)

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = quantize_to_grid(block, self.scale, self.zero, self.grid.bits)
        return codes, dequantize_grid(codes, self.scale, self.zero)


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
        Precision the scale is rounded to before use (``torch.float16`` is what RTN stores);
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
    x = grouping.to_groups(w.detach().float(), group_size, axis=1)
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
        Code width (1–8, or 1.58 for ternary).
    group_size, axis
        The grouping (:mod:`qcourse.grouping`).
    scale, zero
        One value per group, in :func:`qcourse.grouping.to_groups` order.

    State (:meth:`to_state`): ``packed`` (the codes), ``scale`` (fp16) and, unless symmetric, ``zero``
    (integer zeros bit-packed at ``bits`` bits, float zeros fp16); meta ``bits``, ``group_size``, ``axis``,
    ``zero`` (``"none"``, ``"int"`` or ``"float"``) and the solver ``history``.

    >>> import torch
    >>> w = torch.tensor([[-1.0, 0.0, 0.7, 2.0]])
    >>> codes, scale, zero = quantize_groups(w, bits=2, group_size=4)
    >>> qw = AffineQuantizedWeight(codes, 2, 4, 1, scale, zero.to(torch.uint8))
    >>> tensors, meta = qw.to_state()
    >>> sorted(tensors), meta["zero"], AffineQuantizedWeight.from_state(tensors, meta).dequantize().tolist()
    (['packed', 'scale', 'zero'], 'int', [[-1.0, 0.0, 1.0, 2.0]])
    """

    #: per-iterate error of the solver that produced this weight (HQQ), empty for RTN
    history: list[float]

    def __init__(self, codes: torch.Tensor, bits: float, group_size: grouping.GroupSize, axis: int,
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
        return to_float_dtype(grouping.from_groups(w, self.shape, self.group_size, self.axis), dtype)

    @property
    def storage_bits(self) -> int:
        return self.packed.numel() * 8 + self.scale.numel() * (16 + self.zero_bits)

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"packed": self.packed, "scale": self.scale}
        kind = "none"
        if self.zero is not None:
            kind = "int" if self.zero.dtype == torch.uint8 else "float"
            tensors["zero"] = packing.pack(self.zero, self.bits) if kind == "int" else self.zero
        meta = self.state_meta(bits=self.bits, group_size=self.group_size, axis=self.axis, zero=kind,
                               history=[float(h) for h in self.history])
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
                   ) -> AffineQuantizedWeight:
        shape = (int(meta["shape"][0]), int(meta["shape"][1]))
        bits, group_size, axis, kind = meta["bits"], meta["group_size"], meta["axis"], meta["zero"]
        packing.check_bits(bits)
        ng = grouping.n_groups(shape, group_size, axis)
        self = cls.__new__(cls)
        self.shape, self.bits, self.group_size, self.axis = shape, bits, group_size, axis
        self.packed = state_tensor(tensors, "packed", torch.uint8,
                                   (packing.packed_nbytes(shape[0] * shape[1], bits),))
        self.scale = state_tensor(tensors, "scale", torch.float16, (ng,))
        if kind == "int":
            packed_zero = state_tensor(tensors, "zero", torch.uint8, (packing.packed_nbytes(ng, bits),))
            self.zero = packing.unpack(packed_zero, bits, ng)
        elif kind == "float":
            self.zero = state_tensor(tensors, "zero", torch.float16, (ng,))
        elif kind == "none":
            self.zero = None
        else:
            raise ValueError(f"meta['zero'] must be 'none', 'int' or 'float'; got {kind!r}")
        self.history = list(meta.get("history", []))
        return self
