"""The roofline of lesson 08: this machine's limits measured in seconds, kernels placed against them, and the
bytes a decoder reads per token.

At batch 1 a linear layer ``y = W x`` reads each of its ``n·k`` weights once and does two flops with it: its
*arithmetic intensity* (flops per byte moved) is ``2 / (bytes per weight)``, far below what a CPU or GPU
needs to keep its multipliers busy, so its speed is set by memory bandwidth alone. The roofline model
(Williams, Waterman, Patterson, 2009) draws that as ``attainable = min(peak, intensity × bandwidth)``.

* :func:`read_bandwidth` (or :func:`copy_bandwidth`) and :func:`matmul_peak` measure the two roofs (small
  and quick enough for a notebook; ``python -m qcourse.bench kernels`` measures copy bandwidth and peak
  beside the full kernel table);
* :func:`time_cycled` times a kernel over several copies of its weight, so a weight that fits in the
  last-level cache is not timed faster than memory allows; :func:`copies_for` says how many copies;
* :func:`gemv_point` turns a timing into a point of the plot; :func:`attainable_gflops` is the roof;
  :func:`plot_roofline` and :func:`plot_bits` draw the two figures of the lesson;
* :func:`kv_cache_bytes`, :func:`decode_bytes_per_token` and :func:`seed_article_decode` are the bytes-per-
  token model, with the seed article's version (which ignores scales, the KV cache and the embedding).

>>> p = gemv_point("int4", weight_bytes=8 * 2**20, n=4096, k=4096, seconds=1e-3)
>>> round(p["intensity"], 2), round(p["gb_s"], 2), round(p["gflops"], 2)
(4.0, 8.39, 33.55)
>>> attainable_gflops(p["intensity"], peak_gflops=100.0, bandwidth_gb_s=10.0)
40.0
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "copy_bandwidth", "read_bandwidth", "matmul_peak", "copies_for", "time_cycled", "time_gemv", "gemv_point",
    "attainable_gflops", "plot_roofline", "plot_bits", "kv_cache_bytes", "decode_bytes_per_token",
    "seed_article_decode", "SEED_ARTICLE_TOKENS_S", "LLAMA2_70B",
]

#: Llama-2-70B's shape (Touvron et al., 2023): 80 blocks, width 8192, GQA with 8 KV heads of 128, vocab 32000
LLAMA2_70B = {"layers": 80, "hidden": 8192, "kv_heads": 8, "head_dim": 128, "vocab": 32000,
              "linear_params": 68_451_041_280, "head_params": 32000 * 8192}

#: the seed article's chart "Theoretical Decode Speed by Bit Width (70B Model, H100, batch=1)", tokens/s
SEED_ARTICLE_TOKENS_S = {16: 24, 4: 80, 3: 100, 2: 140, 1.58: 162, 1: 230}


def _positive(name: str, v: Any, kind: type | tuple = (int, float)) -> None:
    if isinstance(v, bool) or not isinstance(v, kind) or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number; got {v!r}")


def _positive_int(name: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive int; got {v!r}")


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up: allocation, first-call dispatch, numba compilation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def copy_bandwidth(nbytes: int = 128 * 2**20, repeats: int = 5) -> float:
    """Memory bandwidth in GB/s (10⁹ bytes/s): bytes read plus bytes written by one ``nbytes`` tensor copy,
    median of ``repeats``. Keep ``nbytes`` well above the last-level cache (tens of MiB) or the cache is
    measured instead of memory.

    >>> copy_bandwidth(2**20, repeats=2) > 0
    True
    """
    _positive_int("nbytes", nbytes)
    _positive_int("repeats", repeats)
    src = torch.ones(nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return 2 * nbytes / _median_seconds(lambda: dst.copy_(src), repeats) / 1e9


def read_bandwidth(nbytes: int = 128 * 2**20, repeats: int = 5) -> float:
    """Read bandwidth in GB/s: a float32 dot product of an ``nbytes`` vector with itself (BLAS ``sdot``, one
    stream read once, vectorized, so memory-bound), median of ``repeats``. A batch-1 GEMV only reads its
    weights, so this is its roof; a copy (:func:`copy_bandwidth`) also writes.

    >>> read_bandwidth(2**20, repeats=2) > 0
    True
    """
    _positive_int("nbytes", nbytes)
    _positive_int("repeats", repeats)
    if nbytes % 4:
        raise ValueError(f"nbytes must be a multiple of 4 (float32 values); got {nbytes}")
    src = torch.ones(nbytes // 4, dtype=torch.float32)
    return nbytes / _median_seconds(lambda: torch.dot(src, src), repeats) / 1e9


def matmul_peak(n: int = 1024, repeats: int = 3) -> float:
    """Compute roof in GFLOP/s: a float32 ``torch.mm`` of two ``n × n`` matrices (``2n³`` flops), median of
    ``repeats``, at torch's current thread count.

    >>> matmul_peak(64, repeats=2) > 0
    True
    """
    _positive_int("n", n)
    _positive_int("repeats", repeats)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    return 2 * n**3 / _median_seconds(lambda: torch.mm(a, b), repeats) / 1e9


def copies_for(weight_bytes: float, min_bytes: int = 128 * 2**20) -> int:
    """How many copies of a weight to cycle through so that at least ``min_bytes`` are read between two
    uses of one copy (beyond the last-level cache: a reused copy would be timed from cache).

    >>> copies_for(8 * 2**20), copies_for(128 * 2**20), copies_for(200 * 2**20)
    (16, 1, 1)
    """
    _positive("weight_bytes", weight_bytes)
    if isinstance(min_bytes, bool) or not isinstance(min_bytes, int) or min_bytes < 0:
        raise ValueError(f"min_bytes must be an int >= 0; got {min_bytes!r}")
    return max(1, math.ceil(min_bytes / weight_bytes))


def time_cycled(fn: Callable[..., Any], args_per_copy: Sequence[tuple], repeats: int = 5) -> float:
    """Median seconds of one ``fn(*args)`` call, the arguments cycling through ``args_per_copy`` (one tuple
    per weight copy) so that consecutive calls read different memory. One untimed warm-up call first.

    >>> calls = []
    >>> t = time_cycled(lambda a: calls.append(a), [(0,), (1,), (2,)], repeats=4)
    >>> calls
    [0, 1, 2, 0, 1]
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable; got {type(fn).__name__}")
    copies = list(args_per_copy)
    if not copies or not all(isinstance(a, tuple) for a in copies):
        raise ValueError("args_per_copy must be a non-empty sequence of argument tuples, one per copy")
    _positive_int("repeats", repeats)
    state = {"i": 0}

    def call() -> Any:
        args = copies[state["i"] % len(copies)]
        state["i"] += 1
        return fn(*args)

    return _median_seconds(call, repeats)


