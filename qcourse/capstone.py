"""Lesson 09's capstone: every method of the course on the same models, at equal real size, and a guide.

One function, :func:`run`, takes one configuration (a model, a method, a bit width) and returns one **row**:
it quantizes every block linear of the model (``lm_head`` stays in float, as in every table of the course),
counts the bytes of *everything* the quantized model stores, scores it on the same validation text as every
other row, and caches the row on disk, so asking twice costs nothing. The rows the lesson reads ship in
``qcourse/data/results/capstone_embedded.json`` and ``capstone_smollm2.json`` (:func:`load_rows`);
``python -m qcourse.bench capstone`` recomputes them.

A row (:data:`ROW_KEYS`, then the extra keys of :data:`EXTRA_KEYS`)::

    {"model", "params", "method", "bits", "group_size", "bits_per_weight", "model_bytes", "ppl",
     "bits_per_byte", "quantize_seconds", "tokens_per_second", "source", ...}

* ``model_bytes`` is every byte stored: the quantized linears' codes, scales, zeros, codebooks and signs
  (their ``storage_bits``), plus every tensor left in float (embeddings, norms, ``lm_head``, biases) at the
  dtype it is held in (float32 here), each tensor counted once (a head tied to the embedding is one
  tensor). Metadata (shapes, method names) is not counted. :func:`byte_counts` does the count.
* ``ppl`` is per token: per byte for the byte-level embedded models, per BPE token for SmolLM2.
  ``bits_per_byte`` (total NLL in bits over the UTF-8 bytes of the scored text) compares the two.
* ``bits_per_weight`` is over the quantized linears only (``report.bits_per_weight``); 32 for float rows.
* ``source``: the lesson the method comes from (``02_rtn_hqq`` … ``06_binary_networks``).

Evaluation and calibration settings are the same for every row of a model family (:data:`SETTINGS`):
the embedded family is scored on the first 16,384 validation bytes and calibrated on 128 windows of 256
training bytes; SmolLM2 on the first 2,048 validation tokens (fp perplexity 37.05, as in lessons 02–04's
cached runs) with 16 windows of 256 training tokens. Affine methods (RTN, HQQ, GPTQ) use groups of
:data:`GROUP_SIZE` = 64 inputs; AQLM, QuIP#, ternary and binary PTQ use their own structure (codebooks,
one scale per matrix or per row).

>>> rows = [{"model": "m", "method": "fp32", "model_bytes": 400, "bits_per_byte": 1.7},
...         {"model": "m", "method": "rtn", "model_bytes": 100, "bits_per_byte": 2.5},
...         {"model": "m", "method": "hqq", "model_bytes": 120, "bits_per_byte": 2.6}]
>>> [r["method"] for r in pareto(rows)]            # hqq is larger and worse than rtn: dominated
['rtn', 'fp32']
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CACHE_VERSION", "CALIBRATED", "EXTRA_KEYS", "FAMILY", "GROUP_SIZE", "KERNEL_FORMATS", "METHOD_LABELS",
    "RESULTS", "ROW_KEYS", "SETTINGS", "SOURCES", "TRAINED", "TRAINED_MODELS", "Config", "best_within",
    "byte_counts", "cache_dir", "cache_path", "count_params", "equal_bytes_comparison", "family_of", "grid",
    "decode_speeds", "decode_tokens_per_second", "format_kernel", "load_rows", "pareto", "recommend", "run",
    "screen", "SPEED",
    "SPEED_FORMATS",
]

#: the embedded family of lesson 09 (same recipe, data and seed; only the width changes), small to large
FAMILY = ("austen-small", "austen-medium", "austen")
#: trained low-bit models: ``lm.load`` name -> (the method label of its row, the float model it twins)
TRAINED_MODELS = {"austen-bitnet": ("bitnet-trained", "austen")}
#: method labels that need a training run (excluded by ``recommend(training_budget=False)``)
TRAINED = frozenset(m for m, _ in TRAINED_MODELS.values())
#: method labels that need calibration data (excluded by ``recommend(calibration_data=False)``)
CALIBRATED = frozenset({"gptq", "aqlm", "quip"})
#: group size of the affine methods (RTN, HQQ, GPTQ), as in lessons 02–04's tables
GROUP_SIZE = 64
#: the lesson each method label comes from
SOURCES = {
    "fp32": "00_welcome", "rtn": "02_rtn_hqq", "hqq": "02_rtn_hqq", "gptq": "02_rtn_hqq",
    "aqlm": "03_aqlm_codebooks", "quip": "04_quip_incoherence", "bitnet": "05_bitnet_training",
    "bitnet-trained": "05_bitnet_training", "binary": "06_binary_networks",
}
#: readable names of the method labels (for tables and figures)
METHOD_LABELS = {
    "fp32": "float32", "rtn": "RTN", "hqq": "HQQ", "gptq": "GPTQ", "aqlm": "AQLM", "quip": "QuIP#",
    "bitnet": "ternary PTQ", "bitnet-trained": "BitNet b1.58 (trained)", "binary": "binary PTQ",
}
#: evaluation and calibration settings per family (the same for every row of the family)
SETTINGS = {
    "embedded": {"split": "validation", "tokens": 16384, "calib_sequences": 128, "calib_seq_len": 256,
                 "seed": 0},
    "smollm2-135m": {"split": "validation", "tokens": 2048, "calib_sequences": 16, "calib_seq_len": 256,
                     "seed": 0},
}
#: the keys every row has, in this order
ROW_KEYS = ("model", "params", "method", "bits", "group_size", "bits_per_weight", "model_bytes", "ppl",
            "bits_per_byte", "quantize_seconds", "tokens_per_second", "source")
#: further keys of rows made by :func:`run`: the family, the bytes split, the kernel format, the settings
EXTRA_KEYS = ("family", "quantized_bytes", "float_bytes", "config", "kernel", "eval_tokens", "eval_bytes",
              "calibration", "eval_seconds")
#: packed kernel formats per hardware (``qcourse.kernels``: numba on the CPU, Triton on a GPU)
KERNEL_FORMATS = {
    "cpu": frozenset({"int1", "int2", "int4", "int8", "ternary", "ternary-base3", "aqlm-1x8", "aqlm-2x8",
                      "binary-signs", "e8p"}),
    "gpu": frozenset({"int1", "int2", "int4", "int8", "ternary"}),
}
#: the shipped tables (:func:`load_rows`)
RESULTS = {
    "embedded": Path(__file__).parent / "data" / "results" / "capstone_embedded.json",
    "smollm2-135m": Path(__file__).parent / "data" / "results" / "capstone_smollm2.json",
}
#: bump when a row's meaning changes: older cache files are then ignored
CACHE_VERSION = 1

Config = tuple[str, str, float | None]


def family_of(model: str) -> str:
    """``"embedded"`` for the Austen models (the family, the trained twins), ``"smollm2-135m"`` for SmolLM2.

    >>> family_of("austen-small"), family_of("austen-bitnet"), family_of("smollm2-135m")
    ('embedded', 'embedded', 'smollm2-135m')
    """
    if model in FAMILY or model in TRAINED_MODELS:
        return "embedded"
    if model == "smollm2-135m":
        return model
    raise ValueError(f"model must be one of {[*FAMILY, *TRAINED_MODELS, 'smollm2-135m']}; got {model!r}")


def grid(models: Sequence[str] = FAMILY, methods: Sequence[str] | None = None) -> list[Config]:
    """The configurations of the sweep, ``(model, method, bits)``, float rows first.

    Per model: float32; RTN, HQQ and GPTQ at 2, 3, 4 and 8 bits; AQLM 1×8 and 2×8 (``bits`` 1 and 2: code
    bits per weight); QuIP# at 2, 3 and 4 bits; ternary PTQ (1.58) and binary PTQ (1). For ``"austen"`` the
    trained ternary twin (``"austen-bitnet"``, method ``"bitnet-trained"``) follows. ``methods`` keeps only
    those method labels.

    >>> len(grid()), grid(["austen-small"], ["fp32", "aqlm"])
    (61, [('austen-small', 'fp32', None), ('austen-small', 'aqlm', 1), ('austen-small', 'aqlm', 2)])
    """
    per_model: list[tuple[str, float | None]] = [("fp32", None)]
    per_model += [(m, b) for m in ("rtn", "hqq", "gptq") for b in (2, 3, 4, 8)]
    per_model += [("aqlm", 1), ("aqlm", 2), ("quip", 2), ("quip", 3), ("quip", 4), ("bitnet", 1.58),
                  ("binary", 1)]
    if methods is not None:
        unknown = sorted(set(methods) - set(SOURCES))
        if unknown:
            raise ValueError(f"methods must be labels from {sorted(SOURCES)}; unknown: {unknown}")
    out: list[Config] = []
    for model in models:
        family_of(model)
        if model in TRAINED_MODELS:
            raise ValueError(f"{model!r} is a trained twin; it is added after its float model, not alone")
        out += [(model, m, b) for m, b in per_model if methods is None or m in methods]
        for twin, (label, base) in TRAINED_MODELS.items():
            if base == model and (methods is None or label in methods):
                out.append((twin, label, 1.58))
    return out


# ----------------------------------------------------------------------------------------------- bytes
def count_params(model: nn.Module) -> int:
    """Weights of the architecture: float parameters (each tensor once) plus ``out × in`` of every quantized
    linear (:class:`~qcourse.nn.QuantLinear`, frozen :class:`~qcourse.nn.bitlinear.BitLinear`).

    A quantized model has as many parameters as its float original:

    >>> from qcourse.lm import toy_model
    >>> from qcourse.nn import quantize_model
    >>> m = toy_model()
    >>> q, _ = quantize_model(m, "rtn", bits=2, group_size=32, progress=False)
    >>> count_params(q) == count_params(m) == sum(p.numel() for p in m.parameters())
    True
    """
    from qcourse.nn.bitlinear import BitLinear
    from qcourse.nn.linear import QuantLinear

    n = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    for mod in model.modules():
        if isinstance(mod, QuantLinear) or (isinstance(mod, BitLinear) and mod.frozen):
            n += mod.in_features * mod.out_features
    return n


def byte_counts(model: nn.Module) -> dict[str, int]:
    """Bytes a model stores: ``{"quantized", "float", "total"}``.

    ``quantized``: ``ceil(Σ storage_bits / 8)`` over its :class:`~qcourse.nn.QuantLinear` layers (codes,
    scales, zeros, codebooks, signs: what the method's ``bits_per_weight`` counts), plus the packed trits and
    scale of frozen :class:`~qcourse.nn.bitlinear.BitLinear` layers. ``float``: every other tensor of the
    ``state_dict`` (embeddings, norms, head, biases) at its dtype, a tensor shared by several names (a tied
    head) counted once; serialization metadata is not counted.

    >>> from qcourse.lm import toy_model
    >>> m = toy_model()                    # 256×32 embedding and head, 1 block: 4 attention + 3 MLP linears
    >>> byte_counts(m)["total"] == 4 * sum(p.numel() for p in m.parameters())
    True
    """
    from qcourse.nn.bitlinear import BitLinear
    from qcourse.nn.linear import QuantLinear

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    quant_bits = 0
    quant_prefixes: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear):
            quant_bits += int(mod.qweight.storage_bits)
            quant_prefixes.append(f"{name}.qweight" if name else "qweight")
        elif isinstance(mod, BitLinear) and mod.frozen:
            for key in ("packed", "gamma"):
                t = getattr(mod, key)
                quant_bits += 8 * t.numel() * t.element_size()
                quant_prefixes.append(f"{name}.{key}" if name else key)
    seen: set[tuple] = set()
    float_bytes = 0
    for key, t in model.state_dict(keep_vars=True).items():
        if any(key == p or key.startswith(p + ".") or key.startswith(p + "_") for p in quant_prefixes):
            continue  # QuantLinear's codes/scales/meta and BitLinear's trits: counted in quant_bits
        t = t.detach()
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()),
                 t.dtype)
        if t.numel() and ident in seen:
            continue
        seen.add(ident)
        float_bytes += t.numel() * t.element_size()
    quantized = math.ceil(quant_bits / 8)
    return {"quantized": quantized, "float": float_bytes, "total": quantized + float_bytes}


# ----------------------------------------------------------------------------------------------- cache
def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Where :func:`run` keeps its rows: ``path``, else ``$QCOURSE_CACHE/capstone``, else
    ``~/.cache/qcourse/capstone``."""
    if path is not None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"cache_dir must be a str or os.PathLike; got {type(path).__name__}")
        return Path(path)
    root = os.environ.get("QCOURSE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "qcourse") / "capstone"


def _key(model: str, method: str, bits: float | None, group_size: int | None, options: dict[str, Any]
         ) -> dict[str, Any]:
    fam = family_of(model)
    settings = dict(SETTINGS[fam])
    if method not in CALIBRATED:
        for k in ("calib_sequences", "calib_seq_len"):
            settings.pop(k)
    return {"version": CACHE_VERSION, "model": model, "method": method, "bits": bits,
            "group_size": group_size,
            "options": options, "settings": settings}


def cache_path(model: str, method: str, bits: float | None = None, group_size: int | None | str = "auto",
               options: dict[str, Any] | None = None, directory: str | os.PathLike | None = None) -> Path:
    """The file :func:`run` reads and writes for this configuration (its name hashes every setting)."""
    method, bits, group_size, options = _resolve(model, method, bits, group_size, options)
    key = _key(model, method, bits, group_size, options)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir(directory) / f"{model}-{method}-{bits}-{group_size}-{digest}.json"


# ----------------------------------------------------------------------------------------------- run
def _resolve(model: str, method: str, bits: float | None, group_size: int | None | str,
             options: dict[str, Any] | None) -> tuple[str, float | None, int | None, dict[str, Any]]:
    family_of(model)
    if not isinstance(method, str) or method not in SOURCES:
        raise ValueError(f"method must be one of {sorted(SOURCES)}; got {method!r}")
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict of method options; got {type(options).__name__}")
    options = dict(options or {})
    if model in TRAINED_MODELS:
        label = TRAINED_MODELS[model][0]
        if method != label:
            raise ValueError(f"model {model!r} is a trained model: its method is {label!r}; got {method!r}")
        return method, 1.58, None, options
    if method in TRAINED:
        raise ValueError(f"method {method!r} belongs to the trained model(s) {sorted(TRAINED_MODELS)}")
    if method == "fp32":
        if bits not in (None, 32):
            raise ValueError(f"bits must be None for the float model; got {bits!r}")
        return method, None, None, options
    from qcourse import methods

    m = methods.get(method)
    if isinstance(bits, bool) or not isinstance(bits, int | float) or bits not in m.supported_bits:
        raise ValueError(f"bits must be one of {list(m.supported_bits)} for {method!r}; got {bits!r}")
    bits = 1.58 if method == "bitnet" else (int(bits) if float(bits).is_integer() else float(bits))
    if group_size == "auto":
        group_size = GROUP_SIZE if method in ("rtn", "hqq", "gptq") else None
    elif group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                     or group_size <= 0):
        raise ValueError(f"group_size must be a positive int, None or 'auto'; got {group_size!r}")
    if method == "aqlm":
        options.setdefault("config", f"{int(bits)}x8")   # M codebooks of 2^8 vectors of g = 8 inputs
    if method == "bitnet":
        # 2 bits per trit, as the trained twin stores them: the ternary kernel's layout
        options.setdefault("packing", "2bit")
    return method, bits, group_size, options


