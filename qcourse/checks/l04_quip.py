"""Checks for lesson 04 (QuIP#): the FWHT butterfly, E8 nearest point, one BlockLDLQ block step.

Each check runs the learner's function and the reference (:mod:`qcourse.hadamard`, :mod:`qcourse.lattice`,
:mod:`qcourse.ldlq`) on seeded and adversarial inputs and prints what differs.

>>> import torch
>>> check_fwht(reference_fwht, verbose=False).status
'passed'
>>> check_fwht(lambda x: reference_fwht(x) * x.shape[-1] ** 0.5, verbose=False).status   # unnormalised
'failed'
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from qcourse import hadamard, lattice
from qcourse.checks._harness import Case, CheckResult, Mutant, run_check
from qcourse.ldlq import block_update, prepare_hessian
from qcourse.methods.quip import E8PQuantizer, HalfIntegerQuantizer

__all__ = ["check_fwht", "check_nearest_e8", "check_ldlq_block_step", "reference_fwht",
           "reference_nearest_e8", "reference_ldlq_block_step"]


# ---- references --------------------------------------------------------------------------------------

def reference_fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh–Hadamard transform along the last axis (a power of two), Sylvester order.

    >>> reference_fwht(torch.tensor([1.0, 0.0, 0.0, 0.0])).tolist()
    [0.5, 0.5, 0.5, 0.5]
    """
    return hadamard.fwht_butterfly(x)


