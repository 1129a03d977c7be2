"""Capstone sweep: every method of the course on the embedded family or SmolLM2, one row per configuration.

``python -m qcourse.bench capstone --model austen`` runs :func:`qcourse.capstone.grid` over the embedded
family (``austen-small``, ``austen-medium``, ``austen`` and the trained ternary twin ``austen-bitnet``) with
:func:`qcourse.capstone.run`: float32; RTN, HQQ and GPTQ at 2, 3, 4 and 8 bits (groups of 64); AQLM 1×8 and
2×8; QuIP# at 2, 3 and 4 bits; ternary and binary PTQ. Each row is cached on disk (``--cache``), so an
interrupted sweep resumes where it stopped and a second run prints the table at once; ``--recompute`` runs
everything again. On the embedded family each row also gets decode tokens/s (greedy, batch 1, one thread)
where every quantized layer has a packed kernel, measured per model and format at the end of the run
(median of 5 rounds, formats interleaved: :func:`qcourse.capstone.decode_speeds`; ``--no-speed`` skips
it); the trained twin's BitLinear layers decode their trits, so its row has none. SmolLM2's rows get the
same per-format measurement (each format timed once on the whole model, shared by every row stored in it).

``--model smollm2-135m`` runs the same grid on SmolLM2-135M (AQLM only when named in ``--methods``: a
whole-model AQLM run takes about half an hour here). With ``--reuse-results`` (the default) a configuration
that already has a cached whole-model result in ``qcourse/data/results/`` (AQLM 2×8, QuIP# 2-bit, RTN and
HQQ at 3 bits: made with the same evaluation text, calibration and seed) is taken from that file, with its
``source_file`` and ``command``, instead of being run again.

It prints one JSON object ``{"command", "machine", "note", "rows", ...}``; ``--out FILE`` also writes it.

>>> args = parse_args(["--model", "austen", "--members", "austen-small", "--methods", "fp32,rtn"])
>>> args.members, args.methods, args.speed
(['austen-small'], ['fp32', 'rtn'], True)
>>> parse_args(["--methods", "rtn,nope"])
Traceback (most recent call last):
...
qcourse.bench.UsageError: argument --methods: unknown method label(s) ['nope']; choose from ...
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qcourse import capstone as C
from qcourse.bench import ArgumentParser, bits_list, names

#: cached whole-SmolLM2 results (same 2,048 validation tokens, 16×256 calibration, seed 0): file -> how to
#: read ``(method, bits, bits_per_weight, ppl, quantize_seconds)`` rows out of it
RESULT_FILES = ("aqlm_smollm2.json", "quip_smollm2.json", "hqq_controls_smollm2.json",
                "rtn_gptq2_smollm2.json")
_RESULTS_DIR = Path(C.__file__).parent / "data" / "results"


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m qcourse.bench capstone", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="austen", choices=["austen", "smollm2-135m"],
                   help="the embedded family (austen) or SmolLM2-135M")
    p.add_argument("--members", type=names, default=None,
                   help=f"embedded family members to run (default all: {','.join(C.FAMILY)})")
    p.add_argument("--methods", type=names, default=None,
                   help=f"method labels to run (default all): {','.join(C.SOURCES)}")
    p.add_argument("--bits", type=bits_list, default=None,
                   help="keep only these bit widths (default all; float rows are kept as 32)")
    p.add_argument("--cache", default=None, help="cache folder (default ~/.cache/qcourse/capstone)")
    p.add_argument("--recompute", action="store_true", help="ignore cached rows and compute them again")
    p.add_argument("--no-speed", dest="speed", action="store_false",
                   help="skip the decode tokens/s measurement")
    p.add_argument("--no-reuse-results", dest="reuse", action="store_false",
                   help="SmolLM2: run configurations that have a cached result file instead of reading it")
    p.add_argument("--extra-results", type=names, default=[],
                   help="SmolLM2: more cached result files ({command, result: bench quality output}) to read")
    p.add_argument("--cached-only", action="store_true",
                   help="compute nothing: list configurations with no cached row under 'missing'")
    p.add_argument("--out", default=None, help="also write the JSON to this file")
    p.add_argument("--progress", action="store_true", help="show a progress bar over configurations")
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate the options; :class:`~qcourse.bench.UsageError` on bad input."""
    p = _parser()
    args = p.parse_args(list(argv))
    if args.methods is not None:
        unknown = [m for m in args.methods if m not in C.SOURCES]
        if unknown:
            p.fail(f"argument --methods: unknown method label(s) {unknown}; choose from {list(C.SOURCES)}")
    if args.members is not None:
        if args.model != "austen":
            p.fail("argument --members: only with --model austen")
        unknown = [m for m in args.members if m not in C.FAMILY]
        if unknown:
            p.fail(f"argument --members: unknown member(s) {unknown}; choose from {list(C.FAMILY)}")
    elif args.model == "austen":
        args.members = list(C.FAMILY)
    return args


