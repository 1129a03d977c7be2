"""Checks for lesson 05 (BitNet b1.58): the absmean ternary quantizer, the straight-through estimator, and
llama.cpp's TQ2_0 packing of one block.

Each check runs the learner's function and the reference (:mod:`qcourse.methods.bitnet`,
:mod:`qcourse.lm.gguf_export`) on seeded and adversarial inputs (zeros, all-equal weights, one huge
outlier, exact ties at γ/2, extreme magnitudes, odd shapes) and prints what differs. The TQ2_0 check
decodes both byte strings with the ``gguf`` package's own dequantizer, so a passing packer produces
blocks llama.cpp reads.

>>> check_absmean_ternary(reference_absmean_ternary, verbose=False).status
'passed'
>>> import torch
>>> wrong = lambda w: (torch.round(w / w.abs().max()).to(torch.int8), w.abs().max().float())
>>> check_absmean_ternary(wrong, verbose=False).status          # absmax instead of absmean
'failed'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from qcourse.checks._harness import Case, CheckResult, Mutant, run_check
from qcourse.lm.gguf_export import QK_K, encode_tq2_0
from qcourse.methods import bitnet

__all__ = [
    "check_absmean_ternary", "check_ste_quantize", "check_pack_tq2_0_block",
    "reference_absmean_ternary", "reference_ste_quantize", "reference_pack_tq2_0_block",
]


# ---- references --------------------------------------------------------------------------------------

def reference_absmean_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BitNet b1.58's absmean quantizer: ``γ = max(mean|W|, 1e-5)`` (0-d float32) and trits
    ``t = clamp(round(W/γ), −1, 1)`` (``int8``, shaped like ``w``): :func:`bitnet.absmean_ternary`.

    >>> t, g = reference_absmean_ternary(torch.tensor([[0.4, -0.05, -1.0, 0.1]]))
    >>> t.tolist(), round(g.item(), 4)
    ([[1, 0, -1, 0]], 0.3875)
    """
    return bitnet.absmean_ternary(w)


def reference_ste_quantize(w: torch.Tensor) -> torch.Tensor:
    """``γ·t`` in the forward pass, the identity in the backward pass (:func:`bitnet.fake_quant_weight`).

    >>> w = torch.tensor([0.3, -2.0, 0.01], requires_grad=True)
    >>> y = reference_ste_quantize(w); y.sum().backward()
    >>> [round(v, 2) for v in y.tolist()], w.grad.tolist()
    ([0.0, -0.77, 0.0], [1.0, 1.0, 1.0])
    """
    return bitnet.fake_quant_weight(w)


def reference_pack_tq2_0_block(t: torch.Tensor, d: float) -> bytes:
    """One TQ2_0 block (66 bytes) of 256 trits ``t`` with scale ``d`` (:func:`gguf_export.encode_tq2_0`).

    Bytes 0–63: in half ``h`` (128 trits), byte ``32h + j`` holds ``t[128h + 32m + j] + 1`` in bits ``2m``
    and ``2m + 1`` (``m = 0…3``); bytes 64–65: ``d`` as little-endian fp16 (0 for an all-zero block).

    >>> b = reference_pack_tq2_0_block(torch.ones(256, dtype=torch.int8), 1.0)
    >>> len(b), b[0], b[64:].hex()              # every code 2 = 0b10: byte 0b10101010 = 170; fp16 1.0
    (66, 170, '003c')
    """
    return encode_tq2_0(t, d)


# ---- exercise 1: absmean ternary ----------------------------------------------------------------------

