"""qcourse.lattice: E8 nearest point, E8P construction and exact encoder, RVQ, published figures."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcourse import lattice


def _relevant_vectors() -> torch.Tensor:
    """E8's 2400 Voronoi-relevant vectors: 240 roots (norm² 2) and 2160 of norm² 4."""
    pts = []
    for p in itertools.product((-1, 0, 1), repeat=8):                   # (±1², 0⁶) and (±1⁴, 0⁴)
        n2 = sum(v * v for v in p)
        if n2 in (2, 4) and sum(p) % 2 == 0:
            pts.append(p)
    for k in range(8):                                                  # (±2, 0⁷)
        for s in (-2, 2):
            pts.append(tuple(s if i == k else 0 for i in range(8)))
    for signs in itertools.product((-1, 1), repeat=8):                  # (±½)⁸ and (±3/2, ±½⁷), even sum
        if sum(signs) % 4 == 0:
            pts.append(tuple(s / 2 for s in signs))
        for k in range(8):
            p = tuple(s * (3 if i == k else 1) / 2 for i, s in enumerate(signs))
            if sum(p) % 2 == 0:
                pts.append(p)
    out = torch.tensor(pts, dtype=torch.float64)
    assert out.shape[0] == 2400 and torch.unique(out, dim=0).shape[0] == 2400
    return out


def _in_e8(x: torch.Tensor) -> torch.Tensor:
    frac = x - torch.floor(x)
    ints = (frac == 0).all(-1)
    halves = (frac == 0.5).all(-1)
    return (ints | halves) & (x.sum(-1) % 2 == 0)