@functools.lru_cache(maxsize=2)
def _model(name: str) -> nn.Module:
    from qcourse import lm

    return lm.load(name).eval()


@functools.lru_cache(maxsize=2)
def _calib(name: str) -> torch.Tensor:
    from qcourse.lm import corpus

    s = SETTINGS[family_of(name)]
    return corpus.calibration_tokens(_model(name).tokenizer, s["calib_sequences"], s["calib_seq_len"],
                                     seed=s["seed"])


def _score(model: nn.Module, family: str) -> tuple[float, float, int, float]:
    """``(ppl, bits_per_byte, text bytes, seconds)`` on the family's evaluation text."""
    from qcourse.lm import corpus
    from qcourse.lm.evaluate import nll, text_bytes

    s = SETTINGS[family]
    t0 = time.perf_counter()
    stream = corpus.token_stream(model.tokenizer, s["split"], s["tokens"] + 1)
    mean = nll(model, stream, tokens=s["tokens"])
    n_bytes = text_bytes(model.tokenizer, stream[1:])
    return math.exp(mean), mean * s["tokens"] / (math.log(2) * n_bytes), n_bytes, time.perf_counter() - t0


def _kernel(model: nn.Module) -> str | None:
    """The packed CPU kernel of the model's quantized linears (:func:`qcourse.kernels.kernel_name`, one for
    all of them), ``"ternary"`` for frozen BitLinear layers (2-bit packed trits), else ``None``."""
    from qcourse.kernels import kernel_name
    from qcourse.nn.bitlinear import BitLinear
    from qcourse.nn.linear import QuantLinear

    kinds = set()
    for mod in model.modules():
        if isinstance(mod, BitLinear) and mod.frozen:
            kinds.add("ternary")       # 2-bit packed trits, the ternary kernel's layout
        elif isinstance(mod, QuantLinear):
            kinds.add(kernel_name(mod.qweight))
    return kinds.pop() if len(kinds) == 1 else None


