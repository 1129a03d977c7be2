"""``python -m qcourse.bench hqq``: our HQQ beside the ``hqq`` package's, on one seeded weight, in one run.

Both quantize the same weight end to end (grouping, min–max init, proximal solver, bit packing) with the
same settings (group 64, axis 1, default solver parameters); relative error is ``‖W − Ŵ‖²_F / ‖W‖²_F``
of each one's own dequantization. Timings are wall-clock seconds of one call each, measured side by side
with the thread count pinned (``*_seconds``), and the process CPU time of each call (``*_cpu_seconds``,
less sensitive to other load on a shared machine); they are figures, never pass/fail.

Options: ``--size N`` (square weight, default 4096), ``--group-size`` (64, a divisor of the size),
``--bits`` (``2,3,4``; any of HQQ's widths, ``1.58`` for ternary), ``--dist`` (``student-t`` (df 3, the
heavy tails of LLM weights) or ``gaussian``), ``--seed`` (0), ``--threads`` (torch threads, default 2),
``--axis`` (1). Bad values are refused before any work starts (a usage line and exit status 2 from the
command line; :class:`~qcourse.bench.UsageError` from :func:`main`). The ``hqq`` package quantizes only the
widths it supports (``ref_*`` is None for the others, with the reason in ``ref_note``).

>>> out = main(["--size", "64", "--bits", "3"])
>>> out["shape"], out["group_size"], [r["bits"] for r in out["rows"]]
([64, 64], 64, [3])
>>> 0 < out["rows"][0]["ours_rel_error"] < 0.2
True
>>> main(["--size", "64", "--bits", "abc"])
Traceback (most recent call last):
...
qcourse.bench.UsageError: argument --bits: bits must be numbers separated by commas, e.g. 2,3,4; got 'abc'
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from qcourse.bench import ArgumentParser, bits_list, non_negative_int, positive_int
from qcourse.methods.hqq import METHODS, quantize_hqq


def make_weight(size: int, dist: str, seed: int) -> torch.Tensor:
    """The benchmark weight: ``[size, size]``, seeded, scaled like an LLM linear layer (std ≈ 0.02–0.03).

    >>> make_weight(8, "gaussian", 0).shape
    torch.Size([8, 8])
    """
    gen = torch.Generator().manual_seed(seed)
    if dist == "gaussian":
        return torch.randn(size, size, generator=gen) * 0.02
    if dist == "student-t":
        # Student-t(3) = N / sqrt(χ²₃/3), drawn from the seeded generator
        normal = torch.randn(size, size, generator=gen)
        chi2 = torch.randn(3, size, size, generator=gen).pow(2).sum(0)
        return normal / torch.sqrt(chi2 / 3) * 0.02
    raise ValueError(f"dist must be 'student-t' or 'gaussian'; got {dist!r}")


def _rel(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w - w_hat.float()).pow(2).sum() / w.pow(2).sum())


def _reference() -> tuple[Any, str]:
    os.environ.setdefault("DISABLE_CUDA", "1")
    try:
        import hqq
        from hqq.core.quantize import Quantizer
    except Exception as exc:  # the package is a benchmark/test dependency only
        return None, f"hqq not importable: {type(exc).__name__}: {exc}"
    return Quantizer, getattr(hqq, "__version__", "unknown")


def main(argv: Sequence[str]) -> dict:
    """Run the benchmark and return its figures (see module docstring)."""
    ap = ArgumentParser(prog="python -m qcourse.bench hqq",
                        description="Our HQQ beside the hqq package's on one seeded square weight.")
    ap.add_argument("--size", type=positive_int, default=4096, help="rows = columns of the weight")
    ap.add_argument("--group-size", type=positive_int, default=64, help="weights per group (divides --size)")
    ap.add_argument("--bits", type=bits_list, default=[2, 3, 4],
                    help="comma-separated widths; 1.58 = ternary")
    ap.add_argument("--dist", choices=["student-t", "gaussian"], default="student-t")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    ap.add_argument("--axis", type=int, choices=[0, 1], default=1)
    args = ap.parse_args(list(argv))
    supported = list(METHODS["hqq"].supported_bits)
    bad = [b for b in args.bits if b not in supported]
    if bad:
        ap.fail(f"argument --bits: {bad} not supported by HQQ; it supports {supported}")
    if args.size % args.group_size:
        ap.fail(f"argument --group-size: {args.group_size} does not divide --size {args.size}")
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        w = make_weight(args.size, args.dist, args.seed)
        quantizer, ref_info = _reference()
        rows = []
        for bits in args.bits:
            t0, c0 = time.perf_counter(), time.process_time()
            qw, res = quantize_hqq(w, bits, args.group_size, axis=args.axis)
            ours_s, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
            row: dict[str, Any] = {"bits": bits, "ours_seconds": round(ours_s, 4),
                                   "ours_cpu_seconds": round(ours_cpu, 4),
                                   "ours_rel_error": _rel(w, qw.dequantize()),
                                   "ours_iterations": len(res.history) - 1 if res else 0,
                                   "ours_bits_per_weight": qw.bits_per_weight}
            if quantizer is not None and bits not in getattr(quantizer, "SUPPORTED_BITS", [bits]):
                row.update(ref_seconds=None, ref_cpu_seconds=None, ref_rel_error=None,
                           ref_note=f"hqq supports nbits {quantizer.SUPPORTED_BITS} only")
            elif quantizer is not None:
                t0, c0 = time.perf_counter(), time.process_time()
                w_q, meta = quantizer.quantize(w, nbits=bits, group_size=args.group_size, axis=args.axis,
                                               optimize=True, round_zero=False, device="cpu")
                ref_s, ref_cpu = time.perf_counter() - t0, time.process_time() - c0
                ref_err = _rel(w, quantizer.dequantize(w_q, meta))
                row.update(ref_seconds=round(ref_s, 4), ref_cpu_seconds=round(ref_cpu, 4),
                           ref_rel_error=ref_err)
            else:
                row.update(ref_seconds=None, ref_cpu_seconds=None, ref_rel_error=None)
            rows.append(row)
    finally:
        torch.set_num_threads(before)
    return {
        "shape": [args.size, args.size],
        "group_size": args.group_size,
        "axis": args.axis,
        "weight": f"{args.dist} (df 3) × 0.02" if args.dist == "student-t" else "gaussian N(0, 0.02²)",
        "seed": args.seed,
        "rows": rows,
        "reference": "hqq.core.quantize.Quantizer.quantize(optimize=True), its default solver "
                     "optimize_weights_proximal_legacy (no β·κ; returns the last zero)",
        "reference_version": ref_info,
        "torch_version": torch.__version__,
        "torch_threads": args.threads,
    }
