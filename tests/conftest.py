"""Shared test setup: deterministic, deadline-free hypothesis runs and seeded RNGs for every test.

The machine that runs CI has 2 cores shared with other jobs, so hypothesis deadlines would fail on timing
noise rather than on bugs; and every RNG is seeded so a failure reproduces. ``HYPOTHESIS_PROFILE=dev``
explores new random examples instead of the fixed derandomized ones.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Seed Python, NumPy and torch before every test, so no test depends on the order tests run in."""
    from qcourse.notebook import seed_everything

    seed_everything(0)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds notebooks/, solutions/, exercises/, qcourse/)."""
    return REPO_ROOT


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: many small ops stall in a 2-thread pool on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- Hessian-aware rounding (GPTQ, the qcourse.ldlq seam) -----------------------------------------------


def _hessian_problem(out: int, n_in: int, seed: int, dead: tuple[int, ...] = ()):
    """A weight and H = E[x xᵀ] of correlated, unevenly scaled inputs (optionally some dead ones)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=g, dtype=torch.float64) / n_in**0.5
    x = torch.randn(4 * n_in, n_in, generator=g, dtype=torch.float64) @ mix
    x = x * torch.linspace(0.2, 3.0, n_in, dtype=torch.float64)[torch.randperm(n_in, generator=g)]
    x[:, list(dead)] = 0
    H = x.T @ x / x.shape[0]
    w = torch.randn(out, n_in, generator=g) * 0.1
    return w, H


def _naive_block_obs(w, H, quantizer, percdamp: float = 0.01, group_size: int | None = None,
                     act_order: bool = False, static_groups: bool = False):
    """Textbook (block) OBS, ``d = quantizer.dim`` columns at a time: explicit H⁻¹ and its downdate.

    No Cholesky, no lazy blocks. For block ``b``: ``δ = −(W_b − Q_b) [H⁻¹]_bb⁻¹ H⁻¹_{b,:}`` on the columns
    not yet rounded, then block ``b`` leaves the problem (Schur complement of ``H⁻¹``).
    """
    import torch

    d = quantizer.dim
    W, H = w.double().clone(), H.double().clone()
    cols = W.shape[1]
    g = group_size or cols
    fitted = quantizer.fit(W) if group_size is None else None
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    static = [quantizer.fit(W[:, k:k + g]) for k in range(0, cols, g)] if static_groups else None
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=torch.float64)
    Hinv = torch.linalg.inv(H)
    Q = torch.zeros_like(W)
    for j in range(0, cols, d):
        b = slice(j, j + d)
        if static is not None:
            fitted = static[int(perm[j]) // g]
        elif group_size is not None and j % g == 0:
            fitted = quantizer.fit(W[:, j:j + g])   # the current, already compensated weights
        q = fitted.quantize(W[:, b])[1].double()
        step = torch.linalg.solve(Hinv[b, b], Hinv[b, :])      # [H⁻¹]_bb⁻¹ H⁻¹_{b,:}
        W[:, j + d:] -= (W[:, b] - q) @ step[:, j + d:]
        Q[:, b] = q
        Hinv = Hinv - Hinv[:, b] @ step
    return Q[:, torch.argsort(perm)]


@pytest.fixture
def hessian_problem():
    """``hessian_problem(out, n_in, seed, dead=())`` → ``(w, H)``: see :func:`_hessian_problem`."""
    return _hessian_problem


@pytest.fixture
def naive_block_obs():
    """The textbook block-OBS reference ``naive_block_obs(w, H, quantizer, ...)`` for the ldlq/GPTQ loop."""
    return _naive_block_obs


@pytest.fixture
def tiny_bitnet():
    """A frozen one-block BitNet Llama (d_model 256, rows a multiple of llama.cpp's 256-weight blocks), its
    scales rounded to fp16 as a GGUF file holds them: for the GGUF export tests."""
    import torch

    from qcourse.lm.model import Llama, LlamaConfig
    from qcourse.nn.bitlinear import BitLinear, to_bitlinear

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, d_model=256, n_layers=1, n_heads=4, n_kv_heads=2, d_ff=512,
                      max_seq_len=32)
    model = to_bitlinear(Llama(cfg))
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.freeze()
            m.gamma = m.gamma.half().float()
    return model.eval()
