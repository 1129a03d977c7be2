"""Reference (oracle) products ``Y = X Ŵᵀ`` for every packed weight format: unpack, decode, multiply.

These are the slow, obviously-correct versions the fast kernels of :mod:`qcourse.kernels.cpu` and
:mod:`qcourse.kernels.triton` are tested against. They read the *stored* tensors (packed bytes, fp16
scales, zeros) through :mod:`qcourse.packing`, never through a kernel's bit tricks, and accumulate in
float64 so they are a tighter oracle than any float32 kernel.

Formats (the storage is documented in the modules that own it):

* **affine** (``int1``–``int8``, :class:`~qcourse.affine.AffineQuantizedWeight` with groups along the input,
  ``axis=1``): codes bit-packed in row-major order, one fp16 scale and one zero per run of ``g``
  consecutive codes (``g = group_size``, ``in_features`` per channel, all per tensor). With the flat code
  index ``i = r·K + k`` the group is ``i // g``, so ``Ŵ[r, k] = scale[i // g]·(code[i] − zero[i // g])``.
* **ternary** (:class:`~qcourse.methods.bitnet.TernaryWeight`): codes ``t + 1`` packed 2 bits (``"2bit"``)
  or base 3 (``"base3"``), one scale ``γ``: ``Ŵ = γ·t``.
* **binary** (±1 words of :mod:`qcourse.xnor`): ``y = n − 2·popcount(x XOR w)`` per row, exact integers.
* **any other** :class:`~qcourse.methods.base.QuantizedWeight` (AQLM, E8P, …): ``X · dequantize()ᵀ``.

>>> import torch
>>> from qcourse.affine import AffineQuantizedWeight, quantize_groups
>>> w = torch.tensor([[-1.0, 0.0, 0.7, 2.0], [-3.0, 0.0, 3.0, 6.0]])
>>> codes, scale, zero = quantize_groups(w, bits=2, group_size=4)
>>> qw = AffineQuantizedWeight(codes, 2, 4, 1, scale, zero.to(torch.uint8))
>>> x = torch.tensor([[1.0, 1.0, 1.0, 1.0]])
>>> matmul(x, qw).tolist(), (x @ qw.dequantize().T).tolist()
([[2.0, 6.0]], [[2.0, 6.0]])
"""

from __future__ import annotations

import numpy as np
import torch

from qcourse import packing, xnor
from qcourse.methods.base import QuantizedWeight

__all__ = ["affine_params", "gemm_affine", "gemm_ternary", "gemm_binary", "matmul"]


def _check_x(x: torch.Tensor, k: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"x must be a floating-point torch.Tensor; got {got}")
    if x.ndim not in (1, 2) or x.shape[-1] != k:
        raise ValueError(f"x must be [in_features] or [batch, in_features] with in_features={k}; "
                         f"got shape {tuple(x.shape)}")
    return x


def _check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if (len(shape) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape)):
        raise ValueError(f"shape must be (out_features, in_features) of positive ints; got {shape!r}")
    return int(shape[0]), int(shape[1])


def affine_params(qweight: QuantizedWeight) -> dict:
    """The stored tensors of an :class:`~qcourse.affine.AffineQuantizedWeight` as kernel arguments.

    Returns ``packed`` (uint8), ``bits``, ``shape``, ``group`` (codes per group in flat order), ``scale``
    (float32 per group) and ``zero`` (float32 per group; the implicit ``2^(b−1)`` for symmetric grids).
    Raises ``ValueError`` for groups along the output axis (``axis=0``), which no kernel here reads.

    >>> import torch
    >>> from qcourse.affine import AffineQuantizedWeight
    >>> qw = AffineQuantizedWeight(torch.zeros(2, 4, dtype=torch.uint8), 4, None, 1,
    ...                            torch.ones(2, 1), None)
    >>> p = affine_params(qw)
    >>> p["bits"], p["shape"], p["group"], p["zero"].tolist()
    (4, (2, 4), 4, [8.0, 8.0])
    """
    from qcourse.affine import AffineQuantizedWeight

    if not isinstance(qweight, AffineQuantizedWeight):
        raise TypeError(f"qweight must be an AffineQuantizedWeight; got {type(qweight).__name__}")
    n, k = qweight.shape
    if qweight.axis != 1 and qweight.group_size != "tensor":
        raise ValueError("only groups along the input dimension (axis=1) have a packed kernel; got axis="
                         f"{qweight.axis}")
    if qweight.bits == packing.TERNARY:
        raise ValueError("affine kernels read integer widths 1-8; ternary codes use gemm_ternary")
    g = n * k if qweight.group_size == "tensor" else (k if qweight.group_size is None else
                                                      int(qweight.group_size))
    scale = qweight.scale.float()
    zero = (torch.full_like(scale, 2.0 ** (qweight.bits - 1)) if qweight.zero is None
            else qweight.zero.float())
    return {"packed": qweight.packed, "bits": int(qweight.bits), "shape": (n, k), "group": g,
            "scale": scale, "zero": zero}


