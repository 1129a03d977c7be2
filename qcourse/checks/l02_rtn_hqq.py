"""Checks for lesson 02 (RTN, HQQ, GPTQ): group RTN, HQQ's shrinkage and zero step, GPTQ's column step; the
least-squares zero for fixed codes, the β* at which HQQ's shrinkage starts to act, and GPTQ's whole loop.

Each check runs the learner's function and the reference from :mod:`qcourse.methods` on seeded and
adversarial inputs (zeros, a constant group, one huge outlier, extreme magnitudes, odd shapes) and prints
what differs.

>>> import torch
>>> check_shrink_lp(reference_shrink_lp, verbose=False).status
'passed'
>>> wrong = lambda x, beta, p: torch.sign(x) * (x.abs() - x.abs() ** p / beta).clamp_min(0)
>>> check_shrink_lp(wrong, verbose=False).status          # exponent p instead of p − 1
'failed'
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from qcourse import hqq_shrinkage
from qcourse.checks._harness import Case, CheckResult, Mutant, run_check
from qcourse.methods import gptq, hqq, rtn

__all__ = [
    "check_quantize_groups", "check_shrink_lp", "check_zero_step", "check_gptq_column_step",
    "reference_quantize_groups", "reference_shrink_lp", "reference_zero_step", "reference_gptq_column_step",
    "check_lstsq_zero", "check_beta_star", "check_gptq_loop",
    "reference_lstsq_zero", "reference_beta_star", "reference_gptq_loop",
]


# ---- references --------------------------------------------------------------------------------------

def reference_quantize_groups(w: torch.Tensor, bits: int, group_size: int
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min–max RTN per group of ``group_size`` consecutive inputs (float32 scale).

    Returns ``(codes uint8 [out, in], scale [out, in/g], zero [out, in/g])`` with integer zeros, exactly
    :func:`qcourse.methods.rtn.quantize_groups` with ``scale_dtype=None``.

    >>> codes, scale, zero = reference_quantize_groups(torch.tensor([[-1.0, 0.0, 0.7, 2.0]]), 2, 4)
    >>> codes.tolist(), scale.tolist(), zero.tolist()
    ([[0, 1, 2, 3]], [[1.0]], [[1.0]])
    """
    return rtn.quantize_groups(w, bits, group_size)


def reference_shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """HQQ's generalized soft threshold ``sign(x)·max(|x| − |x|^(p−1)/β, 0)`` (:func:`hqq.shrink_lp`).

    >>> reference_shrink_lp(torch.tensor([-2.0, 0.05]), 10.0, 1.0).tolist()
    [-1.899999976158142, 0.0]
    """
    return hqq.shrink_lp(x, beta, p)


def reference_zero_step(w: torch.Tensor, w_q: torch.Tensor, w_e: torch.Tensor,
                        scale_inv: torch.Tensor) -> torch.Tensor:
    """HQQ's zero update ``mean over each group (row) of W_q − (W − W_e)·s'``, ``[G, 1]``.

    >>> reference_zero_step(torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 3.0]]), torch.zeros(1, 2),
    ...                     torch.tensor([[2.0]])).tolist()
    [[0.5]]
    """
    return hqq.zero_step(w, w_q, w_e, scale_inv)


