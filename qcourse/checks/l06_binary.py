"""Checks for lesson 06's exercises: XNOR-Net sign binarization, the clipped straight-through estimator,
and the XNOR-popcount dot product on packed words.

>>> from qcourse.checks.l06_binary import check_binarize_xnor, reference_binarize_xnor
>>> check_binarize_xnor(reference_binarize_xnor, verbose=False).passed
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from qcourse import xnor
from qcourse.checks._harness import Case, CheckResult, Mutant, run_check

__all__ = [
    "check_binarize_xnor", "reference_binarize_xnor", "check_sign_ste", "reference_sign_ste",
    "check_xnor_dot", "reference_xnor_dot",
]


# --- 1. sign binarization with the least-squares scale ------------------------------------------------


def reference_binarize_xnor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(b, alpha)``: ``b = sign(w)`` as ``int8`` ±1 with ``sign(0) = +1``; ``alpha = mean|w|`` per row,
    float32 ``[out, 1]`` (the minimiser of ``‖w − α b‖²`` for each row)."""
    b = torch.where(w >= 0, 1, -1).to(torch.int8)
    alpha = w.abs().float().mean(dim=1, keepdim=True)
    return b, alpha


def _binarize_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    zeros_inside = torch.randn(3, 8, generator=gen)
    zeros_inside[:, ::3] = 0.0
    outlier = torch.randn(4, 32, generator=gen) * 0.02
    outlier[2, 7] = 40.0
    return [
        Case("seeded Gaussian 8×64", (torch.randn(8, 64, generator=gen),)),
        Case("exact zeros: sign(0) = +1 (every weight gets a bit)", (zeros_inside,)),
        Case("all zeros (alpha 0)", (torch.zeros(2, 5),)),
        Case("a row of one constant (alpha = |c|)", (torch.full((1, 6), -0.75),)),
        Case("one huge outlier inflates its row's alpha only", (outlier,)),
        Case("scale per row, not per tensor (rows of very different size)",
             (torch.cat([torch.randn(1, 16, generator=gen) * 1e-3,
                         torch.randn(1, 16, generator=gen) * 1e3]),)),
        Case("odd shape 5×7", (torch.randn(5, 7, generator=gen),)),
        Case("a single column", (torch.randn(4, 1, generator=gen),)),
    ]


def check_binarize_xnor(student_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                        verbose: bool = True) -> CheckResult:
    """Check ``binarize_xnor(w) -> (b, alpha)``."""
    return run_check(
        "binarize_xnor", student_fn, reference_binarize_xnor, _binarize_cases(), rtol=1e-6, atol=1e-12,
        result_names=("b", "alpha"),
        hint="""
            b = +1 where w >= 0 and −1 elsewhere (torch.sign gives 0 at 0: a zero weight would get no bit), as
            torch.int8; alpha = w.abs().mean(dim=1, keepdim=True) in float32, one scale per output row, shape
            [out, 1] — the least-squares scale mean|w| (not max|w|, not the mean of w, not sqrt(mean w²)).
            """,
        verbose=verbose)


# --- 2. the straight-through estimator with the hard-tanh clip ------------------------------------------


def reference_sign_ste(x: torch.Tensor) -> torch.Tensor:
    """``sign(x)`` (``sign(0) = +1``) whose gradient is ``1_{|x| ≤ 1}``."""
    hard = torch.clamp(x, -1.0, 1.0)
    y = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    # exactly y in the forward pass; the gradient of clamp (1 inside [−1, 1], 0 outside)
    return y + (hard - hard.detach())