@functools.lru_cache(maxsize=64)
def format_kernel(method: str, bits: float | None, config: str | None = None) -> str | None:
    """The packed kernel (:func:`qcourse.kernels.kernel_name`) of the format ``method`` stores at ``bits``:
    found by quantizing a small seeded weight the same way, so a table's ``kernel`` column follows the kernels
    the package has now. ``None`` for float rows and formats without one; ``"ternary"`` for the trained
    twin's 2-bit packed trits.

    >>> format_kernel("rtn", 3), format_kernel("fp32", None)
    (None, None)
    """
    from qcourse import methods
    from qcourse.kernels import kernel_name

    if method == "fp32":
        return None
    if method in TRAINED:
        return "ternary"
    opts = {"config": config} if config else None
    m, bits, group_size, options = _resolve("austen", method, bits, "auto", opts)
    if method == "aqlm":
        options.update(rounds=0, kmeans_iters=1)     # same storage layout, fitted cheaply
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    hessian = torch.eye(128) if m in CALIBRATED else None
    qw = methods.get(m).quantize(w, bits=bits, group_size=group_size, hessian=hessian, **options)
    return kernel_name(qw)


#: the decode benchmark of :func:`decode_tokens_per_second`: prompt, new tokens, timed repeats, threads
SPEED = {"prompt": "It is a truth universally acknowledged", "new_tokens": 32, "repeats": 3, "threads": 1}


