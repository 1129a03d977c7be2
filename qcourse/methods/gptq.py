"""GPTQ / OPTQ (Frantar et al., ICLR 2023): calibration-aware rounding with error feedback.

RTN rounds every weight on its own. GPTQ rounds the columns (input features) of ``W`` one at a time and,
after each, shifts the *not yet quantized* columns to compensate, so that the layer's output on the
calibration inputs changes as little as possible: it minimises the proxy loss
``tr(ΔW H ΔWᵀ)`` with ``H = E[x xᵀ]``. This is the Optimal Brain Surgeon update for one column ``q``,
``δ = −(w_q − quant(w_q)) / [H⁻¹]_qq · H⁻¹_{:,q}``, followed by removing ``q`` from ``H⁻¹``.

The authors' implementation (``IST-DASLab/gptq``, ``gptq.py fasterquant``; REFERENCE §4.1), which this
module follows:

* dead inputs (``H_ii = 0``) get ``H_ii = 1`` and their weight column is zeroed;
* optional act-order: columns in decreasing ``diag(H)``, un-permuted at the end;
* damping ``H += λI`` with ``λ = percdamp · mean(diag H)`` (1 %);
* ``H⁻¹`` by Cholesky + ``cholesky_inverse``, then the **upper** Cholesky factor ``U`` of ``H⁻¹``
  (``H⁻¹ = UᵀU``): row ``i`` of ``U`` divided by ``U_ii`` is exactly the OBS update direction of column
  ``i`` with all earlier columns already removed from ``H⁻¹``, so no inverse is ever downdated;
* lazy blocks of 128 columns: updates inside the block at once (:func:`column_update`), the block's
  accumulated error applied to all later columns in one matrix product;
* the grid is the affine min–max grid (:class:`qcourse.affine.Grid`, fp16 scale, integer zero),
  per row, or per row and group of ``group_size`` columns: "dynamic" groups take scale/zero from the
  current, error-updated weights when the loop reaches a group's first column; "static" groups precompute
  them from the original weights (needed to combine act-order with simple kernels).

The loop itself is :func:`qcourse.ldlq.ldlq`, which takes any block quantizer (QuIP#'s BlockLDLQ is the
same loop on 8-column blocks); GPTQ is that loop with the scalar :class:`~qcourse.affine.Grid`.

One deliberate difference: the reference computes a dynamic group's parameters from its weight matrix
``W``, which inside a lazy block does not yet hold the updates from earlier columns of the same block
(they live in the block copy). Here the group's weights are taken fully updated, as the algorithm
specifies, so the result does not depend on ``blocksize`` (the reference's does, slightly, when a group
starts mid-block). ``reference_groups=True`` reproduces the reference's behaviour instead.

Computation is float64 by default (``dtype``): small layers, and agreement with the naive OBS form to
1e-10 in the tests. Storage (:class:`GPTQWeight`): packed codes, fp16 scale and ``b``-bit integer zero per
(row, group), plus — only for act-order with dynamic groups, where a column's group is not ``col // g`` —
the group index of every input column as int32 (``g_idx``, 32 bits per column, as GPTQ checkpoints store it).

>>> import torch
>>> from qcourse.affine import Grid, dequantize_groups, quantize_groups
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(512, 32, generator=g) @ torch.randn(32, 32, generator=g)   # correlated inputs
>>> H = (x.T @ x / 512).double()
>>> w = torch.randn(16, 32, generator=g)
>>> res = gptq_quantize(w, H, Grid(bits=3), group_size=16)
>>> rtn_codes, s, z = quantize_groups(w, 3, 16, scale_dtype=torch.float16)
>>> proxy_loss(w, res.w_q, H) < proxy_loss(w, dequantize_groups(rtn_codes, s, z), H)
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from qcourse import packing
from qcourse.affine import Grid, check_grid_bits, check_resolvable
from qcourse.ldlq import block_update, ldlq, prepare_hessian, proxy_loss
from qcourse.methods.base import (
    Method,
    QuantizedWeight,
    check_hessian,
    check_weight,
    state_tensor,
    to_float_dtype,
)

__all__ = ["column_update", "prepare_hessian", "gptq_quantize", "proxy_loss", "GPTQResult", "GPTQWeight",
           "GPTQ", "METHODS"]

#: the smallest positive float16 scale: weights far below it all round to 0 on any stored grid
_FP16_TINY = 2.0**-24


def column_update(w_block: torch.Tensor, i: int, q: torch.Tensor, u_row: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ/OBS column step with error feedback, in the Cholesky form.

    Column ``i`` of ``w_block`` (``[rows, B]``) has been rounded to ``q`` (``[rows]``). With ``u_row`` the
    block's row ``i`` of the upper Cholesky factor ``U`` of ``H⁻¹`` (``[B]``), the scaled error is
    ``err = (w_i − q)/U_ii`` and every column ``j ≥ i`` moves by ``−err·U_ij``. Column ``i`` itself becomes
    exactly ``q``; columns before ``i`` are untouched. (:func:`qcourse.ldlq.block_update` with ``d = 1``.)

    Returns ``(updated block, err)``; the input is not modified.

    >>> import torch
    >>> w = torch.tensor([[1.0, 2.0, 3.0]])
    >>> new, err = column_update(w, 0, torch.tensor([0.5]), torch.tensor([2.0, 1.0, -1.0]))
    >>> new.tolist(), err.tolist()      # err = 0.5/2; columns 1, 2 move by −0.25·(1, −1)
    ([[0.5, 1.75, 3.25]], [0.25])
    """
    out, err = block_update(w_block, i, q[:, None], u_row[None, :])
    return out, err[:, 0]