def time_gemv(label: str, fn: Callable[..., Any], args: tuple, weight_index: int | Sequence[int],
              shape: tuple[int, int], repeats: int = 5, batch: int = 1, min_bytes: int = 128 * 2**20) -> dict:
    """Time ``fn(*args)`` — a GEMV whose weight is ``args[i]`` for ``i`` in ``weight_index`` (tensors, numpy
    arrays, or objects with an ``nbytes`` attribute such as a kernel's prepared weight: codes, scales,
    zeros) — over enough copies of the weight (:func:`copies_for`) that no call reads a copy still in the
    cache, and return its :func:`gemv_point`. The weight bytes are what those arguments hold: every byte the
    kernel must read, metadata included.

    >>> import torch
    >>> w, x = torch.randn(64, 32), torch.randn(32)
    >>> p = time_gemv("fp32", torch.mv, (w, x), 0, (64, 32), repeats=2, min_bytes=0)
    >>> p["weight_bytes"], p["bits_per_weight"]
    (8192.0, 32.0)
    """
    import numpy as np

    idx = [weight_index] if isinstance(weight_index, int) else list(weight_index)
    if not idx or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(args) for i in idx):
        raise ValueError(f"weight_index must index args (0..{len(args) - 1}); got {weight_index!r}")
    if len(shape) != 2:
        raise ValueError(f"shape must be (out_features, in_features); got {shape!r}")
    nbytes = 0
    for i in idx:
        a = args[i]
        if isinstance(a, torch.Tensor):
            nbytes += a.numel() * a.element_size()
        elif isinstance(getattr(a, "nbytes", None), int | np.integer) and not isinstance(a, bool):
            nbytes += int(a.nbytes)
        else:
            raise TypeError(f"args[{i}] must be a tensor, a numpy array or an object with nbytes (part of "
                            f"the weight); got {type(a).__name__}")

    def dup(a: Any) -> Any:
        return a.clone() if isinstance(a, torch.Tensor) else copy.deepcopy(a)

    copies = [tuple(args)]
    for _ in range(copies_for(nbytes, min_bytes) - 1):
        copies.append(tuple(dup(a) if j in idx else a for j, a in enumerate(args)))
    seconds = time_cycled(fn, copies, repeats)
    return gemv_point(label, nbytes, int(shape[0]), int(shape[1]), seconds, batch=batch)


