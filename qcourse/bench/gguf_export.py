"""``python -m qcourse.bench gguf_export``: a whole model as llama.cpp GGUF files, RTN vs GPTQ rounding.

For each type (``--types``, default ``Q4_0,Q2_K``) every block linear is encoded twice into the same llama.cpp
block type, by :func:`qcourse.lm.gguf_export.kquant_tensors`:

* ``rtn``: llama.cpp's reference encoder (what ``llama-quantize`` does without an importance matrix);
* ``gptq``: GPTQ's error feedback on the type's own grid (``H = E[x xᵀ]`` of each layer's inputs, collected
  once on the full-precision model from ``--calib`` train windows of ``--calib-len`` tokens).

Embeddings, norms and the head stay F32. Each variant is written to a GGUF file (in ``--dir``, default a
temporary folder) whose size is reported, next to the bytes of the k-quant tensors alone; the perplexity
and bits per byte on ``--tokens`` validation tokens are measured on the model holding the dequantized
weights, which computes exactly what the file decodes to (the tests check identical logits after
``load_gguf``; here the first variant's file is loaded back and its logits compared too).
``--out FILE`` also writes the JSON, with the command. Figures, never pass/fail.

>>> main(["--types", "Q8_0"])
Traceback (most recent call last):
...
qcourse.bench.UsageError: argument --types: types must be Q4_0 and/or Q2_K separated by commas; got 'Q8_0'
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from qcourse.bench import ArgumentParser, positive_int


def _types(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or any(p not in ("Q4_0", "Q2_K") for p in parts):
        raise argparse.ArgumentTypeError(f"types must be Q4_0 and/or Q2_K separated by commas; got {text!r}")
    return parts


def main(argv: Sequence[str]) -> dict:
    """Run the export comparison and return its figures (see module docstring)."""
    ap = ArgumentParser(prog="python -m qcourse.bench gguf_export",
                        description="GGUF export in Q4_0/Q2_K: round-to-nearest vs GPTQ rounding.")
    ap.add_argument("--model", choices=["smollm2-135m", "embedded"], default="smollm2-135m")
    ap.add_argument("--types", type=_types, default=["Q4_0", "Q2_K"])
    ap.add_argument("--tokens", type=positive_int, default=2048)
    ap.add_argument("--calib", type=positive_int, default=64)
    ap.add_argument("--calib-len", type=positive_int, default=256)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(list(argv))

    import torch

    from qcourse import lm
    from qcourse.lm.corpus import calibration_tokens, token_stream
    from qcourse.lm.evaluate import nll, text_bytes
    from qcourse.lm.gguf import load_gguf
    from qcourse.lm.gguf_export import apply_kquant, kquant_tensors, write_gguf
    from qcourse.nn import collect_hessians

    torch.manual_seed(0)
    model = lm.load() if args.model == "embedded" else lm.load(args.model)
    fp_state = {k: v.clone() for k, v in model.state_dict().items()}

    # bits per byte = total NLL / (ln 2 · bytes of the scored text): the same text for every variant
    n_bytes = text_bytes(model.tokenizer, token_stream(model.tokenizer, "validation", args.tokens + 1)[1:])

    def quality(m) -> dict:
        t0 = time.perf_counter()
        n = nll(m, tokens=args.tokens)
        return {"ppl": math.exp(n), "bits_per_byte": n * args.tokens / (math.log(2) * n_bytes),
                "eval_seconds": time.perf_counter() - t0}

    fp = quality(model)
    t0 = time.perf_counter()
    calib = calibration_tokens(model.tokenizer, args.calib, args.calib_len, seed=0)
    names = [n for n, mod in model.named_modules()
             if isinstance(mod, torch.nn.Linear) and n.startswith("layers.")]
    hessians = collect_hessians(model, calib, include=names, progress=args.progress)
    hessian_seconds = time.perf_counter() - t0

    tmp = None
    folder = args.dir
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="qcourse_gguf_")
        folder = Path(tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for qtype in args.types:
            for rounding in ("rtn", "gptq"):
                model.load_state_dict(fp_state)
                t0 = time.perf_counter()
                tensors = kquant_tensors(model, qtype, hessians if rounding == "gptq" else None,
                                         progress=args.progress)
                seconds = time.perf_counter() - t0
                path = folder / f"{args.model}-{qtype}-{rounding}.gguf"
                info = write_gguf(model, path, tensors=tensors)
                apply_kquant(model, tensors)
                row = {"type": qtype, "rounding": rounding, "file_bytes": info["bytes"],
                       "kquant_bytes": sum(len(t.data) for t in tensors.values()),
                       "kquant_bits_per_weight": info["kquant_bits_per_weight"], "quantize_seconds": seconds,
                       **quality(model)}
                if not rows:   # the file itself, read back by load_gguf, gives the same logits
                    loaded = load_gguf(path, tokenizer=False)
                    x = calib[:1, :64]
                    with torch.no_grad():
                        row["file_logits_identical"] = bool(torch.equal(loaded(x), model(x)))
                    del loaded
                rows.append(row)
                path.unlink()
    finally:
        model.load_state_dict(fp_state)
        if tmp is not None:
            tmp.cleanup()
    out = {"model": args.model, "tokens": args.tokens, "text_bytes": n_bytes,
           "calib": [args.calib, args.calib_len],
           "hessian_seconds": hessian_seconds, "fp": fp, "rows": rows,
           "note": "embeddings, norms and head stored F32 in every file; kquant_bytes: the block linears",
           "command": "python -m qcourse.bench gguf_export " + " ".join(argv)}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out
