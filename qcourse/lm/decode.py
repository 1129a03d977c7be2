"""Greedy decoding with the key/value cache, and its speed in tokens per second (lesson 08, capstone).

At batch 1 every new token reads every weight of the model once, so decoding speed is set by the bytes of
the weights and the memory bandwidth; packed low-bit linears (:func:`pack_model`) read fewer bytes.
:func:`decode_speed` measures it the way llama.cpp users quote it: the same prompt and the same number of
new tokens, greedy (so two runs of one model produce the same text), at a fixed thread count.

>>> from qcourse.lm import toy_model
>>> m = toy_model(max_seq_len=32)
>>> greedy(m, "Emma", 6) == greedy(m, "Emma", 6)
True
>>> r = decode_speed(m, "Emma", new_tokens=4, threads=1, repeats=1)
>>> r["text"] == greedy(m, "Emma", 4), r["prompt_tokens"], r["new_tokens"], r["threads"]
(True, 4, 4, 1)
>>> r["tokens_per_second"] > 0
True
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from qcourse.lm.model import KVCache, Llama

__all__ = ["greedy", "greedy_tokens", "decode_speed", "pack_model"]


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value!r}")
    return value


def _check_llama(model: Any) -> None:
    if not isinstance(model, Llama):
        raise TypeError(f"model must be a qcourse.lm.Llama; got {type(model).__name__}")


def greedy(model: Llama, prompt: str, n: int) -> str:
    """The prompt followed by the ``n`` most likely next tokens, one at a time, as text.

    The same as ``qcourse.lm.evaluate.generate(model, prompt, n, greedy=True)`` (which decodes with the
    key/value cache and crops the context to ``max_seq_len`` like any other sampling there).

    >>> from qcourse.lm import toy_model
    >>> greedy(toy_model(), "ab", 0)
    'ab'
    """
    from qcourse.lm.evaluate import generate

    _check_llama(model)
    return generate(model, prompt, n=n, greedy=True)


def greedy_tokens(model: Llama, prompt_ids: list[int] | torch.Tensor, n: int,
                  cache: KVCache | None = None) -> tuple[list[int], float]:
    """``n`` greedy tokens after ``prompt_ids`` through a :class:`~qcourse.lm.model.KVCache`, and the seconds
    the prompt's forward pass (the "prefill") took.

    The prompt plus the new tokens must fit in ``max_seq_len`` (a cache never slides); a ``cache`` passed in
    is reset and reused (it must hold ``len(prompt_ids) + n`` positions).

    >>> from qcourse.lm import toy_model
    >>> m = toy_model(max_seq_len=8)
    >>> ids, prefill = greedy_tokens(m, [1, 2, 3], 5)
    >>> len(ids), prefill >= 0
    (5, True)
    >>> greedy_tokens(m, [1, 2, 3], 6)
    Traceback (most recent call last):
    ...
    ValueError: 3 prompt tokens + n=6 new ones exceed max_seq_len=8
    """
    _check_llama(model)
    _check_count("n", n, 1)
    ids = [int(i) for i in (prompt_ids.tolist() if isinstance(prompt_ids, torch.Tensor) else prompt_ids)]
    if not ids:
        raise ValueError("prompt_ids must hold at least one token")
    total, top = len(ids) + n, model.config.max_seq_len
    if total > top:
        raise ValueError(f"{len(ids)} prompt tokens + n={n} new ones exceed max_seq_len={top}")
    if cache is None:
        cache = KVCache.for_model(model, max_len=total)
    elif cache.max_len < total:
        raise ValueError(f"the cache holds {cache.max_len} positions; {total} are needed")
    cache.reset()
    dev = model.embed_tokens.weight.device
    out: list[int] = []
    with torch.inference_mode():
        start = time.perf_counter()
        logits = model(torch.tensor([ids], dtype=torch.long, device=dev), cache=cache)[0, -1]
        out.append(int(logits.argmax()))
        prefill = time.perf_counter() - start
        step = torch.empty(1, 1, dtype=torch.long, device=dev)
        for _ in range(n - 1):
            step.fill_(out[-1])
            out.append(int(model(step, cache=cache)[0, -1].argmax()))
    return out, prefill


def _set_threads(n: int) -> None:
    from qcourse.kernels import cpu

    torch.set_num_threads(n)
    if cpu.AVAILABLE:
        cpu.set_threads(min(n, _numba_max()))


def _numba_max() -> int:
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


def _get_threads() -> tuple[int, int | None]:
    from qcourse.kernels import cpu

    if cpu.AVAILABLE:
        import numba

        return torch.get_num_threads(), int(numba.get_num_threads())
    return torch.get_num_threads(), None


def decode_speed(model: Llama, prompt: str = "It is a truth universally acknowledged", new_tokens: int = 32,
                 threads: int | None = None, repeats: int = 3) -> dict[str, Any]:
    """Greedy decoding speed of ``model`` at batch 1: ``new_tokens`` tokens after ``prompt``.

    One untimed warm-up run (it compiles or loads the numba kernels), then ``repeats`` timed runs; the
    median is reported. Each run prefills the prompt into a fresh key/value cache, then decodes one token
    per forward pass.

    Parameters
    ----------
    model : Llama
        With a ``tokenizer`` (the embedded model, SmolLM2, or either with packed linears).
    prompt : str
        Text to continue; its tokens plus ``new_tokens`` must fit in ``max_seq_len``.
    new_tokens : int
        Tokens generated per run (>= 1).
    threads : int, optional
        Threads for torch *and* the numba kernels during the measurement (both are restored afterwards);
        ``None`` keeps the current settings. Above one thread, start Python with ``OMP_WAIT_POLICY=PASSIVE``
        (the Makefile does): otherwise the idle OpenMP threads of torch and numba spin on the cores the
        other needs, and both models decode several times slower than at one thread.
    repeats : int
        Timed runs (>= 1).

    Returns
    -------
    dict
        ``tokens_per_second`` (``new_tokens / seconds``, prefill included), ``seconds`` (median time of one
        run), ``prefill_seconds`` (median time of the prompt's forward pass), ``cpu_seconds`` (median CPU
        time of one run, all threads: on a shared machine, at one thread, a steadier figure than the wall
        clock, which also counts the time other programs held the core), ``decode_tokens_per_second``
        (the ``new_tokens − 1`` one-token steps alone, ``None`` when ``new_tokens`` is 1), ``text`` (prompt
        and continuation), ``threads`` (torch's thread count used), ``prompt_tokens``, ``new_tokens``,
        ``repeats``.
    """
    _check_llama(model)
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("model has no tokenizer; load it with qcourse.lm.load() or set model.tokenizer")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError(f"prompt must be a non-empty str; got {prompt!r:.40}")
    _check_count("new_tokens", new_tokens, 1)
    _check_count("repeats", repeats, 1)
    if threads is not None:
        _check_count("threads", threads, 1)
    ids = list(model.tokenizer.encode(prompt))
    if not ids:
        raise ValueError("prompt must encode to at least one token")
    if len(ids) + new_tokens > model.config.max_seq_len:
        raise ValueError(f"{len(ids)} prompt tokens + new_tokens={new_tokens} exceed "
                         f"max_seq_len={model.config.max_seq_len}")
    before = _get_threads()
    was_training = model.training
    model.eval()
    try:
        if threads is not None:
            _set_threads(threads)
        cache = KVCache.for_model(model, max_len=len(ids) + new_tokens)
        out, _ = greedy_tokens(model, ids, min(new_tokens, 2), cache)  # warm-up
        seconds, prefills, cpu_times = [], [], []
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            out, prefill = greedy_tokens(model, ids, new_tokens, cache)
            seconds.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - start_cpu)
            prefills.append(prefill)
        used = torch.get_num_threads()
    finally:
        model.train(was_training)
        torch.set_num_threads(before[0])
        if before[1] is not None:
            from qcourse.kernels import cpu

            cpu.set_threads(before[1])
    sec, pre = statistics.median(seconds), statistics.median(prefills)
    steps = statistics.median(s - p for s, p in zip(seconds, prefills, strict=True))
    return {
        "tokens_per_second": new_tokens / sec,
        "seconds": sec,
        "prefill_seconds": pre,
        "cpu_seconds": statistics.median(cpu_times),
        "decode_tokens_per_second": (new_tokens - 1) / steps if new_tokens > 1 and steps > 0 else None,
        "text": model.tokenizer.decode(ids + out),
        "threads": used,
        "prompt_tokens": len(ids),
        "new_tokens": new_tokens,
        "repeats": repeats,
    }



def pack_model(model: nn.Module, bits: int = 4, group_size: int = 64, method: str = "rtn",
               kernel: str = "auto", inplace: bool = False, **options: Any
               ) -> tuple[nn.Module, dict[str, str]]:
    """A copy of ``model`` (or ``model`` itself with ``inplace``) whose linears compute from packed codes.

    Quantizes every linear except the head with :func:`qcourse.nn.quantize_model` (``method``, ``bits``,
    ``group_size``; groups run along the input, so the affine int kernels apply), then points every
    quantized layer at ``kernel`` with :func:`qcourse.nn.linear.set_kernel`: layers with a packed kernel
    keep no decoded float copy. ``options`` go to ``quantize_model`` (``include``, ``exclude``, ``calib``,
    ``seed``...). Returns the model and ``{layer name: kernel that runs}``.

    >>> from qcourse.lm import toy_model
    >>> from qcourse.kernels import cpu
    >>> m = toy_model(max_seq_len=16)
    >>> q, used = pack_model(m, bits=2, group_size=32)
    >>> sorted(set(used.values())) == (["int2"] if cpu.AVAILABLE else ["decode"])
    True
    >>> len(greedy(q, "ab", 5)), q is not m
    (7, True)
    """
    from qcourse.nn import quantize_model
    from qcourse.nn.linear import set_kernel

    options.setdefault("progress", False)
    qmodel, _ = quantize_model(model, method, bits, group_size=group_size, inplace=inplace, cache=False,
                               **options)
    return qmodel, set_kernel(qmodel, kernel)
