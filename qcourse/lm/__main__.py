"""Command line of the embedded model.

``python -m qcourse.lm train [--out DIR] [--steps N]`` retrains the shipped model from scratch (same
seed, thread count and hyper-parameters as ``qcourse/data/austen-model/training.json``) and writes
``model.safetensors``, ``config.json`` and ``training.json`` to ``DIR`` (default ``./austen-model``).
``python -m qcourse.lm train --bitnet`` trains the ternary twin of lesson 05 (BitNet b1.58 recipe).
``python -m qcourse.lm eval [--model M] [--split S] [--tokens N]`` prints a model's perplexity as JSON.
``python -m qcourse.lm sample [--model M] [--prompt P] [--n N] [--seed S]`` prints a sample.
Bad values print the usage line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from qcourse.lm import MODELS
from qcourse.lm.corpus import SPLITS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qcourse.lm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the embedded model from scratch")
    tr.add_argument("--out", default="austen-model", help="output folder (default: ./austen-model)")
    tr.add_argument("--steps", type=int, default=None, help="optimiser steps (default: the shipped recipe)")
    tr.add_argument("--seed", type=int, default=None, help="seed (default: the shipped recipe's, 0)")
    tr.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: recipe's; changes bits)"
    )
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("--size", choices=("small", "medium", "large"), default="large",
                    help="model width (lesson 09's family; default: large, the shipped model)")
    tr.add_argument("--bitnet", action="store_true",
                    help="train the ternary BitNet b1.58 twin (lesson 05) with its own recipe")
    ev = sub.add_parser("eval", help="perplexity of a model (default: the shipped one)")
    ev.add_argument("--model", choices=MODELS, default="austen")
    ev.add_argument("--split", choices=SPLITS, default="validation")
    ev.add_argument("--tokens", type=int, default=65536)
    sa = sub.add_parser("sample", help="sample text from a model (default: the shipped one)")
    sa.add_argument("--model", choices=MODELS, default="austen")
    sa.add_argument("--prompt", default="It is a truth universally acknowledged")
    sa.add_argument("--n", type=int, default=300)
    sa.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ValueError as exc:  # a value argparse could not check (a count, a seed): usage, exit 2
        sub.choices[args.command].error(str(exc))
    return 2


def _run(args: argparse.Namespace) -> int:

    if args.command == "train":
        from qcourse.lm.train import BITNET_TRAIN_CONFIG, MODEL_SIZES, TRAIN_CONFIG, train

        changes = {k: getattr(args, k) for k in ("steps", "seed", "threads") if getattr(args, k) is not None}
        cfg = replace(BITNET_TRAIN_CONFIG if args.bitnet else TRAIN_CONFIG, **changes)
        t0 = time.perf_counter()
        rec = train(MODEL_SIZES[args.size], cfg, out=args.out, progress=not args.no_progress)
        v = rec["validation"]
        print(
            f"wrote {args.out}/model.safetensors (sha256 {rec['sha256']}): {rec['parameters']:,} parameters, "
            f"{rec['tokens_seen']:,} tokens, validation ppl {v['perplexity']:.3f} "
            f"({v['bits_per_byte']:.3f} bits/byte); wall time {time.perf_counter() - t0:.1f} s"
        )
        return 0
    from qcourse.lm import load

    model = load(args.model)
    if args.command == "eval":
        from qcourse.lm.evaluate import perplexity

        t0 = time.perf_counter()
        ppl = perplexity(model, split=args.split, tokens=args.tokens)
        print(
            json.dumps(
                {
                    "model": args.model,
                    "split": args.split,
                    "tokens": args.tokens,
                    "perplexity": ppl,
                    "seconds": time.perf_counter() - t0,
                }
            )
        )
        return 0
    from qcourse.lm.evaluate import generate

    print(generate(model, args.prompt, n=args.n, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