def configurations(args: argparse.Namespace) -> list[C.Config]:
    """The ``(model, method, bits)`` the command covers."""
    configs = C.grid(args.members if args.model == "austen" else ["smollm2-135m"], args.methods)
    if args.bits is not None:
        configs = [c for c in configs
                   if any(abs((32 if c[2] is None else c[2]) - b) < 1e-9 for b in args.bits)]
    if args.model == "austen":
        return configs
    if args.methods is None or "aqlm" not in args.methods:
        configs = [c for c in configs if c[1] != "aqlm" or (args.reuse and c[2] == 2)]
    return configs


def smollm2_float_bytes() -> tuple[int, int, int]:
    """SmolLM2's ``(float bytes kept when its block linears are quantized, weights quantized, params)``."""
    from torch import nn

    model = C._model("smollm2-135m")
    counts = C.byte_counts(model)
    quantized = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    q_weights = sum(m.weight.numel() for m in quantized)
    q_bytes = sum(m.weight.numel() * m.weight.element_size() for m in quantized)
    return counts["total"] - q_bytes, q_weights, C.count_params(model)


def _result_rows(extra: Sequence[str] = ()) -> dict[tuple[str, float], dict[str, Any]]:
    """``(method, bits) -> {bits_per_weight, ppl, quantize_seconds, source_file, command, fp_ppl}`` from the
    cached whole-SmolLM2 result files (those of :data:`RESULT_FILES` that exist, then ``extra`` paths)."""
    out: dict[tuple[str, float], dict[str, Any]] = {}
    paths = [_RESULTS_DIR / n for n in RESULT_FILES if (_RESULTS_DIR / n).is_file()]
    paths += [Path(p) for p in extra]
    for path in paths:
        name = path.name if path.parent == _RESULTS_DIR else str(path)
        if not path.is_file():
            raise FileNotFoundError(f"--extra-results: no file {path}")
        doc = json.loads(path.read_text())
        if "result" in doc:   # bench quality output wrapped with its command
            res = doc["result"]
            for r in res["rows"]:
                out[(r["method"], r["bits"])] = {
                    "bits_per_weight": r["bits_per_weight"], "ppl": r["ppl"],
                    "quantize_seconds": r["quantize_seconds"], "fp_ppl": res["fp_ppl"],
                    "tokens": res["tokens"],
                    "source_file": _shown(name), "command": doc["command"]}
        else:                 # bench hqq_controls: RTN and HQQ variants
            for r in doc["rows"]:
                if r["variant"] in ("rtn", "hqq"):
                    out[(r["variant"], r["bits"])] = {
                        "bits_per_weight": r["stored_bits_per_weight"], "ppl": r["ppl"],
                        "quantize_seconds": r["seconds"], "fp_ppl": doc["fp_ppl"], "tokens": doc["tokens"],
                        "source_file": _shown(name), "command": doc["command"]}
    return out


def _shown(name: str) -> str:
    return name if "/" in name else f"qcourse/data/results/{name}"


def assembled_row(method: str, bits: float, cached: dict[str, Any]) -> dict[str, Any]:
    """A capstone row for SmolLM2 from a cached whole-model result (bytes from its bits per weight).

    ``quantize_seconds`` there include calibration and were measured on the shared machine under load.
    """
    s = C.SETTINGS["smollm2-135m"]
    if cached["tokens"] != s["tokens"]:
        raise ValueError(f"{cached['source_file']} scored {cached['tokens']} tokens, not {s['tokens']}")
    float_bytes, q_weights, params = smollm2_float_bytes()
    quantized = math.ceil(cached["bits_per_weight"] * q_weights / 8)
    ppl = cached["ppl"]
    fp = C.run("smollm2-135m", "fp32")
    # same tokens, same text: bits per byte scales with the mean NLL per token
    bpb = fp["bits_per_byte"] * math.log(ppl) / math.log(fp["ppl"])
    affine = method in ("rtn", "hqq", "gptq")
    gs = C.GROUP_SIZE if affine else None
    # the packed format the row's layers are stored in (as run() reports it; 3-bit has no kernel); GPTQ
    # without act-order stores RTN's affine grid, which the int kernels read (qcourse.kernels.kernel_name)
    kernel = f"int{bits}" if affine and bits in (1, 2, 4, 8) else None
    if method == "aqlm":
        kernel = f"aqlm-{bits}x8"
    return {"model": "smollm2-135m", "params": params, "method": method, "bits": bits, "group_size": gs,
            "bits_per_weight": cached["bits_per_weight"], "model_bytes": float_bytes + quantized, "ppl": ppl,
            "bits_per_byte": bpb, "quantize_seconds": cached["quantize_seconds"], "tokens_per_second": None,
            "source": C.SOURCES[method], "family": "smollm2-135m", "quantized_bytes": quantized,
            "float_bytes": float_bytes, "config": f"{bits}x8" if method == "aqlm" else None, "kernel": kernel,
            "eval_tokens": s["tokens"], "eval_bytes": fp["eval_bytes"], "calibration": None,
            "eval_seconds": None, "source_file": cached["source_file"], "command": cached["command"]}


