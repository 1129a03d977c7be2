"""Lesson-09 checks: accept correct learner-style code, and say precisely what is wrong with a wrong one.

The catalogue of wrong implementations each check must reject lives in ``l09_capstone.MUTANTS`` and is run
by ``tests/test_checks_mutations.py``; here: independent learner-style answers pass (written from the
definitions, not calling the package), the byte count agrees with an independent count from the modules,
the Q4_0 reference is what the ``gguf`` package itself writes, and the adversarial cases hold what their
labels say.
"""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcourse.checks as checks
from qcourse.checks import l09_capstone as L


def _bytes(model, report, float_bytes=4):
    quantized = {r.name + ".weight" for r in report.layers}
    seen, floats = set(), 0
    for p_name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or p_name in quantized:
            seen.add(id(p))
            continue
        seen.add(id(p))
        floats += p.numel()
    return sum(-(-r.storage_bits // 8) for r in report.layers) + float_bytes * floats


def _best(rows, budget, model=None):
    best = None
    for r in rows:
        if model is not None and r["model"] != model:
            continue
        if r["model_bytes"] > budget or not math.isfinite(r["bits_per_byte"]):
            continue
        key = (r["bits_per_byte"], r["model_bytes"])
        if best is None or key < (best["bits_per_byte"], best["model_bytes"]):
            best = r
    return best


def _pack(x):
    x = np.asarray(x, np.float32)
    mx = x[np.argmax(np.abs(x))]
    d = mx / np.float32(-8)
    inv = np.float32(1) / d if d else np.float32(0)
    q = np.minimum(15, (x * inv + np.float32(8.5)).astype(np.int32))     # astype truncates toward zero
    return np.float16(d).tobytes() + bytes((q[:16] | (q[16:] << 4)).astype(np.uint8))


def test_checks_are_exported():
    for name in ("check_true_model_bytes", "check_best_for_budget", "check_pack_q4_0_block"):
        assert getattr(checks, name) is getattr(L, name)


def test_learner_style_answers_pass():
    assert L.check_true_model_bytes(_bytes, verbose=False).passed
    assert L.check_best_for_budget(_best, verbose=False).passed
    assert L.check_pack_q4_0_block(_pack, verbose=False).passed


def test_true_bytes_of_a_tied_model_count_the_shared_matrix_once():
    from qcourse.lm import toy_model
    from qcourse.nn import quantize_model

    m = toy_model(seed=0, d_model=32, d_ff=64, tie_embeddings=True)
    _, rep = quantize_model(m, "rtn", bits=4, group_size=32, progress=False)
    total = L.reference_true_model_bytes(m, rep)
    emb = m.embed_tokens.weight.numel()
    norms = sum(p.numel() for n, p in m.named_parameters() if "norm" in n)
    assert total == sum(-(-r.storage_bits // 8) for r in rep.layers) + 4 * (emb + norms)
    with pytest.raises(ValueError, match="not parameters"):
        L.reference_true_model_bytes(torch.nn.Linear(2, 2), rep)


def test_budget_cases_hold_what_their_labels_say():
    cases = {c.label: c for c in L._budget_cases()}
    (rows, budget) = cases["rows of two models, model=None: compare bits per byte, not perplexity "
                           "(tokenizers differ)"].args
    by_ppl = min((r for r in rows if r["model_bytes"] <= budget), key=lambda r: r["ppl"])
    assert by_ppl is not L.reference_best_for_budget(rows, budget)
    rows, budget, _ = cases["a budget exactly equal to a row's bytes: it fits (<=)"].args
    assert L.reference_best_for_budget(rows, budget, "smollm2-135m")["model_bytes"] == budget


def test_q4_0_halves_case_holds_exact_halves():
    (case,) = [c for c in L._q4_cases() if c.label.startswith("exact halves")]
    (x,) = case.args
    v = x[1:8] / np.float32(-1.0)
    assert np.all(v - np.floor(v) == 0.5)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([1e-5, 0.05, 1.0, 1e3]))
def test_q4_0_reference_is_what_gguf_writes_and_reads(seed, scale):
    x = (np.random.default_rng(seed).standard_normal(32) * scale).astype(np.float32)
    b = L.reference_pack_q4_0_block(x)
    assert b == gguf.quants.quantize(x[None], gguf.GGMLQuantizationType.Q4_0).tobytes()
    assert b == _pack(x)


def test_messages_name_the_mistake():
    res = L.check_true_model_bytes(
        lambda m, r, float_bytes=4: 8 * L.reference_true_model_bytes(m, r, float_bytes), verbose=False)
    assert "bits, not bytes" in res.failures()
    res = L.check_pack_q4_0_block(lambda x: L.reference_pack_q4_0_block(x)[:17], verbose=False)
    assert "length 17" in res.failures()
    res = L.check_best_for_budget(lambda rows, b, model=None: 0, verbose=False)
    assert "expected the winning row" in res.failures()