def decode_tokens_per_second(qmodel: nn.Module, repeats: int | None = None) -> float | None:
    """Greedy decoding speed (tokens/s, batch 1, :data:`SPEED`) of a model whose quantized linears all run
    a packed kernel (:func:`qcourse.nn.linear.set_kernel`), or of a float model; ``None`` when some quantized
    layer has no packed kernel (it would only measure decoding the weights) or is a BitLinear (whose
    trained-twin path decodes its trits).

    Switches the model's quantized layers to their kernels (dropping their decoded float copies).
    """
    from qcourse.lm.decode import decode_speed
    from qcourse.nn.bitlinear import BitLinear
    from qcourse.nn.linear import QuantLinear, set_kernel

    mods = list(qmodel.modules())
    if any(isinstance(m, BitLinear) for m in mods):
        return None
    if any(isinstance(m, QuantLinear) for m in mods):
        used = set(set_kernel(qmodel, "auto").values())
        if used & {"decode", "reference"}:
            return None
    return float(decode_speed(qmodel, SPEED["prompt"], new_tokens=SPEED["new_tokens"],
                              threads=SPEED["threads"],
                              repeats=repeats or SPEED["repeats"])["tokens_per_second"])


def run(model: str, method: str = "fp32", bits: float | None = None, group_size: int | None | str = "auto",
        options: dict[str, Any] | None = None, cache: str | os.PathLike | None = None,
        recompute: bool = False, speed: Callable[[nn.Module], float | None] | None = None,
        progress: bool = False) -> dict[str, Any]:
    """Quantize ``model`` with ``method`` at ``bits``, score it, and return its row (cached on disk).

    Parameters
    ----------
    model
        ``"austen-small"``, ``"austen-medium"``, ``"austen"``, ``"austen-bitnet"`` (the trained ternary twin:
        method ``"bitnet-trained"``) or ``"smollm2-135m"``.
    method
        A label of :data:`SOURCES`: ``"fp32"`` (no quantization), ``"rtn"``, ``"hqq"``, ``"gptq"``,
        ``"aqlm"`` (``bits`` 1 or 2: 1×8 or 2×8), ``"quip"``, ``"bitnet"`` (ternary PTQ), ``"binary"``.
    bits
        A width the method supports (``None`` for ``"fp32"``).
    group_size
        ``"auto"``: :data:`GROUP_SIZE` for RTN/HQQ/GPTQ, the method's own structure for the others.
    options
        Extra method options (part of the cache key).
    cache
        Cache folder (:func:`cache_dir`); the row is read from there when present, else computed and written.
    recompute
        Compute even when a cached row exists (and overwrite it).
    speed
        Optional ``qmodel -> tokens/s`` measurement (e.g. a decode benchmark); ``None`` leaves
        ``tokens_per_second`` as ``None``. A cached row keeps the value it was stored with.
    progress
        Show progress bars while quantizing.

    Returns
    -------
    dict
        The row: :data:`ROW_KEYS` then :data:`EXTRA_KEYS`.
    """
    method, bits, group_size, options = _resolve(model, method, bits, group_size, options)
    path = cache_path(model, method, bits, group_size, options, cache)
    if path.is_file() and not recompute:
        return json.loads(path.read_text())["row"]
    fam = family_of(model)
    base = _model(model)
    t0 = time.perf_counter()
    calibration = None
    if method in ("fp32", *TRAINED):
        qmodel, bpw, seconds = base, (32.0 if method == "fp32" else None), 0.0
    else:
        from qcourse.nn import quantize_model

        calib = _calib(model) if method in CALIBRATED else None
        qmodel, report = quantize_model(base, method, bits=bits, group_size=group_size, calib=calib,
                                        seed=SETTINGS[fam]["seed"], progress=progress, **options)
        bpw, seconds = report.bits_per_weight, time.perf_counter() - t0
        if calib is not None:
            calibration = {"split": "train", "sequences": int(calib.shape[0]), "seq_len": int(calib.shape[1]),
                           "seed": SETTINGS[fam]["seed"]}
    counts = byte_counts(qmodel)
    if method in TRAINED:
        # the trained twin's linears: 2-bit packed trits + one fp32 scale each
        n_quant = count_params(qmodel) - sum(p.numel() for p in qmodel.parameters())
        bpw = 8 * counts["quantized"] / n_quant
    ppl, bpb, n_bytes, eval_seconds = _score(qmodel, fam)
    tps = speed(qmodel) if speed is not None else None
    row: dict[str, Any] = {
        "model": model, "params": count_params(qmodel), "method": method, "bits": bits,
        "group_size": group_size, "bits_per_weight": bpw, "model_bytes": counts["total"], "ppl": ppl,
        "bits_per_byte": bpb, "quantize_seconds": seconds, "tokens_per_second": tps,
        "source": SOURCES[method],
        "family": fam, "quantized_bytes": counts["quantized"], "float_bytes": counts["float"],
        "config": options.get("config"), "kernel": _kernel(qmodel), "eval_tokens": SETTINGS[fam]["tokens"],
        "eval_bytes": n_bytes, "calibration": calibration, "eval_seconds": eval_seconds,
    }
    if qmodel is not base:
        del qmodel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": _key(model, method, bits, group_size, options), "row": row}, indent=1))
    tmp.replace(path)   # atomic: a reader never sees half a row
    return row


