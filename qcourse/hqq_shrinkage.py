"""When does HQQ's shrinkage act? Measurements of the sparse-error step of HQQ's solver.

HQQ's solver (:func:`qcourse.methods.hqq.optimize`) alternates codes, a shrunk error
``W_e = shrink_p(W − Ŵ; β)`` and a zero point. ``shrink_p`` is zero unless ``|x| > β^(−1/(2−p))``
(:func:`threshold`), so when every rounding error of a layer is below that threshold ``W_e ≡ 0`` and the
zero step is the plain least-squares zero for fixed codes (:func:`lstsq_zero`). This module re-runs the
solver's iteration with the package's public steps (``init_minmax``, ``shrink_lp``, ``zero_step``) and
records, per iteration, the fraction of weights with ``W_e ≠ 0``; it also gives the exact proximal operator
of ``|x|^p`` (:func:`prox_lp`), which ``shrink_lp`` only approximates for ``p < 1``.

Whole-model figures for SmolLM2 are cached in ``qcourse/data/results/hqq_shrinkage_smollm2.json``, made by
``python -m qcourse.hqq_shrinkage --model smollm2-135m --out qcourse/data/results/hqq_shrinkage_smollm2.json``
(the file records that command).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import grouping
from .methods.hqq import init_minmax, shrink_lp, zero_step

__all__ = ["RESULTS", "ShrinkTrace", "threshold", "trace", "layer_trace", "beta_star", "lstsq_zero",
           "prox_lp", "model_report", "main"]

#: where the cached whole-model figures live
RESULTS = Path(__file__).resolve().parent / "data" / "results" / "hqq_shrinkage_smollm2.json"


def _check_p_beta(p: float, beta: float) -> None:
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 < p <= 1:
        raise ValueError(f"p must be a number in (0, 1]; got {p!r}")
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta > 0:
        raise ValueError(f"beta must be a positive number; got {beta!r}")


def threshold(beta: float, p: float = 0.7) -> float:
    """The smallest ``|x|`` that ``shrink_p(x; β)`` does not set to zero: ``β^(−1/(2−p))``.

    ``|x| − |x|^(p−1)/β > 0  ⇔  |x|^(2−p) > 1/β``.

    >>> round(threshold(10.0, 0.7), 3), threshold(10.0, 1.0)
    (0.17, 0.1)
    """
    _check_p_beta(p, beta)
    return float(beta) ** (-1.0 / (2.0 - p))


@dataclass
class ShrinkTrace:
    """Per-iteration record of HQQ's solver (iteration 0 is the min–max start)."""

    #: mean |W − Ŵ| of each iterate, as ``optimize``'s history
    errors: list[float] = field(default_factory=list)
    active: list[float] = field(default_factory=list)  #: fraction of weights with W_e ≠ 0 in each iteration
    max_error: list[float] = field(default_factory=list)  #: max |W − Ŵ| of each iterate
    thresholds: list[float] = field(default_factory=list)  #: β^(−1/(2−p)) at each iteration's β
    stop: int = 0  #: the iteration at which ``optimize``'s early stop ends (its history has stop + 1 entries)
    active_groups: torch.Tensor | None = None  #: [G] bool, groups with some W_e ≠ 0 in any iteration