def speed_format(row: dict[str, Any]) -> str | None:
    """The format of :func:`qcourse.capstone.decode_speeds` whose tokens/s ``row`` gets: ``"float"`` for
    float32, the row's packed ``kernel`` otherwise (E8P timed at 2 bits only: QuIP#'s 3- and 4-bit add
    residual stages), ``None`` for formats with no packed kernel (and the trained twin's BitLinear rows).

    >>> speed_format({"method": "fp32", "bits": None, "kernel": None})
    'float'
    >>> speed_format({"method": "gptq", "bits": 4, "kernel": "int4"}), speed_format({"method": "quip",
    ...     "bits": 3, "kernel": "e8p"}), speed_format({"method": "rtn", "bits": 3, "kernel": None})
    ('int4', None, None)
    """
    if row["method"] == "fp32":
        return "float"
    fmt = row["kernel"]
    if fmt not in C.SPEED_FORMATS or (fmt == "e8p" and row["bits"] != 2):
        return None
    return fmt


def attach_speeds(rows: list[dict[str, Any]], speeds: dict[str, dict[str, float | None]]) -> None:
    """Set each row's ``tokens_per_second`` to ``speeds[row model][its speed_format]`` (``None`` when the
    row has no packed format or it was not timed): speed depends on the storage format, not the rounding,
    so every row of a format shares one measurement."""
    for r in rows:
        fmt = speed_format(r)
        r["tokens_per_second"] = speeds.get(r["model"], {}).get(fmt) if fmt else None


def main(argv: Sequence[str]) -> dict[str, Any]:
    """Run the sweep described by ``argv`` and return the JSON-ready table."""
    from qcourse.bench.quality import _machine
    from qcourse.notebook import seed_everything

    args = parse_args(argv)
    seed_everything(0)
    started = time.perf_counter()
    configs = configurations(args)
    reuse = _result_rows(args.extra_results) if args.model == "smollm2-135m" and args.reuse else {}
    it: Any = configs
    if args.progress:
        from tqdm.auto import tqdm

        it = tqdm(configs, desc="capstone", unit="config")
    rows, missing = [], []
    for model, method, bits in it:
        cached = C.cache_path(model, method, bits, directory=args.cache).is_file() and not args.recompute
        if not cached and (method, bits) in reuse:
            rows.append(assembled_row(method, bits, reuse[(method, bits)]))
        elif cached or not args.cached_only:
            rows.append(C.run(model, method, bits, cache=args.cache, recompute=args.recompute))
        else:
            missing.append({"model": model, "method": method, "bits": bits})
    for r in rows:
        # the packed kernel of each row's format as the package has it now (rows cached earlier included)
        r["kernel"] = C.format_kernel(r["method"], r["bits"], r.get("config"))
    speeds = {}
    if args.speed:
        # one pass per model over the packed formats its rows use, side by side at the end (ratios compare;
        # see decode_speeds); a whole SmolLM2 is timed once per format, not once per row
        for model in dict.fromkeys(r["model"] for r in rows if r["model"] in (*C.FAMILY, "smollm2-135m")):
            formats = [f for f in C.SPEED_FORMATS
                       if any(r["model"] == model and speed_format(r) == f for r in rows)]
            speeds[model] = C.decode_speeds(model, formats) if formats else {}
        attach_speeds(rows, speeds)
    fam = "embedded" if args.model == "austen" else "smollm2-135m"
    s = C.SETTINGS[fam]
    note = (f"every nn.Linear except lm_head quantized; model_bytes counts everything stored (float tensors "
            f"at float32); scored on the first {s['tokens']:,} {s['split']} tokens; calibration (GPTQ, AQLM, "
            f"QuIP#) {s['calib_sequences']}x{s['calib_seq_len']} training-split tokens, seed {s['seed']}; "
            f"RTN/HQQ/GPTQ groups of {C.GROUP_SIZE}; timings on a shared machine under load")
    out = {"command": "python -m qcourse.bench capstone " + " ".join(argv), **_machine(), "note": note,
           "settings": s, "speed": {**C.SPEED, "tokens_per_second": speeds} if speeds else None,
           "rows": rows, "missing": missing, "total_seconds": time.perf_counter() - started}
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out
