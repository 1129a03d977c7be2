"""``python -m qcourse.bench quip``: the speed and accuracy figures of QuIP#'s building blocks.

* ``fwht``: the fast Walsh–Hadamard transform (:func:`qcourse.hadamard.fwht`) against a dense product with
  the explicit ``n×n`` matrix, on a batch of ``batch`` vectors of length ``n`` (default 4096 × 4096), one
  torch thread; best of ``--repeats`` wall-clock runs each, and the max difference of the two results.
* ``e8p``: E8P encoding throughput (:func:`qcourse.lattice.e8p_encode`, weights per second, one thread, best
  of ``--repeats``) and its mean squared error on N(0, 1) at the best of a few RMS scales around QuIP#'s
  1.03, beside the scalar Lloyd–Max quantizer (0.1175) and the rate–distortion bound ``D(2) = 0.0625``.
* ``rvq``: the same MSE for the 3- and 4-bit residual codebooks at QuIP#'s scales.

Timings are measured, never asserted: a slow or busy machine gives slower numbers, not a failure.
Options: ``--n`` (power of two or K·2^k, default 4096), ``--batch`` (4096), ``--vectors`` (E8P test vectors,
default 131072), ``--repeats`` (3), ``--seed`` (0). Bad values: a usage line and exit status 2 from the
command line (:class:`~qcourse.bench.UsageError` from :func:`main`).

>>> out = main(["--n", "256", "--batch", "64", "--vectors", "512", "--repeats", "1"])
>>> out["fwht"]["n"], out["fwht"]["max_abs_difference"] < 1e-4, 0.08 < out["e8p"]["mse"] < 0.1
(256, True, True)
>>> main(["--n", "100"])
Traceback (most recent call last):
...
qcourse.bench.UsageError: argument --n: size 100 has no Hadamard construction here: it must be 2^k or \
K·2^k with K a Paley order [12, 20, 24, 28, 36, 44, 48, 60, 68, 72, 76, 80, 84, 104, 108, 124, 132, 140, \
148, 152, 164, 168, 180, 192, 196, 200, 204, 212, 220, 224, 228, 240, 252] (the course's widths \
576 = 36·16, 768 = 12·64, 1536 = 12·128 all work)
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from qcourse import hadamard, lattice
from qcourse.bench import ArgumentParser, non_negative_int, positive_int
from qcourse.machine import machine_info

LLOYD_MAX_2BIT = 0.1175   # Max (1960): 4-level Lloyd–Max quantizer of N(0, 1)
RATE_DISTORTION_2BIT = 0.0625   # D(R) = 2^(−2R) for a unit Gaussian at R = 2


def _size(text: str) -> int:
    n = positive_int(text)
    try:
        hadamard.hadamard_factors(n)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return n


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m qcourse.bench quip", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=_size, default=4096, help="transform length (2^k or K·2^k)")
    p.add_argument("--batch", type=positive_int, default=4096, help="vectors transformed at once")
    p.add_argument("--vectors", type=positive_int, default=131072, help="8-D vectors for the E8P figures")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs; the best is reported")
    p.add_argument("--seed", type=non_negative_int, default=0)
    return p


def _best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _fwht_figures(args: argparse.Namespace, g: torch.Generator) -> dict[str, Any]:
    x = torch.randn(args.batch, args.n, generator=g)
    dense = hadamard.hadamard_matrix(args.n, torch.float32)
    t_fast, y_fast = _best_time(lambda: hadamard.fwht(x), args.repeats)
    t_dense, y_dense = _best_time(lambda: x @ dense.T, args.repeats)
    return {"n": args.n, "batch": args.batch, "threads": 1, "fwht_seconds": t_fast, "dense_seconds": t_dense,
            "speedup": t_dense / t_fast, "max_abs_difference": float((y_fast - y_dense).abs().max())}


def main(argv: Sequence[str]) -> dict[str, Any]:
    args = _parser().parse_args(list(argv))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        g = torch.Generator().manual_seed(args.seed)
        fwht = _fwht_figures(args, g)
        v = torch.randn(args.vectors, 8, generator=g)
        t_enc, _ = _best_time(lambda: lattice.e8p_encode(v), args.repeats)
        mse = {rho: float(((lattice.e8p_encode(v * rho)[1] / rho - v) ** 2).mean())
               for rho in (0.98, 1.0, 1.03, 1.06)}
        best_rho = min(mse, key=mse.__getitem__)
        e8p = {"mse": mse[best_rho], "best_rho": best_rho, "mse_by_rho": {str(k): m for k, m in mse.items()},
               "weights_per_second": 8 * args.vectors / t_enc, "encode_seconds": t_enc,
               "vectors": args.vectors, "lloyd_max_mse": LLOYD_MAX_2BIT,
               "rate_distortion_mse": RATE_DISTORTION_2BIT, "threads": 1}
        rvq = {}
        for bits in (3, 4):
            rho = lattice.OPT_SCALE[bits]
            rvq[str(bits)] = {"mse": float(((lattice.rvq_encode(v * rho, bits)[1] / rho - v) ** 2).mean()),
                              "rho": rho, "residual_scale": lattice.RVQ_RESIDUAL_SCALE[bits]}
    finally:
        torch.set_num_threads(before)
    return {"fwht": fwht, "e8p": e8p, "rvq": rvq, "seed": args.seed, "torch": torch.__version__,
            "machine": machine_info()}