def trace(groups: torch.Tensor, scale_inv: torch.Tensor, zero: torch.Tensor, bits: int, *, p: float = 0.7,
          beta: float = 10.0, kappa: float = 1.01, iters: int = 20) -> ShrinkTrace:
    """Run HQQ's iteration on ``groups`` (``[G, g]``) for all ``iters`` updates and record the shrinkage.

    Same steps as :func:`qcourse.methods.hqq.optimize` (which stops early at ``stop``); ``errors[:stop+1]``
    equals its ``history``.

    >>> g = torch.randn(64, 64, generator=torch.Generator().manual_seed(0)) * 0.02
    >>> s, z = init_minmax(g, bits=2)
    >>> t = trace(g, s, z, bits=2)
    >>> max(t.active), max(t.max_error) < t.thresholds[-1]     # small errors: shrinkage never acts
    (0.0, True)
    """
    _check_p_beta(p, beta)
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"bits must be an int from 1 to 8; got {bits!r}")
    maxq = 2**bits - 1
    w = groups.float()
    s = scale_inv.float().expand(w.shape[0], 1)
    z = zero.float().expand(w.shape[0], 1)
    out = ShrinkTrace(active_groups=torch.zeros(w.shape[0], dtype=torch.bool))
    best, stopped = float("inf"), False
    for i in range(iters + 1):
        w_q = torch.round(w * s + z).clamp(0, maxq)
        e = w - (w_q - z) / s
        # shrink_lp is exactly 0 well below the threshold: evaluate it (a pow per weight) only near and above
        near = e.abs() > 0.9 * threshold(beta, p)
        w_e = torch.zeros_like(e)
        if near.any():
            w_e[near] = shrink_lp(e[near], beta, p)
        nz = w_e != 0
        out.errors.append(float(e.abs().sum()) / w.numel())
        out.active.append(float(nz.sum()) / w.numel())
        out.max_error.append(float(e.abs().max()))
        out.thresholds.append(threshold(beta, p))
        out.active_groups |= nz.any(dim=1)
        if not stopped:
            if out.errors[-1] < best or i == 0:
                best, out.stop = out.errors[-1], i
            else:
                stopped, out.stop = True, i
        if i == iters:
            break
        z = zero_step(w, w_q, w_e, s)
        beta *= kappa
    return out


def layer_trace(weight: torch.Tensor, bits: int, group_size: int = 64, axis: int = 1, **solver: Any
                ) -> ShrinkTrace:
    """:func:`trace` of one weight matrix, grouped as HQQ groups it, from HQQ's min–max start.

    >>> w = torch.randn(32, 128, generator=torch.Generator().manual_seed(0))      # unit-size weights
    >>> t = layer_trace(w, bits=2)
    >>> t.active[0] > 0.1                                                          # errors ~0.5: it acts
    True
    """
    groups = grouping.to_groups(weight.detach().float(), group_size, axis).contiguous()
    s, z = init_minmax(groups, bits)
    return trace(groups, s, z, bits, **solver)


def beta_star(groups: torch.Tensor, bits: int, p: float = 0.7) -> float:
    """The β below which shrinkage acts on ``groups`` in HQQ's first iteration: ``max|e₀|^(−(2−p))``.

    ``e₀`` is the rounding error at HQQ's min–max start; ``shrink_p`` keeps some error iff
    ``max|e₀| > β^(−1/(2−p))``, i.e. iff ``β > max|e₀|^(−(2−p))``.

    >>> g = torch.tensor([[0.0, 0.4, 1.0, 3.0]])            # 2 bits: step 1, error 0.4 at 0.4
    >>> round(beta_star(g, bits=2, p=1.0), 6)                # 1 / 0.4
    2.5
    """
    _check_p_beta(p, 1.0)
    maxq = 2**bits - 1
    s, z = init_minmax(groups.float(), bits)
    e = groups.float() - (torch.round(groups.float() * s + z).clamp(0, maxq) - z) / s
    return float(e.abs().max()) ** (-(2.0 - p))