def _check_affine(packed: torch.Tensor, bits: int, shape: tuple[int, int], group: int,
                  scale: torch.Tensor, zero: torch.Tensor) -> tuple[int, int]:
    n, k = _check_shape(shape)
    if isinstance(bits, bool) or bits not in (1, 2, 3, 4, 5, 6, 7, 8):
        raise ValueError(f"bits must be an int from 1 to 8; got {bits!r}")
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.ndim != 1 \
            or packed.numel() != packing.packed_nbytes(n * k, bits):
        got = getattr(packed, "shape", type(packed))
        raise ValueError(f"packed must be a 1-D uint8 tensor of packed_nbytes({n * k}, {bits}) = "
                         f"{packing.packed_nbytes(n * k, bits)} bytes; got {got}")
    if isinstance(group, bool) or not isinstance(group, int) or group < 1 or (n * k) % group \
            or (k % group and group % k):
        raise ValueError(f"group must be a positive int that divides in_features={k} or is a multiple of it "
                         f"dividing {n * k}; got {group!r}")
    ng = n * k // group
    for name, t in (("scale", scale), ("zero", zero)):
        if not isinstance(t, torch.Tensor) or t.numel() != ng:
            raise ValueError(f"{name} must be a tensor of {ng} values (one per group); "
                             f"got {getattr(t, 'shape', t)}")
    return n, k


def gemm_affine(x: torch.Tensor, packed: torch.Tensor, bits: int, shape: tuple[int, int], group: int,
                scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``x Ŵᵀ`` with ``Ŵ[r, k] = scale[i // group]·(code[i] − zero[i // group])``, ``i = r·K + k``.

    ``x`` is ``[K]`` or ``[batch, K]``; returns float32 ``[N]`` or ``[batch, N]``, computed in float64.

    >>> import torch
    >>> codes = torch.tensor([0, 1, 2, 3, 3, 2], dtype=torch.uint8)       # a 2×3 weight, 2-bit codes
    >>> y = gemm_affine(torch.ones(3), packing.pack(codes, 2), 2, (2, 3), 3,
    ...                 torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.0]))
    >>> y.tolist()                                                           # (−1+0+1), 0.5·(3+3+2)
    [0.0, 4.0]
    """
    n, k = _check_affine(packed, bits, shape, group, scale, zero)
    _check_x(x, k)
    codes = packing.unpack(packed, bits, n * k).double().reshape(-1, group)
    w = ((codes - zero.double().reshape(-1, 1)) * scale.double().reshape(-1, 1)).reshape(n, k)
    return (x.double() @ w.T).float()


def gemm_ternary(x: torch.Tensor, packed: torch.Tensor, packing_kind: str, shape: tuple[int, int],
                 gamma: torch.Tensor | float) -> torch.Tensor:
    """``x (γ·T)ᵀ`` for trits ``T`` stored as codes ``t + 1`` (``packing_kind`` ``"2bit"`` or ``"base3"``).

    >>> import torch
    >>> codes = torch.tensor([2, 1, 0, 0, 2, 2], dtype=torch.uint8)       # trits [[1, 0, -1], [-1, 1, 1]]
    >>> gemm_ternary(torch.tensor([1.0, 2.0, 3.0]), packing.pack(codes, 2), "2bit", (2, 3), 0.5).tolist()
    [-1.0, 2.0]
    """
    n, k = _check_shape(shape)
    widths = {"2bit": 2, "base3": packing.TERNARY}
    if packing_kind not in widths:
        raise ValueError(f"packing_kind must be one of {sorted(widths)}; got {packing_kind!r}")
    bits = widths[packing_kind]
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 \
            or packed.numel() != packing.packed_nbytes(n * k, bits):
        raise ValueError(f"packed must be a uint8 tensor of {packing.packed_nbytes(n * k, bits)} bytes")
    _check_x(x, k)
    t = packing.unpack(packed, bits, n * k).double().reshape(n, k) - 1.0
    if (t > 1).any():
        raise ValueError("packed holds a code above 2, which is not a trit")
    return (float(gamma) * (x.double() @ t.T)).float()


def gemm_binary(w_words: np.ndarray, x_words: np.ndarray, n: int) -> np.ndarray:
    """``X Wᵀ`` of ±1 matrices given as :func:`qcourse.xnor.pack_signs` words, via unpacked signs.

    Exact integers (``int64``), ``[batch, out]`` for ``x_words [batch, words]`` or ``[out]`` for
    ``[words]``.

    >>> w = xnor.pack_signs(np.array([[1, -1, 1], [-1, -1, -1]]))
    >>> gemm_binary(w, xnor.pack_signs(np.array([1, 1, 1])), 3).tolist()
    [1, -3]
    """
    ws = xnor.unpack_signs(w_words, n).astype(np.int64)
    xs = xnor.unpack_signs(x_words, n).astype(np.int64)
    return xs @ ws.T


def matmul(x: torch.Tensor, qweight: QuantizedWeight) -> torch.Tensor:
    """``x Ŵᵀ`` for any quantized weight: the packed reference for affine and ternary weights, the decoded
    weight for every other format. Returns float32 shaped ``[..., out]`` like ``x``."""
    from qcourse.affine import AffineQuantizedWeight
    from qcourse.methods.bitnet import TernaryWeight

    if isinstance(qweight, AffineQuantizedWeight) and qweight.bits != packing.TERNARY and (
            qweight.axis == 1 or qweight.group_size == "tensor"):
        p = affine_params(qweight)
        return gemm_affine(x, p["packed"], p["bits"], p["shape"], p["group"], p["scale"], p["zero"])
    if isinstance(qweight, TernaryWeight):
        return gemm_ternary(x, qweight.packed, qweight.packing_kind, qweight.shape, qweight.gamma)
    if not isinstance(qweight, QuantizedWeight):
        raise TypeError(f"qweight must be a QuantizedWeight; got {type(qweight).__name__}")
    _check_x(x, qweight.shape[1])
    return (x.double() @ qweight.dequantize(torch.float32).double().T).float()
