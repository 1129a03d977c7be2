"""``python -m qcourse.bench gguf_export``: a whole model as llama.cpp GGUF files, RTN vs GPTQ rounding.

For each type (``--types``, default ``Q4_0,Q2_K``) every block linear is encoded twice into the same llama.cpp
block type, by :func:`qcourse.lm.gguf_export.kquant_tensors`:

* ``rtn``: llama.cpp's reference encoder (what ``llama-quantize`` does without an importance matrix);
* ``gptq``: GPTQ's error feedback on the type's own grid (``H = E[x xᵀ]`` of each layer's inputs, collected
  once on the full-precision model from ``--calib`` train windows of ``--calib-len`` tokens).

A row that is not whole blocks of the type is stored in the type llama.cpp's quantizer falls back to
(:func:`qcourse.kquants.stored_type`: SmolLM2's rows of 576 weights cannot be Q2_K's 256-weight
super-blocks and become IQ4_NL, 4.5 bits), so each row reports the type of every kind of tensor and the
real bits per weight of the block linears. Norms and the head stay F32; the token embedding is stored as
``--embedding-type`` (default: Q8_0 for SmolLM2, as its source file has it, which re-encodes losslessly;
F32 for the embedded model), and SmolLM2's files carry its tokenizer so llama.cpp can run them.

Each variant is written to a GGUF file (in ``--dir``, default a temporary folder; ``--keep`` keeps the
files) whose size is reported, with the bytes of the k-quant tensors alone. Each file is verified twice:
the ``gguf`` package's own dequantizer, run on the file's tensors, returns exactly our dequantized weights
(``gguf_dequantizer_equal``), and :func:`qcourse.lm.load_gguf` of the file gives logits identical to the
model holding our dequantized weights (``file_logits_identical``, on 64 calibration tokens). Perplexity
and bits per byte are measured on that model over ``--tokens`` validation tokens. ``--out FILE`` also
writes the JSON, with the command. Figures, never pass/fail.

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


def _weights_by_type(tensors: dict, total: int) -> dict[str, float]:
    """Share of the block-linear weights stored in each type."""
    out: dict[str, float] = {}
    for t in tensors.values():
        out[t.qtype] = out.get(t.qtype, 0.0) + t.shape[0] * t.shape[1] / total
    return out


def _gguf_dequantizer_equal(path: Path, tensors: dict, cfg) -> bool:
    """Whether the gguf package's dequantizer, run on the file's tensors, returns our dequantized weights."""
    import gguf
    import numpy as np
    import torch
    from gguf.quants import dequantize

    from qcourse.lm.gguf import unpermute_qk
    from qcourse.lm.gguf_export import _gguf_name

    reader = gguf.GGUFReader(str(path))
    by_name = {t.name: t for t in reader.tensors}
    for name, kt in tensors.items():
        rt = by_name[_gguf_name(name)]
        w = dequantize(np.asarray(rt.data), rt.tensor_type).reshape(kt.shape)
        heads = cfg.n_heads if name.endswith("q_proj") else cfg.n_kv_heads if name.endswith("k_proj") else 0
        if heads:   # the file holds llama.cpp's row order for q/k
            w = unpermute_qk(torch.from_numpy(np.ascontiguousarray(w)), heads).numpy()
        if not np.array_equal(w, kt.dequantized):
            return False
    return True


def main(argv: Sequence[str]) -> dict:
    """Run the export comparison and return its figures (see module docstring)."""
    ap = ArgumentParser(prog="python -m qcourse.bench gguf_export",
                        description="GGUF export in Q4_0/Q2_K: round-to-nearest vs GPTQ rounding.")
    ap.add_argument("--model", choices=["smollm2-135m", "embedded"], default="smollm2-135m")
    ap.add_argument("--types", type=_types, default=["Q4_0", "Q2_K"])
    ap.add_argument("--tokens", type=positive_int, default=2048)
    ap.add_argument("--calib", type=positive_int, default=64)
    ap.add_argument("--calib-len", type=positive_int, default=256)
    ap.add_argument("--embedding-type", choices=["F32", "Q8_0"], default=None)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the GGUF files in --dir")
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
    smollm2 = args.model != "embedded"
    embedding_type = args.embedding_type or ("Q8_0" if smollm2 else "F32")
    source = None
    if smollm2:
        from qcourse.lm.gguf import smollm2_path

        source = smollm2_path()
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
                info = write_gguf(model, path, tensors=tensors, embedding_type=embedding_type,
                                  metadata_from=source)
                apply_kquant(model, tensors)
                roles: dict[str, str] = {}
                for name, t in tensors.items():
                    roles.setdefault(name.split(".", 2)[2], t.qtype)
                n_weights = sum(t.shape[0] * t.shape[1] for t in tensors.values())
                n_params = sum(p.numel() for p in model.parameters())
                row = {"type": qtype, "rounding": rounding, "file_bytes": info["bytes"],
                       "kquant_bytes": sum(len(t.data) for t in tensors.values()),
                       "kquant_bits_per_weight": info["kquant_bits_per_weight"],
                       "tensor_types": roles,
                       "weights_by_type": _weights_by_type(tensors, n_weights),
                       "model_bytes": sum(info["tensor_bytes"].values()),
                       "bits_per_parameter": 8 * sum(info["tensor_bytes"].values()) / n_params,
                       "embedding_type": info["types"]["embed_tokens"],
                       "embedding_lossless": info["embedding_lossless"],
                       "quantize_seconds": seconds,
                       "gguf_dequantizer_equal": _gguf_dequantizer_equal(path, tensors, model.config),
                       **quality(model)}
                # the file itself, read back by load_gguf, gives the same logits
                loaded = load_gguf(path, tokenizer=False)
                x = calib[:1, :64]
                with torch.no_grad():
                    row["file_logits_identical"] = bool(torch.equal(loaded(x), model(x)))
                del loaded
                rows.append(row)
                if not args.keep:
                    path.unlink()
    finally:
        model.load_state_dict(fp_state)
        if tmp is not None:
            tmp.cleanup()
    n_params = sum(p.numel() for p in model.parameters())
    out = {"model": args.model, "tokens": args.tokens, "text_bytes": n_bytes,
           "calib": [args.calib, args.calib_len], "params": n_params,
           "hessian_seconds": hessian_seconds, "fp": fp, "rows": rows,
           "note": (f"token embedding stored {embedding_type}, norms (and an untied head) F32 in every file; "
                    "kquant_bytes: the block linears; model_bytes: every tensor's data; types as llama.cpp "
                    "stores them (rows that are not whole blocks of the type fall back)"),
           "command": "python -m qcourse.bench gguf_export " + " ".join(argv)}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out
