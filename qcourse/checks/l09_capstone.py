"""Checks for lesson 09 (capstone): a model's true bytes from its quantization report, the best
configuration for a memory budget from a results table, and one llama.cpp Q4_0 block.

Each check runs the learner's function and the reference on seeded and adversarial inputs (tied
embeddings, biases, layers whose bits are not whole bytes, a budget met exactly, nothing that fits, a
diverged run, rows of two models with different tokenizers, exact ties, an all-zero block, codes that
must be clamped) and prints what differs. The Q4_0 check decodes both byte strings with the ``gguf``
package's own dequantizer, so a passing packer writes blocks llama.cpp reads.

>>> check_pack_q4_0_block(reference_pack_q4_0_block, verbose=False).status
'passed'
>>> check_best_for_budget(lambda rows, budget, model=None: None, verbose=False).status
'failed'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch import nn

from qcourse.checks._harness import Case, CheckResult, Mutant, compare, run_check
from qcourse.kquants import encode
from qcourse.nn.report import LayerReport, QuantReport

__all__ = [
    "check_true_model_bytes", "check_best_for_budget", "check_pack_q4_0_block",
    "reference_true_model_bytes", "reference_best_for_budget", "reference_pack_q4_0_block",
]


# ---- references --------------------------------------------------------------------------------------

def reference_true_model_bytes(model: nn.Module, report: QuantReport, float_bytes: int = 4) -> int:
    """Bytes of everything ``model`` stores once the layers in ``report`` are quantized.

    Each quantized layer's weight takes ``ceil(storage_bits / 8)`` bytes (its codes, scales, zeros and
    codebooks: the report's ``storage_bits``; a tensor is stored in whole bytes); every other parameter —
    embeddings, norms, biases, an untied head — takes ``float_bytes`` per value, and a tensor shared by two
    modules (a tied embedding and head) is stored once.

    >>> from qcourse.lm import toy_model
    >>> from qcourse.nn import quantize_model
    >>> m = toy_model(d_model=32, d_ff=64)
    >>> _, rep = quantize_model(m, "rtn", bits=4, group_size=32, progress=False)
    >>> reference_true_model_bytes(m, rep) < sum(p.numel() for p in m.parameters()) * 4
    True
    """
    params = dict(model.named_parameters())          # a shared tensor appears once, under its first name
    quantized = {f"{layer.name}.weight" for layer in report.layers}
    unknown = sorted(quantized - params.keys())
    if unknown:
        raise ValueError(f"report names layers whose weights are not parameters of model: {unknown}")
    floats = sum(p.numel() for name, p in params.items() if name not in quantized)
    return sum(math.ceil(layer.storage_bits / 8) for layer in report.layers) + float_bytes * floats


def reference_best_for_budget(rows: Sequence[dict[str, Any]], budget_bytes: float,
                              model: str | None = None) -> dict[str, Any] | None:
    """The row of lowest bits per byte among those whose ``model_bytes`` fit ``budget_bytes``.

    Only rows of ``model`` compete when it is given (all rows otherwise). Bits per byte — not perplexity —
    is the score, so models with different tokenizers compare fairly (for one model it ranks exactly as
    perplexity does). A row with a non-finite score (a diverged run) never wins; of two equal scores the
    smaller model wins, then the earlier row. ``None`` when nothing fits.

    >>> rows = [{"model": "m", "model_bytes": 10, "bits_per_byte": 2.0},
    ...         {"model": "m", "model_bytes": 20, "bits_per_byte": 1.5}]
    >>> reference_best_for_budget(rows, 15)["model_bytes"], reference_best_for_budget(rows, 5)
    (10, None)
    """
    fits = [r for r in rows if (model is None or r["model"] == model) and r["model_bytes"] <= budget_bytes
            and math.isfinite(r["bits_per_byte"])]
    if not fits:
        return None
    return min(fits, key=lambda r: (r["bits_per_byte"], r["model_bytes"]))    # min keeps the first of ties


def reference_pack_q4_0_block(x: np.ndarray) -> bytes:
    """One llama.cpp Q4_0 block (18 bytes) of 32 float32 weights, as ``quantize_row_q4_0_ref`` writes it.

    ``max`` is the weight of largest magnitude *with its sign*; ``d = max / −8``, ``id = 1/d`` (0 when
    ``d = 0``); code ``q = min(15, trunc(x·id + 8.5))``; bytes: ``d`` as little-endian fp16, then byte ``j``
    (0–15) = ``q[j] | q[j + 16] << 4``.

    >>> b = reference_pack_q4_0_block(np.linspace(-1, 1, 32, dtype=np.float32))
    >>> len(b), b[:2].hex()          # max = −1 (the first of ±1): d = −1/−8 = 0.125, fp16 0x3000
    (18, '0030')
    """
    return encode(np.asarray(x, dtype=np.float32).reshape(1, 32), "Q4_0")[0]


# ---- exercise 1: true model bytes ---------------------------------------------------------------------

def _quantized(model: nn.Module, **kwargs: Any) -> tuple[nn.Module, QuantReport]:
    from qcourse.nn import quantize_model

    _, report = quantize_model(model, "rtn", progress=False, **kwargs)
    return model, report


def _bytes_cases() -> list[Case]:
    from qcourse.lm import toy_model

    untied = toy_model(seed=1, d_model=32, d_ff=64, n_layers=2)
    tied = toy_model(seed=2, d_model=32, d_ff=64, n_layers=1, tie_embeddings=True)
    mlp = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 16), nn.LayerNorm(16))
    odd = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 2, bias=False), nn.LayerNorm(2))
    odd_layers = [LayerReport(name=n, shape=s, bits=4, bits_per_weight=36 / (s[0] * s[1]), storage_bits=36,
                              rel_error=0.0, proxy_loss=None, seconds=0.0) for n, s in (("0", (2, 4)),
                                                                                           ("1", (2, 2)))]
    odd_report = QuantReport(method="hand-made", bits=4, group_size=None, layers=odd_layers)
    empty = QuantReport(method="none", bits=16, group_size=None, layers=[])
    return [
        Case("untied toy Llama, every block linear RTN 4-bit g32; embeddings, norms, head in float32",
             (*_quantized(untied, bits=4, group_size=32),)),
        Case("tied embeddings: the matrix shared by the embedding and the head is stored once",
             (*_quantized(tied, bits=4, group_size=32),)),
        Case("float_bytes=2: the float tensors in fp16", (*_quantized(untied, bits=2, group_size=16),),
             {"float_bytes": 2}),
        Case("only the MLP quantized (include='*mlp*'): the attention linears stay float",
             (*_quantized(untied, bits=3, group_size=32, include="*mlp*"),)),
        Case("a plain MLP with biases: biases (and the LayerNorm) stay float",
             (*_quantized(mlp, bits=4, group_size=16),)),
        Case("two layers of 36 bits: each tensor takes whole bytes (5 + 5, not ceil(72/8))",
             (odd, odd_report)),
        Case("an empty report: nothing quantized, every parameter float", (untied, empty)),
    ]


def _compare_bytes(got: Any, want: int, case: Case) -> tuple[bool, str]:
    if isinstance(got, bool) or not isinstance(got, int | np.integer):
        return False, f"expected an int number of bytes; got {type(got).__name__} {got!r}"
    if int(got) == want:
        return True, "exact"
    hint = " (that is 8× the answer: bits, not bytes)" if int(got) == 8 * want else ""
    return False, f"got {int(got):,} bytes, expected {want:,}{hint}"


def check_true_model_bytes(student_fn: Callable[..., int], verbose: bool = True) -> CheckResult:
    """Check ``true_model_bytes(model, report, float_bytes=4) -> int``."""
    return run_check(
        "true_model_bytes", student_fn, reference_true_model_bytes, _bytes_cases(),
        compare_fn=_compare_bytes,
        hint="""
            quantized weights: sum over report.layers of ceil(layer.storage_bits / 8) (storage_bits already
            holds codes + scales + zeros; report.bits is only what was asked for). Everything else that the
            model stores is a parameter: loop over model.named_parameters() (it lists a tied tensor once;
            state_dict() lists it twice) and add float_bytes × numel for every parameter whose name is not
            f"{layer.name}.weight" of a quantized layer — embeddings, norms, biases, an untied head.
            Return an int.
            """,
        verbose=verbose)


# ---- exercise 2: best configuration for a budget ------------------------------------------------------

def _row(model: str, method: str, bits: float, model_bytes: int, ppl: float, bpb: float) -> dict[str, Any]:
    params = 134_515_008 if model == "smollm2-135m" else 3_500_000
    return {"model": model, "params": params, "method": method, "bits": bits, "group_size": 64,
            "bits_per_weight": bits + 0.5, "model_bytes": model_bytes, "ppl": ppl, "bits_per_byte": bpb,
            "quantize_seconds": 1.0, "tokens_per_second": 100.0, "source": "synthetic"}


def _budget_cases() -> list[Case]:
    s, a = "smollm2-135m", "austen"
    smol = [_row(s, "fp", 16, 269_030_016, 37.05, 1.10), _row(s, "rtn", 4, 90_000_000, 45.0, 1.16),
            _row(s, "gptq", 4, 90_000_000, 40.2, 1.13), _row(s, "gptq", 3, 76_000_000, 60.1, 1.24),
            _row(s, "aqlm", 2, 62_000_000, 105.5, 1.42), _row(s, "rtn", 2, 62_500_000, 9000.0, 3.4)]
    both = smol + [_row(a, "fp", 16, 7_000_000, 3.28, 1.71), _row(a, "gptq", 2, 1_600_000, 3.31, 1.73)]
    diverged = [_row(s, "quip", 2, 60_000_000, float("nan"), float("nan"))] + smol
    tie = [_row(s, "hqq", 3, 80_000_000, 60.1, 1.24), _row(s, "gptq", 3, 76_000_000, 60.1, 1.24),
           _row(s, "rtn", 3, 76_000_000, 60.1, 1.24)]
    # bits_per_weight × params / 8 fits 70 MB here, but embeddings and head make the model 74 MB
    weights_only = [_row(s, "rtn", 3, 74_000_000, 70.0, 1.28), _row(s, "aqlm", 2, 62_000_000, 105.5, 1.42)]
    weights_only[0]["bits_per_weight"] = 3.5
    return [
        Case("SmolLM2 rows, a 100 MB budget, model='smollm2-135m'", (smol, 100_000_000, s)),
        Case("a budget exactly equal to a row's bytes: it fits (<=)", (smol, 76_000_000, s)),
        Case("nothing fits: return None", (smol, 10_000_000, s)),
        Case("model='austen': only its rows compete", (both, 300_000_000, a)),
        Case("rows of two models, model=None: compare bits per byte, not perplexity (tokenizers differ)",
             (both, 300_000_000)),
        Case("a diverged run (NaN) never wins", (diverged, 70_000_000, s)),
        Case("an exact tie in bits per byte: the smaller model wins, then the earlier row",
             (tie, 90_000_000, s)),
        Case("model_bytes counts embeddings and head; bits_per_weight × params / 8 does not",
             (weights_only, 71_000_000, s)),
        Case("the table in reverse order", (smol[::-1], 95_000_000, s)),
    ]


def _compare_rows(got: Any, want: dict[str, Any] | None, case: Case) -> tuple[bool, str]:
    if want is None:
        return (True, "exact (None: nothing fits)") if got is None else \
            (False, f"expected None (nothing fits); got {type(got).__name__}")
    if not isinstance(got, dict):
        return False, f"expected the winning row (a dict); got {type(got).__name__} {got!r}"
    same = set(got) == set(want) and all(
        got[k] == want[k] or (isinstance(want[k], float) and math.isnan(want[k]) and got[k] != got[k])
        for k in want)
    if same:
        return True, "exact"
    ok, detail = compare(got, want, 0, 0)
    what = f"{got.get('model')} {got.get('method')} {got.get('bits')} bits ({got.get('model_bytes')} bytes)"
    best = f"{want['model']} {want['method']} {want['bits']} bits ({want['model_bytes']} bytes)"
    return ok, f"chose {what}; expected {best}" + ("" if ok else f" — {detail}")


def check_best_for_budget(student_fn: Callable[..., dict[str, Any] | None], verbose: bool = True
                          ) -> CheckResult:
    """Check ``best_for_budget(rows, budget_bytes, model=None) -> row or None``."""
    return run_check(
        "best_for_budget", student_fn, reference_best_for_budget, _budget_cases(),
        compare_fn=_compare_rows,
        hint="""
            keep the rows with row["model"] == model (every row when model is None) whose
            row["model_bytes"] <= budget_bytes (everything stored; not bits_per_weight × params) and whose
            bits_per_byte is finite (math.isfinite); return None if none is left; else the row with the
            smallest (bits_per_byte, model_bytes) — min(rows, key=...) keeps the first of exact ties.
            Rank by bits per byte, not perplexity: SmolLM2's perplexity is per token and the embedded
            model's per byte. Return the row itself; do not modify the table.
            """,
        verbose=verbose)


# ---- exercise 3: one Q4_0 block -----------------------------------------------------------------------

def _gguf_decode(b: bytes) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(np.frombuffer(b, dtype=np.uint8).reshape(1, -1),
                                  gguf.GGMLQuantizationType.Q4_0).reshape(-1)


def _compare_q4_0(got: Any, want: bytes, case: Case) -> tuple[bool, str]:
    if isinstance(got, bytearray):
        got = bytes(got)
    if not isinstance(got, bytes):
        return False, f"expected bytes (e.g. array.tobytes()); got {type(got).__name__}"
    if len(got) != len(want):
        return False, f"length {len(got)} bytes; a Q4_0 block is 2 bytes of fp16 d + 16 bytes of codes = 18"
    if got == want:
        return True, "exact (bytes identical; the gguf package decodes them to d·(q − 8))"
    g, w = _gguf_decode(got), _gguf_decode(want)
    if not np.array_equal(g, w, equal_nan=True):
        bad = np.flatnonzero(~((g == w) | (np.isnan(g) & np.isnan(w))))
        i = int(bad[0])
        return False, (f"the gguf package decodes weight {i} as {g[i]:g}, expected {w[i]:g}; "
                       f"{len(bad)} of 32 weights differ")
    if got[2:] == want[2:] and {got[:2], want[:2]} == {b"\x00\x00", b"\x00\x80"}:
        return True, "decodes identically (d = +0 where llama.cpp writes −0.0 = 0/−8)"
    diff = [i for i in range(len(want)) if got[i] != want[i]]
    return False, f"decodes to the right values but bytes {diff} differ (got {got[diff[0]]}, " \
                  f"expected {want[diff[0]]})"


def _q4_cases() -> list[Case]:
    rng = np.random.default_rng(9)
    f = np.float32
    ties = np.zeros(32, f)
    ties[0] = 8.0                      # max = 8 → d = −1: x·id + 8.5 lands on .0 for x = k + .5
    ties[1:8] = [3.5, 1.5, -0.5, -2.5, 0.5, -4.5, 6.5]
    clamp = np.full(32, 0.5, f)
    clamp[5], clamp[6] = 8.0, -7.9                      # max = +8: −7.9·id + 8.5 = 16.4 → code 15, not 16
    negmax = (rng.standard_normal(32) * 0.1).astype(f)
    negmax[11] = -1.0
    posmax = (rng.standard_normal(32) * 0.1).astype(f)
    posmax[20] = 1.0
    return [
        Case("seeded Gaussian ×0.05", ((rng.standard_normal(32) * 0.05).astype(f),)),
        Case("ramp −1…1 (byte j holds codes j and j+16)", (np.linspace(-1, 1, 32, dtype=f),)),
        Case("largest magnitude negative: d = max/−8 > 0", (negmax,)),
        Case("largest magnitude positive: d < 0, max lands on code 0", (posmax,)),
        Case("exact halves: trunc(x·id + 8.5) rounds them up", (ties,)),
        Case("a weight of opposite sign near −max: code 16 clamped to 15", (clamp,)),
        Case("all zeros: d = 0, id = 0, every code 8 (no division by zero)", (np.zeros(32, f),)),
        Case("a constant block", (np.full(32, -0.3, f),)),
        Case("one huge outlier", (np.where(np.arange(32) == 7, f(40.0),
                                           rng.standard_normal(32).astype(f) * f(0.01)).astype(f),)),
        Case("tiny weights (1e-6: d is an fp16 subnormal)", ((rng.standard_normal(32) * 1e-6).astype(f),)),
        Case("large weights (1e3)", ((rng.standard_normal(32) * 1e3).astype(f),)),
    ]


def check_pack_q4_0_block(student_fn: Callable[[np.ndarray], bytes], verbose: bool = True) -> CheckResult:
    """Check ``pack_q4_0_block(x) -> bytes`` (18 bytes) against llama.cpp's reference and gguf's decoder."""
    return run_check(
        "pack_q4_0_block", student_fn, reference_pack_q4_0_block, _q4_cases(),
        compare_fn=_compare_q4_0,
        hint="""
            max = x[argmax |x|] keeps its sign; d = max / −8 in float32; id = 1/d, or 0 when d == 0;
            q = min(15, trunc(x·id + 8.5)) as integers 0…15 (trunc, not round: halves go up; the min
            matters for a weight of the other sign near −max). Then d as little-endian fp16
            (np.float16(d).tobytes()) followed by 16 bytes, byte j = q[j] | q[j + 16] << 4 (the first
            half in the low nibbles). Leave x unchanged.
            """,
        verbose=verbose)


# ---- mutants: wrong implementations every check must reject (see tests/test_checks_mutations.py) ----------

def _bytes_mutant(mistake: str) -> Callable[..., Any]:
    """A learner-style true_model_bytes with one classic mistake."""
    def true_model_bytes(model: nn.Module, report: QuantReport, float_bytes: int = 4) -> Any:
        if mistake == "partial" and not report.layers:
            raise NotImplementedError("empty report")
        quantized = {f"{layer.name}.weight" for layer in report.layers}
        params = (list(model.state_dict().items()) if mistake == "state-dict"
                  else list(model.named_parameters()))
        fb = 4 if mistake == "ignore-float-bytes" else float_bytes
        floats = 0
        for name, p in params:
            if name in quantized and mistake != "float-too":
                continue
            if mistake == "no-embeddings" and "embed" in name:
                continue
            if mistake == "no-norms" and p.ndim == 1 and "bias" not in name:
                continue
            if mistake == "no-biases" and name.endswith("bias"):
                continue
            if mistake == "state-dict" and not p.is_floating_point():
                continue
            floats += p.numel()
        if mistake == "requested-bits":
            q = sum(math.ceil(layer.bits * layer.numel / 8) for layer in report.layers)
        elif mistake == "ceil-total":
            q = math.ceil(sum(layer.storage_bits for layer in report.layers) / 8)
        else:
            q = sum(math.ceil(layer.storage_bits / 8) for layer in report.layers)
        total = q + fb * floats
        if mistake == "bits":
            return 8 * total
        if mistake == "float-result":
            return float(total)
        return total
    return true_model_bytes


def _budget_mutant(mistake: str) -> Callable[..., Any]:
    """A learner-style best_for_budget with one classic mistake."""
    def best_for_budget(rows: Sequence[dict[str, Any]], budget_bytes: float, model: str | None = None) -> Any:
        def size(r: dict[str, Any]) -> float:
            return r["bits_per_weight"] * r["params"] / 8 if mistake == "weights-only" else r["model_bytes"]

        fits = [r for r in rows
                if (model is None or mistake == "no-model-filter" or r["model"] == model)
                and (size(r) < budget_bytes if mistake == "strict" else size(r) <= budget_bytes)
                and (mistake == "nan" or math.isfinite(r["bits_per_byte"]))]
        if not fits:
            if mistake == "partial":
                raise NotImplementedError("nothing fits")
            return {} if mistake == "empty-dict" else None
        score = "ppl" if mistake == "by-ppl" else "bits_per_byte"
        if mistake == "tie-last":
            return max(fits, key=lambda r: (-r[score], r["model_bytes"]))
        if mistake == "nan":
            best = fits[0]
            for r in fits[1:]:
                if r[score] < best[score]:       # NaN < x and x < NaN are both False: a NaN first row stays
                    best = r
            return best
        return min(fits, key=lambda r: (r[score], r["model_bytes"]))
    return best_for_budget


def _q4_mutant(mistake: str) -> Callable[[np.ndarray], Any]:
    """A learner-style Q4_0 packer with one classic mistake."""
    def pack_q4_0_block(x: np.ndarray) -> Any:
        if mistake == "partial" and not x.any():
            raise NotImplementedError("all-zero block")
        x = np.asarray(x, dtype=np.float32)
        amax = np.abs(x).max()
        mx = x[np.abs(x).argmax()]
        d = {"abs": amax / np.float32(8), "minus7": mx / np.float32(-7)}.get(mistake, mx / np.float32(-8))
        d = np.float32(d)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.float32(1) / d if (d != 0 or mistake == "no-zero-guard") else np.float32(0)
            v = x * inv
            if mistake == "round":
                q = np.round(v) + 8
            else:
                q = np.trunc(v + np.float32(8.5))
        q = np.nan_to_num(q, nan=0.0, posinf=0.0, neginf=0.0)
        if mistake != "no-clamp":
            q = np.minimum(15, q)
        q = q.astype(np.int64)
        if mistake == "in-place":
            x[:] = 0
        if mistake == "consecutive":
            packed = q[0::2] | (q[1::2] << 4)
        elif mistake == "swapped-nibbles":
            packed = (q[:16] << 4) | q[16:]
        else:
            packed = q[:16] | (q[16:] << 4)
        scale = np.array(d, dtype="<f4" if mistake == "float32-d" else "<f2").tobytes()
        out = scale + (packed & 0xFF).astype(np.uint8).tobytes()
        return np.frombuffer(out, dtype=np.uint8) if mistake == "numpy-array" else out
    return pack_q4_0_block


#: check name -> wrong implementations it must reject, each with a fragment of the failure report.
MUTANTS: dict[str, list[Mutant]] = {
    "check_true_model_bytes": [
        Mutant("no-embeddings", _bytes_mutant("no-embeddings"), "untied toy Llama"),
        Mutant("tied-counted-twice", _bytes_mutant("state-dict"), "tied embeddings"),
        Mutant("no-norms", _bytes_mutant("no-norms"), "untied toy Llama"),
        Mutant("no-biases", _bytes_mutant("no-biases"), "biases"),
        Mutant("requested-bits", _bytes_mutant("requested-bits"), "untied toy Llama"),
        Mutant("quantized-also-float", _bytes_mutant("float-too"), "untied toy Llama"),
        Mutant("ceil-of-total", _bytes_mutant("ceil-total"), "whole bytes"),
        Mutant("ignores-float-bytes", _bytes_mutant("ignore-float-bytes"), "float_bytes=2"),
        Mutant("bits-not-bytes", _bytes_mutant("bits"), "bits, not bytes"),
        Mutant("float-result", _bytes_mutant("float-result"), "expected an int"),
        Mutant("partial", _bytes_mutant("partial"), "NotImplementedError"),
    ],
    "check_best_for_budget": [
        Mutant("strict-less", _budget_mutant("strict"), "exactly equal"),
        Mutant("by-perplexity", _budget_mutant("by-ppl"), "not perplexity"),
        Mutant("no-model-filter", _budget_mutant("no-model-filter"), "model='austen'"),
        Mutant("nan-wins", _budget_mutant("nan"), "diverged"),
        Mutant("weights-only-bytes", _budget_mutant("weights-only"), "counts embeddings"),
        Mutant("tie-goes-to-last", _budget_mutant("tie-last"), "exact tie"),
        Mutant("empty-dict", _budget_mutant("empty-dict"), "nothing fits"),
        Mutant("partial", _budget_mutant("partial"), "NotImplementedError"),
    ],
    "check_pack_q4_0_block": [
        Mutant("unsigned-scale", _q4_mutant("abs"), "seeded Gaussian"),
        Mutant("minus-7", _q4_mutant("minus7"), "seeded Gaussian"),
        Mutant("round-half-even", _q4_mutant("round"), "exact halves"),
        Mutant("no-clamp", _q4_mutant("no-clamp"), "clamped to 15"),
        Mutant("consecutive-nibbles", _q4_mutant("consecutive"), "ramp"),
        Mutant("swapped-nibbles", _q4_mutant("swapped-nibbles"), "ramp"),
        Mutant("float32-d", _q4_mutant("float32-d"), "length 20"),
        Mutant("no-zero-guard", _q4_mutant("no-zero-guard"), "all zeros"),
        Mutant("numpy-array", _q4_mutant("numpy-array"), "expected bytes"),
        Mutant("in-place", _q4_mutant("in-place"), "modified its input x"),
        Mutant("partial", _q4_mutant("partial"), "NotImplementedError"),
    ],
}
