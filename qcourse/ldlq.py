"""Hessian-aware rounding with error feedback: the loop shared by GPTQ, LDLQ and BlockLDLQ.

Rounding the columns of ``W`` one block at a time and pushing each block's rounding error onto the columns
not yet rounded minimises the proxy loss ``tr(ΔW H ΔWᵀ)`` far better than rounding every weight on its own
(``H = E[x xᵀ]`` of the layer's inputs). GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers", 2022, arXiv:2210.17323) does it column by column on a scalar grid;
QuIP (Chee et al., 2023, arXiv:2307.13304) showed this is LDLQ; QuIP# (Tseng et al., 2024,
arXiv:2402.04396) rounds ``d = 8`` columns at a time to a lattice codebook (BlockLDLQ). One loop serves
all of them: it takes any :class:`BlockQuantizer`.

**The seam.** A quantizer rounds a block of ``dim`` columns:

* ``dim``: the vector length (1 for a scalar grid, 8 for E8P, any ``d`` for a codebook);
* ``quantize(block) -> (codes, dequantized)``: ``block`` is ``[rows, dim]``; ``codes`` is ``[rows, c]``
  (any ``c`` ≥ 1 codes per row, any dtype) and ``dequantized`` ``[rows, dim]``, the rounded block;
* ``fit(w) -> BlockQuantizer``: a quantizer whose parameters (scales, zeros …) are fitted to the weights
  ``w`` (``[rows, k]``, ``k`` a multiple of ``dim``); the loop calls it per row-grid or at each group's
  first column with the group's current, error-updated weights. A quantizer without parameters (a fixed
  codebook) returns itself.

**The update.** With ``U`` the upper Cholesky factor of ``H⁻¹`` (``H⁻¹ = UᵀU``), after rounding the block
``b`` of columns the scaled error is ``E = (W_b − Q_b) U_bb⁻¹`` (``U_bb`` the ``d×d`` diagonal block) and
every column ``j`` from ``b`` on moves by ``−E U_{b,j}``. This is the block Optimal-Brain-Surgeon update
``δ = −(W_b − Q_b) [M_bb]⁻¹ M_{b,:}`` with ``M`` the inverse Hessian of the columns not yet removed: rows
of ``U`` from ``b`` on factor that ``M`` (``M = U_{≥b}ᵀ U_{≥b}``), so ``M_bb = U_bbᵀU_bb`` and
``M_{b,:} = U_bbᵀ U_{b,:}``. Column block ``b`` becomes exactly ``Q_b``; ``d = 1`` is GPTQ's
``err = (w − q)/U_ii``. The loss of a block is ``½‖E‖²_F`` (``½ Σ (w−q)²/U_ii²`` for ``d = 1``) and the losses
add up to ``½ tr(ΔW H_damped ΔWᵀ)``.

>>> import torch
>>> class Nearest:                                   # a toy 2-D codebook: nearest of four points
...     dim = 2
...     book = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]], dtype=torch.float64) / 4
...     def fit(self, w):
...         return self
...     def quantize(self, block):
...         idx = torch.cdist(block, self.book).argmin(1)
...         return idx[:, None], self.book[idx]
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(256, 8, generator=g, dtype=torch.float64)
>>> x = x @ torch.randn(8, 8, generator=g, dtype=torch.float64)     # correlated inputs
>>> H = x.T @ x / 256
>>> w = torch.randn(4, 8, generator=g, dtype=torch.float64) / 4
>>> res = ldlq(w, H, Nearest())
>>> res.codes.shape, res.w_q.shape                 # one code per row and 2-column block
(torch.Size([4, 4]), torch.Size([4, 8]))
>>> direct = Nearest().quantize(w.reshape(-1, 2))[1].reshape(4, 8)    # each block rounded on its own
>>> proxy_loss(w, res.w_q, H) < proxy_loss(w, direct, H)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = ["BlockQuantizer", "LDLQResult", "block_update", "ldlq", "prepare_hessian", "proxy_loss"]


@runtime_checkable
class BlockQuantizer(Protocol):
    """Rounds ``[rows, dim]`` blocks of weight columns; see the module docstring."""

    dim: int

    def fit(self, w: torch.Tensor) -> BlockQuantizer:
        """A quantizer fitted to the weights ``w`` (``[rows, k]``); ``self`` if it has no parameters."""
        ...

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes [rows, c], dequantized [rows, dim])`` for ``block`` (``[rows, dim]``)."""
        ...