def reference_nearest_e8(x: torch.Tensor) -> torch.Tensor:
    """Nearest E8 point to each row of ``x`` (``[..., 8]``): the closer of the D8 and D8 + ½ roundings.

    >>> reference_nearest_e8(torch.tensor([0.6, 0.45, 0, 0, 0, 0, 0, 0])).tolist()
    [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    return lattice.nearest_e8(x)


def reference_ldlq_block_step(w_block: torch.Tensor, i: int, u_rows: torch.Tensor, quantizer: object
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """One BlockLDLQ step through the quantizer seam: round columns ``i … i+d−1`` with ``quantizer``, then
    feed the error forward.

    ``q = quantizer.quantize(w_block[:, i:i+d])[1]``; ``E = (W_b − q) U_bb⁻¹`` with
    ``U_bb = u_rows[:, i:i+d]`` (upper triangular: a triangular solve from the right); every column from
    ``i`` on moves by ``−E · u_rows[:, i:]``. Returns ``(updated block, E)``; the input is not modified.

    >>> w = torch.tensor([[0.75, 1.0]], dtype=torch.float64)
    >>> u = torch.tensor([[2.0, 1.0]], dtype=torch.float64)
    >>> new, err = reference_ldlq_block_step(w, 0, u, HalfIntegerQuantizer(2))
    >>> new.tolist(), err.tolist()          # q = 0.5, E = 0.25/2, column 1 moves by −0.125
    ([[0.5, 0.875]], [[0.125]])
    """
    d = quantizer.dim  # type: ignore[attr-defined]
    q = quantizer.quantize(w_block[:, i:i + d])[1].to(w_block.dtype)  # type: ignore[attr-defined]
    return block_update(w_block, i, q, u_rows)


# ---- FWHT ---------------------------------------------------------------------------------------------

def _fwht_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    impulse = torch.zeros(2, 16)
    impulse[0, 0] = 1.0
    impulse[1, 5] = 1.0
    return [
        Case("seeded batch 4×16 (float32)", (torch.randn(4, 16, generator=gen),)),
        Case("one vector of length 8 (1-D input)", (torch.arange(8.0),)),
        Case("leading dimensions 2×3, length 32", (torch.randn(2, 3, 32, generator=gen),)),
        Case("length 1 (the transform is the identity)", (torch.randn(3, 1, generator=gen),)),
        Case("length 2: (a + b, a − b)/√2", (torch.tensor([[3.0, 1.0]]),)),
        Case("impulses: every output is ±1/√n", (impulse,)),
        Case("all zeros", (torch.zeros(2, 8),)),
        Case("float64 input stays float64", (torch.randn(5, 64, generator=gen, dtype=torch.float64),)),
        Case("extreme magnitudes (float64)",
             (torch.stack([torch.randn(16, generator=gen, dtype=torch.float64) * 1e-20,
                           torch.randn(16, generator=gen, dtype=torch.float64) * 1e20]),)),
        Case("length 1024", (torch.randn(2, 1024, generator=gen),)),
    ]


def check_fwht(student_fn: Callable[[torch.Tensor], torch.Tensor], verbose: bool = True) -> CheckResult:
    """Check ``fwht(x) -> tensor``: the orthonormal butterfly along the last axis (length a power of two)."""
    return run_check(
        "fwht", student_fn, reference_fwht, _fwht_cases(), rtol=1e-5, atol=1e-6,
        hint="""
            work on a copy of x reshaped to [rows, n]; for h = 1, 2, 4, … < n, view it as
            [rows, n/(2h), 2, h] and replace the pair (a, b) = (x[..., 0, :], x[..., 1, :]) by (a + b, a − b)
            — in that order, for all log2(n) stages — then multiply by 1/√n once (not 1/n) and reshape back
            to x's shape. Keep x's dtype and leave x unchanged.
            """,
        verbose=verbose)


# ---- E8 nearest point -----------------------------------------------------------------------------------

def _e8_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    ints = torch.randint(-3, 4, (50, 8), generator=gen).double()
    ints[:, 0] += ints.sum(1) % 2                                      # even sum: D8 points
    near_d8 = ints + 0.2 * torch.rand(50, 8, generator=gen, dtype=torch.float64) - 0.1
    near_half = ints + 0.5 + 0.2 * torch.rand(50, 8, generator=gen, dtype=torch.float64) - 0.1
    parity = torch.tensor([[0.6, 0.45, 0, 0, 0, 0, 0, 0], [0.6, 0.1, 0, 0, 0, 0, 0, 0],
                           [1.4, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    return [
        Case("seeded Gaussian 200×8 (×2)", (torch.randn(200, 8, generator=gen, dtype=torch.float64) * 2,)),
        Case("near D8 points (integer coset wins)", (near_d8,)),
        Case("near D8 + ½ points (half-integer coset wins)", (near_half,)),
        Case("odd rounded sum: re-round the coordinate furthest from an integer, toward x", (parity,)),
        Case("all zeros", (torch.zeros(3, 8, dtype=torch.float64),)),
        Case("large magnitudes (×1000)", (torch.randn(20, 8, generator=gen, dtype=torch.float64) * 1000,)),
        Case("float32 input stays float32", (torch.randn(30, 8, generator=gen) * 3,)),
        Case("one vector, shape (8,)", (torch.tensor([0.3, -1.2, 2.6, 0.1, -0.4, 0.9, 1.5, -2.2]),)),
    ]


def check_nearest_e8(student_fn: Callable[[torch.Tensor], torch.Tensor], verbose: bool = True) -> CheckResult:
    """Check ``nearest_e8(x) -> tensor``: the nearest point of E8 = D8 ∪ (D8 + ½) to each row."""
    return run_check(
        "nearest_e8", student_fn, reference_nearest_e8, _e8_cases(), rtol=0, atol=1e-9,
        hint="""
            D8 rounding: f = round(x); if sum(f) is odd, take the coordinate k with the largest |x − f| and
            move f_k one step toward x_k (+1 if x_k > f_k, else −1). Then a = D8(x), b = D8(x − ½) + ½, and
            return whichever of a, b is closer to x (per row, squared distance over the last axis). Keep
            x's shape and dtype and leave x unchanged.
            """,
        verbose=verbose)


# ---- BlockLDLQ step -------------------------------------------------------------------------------------

def _ldlq_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(2)

    def block(rows: int, cols: int, i: int, d: int, spread: float = 1.0) -> tuple[torch.Tensor, ...]:
        x = torch.randn(4 * cols, cols, generator=gen, dtype=torch.float64)
        x = x @ torch.randn(cols, cols, generator=gen, dtype=torch.float64) / math.sqrt(cols)
        w = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * spread
        _, U = prepare_hessian(x.T @ x / len(x), w)
        return w, i, U[i:i + d].clone()

    w, i, u = block(12, 32, 8, 8)
    wz, iz, uz = block(5, 16, 8, 8)
    return [
        Case("E8P (d = 8), seeded block 16×32, first 8 columns", (*block(16, 32, 0, 8), E8PQuantizer(2))),
        Case("E8P, columns 8–15 in the middle (earlier columns untouched)", (w, i, u, E8PQuantizer(2))),
        Case("E8P, last 8 columns (nothing left to update)", (*block(6, 24, 16, 8), E8PQuantizer(2))),
        Case("scalar grid (d = 1): E = (w_i − q)/U_ii", (*block(10, 12, 3, 1), HalfIntegerQuantizer(2))),
        Case("4-bit residual E8P (two codes per vector)", (*block(8, 16, 0, 8), E8PQuantizer(4))),
        Case("all-zero block", (torch.zeros_like(wz), iz, uz, E8PQuantizer(2))),
        Case("one row", (*block(1, 16, 8, 8), E8PQuantizer(2))),
        Case("large weights (×30)", (*block(4, 16, 0, 8, spread=30.0), E8PQuantizer(2))),
    ]


def check_ldlq_block_step(student_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                          verbose: bool = True) -> CheckResult:
    """Check ``ldlq_block_step(w_block, i, u_rows, quantizer) -> (updated block, E)``."""
    return run_check(
        "ldlq_block_step", student_fn, reference_ldlq_block_step, _ldlq_cases(), rtol=1e-9, atol=1e-9,
        result_names=("block", "E"),
        hint="""
            d = quantizer.dim; q = quantizer.quantize(w_block[:, i:i+d])[1]; delta = w_block[:, i:i+d] − q;
            E solves E · U_bb = delta with U_bb = u_rows[:, i:i+d] upper triangular
            (torch.linalg.solve_triangular(U_bb, delta, upper=True, left=False); for d = 1 that is
            delta / U_ii); then, on a copy, columns i: move by −E @ u_rows[:, i:] (so columns i … i+d−1
            become exactly q). Keep float64 and leave the inputs unchanged.
            """,
        verbose=verbose)


# ---- wrong implementations each check must reject (run by tests/test_checks_mutations.py) --------------

def _fwht_mutant(scale: str = "sqrt", swap: bool = False, stop: int = 0, bitrev: bool = False,
                 write_back: bool = False, dtype: torch.dtype | None = None, todo_above: int = 0
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    def fn(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[-1]
        if todo_above and n > todo_above:
            raise NotImplementedError
        y = x.reshape(-1, n).clone()
        h = 1
        while h < n >> stop:
            v = y.view(y.shape[0], n // (2 * h), 2, h)
            a, b = v[:, :, 0].clone(), v[:, :, 1].clone()
            v[:, :, 0], v[:, :, 1] = (a - b, a + b) if swap else (a + b, a - b)
            h *= 2
        y = y / {"sqrt": math.sqrt(n), "n": n, "none": 1}[scale]
        if bitrev and n > 1:
            bits = int(math.log2(n))
            idx = torch.tensor([int(format(k, f"0{bits}b")[::-1], 2) for k in range(n)])
            y = y[:, idx]
        y = y.reshape(x.shape)
        if write_back:
            x.copy_(y)
        return y.to(dtype) if dtype is not None else y
    return fn


def _e8_mutant(half_coset: bool = True, parity_fix: bool = True, fix_smallest: bool = False,
               always_up: bool = False, half_parity: bool = True, farther: bool = False,
               write_back: bool = False, dtype: torch.dtype | None = None
               ) -> Callable[[torch.Tensor], torch.Tensor]:
    def d8(x: torch.Tensor, fix: bool) -> torch.Tensor:
        f = torch.round(x)
        if not fix:
            return f
        odd = (f.sum(-1) % 2) != 0
        err = x - f
        k = (err.abs().argmin(-1) if fix_smallest else err.abs().argmax(-1)).unsqueeze(-1)
        e_k = err.gather(-1, k)
        step = torch.ones_like(e_k) if always_up else torch.where(e_k >= 0, 1.0, -1.0)
        return torch.where(odd.unsqueeze(-1), f.scatter_add(-1, k, step.to(x.dtype)), f)

    def fn(x: torch.Tensor) -> torch.Tensor:
        a = d8(x, parity_fix)
        if not half_coset:
            out = a
        else:
            b = d8(x - 0.5, parity_fix and half_parity) + 0.5
            da = ((x - a) ** 2).sum(-1, keepdim=True)
            db = ((x - b) ** 2).sum(-1, keepdim=True)
            out = torch.where((da > db) if farther else (da <= db), a, b)
        if write_back:
            x.copy_(out)
        return out.to(dtype) if dtype is not None else out
    return fn


def _ldlq_mutant(solve: str = "triangular", sign: int = 1, set_block: bool = True, write_back: bool = False,
                 dtype: torch.dtype | None = None, todo_scalar: bool = False) -> Callable[..., tuple]:
    def fn(w_block: torch.Tensor, i: int, u_rows: torch.Tensor, quantizer: object) -> tuple:
        d = quantizer.dim  # type: ignore[attr-defined]
        if todo_scalar and d == 1:
            raise NotImplementedError
        q = quantizer.quantize(w_block[:, i:i + d])[1].to(w_block.dtype)  # type: ignore[attr-defined]
        delta = w_block[:, i:i + d] - q
        u_bb = u_rows[:, i:i + d]
        if solve == "triangular":
            err = torch.linalg.solve_triangular(u_bb, delta, upper=True, left=False)
        elif solve == "diagonal":
            err = delta / torch.diagonal(u_bb)
        elif solve == "transposed":
            err = torch.linalg.solve_triangular(u_bb.T, delta, upper=False, left=False)
        else:
            err = delta
        out = w_block if write_back else w_block.clone()
        start = i if set_block else i + d
        out[:, start:] -= sign * (err @ u_rows[:, start:])
        return out, (err.to(dtype) if dtype is not None else err)
    return fn


MUTANTS: dict[str, list[Mutant]] = {
    "check_fwht": [
        Mutant("unnormalised", _fwht_mutant(scale="none"), "seeded batch"),
        Mutant("scale-1/n", _fwht_mutant(scale="n"), "seeded batch"),
        Mutant("swapped-pair", _fwht_mutant(swap=True), "length 2"),
        Mutant("missing-last-stage", _fwht_mutant(stop=1), "seeded batch"),
        Mutant("bit-reversed-order", _fwht_mutant(bitrev=True), "one vector of length 8"),
        Mutant("in-place", _fwht_mutant(write_back=True), "modified its input x"),
        Mutant("float32-output", _fwht_mutant(dtype=torch.float32),
               "dtype torch.float32 where torch.float64 is required"),
        Mutant("partial", _fwht_mutant(todo_above=64), "NotImplementedError"),
    ],
    "check_nearest_e8": [
        Mutant("d8-only", _e8_mutant(half_coset=False), "near D8 + ½ points"),
        Mutant("no-parity-fix", _e8_mutant(parity_fix=False), "odd rounded sum"),
        Mutant("fix-smallest-error", _e8_mutant(fix_smallest=True), "odd rounded sum"),
        Mutant("fix-always-up", _e8_mutant(always_up=True), "odd rounded sum"),
        Mutant("half-coset-without-parity", _e8_mutant(half_parity=False), "seeded Gaussian"),
        Mutant("farther-coset", _e8_mutant(farther=True), "seeded Gaussian"),
        Mutant("in-place", _e8_mutant(write_back=True), "modified its input x"),
        Mutant("float64-output", _e8_mutant(dtype=torch.float64),
               "dtype torch.float64 where torch.float32 is required"),
    ],
    "check_ldlq_block_step": [
        Mutant("diagonal-only", _ldlq_mutant(solve="diagonal"), "seeded block"),
        Mutant("unscaled-error", _ldlq_mutant(solve="none"), "scalar grid"),
        Mutant("transposed-solve", _ldlq_mutant(solve="transposed"), "seeded block"),
        Mutant("wrong-sign", _ldlq_mutant(sign=-1), "seeded block"),
        Mutant("block-not-set-to-q", _ldlq_mutant(set_block=False), "seeded block"),
        Mutant("in-place", _ldlq_mutant(write_back=True), "modified its input w_block"),
        Mutant("float32-error", _ldlq_mutant(dtype=torch.float32),
               "dtype torch.float32 where torch.float64 is required"),
        Mutant("partial", _ldlq_mutant(todo_scalar=True), "NotImplementedError"),
    ],
}
