"""Rate–distortion benchmark: quantizers against the bound, and bits allocated by reverse water-filling.

``python -m qcourse.bench rd`` prints one JSON object with three tables:

- ``lloyd_max``: the Gaussian Lloyd–Max quantizer at 2, 3, 4, 8 and 16 levels (exact MSE, gap to ``D(R)``);
- ``gaussian``: every quantizer the course builds, run on N(0, 1) samples (or computed exactly where it is a
  fixed scalar rule), with its honest bits per weight, its MSE and the Shannon bound ``2^(−2·bpw)`` there;
- ``allocation``: on each model (``--models austen,smollm2-135m``), for each average budget (``--budgets
  3,2.5``), the perplexity of a sensitivity-blind uniform plan and of the water-filling plan of
  :func:`qcourse.theory.allocate_bits` (per-layer losses ``tr(ΔW H ΔWᵀ)`` measured with ``--method`` at
  each of ``--choices`` bits on calibration data from the train split), quantized with the same method.

``--skip-allocation`` leaves out the (slow) model part; ``--output PATH`` also writes the JSON to a file.

>>> args = parse_args(["--models", "austen", "--budgets", "3", "--skip-allocation"])
>>> args.models, args.budgets, args.choices, args.skip_allocation
(['austen'], [3.0], [2, 3, 4], True)
>>> parse_args(["--budgets", "5"])
Traceback (most recent call last):
...
qcourse.bench.UsageError: --budgets must lie between the smallest and largest --choices [2, 3, 4]; got 5.0
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qcourse import theory as T
from qcourse.bench import ArgumentParser, group_size, non_negative_int, positive_int
from qcourse.bench.quality import DEFAULTS, _machine

LLOYD_MAX_LEVELS = (2, 3, 4, 8, 16)


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas; got {text!r}") from None


def _ints(text: str) -> list[int]:
    try:
        return sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas; got {text!r}") from None


def _models(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in DEFAULTS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"models must be among {sorted(DEFAULTS)}; got {text!r}")
    return names


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate the options; :class:`~qcourse.bench.UsageError` (a ``ValueError``) on bad input."""
    p = ArgumentParser(prog="python -m qcourse.bench rd", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=_models, default=["austen", "smollm2-135m"])
    p.add_argument("--budgets", type=_floats, default=[3.0, 2.5], help="average code bits per weight")
    p.add_argument("--choices", type=_ints, default=[2, 3, 4], help="bit widths a layer may get")
    p.add_argument("--method", default="rtn", help="quantizer for the allocation experiment (rtn, gptq, hqq)")
    p.add_argument("--group-size", type=group_size, default=64)
    p.add_argument("--samples", type=positive_int, default=1 << 18, help="N(0, 1) samples (gaussian table)")
    p.add_argument("--tokens", type=positive_int, default=None, help="evaluation tokens (model default)")
    p.add_argument("--calib-sequences", type=positive_int, default=None)
    p.add_argument("--calib-seq-len", type=positive_int, default=None)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--skip-allocation", action="store_true")
    p.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(list(argv))
    for b in args.budgets:
        if not args.choices[0] <= b <= args.choices[-1]:
            p.fail(f"--budgets must lie between the smallest and largest --choices {args.choices}; got {b}")
    from qcourse import methods

    if args.method not in methods.available():
        p.fail(f"--method must be one of {methods.available()}; got {args.method!r}")
    bad = [b for b in args.choices if b not in methods.get(args.method).supported_bits]
    if bad:
        p.fail(f"--choices {bad} not supported by --method {args.method}")
    if args.samples % 1024:
        p.fail("--samples must be a multiple of 1024 (the test matrix has 1024 columns)")
    if args.group_size is None or 1024 % args.group_size:
        p.fail("--group-size must divide 1024 (the Gaussian test matrix's row length)")
    return args


