"""Training the embedded Austen model from scratch, deterministically, on CPU.

``python -m qcourse.lm train`` runs :func:`train` with :data:`MODEL_CONFIG` and :data:`TRAIN_CONFIG` and
writes ``model.safetensors``, ``config.json`` and ``training.json`` — the files shipped in
``qcourse/data/austen-model/``. Every source of randomness is seeded (initialisation from ``seed``, the
batch windows from a separate generator seeded with ``seed + 1``) and the number of intra-op threads is
fixed and recorded, because CPU reductions sum in a thread-count-dependent order: with the same thread
count, torch version and CPU instruction set, two runs give bit-identical weights.

Recipe: AdamW (β = 0.9, 0.95; weight decay on matrices only), linear warm-up then cosine decay to
``min_lr_ratio`` of the peak, gradient-norm clipping at 1, batches of random windows of the train split.

>>> import tempfile
>>> from qcourse.lm.model import LlamaConfig
>>> cfg = LlamaConfig(d_model=32, n_layers=1, n_heads=4, d_ff=64, max_seq_len=32)
>>> tc = TrainConfig(steps=3, batch_size=2, seq_len=32, warmup_steps=1, eval_every=0, eval_tokens=256,
...                  final_eval_tokens=512)
>>> with tempfile.TemporaryDirectory() as d:
...     rec = train(cfg, tc, out=d, progress=False)
>>> rec["steps"], rec["tokens_seen"]
(3, 192)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcourse.lm import corpus
from qcourse.lm.evaluate import nll
from qcourse.lm.model import Llama, LlamaConfig
from qcourse.lm.tokenizer import ByteTokenizer
from qcourse.machine import machine_info

__all__ = ["MODEL_CONFIG", "MODEL_SIZES", "TRAIN_CONFIG", "BITNET_TRAIN_CONFIG", "TrainConfig", "train",
           "lr_at", "weight_decay_at", "sha256_file", "machine_info"]

#: architecture of the shipped model
#: (d_ff = 3 d_model = 768 is divisible by every group size up to 256; 4 kv heads = grouped-query attention)
MODEL_CONFIG = LlamaConfig(
    vocab_size=256, d_model=256, n_layers=4, n_heads=8, n_kv_heads=4, d_ff=768, max_seq_len=256
)

#: the embedded model family (lesson 09: "is a smaller model the real competitor?"): the same depth, context,
#: head size (32), d_ff = 3 d_model and training recipe; only the width changes. "large" is the shipped
#: model (3.28 M parameters); "medium" has 1.87 M, "small" 0.85 M (3.85x fewer than large).
MODEL_SIZES = {
    "small": LlamaConfig(vocab_size=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=384,
                         max_seq_len=256),
    "medium": LlamaConfig(vocab_size=256, d_model=192, n_layers=4, n_heads=6, n_kv_heads=3, d_ff=576,
                          max_seq_len=256),
    "large": MODEL_CONFIG,
}


@dataclass
class TrainConfig:
    """Optimisation hyper-parameters (all recorded in ``training.json``)."""

    steps: int = 600
    batch_size: int = 24
    seq_len: int = 256
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 60
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    eval_every: int = 100  # 0 = only at the end
    eval_tokens: int = 8192  # validation tokens for the periodic estimate
    final_eval_tokens: int = 65536  # validation tokens for the recorded figure
    #: "float" (nn.Linear) or "bitnet" (every linear inside the blocks is a ternary BitLinear)
    model: str = "float"
    #: "cosine" (warm-up, cosine to min_lr_ratio) or "two-stage" (BitNet b1.58's recipe: the same curve, cut
    #: by stage2_lr_ratio halfway through, and weight decay switched off for the second half)
    schedule: str = "cosine"
    stage2_lr_ratio: float = 0.5

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "threads", "eval_tokens", "final_eval_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        for name in ("warmup_steps", "eval_every", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be a non-negative int; got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0; got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1]; got {self.min_lr_ratio}")
        if self.model not in ("float", "bitnet"):
            raise ValueError(f"model must be 'float' or 'bitnet'; got {self.model!r}")
        if self.schedule not in ("cosine", "two-stage"):
            raise ValueError(f"schedule must be 'cosine' or 'two-stage'; got {self.schedule!r}")
        if not 0 < self.stage2_lr_ratio <= 1:
            raise ValueError(f"stage2_lr_ratio must be in (0, 1]; got {self.stage2_lr_ratio}")


#: hyper-parameters of the shipped model
TRAIN_CONFIG = TrainConfig()
#: the ternary twin (lesson 05): same data, tokens, seed and architecture; BitLinear blocks, BitNet b1.58's
#: two-stage schedule (weight decay 0.1, then 0) and twice the float model's peak learning rate, since trits
#: only flip when the latent weights move far enough (BitNet trains with larger rates than its FP16 baseline)
BITNET_TRAIN_CONFIG = TrainConfig(model="bitnet", schedule="two-stage", lr=6e-3, stage2_lr_ratio=0.5)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based): linear warm-up, then cosine to ``min_lr_ratio``.

    >>> tc = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    >>> lr_at(0, tc), lr_at(9, tc), round(lr_at(99, tc), 4)
    (0.1, 1.0, 0.1)
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - 1 - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / span, 1.0)
    lr = cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return lr * cfg.stage2_lr_ratio if in_stage2(step, cfg) else lr


def in_stage2(step: int, cfg: TrainConfig) -> bool:
    """Whether step ``step`` is in the second half of a two-stage schedule (never for ``"cosine"``)."""
    return cfg.schedule == "two-stage" and step >= cfg.steps // 2


def weight_decay_at(step: int, cfg: TrainConfig) -> float:
    """Weight decay of the matrices at ``step``: ``weight_decay``, and 0 in a two-stage run's second half.

    BitNet b1.58's training notes switch weight decay off for the second stage: the magnitude of a latent
    weight then acts as the confidence that its trit should not flip.

    >>> tc = TrainConfig(steps=10, schedule="two-stage", weight_decay=0.1)
    >>> weight_decay_at(4, tc), weight_decay_at(5, tc)
    (0.1, 0.0)
    """
    return 0.0 if in_stage2(step, cfg) else cfg.weight_decay


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    # decay only matrices (linears, embedding); norm gains stay undecayed as in LLaMA / nanoGPT
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train(
    model_config: LlamaConfig = MODEL_CONFIG,
    config: TrainConfig = TRAIN_CONFIG,
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a byte-level :class:`Llama` on the Austen train split; write it to ``out`` if given.

    Returns the training record (what ``training.json`` holds, with ``sha256`` of the weights when saved).
    The trained model is the record's ``"model"`` entry (not written to JSON).
    """
    if not isinstance(model_config, LlamaConfig):
        raise TypeError(f"model_config must be a LlamaConfig; got {type(model_config).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig; got {type(config).__name__}")
    if model_config.vocab_size != 256:
        raise ValueError(f"the byte tokenizer needs vocab_size=256; got {model_config.vocab_size}")
    if config.seq_len > model_config.max_seq_len:
        raise ValueError(f"seq_len={config.seq_len} exceeds max_seq_len={model_config.max_seq_len}")

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(model_config, config, out, progress)
    finally:
        torch.set_num_threads(prev_threads)


