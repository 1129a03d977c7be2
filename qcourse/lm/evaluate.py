"""Scoring and sampling any :class:`~qcourse.lm.model.Llama` that carries a ``tokenizer``.

``perplexity`` is the course's quality metric: every lesson reports what a quantizer does to it.
It is computed the plain way, so numbers compare across methods: take the first ``tokens + 1`` tokens of
an Austen split, cut them into non-overlapping windows of ``context`` tokens, predict every next token
inside each window (a window's first tokens see little context, the same for every model scored), and
return ``exp(mean negative log-likelihood)`` over exactly ``tokens`` predictions.

>>> from qcourse.lm import toy_model
>>> model = toy_model(max_seq_len=64)      # untrained, byte-level
>>> ppl = perplexity(model, tokens=1000)
>>> 200 < ppl < 320  # an untrained byte model is close to uniform over 256 bytes
True
>>> len(generate(model, "Emma", n=10, seed=0).encode()) >= 4
True
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcourse.lm import corpus

__all__ = ["perplexity", "nll", "bits_per_byte", "text_bytes", "generate"]


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module (a qcourse.lm.Llama); got {type(model).__name__}")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError(
            "model has no tokenizer attribute; load it with qcourse.lm.load() or set model.tokenizer"
        )
    if not hasattr(model, "config") or not hasattr(model.config, "max_seq_len"):
        raise TypeError("model must have a .config with max_seq_len (a qcourse.lm.Llama)")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def nll(model: nn.Module, split: str | torch.Tensor = "validation", tokens: int = 65536, **options: Any
        ) -> float:
    """Mean negative log-likelihood in nats per token (``log`` of :func:`perplexity`).

    Takes :func:`perplexity`'s arguments (``context``, ``batch_size``, ``progress`` as keywords).
    """
    return _mean_nll(model, split, tokens, **options)


def _mean_nll(model: nn.Module, split: str | torch.Tensor, tokens: int, context: int | None = None,
              batch_size: int = 16, progress: bool = False) -> float:
    _check_model(model)
    _check_int("tokens", tokens, 1)
    _check_int("batch_size", batch_size, 1)
    max_ctx = model.config.max_seq_len
    if context is None:
        context = min(max_ctx, 512)
    _check_int("context", context, 1)
    if context > max_ctx:
        raise ValueError(f"context={context} exceeds the model's max_seq_len={max_ctx}")

    if isinstance(split, torch.Tensor):
        if split.ndim != 1 or split.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"a token tensor must be 1-D int64/int32; got {split.dtype} {tuple(split.shape)}"
            )
        if len(split) < tokens + 1:
            raise ValueError(f"tokens={tokens} needs {tokens + 1} tokens; the tensor holds {len(split)}")
        stream = split[: tokens + 1].long()
    elif isinstance(split, str):
        stream = corpus.token_stream(model.tokenizer, split, tokens + 1)
    else:
        raise TypeError(f"split must be one of {list(corpus.SPLITS)} or a 1-D token tensor; got {split!r}")
    vocab = model.config.vocab_size
    if int(stream.max()) >= vocab or int(stream.min()) < 0:
        raise ValueError(
            f"token ids must lie in [0, {vocab}) for this model; got [{int(stream.min())}, "
            f"{int(stream.max())}] (wrong tokenizer?)"
        )

    inputs, targets = stream[:-1], stream[1:]
    n_full = tokens // context
    # full windows are batched; the remainder (if any) is scored as one shorter window
    windows = [
        (inputs[: n_full * context].view(n_full, context), targets[: n_full * context].view(n_full, context))
    ]
    if tokens % context:
        windows.append((inputs[n_full * context :][None], targets[n_full * context :][None]))
    batches = [
        (x[i : i + batch_size], y[i : i + batch_size])
        for x, y in windows
        for i in range(0, len(x), batch_size)
    ]

    dev = _device(model)
    total = torch.zeros((), dtype=torch.float64)
    was_training = model.training
    model.eval()
    iterator: Any = batches
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(batches, desc="perplexity", unit="batch")
    try:
        with torch.inference_mode():
            for x, y in iterator:
                logits = model(x.to(dev)).float()
                loss = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y.to(dev).reshape(-1), reduction="sum"
                )
                total += loss.double().cpu()
    finally:
        model.train(was_training)
    return float(total) / tokens


def text_bytes(tokenizer: Any, tokens: torch.Tensor) -> int:
    """UTF-8 bytes of the text that ``tokens`` spell (a byte-level tokenizer: one byte per token).

    >>> from qcourse.lm.tokenizer import ByteTokenizer
    >>> text_bytes(ByteTokenizer(), torch.tensor([104, 105, 226]))    # 226 starts a 3-byte character
    3
    """
    from qcourse.lm.tokenizer import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return int(tokens.numel())
    # a BPE tokenizer's tokens are byte strings too; decoding the whole run at once keeps characters
    # split across tokens whole (only a character cut at either end of the run can be miscounted)
    return len(tokenizer.decode(tokens).encode("utf-8"))


def bits_per_byte(
    model: nn.Module,
    split: str | torch.Tensor = "validation",
    tokens: int = 65536,
    context: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> float:
    """Total negative log-likelihood of the scored tokens, in bits, over the UTF-8 bytes of their text.

    Takes :func:`perplexity`'s arguments. Per-token perplexities of models with different tokenizers do not
    compare (a BPE token covers several bytes); bits per byte does: it is what an arithmetic coder driven
    by the model would spend per byte of the text. For the byte-level embedded model it equals
    ``log2(perplexity)``.

    >>> from qcourse.lm import toy_model
    >>> m = toy_model(max_seq_len=32)
    >>> abs(bits_per_byte(m, tokens=64, context=32) - math.log2(perplexity(m, tokens=64, context=32))) < 1e-9
    True
    """
    total = _mean_nll(model, split, tokens, context, batch_size, progress) * tokens
    if isinstance(split, torch.Tensor):
        targets = split[1: tokens + 1]
    else:
        targets = corpus.token_stream(model.tokenizer, split, tokens + 1)[1:]
    return total / (math.log(2) * text_bytes(model.tokenizer, targets))


def perplexity(
    model: nn.Module,
    split: str | torch.Tensor = "validation",
    tokens: int = 65536,
    context: int | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> float:
    """Perplexity of ``model`` on the first ``tokens`` next-token predictions of an Austen split.

    Parameters
    ----------
    model : Llama
        Any model with ``.tokenizer`` and ``.config.max_seq_len`` (the embedded model or SmolLM2).
    split : {"train", "validation", "test"} or 1-D LongTensor
        Corpus split, encoded with ``model.tokenizer``; or a token tensor of at least ``tokens + 1`` ids.
    tokens : int
        Number of predictions scored (the first ``tokens + 1`` tokens are read).
    context : int, optional
        Window length; default ``min(model.config.max_seq_len, 512)``. Windows do not overlap.
    batch_size : int
        Windows per forward pass (memory only; the result does not depend on it beyond float rounding).
    progress : bool
        Show a tqdm bar.

    Returns
    -------
    float
        ``exp(mean NLL)``. Bits per token (bits per byte for the byte model) is ``log2`` of it.

    Examples
    --------
    >>> from qcourse.lm import toy_model
    >>> m = toy_model(max_seq_len=32)
    >>> a = perplexity(m, tokens=100, context=32)
    >>> b = perplexity(m, tokens=100, context=32, batch_size=1)
    >>> abs(a - b) < 1e-4 * a
    True
    """
    return math.exp(_mean_nll(model, split, tokens, context, batch_size, progress))


def generate(
    model: nn.Module,
    prompt: str,
    n: int = 200,
    seed: int = 0,
    temperature: float = 0.8,
    top_k: int | None = None,
    greedy: bool = False,
    use_cache: bool = True,
) -> str:
    """The prompt followed by ``n`` sampled tokens, decoded to text.

    Sampling uses its own ``torch.Generator`` seeded with ``seed`` (the global RNG is untouched), so the
    same model, prompt and seed always give the same text, and two models (say FP32 and its 2-bit copy)
    compared at one seed differ only because their weights differ. The context is cropped to the last
    ``max_seq_len`` tokens.

    A :class:`~qcourse.lm.model.Llama` decodes with a :class:`~qcourse.lm.model.KVCache`: each step runs
    only the new token through the model. Once the text outgrows ``max_seq_len`` the cropped window moves
    every step, positions shift, and each step recomputes the window (as ``use_cache=False`` always does);
    both ways give the same logits up to float rounding, hence the same text.

    Parameters
    ----------
    prompt : str
        Non-empty text to continue.
    n : int
        Number of new tokens (bytes, for the embedded model).
    seed : int
        Sampling seed.
    temperature : float
        > 0; logits are divided by it (lower = more conservative). Ignored when ``greedy``.
    top_k : int, optional
        Sample only among the ``top_k`` most likely tokens.
    greedy : bool
        Always take the most likely token (deterministic regardless of seed).
    use_cache : bool
        Decode with a key/value cache (default); ``False`` recomputes the whole context every step.

    Examples
    --------
    >>> from qcourse.lm import toy_model
    >>> m = toy_model(max_seq_len=16)
    >>> generate(m, "It is a truth", n=20, seed=1) == generate(m, "It is a truth", n=20, seed=1)
    True
    >>> generate(m, "Emma", n=20, seed=3) == generate(m, "Emma", n=20, seed=3, use_cache=False)
    True
    >>> generate(m, "Hi", n=5, temperature=0)
    Traceback (most recent call last):
    ...
    ValueError: temperature must be a positive number (use greedy=True for argmax); got 0
    """
    _check_model(model)
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be str; got {type(prompt).__name__}")
    _check_int("n", n, 0)
    _check_int("seed", seed, 0)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not temperature > 0
        or not math.isfinite(temperature)
    ):
        raise ValueError(
            f"temperature must be a positive number (use greedy=True for argmax); got {temperature!r}"
        )
    vocab = model.config.vocab_size
    if top_k is not None:
        _check_int("top_k", top_k, 1)
        if top_k > vocab:
            raise ValueError(f"top_k must be <= vocab_size={vocab}; got {top_k}")
    if not isinstance(use_cache, bool):
        raise TypeError(f"use_cache must be True or False; got {use_cache!r}")
    ids = list(model.tokenizer.encode(prompt))
    if not ids:
        raise ValueError("prompt must encode to at least one token; got an empty prompt")

    from qcourse.lm.model import KVCache, Llama

    dev = _device(model)
    g = torch.Generator(device="cpu").manual_seed(seed)
    max_ctx = model.config.max_seq_len
    cache = None
    if use_cache and isinstance(model, Llama) and n and len(ids) <= max_ctx:
        # room for the whole text, or up to the point where the window starts moving
        cache = KVCache.for_model(model, max_len=min(max_ctx, len(ids) + n))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for _ in range(n):
                if cache is not None and len(ids) <= max_ctx:
                    x = torch.tensor(ids[cache.length:], dtype=torch.long, device=dev)[None]
                    logits = model(x, cache=cache)[0, -1].float().cpu()
                else:
                    x = torch.tensor(ids[-max_ctx:], dtype=torch.long, device=dev)[None]
                    logits = model(x)[0, -1].float().cpu()
                if greedy:
                    nxt = int(logits.argmax())
                else:
                    logits = logits / temperature
                    if top_k is not None:
                        kth = torch.topk(logits, top_k).values[-1]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    probs = torch.softmax(logits, dim=-1)
                    nxt = int(torch.multinomial(probs, 1, generator=g))
                ids.append(nxt)
    finally:
        model.train(was_training)
    return model.tokenizer.decode(ids)