def lstsq_zero(w: torch.Tensor, codes: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """The least-squares zero for fixed codes: ``argmin_z ‖W − (Q − z)/s'‖²`` per group = mean(Q − W·s').

    Setting the derivative ``(2/s')·Σ(W − (Q − z)/s')`` to zero gives ``z = mean(Q − W·s')``: HQQ's zero
    step with ``W_e = 0``.

    >>> lstsq_zero(torch.tensor([[0.5, 1.0, 1.5]]), torch.tensor([[1.0, 2.0, 4.0]]), torch.tensor([[2.0]]))
    tensor([[0.3333]])
    """
    return (codes - w * scale_inv).mean(dim=-1, keepdim=True)


def prox_lp(x: torch.Tensor, beta: float, p: float = 0.7, points: int = 4001) -> torch.Tensor:
    """The exact proximal operator ``argmin_u |u|^p + (β/2)(u − x)²``, by search over ``u = t·x``, t ∈ [0, 1].

    The minimiser lies between 0 and ``x``; the search is over ``points`` evenly spaced values of ``t``
    (precise to ``|x|/(points − 1)``). For ``p = 1`` it is the soft threshold; for ``p < 1`` it jumps from 0
    to a value near ``x`` at ``|x| = τ`` with ``τ`` larger than :func:`threshold`, unlike ``shrink_lp``.

    >>> x = torch.tensor([0.05, 0.3, 1.0])
    >>> torch.allclose(prox_lp(x, 10.0, p=1.0), shrink_lp(x, 10.0, p=1.0), atol=1e-3)
    True
    """
    _check_p_beta(p, beta)
    t = torch.linspace(0, 1, points, dtype=torch.float64)
    u = x.double()[..., None] * t
    cost = u.abs().pow(p) + 0.5 * beta * (u - x.double()[..., None]) ** 2
    return u.gather(-1, cost.argmin(-1, keepdim=True)).squeeze(-1).to(x.dtype)


def _linears(model: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.startswith("layers."):
            yield name, mod.weight.detach()


def model_report(model: torch.nn.Module, bits: Sequence[int] = (2, 3, 4), group_size: int = 64,
                 **solver: Any) -> dict[str, Any]:
    """Shrinkage statistics over every block linear of ``model`` at each width in ``bits``.

    Returns ``{"bits": {b: {...}}}`` with, per width: ``active`` (fraction of all block-linear weights with
    ``W_e ≠ 0``, per iteration), ``max_error`` (largest rounding error at the min–max start),
    ``threshold`` (at β₀), ``stop`` (``optimize``'s early-stop iteration, per layer) and ``layers`` (per
    layer: name, weights, fraction active per iteration, max error, fraction of groups ever active, and the
    mean max|w|/rms of active vs inactive groups).

    >>> from qcourse import lm
    >>> rep = model_report(lm.toy_model(0), bits=(2,), group_size=16)
    >>> rep["bits"][2]["active"][0]
    0.0
    """
    out: dict[str, Any] = {"group_size": group_size, "solver": solver, "bits": {}}
    for b in bits:
        n_total, active, layers, max_err = 0, None, [], 0.0
        for name, w in _linears(model):
            groups = grouping.to_groups(w.float(), group_size, 1).contiguous()
            t = trace(groups, *init_minmax(groups, b), b, **solver)
            n = groups.numel()
            counts = [a * n for a in t.active]
            active = counts if active is None else [x + y for x, y in zip(active, counts, strict=True)]
            n_total += n
            max_err = max(max_err, t.max_error[0])
            peak = groups.abs().amax(1) / groups.pow(2).mean(1).sqrt().clamp_min(1e-12)
            ag = t.active_groups
            layers.append({
                "name": name, "weights": n, "active": t.active, "max_error": t.max_error[0], "stop": t.stop,
                "groups_active": float(ag.float().mean()),
                "peak_active_groups": float(peak[ag].mean()) if ag.any() else None,
                "peak_other_groups": float(peak[~ag].mean()) if (~ag).any() else None})
        out["bits"][b] = {"active": [a / n_total for a in active], "max_error": max_err,
                          "threshold": threshold(solver.get("beta", 10.0), solver.get("p", 0.7)),
                          "layers": layers}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """``python -m qcourse.hqq_shrinkage --model NAME [--bits 2,3,4] [--group-size 64] [--out FILE]``."""
    ap = argparse.ArgumentParser(prog="python -m qcourse.hqq_shrinkage",
                                 description="Fraction of weights HQQ's shrinkage acts on, per iteration.")
    ap.add_argument("--model", default="smollm2-135m", help="a name qcourse.lm.load accepts")
    ap.add_argument("--bits", default="2,3,4", help="comma-separated widths")
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = ap.parse_args(argv)
    try:
        bits = [int(b) for b in args.bits.split(",")]
    except ValueError:
        ap.error(f"--bits must be integers separated by commas; got {args.bits!r}")
    from . import lm  # models are loaded only by the command

    model = lm.load() if args.model == "embedded" else lm.load(args.model)
    rep = model_report(model, bits, args.group_size)
    rep["model"] = args.model
    rep["command"] = ("python -m qcourse.hqq_shrinkage --model " + args.model + f" --bits {args.bits} "
                      f"--group-size {args.group_size}" + (f" --out {args.out}" if args.out else ""))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rep, indent=1) + "\n")
    return rep


if __name__ == "__main__":
    res = main(sys.argv[1:])
    print(json.dumps({b: {"active": r["active"], "max_error": r["max_error"]}
                      for b, r in res["bits"].items()}))
