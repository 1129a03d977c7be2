"""``python -m qcourse.bench kernels``: packed GEMV/GEMM kernels against torch fp32 ``F.linear``, and this
machine's limits measured in the same run.

For every format (``int4``, ``int2`` with fp16 scale and integer zero per 64 inputs; ``ternary`` and
``ternary-lut``, trits in the 2-bit packing; ``binary``, ±1 weights and activations in 64-bit words;
``aqlm-2x8``, two 256-entry codebooks per group of 8 inputs and an fp16 scale per row), thread
count and batch size the benchmark times the numba kernel of :mod:`qcourse.kernels.cpu` and torch's
``F.linear`` on a float32 weight of the same shape, side by side, medians of ``--repeats`` runs.

* ``copy_gb_s``: bytes read plus bytes written per second by a 256 MiB array copy (``Tensor.copy_``), the
  roofline's memory limit; ``matmul_gflops``: a float32 ``torch.mm`` of 2048² matrices (``2n³`` flops);
  both at one thread, and per thread count under ``limits``.
* per row: ``seconds`` (kernel, including the activation packing the kernel needs), ``torch_seconds``,
  ``speedup = torch_seconds / seconds``, ``cpu_seconds``/``torch_cpu_seconds``/``cpu_speedup`` the same
  by process CPU time (all threads; the steadier figure on a busy machine at one thread), ``gb_s`` = weight
  bytes the kernel reads per second,
  ``bandwidth_fraction = gb_s / copy_gb_s`` at that thread count. ``int4``, ``int2`` and ``ternary`` run
  the tiled kernels (:func:`qcourse.kernels.cpu.prepare_affine`), whose bytes are the codes plus float32
  scales and scaled zeros (``int4``: 4.5 bits per weight read, ``int2``: 2.5; stored: 4.375 and 2.375).
* ``decode``: greedy decoding at batch 1 (:func:`qcourse.lm.decode.decode_speed`, same prompt and
  number of new tokens) of each model in ``--decode-models``, float against every linear of its blocks
  packed by :func:`qcourse.lm.decode.pack_model` (RTN, groups of 64 inputs), with the output head float
  (as in the course's tables) and packed too (``head``), at 4 and 2 bits and every thread count:
  ``tokens_per_second``,
  ``float_tokens_per_second``, ``speedup`` and ``cpu_speedup`` (by CPU time).

A weight smaller than 64 MiB would sit in the last-level cache after the first call and be timed faster than
memory allows, so each format cycles through enough distinct copies of its packed weight to read at least
64 MiB between two uses of one copy. Formats without a CPU kernel yet are listed under ``missing``.

Run it with ``OMP_WAIT_POLICY=PASSIVE`` (the Makefile exports it): torch and numba each keep an OpenMP
thread pool, and with the default policy idle threads of one spin on the cores the other needs, which
makes every multi-thread figure several times too slow on a 2-core machine (``notes`` says so).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from qcourse import packing, xnor
from qcourse.bench import ArgumentParser, median_seconds, non_negative_int, positive_int
from qcourse.machine import machine_info

FORMATS = ("int4", "int2", "ternary", "ternary-lut", "binary", "aqlm-2x8", "e8p")
MISSING: tuple[str, ...] = ()
GROUP = 64



def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if not vals or any(v < 1 for v in vals):
        import argparse

        raise argparse.ArgumentTypeError(
            f"must be a positive integer or a comma-separated list of them; got {text!r}")
    return vals


def _format_list(text: str) -> list[str]:
    names = text.split(",")
    bad = [n for n in names if n not in FORMATS]
    if bad:
        import argparse

        raise argparse.ArgumentTypeError(f"formats must be among {','.join(FORMATS)}; got {','.join(bad)}")
    return names


def _wall_and_cpu(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median wall-clock and median process CPU seconds of ``fn`` over ``repeats`` runs, after one warm-up.

    On a shared machine the wall clock also counts time other programs held the core; at one thread the CPU
    time does not, so the bench reports both (``cpu_speedup`` beside ``speedup``).
    """
    import statistics
    import time

    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def copy_gb_s(nbytes: int, repeats: int) -> float:
    """Read + write bandwidth of a ``nbytes`` tensor copy, in GB/s (10⁹ bytes)."""
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return 2 * nbytes / median_seconds(lambda: dst.copy_(src), repeats) / 1e9