def _forward_backward(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[..., Any]:
    def run(x: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = x.detach().clone().requires_grad_(True)
        y = fn(leaf)
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"sign_ste must return a tensor; got {type(y).__name__}")
        if not y.requires_grad:
            return y.detach(), torch.zeros_like(x)
        (y * upstream).sum().backward()
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(x)
        return y.detach(), grad
    return run


def _ste_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(1)
    inside = torch.rand(50, generator=gen) * 1.8 - 0.9
    boundary = torch.tensor([-1.0, 1.0, -1.0 - 2**-20, 1.0 + 2**-20, 0.0, -0.0])
    return [
        Case("seeded N(0, 1): gradient only where |x| ≤ 1", (torch.randn(64, generator=gen) * 1.2,
                                                             torch.randn(64, generator=gen))),
        Case("all inside the clip: the gradient passes straight through",
             (inside, torch.randn(50, generator=gen))),
        Case("far outside the clip: gradient 0 (saturated)",
             (torch.tensor([-5.0, 3.0, 100.0]), torch.ones(3))),
        Case("the boundary |x| = 1 is inside; zeros map to +1", (boundary, torch.arange(1.0, 7.0))),
        Case("2-D input, float64", (torch.randn(3, 4, generator=gen, dtype=torch.float64) * 2,
                                    torch.randn(3, 4, generator=gen, dtype=torch.float64))),
    ]


def check_sign_ste(student_fn: Callable[[torch.Tensor], torch.Tensor], verbose: bool = True) -> CheckResult:
    """Check ``sign_ste(x)``: its forward value and the gradient it passes back (for a fixed upstream)."""
    return run_check(
        "sign_ste", _forward_backward(student_fn), _forward_backward(reference_sign_ste), _ste_cases(),
        rtol=0, atol=0, result_names=("forward value", "gradient"),
        hint="""
            forward: +1 where x >= 0, −1 elsewhere, in x's dtype; backward: the upstream gradient where
            |x| <= 1 and 0 outside (the derivative of hardtanh). The detach trick does both:
            y + (h − h.detach()) with y the signs and h = x.clamp(−1, 1). Plain torch.sign has zero gradient,
            and x + (y − x).detach() passes the gradient everywhere (no clip).
            """,
        verbose=verbose)


# --- 3. the XNOR-popcount dot product on packed words ----------------------------------------------------


def reference_xnor_dot(a_words: np.ndarray, b_words: np.ndarray, n: int) -> int:
    """``a·b`` of two ±1 vectors of length ``n`` packed by :func:`qcourse.xnor.pack_signs` (uint64 words,
    zero tail): ``n − 2·popcount(a XOR b)``, a Python ``int``."""
    return int(n - 2 * int(np.bitwise_count(a_words ^ b_words).sum()))


def _packed_pair(rng: np.random.Generator, n: int, same: bool | None = None
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    a = np.where(rng.random(n) < 0.5, -1, 1)
    b = a.copy() if same is True else (-a if same is False else np.where(rng.random(n) < 0.5, -1, 1))
    return xnor.pack_signs(a), xnor.pack_signs(b), n


def _dot_cases() -> list[Case]:
    rng = np.random.default_rng(6)
    return [
        Case("seeded, n = 256 (whole words)", _packed_pair(rng, 256)),
        Case("n = 100: the last word has a zero tail (XNOR would count it as agreement)",
             _packed_pair(rng, 100)),
        Case("n = 65: one element in the second word", _packed_pair(rng, 65)),
        Case("n = 1", _packed_pair(rng, 1)),
        Case("identical vectors: a·a = n", _packed_pair(rng, 130, same=True)),
        Case("opposite vectors: a·(−a) = −n", _packed_pair(rng, 70, same=False)),
        Case("seeded, n = 1000", _packed_pair(rng, 1000)),
    ]


def _int_compare(got: Any, want: Any, case: Case) -> tuple[bool, str]:
    if isinstance(got, bool) or not isinstance(got, int | np.integer):
        return False, f"returned {type(got).__name__}; expected an int"
    if int(got) != want:
        return False, f"got {int(got)}, expected {want}"
    return True, f"exact ({want})"


def check_xnor_dot(student_fn: Callable[[np.ndarray, np.ndarray, int], int], verbose: bool = True
                   ) -> CheckResult:
    """Check ``xnor_dot(a_words, b_words, n) -> int``, bit-exact."""
    return run_check(
        "xnor_dot", student_fn, reference_xnor_dot, _dot_cases(), compare_fn=_int_compare,
        hint="""
            a XOR b has a 1 where the vectors differ (each such position contributes −1, the others +1), so
            a·b = n − 2·popcount(a ^ b) with np.bitwise_count(...).sum(). With XNOR (~(a ^ b)) the count is
            of agreements, 2·popcount − n, but the zero tail bits of the last word then 'agree' too and
            must be masked out. Use n, not 64 × number of words; return a Python int.
            """,
        verbose=verbose)


# --- mutants ------------------------------------------------------------------------------------------


def _bin_mutant(sign_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, scale: str = "mean_abs",
                dim: int | None = 1, dtype: torch.dtype = torch.int8) -> Callable[..., Any]:
    def fn(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = (sign_fn(w) if sign_fn else torch.where(w >= 0, 1, -1)).to(dtype)
        a = w.abs().float()
        if scale == "max":
            alpha = a.amax(dim=1, keepdim=True)
        elif scale == "rms":
            alpha = w.float().pow(2).mean(dim=1, keepdim=True).sqrt()
        elif scale == "mean":
            alpha = w.float().mean(dim=1, keepdim=True)
        elif dim is None:
            alpha = a.mean().expand(w.shape[0], 1).clone()
        else:
            alpha = a.mean(dim=1, keepdim=True)
        return b, alpha
    return fn


def _inplace_binarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    alpha = w.abs().mean(dim=1, keepdim=True)
    w.sign_()
    return torch.where(w >= 0, 1, -1).to(torch.int8), alpha


def _ste_no_clip(x: torch.Tensor) -> torch.Tensor:
    y = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return x + (y - x).detach()


def _ste_torch_sign(x: torch.Tensor) -> torch.Tensor:
    hard = x.clamp(-1, 1)
    return torch.sign(x) + (hard - hard.detach())


def _ste_no_gradient(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


def _ste_strict(x: torch.Tensor) -> torch.Tensor:
    y = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    mask = (x.abs() < 1).to(x.dtype)
    return y + (x * mask - (x * mask).detach())


def _ste_tanh(x: torch.Tensor) -> torch.Tensor:
    y = torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    t = torch.tanh(x)
    return y + (t - t.detach())


def _ste_clip_2(x: torch.Tensor) -> torch.Tensor:
    hard = x.clamp(-2, 2)
    return torch.where(x >= 0, 1.0, -1.0).to(x.dtype) + (hard - hard.detach())


def _ste_float32(x: torch.Tensor) -> torch.Tensor:
    hard = x.clamp(-1, 1)
    return torch.where(x >= 0, 1.0, -1.0).float() + (hard - hard.detach()).float()


def _dot_xnor_unmasked(a: np.ndarray, b: np.ndarray, n: int) -> int:
    return int(2 * int(np.bitwise_count(~(a ^ b)).sum()) - n)


def _dot_seed_article(a: np.ndarray, b: np.ndarray, n: int) -> int:
    return int(n - 2 * int(np.bitwise_count(~(a ^ b)).sum()))


def _dot_word_length(a: np.ndarray, b: np.ndarray, n: int) -> int:
    return int(64 * a.size - 2 * int(np.bitwise_count(a ^ b).sum()))


def _dot_popcount_only(a: np.ndarray, b: np.ndarray, n: int) -> int:
    return int(np.bitwise_count(a ^ b).sum())


def _dot_and(a: np.ndarray, b: np.ndarray, n: int) -> int:
    return int(2 * int(np.bitwise_count(a & b).sum()) - n)


def _dot_inplace(a: np.ndarray, b: np.ndarray, n: int) -> int:
    a ^= b
    return int(n - 2 * int(np.bitwise_count(a).sum()))


def _dot_float(a: np.ndarray, b: np.ndarray, n: int) -> float:
    return float(n - 2 * int(np.bitwise_count(a ^ b).sum()))


MUTANTS: dict[str, list[Mutant]] = {
    "check_binarize_xnor": [
        Mutant("torch.sign", _bin_mutant(sign_fn=torch.sign), "sign(0) = +1"),
        Mutant("max-scale", _bin_mutant(scale="max"), "seeded Gaussian"),
        Mutant("rms-scale", _bin_mutant(scale="rms"), "seeded Gaussian"),
        Mutant("mean-not-abs", _bin_mutant(scale="mean"), "seeded Gaussian"),
        Mutant("per-tensor", _bin_mutant(dim=None), "scale per row"),
        Mutant("float-signs", _bin_mutant(dtype=torch.float32), "dtype"),
        Mutant("sign(0)=-1", _bin_mutant(sign_fn=lambda w: torch.where(w > 0, 1, -1)), "sign(0) = +1"),
        Mutant("in-place", _inplace_binarize, "modified its input"),
    ],
    "check_sign_ste": [
        Mutant("no-clip", _ste_no_clip, "gradient only where |x| ≤ 1"),
        Mutant("torch.sign", _ste_torch_sign, "zeros map to +1"),
        Mutant("no-gradient", _ste_no_gradient, "passes straight through"),
        Mutant("strict-boundary", _ste_strict, "boundary |x| = 1 is inside"),
        Mutant("tanh-gradient", _ste_tanh, "passes straight through"),
        Mutant("clip-at-2", _ste_clip_2, "gradient only where |x| ≤ 1"),
        Mutant("float32-output", _ste_float32, "float64"),
    ],
    "check_xnor_dot": [
        Mutant("xnor-unmasked", _dot_xnor_unmasked, "zero tail"),
        Mutant("seed-article", _dot_seed_article, "whole words"),
        Mutant("n-from-words", _dot_word_length, "zero tail"),
        Mutant("popcount-only", _dot_popcount_only, "whole words"),
        Mutant("and-not-xnor", _dot_and, "whole words"),
        Mutant("in-place", _dot_inplace, "modified its input"),
        Mutant("float-result", _dot_float, "expected an int"),
    ],
}