#: the formats :func:`decode_speeds` times
SPEED_FORMATS = ("float", "int2", "int4", "int8", "ternary", "aqlm-1x8", "aqlm-2x8", "binary-signs", "e8p")


def decode_speeds(model: str, formats: Sequence[str] = SPEED_FORMATS, rounds: int = 5
                  ) -> dict[str, float | None]:
    """Decode tokens/s of ``model`` (:func:`decode_tokens_per_second`) per packed format: the median of
    ``rounds`` measurements taken round-robin over the formats, so a change in the machine's load hits every
    format alike and the ratios compare (absolute numbers depend on the machine and its load).

    Speed depends on the format and the layer shapes, not on the values of the codes, so each format is
    timed on one model in that format: ``int2``/``int4``/``int8`` are RTN with groups of :data:`GROUP_SIZE`
    (HQQ, and GPTQ without act-order, store the same layout), ``ternary`` is ternary PTQ with 2-bit packed
    trits, ``binary-signs`` binary PTQ, ``aqlm-Mx8`` AQLM's layout fitted cheaply (residual k-means, no
    beam-search rounds) and ``e8p`` QuIP#'s 2-bit layout rounded to nearest (3- and 4-bit QuIP# add residual
    stages: not timed). A format whose kernel is missing on this machine (numba not installed) gives ``None``.
    """
    from qcourse.nn import quantize_model

    bad = [f for f in formats if f not in SPEED_FORMATS]
    if bad:
        raise ValueError(f"formats must be among {list(SPEED_FORMATS)}; got {bad}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int; got {rounds!r}")
    base = _model(model)
    built: dict[str, nn.Module] = {}
    for fmt in formats:
        if fmt == "float":
            built[fmt] = base
            continue
        if fmt.startswith("int"):
            q, _ = quantize_model(base, "rtn", bits=int(fmt[3:]), group_size=GROUP_SIZE, progress=False)
        elif fmt == "ternary":
            q, _ = quantize_model(base, "bitnet", bits=1.58, group_size=None, packing="2bit", progress=False)
        elif fmt == "binary-signs":
            q, _ = quantize_model(base, "binary", bits=1, group_size=None, progress=False)
        elif fmt == "e8p":   # QuIP#'s 2-bit E8P layout, rounded to nearest, not BlockLDLQ (same storage)
            q, _ = quantize_model(base, "quip", bits=2, group_size=None, calib=_calib(model), progress=False,
                                  rounding="nearest")
        else:
            m = int(fmt[5])
            q, _ = quantize_model(base, "aqlm", bits=m, group_size=None, calib=_calib(model),
                                  progress=False, config=f"{m}x8", rounds=0, kmeans_iters=1)
        built[fmt] = q
    times: dict[str, list[float]] = {fmt: [] for fmt in formats}
    no_kernel: set[str] = set()
    for _ in range(rounds):
        for fmt, q in built.items():
            if fmt not in no_kernel:
                tps = decode_tokens_per_second(q, repeats=1)
                if tps is None:
                    no_kernel.add(fmt)
                else:
                    times[fmt].append(tps)
    return {fmt: (None if fmt in no_kernel else statistics.median(v)) for fmt, v in times.items()}


