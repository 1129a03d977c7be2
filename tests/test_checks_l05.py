"""Lesson-05 checks: accept correct learner-style code, and say precisely what is wrong with a wrong one.

The catalogue of wrong implementations each check must reject lives in ``l05_bitnet.MUTANTS`` and is run
by ``tests/test_checks_mutations.py``; here: independent learner-style answers pass (written from the
formulas, not calling the package), the tie case holds real ties, the TQ2_0 reference is what the ``gguf``
package itself writes and decodes, and the messages.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcourse.checks as checks
from qcourse.checks import l05_bitnet as L


def _absmean(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gamma = w.abs().mean().clamp_min(1e-5)
    return torch.round(w / gamma).clamp(-1, 1).to(torch.int8), gamma


def _ste(w: torch.Tensor) -> torch.Tensor:
    t, gamma = _absmean(w.detach())
    return w + (t.float() * gamma - w).detach()          # the textbook form


def _pack(t: torch.Tensor, d: float) -> bytes:
    q = (t.to(torch.int16) + 1).numpy().astype(np.uint8).reshape(2, 4, 32)
    packed = q[:, 0] | (q[:, 1] << 2) | (q[:, 2] << 4) | (q[:, 3] << 6)
    return packed.tobytes() + np.float16(d if t.any() else 0.0).tobytes()


def test_checks_are_exported() -> None:
    for name in ("check_absmean_ternary", "check_ste_quantize", "check_pack_tq2_0_block"):
        assert getattr(checks, name) is getattr(L, name)


def test_learner_style_answers_pass() -> None:
    assert L.check_absmean_ternary(_absmean, verbose=False).passed
    assert L.check_ste_quantize(_ste, verbose=False).passed
    assert L.check_pack_tq2_0_block(_pack, verbose=False).passed


def test_tie_case_holds_exact_ties() -> None:
    (case,) = [c for c in L._absmean_cases() if c.label.startswith("exact ties")]
    (w,) = case.args
    ratio = (w / w.abs().mean()).numpy().astype(np.float64)
    assert np.all(np.abs(ratio) - np.floor(np.abs(ratio)) == 0.5)
    assert np.clip(np.round(ratio), -1, 1).tolist() != np.clip(np.floor(ratio + 0.5), -1, 1).tolist()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-1, 1), min_size=256, max_size=256),
       st.floats(0.0009765625, 1000.0, allow_nan=False, allow_infinity=False))
def test_tq2_0_reference_is_what_gguf_writes_and_reads(trits: list[int], d: float) -> None:
    t = torch.tensor(trits, dtype=torch.int8)
    ours = L.reference_pack_tq2_0_block(t, d)
    vals = gguf.quants.dequantize(np.frombuffer(ours, dtype=np.uint8).reshape(1, -1),
                                  gguf.GGMLQuantizationType.TQ2_0).reshape(-1)
    dd = np.float32(np.float16(d)) if any(trits) else np.float32(0)
    assert np.array_equal(vals, np.asarray(trits, dtype=np.float32) * dd)
    if any(trits):   # the gguf package's own encoder writes the same bytes
        theirs = gguf.quants.quantize(np.asarray(trits, dtype=np.float32).reshape(1, -1) * dd,
                                      gguf.GGMLQuantizationType.TQ2_0)
        assert theirs.tobytes() == ours
    assert _pack(t, d) == ours


def test_ste_check_measures_value_and_gradient() -> None:
    w = torch.tensor([[0.5, -3.0, 0.01, 2.0]])
    up = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    value, grad = L._value_and_grad(_ste, w, up)
    assert torch.equal(grad, up)                               # the identity's gradient, also beyond ±1
    assert torch.allclose(value, torch.tensor([[0.0, -1.3775, 0.0, 1.3775]]))
    with pytest.raises(ValueError, match="no gradient reached w"):
        L._value_and_grad(lambda x: x.detach() * 2, w, up)
    with pytest.raises(ValueError, match="shape"):
        L._value_and_grad(lambda x: x.sum(), w, up)


def test_messages_point_at_the_mistake(capsys: pytest.CaptureFixture[str]) -> None:
    res = L.check_ste_quantize(lambda w: w + (_ste(w) - w), verbose=False)       # forgot .detach()
    assert all(c.detail.startswith("grad: max |diff|") for c in res.cases if not c.ok)
    res = L.check_pack_tq2_0_block(lambda t, d: _pack(t, d)[:64], verbose=False)
    assert "a TQ2_0 block is 64 bytes of codes + 2 bytes of fp16 d = 66" in res.failures()
    L.check_absmean_ternary(lambda w: (_absmean(w)[0].float(), _absmean(w)[1]))
    out = capsys.readouterr().out
    assert "t: dtype torch.float32 where torch.int8 is required" in out and "hint:" in out


def test_unfinished_exercises_say_not_implemented(capsys: pytest.CaptureFixture[str]) -> None:
    def todo(*args: object) -> None:
        raise NotImplementedError()

    for check in (L.check_absmean_ternary, L.check_ste_quantize, L.check_pack_tq2_0_block):
        assert check(todo).status == "not implemented"
    assert capsys.readouterr().out.count("not implemented yet") == 3
