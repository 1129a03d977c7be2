"""Lesson-03 checks: the references agree with independent ones, correct learner-style code passes, and the
catalogue of wrong implementations (``l03_aqlm.MUTANTS``, run by ``tests/test_checks_mutations.py``) is
rejected with a pointed message."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qcourse.checks as checks
from qcourse.checks import l03_aqlm as L
from qcourse.kmeans import kmeans

pytestmark = pytest.mark.usefixtures("one_thread")


def test_checks_are_exported_and_accept_references() -> None:
    for name in ("check_kmeans_step", "check_beam_two_codebooks", "check_aqlm_bits"):
        assert callable(getattr(checks, name))
    assert L.check_kmeans_step(L.reference_kmeans_step, verbose=False).passed
    assert L.check_beam_two_codebooks(L.reference_beam_two_codebooks, verbose=False).passed
    assert L.check_aqlm_bits(L.reference_aqlm_bits, verbose=False).passed


def test_learner_style_code_passes() -> None:
    assert L.check_kmeans_step(L._kmeans_mutant(), verbose=False).passed
    assert L.check_beam_two_codebooks(L._beam_mutant(), verbose=False).passed
    assert L.check_aqlm_bits(L._bits_mutant(), verbose=False).passed

    def kmeans_step(x, c):                     # cdist and index_add_, as a learner might write it
        labels = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=len(c)).to(x.dtype)[:, None]
        return labels, torch.where(counts > 0, sums / counts.clamp_min(1), c)

    assert L.check_kmeans_step(kmeans_step, verbose=False).passed


def test_kmeans_step_reference_is_one_lloyd_iteration_of_the_package() -> None:
    x = torch.randn(300, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c0 = x[:6].clone()
    labels, c1 = L.reference_kmeans_step(x, c0)
    res = kmeans(x, 6, init=c0, n_iter=1)
    assert torch.allclose(c1, res.centroids, atol=1e-12)


@given(seed=st.integers(0, 10**6), beam=st.integers(1, 6))
@settings(max_examples=20)
def test_beam_reference_against_brute_force(seed: int, beam: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    h = a @ a.T + 0.1 * torch.eye(3, dtype=torch.float64)
    t = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    c1 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    c2 = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    ia, ib, err = L.reference_beam_two_codebooks(t, h, c1, c2, beam)
    for r in range(5):
        e = {(i, j): float((t[r] - c1[i] - c2[j]) @ h @ (t[r] - c1[i] - c2[j]))
             for i, j in itertools.product(range(5), range(4))}
        assert err[r] == pytest.approx(e[(int(ia[r]), int(ib[r]))], rel=1e-12)
        kept = sorted(range(5), key=lambda i: (float((t[r] - c1[i]) @ h @ (t[r] - c1[i])), i))[:beam]
        assert err[r] == pytest.approx(min(e[(i, j)] for i in kept for j in range(4)), rel=1e-12)
        if beam >= 5:                                    # the beam holds every a: exhaustive
            assert err[r] == pytest.approx(min(e.values()), rel=1e-12)


def test_bits_reference_by_hand() -> None:
    assert L.reference_aqlm_bits(256, 256, 2, 8) == (256 * 32 * 16 + 2 * 256 * 8 * 16 + 256 * 16) / 256**2
    assert round(L.reference_aqlm_bits(28672, 8192, 2, 8), 3) == 2.002


def test_unfinished_exercise_reports_not_implemented() -> None:
    def todo(*args):
        raise NotImplementedError()

    for check in (L.check_kmeans_step, L.check_beam_two_codebooks, L.check_aqlm_bits):
        assert check(todo, verbose=False).status == "not implemented"


@pytest.mark.parametrize("check, mutants", [(getattr(L, k), v) for k, v in L.MUTANTS.items()])
def test_every_mutant_is_rejected(check, mutants) -> None:
    from qcourse.checks._harness import try_mutant

    assert len(mutants) >= 6
    for m in mutants:
        rejected, text = try_mutant(check, m)
        assert rejected, (m.id, text)
