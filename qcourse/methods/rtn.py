"""Round-to-nearest (RTN): the uniform affine quantizer every other method is measured against.

Each group of weights gets the min–max (or absmax) affine grid of :mod:`qcourse.affine` and every weight
is rounded to its nearest level, independently of the others. The grid's building blocks
(:func:`quantize_groups`, :class:`Grid`, :class:`AffineQuantizedWeight` …) live in :mod:`qcourse.affine` and
are re-exported here, where lesson 02 imports them.

>>> import torch
>>> from qcourse import methods
>>> qw = methods.get("rtn").quantize(torch.randn(16, 128), bits=4, group_size=64)
>>> qw.bits_per_weight                               # 4 + 16/64 (fp16 scale) + 4/64 (4-bit zero)
4.3125
"""

from __future__ import annotations

from typing import Any

import torch

from qcourse import grouping
from qcourse.affine import (
    AffineQuantizedWeight,
    Grid,
    check_grid_bits,
    dequantize_grid,
    dequantize_groups,
    grid_params,
    quantize_groups,
    quantize_to_grid,
    round_scale,
)
from qcourse.methods.base import Method

__all__ = [
    "Grid", "grid_params", "quantize_to_grid", "dequantize_grid", "quantize_groups", "dequantize_groups",
    "round_scale", "AffineQuantizedWeight", "RTN", "METHODS",
]


class RTN(Method):
    """Round-to-nearest: options ``symmetric=False`` and ``granularity=None | "tensor"``.

    ``group_size=None`` is per-channel, ``granularity="tensor"`` per-tensor; ``hessian`` and ``seed`` are
    ignored (RTN is data-free and deterministic).
    """

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["granularity"] not in (None, "tensor"):
            raise ValueError("granularity must be None (use group_size) or 'tensor'; "
                             f"got {opts['granularity']!r}")

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> AffineQuantizedWeight:
        symmetric = opts["symmetric"]
        layout: grouping.GroupSize = group_size
        if opts["granularity"] == "tensor":
            if group_size is not None:
                raise ValueError(f"group_size must be None with granularity='tensor'; got {group_size!r}")
            layout = "tensor"
        bits = check_grid_bits(int(bits), symmetric)
        codes, scale, zero = quantize_groups(w, bits, layout, symmetric, scale_dtype=torch.float16)
        stored_zero = None if symmetric else zero.to(torch.uint8)
        return AffineQuantizedWeight(codes, bits, layout, 1, scale, stored_zero)


METHODS = {
    "rtn": RTN(
        name="rtn",
        supported_bits=(1, 2, 3, 4, 5, 6, 7, 8),
        description="round-to-nearest, min–max asymmetric (or absmax symmetric) per tensor/channel/group",
        defaults={"symmetric": False, "granularity": None},
    ),
}