def matmul_gflops(n: int, repeats: int) -> float:
    """Float32 ``torch.mm`` of two ``n × n`` matrices: ``2n³`` flops per second, in GFLOP/s."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def _kernel(fmt: str, n: int, k: int, copies: int, rng: np.random.Generator
            ) -> tuple[Callable[[torch.Tensor], Any], int]:
    """A callable ``x -> y`` cycling over ``copies`` packed weights, and the bytes of one weight."""
    from qcourse.kernels import cpu

    state = {"i": 0}

    def nxt(items: list) -> Any:
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    if fmt == "binary":
        words = [rng.integers(0, 2**63, (n, -(-k // 64)), dtype=np.uint64) for _ in range(copies)]

        def run(x: torch.Tensor) -> Any:
            return cpu.gemm_binary(nxt(words), xnor.pack_signs(xnor.binarize(x).numpy()), k)

        return run, words[0].nbytes
    if fmt == "aqlm-2x8":
        from qcourse.methods.aqlm import AQLMWeight

        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        weights = [AQLMWeight(torch.randint(0, 256, (n, k // 8, 2), generator=g),
                              torch.randn(2, 256, 8, generator=g), torch.rand(n, generator=g) + 0.5)
                   for _ in range(copies)]

        def run(x: torch.Tensor) -> Any:
            return cpu.gemm_aqlm8(x, nxt(weights))

        return run, weights[0].storage_bits // 8
    if fmt == "e8p":
        from qcourse.methods.quip import QuIPWeight, incoherence_signs

        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        s_out, s_in = incoherence_signs(n, k, seed=int(rng.integers(2**31)))
        codes = [cpu.prepare_e8p(QuIPWeight((n, k), 2, "e8p",
                                            torch.randint(0, 2**16, (n, k // 8, 1), generator=g),
                                            torch.tensor(0.01), s_out, s_in)) for _ in range(copies)]

        def run(x: torch.Tensor) -> Any:
            return cpu.gemm_e8p(x, nxt(codes))

        # codes, the float32 scale and the sign vectors at one bit each (the 2 MiB table is shared)
        return run, codes[0].nbytes + 4 + (n + k) // 8
    bits = 4 if fmt == "int4" else 2
    nbytes = n * k * bits // 8
    levels = 2**bits if fmt.startswith("int") else 3  # trits are codes 0, 1, 2
    first = packing.pack(torch.from_numpy(rng.integers(0, levels, n * k, dtype=np.uint8)), bits)
    if fmt == "ternary-lut":
        packed = [first] + [first.clone() for _ in range(copies - 1)]

        def run(x: torch.Tensor) -> Any:
            return cpu.gemm_ternary_lut(x, nxt(packed), (n, k), 0.5)

        return run, nbytes + 4
    if fmt.startswith("int"):
        ng = n * k // GROUP
        scale = torch.from_numpy(rng.random(ng, dtype=np.float32)).half().float()
        zero = torch.from_numpy(rng.integers(0, 2**bits, ng).astype(np.float32))
        tiles = [cpu.prepare_affine(first, bits, (n, k), GROUP, scale, zero) for _ in range(copies)]
    else:
        tiles = [cpu.prepare_ternary(first, (n, k), 0.5) for _ in range(copies)]

    def run(x: torch.Tensor) -> Any:
        return cpu.gemm_tiles(x, nxt(tiles))

    return run, tiles[0].nbytes


def main(argv: Sequence[str] = ()) -> dict[str, Any]:
    p = ArgumentParser(prog="python -m qcourse.bench kernels", description=__doc__.splitlines()[0])
    p.add_argument("--size", type=positive_int, default=8192, help="out = in features (8192)")
    p.add_argument("--threads", type=_int_list, default=[1, 2], help="thread counts (1,2)")
    p.add_argument("--batches", type=_int_list, default=[1, 4, 16], help="batch sizes (1,4,16)")
    p.add_argument("--formats", type=_format_list, default=list(FORMATS), help=",".join(FORMATS))
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per figure (3)")
    p.add_argument("--min-bytes", type=non_negative_int, default=64 * 2**20,
                   help="bytes read between two uses of one weight copy (64 MiB, beats the cache)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--decode-models", type=_model_list, default=["austen", "smollm2-135m"],
                   help="models for the decoding rows, comma-separated, or 'none' (austen,smollm2-135m; "
                        "SmolLM2 only when its wheel is installed)")
    p.add_argument("--decode-bits", type=_int_list, default=[4, 2], help="packed widths (4,2)")
    p.add_argument("--decode-tokens", type=positive_int, default=16, help="new tokens per run (16)")
    p.add_argument("--decode-repeats", type=positive_int, default=2, help="timed runs per figure (2)")
    p.add_argument("--decode-heads", type=_head_list, default=["float", "packed"],
                   help="output head of the packed models: float, packed or both (float,packed)")
    args = p.parse_args(list(argv))
    if any(b not in (2, 4) for b in args.decode_bits):
        p.fail(f"--decode-bits must be among 4,2; got {args.decode_bits}")
    if args.size % 64:
        p.fail(f"--size must be a multiple of 64 (the int4/int2 group); got {args.size}")
    from qcourse.kernels import cpu

    if not cpu.AVAILABLE:
        p.fail("numba is not installed: the CPU kernels need the 'kernels' extra")
    import numba

    if max(args.threads) > numba.config.NUMBA_NUM_THREADS:
        p.fail(f"--threads at most {numba.config.NUMBA_NUM_THREADS} (NUMBA_NUM_THREADS) here")
    n = k = args.size
    rng = np.random.default_rng(args.seed)
    prev_torch, prev_numba = torch.get_num_threads(), numba.get_num_threads()
    limits: dict[str, dict[str, float]] = {}
    rows: list[dict[str, Any]] = []
    try:
        for t in args.threads:
            torch.set_num_threads(t)
            limits[str(t)] = {"copy_gb_s": copy_gb_s(256 * 2**20, args.repeats),
                              "matmul_gflops": matmul_gflops(2048, args.repeats)}
        w = torch.randn(n, k, generator=torch.Generator().manual_seed(args.seed))
        xs = {b: torch.randn(b, k, generator=torch.Generator().manual_seed(args.seed + b))
              for b in args.batches}
        torch_s = {}
        for t in args.threads:
            torch.set_num_threads(t)
            for b in args.batches:
                torch_s[t, b] = _wall_and_cpu(lambda b=b, w=w: F.linear(xs[b], w), args.repeats)
        del w  # 256 MiB at 8192²: free it before the packed weights are built
        for fmt in args.formats:
            bytes_one = n * k * {"int4": 4, "int2": 2, "binary": 1}.get(fmt, 2) // 8  # aqlm-2x8, e8p: 2 bits
            copies = max(1, -(-args.min_bytes // bytes_one))
            run, nbytes = _kernel(fmt, n, k, copies, rng)
            for t in args.threads:
                cpu.set_threads(t)
                torch.set_num_threads(t)
                for b in args.batches:
                    sec, cpu_sec = _wall_and_cpu(lambda b=b, run=run: run(xs[b]), args.repeats)
                    gb_s = nbytes / sec / 1e9
                    rows.append({"format": fmt, "shape": [n, k], "threads": t, "batch": b, "seconds": sec,
                                 "torch_seconds": torch_s[t, b][0], "speedup": torch_s[t, b][0] / sec,
                                 "cpu_seconds": cpu_sec, "torch_cpu_seconds": torch_s[t, b][1],
                                 "cpu_speedup": torch_s[t, b][1] / cpu_sec,
                                 "gb_s": gb_s, "bandwidth_fraction": gb_s / limits[str(t)]["copy_gb_s"],
                                 "weight_bytes": int(nbytes), "copies": copies})
    finally:
        torch.set_num_threads(prev_torch)
        cpu.set_threads(prev_numba)
    decode_rows = _decode_rows(args.decode_models, args.decode_bits, args.decode_heads, args.threads,
                               args.decode_tokens, args.decode_repeats)
    first = limits[str(args.threads[0])]
    notes = []
    if max(args.threads) > 1 and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        # measured here: 2-thread SmolLM2 decoding 2.0 tok/s float, 4.2 packed with the default policy;
        # 9.2 and 39.9 with PASSIVE
        notes.append("OMP_WAIT_POLICY is not PASSIVE: torch's and numba's OpenMP threads spin-wait against "
                     "each other, so the multi-thread figures are far too slow; rerun with "
                     "OMP_WAIT_POLICY=PASSIVE (the Makefile sets it)")
    return {"benchmark": "kernels", "machine": machine_info(args.threads[0]), "notes": notes,
            "copy_gb_s": first["copy_gb_s"], "matmul_gflops": first["matmul_gflops"], "limits": limits,
            "group_size": GROUP, "rows": rows, "missing": list(MISSING), "decode": decode_rows,
            "decode_prompt": DECODE_PROMPT}


#: the prompt every decoding row continues
DECODE_PROMPT = "It is a truth universally acknowledged"
DECODE_MODELS = ("austen", "smollm2-135m")


def _model_list(text: str) -> list[str]:
    if text == "none":
        return []
    names = text.split(",")
    bad = [n for n in names if n not in DECODE_MODELS]
    if bad:
        import argparse

        raise argparse.ArgumentTypeError(f"decode models must be among {','.join(DECODE_MODELS)} or 'none'; "
                                         f"got {','.join(bad)}")
    return names


def _head_list(text: str) -> list[str]:
    names = text.split(",")
    if not names or any(n not in ("float", "packed") for n in names):
        import argparse

        raise argparse.ArgumentTypeError(f"decode heads must be among float,packed; got {text!r}")
    return names


def _decode_rows(models: list[str], bits_list: list[int], heads: list[str], threads: list[int], tokens: int,
                 repeats: int) -> list[dict[str, Any]]:
    """Greedy tokens/s of each model, float and packed, side by side at each thread count."""
    from qcourse import lm
    from qcourse.lm import decode

    rows: list[dict[str, Any]] = []
    for name in models:
        if name == "smollm2-135m" and not lm.is_smollm2_available():
            continue
        model = lm.load(name)
        # the head (SmolLM2's is tied to the embedding: 28 M of its 135 M weights) stays float unless asked
        packed = {(b, h): decode.pack_model(model, bits=b, group_size=GROUP,
                                            exclude=("lm_head",) if h == "float" else ())
                  for h in heads for b in bits_list}
        for t in threads:
            ref = decode.decode_speed(model, DECODE_PROMPT, new_tokens=tokens, threads=t, repeats=repeats)
            for (b, head), (qmodel, used) in packed.items():
                r = decode.decode_speed(qmodel, DECODE_PROMPT, new_tokens=tokens, threads=t, repeats=repeats)
                rows.append({"model": name, "bits": b, "threads": t, "head": head,
                             "tokens_per_second": r["tokens_per_second"],
                             "float_tokens_per_second": ref["tokens_per_second"],
                             "speedup": r["tokens_per_second"] / ref["tokens_per_second"],
                             "cpu_speedup": ref["cpu_seconds"] / r["cpu_seconds"],
                             "decode_tokens_per_second": r["decode_tokens_per_second"],
                             "float_decode_tokens_per_second": ref["decode_tokens_per_second"],
                             "new_tokens": tokens, "prompt_tokens": r["prompt_tokens"],
                             "kernels": sorted(set(used.values())),
                             "text": r["text"], "float_text": ref["text"]})
    return rows