def test_nearest_e8_is_optimal_against_every_relevant_vector() -> None:
    # a lattice point is the nearest one iff no Voronoi-relevant vector moves it closer
    x = torch.randn(3000, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2
    q = lattice.nearest_e8(x)
    assert _in_e8(q).all()
    d0 = ((x - q) ** 2).sum(-1)
    rel = _relevant_vectors()
    d_moved = ((x[:, None, :] - q[:, None, :] - rel[None]) ** 2).sum(-1)
    assert (d_moved.min(1).values >= d0 - 1e-12).all()


def test_nearest_dn_is_in_dn_and_optimal() -> None:
    x = torch.randn(2000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    q = lattice.nearest_dn(x)
    assert (q.sum(-1) % 2 == 0).all() and torch.equal(q, torch.round(q))
    # brute force over D4 points within 2 of the rounding
    base = torch.round(x)
    offs = torch.tensor(list(itertools.product(range(-2, 3), repeat=4)), dtype=torch.float64)
    cand = base[:, None, :] + offs[None]
    dist = ((x[:, None, :] - cand) ** 2).sum(-1)
    dist[(cand.sum(-1) % 2) != 0] = float("inf")
    torch.testing.assert_close(((x - q) ** 2).sum(-1), dist.min(1).values)


def test_e8_normalised_second_moment_monte_carlo() -> None:
    # 2Z⁸ ⊂ E8 and det E8 = 1, so uniform points on [0, 2)⁸ are uniform modulo E8 and G = E‖e‖²/8
    g = torch.Generator().manual_seed(2)
    x = torch.rand(200_000, 8, dtype=torch.float64, generator=g) * 2
    e2 = ((x - lattice.nearest_e8(x)) ** 2).sum(-1) / 8
    assert abs(float(e2.mean()) - 0.0716821) < 0.0005
    z2 = ((x - torch.round(x)) ** 2).mean()                             # the integer grid: 1/12
    assert abs(float(z2) - 1 / 12) < 0.0005


def test_abs_patterns_as_published() -> None:
    a = lattice.e8p_abs_patterns()
    n2 = Counter((a ** 2).sum(1).tolist())
    assert n2 == {2.0: 1, 4.0: 8, 6.0: 28, 8.0: 64, 10.0: 126, 12.0: 29}
    assert torch.unique(a, dim=0).shape[0] == 256
    twelve = a[(a ** 2).sum(1) == 12]
    assert ((twelve == 1.5).sum(1) == 5).all() and ((twelve == 0.5).sum(1) == 3).all()
    small = a[:227]                                                     # lexicographic, as torch.unique
    assert all(tuple(small[i].tolist()) < tuple(small[i + 1].tolist()) for i in range(226))


def test_codebook_is_2_16_distinct_points_of_e8_plus_quarter() -> None:
    g = lattice.e8p_codebook()
    assert g.shape == (65536, 8)
    assert torch.unique(g, dim=0).shape[0] == 65536
    assert _in_e8(g - 0.25).all()
    # shift −¼ exactly for codes whose 8 stored sign bits have odd parity
    codes = torch.arange(65536)
    parity = ((codes[:, None] >> torch.arange(8)) & 1).sum(1) % 2
    d8hat = g - torch.where(parity == 1, -0.25, 0.25).double()[:, None]
    assert ((d8hat - 0.5) % 1 == 0).all() and (d8hat.sum(1) % 2 == 0).all()     # in D̂8


def _decode_like_quip_sharp(c: int) -> list[float]:
    """QuIP#'s (version 1) decoding of one 16-bit code, written out from its description: packed nibbles
    hold the pattern in coordinate order (0, 2, 4, 6, 1, 3, 5, 7) with the last coordinate negated for
    odd-sum patterns; the sign byte's parity picks −¼ and is XORed into bit 0."""
    a = lattice.e8p_abs_patterns()[c >> 8].tolist()
    perm = [0, 2, 4, 6, 1, 3, 5, 7]
    packed = [a[p] for p in perm]
    if sum(a) % 2 == 1:
        packed[7] = -packed[7]
    signs = c & 255
    parity = bin(signs).count("1") % 2
    signs ^= parity
    shuffle = [0, 4, 1, 5, 2, 6, 3, 7]
    out = []
    for i in range(8):
        v = packed[shuffle[i]]
        if (signs >> shuffle[i]) & 1:
            v = -v
        out.append(v + (-0.25 if parity else 0.25))
    return out


def test_decode_matches_quip_sharp_layout() -> None:
    g = torch.Generator().manual_seed(3)
    codes = torch.cat([torch.arange(0, 600), torch.randint(0, 65536, (1500,), generator=g)])
    ref = torch.tensor([_decode_like_quip_sharp(int(c)) for c in codes], dtype=torch.float32)
    assert torch.equal(lattice.e8p_decode(codes), ref)


@pytest.mark.parametrize("scale", [0.3, 1.0, 2.5])
def test_encoder_equals_bruteforce(scale: float) -> None:
    x = torch.randn(800, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * scale
    codes, q = lattice.e8p_encode(x)
    _, qb = lattice.e8p_encode_bruteforce(x)
    assert torch.equal(lattice.e8p_decode(codes, torch.float64), q)
    torch.testing.assert_close(((x - q) ** 2).sum(-1), ((x - qb) ** 2).sum(-1), rtol=0, atol=1e-12)


def test_encoder_on_adversarial_inputs() -> None:
    x = torch.stack([torch.zeros(8), torch.full((8,), 0.25), torch.full((8,), -0.25), torch.full((8,), 40.0),
                     torch.tensor([0, 0, 0, 0, 0, 0, 0, -1e-9]), torch.tensor([9.0, 0, 0, 0, 0, 0, 0, 0]),
                     torch.tensor([0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5, 0.25])]).double()
    codes, q = lattice.e8p_encode(x)
    _, qb = lattice.e8p_encode_bruteforce(x)
    torch.testing.assert_close(((x - q) ** 2).sum(-1), ((x - qb) ** 2).sum(-1), rtol=0, atol=1e-12)
    assert codes.dtype == torch.int64 and int(codes.min()) >= 0 and int(codes.max()) < 65536


@given(seed=st.integers(0, 2**20), scale=st.floats(0.05, 4.0), rows=st.integers(1, 40))
def test_encoder_property(seed: int, scale: float, rows: int) -> None:
    x = torch.randn(rows, 8, generator=torch.Generator().manual_seed(seed)) * scale
    codes, q = lattice.e8p_encode(x, chunk=7)
    assert codes.shape == (rows,) and q.dtype == torch.float32
    assert torch.equal(lattice.e8p_decode(codes), q)
    _, qb = lattice.e8p_encode_bruteforce(x.double())
    d = ((x.double() - q.double()) ** 2).sum(-1)
    assert (d <= ((x.double() - qb) ** 2).sum(-1) + 1e-5).all()


def test_e8p_gaussian_mse_matches_quip_sharp() -> None:
    # QuIP#'s 2-bit E8P MSE on N(0, 1) at its best scale ≈ 0.0911 (vs Lloyd–Max 0.1175, D(2) = 0.0625)
    x = torch.randn(100_000, 8, generator=torch.Generator().manual_seed(5))
    mse = {rho: float(((lattice.e8p_encode(x * rho)[1] / rho - x) ** 2).mean()) for rho in (0.98, 1.03, 1.08)}
    best = min(mse.values())
    assert abs(best - 0.0911) < 0.01 * 0.0911
    assert min(mse, key=mse.get) == 1.03
    assert 0.0625 < best < 0.1175


def test_e81b_codebook() -> None:
    g = lattice.e81b_codebook()
    assert g.shape == (256, 8) and torch.unique(g, dim=0).shape[0] == 256
    assert _in_e8(g).all()
    n2 = Counter((g ** 2).sum(1).tolist())
    assert n2 == {0.0: 1, 2.0: 240, 4.0: 15}


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_rvq_roundtrip_and_rates(bits: int) -> None:
    x = torch.randn(4000, 8, generator=torch.Generator().manual_seed(6))
    rho = lattice.OPT_SCALE[bits]
    codes, q = lattice.rvq_encode(x * rho, bits)
    assert len(codes) == (1 if bits == 2 else 2)
    torch.testing.assert_close(lattice.rvq_decode(codes, bits), q)
    mse = float(((q / rho - x) ** 2).mean())
    assert mse < {2: 0.095, 3: 0.0346, 4: 0.0105}[bits]        # 3 bits beats Lloyd–Max's 0.03455
    if bits == 3:
        assert int(codes[1].max()) < 256


def test_errors() -> None:
    with pytest.raises(ValueError, match="last axis of length 8"):
        lattice.e8p_encode(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="floating-point"):
        lattice.nearest_e8(torch.zeros(2, 8, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN"):
        lattice.e8p_encode(torch.full((1, 8), float("nan")))
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        lattice.e8p_decode(torch.tensor([65536]))
    with pytest.raises(TypeError, match="integer"):
        lattice.e8p_decode(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="bits must be one of"):
        lattice.rvq_encode(torch.zeros(1, 8), 5)
    with pytest.raises(ValueError, match="chunk"):
        lattice.e8p_encode(torch.zeros(1, 8), chunk=0)