def gemv_point(label: str, weight_bytes: float, n: int, k: int, seconds: float, batch: int = 1) -> dict:
    """A kernel's place on the roofline: ``2·batch·n·k`` flops over ``weight_bytes`` (the weights dominate
    the traffic at small batch; activations and outputs are ignored) in ``seconds``.

    Returns ``label``, ``intensity`` (flop/byte), ``gflops``, ``gb_s`` (weight bytes per second, 10⁹),
    ``seconds``, ``weight_bytes``, ``bits_per_weight``.

    >>> gemv_point("fp32", 4 * 1024 * 1024, 1024, 1024, 1e-3)["intensity"]
    0.5
    """
    for name, v in (("n", n), ("k", k), ("batch", batch)):
        _positive_int(name, v)
    _positive("weight_bytes", weight_bytes)
    _positive("seconds", seconds)
    flops = 2.0 * batch * n * k
    return {"label": str(label), "intensity": flops / weight_bytes, "gflops": flops / seconds / 1e9,
            "gb_s": weight_bytes / seconds / 1e9, "seconds": float(seconds),
            "weight_bytes": float(weight_bytes),
            "bits_per_weight": 8.0 * weight_bytes / (n * k)}


def attainable_gflops(intensity: float, peak_gflops: float, bandwidth_gb_s: float) -> float:
    """The roof: ``min(peak, intensity × bandwidth)`` in GFLOP/s for ``intensity`` flop/byte."""
    for name, v in (("intensity", intensity), ("peak_gflops", peak_gflops),
                    ("bandwidth_gb_s", bandwidth_gb_s)):
        _positive(name, v)
    return min(peak_gflops, intensity * bandwidth_gb_s)


