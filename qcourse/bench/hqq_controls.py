"""``python -m qcourse.bench hqq_controls``: HQQ against RTN on a whole model, one change at a time.

Lesson 02 found HQQ worse than RTN at 3 bits on SmolLM2-135M. This benchmark separates the suspects, each a
whole-model perplexity (every block linear quantized, ``lm_head`` kept, groups of ``--group-size``):

* ``rtn``: min–max grid, fp16 scale, integer zero (``b + (16 + b)/g`` bits per weight);
* ``hqq``: HQQ at its defaults (groups along the inputs, ``axis=1``, float zero stored in fp16, ``b + 32/g``);
* ``hqq_axis0``: HQQ with groups running down the outputs (``axis=0``), the grouping its authors recommend at
  low bits;
* ``hqq_int_zero``: HQQ with its zero kept on the integer grid (``round_zero=True``). Its zero then fits in
  ``b`` bits, so stored like RTN's it costs RTN's bits per weight: the row reports that honest figure in
  ``bits_per_weight`` and the package's fp16 storage in ``stored_bits_per_weight``.

Options: ``--model`` (``smollm2-135m`` or ``embedded``), ``--bits`` (3), ``--group-size`` (64), ``--tokens``
(2048 validation tokens), ``--out FILE`` (also write the JSON, with the command, there). Figures, never
pass/fail.

>>> main(["--bits", "x"])
Traceback (most recent call last):
...
qcourse.bench.UsageError: argument --bits: bits must be numbers separated by commas, e.g. 2,3,4; got 'x'
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qcourse.bench import ArgumentParser, bits_list, positive_int

#: the variants, as (method, options)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "rtn": ("rtn", {}),
    "hqq": ("hqq", {}),
    "hqq_axis0": ("hqq", {"axis": 0}),
    "hqq_int_zero": ("hqq", {"round_zero": True}),
}


def main(argv: Sequence[str]) -> dict:
    """Run the comparison and return its figures (see module docstring)."""
    ap = ArgumentParser(prog="python -m qcourse.bench hqq_controls",
                        description="HQQ vs RTN on a whole model, one change at a time.")
    ap.add_argument("--model", choices=["smollm2-135m", "embedded"], default="smollm2-135m")
    ap.add_argument("--bits", type=bits_list, default=[3])
    ap.add_argument("--group-size", type=positive_int, default=64)
    ap.add_argument("--tokens", type=positive_int, default=2048)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(list(argv))
    from qcourse import lm
    from qcourse.sweeps import Sweep

    model = lm.load() if args.model == "embedded" else lm.load(args.model)
    sweep = Sweep(model, tokens=args.tokens)
    rows = []
    for b in args.bits:
        for name, (method, opts) in VARIANTS.items():
            t0 = time.perf_counter()
            r = sweep.run(method, b, args.group_size, **opts)
            stored = r["bits_per_weight"]
            honest = b + (16 + b) / args.group_size if name == "hqq_int_zero" else stored
            rows.append({"variant": name, "bits": b, "ppl": r["ppl"], "bits_per_weight": honest,
                         "stored_bits_per_weight": stored, "seconds": time.perf_counter() - t0})
    out = {"model": args.model, "tokens": args.tokens, "group_size": args.group_size, "fp_ppl": sweep.fp_ppl,
           "rows": rows,
           "command": "python -m qcourse.bench hqq_controls " + " ".join(argv)}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")
    return out