# ----------------------------------------------------------------------------------------------- tables
def load_rows(family: str = "embedded") -> list[dict[str, Any]]:
    """The shipped rows of ``family`` (``"embedded"`` or ``"smollm2-135m"``), as ``python -m qcourse.bench
    capstone`` wrote them."""
    if family not in RESULTS:
        raise ValueError(f"family must be one of {sorted(RESULTS)}; got {family!r}")
    return [dict(r) for r in json.loads(RESULTS[family].read_text())["rows"]]


def pareto(rows: Iterable[dict[str, Any]], x: str = "model_bytes", y: str = "bits_per_byte"
           ) -> list[dict[str, Any]]:
    """The rows no other row beats on both ``x`` and ``y`` (smaller is better for both), sorted by ``x``.

    A row is kept when its ``y`` is strictly below that of every row at most as large; of rows with equal
    ``x`` only the best ``y`` can be kept. Rows whose ``y`` is missing or not finite are skipped.

    >>> rows = [{"b": 1, "q": 5.0}, {"b": 2, "q": 3.0}, {"b": 2, "q": 4.0}, {"b": 3, "q": 3.0},
    ...         {"b": 4, "q": 1.0}]
    >>> [(r["b"], r["q"]) for r in pareto(rows, "b", "q")]
    [(1, 5.0), (2, 3.0), (4, 1.0)]
    """
    ok = [r for r in rows if r.get(y) is not None and math.isfinite(r[y])]
    front, best = [], math.inf
    for r in sorted(ok, key=lambda r: (r[x], r[y])):
        if r[y] < best:
            front.append(r)
            best = r[y]
    return front


def best_within(rows: Iterable[dict[str, Any]], budget: float, key: str = "bits_per_byte",
                **where: Any) -> dict[str, Any] | None:
    """The row with the lowest ``key`` among those with ``model_bytes <= budget`` that match ``where``
    (``name=value``, or ``name=(v1, v2, ...)`` for any of several values); ``None`` if there is none.

    >>> rows = [{"model": "a", "model_bytes": 10, "bits_per_byte": 2.0, "bits": 4},
    ...         {"model": "b", "model_bytes": 12, "bits_per_byte": 1.5, "bits": 2}]
    >>> best_within(rows, 11)["model"], best_within(rows, 20)["model"]
    ('a', 'b')
    >>> best_within(rows, 20, bits=(4, 8))["model"]
    'a'
    >>> best_within(rows, 5) is None
    True
    """
    def match(r: dict[str, Any]) -> bool:
        for k, v in where.items():
            allowed = v if isinstance(v, tuple | list | set | frozenset) else (v,)
            if r.get(k) not in allowed:
                return False
        return True

    ok = [r for r in rows if r["model_bytes"] <= budget and match(r) and r.get(key) is not None]
    return min(ok, key=lambda r: r[key]) if ok else None