def _train(model_config: LlamaConfig, config: TrainConfig, out: Any, progress: bool) -> dict[str, Any]:
    tok = ByteTokenizer()
    data = corpus.encode_split(tok, "train")
    val = corpus.encode_split(tok, "validation")
    torch.manual_seed(config.seed)
    model = Llama(model_config)
    if config.model == "bitnet":
        from qcourse.nn.bitlinear import to_bitlinear

        # same initial latent weights as the float twin (same seed), then ternary forward passes
        to_bitlinear(model)
    model.tokenizer = tok
    opt = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2), eps=1e-8
    )
    g = torch.Generator().manual_seed(config.seed + 1)
    offsets = torch.arange(config.seq_len + 1)
    history: list[dict[str, float]] = []

    bar: Any = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc="train", unit="step")
    t0 = time.perf_counter()
    train_time = 0.0
    val_loss = float("nan")
    loss_val = float("nan")
    for step in range(config.steps):
        ts = time.perf_counter()
        model.train()
        starts = torch.randint(0, len(data) - config.seq_len, (config.batch_size,), generator=g)
        w = data[starts[:, None] + offsets]
        x, y = w[:, :-1], w[:, 1:]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config)
        opt.param_groups[0]["weight_decay"] = weight_decay_at(step, config)  # group 0: the matrices
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        loss_val = float(loss.detach())
        train_time += time.perf_counter() - ts
        last = step == config.steps - 1
        if (config.eval_every and (step + 1) % config.eval_every == 0) or last:
            val_loss = nll(model, val, tokens=min(config.eval_tokens, len(val) - 1), context=config.seq_len)
            history.append({"step": step + 1, "train_loss": loss_val, "val_loss": val_loss})
        if bar is not None:
            tps = (step + 1) * config.batch_size * config.seq_len / max(train_time, 1e-9)
            bar.set_postfix(loss=f"{loss_val:.3f}", val=f"{val_loss:.3f}", tok_s=f"{tps:,.0f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    train_wall = time.perf_counter() - t0

    final_tokens = min(config.final_eval_tokens, len(val) - 1)
    final_nll = nll(model, val, tokens=final_tokens, context=min(512, model_config.max_seq_len))
    wall = time.perf_counter() - t0
    tokens_seen = config.steps * config.batch_size * config.seq_len
    record: dict[str, Any] = {
        "model_config": model_config.to_dict(),
        "train_config": asdict(config),
        "parameters": model.num_parameters(),
        "steps": config.steps,
        "tokens_seen": tokens_seen,
        "epochs": tokens_seen / len(data),
        "final_train_loss": loss_val,
        "validation": {
            "tokens": final_tokens,
            "context": min(512, model_config.max_seq_len),
            "loss": final_nll,
            "perplexity": math.exp(final_nll),
            "bits_per_byte": final_nll / math.log(2),
        },
        "history": history,
        "train_seconds": train_wall,
        "wall_seconds": wall,
        "tokens_per_second": tokens_seen / train_time,
        "machine": machine_info(config.threads),
        "command": f"python -m qcourse.lm train --steps {config.steps} --threads {config.threads}"
        + (" --bitnet" if config.model == "bitnet" else ""),
    }
    model.eval()
    if config.model == "bitnet":
        # ship the packed trits and scales, never the latent float weights
        for m in model.modules():
            if hasattr(m, "freeze"):
                m.freeze()
    if out is not None:
        record["sha256"] = save(model, record, out)
    record["model"] = model
    return record


def save(model: Llama, record: dict[str, Any], out: str | os.PathLike) -> str:
    """Write the weights, config.json and training.json into ``out``; return the weights' sha256."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share memory (tied embedding and head)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    # one metadata entry only: safetensors writes its metadata map in hash order, which varies between
    # processes, so two entries would make the file's bytes (and sha256) differ for identical weights
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    digest = sha256_file(out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    rec = {k: v for k, v in record.items() if k != "model"}
    rec["sha256"] = digest
    (out / "training.json").write_text(json.dumps(rec, indent=2) + "\n")
    return digest