def reference_gptq_column_step(w_block: torch.Tensor, i: int, u_row: torch.Tensor, scale: torch.Tensor,
                               zero: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPTQ inner step: round column ``i`` on its row's grid, then feed the error forward.

    ``q = scale·(clamp(round(w_i/scale) + zero, 0, 2^b − 1) − zero)`` with one ``scale``/``zero`` per row
    (``[rows]``); ``err = (w_i − q)/U_ii``; columns ``j ≥ i`` move by ``−err·U_ij``. Returns
    ``(updated block, err)``; the input is not modified.

    >>> w = torch.tensor([[0.4, 1.0]], dtype=torch.float64)
    >>> new, err = reference_gptq_column_step(w, 0, torch.tensor([2.0, 1.0], dtype=torch.float64),
    ...                                       torch.tensor([1.0], dtype=torch.float64),
    ...                                       torch.tensor([0.0], dtype=torch.float64), 2)
    >>> new.tolist(), err.tolist()          # q = 0, err = 0.4/2, column 1 moves by −0.2
    ([[0.0, 0.8]], [0.2])
    """
    s, z = scale[:, None], zero[:, None]
    codes = rtn.quantize_to_grid(w_block[:, i:i + 1], s, z, bits)
    q = rtn.dequantize_grid(codes, s, z)[:, 0]
    return gptq.column_update(w_block, i, q, u_row)


# ---- inputs ------------------------------------------------------------------------------------------

def _student_t(gen: torch.Generator, shape: tuple[int, ...], df: int = 3) -> torch.Tensor:
    """Heavy-tailed weights from a seeded generator: z / sqrt(chi²_df / df)."""
    chi = torch.randn((df, *shape), generator=gen).pow(2).mean(0)
    return torch.randn(shape, generator=gen) / chi.sqrt()


def _rtn_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    outlier = torch.randn(4, 64, generator=gen) * 0.02
    outlier[1, 5] = 3.0
    constant = torch.randn(3, 32, generator=gen)
    constant[0, :16] = 0.25       # one group holding a single positive value
    constant[1, 16:] = -1.5       # and one holding a single negative value
    constant[2, :16] = 0.0        # and an all-zero group
    one_signed = torch.rand(2, 16, generator=gen) + 1.0   # every weight in [1, 2): the zero clamps at 0
    # scale 1 in both groups, so w/scale and −min/scale are exact halves: round half to even gives codes
    # [0,0,2,2,3,1,2,0] (half up: [0,1,2,3,3,1,2,0]) and, in the second group, zero 0 (half up: 1)
    ties = torch.tensor([[0.0, 0.5, 1.5, 2.5, 3.0, 1.0, 2.0, 0.0, -0.5, 0.5, 1.5, 2.5, 2.5, 1.0, 2.0, -0.5]])
    return [
        Case("seeded Gaussian 8×128, 4 bits, group 64", (torch.randn(8, 128, generator=gen), 4, 64)),
        Case("exact ties: round half to even (torch.round), not floor(x + 0.5)", (ties, 2, 8)),
        Case("codes span 0 .. 2^bits − 1 (2^bits levels, 2^bits − 1 steps)",
             (torch.arange(16.0).reshape(2, 8), 3, 8)),
        Case("seeded Student-t 16×64, 2 bits, group 32", (_student_t(gen, (16, 64)) * 0.02, 2, 32)),
        Case("3 bits, group 16", (torch.randn(5, 48, generator=gen), 3, 16)),
        Case("all zeros (scale 1, zero 0)", (torch.zeros(2, 32), 2, 16)),
        Case("constant and all-zero groups (range widened to reach 0)", (constant, 3, 16)),
        Case("one huge outlier in a group", (outlier, 2, 64)),
        Case("a group with only positive weights", (one_signed, 2, 8)),
        Case("extreme magnitudes (1e-6 and 1e4 rows)",
             (torch.cat([torch.randn(1, 32, generator=gen) * 1e-6, torch.randn(1, 32, generator=gen) * 1e4]),
              4, 32)),
        Case("odd shape 7×45, group 9, 1 bit", (torch.randn(7, 45, generator=gen), 1, 9)),
        Case("8 bits, per-row group", (torch.randn(3, 20, generator=gen), 8, 20)),
    ]


def check_quantize_groups(student_fn: Callable[[torch.Tensor, int, int], tuple[torch.Tensor, ...]],
                          verbose: bool = True) -> CheckResult:
    """Check ``quantize_groups(w, bits, group_size) -> (codes, scale, zero)`` (asymmetric min–max RTN)."""
    return run_check(
        "quantize_groups", student_fn, reference_quantize_groups, _rtn_cases(), rtol=1e-6, atol=0,
        result_names=("codes", "scale", "zero"),
        hint="""
            per group of `group_size` consecutive inputs: scale = (max − min)/(2^bits − 1) (there are 2^bits
            levels, so 2^bits − 1 steps); zero = clamp(round(−min/scale), 0, 2^bits − 1); codes =
            clamp(round(w/scale) + zero, 0, 2^bits − 1) — torch.round (ties to even), not floor and not
            floor(x + 0.5); a group with max = min first widens its range to include 0, and an all-zero
            group uses scale = 1. Return codes as torch.uint8, scale and zero as float32, and leave w
            unchanged.
            """,
        verbose=verbose)


def _shrink_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 64, generator=gen) * 0.1
    spikes = torch.zeros(40)
    spikes[::7] = torch.tensor([5.0, -3.0, 0.01, -0.01, 1e3, -1e-4])
    return [
        Case("seeded errors, p = 0.7, β = 10 (the HQQ defaults)", (x, 10.0, 0.7)),
        Case("seeded errors, p = 1 (plain soft threshold)", (x, 10.0, 1.0)),
        Case("p = 0.5, β = 2.5", (torch.randn(3, 5, 7, generator=gen), 2.5, 0.5)),
        Case("large β (almost no shrinkage)", (x, 1e4, 0.7)),
        Case("zeros (prox of 0 is 0)", (torch.zeros(4, 4), 10.0, 0.7)),
        Case("sparse spikes and tiny values, negative signs", (spikes, 10.0, 0.7)),
        Case("extreme magnitudes", (torch.tensor([1e-12, -1e-6, 1e6, -1e12]), 10.0, 0.7)),
    ]


def check_shrink_lp(student_fn: Callable[[torch.Tensor, float, float], torch.Tensor],
                    verbose: bool = True) -> CheckResult:
    """Check ``shrink_lp(x, beta, p) -> tensor``, HQQ's generalized soft-thresholding."""
    return run_check(
        "shrink_lp", student_fn, reference_shrink_lp, _shrink_cases(), rtol=1e-5, atol=1e-7,
        hint="""
            sign(x)·max(|x| − |x|^(p − 1)/β, 0): the exponent is p − 1 (not p), applied to |x| (a negative
            base with a fractional power is NaN), divided by β, and clamped at 0 so no value changes sign;
            at x = 0 the result is 0. Return x's dtype (float32 here) and leave x unchanged.
            """,
        verbose=verbose)


def _zero_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(2)

    def case(rows: int, g: int, bits: int, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
        w = torch.randn(rows, g, generator=gen) * scale
        s, z = hqq.init_minmax(w, bits)
        w_q = torch.round(w * s + z).clamp(0, 2**bits - 1)
        w_e = hqq.shrink_lp(w - (w_q - z) / s, 10.0)
        return w, w_q, w_e, s

    w, w_q, w_e, s = case(4, 16, 2)
    return [
        Case("seeded groups 32×64, 3 bits", case(32, 64, 3)),
        Case("2 bits, group 16", (w, w_q, w_e, s)),
        Case("W_e = 0 (no shrinkage yet)", (w, w_q, torch.zeros_like(w), s)),
        Case("W_e = W − Ŵ exactly (zero unchanged)", (w, w_q, w - (w_q - 0.5) / s, s)),
        Case("one group of one weight", case(1, 1, 4)),
        Case("extreme magnitudes", case(3, 8, 4, scale=1e4)),
        Case("odd shape 7×9", case(7, 9, 2)),
    ]


def check_zero_step(student_fn: Callable[..., torch.Tensor], verbose: bool = True) -> CheckResult:
    """Check ``zero_step(w, w_q, w_e, scale_inv) -> [G, 1]`` on groups stored as rows."""
    return run_check(
        "zero_step", student_fn, reference_zero_step, _zero_cases(), rtol=1e-5, atol=1e-6,
        hint="""
            Ŵ = (W_q − z)/s' should equal W − W_e, so z = W_q − (W − W_e)·s' for every weight; the
            least-squares z is the mean of that over each group (each row, `dim=-1, keepdim=True`). Mind the
            sign of W_e and multiply by the inverse scale s'. Return float32, as the inputs are, and leave
            the inputs unchanged.
            """,
        verbose=verbose)


def _gptq_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(3)

    def block(rows: int, cols: int, i: int, bits: int, spread: float = 1.0) -> tuple:
        x = torch.randn(4 * cols, cols, generator=gen, dtype=torch.float64)
        x = x @ torch.randn(cols, cols, generator=gen, dtype=torch.float64)   # correlated inputs
        w = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * spread
        _, U = gptq.prepare_hessian(x.T @ x / len(x), w)
        scale, zero = rtn.grid_params(w, bits)
        return w, i, U[i].clone(), scale[:, 0], zero[:, 0], bits

    w, _, u, s, z, _ = block(6, 8, 2, 2)
    w_out = w.clone()
    w_out[:, 2] = w_out[:, 2] * 3 + 2.0        # column values beyond the grid's range: the clamp matters
    # power-of-two scales make w_i/scale exact halves: round half to even and floor(x + 0.5) disagree on
    # 0.5 → 0 (not 1), −1.5 → −2 (not −1) and 2.5 → 2 (not 3)
    t_scale = torch.tensor([1.0, 0.5, 0.25, 2.0, 1.0], dtype=torch.float64)
    t_zero = torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    w_tie = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    w_tie[:, 1] = t_scale * torch.tensor([0.5, -1.5, 2.5, 0.5, -0.5], dtype=torch.float64)
    _, _, u_tie, _, _, _ = block(5, 6, 1, 2)
    return [
        Case("seeded block 16×12, column 0, 3 bits", block(16, 12, 0, 3)),
        Case("exact ties: round half to even (torch.round), not floor(x + 0.5)",
             (w_tie, 1, u_tie, t_scale, t_zero, 2)),
        Case("column in the middle, 4 bits", block(8, 10, 4, 4)),
        Case("last column (nothing left to update)", block(5, 6, 5, 2)),
        Case("values beyond the grid (clamp)", (w_out, 2, u, s, z, 2)),
        Case("all-zero block", (torch.zeros(3, 8, dtype=torch.float64), 3, u,
                                torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64), 2)),
        Case("one row, 1 bit", block(1, 7, 3, 1)),
        Case("extreme magnitudes", block(4, 9, 1, 3, spread=1e5)),
    ]


def check_gptq_column_step(student_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                           verbose: bool = True) -> CheckResult:
    """Check ``gptq_column_step(w_block, i, u_row, scale, zero, bits) -> (updated block, err)``."""
    return run_check(
        "gptq_column_step", student_fn, reference_gptq_column_step, _gptq_cases(), rtol=1e-9, atol=1e-9,
        result_names=("block", "err"),
        hint="""
            q = scale·(clamp(round(w_i/scale) + zero, 0, 2^bits − 1) − zero) row by row, torch.round (ties
            to even); err = (w_i − q)/U_ii (divide by the diagonal entry u_row[i]); then every column j ≥ i
            — column i included, which becomes exactly q — moves by −err·U_ij. Compute in float64 throughout
            (the inputs are float64; float32 cannot meet the check's rtol 1e-9), work on a copy
            (w_block.clone()) and return (block, err).
            """,
        verbose=verbose)


# ---- the exercises that test understanding: least-squares zero, beta*, GPTQ's whole loop ---------------

def reference_lstsq_zero(w: torch.Tensor, codes: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """``argmin_z Σ (w − (codes − z)/s')²`` per group (row): ``mean(codes − w·s')``, ``[G, 1]`` float32.

    >>> reference_lstsq_zero(torch.tensor([[0.5, 1.0]]), torch.tensor([[1.0, 3.0]]), torch.tensor([[2.0]]))
    tensor([[0.5000]])
    """
    return hqq_shrinkage.lstsq_zero(w, codes, scale_inv)


def _lstsq_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(4)

    def case(rows: int, g: int, bits: int, scale: float = 1.0) -> tuple[torch.Tensor, ...]:
        w = torch.randn(rows, g, generator=gen) * scale
        s, z = hqq.init_minmax(w, bits)
        return w, torch.round(w * s + z).clamp(0, 2**bits - 1), s

    w, q, s = case(6, 32, 2)
    return [
        Case("seeded groups 32×64, 3 bits", case(32, 64, 3)),
        Case("2 bits, group 32", (w, q, s)),
        Case("codes shifted by one level (the zero moves by one)", (w, q + 1, s)),
        Case("heavy-tailed groups", (_student_t(gen, (8, 64)) * 0.02,) + case(8, 64, 2)[1:]),
        Case("one group of one weight", case(1, 1, 4)),
        Case("extreme magnitudes", case(3, 8, 4, scale=1e4)),
        Case("odd shape 7×9", case(7, 9, 2)),
    ]


def check_lstsq_zero(student_fn: Callable[..., torch.Tensor], verbose: bool = True) -> CheckResult:
    """Check ``lstsq_zero(w, codes, scale_inv) -> [G, 1]``, the least-squares zero for fixed codes."""
    return run_check(
        "lstsq_zero", student_fn, reference_lstsq_zero, _lstsq_cases(), rtol=1e-5, atol=1e-5,
        hint="""
            Minimise Σ_i (w_i − (q_i − z)/s')² over z: the derivative is (2/s')·Σ_i (w_i − (q_i − z)/s'),
            zero when z = mean_i(q_i − w_i·s'). One zero per group (row): mean over the last dimension with
            keepdim=True. Multiply by the inverse scale s', mind the sign, return float32 and leave the
            inputs unchanged.
            """,
        verbose=verbose)


def reference_beta_star(w: torch.Tensor, bits: int, group_size: int, p: float) -> float:
    """The β above which HQQ's first shrinkage step keeps some error on ``w``, groups of ``group_size``.

    HQQ's min–max start per group (``s' = (2^b − 1)/(max − min)``, float ``z = −min·s'``), rounding errors
    ``e = w − (clamp(round(w·s' + z), 0, 2^b − 1) − z)/s'``, and ``β* = max|e|^(−(2 − p))``.

    >>> round(reference_beta_star(torch.tensor([[0.0, 0.4, 1.0, 3.0]]), 2, 4, 1.0), 6)   # largest error 0.4
    2.5
    """
    groups = w.float().reshape(-1, group_size)
    return hqq_shrinkage.beta_star(groups, bits, p)


def _beta_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(5)
    emb = torch.randn(16, 128, generator=gen) * 0.05
    return [
        Case("seeded layer 16×128 (weights ~0.05), 2 bits, group 64, p = 0.7", (emb, 2, 64, 0.7)),
        Case("same layer, 3 bits", (emb, 3, 64, 0.7)),
        Case("same layer, p = 1 (soft threshold)", (emb, 2, 64, 1.0)),
        Case("heavy-tailed layer (an outlier group), 2 bits, group 32",
             (_student_t(gen, (8, 64)), 2, 32, 0.7)),
        Case("unit-size weights, 4 bits, group 16, p = 0.5", (torch.randn(4, 64, generator=gen), 4, 16, 0.5)),
        Case("one group", (torch.tensor([[0.0, 0.4, 1.0, 3.0]]), 2, 4, 0.7)),
    ]


def check_beta_star(student_fn: Callable[..., float], verbose: bool = True) -> CheckResult:
    """Check ``beta_star(w, bits, group_size, p) -> float``."""
    return run_check(
        "beta_star", student_fn, reference_beta_star, _beta_cases(), rtol=1e-4, atol=0.0,
        hint="""
            shrink_p(x) ≠ 0 exactly when |x|^(2 − p) > 1/β, i.e. |x| > β^(−1/(2 − p)). So the first step keeps
            some error iff β > max|e|^(−(2 − p)), with e the rounding error at HQQ's start: per group of
            group_size consecutive weights, s' = (2^bits − 1)/(max − min), a float zero z = −min·s' (not
            rounded), codes clamp(round(w·s' + z), 0, 2^bits − 1), e = w − (codes − z)/s'. Use the largest
            |e| over the whole layer, and return a Python float.
            """,
        verbose=verbose)


def reference_gptq_loop(w: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                        bits: int) -> torch.Tensor:
    """GPTQ's loop in the naive Optimal-Brain-Surgeon form, one column at a time (float64).

    Keeps ``Hinv``, the inverse Hessian over the columns not yet quantized: round column ``i`` on each row's
    grid, ``err = (w_i − q_i)/Hinv_ii``, move every later column ``j`` by ``−err·Hinv_ij``, then remove
    column ``i`` from ``Hinv`` (``Hinv ← Hinv − Hinv_{:,i} Hinv_{i,:}/Hinv_ii``). Returns the quantized
    (dequantized) weights.

    >>> H = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> one = torch.ones(1, dtype=torch.float64)
    >>> reference_gptq_loop(torch.tensor([[0.4, 0.0]], dtype=torch.float64), H, one, 0 * one, 2).tolist()
    [[0.0, 0.0]]
    """
    w = w.clone().to(torch.float64)
    hinv = torch.linalg.inv(hessian.to(torch.float64))
    s, z = scale[:, None].to(torch.float64), zero[:, None].to(torch.float64)
    q = torch.empty_like(w)
    for i in range(w.shape[1]):
        q[:, i:i + 1] = rtn.dequantize_grid(rtn.quantize_to_grid(w[:, i:i + 1], s, z, bits), s, z)
        err = (w[:, i] - q[:, i]) / hinv[i, i]
        w[:, i:] -= err[:, None] * hinv[None, i, i:]
        hinv = hinv - torch.outer(hinv[:, i], hinv[i, :]) / hinv[i, i]
    return q


def _gptq_loop_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(6)

    def layer(rows: int, cols: int, bits: int, corr: float = 1.0, spread: float = 1.0) -> tuple:
        x = torch.randn(8 * cols, cols, generator=gen, dtype=torch.float64)
        mix = torch.eye(cols, dtype=torch.float64) + corr * torch.randn(cols, cols, generator=gen,
                                                                        dtype=torch.float64)
        x = x @ mix                                                       # correlated inputs
        h = x.T @ x / len(x)
        h += 0.01 * h.diagonal().mean() * torch.eye(cols, dtype=torch.float64)   # damped, as GPTQ does
        w = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * spread
        scale, zero = rtn.grid_params(w, bits)
        return w, h, scale[:, 0], zero[:, 0], bits

    return [
        Case("seeded layer 8×12, 3 bits, correlated inputs", layer(8, 12, 3)),
        Case("strongly correlated inputs, 2 bits", layer(6, 10, 2, corr=3.0)),
        Case("uncorrelated inputs (H diagonal: GPTQ = RTN)", (lambda t: (t[0], torch.diag(t[1].diagonal()),
                                                                        *t[2:]))(layer(5, 8, 2))),
        Case("one column", layer(4, 1, 3)),
        Case("4 bits, 16 columns", layer(3, 16, 4)),
        Case("extreme magnitudes", layer(4, 9, 3, spread=1e4)),
    ]


def check_gptq_loop(student_fn: Callable[..., torch.Tensor], verbose: bool = True) -> CheckResult:
    """Check ``gptq_loop(w, hessian, scale, zero, bits) -> quantized w`` against the naive OBS form."""
    return run_check(
        "gptq_loop", student_fn, reference_gptq_loop, _gptq_loop_cases(), rtol=1e-7, atol=1e-9,
        hint="""
            Take U = the upper Cholesky factor of H⁻¹ (torch.linalg.cholesky(torch.linalg.inv(H)).T, or
            torch.linalg.cholesky(..., upper=True)). For i = 0, 1, ...: q_i = the row-wise grid value of the
            current column i (torch.round, clamp to 0 .. 2^bits − 1); err = (w_i − q_i)/U_ii; every column
            j ≥ i moves by −err·U_ij. Row i of U already holds the inverse over the columns not yet quantized
            (that is what the Cholesky factor buys). Work on a float64 copy of w; return the q columns.
            """,
        verbose=verbose)


# ---- mutants: wrong implementations every check must reject (see tests/test_checks_mutations.py) ----------

def _half_up(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


def _rtn_mutant(levels_off: int = 0, rnd: Callable[[torch.Tensor], torch.Tensor] = torch.round,
                zero_sign: int = 1, clamp: bool = True, round_zero: bool = True, widen: bool = True,
                unit_scale: bool = True, codes_dtype: torch.dtype = torch.uint8,
                dtype: torch.dtype = torch.float32, write_back: bool = False, todo_bits: int | None = None
                ) -> Callable[..., tuple[torch.Tensor, ...]]:
    """A learner-style group RTN; each keyword switches on one classic mistake."""
    def quantize_groups(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, ...]:
        if bits == todo_bits:
            raise NotImplementedError(f"{bits} bits")
        g = w.to(dtype).reshape(-1, group_size)
        maxq = 2**bits - 1 + levels_off
        lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
        if widen:
            flat = hi == lo
            lo, hi = torch.where(flat, lo.clamp(max=0), lo), torch.where(flat, hi.clamp(min=0), hi)
        scale = (hi - lo) / maxq
        if unit_scale:
            scale = torch.where(hi == lo, torch.ones_like(scale), scale)
        zero = rnd(-zero_sign * lo / scale) if round_zero else -lo / scale
        codes = rnd(g / scale) + zero
        if clamp:
            zero = zero.clamp(0, maxq)
            codes = (rnd(g / scale) + zero).clamp(0, maxq)
        if write_back:  # "saves memory": stores the rebuilt weights in w
            w.copy_((scale * (codes - zero)).reshape(w.shape))
        return codes.to(codes_dtype).reshape(w.shape), scale.reshape(len(w), -1), zero.reshape(len(w), -1)
    return quantize_groups


def _shrink_todo(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    if p != 0.7:
        raise NotImplementedError("only the default p")
    return hqq.shrink_lp(x, beta, p)


def _shrink_in_place(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    sign = torch.sign(x)
    a = x.abs_()
    return sign * (a - a.pow(p - 1) / beta).clamp_min(0.0)


def _zero_in_place(w: torch.Tensor, w_q: torch.Tensor, w_e: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (w_q - w.sub_(w_e) * s).mean(1, keepdim=True)


def _zero_todo(w: torch.Tensor, w_q: torch.Tensor, w_e: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    if w.shape[1] == 1:
        raise NotImplementedError("groups of one")
    return (w_q - (w - w_e) * s).mean(1, keepdim=True)


def _gptq_mutant(rnd: Callable[[torch.Tensor], torch.Tensor] = torch.round, divide: bool = True,
                 sign: int = 1, include_i: bool = True, clamp: bool = True, levels_off: int = 0,
                 zero_sign: int = 1, copy: bool = True, dtype: torch.dtype = torch.float64,
                 back_to: torch.dtype | None = None, todo_last: bool = False
                 ) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """A learner-style GPTQ column step; each keyword switches on one classic mistake."""
    def gptq_column_step(w_block: torch.Tensor, i: int, u_row: torch.Tensor, scale: torch.Tensor,
                         zero: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        if todo_last and i == w_block.shape[1] - 1:
            raise NotImplementedError("last column")
        w, u, s, z = (t.to(dtype) for t in (w_block, u_row, scale, zero))
        c = rnd(w[:, i] / s) + zero_sign * z
        if clamp:
            c = c.clamp(0, 2**bits - 1 + levels_off)
        q = s * (c - zero_sign * z)
        err = (w[:, i] - q) / (u[i] if divide else 1.0)
        out = w.clone() if copy else w
        start = i if include_i else i + 1
        out[:, start:] -= sign * err[:, None] * u[None, start:]
        if back_to is not None:
            out, err = out.to(back_to), err.to(back_to)
        return out, err
    return gptq_column_step


def _lstsq_in_place(w: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (q - w.mul_(s)).mean(1, keepdim=True)


def _lstsq_todo(w: torch.Tensor, q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    if w.shape[1] == 1:
        raise NotImplementedError("groups of one")
    return (q - w * s).mean(1, keepdim=True)


def _beta_mutant(stat: str = "max", power: Callable[[float], float] = lambda p: -(2 - p),
                 round_zero: bool = False, half_step: bool = False, todo_one_group: bool = False
                 ) -> Callable[..., float]:
    """A learner-style beta_star; each keyword switches on one classic mistake."""
    def beta_star(w: torch.Tensor, bits: int, group_size: int, p: float) -> float:
        g = w.float().reshape(-1, group_size)
        if todo_one_group and g.shape[0] == 1:
            raise NotImplementedError("one group")
        maxq = 2**bits - 1
        lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
        s = maxq / (hi - lo)
        z = -lo * s
        if round_zero:
            z = torch.round(z)
        e = (g - (torch.round(g * s + z).clamp(0, maxq) - z) / s).abs()
        if half_step:
            e = 0.5 / s
        m = {"max": e.max(), "mean": e.mean(), "min-of-group-max": e.amax(1).min()}[stat]
        return float(m) ** power(p)
    return beta_star


def _gptq_loop_mutant(factor: str = "chol-inv", feedback: bool = True, divide: bool = True,
                      order: str = "forward", dtype: torch.dtype = torch.float64, copy: bool = True,
                      todo_one_column: bool = False) -> Callable[..., torch.Tensor]:
    """A learner-style GPTQ loop; each keyword switches on one classic mistake."""
    def gptq_loop(w: torch.Tensor, hessian: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                  bits: int) -> torch.Tensor:
        if todo_one_column and w.shape[1] == 1:
            raise NotImplementedError("one column")
        h = hessian.to(dtype)
        if factor == "chol-inv":
            u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
        elif factor == "chol-h":
            u = torch.linalg.cholesky(h, upper=True)
        elif factor == "lower":
            u = torch.linalg.cholesky(torch.linalg.inv(h))
        else:  # "full-inverse": the OBS update without removing quantized columns
            u = torch.linalg.inv(h)
            u = u / u.diagonal().sqrt()[:, None]
        w2 = w.clone().to(dtype) if copy else w
        s, z = scale.to(dtype), zero.to(dtype)
        q = torch.empty_like(w2)
        cols = range(w2.shape[1]) if order == "forward" else reversed(range(w2.shape[1]))
        for i in cols:
            q[:, i] = s * ((torch.round(w2[:, i] / s) + z).clamp(0, 2**bits - 1) - z)
            if feedback:
                err = (w2[:, i] - q[:, i]) / (u[i, i] if divide else 1.0)
                w2[:, i:] -= err[:, None] * u[None, i, i:]
        return q
    return gptq_loop


#: check name -> wrong implementations it must reject, each with a fragment of the failure report.
MUTANTS: dict[str, list[Mutant]] = {
    "check_quantize_groups": [
        Mutant("levels+1", _rtn_mutant(levels_off=1), "2^bits levels"),
        Mutant("levels-1", _rtn_mutant(levels_off=-1), "2^bits levels"),
        Mutant("floor", _rtn_mutant(rnd=torch.floor), "codes: max |diff|"),
        Mutant("half-up", _rtn_mutant(rnd=_half_up), "exact ties"),
        Mutant("zero-sign", _rtn_mutant(zero_sign=-1), "zero: max |diff|"),
        Mutant("no-clamp", _rtn_mutant(clamp=False), "only positive weights"),
        Mutant("float-zero", _rtn_mutant(round_zero=False), "zero: max |diff|"),
        Mutant("no-widening", _rtn_mutant(widen=False), "constant and all-zero groups"),
        Mutant("scale-0-NaN", _rtn_mutant(unit_scale=False), "NaN where a number was expected"),
        Mutant("float32-codes", _rtn_mutant(codes_dtype=torch.float32),
               "codes: dtype torch.float32 where torch.uint8 is required"),
        Mutant("int64-codes", _rtn_mutant(codes_dtype=torch.int64),
               "codes: dtype torch.int64 where torch.uint8 is required"),
        Mutant("float64-scale", _rtn_mutant(dtype=torch.float64),
               "scale: dtype torch.float64 where torch.float32 is required"),
        Mutant("in-place", _rtn_mutant(write_back=True), "modified its input w"),
        Mutant("partial", _rtn_mutant(todo_bits=1), "NotImplementedError"),
    ],
    "check_shrink_lp": [
        Mutant("exponent-p", lambda x, b, p: torch.sign(x) * (x.abs() - x.abs().pow(p) / b).clamp_min(0),
               "(the HQQ defaults): max |diff|"),
        Mutant("no-clamp", lambda x, b, p: torch.sign(x) * (x.abs() - x.abs().pow(p - 1) / b),
               "zeros (prox of 0 is 0)"),
        Mutant("times-beta", lambda x, b, p: torch.sign(x) * (x.abs() - x.abs().pow(p - 1) * b).clamp_min(0),
               "large β"),
        Mutant("soft-threshold-only", lambda x, b, p: torch.sign(x) * (x.abs() - 1 / b).clamp_min(0),
               "p = 0.5"),
        Mutant("no-abs", lambda x, b, p: (x - x.pow(p - 1) / b).clamp_min(0),
               "NaN where a number was expected"),
        Mutant("nan-at-zero", lambda x, b, p: torch.sign(x) * (x.abs() - x.abs() / x.abs().pow(2 - p) / b
                                                               ).clamp_min(0),
               "zeros (prox of 0 is 0): NaN where a number was expected"),
        Mutant("in-place", _shrink_in_place, "modified its input x"),
        Mutant("float64", lambda x, b, p: hqq.shrink_lp(x.double(), b, p),
               "dtype torch.float64 where torch.float32 is required"),
        Mutant("partial", _shrink_todo, "NotImplementedError"),
    ],
    "check_zero_step": [
        Mutant("we-sign", lambda w, q, e, s: (q - (w + e) * s).mean(1, keepdim=True), "2 bits, group 16"),
        Mutant("no-we", lambda w, q, e, s: (q - w * s).mean(1, keepdim=True), "seeded groups"),
        Mutant("divide-scale", lambda w, q, e, s: (q - (w - e) / s).mean(1, keepdim=True), "W_e = 0"),
        Mutant("zero-sign", lambda w, q, e, s: ((w - e) * s - q).mean(1, keepdim=True), "W_e = 0"),
        Mutant("wrong-axis", lambda w, q, e, s: (q - (w - e) * s).mean(0, keepdim=True).T[: len(w)],
               "shape"),
        Mutant("no-keepdim", lambda w, q, e, s: (q - (w - e) * s).mean(1), "shape"),
        Mutant("in-place", _zero_in_place, "modified its input w"),
        Mutant("float64", lambda w, q, e, s: (q.double() - (w.double() - e) * s).mean(1, keepdim=True),
               "dtype torch.float64 where torch.float32 is required"),
        Mutant("partial", _zero_todo, "NotImplementedError"),
    ],
    "check_gptq_column_step": [
        Mutant("no-divide", _gptq_mutant(divide=False), "err: max |diff|"),
        Mutant("wrong-sign", _gptq_mutant(sign=-1), "block: max |diff|"),
        Mutant("skip-column-i", _gptq_mutant(include_i=False), "block: max |diff|"),
        Mutant("floor", _gptq_mutant(rnd=torch.floor), "seeded block"),
        Mutant("half-up", _gptq_mutant(rnd=_half_up), "exact ties"),
        Mutant("no-clamp", _gptq_mutant(clamp=False), "values beyond the grid (clamp)"),
        Mutant("levels+1", _gptq_mutant(levels_off=1), "values beyond the grid (clamp)"),
        Mutant("zero-sign", _gptq_mutant(zero_sign=-1), "seeded block"),
        Mutant("in-place", _gptq_mutant(copy=False), "modified its input w_block"),
        Mutant("float32", _gptq_mutant(dtype=torch.float32),
               "dtype torch.float32 where torch.float64 is required"),
        Mutant("float32-inside", _gptq_mutant(dtype=torch.float32, back_to=torch.float64),
               "compute in float64"),
        Mutant("partial", _gptq_mutant(todo_last=True), "NotImplementedError"),
    ],
    "check_lstsq_zero": [
        Mutant("zero-sign", lambda w, q, s: (w * s - q).mean(1, keepdim=True), "seeded groups"),
        Mutant("divide-scale", lambda w, q, s: (q - w / s).mean(1, keepdim=True), "seeded groups"),
        Mutant("sum", lambda w, q, s: (q - w * s).sum(1, keepdim=True), "seeded groups"),
        Mutant("median", lambda w, q, s: (q - w * s).median(1, keepdim=True).values, "seeded groups"),
        Mutant("integer-zero", lambda w, q, s: (q - w * s).mean(1, keepdim=True).round(), "seeded groups"),
        Mutant("no-keepdim", lambda w, q, s: (q - w * s).mean(1), "shape"),
        Mutant("in-place", _lstsq_in_place, "modified its input w"),
        Mutant("float64", lambda w, q, s: (q.double() - w.double() * s).mean(1, keepdim=True),
               "dtype torch.float64"),
        Mutant("partial", _lstsq_todo, "NotImplementedError"),
    ],
    "check_beta_star": [
        Mutant("threshold", _beta_mutant(power=lambda p: 1.0), "seeded layer"),
        Mutant("exponent-1/(2-p)", _beta_mutant(power=lambda p: -1 / (2 - p)), "seeded layer"),
        Mutant("exponent-p", _beta_mutant(power=lambda p: -p), "seeded layer"),
        Mutant("positive-exponent", _beta_mutant(power=lambda p: 2 - p), "seeded layer"),
        Mutant("mean-error", _beta_mutant(stat="mean"), "seeded layer"),
        Mutant("smallest-group", _beta_mutant(stat="min-of-group-max"), "seeded layer"),
        Mutant("integer-zero", _beta_mutant(round_zero=True), "seeded layer"),
        Mutant("half-step-bound", _beta_mutant(half_step=True), "seeded layer"),
        Mutant("partial", _beta_mutant(todo_one_group=True), "NotImplementedError"),
    ],
    "check_gptq_loop": [
        Mutant("no-feedback (RTN)", _gptq_loop_mutant(feedback=False), "seeded layer"),
        Mutant("cholesky-of-H", _gptq_loop_mutant(factor="chol-h"), "seeded layer"),
        Mutant("lower-factor", _gptq_loop_mutant(factor="lower"), "seeded layer"),
        Mutant("no-downdate", _gptq_loop_mutant(factor="full-inverse"), "seeded layer"),
        Mutant("no-divide", _gptq_loop_mutant(divide=False), "seeded layer"),
        Mutant("reverse-order", _gptq_loop_mutant(order="reverse"), "seeded layer"),
        Mutant("float32", _gptq_loop_mutant(dtype=torch.float32), "dtype torch.float32"),
        Mutant("in-place", _gptq_loop_mutant(copy=False), "modified its input w"),
        Mutant("partial", _gptq_loop_mutant(todo_one_column=True), "NotImplementedError"),
    ],
}