def equal_bytes_comparison(rows: Sequence[dict[str, Any]], large: str = "austen",
                           smaller: Sequence[str] = ("austen-small", "austen-medium"),
                           large_bits: Sequence[float] = (2, 3), small_bits: Sequence[float] = (4, 8),
                           key: str = "bits_per_byte") -> list[dict[str, Any]]:
    """"Is a smaller model the real competitor?" at equal bytes.

    For every row of the ``large`` model at ``large_bits``, the best row of the ``smaller`` models at
    ``small_bits`` (any method, float rows too when 32 is in ``small_bits``) that stores no more bytes.
    ``margin`` is ``small[key] − large[key]``: positive when the large, more aggressively quantized model is
    better (lower bits per byte) at no more bytes. ``small`` is ``None`` when no smaller row fits.

    >>> rows = [{"model": "L", "method": "gptq", "bits": 2, "model_bytes": 100, "bits_per_byte": 1.9},
    ...         {"model": "S", "method": "rtn", "bits": 4, "model_bytes": 90, "bits_per_byte": 2.1},
    ...         {"model": "S", "method": "rtn", "bits": 8, "model_bytes": 150, "bits_per_byte": 2.0}]
    >>> [(c["large"]["method"], c["small"]["bits"], round(c["margin"], 3))
    ...  for c in equal_bytes_comparison(rows, "L", ["S"])]
    [('gptq', 4, 0.2)]
    """
    out = []
    small_rows = [r for r in rows if r["model"] in smaller and _bits_in(r, small_bits)]
    for r in sorted(rows, key=lambda r: r["model_bytes"]):
        if r["model"] != large or not _bits_in(r, large_bits):
            continue
        s = best_within(small_rows, r["model_bytes"], key)
        out.append({"large": r, "small": s, "margin": None if s is None else s[key] - r[key]})
    return out


def _bits_in(row: dict[str, Any], allowed: Sequence[float]) -> bool:
    bits = 32 if row["method"] == "fp32" else row["bits"]
    return bits is not None and any(abs(bits - b) < 1e-9 for b in allowed)


# ----------------------------------------------------------------------------------------------- guide
_HARDWARE = ("cpu", "gpu")


def screen(rows: Iterable[dict[str, Any]], memory_bytes: float, hardware: str = "cpu",
           calibration_data: bool = True, training_budget: bool = False, max_ppl_ratio: float | None = None,
           require_kernel: bool = False) -> list[dict[str, Any]]:
    """Every row with why :func:`recommend` would drop it: ``{"row", "ppl_ratio", "kernel", "excluded"}``.

    ``excluded`` is ``None`` for an admissible row, else the first reason: ``"over budget"``,
    ``"needs calibration data"``, ``"needs a training run"``, ``"quality"`` (``ppl`` more than
    ``max_ppl_ratio`` × the best float row of its family), ``"no packed kernel"`` (only with
    ``require_kernel``). ``kernel`` is the row's packed format if ``hardware`` has a kernel for it, else
    ``None`` (the weights are then decoded layer by layer at run time: memory holds, speed does not).
    """
    if not isinstance(memory_bytes, int | float) or isinstance(memory_bytes, bool) or not memory_bytes > 0:
        raise ValueError(f"memory_bytes must be a positive number of bytes; got {memory_bytes!r}")
    if hardware not in _HARDWARE:
        raise ValueError(f"hardware must be one of {list(_HARDWARE)}; got {hardware!r}")
    for name, v in (("calibration_data", calibration_data), ("training_budget", training_budget),
                    ("require_kernel", require_kernel)):
        if not isinstance(v, bool):
            raise TypeError(f"{name} must be True or False; got {v!r}")
    bad_ratio = isinstance(max_ppl_ratio, bool) or not isinstance(max_ppl_ratio, int | float) \
        or not max_ppl_ratio >= 1.0
    if max_ppl_ratio is not None and bad_ratio:
        raise ValueError(f"max_ppl_ratio must be None or a number >= 1; got {max_ppl_ratio!r}")
    rows = list(rows)
    fp_best: dict[str, float] = {}
    for r in rows:
        if r["method"] == "fp32":
            fam = _family(r)
            fp_best[fam] = min(fp_best.get(fam, math.inf), r["ppl"])
    out = []
    for r in rows:
        fam = _family(r)
        ratio = r["ppl"] / fp_best[fam] if fam in fp_best else None
        kernel = r.get("kernel") if r.get("kernel") in KERNEL_FORMATS[hardware] else None
        if r["method"] == "fp32":
            kernel = "float"     # dense float GEMV: every hardware runs it
        if r["model_bytes"] > memory_bytes:
            why = "over budget"
        elif r["method"] in CALIBRATED and not calibration_data:
            why = "needs calibration data"
        elif r["method"] in TRAINED and not training_budget:
            why = "needs a training run"
        elif max_ppl_ratio is not None and (ratio is None or ratio > max_ppl_ratio):
            why = "quality"
        elif require_kernel and kernel is None:
            why = "no packed kernel"
        else:
            why = None
        out.append({"row": r, "ppl_ratio": ratio, "kernel": kernel, "excluded": why})
    return out


def _family(row: dict[str, Any]) -> str:
    """A row's family (the ``family`` key; else from the model name; a hand-made row's model is its own)."""
    if row.get("family"):
        return row["family"]
    try:
        return family_of(row["model"])
    except ValueError:
        return row["model"]