def proxy_loss(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """``tr(ΔW H ΔWᵀ)`` with ``ΔW = w − w_hat``: the layer-output error GPTQ minimises (per calibration row).

    >>> import torch
    >>> proxy_loss(torch.ones(1, 2), torch.zeros(1, 2), torch.eye(2, dtype=torch.float64))
    2.0
    """
    d = (w - w_hat).to(torch.float64)
    return float(torch.einsum("ij,jk,ik->", d, hessian.to(torch.float64), d))


def block_update(w_block: torch.Tensor, i: int, q: torch.Tensor, u_rows: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """One error-feedback step for the columns ``i … i+d−1`` of ``w_block`` (``[rows, B]``), rounded to ``q``.

    ``u_rows`` are the block's rows ``i … i+d−1`` of the upper Cholesky factor ``U`` of ``H⁻¹``
    (``[d, B]``). The scaled error is ``E = (W_b − q) U_bb⁻¹`` and every column ``j ≥ i`` moves by
    ``−E U_{b,j}``: the rounded columns become exactly ``q``, earlier columns are untouched.

    Returns ``(updated block, E)``; the input is not modified.

    >>> import torch
    >>> w = torch.tensor([[1.0, 2.0, 3.0]])
    >>> new, err = block_update(w, 0, torch.tensor([[0.5]]), torch.tensor([[2.0, 1.0, -1.0]]))
    >>> new.tolist(), err.tolist()      # err = 0.5/2; columns 1, 2 move by −0.25·(1, −1)
    ([[0.5, 1.75, 3.25]], [[0.25]])
    """
    d = q.shape[1]
    u_bb = u_rows[:, i:i + d]
    delta = w_block[:, i:i + d] - q
    err = delta / u_bb[0, 0] if d == 1 else torch.linalg.solve_triangular(u_bb, delta, upper=True, left=False)
    out = w_block.clone()
    out[:, i:] -= err @ u_rows[:, i:]
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
class LDLQResult:
    """What :func:`ldlq` computed; ``w_q`` and ``g_idx`` in the original column order."""

    w_q: torch.Tensor  #: rounded weight ``[rows, cols]`` (computation dtype)
    codes: torch.Tensor  #: ``[rows, n_blocks·c]``: each block's codes; blocks in original order
    quantizers: list[Any]  #: the fitted quantizer of each group (one for per-row grids)
    g_idx: torch.Tensor  #: ``[cols]`` group (index into :attr:`quantizers`) of each input column
    perm: torch.Tensor | None  #: act-order permutation (processing order), or ``None``
    losses: torch.Tensor  #: ``[n_blocks]`` loss ``½‖E‖²`` of each block, original order

    @property
    def loss(self) -> float:
        return float(self.losses.sum())


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def _check_loop_args(w: torch.Tensor, hessian: torch.Tensor, quantizer: Any, blocksize: int,
                     percdamp: float, group_size: int | None, act_order: bool, static_groups: bool) -> int:
    """Validate :func:`ldlq`'s arguments; returns the quantizer's ``dim``."""
    if not isinstance(quantizer, BlockQuantizer):
        raise TypeError("quantizer must have dim, fit(w) and quantize(block) (a BlockQuantizer); "
                        f"got {quantizer!r}")
    d = quantizer.dim
    _check_positive_int(d, "quantizer.dim")
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or not w.is_floating_point():
        got = getattr(w, "shape", w)
        raise ValueError(f"w must be a 2-D floating-point tensor [rows, cols]; got {got!r}")
    cols = w.shape[1]
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (cols, cols):
        got = getattr(hessian, "shape", hessian)
        raise ValueError(f"hessian must be a [{cols}, {cols}] tensor; got {got!r}")
    _check_positive_int(blocksize, "blocksize")
    if not (isinstance(percdamp, int | float) and not isinstance(percdamp, bool) and percdamp >= 0):
        raise ValueError(f"percdamp must be a non-negative number; got {percdamp!r}")
    if group_size is not None:
        _check_positive_int(group_size, "group_size")
        if cols % group_size:
            raise ValueError(f"group_size must be None or a positive int dividing in_features={cols}; "
                             f"got {group_size!r}")
    if static_groups and group_size is None:
        raise ValueError("static_groups=True needs a group_size")
    for name, value in (("in_features", cols), ("blocksize", blocksize), ("group_size", group_size or d)):
        if value % d:
            raise ValueError(f"{name}={value} must be a multiple of the quantizer's dim={d}")
    if act_order and d != 1:
        raise ValueError(f"act_order reorders single columns; it needs a quantizer with dim=1, got dim={d}")
    return d


def _group_now(W: torch.Tensor, W1: torch.Tensor, Err1: torch.Tensor, U: torch.Tensor, i1: int, i: int,
               g: int) -> torch.Tensor:
    """The fully updated weights of the group starting at column ``i1 + i``, inside lazy block ``W1``.

    Columns inside the lazy block already hold every update (``W1``); columns beyond it still lack the
    block's pending updates ``Err1 @ U``, applied here to the group's part only. (``W[:, j:j+g]`` alone,
    what ``IST-DASLab/gptq`` uses, misses the updates from the block's earlier columns.)
    """
    j, i2 = i1 + i, i1 + W1.shape[1]
    inside = W1[:, i:min(i + g, i2 - i1)]
    beyond = W[:, i2:j + g] - Err1[:, :i] @ U[i1:i1 + i, i2:j + g]
    return torch.cat([inside, beyond], 1)


def ldlq(w: torch.Tensor, hessian: torch.Tensor, quantizer: BlockQuantizer, *, blocksize: int = 128,
         percdamp: float = 0.01, group_size: int | None = None, act_order: bool = False,
         static_groups: bool = False, dtype: torch.dtype = torch.float64,
         reference_groups: bool = False) -> LDLQResult:
    """Round ``w`` (``[rows, cols]``) block by block with error feedback through ``H⁻¹``'s Cholesky factor.

    Parameters
    ----------
    w
        Weight ``[rows, cols]``.
    hessian
        ``H = E[x xᵀ]`` ``[cols, cols]`` (any positive scale factor gives the same result).
    quantizer
        Any :class:`BlockQuantizer`; ``cols``, ``blocksize`` and ``group_size`` must be multiples of its
        ``dim``.
    blocksize
        Columns per lazy block (128 in GPTQ's reference): updates inside a lazy block are applied at once,
        the block's accumulated error to all later columns in one matrix product. Affects speed only.
    percdamp
        Damping ``H += percdamp·mean(diag H)·I``.
    group_size
        Columns per group, ``None`` for one fit per row: ``quantizer.fit`` on the weights as given.
    act_order
        Process columns in decreasing ``diag(H)`` (dead inputs count as ``H_ii = 1``); ``dim = 1`` only.
    static_groups
        Fit every group up front from the original weights (dead columns zeroed), in the original order.
    dtype
        Computation precision.
    reference_groups
        Fit a dynamic group on the block-stale weights, as ``IST-DASLab/gptq`` does; the default fits it on
        the fully updated weights, so the result does not depend on ``blocksize``.

    Returns
    -------
    LDLQResult
    """
    d = _check_loop_args(w, hessian, quantizer, blocksize, percdamp, group_size, act_order, static_groups)
    rows, cols = w.shape
    W = w.to(dtype)
    g = group_size if group_size is not None else cols
    fitted: list[Any] = [None] * (cols // g)
    if group_size is None:
        fitted[0] = quantizer.fit(W)  # the reference fixes per-row grids before dead columns are zeroed
    if static_groups:
        W0 = W.clone()
        W0[:, torch.diag(hessian) == 0] = 0
        fitted = [quantizer.fit(W0[:, k:k + g]) for k in range(0, cols, g)]
    perm = None
    if act_order:
        diag = torch.diag(hessian).clone()
        diag[diag == 0] = 1
        perm = torch.argsort(diag, descending=True, stable=True)
    W, U = prepare_hessian(hessian, W, percdamp, perm)
    order = perm if perm is not None else torch.arange(cols)
    # group (index into fitted) used at each processing position
    gpos = order // g if static_groups else torch.arange(cols) // g

    Q = torch.zeros_like(W)
    codes: list[torch.Tensor] = []
    losses = torch.zeros(cols // d, dtype=dtype)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(0, i2 - i1, d):
            j = i1 + i
            if group_size is not None and not static_groups and j % g == 0:
                current = W[:, j:j + g] if reference_groups else _group_now(W, W1, Err1, U, i1, i, g)
                fitted[j // g] = quantizer.fit(current)
            c, q = fitted[int(gpos[j])].quantize(W1[:, i:i + d])
            W1, Err1[:, i:i + d] = block_update(W1, i, q.to(dtype), U1[i:i + d])
            losses[j // d] = Err1[:, i:i + d].pow(2).sum() / 2
            Q[:, j:j + d] = q
            codes.append(c)
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    all_codes = torch.cat(codes, 1)
    g_idx = gpos.clone()
    if perm is not None:
        inv = torch.argsort(perm)
        Q, losses, g_idx = Q[:, inv], losses[inv], gpos[inv]
        all_codes = all_codes.reshape(rows, cols, -1)[:, inv].reshape(rows, -1)
    return LDLQResult(Q, all_codes, fitted, g_idx, perm, losses)