def lloyd_max_table() -> list[dict[str, Any]]:
    """Gaussian Lloyd–Max rows: levels, MSE, the bound at ``log2(levels)`` bits and the gap in dB."""
    g = T.gaussian()
    rows = []
    for n in LLOYD_MAX_LEVELS:
        q = T.lloyd_max(g, n)
        mse = q.mse(g)
        rows.append({"levels": n, "bits": math.log2(n), "mse": mse,
                     "bound": T.gaussian_distortion_rate(math.log2(n)), "gap_db": T.gap_db(mse, math.log2(n)),
                     "positive_levels": [float(v) for v in q.levels if v > 1e-12]})
    return rows


def gaussian_table(
    samples: int = 1 << 18, seed: int = 0, group_size: int = 64, trellis_samples: int = 8192
) -> list[dict[str, Any]]:
    """Every quantizer on N(0, 1): ``{"method", "bits_per_weight", "mse", "bound", "gap_db", "how"}`` rows.

    Package methods (RTN, HQQ, E8P, k-means VQ) run on ``samples`` seeded Gaussian weights with their
    stored scales counted in ``bits_per_weight``; fixed scalar rules (Lloyd–Max, best uniform, absmean
    ternary, sign binary, entropy-coded uniform) are integrated exactly. The tail-biting bitshift trellis
    (:func:`qcourse.theory.trellis_quantize`, 2^14 states, sequences of 256) runs on the first
    ``trellis_samples`` samples (0 leaves it out: it is the slow row).
    """
    from qcourse import lattice, methods
    from qcourse.kmeans import assign, kmeans

    g = T.gaussian()
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(samples // 1024, 1024, generator=gen, dtype=torch.float64).float()
    rows: list[dict[str, Any]] = []

    def add(method: str, bpw: float, mse: float, how: str) -> None:
        bound = T.gaussian_distortion_rate(bpw)
        rows.append({"method": method, "bits_per_weight": bpw, "mse": mse, "bound": bound,
                     "gap_db": T.gap_db(mse, bpw), "how": how})

    for bits in (1, 2, 3, 4):
        add("lloyd-max", bits, T.lloyd_max(g, 2**bits).mse(g), "exact")
        add("uniform (best step)", bits, T.best_uniform(g, 2**bits).mse(g), "exact")
    add("lloyd-max ternary", math.log2(3), T.lloyd_max(g, 3).mse(g), "exact")
    gamma = math.sqrt(2 / math.pi)
    absmean = T.ScalarQuantizer(np.array([-gamma, 0.0, gamma]), np.array([-gamma / 2, gamma / 2]))
    add("absmean ternary (BitNet)", math.log2(3), absmean.mse(g), "exact")
    binary = T.ScalarQuantizer(np.array([-gamma, gamma]), np.array([0.0]))
    add("binary sign·E|x|", 1.0, binary.mse(g), "exact")
    for step in (1.7, 0.9, 0.45):
        rate, mse = T.entropy_coded_uniform(g, step, centroid=True)
        add(f"entropy-coded uniform (step {step})", rate, mse, "exact; rate = output entropy")
    for name, bit_list in (("rtn", (1, 2, 3, 4)), ("hqq", (2, 3, 4))):
        m = methods.get(name)
        for bits in bit_list:
            qw = m.quantize(w, bits=bits, group_size=group_size, seed=seed)
            mse = float(((w - qw.dequantize().float()) ** 2).mean())
            add(f"{name} g{group_size}", float(qw.bits_per_weight), mse, f"{samples} samples")
    # E8P: scale the unit-RMS 8-vectors to RMS ρ ≈ 1.03 (QuIP#'s Gaussian-MSE-optimal scale), round, undo
    rho = 1.03
    x8 = w.double().reshape(-1, 8)
    _, pts = lattice.e8p_encode(x8 * rho)
    add("e8p (QuIP#)", 2.0, float(((x8 - pts / rho) ** 2).mean()), f"{samples} samples, rho {rho}")
    # a learned 4-D codebook with 256 entries (2 bits/weight): the k-means VQ at the heart of AQLM, trained
    # on separate samples so the score is out of sample (codebook bits are not counted: shared by a layer)
    x4 = w.double().reshape(-1, 4)
    train = torch.randn(32768, 4, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    res = kmeans(train, 256, n_iter=40, seed=seed)
    _, d2 = assign(x4, res.centroids)
    add("k-means VQ 4-D, 256 codes (AQLM-style)", 2.0, float(d2.mean()) / 4, f"{samples} samples")
    if trellis_samples:
        x = w.double().flatten()[: trellis_samples - trellis_samples % 256].numpy()
        y = np.concatenate([T.trellis_quantize(x[i:i + 256], 14, 2, seed) for i in range(0, x.size, 256)])
        add("bitshift trellis L=14 (QTIP-style)", 2.0, float(np.mean((x - y) ** 2)),
            f"{x.size} samples, tail-biting, sequences of 256")
    return rows


def allocation_rows(args: argparse.Namespace, model_name: str) -> list[dict[str, Any]]:
    """Uniform versus water-filling plans on one model, for every budget in ``args.budgets``."""
    from qcourse import lm
    from qcourse.lm import corpus
    from qcourse.nn import collect_hessians, linear_layers, quantize_model

    defaults = DEFAULTS[model_name]
    tokens = args.tokens or defaults["tokens"]
    model = lm.load(model_name).eval()
    calib = corpus.calibration_tokens(
        model.tokenizer, args.calib_sequences or defaults["calib_sequences"],
        args.calib_seq_len or defaults["calib_seq_len"], seed=args.seed,
    )
    t0 = time.perf_counter()
    names = list(linear_layers(model, exclude=("lm_head",)))
    hessians = collect_hessians(model, calib, include=names)
    sizes, losses = T.layer_losses(model, args.method, args.choices, hessians, args.group_size, args.seed)
    del hessians
    measure_seconds = time.perf_counter() - t0
    fp_ppl = float(lm.perplexity(model, tokens=tokens))
    m_calib = calib if args.method in ("gptq", "aqlm", "quip") else None
    rows = []
    for budget in args.budgets:
        plan = T.allocate_bits(sizes, losses, budget)
        uniform = T.uniform_plan(sizes, budget, args.choices)
        scored = {}
        for label, bits in (("uniform", uniform), ("plan", plan.bits)):
            qmodel, report = quantize_model(model, args.method, bits=bits, group_size=args.group_size,
                                            calib=m_calib, seed=args.seed, progress=False)
            scored[label] = (float(lm.perplexity(qmodel, tokens=tokens)), report.bits_per_weight)
            del qmodel
        rows.append({
            "model": model_name, "method": args.method, "group_size": args.group_size,
            "budget_bpw": budget, "fp_ppl": fp_ppl,
            "uniform_ppl": scored["uniform"][0], "plan_ppl": scored["plan"][0],
            "improvement": 1 - scored["plan"][0] / scored["uniform"][0],
            "uniform_bits_per_weight": scored["uniform"][1], "plan_bits_per_weight": scored["plan"][1],
            "uniform_predicted_loss": plan.uniform_loss, "plan_predicted_loss": plan.predicted_loss,
            "plan_counts": {str(k): v for k, v in plan.counts().items()},
            "plan": plan.bits, "tokens": tokens, "measure_seconds": measure_seconds,
        })
    return rows


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run the benchmark described by ``argv`` and return the JSON-ready result."""
    from qcourse.notebook import seed_everything

    args = parse_args(argv)
    seed_everything(args.seed)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "rd",
        "lloyd_max": lloyd_max_table(),
        "gaussian": gaussian_table(args.samples, args.seed, args.group_size),
        "allocation": [],
    }
    if not args.skip_allocation:
        for name in args.models:
            result["allocation"] += allocation_rows(args, name)
    result.update({
        "command": "python -m qcourse.bench rd " + " ".join(argv),
        "seed": args.seed, "total_seconds": time.perf_counter() - started, **_machine(),
    })
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    return result
