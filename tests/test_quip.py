"""qcourse.methods.quip: BlockLDLQ (vs the LDL formulation and vs GPTQ), incoherence, storage, API."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from qcourse import methods
from qcourse.affine import Grid
from qcourse.ldlq import ldlq
from qcourse.methods import quip
from qcourse.methods.base import weight_from_state
from qcourse.methods.gptq import gptq_quantize


def _block_ldlq_from_ldl(w: torch.Tensor, H: torch.Tensor, quantizer, percdamp: float = 0.01) -> torch.Tensor:
    """QuIP#'s BlockLDLQ as written in the paper: ``Ŵ = Q(W + (W − Ŵ)(A − I))`` with ``H = A D Aᵀ``,
    ``A`` unit block-upper-triangular (``A = Lᵀ`` for ``H = Lᵀ D L``), blocks of ``d = quantizer.dim``.

    The factorisation comes from the Cholesky factor of the reversed matrix (``J H J = C Cᵀ``), made unit by
    its diagonal blocks; no inverse Hessian anywhere, so it checks :func:`qcourse.ldlq.ldlq` independently.
    """
    d = quantizer.dim
    n = H.shape[0]
    H = H.double() + percdamp * torch.mean(torch.diag(H.double())) * torch.eye(n, dtype=torch.float64)
    rev = torch.arange(n - 1, -1, -1)
    C = torch.linalg.cholesky(H[rev][:, rev])
    blocks = torch.block_diag(*[C[k:k + d, k:k + d] for k in range(0, n, d)])
    L_rev = C @ torch.linalg.inv(blocks)                                 # unit block-lower
    A = L_rev[rev][:, rev]                                               # unit block-upper: H = A D Aᵀ
    W = w.double()
    Q = torch.zeros_like(W)
    for k in range(0, n, d):
        target = W[:, k:k + d] + (W[:, :k] - Q[:, :k]) @ A[:k, k:k + d]
        Q[:, k:k + d] = quantizer.quantize(target)[1].double()
    return Q


def test_ldl_factorisation_in_the_helper_is_right(hessian_problem: Callable) -> None:
    _, H = hessian_problem(4, 16, seed=0)
    # the reference reproduces ldlq with an exact (identity) quantizer: no rounding, no error, Q = W
    class Exact:
        dim = 8

        def quantize(self, b):
            return torch.zeros(b.shape[0], 1), b
    w = torch.randn(4, 16, dtype=torch.float64)
    torch.testing.assert_close(_block_ldlq_from_ldl(w, H, Exact()), w)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_block_ldlq_equals_the_ldl_formulation_with_e8p(seed: int, hessian_problem: Callable) -> None:
    w, H = hessian_problem(24, 64, seed=seed)
    x = w.double() / w.double().pow(2).mean().sqrt()                    # RMS 1, as quip scales it
    res = ldlq(x, H, quip.E8PQuantizer(2), blocksize=16)
    ref = _block_ldlq_from_ldl(x, H, quip.E8PQuantizer(2))
    torch.testing.assert_close(res.w_q, ref, rtol=0, atol=1e-9)


def test_block_ldlq_with_block_1_and_a_scalar_grid_is_gptq(hessian_problem: Callable) -> None:
    w, H = hessian_problem(16, 48, seed=3)
    gptq = gptq_quantize(w, H, Grid(2))
    fitted = Grid(2).fit(w.double())

    class Fixed:                      # the same per-row grid, fixed up front (as GPTQ fits it)
        dim = 1

        def quantize(self, b):
            return fitted.quantize(b)
    ref = _block_ldlq_from_ldl(w, H, Fixed())
    torch.testing.assert_close(gptq.w_q.double(), ref, rtol=0, atol=1e-10)


def test_transform_keeps_the_proxy_loss_and_spreads_outliers(hessian_problem: Callable) -> None:
    w, H = hessian_problem(48, 96, seed=4)
    w = w.double().clone()
    w[3, 7] = 40.0                                                       # one huge outlier weight
    H = H.clone()
    H[5, 5] *= 500                                                       # one dominant input direction
    s_out, s_in = quip.incoherence_signs(48, 96, seed=0)
    wt, ht = quip.transform_weight(w, s_out.double(), s_in.double()), quip.transform_hessian(H, s_in.double())
    dw = torch.randn(48, 96, dtype=torch.float64)
    dwt = quip.transform_weight(dw, s_out.double(), s_in.double())
    plain = quip.proxy_loss(dw, torch.zeros_like(dw), H)
    assert abs(quip.proxy_loss(dwt, torch.zeros_like(dwt), ht) - plain) < 1e-9 * plain
    before, after = quip.incoherence(w, H), quip.incoherence(wt, ht)
    assert after["mu_w"] < before["mu_w"] / 5
    assert after["mu_h"] < before["mu_h"] / 2
    torch.testing.assert_close(wt.norm(), w.norm())


def _layer(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """A 64×128 layer with heavy-tailed weights and a few loud input channels (like a real LLM)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.distributions.StudentT(3.0).sample((64, 128)) * 0.02
    x = torch.randn(4096, 128, generator=g, dtype=torch.float64)
    x[:, :4] *= 20
    mix = torch.randn(128, 128, generator=g, dtype=torch.float64) / 128**0.5
    x = x @ (torch.eye(128, dtype=torch.float64) + 0.3 * mix)
    return w, x.T @ x / 4096