@dataclass
class GPTQResult:
    """Everything :func:`gptq_quantize` computed, in the original column order."""

    w_q: torch.Tensor  #: dequantized weight ``[out, in]`` (float32 for half-precision input)
    codes: torch.Tensor  #: ``uint8`` codes ``[out, in]``
    scale: torch.Tensor  #: ``[out, n_groups]`` (``n_groups = 1`` per-channel)
    zero: torch.Tensor  #: ``[out, n_groups]`` (integers; ``2^(b−1)`` for symmetric grids)
    g_idx: torch.Tensor  #: ``[in]`` group of each input column
    perm: torch.Tensor | None  #: act-order permutation (processing order), or ``None``
    losses: torch.Tensor  #: ``[in]`` GPTQ's per-column loss ``Σ_rows (w − q)²/U_ii²/2``
    needs_g_idx: bool  #: whether ``g_idx`` must be stored (act-order with dynamic groups)

    @property
    def loss(self) -> float:
        return float(self.losses.sum())


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, quantizer: Grid | int, blocksize: int = 128,
                  percdamp: float = 0.01, group_size: int | None = None, act_order: bool = False,
                  static_groups: bool = False, dtype: torch.dtype = torch.float64,
                  reference_groups: bool = False) -> GPTQResult:
    """Quantize ``w`` (``[out, in]``) column by column with GPTQ's error feedback.

    Parameters
    ----------
    w
        Weight ``[out, in]``.
    hessian
        ``H = E[x xᵀ]`` of the layer inputs, ``[in, in]`` (any positive scale factor gives the same result).
    quantizer
        A :class:`~qcourse.affine.Grid` (or just its ``bits``): per-row/group grid and rounding. (Other
        block quantizers go straight to :func:`qcourse.ldlq.ldlq`.)
    blocksize, percdamp, group_size, act_order, static_groups, dtype, reference_groups
        As in :func:`qcourse.ldlq.ldlq`.

    Returns
    -------
    GPTQResult
    """
    check_weight(w)
    check_hessian(hessian, w.shape[1], required=True, method="gptq")
    if isinstance(quantizer, int) and not isinstance(quantizer, bool):
        quantizer = Grid(quantizer)
    if not isinstance(quantizer, Grid):
        raise TypeError(f"quantizer must be a qcourse.affine.Grid or an int (bits); got {quantizer!r}")
    res = ldlq(w.detach(), hessian, quantizer, blocksize=blocksize, percdamp=percdamp,
               group_size=group_size, act_order=act_order, static_groups=static_groups, dtype=dtype,
               reference_groups=reference_groups)
    scale = torch.cat([f.scale for f in res.quantizers], 1)
    zero = torch.cat([f.zero for f in res.quantizers], 1)
    # half-precision input is returned as float32: the rounded levels may exceed float16's range
    out_dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
    needs_g_idx = act_order and group_size is not None and not static_groups
    return GPTQResult(res.w_q.to(out_dtype), res.codes.to(torch.uint8), scale, zero, res.g_idx, res.perm,
                      res.losses, needs_g_idx)


