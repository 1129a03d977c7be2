"""Quality benchmark: perplexity of a language model quantized by each method at each bit width.

``python -m qcourse.bench quality --methods rtn,hqq,gptq --bits 2,3,4 --group-size 64`` loads the model
(``--model austen``, the embedded model, or ``smollm2-135m``), scores it in full precision, then for every
method × bits quantizes its block linears (``lm_head`` stays in float, as in the course's tables) with
:func:`qcourse.nn.quantize_model` and scores the copy on the same tokens. Calibration-aware methods get
``--calib-sequences`` random windows of ``--calib-seq-len`` tokens from the *train* split; evaluation uses
``--split`` (validation by default), so calibration never sees the evaluation text. Everything is seeded.

It prints one JSON object::

    {"model": ..., "split": ..., "tokens": ..., "fp_ppl": ...,
     "rows": [{"method": ..., "bits": ..., "group_size": ..., "bits_per_weight": ..., "ppl": ...,
               "quantize_seconds": ...}, ...], ...}

plus context fields (calibration settings, seed, torch version and threads, machine) and, per row, the
perplexity ratio to full precision, the size-weighted relative weight error and the evaluation time.
Times are measured, never asserted: a slow machine gives slower numbers, not a failure.

``--methods`` accepts every name in :func:`qcourse.methods.available` (``all`` for all of them, each at
the requested widths it supports; the others are listed under ``"skipped"``), so a new method is
benchmarked as soon as it is registered. A method that declares ``uses_group_size = False``
(its own structure, e.g. codebooks or a ternary scale per tensor) is run without a group size, and its rows
say ``"group_size": null``. Bad options, a method name that does not exist and a bit width a method does
not support are refused before any work starts (a :class:`~qcourse.bench.UsageError`; from the command
line, a usage line and exit status 2).

>>> args = parse_args(["--methods", "rtn", "--bits", "2,4", "--group-size", "none"])
>>> args.methods, args.bits, args.group_size, args.tokens
(['rtn'], [2, 4], None, 65536)
>>> parse_args(["--bits", "4,x"])
Traceback (most recent call last):
...
qcourse.bench.UsageError: argument --bits: bits must be numbers separated by commas, e.g. 2,3,4; got '4,x'
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch

import qcourse
from qcourse.bench import ArgumentParser, bits_list, group_size, names, non_negative_int, positive_int
from qcourse.machine import machine_info

#: per-model defaults: evaluation tokens, calibration sequences and their length
DEFAULTS = {
    "austen": {"tokens": 65536, "calib_sequences": 128, "calib_seq_len": 256},
    "smollm2-135m": {"tokens": 8192, "calib_sequences": 32, "calib_seq_len": 512},
}


def _parser() -> ArgumentParser:
    from qcourse import methods

    p = ArgumentParser(prog="python -m qcourse.bench quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="austen", choices=sorted(DEFAULTS), help="model to quantize")
    p.add_argument("--methods", type=names, default=["rtn"],
                   help=f"comma-separated methods, or 'all'; available: {','.join(methods.available())}")
    p.add_argument("--bits", type=bits_list, default=[2, 3, 4, 8], help="comma-separated bit widths")
    p.add_argument("--group-size", type=group_size, default=64, help="group size, or 'none' for per-channel")
    p.add_argument("--split", default="validation", choices=["train", "validation", "test"])
    p.add_argument(
        "--tokens", type=positive_int, default=None, help="evaluation tokens (model-dependent default)"
    )
    p.add_argument(
        "--calib-sequences", type=positive_int, default=None, help="calibration sequences (train split)"
    )
    p.add_argument("--calib-seq-len", type=positive_int, default=None, help="calibration sequence length")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed for calibration sampling and the methods")
    p.add_argument(
        "--gram-dtype",
        choices=["float64", "float32"],
        default="float64",
        help="precision of each calibration batch's x^T x (sums are float64 either way; float32 ~3x faster)",
    )
    p.add_argument(
        "--true-sequential",
        action="store_true",
        help="calibration-aware methods: quantize q/k/v, o, gate/up, down in turn within each block",
    )
    p.add_argument("--progress", action="store_true", help="show progress bars on stderr")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate the options (model-dependent defaults filled in; ``all`` expanded to every
    registered method); :class:`~qcourse.bench.UsageError` (a ``ValueError``) on bad input."""
    from qcourse import methods

    p = _parser()
    args = p.parse_args(list(argv))
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    known = methods.available()
    every = args.methods == ["all"]
    if every:
        args.methods = list(known)
    unknown = [m for m in args.methods if m not in known]
    if unknown:
        p.fail(f"argument --methods: unknown method(s) {unknown}; available: {known} (or 'all')")
    args.resolved = [methods.get(name) for name in args.methods]
    # (method, bits) to run; with 'all', a width a method does not support is skipped (and reported),
    # a method named explicitly must support every width asked for
    args.runs, args.skipped = [], []
    for m in args.resolved:
        bad = [b for b in args.bits if b not in m.supported_bits]
        if bad and not every:
            p.fail(f"argument --bits: {bad} not supported by method {m.name!r}; it supports "
                   f"{list(m.supported_bits)}")
        args.runs += [(m, b) for b in args.bits if b not in bad]
        args.skipped += [{"method": m.name, "bits": b, "supported_bits": list(m.supported_bits)} for b in bad]
    if not args.runs:
        p.fail(f"argument --bits: no method supports {args.bits}")
    return args


