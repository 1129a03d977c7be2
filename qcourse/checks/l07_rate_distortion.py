"""Checks for lesson 07 (rate–distortion): one Lloyd–Max step, the gap to D(R), reverse water-filling.

Each check runs the learner's function and the reference (:mod:`qcourse.theory`) on seeded and
adversarial inputs and prints what differs.

>>> check_lloyd_step(reference_lloyd_step, verbose=False).status
'passed'
>>> check_water_filling(lambda v, r: reference_water_filling(v, r / 2), verbose=False).status
'failed'
"""

from __future__ import annotations

import math

import torch

from qcourse import theory
from qcourse.checks._harness import Case, CheckResult, Mutant, run_check

__all__ = ["check_distortion_rate_gap", "check_lloyd_step", "check_water_filling",
           "reference_distortion_rate_gap", "reference_lloyd_step", "reference_water_filling"]

_F64 = torch.float64


# ---- references --------------------------------------------------------------------------------------

def reference_lloyd_step(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Lloyd–Max iteration on N(0, 1): ``(new_levels, thresholds)``, float64 tensors.

    Thresholds are the midpoints of the given (sorted) levels; each new level is the centroid of its cell
    ``[a, b)``: ``(φ(a) − φ(b)) / (Φ(b) − Φ(a))``. The input is not modified.

    >>> new, t = reference_lloyd_step(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    >>> t.tolist(), [round(v, 4) for v in new.tolist()]
    ([0.0], [-0.7979, 0.7979])
    """
    new, t = theory.lloyd_step(levels.detach().cpu().numpy(), theory.gaussian())
    return torch.from_numpy(new).to(_F64), torch.from_numpy(t).to(_F64)


def reference_distortion_rate_gap(mse: torch.Tensor, rate: torch.Tensor, variance: float
                                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(bound, gap_db)``: ``D(R) = σ² 2^(−2R)`` and ``10·log10(mse / D(R))``, elementwise, float64.

    >>> b, gap = reference_distortion_rate_gap(torch.tensor([0.1175], dtype=torch.float64),
    ...                                        torch.tensor([2.0], dtype=torch.float64), 1.0)
    >>> b.tolist(), round(gap.item(), 2)
    ([0.0625], 2.74)
    """
    bound = variance * torch.pow(torch.tensor(2.0, dtype=_F64), -2 * rate.to(_F64))
    return bound, 10 * torch.log10(mse.to(_F64) / bound)


def reference_water_filling(variances: torch.Tensor, total_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reverse water-filling: ``(level θ, rates)`` with ``Rᵢ = max(0, ½ log2(σᵢ²/θ))`` summing to
    ``total_rate`` (> 0). Float64 tensors; ``θ`` is a 0-d tensor.

    >>> theta, rates = reference_water_filling(torch.tensor([4.0, 1.0, 0.25], dtype=torch.float64), 2.0)
    >>> round(theta.item(), 6), [round(r, 6) for r in rates.tolist()]
    (0.5, [1.5, 0.5, 0.0])
    """
    wf = theory.reverse_water_filling(variances.detach().cpu().numpy(), rate=float(total_rate))
    return torch.tensor(wf.level, dtype=_F64), torch.from_numpy(wf.rates).to(_F64)


# ---- cases -------------------------------------------------------------------------------------------

def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=_F64)


def _lloyd_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(7)
    random_levels = torch.sort(torch.randn(6, generator=gen, dtype=_F64) * 1.5).values
    return [
        Case("two levels ±1 (one step lands on ±E|x| = ±0.798)", (_t([-1.0, 1.0]),)),
        Case("four levels, seeded start", (_t([-1.6, -0.5, 0.4, 1.4]),)),
        Case("random sorted levels (asymmetric cells)", (random_levels,)),
        Case("three levels with one at zero (ternary)", (_t([-1.0, 0.0, 1.0]),)),
        Case("levels far in the tail (tiny-probability cell)", (_t([4.0, 6.0]),)),
        Case("sixteen levels (the outer cells are unbounded)", (torch.linspace(-2.7, 2.7, 16, dtype=_F64),)),
    ]


def _gap_cases() -> list[Case]:
    return [
        Case("Lloyd–Max at 1-4 bits on N(0, 1)",
             (_t([0.3634, 0.1175, 0.03455, 0.009501]), _t([1.0, 2.0, 3.0, 4.0]), 1.0)),
        Case("variance 4 (the bound scales with σ², not σ)", (_t([0.5, 0.2]), _t([1.0, 2.0]), 4.0)),
        Case("fractional rate (ternary: log2 3 bits)", (_t([0.1902]), _t([math.log2(3)]), 1.0)),
        Case("rate 0 (the bound is the variance)", (_t([1.0, 2.0]), _t([0.0, 0.0]), 1.0)),
        Case("small variance (SmolLM2-like weights, σ = 0.02)",
             (_t([1e-4, 5e-5]), _t([2.0, 3.0]), 4e-4)),
    ]


def _water_cases() -> list[Case]:
    return [
        Case("three components, one under the water", (_t([4.0, 1.0, 0.25]), 2.0)),
        Case("equal variances (equal split)", (_t([1.0, 1.0, 1.0, 1.0]), 3.0)),
        Case("one component", (_t([2.0]), 1.5)),
        Case("high rate: every component gets bits", (_t([3.0, 1.0, 0.4, 0.05]), 12.0)),
        Case("tiny variance: zero bits, not negative bits", (_t([5.0, 1e-6]), 1.0)),
        Case("seeded variances", (torch.rand(6, generator=torch.Generator().manual_seed(3),
                                             dtype=_F64) * 3 + 0.01, 4.0)),
    ]


# ---- checks ------------------------------------------------------------------------------------------

def check_lloyd_step(student_fn, verbose: bool = True) -> CheckResult:
    """Check ``lloyd_step(levels) -> (new_levels, thresholds)`` against :func:`reference_lloyd_step`."""
    return run_check("lloyd_step", student_fn, reference_lloyd_step, _lloyd_cases(), rtol=1e-7, atol=1e-9,
                     result_names=("new_levels", "thresholds"), verbose=verbose,
                     hint="thresholds are midpoints of the OLD levels; a level moves to its cell's centroid "
                          "(φ(a) − φ(b)) / (Φ(b) − Φ(a)) — torch.special.ndtr is Φ; ±inf ends have φ = 0")


def check_distortion_rate_gap(student_fn, verbose: bool = True) -> CheckResult:
    """Check ``distortion_rate_gap(mse, rate, variance) -> (bound, gap_db)``."""
    return run_check("distortion_rate_gap", student_fn, reference_distortion_rate_gap, _gap_cases(),
                     rtol=1e-9, atol=1e-12, result_names=("bound", "gap_db"), verbose=verbose,
                     hint="D(R) = σ²·2^(−2R) (σ² is the variance); the gap is 10·log10(mse / D(R)) in dB")


def check_water_filling(student_fn, verbose: bool = True) -> CheckResult:
    """Check ``water_filling(variances, total_rate) -> (level, rates)``."""
    return run_check("water_filling", student_fn, reference_water_filling, _water_cases(), rtol=1e-6,
                     atol=1e-8, result_names=("level", "rates"), verbose=verbose,
                     hint="Dᵢ = min(θ, σᵢ²), Rᵢ = max(0, ½·log2(σᵢ²/θ)); choose θ so the rates sum "
                          "to the total (bisection on θ between 0 and max σᵢ² works)")


# ---- wrong implementations the checks must reject ------------------------------------------------------

def _phi(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isinf(x), torch.zeros_like(x), torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi))


def _edges(levels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = 0.5 * (levels[1:] + levels[:-1])
    inf = torch.tensor([math.inf], dtype=levels.dtype)
    return t, torch.cat([-inf, t]), torch.cat([t, inf])


def _lloyd_cell_midpoint(levels):  # level := midpoint of its (clipped) cell, not its centroid
    t, a, b = _edges(levels)
    return 0.5 * (a.clamp(-4, 4) + b.clamp(-4, 4)), t


def _lloyd_no_division(levels):  # forgets to divide the first moment by the cell probability
    t, a, b = _edges(levels)
    return _phi(a) - _phi(b), t


def _lloyd_sign(levels):  # φ(b) − φ(a): the centroid's sign flipped
    t, a, b = _edges(levels)
    p = torch.special.ndtr(b) - torch.special.ndtr(a)
    return (_phi(b) - _phi(a)) / p, t


def _lloyd_new_thresholds(levels):  # returns the midpoints of the NEW levels
    new, _ = reference_lloyd_step(levels)
    return new, 0.5 * (new[1:] + new[:-1])


def _lloyd_inplace(levels):
    new, t = reference_lloyd_step(levels)
    levels.copy_(new)
    return levels, t


def _lloyd_float32(levels):
    new, t = reference_lloyd_step(levels)
    return new.float(), t.float()


def _lloyd_finite_ends(levels):  # outer cells cut at ±3 instead of unbounded
    t = 0.5 * (levels[1:] + levels[:-1])
    a = torch.cat([torch.tensor([-3.0], dtype=_F64), t])
    b = torch.cat([t, torch.tensor([3.0], dtype=_F64)])
    p = torch.special.ndtr(b) - torch.special.ndtr(a)
    return (_phi(a) - _phi(b)) / p, t


def _gap_one_bit_per_halving(mse, rate, variance):  # 2^(−R): forgets the factor 2
    bound = variance * torch.pow(torch.tensor(2.0, dtype=_F64), -rate)
    return bound, 10 * torch.log10(mse / bound)


def _gap_sigma(mse, rate, variance):  # uses σ instead of σ²
    bound = math.sqrt(variance) * torch.pow(torch.tensor(2.0, dtype=_F64), -2 * rate)
    return bound, 10 * torch.log10(mse / bound)


def _gap_20log(mse, rate, variance):  # amplitude dB instead of power dB
    bound, _ = reference_distortion_rate_gap(mse, rate, variance)
    return bound, 20 * torch.log10(mse / bound)


def _gap_bits(mse, rate, variance):  # reports the gap in bits, not dB
    bound, _ = reference_distortion_rate_gap(mse, rate, variance)
    return bound, 0.5 * torch.log2(mse / bound)


def _gap_inverted(mse, rate, variance):  # bound over mse: negative gaps
    bound, _ = reference_distortion_rate_gap(mse, rate, variance)
    return bound, 10 * torch.log10(bound / mse)


def _gap_natural(mse, rate, variance):  # e^(−2R)
    bound = variance * torch.exp(-2 * rate)
    return bound, 10 * torch.log10(mse / bound)


def _water_equal_split(variances, total_rate):  # ignores the variances
    rates = torch.full_like(variances, total_rate / variances.numel())
    return torch.tensor(float((variances * 2 ** (-2 * rates)).mean()), dtype=_F64), rates


def _water_negative(variances, total_rate):  # no clipping at zero: rates may go negative
    n = variances.numel()
    log_theta = torch.log2(variances).mean() - 2 * total_rate / n
    theta = 2**log_theta
    return theta.to(_F64), 0.5 * torch.log2(variances / theta)


def _water_no_half(variances, total_rate):  # Rᵢ = log2(σᵢ²/θ): the ½ is missing
    theta, _ = reference_water_filling(variances, 2 * total_rate)
    return theta, torch.clamp(torch.log2(variances / theta), min=0)


def _water_nats(variances, total_rate):  # rates in nats
    theta, rates = reference_water_filling(variances, total_rate / math.log(2))
    return theta, rates


def _water_inplace(variances, total_rate):
    theta, rates = reference_water_filling(variances, total_rate)
    variances.clamp_(max=float(theta))
    return theta, rates


def _water_level_mean(variances, total_rate):  # θ := mean variance; the rates no longer sum to the total
    theta = variances.mean()
    return theta, torch.clamp(0.5 * torch.log2(variances / theta), min=0)


MUTANTS = {
    "check_lloyd_step": [
        Mutant("cell midpoint, not centroid", _lloyd_cell_midpoint, "two levels"),
        Mutant("no division by probability", _lloyd_no_division, "two levels"),
        Mutant("centroid sign flipped", _lloyd_sign, "two levels"),
        Mutant("thresholds from new levels", _lloyd_new_thresholds, "four levels"),
        Mutant("modifies its input", _lloyd_inplace, "modified its input"),
        Mutant("float32 results", _lloyd_float32, "dtype"),
        Mutant("outer cells cut at ±3", _lloyd_finite_ends, "tail"),
    ],
    "check_distortion_rate_gap": [
        Mutant("2^(-R)", _gap_one_bit_per_halving, "Lloyd"),
        Mutant("sigma not sigma^2", _gap_sigma, "variance 4"),
        Mutant("20 log10", _gap_20log, "Lloyd"),
        Mutant("gap in bits", _gap_bits, "Lloyd"),
        Mutant("inverted ratio", _gap_inverted, "Lloyd"),
        Mutant("natural exponent", _gap_natural, "Lloyd"),
    ],
    "check_water_filling": [
        Mutant("equal split", _water_equal_split, "three components"),
        Mutant("negative rates", _water_negative, "tiny variance"),
        Mutant("missing 1/2", _water_no_half, "three components"),
        Mutant("nats", _water_nats, "three components"),
        Mutant("modifies its input", _water_inplace, "modified its input"),
        Mutant("level is the mean variance", _water_level_mean, "three components"),
    ],
}