def plot_roofline(peak_gflops: float, bandwidth_gb_s: float, points: Sequence[dict], ax: Any = None,
                  title: str = "") -> Any:
    """Log-log roofline: the memory slope and the compute roof measured here, each point (``gemv_point``
    dicts) where its measured intensity and GFLOP/s put it. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    _positive("peak_gflops", peak_gflops)
    _positive("bandwidth_gb_s", bandwidth_gb_s)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.4, 4.0))
    else:
        fig = ax.figure
    lo = min([0.1] + [p["intensity"] / 2 for p in points])
    hi = max([10 * peak_gflops / bandwidth_gb_s] + [p["intensity"] * 2 for p in points])
    xs = np.logspace(np.log10(lo), np.log10(hi), 200)
    ax.loglog(xs, np.minimum(peak_gflops, xs * bandwidth_gb_s), "k-", lw=2,
              label=f"roof: {bandwidth_gb_s:.1f} GB/s, {peak_gflops:.0f} GFLOP/s")
    ax.axvline(peak_gflops / bandwidth_gb_s, color="0.6", ls=":", lw=1)
    for p in points:
        ax.loglog(p["intensity"], p["gflops"], "o", ms=7, label=f"{p['label']} ({p['gb_s']:.1f} GB/s)")
    ax.set(xlabel="arithmetic intensity (flop per weight byte)", ylabel="GFLOP/s",
           title=title or "batch-1 GEMV on the roofline of this machine")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_bits(rows: Sequence[dict], baseline_seconds: float, baseline_bits: float = 32.0,
              bandwidth_gb_s: float | None = None) -> Any:
    """Two panels against bits per weight: speed-up over the baseline (torch fp32 here) with the ideals
    ``baseline_bits / b`` and ``16 / b`` (what an fp16 baseline would allow), and achieved GB/s with the
    measured copy bandwidth. ``rows`` are :func:`gemv_point` dicts. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    _positive("baseline_seconds", baseline_seconds)
    _positive("baseline_bits", baseline_bits)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    bs = np.linspace(0.9, baseline_bits, 200)
    a1.loglog(bs, baseline_bits / bs, "k--", lw=1, label=f"ideal {baseline_bits:g}/bits (vs fp32)")
    a1.loglog(bs, 16 / bs, "k:", lw=1, label="ideal 16/bits (vs fp16)")
    for r in rows:
        a1.loglog(r["bits_per_weight"], baseline_seconds / r["seconds"], "o", label=r["label"])
        a2.semilogx(r["bits_per_weight"], r["gb_s"], "o", label=r["label"])
    a1.axhline(1.0, color="0.6", lw=1)
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    ticks = [t for t in (1, 2, 3, 4, 8, 16, 32) if t <= baseline_bits]
    for ax in (a1, a2):
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
    a1.set(xlabel="bits per weight (codes + scales)", ylabel="speed-up over torch fp32",
           title="time: fewer bits should mean less time")
    if bandwidth_gb_s is not None:
        _positive("bandwidth_gb_s", bandwidth_gb_s)
        a2.axhline(bandwidth_gb_s, color="k", ls="--", lw=1, label="memory bandwidth (measured)")
    a2.set(xlabel="bits per weight", ylabel="weight GB/s", title="bandwidth each kernel achieves")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, context: int, bytes_per_value: float = 2.0,
                   batch: int = 1) -> float:
    """Bytes of the KV cache a decoder reads per generated token: keys and values of every layer for
    ``context`` positions.

    >>> kv_cache_bytes(80, 8, 128, 4096) / 1e9     # Llama-2-70B, fp16, 4k context
    1.34217728
    """
    for name, v in (("layers", layers), ("kv_heads", kv_heads), ("head_dim", head_dim),
                    ("context", context), ("batch", batch)):
        _positive_int(name, v)
    _positive("bytes_per_value", bytes_per_value)
    return 2.0 * layers * kv_heads * head_dim * context * bytes_per_value * batch


def decode_bytes_per_token(linear_params: float, bits_per_weight: float, embedding_params: float = 0.0,
                           embedding_bits: float = 16.0, kv_bytes: float = 0.0) -> float:
    """Bytes read from memory to generate one token at batch 1: every linear weight at ``bits_per_weight``
    (codes *and* scales/zeros), the embedding parameters read per token at ``embedding_bits`` (usually
    kept at 16 bits: the whole output head, but one row of the input embedding), and the KV cache.

    >>> decode_bytes_per_token(70e9, 16) / 1e9
    140.0
    >>> round(decode_bytes_per_token(68.45e9, 4.5, 32000 * 8192, 16, 1.34e9) / 1e9, 2)
    40.37
    """
    _positive("linear_params", linear_params)
    _positive("bits_per_weight", bits_per_weight)
    for name, v in (("embedding_params", embedding_params), ("kv_bytes", kv_bytes)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
    _positive("embedding_bits", embedding_bits)
    return linear_params * bits_per_weight / 8 + embedding_params * embedding_bits / 8 + kv_bytes


def seed_article_decode(bits: float, bandwidth_gb_s: float = 3350.0, params: float = 70e9,
                        overhead: float = 1.2) -> float:
    """Tokens/s by the seed article's formula: ``params·bits/8`` bytes over the H100's 3,350 GB/s, times 1.2
    for "dequantization overhead" below 16 bits (nothing else is read). What its code computes — its
    chart prints other numbers below 4 bits (:data:`SEED_ARTICLE_TOKENS_S`).

    >>> round(seed_article_decode(16)), round(seed_article_decode(4)), round(seed_article_decode(2))
    (24, 80, 160)
    """
    _positive("bits", bits)
    _positive("bandwidth_gb_s", bandwidth_gb_s)
    _positive("params", params)
    _positive("overhead", overhead)
    seconds = params * bits / 8 / (bandwidth_gb_s * 1e9) * (overhead if bits < 16 else 1.0)
    return 1.0 / seconds
