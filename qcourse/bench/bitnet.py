"""``python -m qcourse.bench bitnet``: the cost of ternary training and of running from packed trits.

Two measurements, each side by side in one run with the thread count pinned:

* **training step**: one AdamW step (forward, backward, update) of the embedded architecture with
  ``nn.Linear`` blocks and with :class:`~qcourse.nn.bitlinear.BitLinear` blocks, same batch; the ratio
  ``bitnet_step / float_step`` (lesson 05's goal: at most 1.5);
* **inference**: tokens per second of a batch-1 forward pass over ``--context`` tokens with the float
  model and with the ternary model frozen to packed 2-bit trits (decoded on every call: this is the
  simulation lesson 05 uses; lesson 08's kernels compute from the packed form directly).

Timings are the median of ``--repeats`` runs after one warm-up; figures, never pass/fail.

>>> out = main(["--repeats", "1", "--batch-size", "1", "--seq-len", "16", "--context", "16", "--layers", "1"])
>>> sorted(out)
['config', 'inference', 'machine', 'train']
>>> out["train"]["bitnet_over_float"] > 0
True
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from qcourse.bench import ArgumentParser, median_seconds, non_negative_int, positive_int
from qcourse.lm.model import Llama
from qcourse.lm.train import MODEL_CONFIG
from qcourse.machine import machine_info
from qcourse.nn.bitlinear import BitLinear, to_bitlinear


def _train_step(model: Llama, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: Sequence[str] = ()) -> dict[str, Any]:
    p = ArgumentParser(prog="python -m qcourse.bench bitnet", description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=positive_int, default=8, help="training batch (default 8)")
    p.add_argument("--seq-len", type=positive_int, default=256, help="training sequence length (256)")
    p.add_argument("--context", type=positive_int, default=256, help="inference tokens per forward (256)")
    p.add_argument("--layers", type=positive_int, default=MODEL_CONFIG.n_layers, help="blocks (4)")
    p.add_argument("--repeats", type=positive_int, default=5, help="timed runs per figure (5)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (1)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(list(argv))
    cfg = replace(MODEL_CONFIG, n_layers=args.layers)
    for name in ("seq_len", "context"):
        if getattr(args, name) > cfg.max_seq_len:
            p.fail(f"--{name.replace('_', '-')} must be at most max_seq_len={cfg.max_seq_len}")
    prev = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        torch.manual_seed(args.seed)
        float_model = Llama(cfg)
        bit_model = to_bitlinear(copy.deepcopy(float_model))
        g = torch.Generator().manual_seed(args.seed)
        batch = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len + 1), generator=g)
        x, y = batch[:, :-1], batch[:, 1:]
        t_float = median_seconds(_train_step(float_model.train(), x, y), args.repeats)
        t_bit = median_seconds(_train_step(bit_model.train(), x, y), args.repeats)

        for m in bit_model.modules():
            if isinstance(m, BitLinear):
                m.freeze()
        tokens = torch.randint(0, cfg.vocab_size, (1, args.context), generator=g)
        with torch.inference_mode():
            i_float = median_seconds(lambda: float_model.eval()(tokens), args.repeats)
            i_bit = median_seconds(lambda: bit_model.eval()(tokens), args.repeats)
    finally:
        torch.set_num_threads(prev)
    n_tokens = args.batch_size * args.seq_len
    return {
        "config": {"layers": args.layers, "d_model": cfg.d_model, "d_ff": cfg.d_ff,
                   "batch_size": args.batch_size, "seq_len": args.seq_len, "context": args.context,
                   "threads": args.threads, "repeats": args.repeats},
        "train": {
            "float_step_seconds": t_float,
            "bitnet_step_seconds": t_bit,
            "bitnet_over_float": t_bit / t_float,
            "float_tokens_per_second": n_tokens / t_float,
            "bitnet_tokens_per_second": n_tokens / t_bit,
        },
        "inference": {
            "float_tokens_per_second": args.context / i_float,
            "packed_ternary_tokens_per_second": args.context / i_bit,
            "packed_over_float_time": i_bit / i_float,
        },
        "machine": machine_info(args.threads),
    }
