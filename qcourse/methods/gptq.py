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
* the grid is RTN's asymmetric min–max (:class:`qcourse.methods.rtn.Grid`, fp16 scale, integer zero),
  per row, or per row and group of ``group_size`` columns: "dynamic" groups take scale/zero from the
  current, error-updated weights when the loop reaches a group's first column; "static" groups precompute
  them from the original weights (needed to combine act-order with simple kernels).

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

from dataclasses import dataclass
from typing import Any

import torch

from qcourse import packing
from qcourse.methods.base import Method, QuantizedWeight, check_hessian, check_weight
from qcourse.methods.rtn import Grid, dequantize_groups, quantize_groups

__all__ = ["column_update", "prepare_hessian", "gptq_quantize", "proxy_loss", "GPTQResult", "GPTQWeight",
           "GPTQ", "METHODS", "Grid", "quantize_groups", "dequantize_groups"]


def proxy_loss(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr(ΔW H ΔWᵀ)`` with ``ΔW = w − w_hat``: the layer-output error GPTQ minimises (per calibration row).

    >>> import torch
    >>> proxy_loss(torch.ones(1, 2), torch.zeros(1, 2), torch.eye(2, dtype=torch.float64))
    2.0
    """
    d = (w - w_hat).to(torch.float64)
    return float(torch.einsum("ij,jk,ik->", d, hessian.to(torch.float64), d))


def column_update(w_block: torch.Tensor, i: int, q: torch.Tensor, u_row: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ/OBS column step with error feedback, in the Cholesky form.

    Column ``i`` of ``w_block`` (``[rows, B]``) has been rounded to ``q`` (``[rows]``). With ``u_row`` the
    block's row ``i`` of the upper Cholesky factor ``U`` of ``H⁻¹`` (``[B]``), the scaled error is
    ``err = (w_i − q)/U_ii`` and every column ``j ≥ i`` moves by ``−err·U_ij``. Column ``i`` itself becomes
    exactly ``q``; columns before ``i`` are untouched.

    Returns ``(updated block, err)``; the input is not modified.

    >>> import torch
    >>> w = torch.tensor([[1.0, 2.0, 3.0]])
    >>> new, err = column_update(w, 0, torch.tensor([0.5]), torch.tensor([2.0, 1.0, -1.0]))
    >>> new.tolist(), err.tolist()      # err = 0.5/2; columns 1, 2 move by −0.25·(1, −1)
    ([[0.5, 1.75, 3.25]], [0.25])
    """
    err = (w_block[:, i] - q) / u_row[i]
    out = w_block.clone()
    out[:, i:] -= err[:, None] * u_row[None, i:]
    return out, err


def prepare_hessian(hessian: torch.Tensor, w: torch.Tensor, percdamp: float = 0.01,
                    perm: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Dead inputs, optional permutation, damping, and the upper Cholesky factor of ``H⁻¹``.

    Returns ``(w with dead columns zeroed and permuted, U)``. Raises ``ValueError`` if ``H`` is not positive
    definite after damping.

    >>> import torch
    >>> H = torch.tensor([[4.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    >>> w, U = prepare_hessian(H, torch.ones(1, 2, dtype=torch.float64), percdamp=0.0)
    >>> w.tolist(), torch.diag(U).tolist()          # dead input 1: column zeroed, H_11 := 1
    ([[1.0, 0.0]], [0.5, 1.0])
    """
    H = hessian.to(w.dtype).clone()
    w = w.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    w[:, dead] = 0
    if perm is not None:
        w = w[:, perm]
        H = H[perm][:, perm]
    idx = torch.arange(H.shape[0])
    H[idx, idx] += percdamp * torch.mean(torch.diag(H))
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        raise ValueError("hessian is not positive definite even after damping; increase percdamp or "
                         "collect more calibration data")
    U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0:
        raise ValueError("inverse hessian is numerically not positive definite; increase percdamp")
    return w, U


@dataclass
class GPTQResult:
    """Everything :func:`gptq_quantize` computed, in the original column order."""

    w_q: torch.Tensor  #: dequantized weight ``[out, in]``
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
        A :class:`~qcourse.methods.rtn.Grid` (or just its ``bits``): per-row/group grid and rounding.
    blocksize
        Columns per lazy block (128 in the reference); affects speed only.
    percdamp
        Damping as a fraction of ``mean(diag H)``.
    group_size
        Columns per group (must divide ``in``), ``None`` for one grid per row.
    act_order
        Process columns in decreasing ``diag(H)``.
    static_groups
        Precompute every group's grid from the original weights (only with ``group_size``).
    dtype
        Computation precision.
    reference_groups
        Take dynamic group parameters from the block-stale weights like ``IST-DASLab/gptq`` does (see the
        module docstring); the default uses the fully updated weights.

    Returns
    -------
    GPTQResult
    """
    check_weight(w)
    rows, cols = w.shape
    check_hessian(hessian, cols, required=True, method="gptq")
    if isinstance(quantizer, int) and not isinstance(quantizer, bool):
        quantizer = Grid(quantizer)
    if not isinstance(quantizer, Grid):
        raise TypeError(f"quantizer must be a qcourse.methods.rtn.Grid or an int (bits); got {quantizer!r}")
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize <= 0:
        raise ValueError(f"blocksize must be a positive int; got {blocksize!r}")
    if not (isinstance(percdamp, int | float) and percdamp >= 0):
        raise ValueError(f"percdamp must be a non-negative number; got {percdamp!r}")
    if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                   or group_size <= 0 or cols % group_size):
        raise ValueError(f"group_size must be None or a positive int dividing in_features={cols}; "
                         f"got {group_size!r}")
    if static_groups and group_size is None:
        raise ValueError("static_groups=True needs a group_size")

    W = w.to(dtype)
    g = group_size if group_size is not None else cols
    n_groups = cols // g
    S = torch.zeros(rows, n_groups, dtype=dtype)
    Z = torch.zeros(rows, n_groups, dtype=dtype)
    if group_size is None:
        # the reference fixes per-row grids from the weights as given, before dead columns are zeroed
        S[:, :1], Z[:, :1] = quantizer.params(W)
    if static_groups:
        # static grids come from the weights after dead columns are zeroed, in the original order
        W0 = W.clone()
        W0[:, torch.diag(hessian) == 0] = 0
        for k in range(n_groups):
            S[:, k:k + 1], Z[:, k:k + 1] = quantizer.params(W0[:, k * g:(k + 1) * g])
    perm = None
    if act_order:
        diag = torch.diag(hessian).clone()
        diag[diag == 0] = 1  # dead inputs are ordered as the reference orders them, with H_ii := 1
        perm = torch.argsort(diag, descending=True, stable=True)
    W, U = prepare_hessian(hessian, W, percdamp, perm)
    # group (column of S/Z) used by each processing position
    order = perm if perm is not None else torch.arange(cols)
    if group_size is None:
        gcol = torch.zeros(cols, dtype=torch.long)
    elif static_groups:
        gcol = order // g
    else:
        gcol = torch.arange(cols) // g

    Q = torch.zeros_like(W)
    codes = torch.zeros(rows, cols, dtype=torch.uint8)
    losses = torch.zeros(cols, dtype=dtype)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i
            if group_size is not None and not static_groups and j % g == 0:
                if reference_groups:
                    current = W[:, j:j + g]  # misses the updates from columns i1..j−1 of this block
                else:
                    inside = W1[:, i:min(i + g, i2 - i1)]
                    beyond = W[:, i2:j + g] - Err1[:, :i] @ U[i1:i1 + i, i2:j + g]  # lazily pending updates
                    current = torch.cat([inside, beyond], 1)
                k = j // g
                S[:, k:k + 1], Z[:, k:k + 1] = quantizer.params(current)
            s, z = S[:, gcol[j]:gcol[j] + 1], Z[:, gcol[j]:gcol[j] + 1]
            c = quantizer.codes(W1[:, i:i + 1], s, z)
            q = quantizer.dequant(c, s, z)[:, 0]
            losses[j] = ((W1[:, i] - q) ** 2).sum() / U1[i, i] ** 2 / 2
            W1, Err1[:, i] = column_update(W1, i, q, U1[i])
            Q[:, j] = q
            codes[:, j] = c[:, 0].to(torch.uint8)
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    g_idx = torch.arange(cols) // g if group_size is not None else torch.zeros(cols, dtype=torch.long)
    if perm is not None:
        inv = torch.argsort(perm)
        Q, codes, losses = Q[:, inv], codes[:, inv], losses[inv]
        g_idx = gcol[inv]
    needs_g_idx = act_order and group_size is not None and not static_groups
    return GPTQResult(Q.to(w.dtype), codes, S, Z, g_idx, perm, losses, needs_g_idx)


class GPTQWeight(QuantizedWeight):
    """GPTQ's storage: packed codes, fp16 scale and integer zero per (row, group), and ``g_idx`` if needed.

    ``Ŵ[r, c] = scale[r, g_idx[c]] · (code[r, c] − zero[r, g_idx[c]])``.
    """

    def __init__(self, result: GPTQResult, grid: Grid) -> None:
        self.shape = (int(result.codes.shape[0]), int(result.codes.shape[1]))
        self.bits = grid.bits
        self.zero_bits = grid.zero_bits
        self.packed = packing.pack(result.codes, grid.bits)
        self.scale = result.scale.to(torch.float16)
        self.zero = None if grid.symmetric else result.zero.to(torch.uint8)
        self.symmetric_zero = float(2 ** (grid.bits - 1))
        self.g_idx = result.g_idx.to(torch.int32)
        self.stores_g_idx = result.needs_g_idx
        self.loss = result.loss

    def codes(self) -> torch.Tensor:
        return packing.unpack(self.packed, self.bits, self.numel).reshape(self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        idx = self.g_idx.long()
        s = self.scale.float()[:, idx]
        z = torch.full_like(s, self.symmetric_zero) if self.zero is None else self.zero.float()[:, idx]
        return (s * (self.codes().float() - z)).to(dtype)

    @property
    def storage_bits(self) -> int:
        params = self.scale.numel() * (16 + self.zero_bits)
        return self.packed.numel() * 8 + params + (32 * self.shape[1] if self.stores_g_idx else 0)


_OPTIONS = {"blocksize": 128, "percdamp": 0.01, "act_order": False, "static_groups": False,
            "symmetric": False, "reference_groups": False}


class GPTQ(Method):
    """GPTQ; options ``blocksize, percdamp, act_order, static_groups, symmetric, reference_groups``.

    Needs ``hessian``. The options are those of :func:`gptq_quantize`; ``symmetric`` picks the grid.
    """

    def quantize(self, w: torch.Tensor, bits: float, group_size: int | None = None,
                 hessian: torch.Tensor | None = None, seed: int = 0, **options: Any) -> GPTQWeight:
        """Quantize ``w`` with ``hessian = E[x xᵀ]`` (``[in, in]``); ``seed`` is unused (deterministic)."""
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for gptq; allowed: {sorted(_OPTIONS)}")
        opts = {**_OPTIONS, **options}
        self.check_args(w, bits, group_size)
        check_hessian(hessian, w.shape[1], required=True, method="gptq")
        grid = Grid(int(bits), symmetric=bool(opts["symmetric"]))
        result = gptq_quantize(w, hessian, grid, blocksize=opts["blocksize"], percdamp=opts["percdamp"],
                               group_size=group_size, act_order=bool(opts["act_order"]),
                               static_groups=bool(opts["static_groups"]),
                               reference_groups=bool(opts["reference_groups"]))
        return GPTQWeight(result, grid)


METHODS = {
    "gptq": GPTQ(name="gptq", supported_bits=(1, 2, 3, 4, 5, 6, 7, 8), needs_hessian=True,
                 description="GPTQ/OPTQ: column-wise rounding with Hessian-based error feedback",
                 defaults=dict(_OPTIONS)),
}