def _absmean_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(0)
    outlier = torch.randn(8, 32, generator=gen) * 0.02
    outlier[3, 7] = 50.0
    # mean|w| = 2: w/γ = ±0.5 and ±1.5 exactly; round half to even gives 0 and ±2 → clamp ±1
    ties = torch.tensor([[1.0, -1.0, 3.0, -3.0], [1.0, 3.0, -1.0, -3.0]])
    return [
        Case("seeded Gaussian 64×64", (torch.randn(64, 64, generator=gen),)),
        Case("hand-worked row [0.4, −0.05, −1, 0.1] (γ = 0.3875)",
             (torch.tensor([[0.4, -0.05, -1.0, 0.1]]),)),
        Case("exact ties at ±γ/2: round half to even (torch.round) gives 0", (ties,)),
        Case("seeded Student-t 48×96 (heavy tails)",
             (torch.randn(48, 96, generator=gen) / torch.randn(48, 96, generator=gen).abs().add(0.3),)),
        Case("all zeros: γ = 1e-5 (the floor), trits 0, no NaN", (torch.zeros(4, 16),)),
        Case("all-equal weights (γ = |w|, trits all ±1)", (torch.full((3, 8), -0.7),)),
        Case("one huge outlier: γ grows, most trits become 0", (outlier,)),
        Case("weights far beyond γ: clamp to ±1", (torch.tensor([[10.0, -10.0, 0.1, 0.1, 0.1, 0.1]]),)),
        Case("tiny weights, mean|W| < 1e-5: γ floored at 1e-5", (torch.randn(5, 7, generator=gen) * 1e-7,)),
        Case("large magnitudes (1e6)", (torch.randn(6, 10, generator=gen) * 1e6,)),
        Case("one row of odd length 13", (torch.randn(1, 13, generator=gen),)),
    ]


def check_absmean_ternary(student_fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
                          verbose: bool = True) -> CheckResult:
    """Check ``absmean_ternary(w) -> (t, gamma)``: trits ``int8`` shaped like ``w``, 0-d float32 ``γ``."""
    return run_check(
        "absmean_ternary", student_fn, reference_absmean_ternary, _absmean_cases(), rtol=1e-6, atol=0,
        result_names=("t", "gamma"),
        hint="""
            γ is the mean of |W| over the WHOLE tensor (not the max, not per row), floored at 1e-5 with
            clamp_min (so an all-zero W gives γ = 1e-5, not a division by zero); t = clamp(round(W/γ), −1, 1)
            with torch.round (ties to even: W = ±γ/2 gives 0). Return t as torch.int8 with W's shape and γ as
            a 0-d float32 tensor; leave W unchanged.
            """,
        verbose=verbose)


# ---- exercise 2: the straight-through estimator ---------------------------------------------------------