def uses_group_size(method: Any) -> bool:
    """Whether ``method`` takes a group size (``Method.uses_group_size``; True where it does not say)."""
    return bool(getattr(method, "uses_group_size", True))


def _machine() -> dict[str, Any]:
    info = machine_info()
    return {"machine": info["machine"], "cpu": info["cpu"], "torch": info["torch"],
            "torch_threads": info["threads"], "python": info["python"], "qcourse": qcourse.__version__}


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run the benchmark described by ``argv`` and return the JSON-ready result."""
    from qcourse import lm
    from qcourse.lm import corpus
    from qcourse.nn import quantize_model
    from qcourse.notebook import seed_everything

    args = parse_args(argv)
    resolved = list({m.name: m for m, _ in args.runs}.values())  # methods with something to run
    seed_everything(args.seed)
    started = time.perf_counter()

    t0 = time.perf_counter()
    model = lm.load(args.model)
    load_seconds = time.perf_counter() - t0
    model.eval()

    def score(m: torch.nn.Module) -> tuple[float, float]:
        t = time.perf_counter()
        ppl = lm.perplexity(m, split=args.split, tokens=args.tokens, progress=args.progress)
        return float(ppl), time.perf_counter() - t

    fp_ppl, fp_seconds = score(model)
    calib = None
    if any(m.needs_hessian for m in resolved):
        calib = corpus.calibration_tokens(
            model.tokenizer, args.calib_sequences, args.calib_seq_len, seed=args.seed
        )

    rows = []
    for m, bits in args.runs:
        gs = args.group_size if uses_group_size(m) else None
        qmodel, report = quantize_model(
            model,
            m,
            bits=bits,
            group_size=gs,
            calib=calib if m.needs_hessian else None,
            true_sequential=args.true_sequential and m.needs_hessian,
            gram_dtype=getattr(torch, args.gram_dtype),
            seed=args.seed,
            progress=args.progress,
        )
        ppl, eval_seconds = score(qmodel)
        rows.append(
            {
                "method": m.name,
                "bits": bits,
                "group_size": gs,
                "bits_per_weight": report.bits_per_weight,
                "ppl": ppl,
                "ppl_ratio": ppl / fp_ppl,
                "rel_error": report.rel_error,
                "layers": len(report),
                "quantize_seconds": report.seconds,
                "eval_seconds": eval_seconds,
            }
        )
        del qmodel

    return {
        "benchmark": "quality",
        "model": args.model,
        "split": args.split,
        "tokens": args.tokens,
        "fp_ppl": fp_ppl,
        "rows": rows,
        "skipped": args.skipped,
        "group_size": args.group_size,
        "quantized": "every nn.Linear except lm_head",
        "calibration": (
            None
            if calib is None
            else {
                "split": "train",
                "sequences": args.calib_sequences,
                "seq_len": args.calib_seq_len,
                "true_sequential": args.true_sequential,
                "gram_dtype": args.gram_dtype,
            }
        ),
        "seed": args.seed,
        "load_seconds": load_seconds,
        "fp_eval_seconds": fp_seconds,
        "total_seconds": time.perf_counter() - started,
        **_machine(),
    }