def _cite(r: dict[str, Any]) -> str:
    what = METHOD_LABELS.get(r["method"], r["method"])
    if r["method"] == "aqlm" and r.get("config"):
        what += f" {r['config']}"
    elif r["method"] not in ("fp32", "bitnet", "bitnet-trained", "binary"):
        what += f" {r['bits']:g}-bit" + (f" g{r['group_size']}" if r.get("group_size") else "")
    return (f"{r['model']} {what}: {r['model_bytes']:,} B, {r['bits_per_weight']:.3g} bits/weight, "
            f"ppl {r['ppl']:.4g}, {r['bits_per_byte']:.4f} bits/byte (lesson {r['source']})")


def recommend(memory_bytes: float, hardware: str = "cpu", calibration_data: bool = True,
              training_budget: bool = False, max_ppl_ratio: float | None = None,
              rows: Sequence[dict[str, Any]] | None = None, require_kernel: bool = False,
              top: int | None = None, resolution: float = 1e-3) -> list[dict[str, Any]]:
    """The course's decision guide: the measured options that fit, best first, each citing its row.

    Parameters
    ----------
    memory_bytes
        Budget for everything the model stores (:func:`byte_counts`; the KV cache and activations need
        room beyond it).
    hardware
        ``"cpu"`` or ``"gpu"``: which packed kernels exist (:data:`KERNEL_FORMATS`). An option without one
        still fits (its weights are decoded layer by layer) but runs at float speed or slower; it is ranked
        after an option of equal quality that has a kernel, and dropped with ``require_kernel=True``.
    calibration_data
        ``False`` drops GPTQ, AQLM and QuIP# (:data:`CALIBRATED`).
    training_budget
        ``False`` drops options that need a training run (the trained ternary twin, :data:`TRAINED`).
    max_ppl_ratio
        Quality tolerance: drop rows whose perplexity is above this multiple of the best float row of their
        family; ``None`` keeps every row.
    rows
        The measured table (default: the shipped embedded family, :func:`load_rows`).
    top
        Keep only the first ``top`` options.
    resolution
        Bits per byte closer than this are a tie (a 1e-5 bits/byte gap on 16,384 scored bytes is noise, not
        a reason to take twice the bytes): ranks compare bits per byte rounded to ``resolution``.

    Returns
    -------
    list of dict
        ``rank, model, method, bits, model_bytes, bits_per_byte, ppl, ppl_ratio, kernel, cite, row``, ranked
        by bits per byte (lower is better: comparable across tokenizers; ties within ``resolution``), then
        by bytes, then kernel first.

    Examples
    --------
    >>> rows = [{"model": "big", "params": 100, "method": "fp32", "bits": None, "group_size": None,
    ...          "bits_per_weight": 32.0, "model_bytes": 400, "ppl": 3.0, "bits_per_byte": 1.58,
    ...          "source": "00_welcome", "kernel": None},
    ...         {"model": "big", "params": 100, "method": "gptq", "bits": 2, "group_size": 64,
    ...          "bits_per_weight": 2.5, "model_bytes": 60, "ppl": 3.6, "bits_per_byte": 1.85,
    ...          "source": "02_rtn_hqq", "kernel": "int2"},
    ...         {"model": "big", "params": 100, "method": "rtn", "bits": 2, "group_size": 64,
    ...          "bits_per_weight": 2.3, "model_bytes": 58, "ppl": 4.5, "bits_per_byte": 2.17,
    ...          "source": "02_rtn_hqq", "kernel": "int2"}]
    >>> [r["method"] for r in recommend(100, rows=rows)], [r["method"] for r in recommend(100, rows=rows,
    ...     calibration_data=False)]
    (['gptq', 'rtn'], ['rtn'])
    >>> recommend(100, rows=rows, max_ppl_ratio=1.25)[0]["cite"]
    'big GPTQ 2-bit g64: 60 B, 2.5 bits/weight, ppl 3.6, 1.8500 bits/byte (lesson 02_rtn_hqq)'
    """
    if rows is None:
        rows = load_rows("embedded")
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top <= 0):
        raise ValueError(f"top must be None or a positive int; got {top!r}")
    ok = [s for s in screen(rows, memory_bytes, hardware, calibration_data, training_budget, max_ppl_ratio,
                            require_kernel) if s["excluded"] is None]
    if isinstance(resolution, bool) or not isinstance(resolution, int | float) or not resolution >= 0:
        raise ValueError(f"resolution must be a non-negative number of bits per byte; got {resolution!r}")

    def quality(s: dict[str, Any]) -> float:
        bpb = s["row"]["bits_per_byte"]
        return round(bpb / resolution) if resolution > 0 else bpb

    ok.sort(key=lambda s: (quality(s), s["row"]["model_bytes"], s["kernel"] is None))
    out = []
    for i, s in enumerate(ok[:top] if top else ok, 1):
        r = s["row"]
        out.append({"rank": i, "model": r["model"], "method": r["method"], "bits": r["bits"],
                    "model_bytes": r["model_bytes"], "bits_per_byte": r["bits_per_byte"], "ppl": r["ppl"],
                    "ppl_ratio": s["ppl_ratio"], "kernel": s["kernel"], "cite": _cite(r), "row": r})
    return out
