"""The error-feedback loop's quantizer seam (qcourse.ldlq): block OBS with a 2-D codebook, the scalar grid."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from qcourse.affine import FittedGrid, Grid
from qcourse.ldlq import BlockQuantizer, block_update, ldlq, prepare_hessian, proxy_loss
from qcourse.methods.base import BlockQuantizer as BaseBlockQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")

# a 2-D codebook of 16 points (a 4×4 grid turned by 30° so that the two coordinates interact)
_ANGLE = torch.tensor(torch.pi / 6, dtype=torch.float64)
_ROT = torch.stack([torch.stack([_ANGLE.cos(), -_ANGLE.sin()]), torch.stack([_ANGLE.sin(), _ANGLE.cos()])])
_LEVELS = torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=torch.float64)
BOOK = torch.cartesian_prod(_LEVELS, _LEVELS) @ _ROT.T


@dataclass(frozen=True)
class Codebook2D:
    """Nearest point of ``scale·BOOK`` per row; ``fit`` sets a per-row scale from the weights' RMS."""

    scale: torch.Tensor | None = None
    dim = 2

    def fit(self, w: torch.Tensor) -> Codebook2D:
        return Codebook2D(w.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-12) / 1.1)

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = torch.ones(block.shape[0], 1, dtype=block.dtype) if self.scale is None else self.scale
        idx = torch.cdist(block / s, BOOK.to(block.dtype)).argmin(1)
        return idx[:, None], BOOK.to(block.dtype)[idx] * s


@dataclass(frozen=True)
class FixedCodebook2D(Codebook2D):
    """The same codebook at a fixed scale: a quantizer without parameters (``fit`` returns itself)."""

    def fit(self, w: torch.Tensor) -> FixedCodebook2D:
        return self


def test_grid_and_codebooks_satisfy_the_protocol() -> None:
    assert BaseBlockQuantizer is BlockQuantizer
    for q in (Grid(3), Grid(3).fit(torch.randn(2, 4)), Codebook2D(), FixedCodebook2D(torch.ones(1, 1))):
        assert isinstance(q, BlockQuantizer)
    assert isinstance(Grid(2).fit(torch.randn(3, 8)), FittedGrid)
    assert not isinstance("4bit", BlockQuantizer)


@pytest.mark.parametrize("blocksize", [128, 6, 2])
@pytest.mark.parametrize("cfg", [dict(), dict(group_size=8), dict(group_size=8, static_groups=True),
                                 dict(group_size=16, percdamp=0.1)],
                         ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "per-row")
def test_2d_codebook_equals_naive_block_obs(cfg: dict, blocksize: int, hessian_problem: Callable,
                                            naive_block_obs: Callable) -> None:
    w, H = hessian_problem(12, 32, seed=blocksize, dead=(5,))
    res = ldlq(w, H, Codebook2D(), blocksize=blocksize, **cfg)
    ref = naive_block_obs(w, H, Codebook2D(), **cfg)
    assert torch.allclose(res.w_q, ref, rtol=0, atol=1e-10), (res.w_q - ref).abs().max()
    # codes: one per row and 2-column block, and they rebuild w_q through the fitted quantizers
    assert res.codes.shape == (12, 16)
    for blk in range(16):
        quantizer = res.quantizers[int(res.g_idx[2 * blk])]
        assert torch.equal(BOOK[res.codes[:, blk]] * quantizer.scale, res.w_q[:, 2 * blk:2 * blk + 2])


def test_fixed_codebook_equals_naive_block_obs_and_beats_direct_rounding(hessian_problem: Callable,
                                                                         naive_block_obs: Callable) -> None:
    w, H = hessian_problem(16, 24, seed=3)
    quantizer = FixedCodebook2D(torch.full((1, 1), 0.08, dtype=torch.float64))
    res = ldlq(w, H, quantizer, blocksize=8)
    assert torch.allclose(res.w_q, naive_block_obs(w, H, quantizer), atol=1e-10)
    direct = quantizer.quantize(w.double().reshape(-1, 2))[1].reshape(w.shape)
    assert proxy_loss(w, res.w_q, H) < proxy_loss(w, direct, H)
    assert len(res.quantizers) == 1 and res.quantizers[0] is quantizer


def test_block_losses_add_up_to_half_the_damped_proxy_loss(hessian_problem: Callable) -> None:
    # block OBS on a quadratic is exact: Σ ½‖E_b‖² = ½ tr(ΔW H_damped ΔWᵀ)
    w, H = hessian_problem(8, 20, seed=4)
    res = ldlq(w, H, Codebook2D(), group_size=10, percdamp=0.05)
    Hd = H + 0.05 * torch.mean(torch.diag(H)) * torch.eye(20, dtype=torch.float64)
    assert res.losses.shape == (10,)
    assert res.loss == pytest.approx(proxy_loss(w, res.w_q, Hd) / 2, rel=1e-9)


def test_scalar_grid_through_the_seam_is_gptq(hessian_problem: Callable, naive_block_obs: Callable) -> None:
    w, H = hessian_problem(8, 16, seed=6, dead=(2,))
    res = ldlq(w, H, Grid(3), group_size=4, act_order=True, blocksize=3)
    assert torch.allclose(res.w_q, naive_block_obs(w, H, Grid(3), group_size=4, act_order=True), atol=1e-10)
    assert res.codes.shape == w.shape and res.perm is not None


def test_block_update_is_block_obs_and_leaves_input_alone(hessian_problem: Callable) -> None:
    w, H = hessian_problem(3, 6, seed=7)
    wd, U = prepare_hessian(H, w.double(), 0.0)
    q = torch.round(wd[:, :2] * 4) / 4
    new, err = block_update(wd, 0, q, U[:2])
    assert torch.allclose(new[:, :2], q, atol=1e-12)
    Hinv = torch.linalg.inv(H)
    obs = wd.clone()
    obs[:, 2:] -= (wd[:, :2] - q) @ torch.linalg.solve(Hinv[:2, :2], Hinv[:2, 2:])
    obs[:, :2] = q
    assert torch.allclose(new, obs, atol=1e-10)
    assert torch.allclose(err, (wd[:, :2] - q) @ torch.linalg.inv(U[:2, :2]), atol=1e-12)
    assert torch.equal(wd, prepare_hessian(H, w.double(), 0.0)[0])


def test_seam_errors(hessian_problem: Callable) -> None:
    w, H = hessian_problem(4, 12, seed=8)
    with pytest.raises(TypeError, match="BlockQuantizer"):
        ldlq(w, H, object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="act_order .* dim=1"):
        ldlq(w, H, Codebook2D(), act_order=True)
    with pytest.raises(ValueError, match="blocksize=5 must be a multiple of the quantizer's dim=2"):
        ldlq(w, H, Codebook2D(), blocksize=5)
    with pytest.raises(ValueError, match="group_size=3 must be a multiple"):
        ldlq(w, H, Codebook2D(), group_size=3)
    with pytest.raises(ValueError, match="in_features=9 must be a multiple"):
        w9, H9 = hessian_problem(4, 9, seed=8)
        ldlq(w9, H9, Codebook2D())
    with pytest.raises(ValueError, match="static_groups=True needs a group_size"):
        ldlq(w, H, Codebook2D(), static_groups=True)
    with pytest.raises(ValueError, match=r"hessian must be a \[12, 12\]"):
        ldlq(w, H[:4, :4], Codebook2D())