class GPTQWeight(QuantizedWeight):
    """GPTQ's storage: packed codes, fp16 scale and integer zero per (row, group), and ``g_idx`` if needed.

    ``Ŵ[r, c] = scale[r, g_idx[c]] · (code[r, c] − zero[r, g_idx[c]])``.

    State: ``packed`` (codes), ``scale`` (fp16 ``[out, n_groups]``), ``zero`` (bit-packed at ``bits``;
    absent for a symmetric grid) and ``g_idx`` (int32, only when it is stored); meta ``bits``,
    ``symmetric``, ``n_groups``, ``loss``.
    """

    def __init__(self, result: GPTQResult, grid: Grid) -> None:
        self.shape = (int(result.codes.shape[0]), int(result.codes.shape[1]))
        self.bits = grid.bits
        self.symmetric = grid.symmetric
        self.packed = packing.pack(result.codes, grid.bits)
        self.scale = result.scale.to(torch.float16)
        self.zero = None if grid.symmetric else result.zero.to(torch.uint8)
        self.g_idx = result.g_idx.to(torch.int32)
        self.stores_g_idx = result.needs_g_idx
        self.loss = result.loss

    @property
    def zero_bits(self) -> int:
        return 0 if self.symmetric else self.bits

    @property
    def symmetric_zero(self) -> float:
        return float(2 ** (self.bits - 1))

    def codes(self) -> torch.Tensor:
        return packing.unpack(self.packed, self.bits, self.numel).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        idx = self.g_idx.long()
        s = self.scale.float()[:, idx]
        z = torch.full_like(s, self.symmetric_zero) if self.zero is None else self.zero.float()[:, idx]
        return to_float_dtype(s * (self.codes().float() - z), dtype)

    @property
    def storage_bits(self) -> int:
        params = self.scale.numel() * (16 + self.zero_bits)
        return self.packed.numel() * 8 + params + (32 * self.shape[1] if self.stores_g_idx else 0)

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {"packed": self.packed, "scale": self.scale}
        if self.zero is not None:
            tensors["zero"] = packing.pack(self.zero, self.bits)
        if self.stores_g_idx:
            tensors["g_idx"] = self.g_idx
        meta = self.state_meta(bits=self.bits, symmetric=self.symmetric, n_groups=int(self.scale.shape[1]),
                               loss=float(self.loss))
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> GPTQWeight:
        rows, cols = (int(s) for s in meta["shape"])
        bits, symmetric, n_groups = check_grid_bits(meta["bits"]), meta["symmetric"], meta["n_groups"]
        if not isinstance(symmetric, bool):
            raise ValueError(f"meta['symmetric'] must be true or false; got {symmetric!r}")
        if not isinstance(n_groups, int) or n_groups <= 0 or cols % n_groups:
            raise ValueError(f"meta['n_groups'] must be a positive divisor of in_features={cols}; "
                             f"got {n_groups!r}")
        self = cls.__new__(cls)
        self.shape, self.bits, self.symmetric = (rows, cols), bits, symmetric
        n_bytes = packing.packed_nbytes(rows * cols, bits)
        self.packed = state_tensor(tensors, "packed", torch.uint8, (n_bytes,))
        self.scale = state_tensor(tensors, "scale", torch.float16, (rows, n_groups))
        self.zero = None
        if not self.symmetric:
            packed_zero = state_tensor(tensors, "zero", torch.uint8,
                                       (packing.packed_nbytes(rows * n_groups, bits),))
            self.zero = packing.unpack(packed_zero, bits, rows * n_groups).reshape(rows, n_groups)
        self.stores_g_idx = "g_idx" in tensors
        if self.stores_g_idx:
            self.g_idx = state_tensor(tensors, "g_idx", torch.int32, (cols,))
            if int(self.g_idx.min()) < 0 or int(self.g_idx.max()) >= n_groups:
                raise ValueError(f"state tensor 'g_idx' must hold group indices 0..{n_groups - 1}")
        else:
            self.g_idx = (torch.arange(cols) // (cols // n_groups)).to(torch.int32)
        self.loss = float(meta.get("loss", float("nan")))
        return self


class GPTQ(Method):
    """GPTQ; options ``blocksize, percdamp, act_order, static_groups, symmetric, reference_groups``.

    Needs ``hessian``. The options are those of :func:`gptq_quantize`; ``symmetric`` picks the grid;
    ``seed`` is unused (deterministic).
    """

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["blocksize"] <= 0:
            raise ValueError(f"blocksize must be a positive int; got {opts['blocksize']!r}")
        if opts["percdamp"] < 0:
            raise ValueError(f"percdamp must be a non-negative number; got {opts['percdamp']!r}")

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> GPTQWeight:
        check_resolvable(w, _FP16_TINY, "a float16 scale")
        grid = Grid(int(bits), symmetric=opts["symmetric"])
        result = gptq_quantize(w, hessian, grid, blocksize=opts["blocksize"], percdamp=opts["percdamp"],
                               group_size=group_size, act_order=opts["act_order"],
                               static_groups=opts["static_groups"], reference_groups=opts["reference_groups"])
        return GPTQWeight(result, grid)


METHODS = {
    "gptq": GPTQ(name="gptq", supported_bits=(1, 2, 3, 4, 5, 6, 7, 8), needs_hessian=True,
                 description="GPTQ/OPTQ: column-wise rounding with Hessian-based error feedback",
                 defaults={"blocksize": 128, "percdamp": 0.01, "act_order": False, "static_groups": False,
                           "symmetric": False, "reference_groups": False}),
}