def _value_and_grad(fn: Callable[[torch.Tensor], torch.Tensor], w: torch.Tensor, upstream: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Call ``fn`` on a leaf copy of ``w`` and backpropagate ``upstream``; return (value, gradient of w)."""
    leaf = w.detach().clone().requires_grad_(True)
    y = fn(leaf)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor; got {type(y).__name__}")
    if y.shape != w.shape:
        raise ValueError(f"the result has shape {tuple(y.shape)}; w has {tuple(w.shape)}")
    if not y.requires_grad:
        raise ValueError("no gradient reached w: the result is cut off from the graph (everything detached)")
    (y * upstream).sum().backward()
    if leaf.grad is None:
        raise ValueError("no gradient reached w")
    return y.detach(), leaf.grad.detach()


def _ste_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(5)

    def case(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w, torch.randn(w.shape, generator=gen)

    big = torch.randn(8, 16, generator=gen)
    big[0, :4] = torch.tensor([4.0, -6.0, 9.0, -12.0])
    return [
        Case("seeded Gaussian 32×48 (random upstream gradient)", case(torch.randn(32, 48, generator=gen))),
        Case("weights beyond ±1 and beyond γ: the STE passes the gradient there too", case(big)),
        Case("small weights (γ ≈ 0.01)", case(torch.randn(16, 16, generator=gen) * 0.01)),
        Case("all zeros: value 0, gradient still the identity's", case(torch.zeros(4, 8))),
        Case("a 1-D tensor of 7 weights", case(torch.randn(7, generator=gen))),
        Case("exact ties at ±γ/2 (value 0 there)", case(torch.tensor([[1.0, -1.0, 3.0, -3.0]]))),
    ]


def check_ste_quantize(student_fn: Callable[[torch.Tensor], torch.Tensor], verbose: bool = True
                       ) -> CheckResult:
    """Check ``ste_quantize(w) -> tensor``: forward ``γ·t`` (absmean ternary), backward the identity.

    Each case calls your function on a leaf tensor that requires grad, multiplies the result by a seeded
    upstream gradient, calls ``backward()``, and compares the value and ``w.grad`` with the reference's.
    """
    def student(w: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _value_and_grad(student_fn, w, upstream)

    def reference(w: torch.Tensor, upstream: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _value_and_grad(reference_ste_quantize, w, upstream)

    return run_check(
        "ste_quantize", student, reference, _ste_cases(), rtol=1e-6, atol=1e-6,
        result_names=("value", "grad"),
        hint="""
            compute q = γ·t with the absmean quantizer under torch.no_grad() (or on w.detach()), then return
            w + (q − w).detach(): the value is q, and the only path autograd sees is w itself, so w.grad is
            exactly the upstream gradient — for every weight, also those beyond ±1 (no clipping). Without
            .detach() the gradient cancels to 0; detaching everything leaves no gradient at all. Keep
            float32.
            """,
        verbose=verbose)


# ---- exercise 3: TQ2_0 packing --------------------------------------------------------------------------

def _gguf_decode(b: bytes) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(np.frombuffer(b, dtype=np.uint8).reshape(1, -1),
                                  gguf.GGMLQuantizationType.TQ2_0).reshape(-1)


def _compare_tq2_0(got: Any, want: bytes, case: Case) -> tuple[bool, str]:
    if isinstance(got, bytearray):
        got = bytes(got)
    if not isinstance(got, bytes):
        return False, f"expected bytes (e.g. array.tobytes()); got {type(got).__name__}"
    if len(got) != len(want):
        return False, f"length {len(got)} bytes; a TQ2_0 block is 64 bytes of codes + 2 bytes of fp16 d = 66"
    if got == want:
        return True, "exact (bytes identical; the gguf package decodes them to d·t)"
    g, w = _gguf_decode(got), _gguf_decode(want)
    if not np.array_equal(g, w, equal_nan=True):
        bad = np.flatnonzero(~((g == w) | (np.isnan(g) & np.isnan(w))))
        i = int(bad[0])
        return False, (f"the gguf package decodes weight {i} as {g[i]:g}, expected {w[i]:g}; "
                       f"{len(bad)} of {QK_K} weights differ")
    diff = [i for i in range(len(want)) if got[i] != want[i]]
    return False, f"decodes to the right values but bytes {diff} differ (got {got[diff[0]]}, " \
                  f"expected {want[diff[0]]})"


def _tq2_cases() -> list[Case]:
    gen = torch.Generator().manual_seed(7)
    ramp = (torch.arange(QK_K) % 3 - 1).to(torch.int8)          # −1, 0, 1, −1, ... exposes the interleave
    first_half = torch.zeros(QK_K, dtype=torch.int8)
    first_half[:128] = 1
    return [
        Case("seeded random trits, d = 0.5",
             (torch.randint(-1, 2, (QK_K,), generator=gen).to(torch.int8), 0.5)),
        Case("ramp −1, 0, 1, … (byte j holds trits j, j+32, j+64, j+96 of its half)", (ramp, 0.25)),
        Case("+1 in the first half only (two halves of 128)", (first_half, 1.0)),
        Case("all −1 (code 0)", (torch.full((QK_K,), -1, dtype=torch.int8), 2.0)),
        Case("all zeros: llama.cpp stores d = 0", (torch.zeros(QK_K, dtype=torch.int8), 0.5)),
        Case("d = 0.1 (not exact in fp16: store fp16(d))",
             (torch.randint(-1, 2, (QK_K,), generator=gen).to(torch.int8), 0.1)),
        Case("large d = 1000", (torch.randint(-1, 2, (QK_K,), generator=gen).to(torch.int8), 1000.0)),
    ]


def check_pack_tq2_0_block(student_fn: Callable[[torch.Tensor, float], bytes], verbose: bool = True
                           ) -> CheckResult:
    """Check ``pack_tq2_0_block(t, d) -> bytes`` (66 bytes) against ours and the ``gguf`` dequantizer."""
    return run_check(
        "pack_tq2_0_block", student_fn, reference_pack_tq2_0_block, _tq2_cases(),
        compare_fn=_compare_tq2_0,
        hint="""
            codes q = t + 1 ∈ {0, 1, 2} as uint8; the block is two halves of 128 trits; in each half, byte j
            (0–31) holds q[32m + j] in bits 2m, 2m+1 for m = 0…3, i.e. q[j] | q[j+32] << 2 | q[j+64] << 4 |
            q[j+96] << 6. Then d as fp16, little-endian (np.float16(d).tobytes()), 0 when every trit is 0.
            Return bytes of length 66; leave t unchanged.
            """,
        verbose=verbose)


# ---- mutants: wrong implementations every check must reject (see tests/test_checks_mutations.py) ----------

def _absmean_mutant(scale: str = "mean", rnd: Callable[[torch.Tensor], torch.Tensor] = torch.round,
                    clamp: bool = True, floor: bool = True, plus_eps: bool = False,
                    t_dtype: torch.dtype = torch.int8, in_place: bool = False, todo_zero: bool = False
                    ) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A learner-style absmean quantizer; each keyword switches on one classic mistake."""
    def absmean_ternary(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if todo_zero and not w.any():
            raise NotImplementedError("zeros")
        a = w.abs()
        gamma = {"mean": a.mean(), "max": a.max(), "row": a.mean(dim=-1, keepdim=True),
                 "median": a.median()}[scale]
        if floor:
            gamma = gamma.clamp_min(1e-5)
        if plus_eps:
            gamma = gamma + 1e-5
        x = w.div_(gamma) if in_place else w / gamma
        t = rnd(x)
        if clamp:
            t = t.clamp(-1, 1)
        return t.to(t_dtype), gamma.float()
    return absmean_ternary


def _half_up(x: torch.Tensor) -> torch.Tensor:
    return torch.floor(x + 0.5)


def _q(w: torch.Tensor) -> torch.Tensor:
    t, g = bitnet.absmean_ternary(w)
    return (t.float() * g).to(w.dtype)


def _ste_todo(w: torch.Tensor) -> torch.Tensor:
    if w.ndim == 1:
        raise NotImplementedError("1-D")
    return w + (_q(w) - w).detach()


def _ste_scaled(w: torch.Tensor) -> torch.Tensor:
    # STE on round() only: the gradient flows through γ and w/γ, so it is not the identity's
    gamma = w.abs().mean().clamp_min(1e-5)
    x = w / gamma
    return gamma * (x + (torch.round(x).clamp(-1, 1) - x).detach())


def _ste_clipped(w: torch.Tensor) -> torch.Tensor:
    # BinaryConnect's "hardtanh" STE: gradient 1 only where |w| <= 1
    return torch.where(w.abs() <= 1, w, w.detach()) + (_q(w) - w).detach()


def _tq2_mutant(layout: str = "ours", offset: int = 1, shifts: tuple[int, ...] = (0, 2, 4, 6),
                d_type: str = "<f2", zero_d: bool = True, as_bytes: bool = True, todo_zero: bool = False
                ) -> Callable[[torch.Tensor, float], Any]:
    """A learner-style TQ2_0 packer; each keyword switches on one classic mistake."""
    def pack_tq2_0_block(t: torch.Tensor, d: float) -> Any:
        if todo_zero and not t.any():
            raise NotImplementedError("all-zero block")
        q = (t.to(torch.int16) + offset).numpy().astype(np.uint8)
        if layout == "ours":
            grid = q.reshape(2, 4, 32)                 # half, m, j
        elif layout == "consecutive":                  # four neighbours per byte
            grid = q.reshape(2, 32, 4).transpose(0, 2, 1)
        else:                                          # one interleave over 256 instead of two halves of 128
            grid = q.reshape(4, 64).reshape(4, 2, 32).transpose(1, 0, 2)
        packed = np.zeros((2, 32), dtype=np.uint8)
        for m in range(4):
            packed |= (grid[:, m] << shifts[m]).astype(np.uint8)
        scale = 0.0 if (zero_d and not t.any()) else d
        out = packed.reshape(-1).tobytes() + np.array(scale, dtype=d_type).tobytes()
        return out if as_bytes else np.frombuffer(out, dtype=np.uint8)
    return pack_tq2_0_block


#: check name -> wrong implementations it must reject, each with a fragment of the failure report.
MUTANTS: dict[str, list[Mutant]] = {
    "check_absmean_ternary": [
        Mutant("absmax", _absmean_mutant(scale="max"), "gamma: got"),
        Mutant("per-row", _absmean_mutant(scale="row"), "gamma: shape"),
        Mutant("median", _absmean_mutant(scale="median"), "seeded Gaussian"),
        Mutant("half-up", _absmean_mutant(rnd=_half_up), "exact ties"),
        Mutant("floor", _absmean_mutant(rnd=torch.floor), "seeded Gaussian"),
        Mutant("no-clamp", _absmean_mutant(clamp=False), "beyond γ: clamp"),
        Mutant("no-floor", _absmean_mutant(floor=False), "all zeros: γ = 1e-5"),
        Mutant("plus-eps", _absmean_mutant(plus_eps=True), "gamma: got"),
        Mutant("float-trits", _absmean_mutant(t_dtype=torch.float32), "dtype torch.float32 where torch.int8"),
        Mutant("in-place", _absmean_mutant(in_place=True), "modified its input w"),
        Mutant("partial", _absmean_mutant(todo_zero=True), "NotImplementedError"),
    ],
    "check_ste_quantize": [
        Mutant("no-detach", lambda w: w + (_q(w) - w), "grad: max |diff|"),
        Mutant("all-detached", lambda w: (w + (_q(w) - w)).detach(), "no gradient reached w"),
        Mutant("no-ste", lambda w: _q(w.detach()), "no gradient reached w"),
        Mutant("ste-on-round-only", _ste_scaled, "grad: max |diff|"),
        Mutant("clipped-ste", _ste_clipped, "beyond ±1"),
        Mutant("trits-without-gamma", lambda w: w + (torch.sign(_q(w)) - w).detach(), "value: max |diff|"),
        Mutant("sign-not-ternary", lambda w: w + (torch.sign(w) * w.abs().mean() - w).detach(),
               "value: max |diff|"),
        Mutant("float64", lambda w: (w + (_q(w) - w).detach()).double(),
               "dtype torch.float64 where torch.float32"),
        Mutant("partial", _ste_todo, "NotImplementedError"),
    ],
    "check_pack_tq2_0_block": [
        Mutant("consecutive", _tq2_mutant(layout="consecutive"), "gguf package decodes weight"),
        Mutant("one-interleave", _tq2_mutant(layout="whole-block"), "+1 in the first half only"),
        Mutant("reversed-shifts", _tq2_mutant(shifts=(6, 4, 2, 0)), "gguf package decodes weight"),
        Mutant("codes-without-offset", _tq2_mutant(offset=0), "gguf package decodes weight"),
        Mutant("float32-d", _tq2_mutant(d_type="<f4"), "length 68"),
        Mutant("big-endian-d", _tq2_mutant(d_type=">f2"), "gguf package decodes weight"),
        Mutant("d-kept-for-zero-block", _tq2_mutant(zero_d=False), "all zeros: llama.cpp stores d = 0"),
        Mutant("numpy-array", _tq2_mutant(as_bytes=False), "expected bytes"),
        Mutant("partial", _tq2_mutant(todo_zero=True), "NotImplementedError"),
    ],
}
