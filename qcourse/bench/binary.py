"""``python -m qcourse.bench binary``: XNOR-popcount matrix-vector product vs the float one, same ±1s.

One ``[rows, cols]`` matrix of ±1 and one ±1 vector, side by side in one run, one thread:

* **float**: ``torch.mv`` of the matrix stored as float32 (32 bits per ±1);
* **packed**: :func:`qcourse.xnor.xnor_matmul` on the matrix packed into 64-bit words (1 bit per ±1):
  XOR with the packed vector, :func:`numpy.bitwise_count`, a sum per row, ``n − 2·popcount`` — plain
  numpy, no custom kernel (lesson 08 writes the fast one).

Both results are checked to be equal (the packed one is exact integer arithmetic; the float one is exact
because every partial sum is an integer below 2²⁴). Reported: the median seconds of each, the ratio
``packed / float`` (above 1: the numpy popcount path is slower), and the weight bytes of each.

>>> out = main(["--rows", "64", "--cols", "100", "--repeats", "1"])
>>> out["equal"], out["bytes"]["packed"], out["bytes"]["float32"]
(True, 1024, 25600)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from qcourse import xnor
from qcourse.bench import ArgumentParser, median_seconds, non_negative_int, positive_int
from qcourse.machine import machine_info


def main(argv: Sequence[str] = ()) -> dict[str, Any]:
    p = ArgumentParser(prog="python -m qcourse.bench binary", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=positive_int, default=4096, help="output features (4096)")
    p.add_argument("--cols", type=positive_int, default=4096, help="input features (4096)")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed runs per figure (7)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (1)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(list(argv))
    rng = np.random.default_rng(args.seed)
    w = np.where(rng.random((args.rows, args.cols)) < 0.5, -1, 1).astype(np.int8)
    x = np.where(rng.random(args.cols) < 0.5, -1, 1).astype(np.int8)
    w_words, x_words = xnor.pack_signs(w), xnor.pack_signs(x)
    w_f, x_f = torch.from_numpy(w).float(), torch.from_numpy(x).float()
    prev = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        y_packed = xnor.xnor_matmul(w_words, x_words, args.cols)
        y_float = torch.mv(w_f, x_f)
        equal = bool(np.array_equal(y_packed, y_float.numpy().astype(np.int64)))
        t_float = median_seconds(lambda: torch.mv(w_f, x_f), args.repeats)
        t_packed = median_seconds(lambda: xnor.xnor_matmul(w_words, x_words, args.cols), args.repeats)
    finally:
        torch.set_num_threads(prev)
    return {
        "config": {"rows": args.rows, "cols": args.cols, "repeats": args.repeats, "threads": args.threads,
                   "seed": args.seed, "word_bits": 64},
        "equal": equal,
        "seconds": {"float": t_float, "packed": t_packed},
        "packed_over_float": t_packed / t_float,
        "bytes": {"float32": int(w_f.numel() * 4), "packed": int(w_words.nbytes)},
        "machine": machine_info(args.threads),
    }
