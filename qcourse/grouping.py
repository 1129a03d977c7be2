"""Group reshapes: which weights share one scale and zero point.

A weight ``w`` is ``[out, in]`` (PyTorch layout). Quantizers compute one scale/zero per *group*; this
module turns ``w`` into a 2-D tensor ``[n_groups, g]`` whose rows are the groups, and back.

* ``axis=1`` (default; HQQ ``axis=1``, GPTQ, llama.cpp): a group is ``g`` **contiguous weights of one row**
  (one output channel, consecutive input features). ``w.reshape(-1, g)``; ``g`` must divide ``in``.
* ``axis=0`` (HQQ ``axis=0``, REFERENCE §1.2): HQQ reshapes to ``[g, numel/g]`` and reduces over dim 0, so a
  group is ``g`` weights of **one input column, strided along the output dimension** (rows
  ``r, r + out/g, r + 2·out/g, …``). ``g`` must divide ``out``. Here the groups are returned as rows,
  i.e. the transpose ``w.reshape(g, -1).T``.
* ``group_size=None``: per-channel, one group per row (``axis=1``) or per column (``axis=0``).
* ``group_size="tensor"``: per-tensor, one group holding every weight.

>>> import torch
>>> w = torch.arange(12.).reshape(2, 6)
>>> to_groups(w, 3).tolist()                 # rows split into runs of 3 inputs
[[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0], [9.0, 10.0, 11.0]]
>>> to_groups(w, 2, axis=0).tolist()         # out=2, g=2: each column is one group
[[0.0, 6.0], [1.0, 7.0], [2.0, 8.0], [3.0, 9.0], [4.0, 10.0], [5.0, 11.0]]
>>> bool((from_groups(to_groups(w, 2, axis=0), w.shape, 2, axis=0) == w).all())
True
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["GroupSize", "check_layout", "group_length", "n_groups", "to_groups", "from_groups"]

#: an int (weights per group), ``None`` (per-channel) or ``"tensor"`` (per-tensor)
GroupSize = int | None | Literal["tensor"]


def check_layout(shape: tuple[int, ...] | torch.Size, group_size: GroupSize, axis: int = 1) -> None:
    """Raise ``ValueError`` naming the argument unless ``(shape, group_size, axis)`` is a valid grouping.

    >>> check_layout((4, 6), 4)
    Traceback (most recent call last):
    ...
    ValueError: group_size=4 does not divide in_features=6 (axis=1 groups run along the input dimension); \
choose a divisor of 6, None (per-channel) or 'tensor'
    """
    if len(shape) != 2 or min(shape) <= 0:
        raise ValueError(f"shape must be a non-empty 2-D [out, in] shape; got {tuple(shape)}")
    if isinstance(axis, bool) or axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1; got {axis!r}")
    if group_size is None or group_size == "tensor":
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(
            f"group_size must be a positive int, None (per-channel) or 'tensor'; got {group_size!r}")
    dim, name = (shape[1], "in_features") if axis == 1 else (shape[0], "out_features")
    if dim % group_size:
        where = "along the input dimension" if axis == 1 else "down the output dimension"
        raise ValueError(
            f"group_size={group_size} does not divide {name}={dim} (axis={axis} groups run {where}); "
            f"choose a divisor of {dim}, None (per-channel) or 'tensor'"
        )


def group_length(shape: tuple[int, ...] | torch.Size, group_size: GroupSize, axis: int = 1) -> int:
    """Number of weights per group.

    >>> group_length((8, 64), None), group_length((8, 64), None, axis=0), group_length((8, 64), "tensor")
    (64, 8, 512)
    """
    check_layout(shape, group_size, axis)
    if group_size == "tensor":
        return shape[0] * shape[1]
    if group_size is None:
        return shape[1] if axis == 1 else shape[0]
    return int(group_size)


def n_groups(shape: tuple[int, ...] | torch.Size, group_size: GroupSize, axis: int = 1) -> int:
    """Number of groups (= number of scales) for this layout.

    >>> n_groups((8, 64), 16), n_groups((8, 64), None), n_groups((8, 64), "tensor")
    (32, 8, 1)
    """
    return shape[0] * shape[1] // group_length(shape, group_size, axis)


def to_groups(w: torch.Tensor, group_size: GroupSize, axis: int = 1) -> torch.Tensor:
    """Reshape ``w`` (``[out, in]``) to ``[n_groups, g]``; each row is one group (see module docstring).

    ``axis=1`` returns a view; ``axis=0`` a transposed view (call ``.contiguous()`` if you need one).
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor; got {type(w).__name__}")
    check_layout(tuple(w.shape), group_size, axis)
    g = group_length(tuple(w.shape), group_size, axis)
    if axis == 1 or group_size == "tensor":
        return w.reshape(-1, g)
    return w.reshape(g, -1).T


def from_groups(groups: torch.Tensor, shape: tuple[int, ...] | torch.Size, group_size: GroupSize,
                axis: int = 1) -> torch.Tensor:
    """Inverse of :func:`to_groups`: ``[n_groups, g]`` back to ``shape``.

    >>> import torch
    >>> w = torch.randn(4, 8)
    >>> bool((from_groups(to_groups(w, 4), w.shape, 4) == w).all())
    True
    """
    shape = tuple(shape)
    check_layout(shape, group_size, axis)
    g = group_length(shape, group_size, axis)
    want = (shape[0] * shape[1] // g, g)
    if not isinstance(groups, torch.Tensor) or tuple(groups.shape) != want:
        got = tuple(groups.shape) if isinstance(groups, torch.Tensor) else type(groups).__name__
        raise ValueError(f"groups must be shaped {want} for shape={shape}, group_size={group_size!r}, "
                         f"axis={axis}; got {got}")
    if axis == 1 or group_size == "tensor":
        return groups.reshape(shape)
    return groups.T.reshape(shape)