def test_each_ingredient_lowers_the_proxy_loss() -> None:
    torch.manual_seed(0)
    w, H = _layer()
    m = methods.get("quip")

    def loss(**opts):
        return m.quantize(w, bits=2, hessian=H, **opts).loss
    full = loss()
    assert full < loss(transform=False)
    assert full < loss(rounding="nearest")
    assert full < loss(codebook="scalar")
    assert loss(codebook="scalar", rounding="nearest", transform=False) > 2 * full


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("codebook", ["e8p", "scalar"])
@pytest.mark.parametrize("transform", [True, False])
def test_storage_accounting_and_state_roundtrip(bits: int, codebook: str, transform: bool) -> None:
    w, H = _layer(6)
    qw = methods.get("quip").quantize(w[:24], bits=bits, hessian=H, codebook=codebook, transform=transform)
    m, n = 24, 128
    code_bits = m * n * bits                                          # E8P: 16/24/32 bits per 8 weights
    assert qw.storage_bits == code_bits + 32 + ((m + n) if transform else 0)
    tensors, meta = qw.to_state()
    stored = sum(t.numel() * t.element_size() * 8 for t in tensors.values())
    assert stored == pytest.approx(qw.storage_bits, abs=8 * len(tensors))
    back = weight_from_state(tensors, meta)
    assert torch.equal(back.dequantize(), qw.dequantize())
    assert back.bits_per_weight == qw.bits_per_weight


def test_more_bits_less_error_and_deterministic_seed() -> None:
    w, H = _layer(7)
    m = methods.get("quip")
    losses = [m.quantize(w, bits=b, hessian=H).loss for b in (2, 3, 4)]
    assert losses[0] > losses[1] > losses[2]
    a, b = m.quantize(w, bits=2, hessian=H, seed=1), m.quantize(w, bits=2, hessian=H, seed=1)
    assert torch.equal(a.dequantize(), b.dequantize())
    c = m.quantize(w, bits=2, hessian=H, seed=2)
    assert not torch.equal(a.dequantize(), c.dequantize())


def test_dequantize_inverts_the_transform_exactly_for_lossless_codes() -> None:
    # a weight already on the rotated grid comes back exactly: the transform is undone correctly
    s_out, s_in = quip.incoherence_signs(16, 64, seed=0)
    codes = torch.randint(0, 65536, (16, 8, 1), generator=torch.Generator().manual_seed(0))
    qw = quip.QuIPWeight((16, 64), 2, "e8p", codes, torch.tensor(0.5), s_out, s_in)
    w = qw.dequantize(torch.float64)
    assert torch.allclose(quip.transform_weight(w, s_out.double(), s_in.double()),
                          qw.dequantize_transformed(torch.float64), atol=1e-12)
    # and nearest rounding of that weight, at the same scale and signs, finds the same codes again
    again = quip.quip_quantize(w, None, 2, rounding="nearest", rho=float(qw.dequantize_transformed().pow(2)
                                                                          .mean().sqrt() / 0.5), seed=0)
    assert torch.equal(again.codes, codes)


def test_api_errors() -> None:
    m = methods.get("quip")
    with pytest.raises(ValueError, match="in_features=184 has no Hadamard transform"):
        m.quantize(torch.randn(12, 184), bits=2, hessian=torch.eye(184, dtype=torch.float64))
    with pytest.raises(ValueError, match="out_features=100 has no Hadamard transform"):
        m.quantize(torch.randn(100, 16), bits=2, hessian=torch.eye(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="multiple of the codebook dimension 8"):
        m.quantize(torch.randn(8, 12), bits=2, hessian=torch.eye(12, dtype=torch.float64))
    with pytest.raises(ValueError, match="bits must be one of"):
        m.quantize(torch.randn(8, 16), bits=1, hessian=torch.eye(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="codebook must be"):
        m.quantize(torch.randn(8, 16), bits=2, hessian=torch.eye(16, dtype=torch.float64), codebook="e8")
    with pytest.raises(ValueError, match="rounding must be"):
        m.quantize(torch.randn(8, 16), bits=2, hessian=torch.eye(16, dtype=torch.float64), rounding="rtn")
    with pytest.raises(ValueError, match="needs hessian"):
        m.quantize(torch.randn(8, 16), bits=2)
    with pytest.raises(ValueError, match="rounding='ldlq' needs hessian"):
        quip.quip_quantize(torch.randn(8, 16), None, 2)
    # without the transform any multiple of 8 works
    qw = m.quantize(torch.randn(100, 184), bits=2, hessian=torch.eye(184, dtype=torch.float64),
                    transform=False)
    assert qw.dequantize().shape == (100, 184)


def test_quantize_model_with_quip_on_a_small_llama() -> None:
    # the whole-model path: quantize_model(..., "quip", bits=2, calib=...) swaps every block linear
    from qcourse.lm.model import Llama, LlamaConfig
    from qcourse.nn import quantize_model

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=64, d_model=64, n_layers=2, n_heads=4, d_ff=192, max_seq_len=32))
    tokens = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(1))
    qmodel, report = quantize_model(model, "quip", bits=2, group_size=None, calib=tokens, progress=False)
    assert len(report.layers) == 7 * 2
    assert all(0 < r.proxy_loss < 1 for r in report.layers if r.proxy_loss is not None)
    with torch.no_grad():
        out = qmodel(tokens[:2])
    assert torch.isfinite(out).all()
    w = model.layers[0].mlp.down_proj.weight.detach()
    assert w.shape == (64, 192)                    # 192 = 12·16: the Kronecker path inside a model
