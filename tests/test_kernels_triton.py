"""Triton kernels (the CPU interpreter here, a GPU where there is one) equal the reference; small shapes."""

from __future__ import annotations

import pytest
import torch

from qcourse.kernels import reference

# imported before Triton itself, so that it can select the interpreter on a machine without a GPU
from qcourse.kernels import triton as tk  # noqa: I001
from qcourse.methods.bitnet import TernaryWeight
from tests.test_kernels import _affine

if not tk.AVAILABLE:
    pytest.skip("triton is not installed", allow_module_level=True)


@pytest.mark.parametrize("bits,n,k,group_size", [
    (4, 5, 24, 8), (4, 3, 7, None), (4, 4, 6, "tensor"), (2, 6, 20, 10), (2, 3, 9, 3), (1, 2, 11, None),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_triton_affine_equals_reference(bits, n, k, group_size, batch):
    qw = _affine(bits, n, k, group_size, seed=n + k)
    p = reference.affine_params(qw)
    args = (p["packed"], p["bits"], p["shape"], p["group"], p["scale"], p["zero"])
    x = torch.randn(batch, k, generator=torch.Generator().manual_seed(batch))
    # block_k smaller than k: several tiles and a masked remainder
    torch.testing.assert_close(tk.gemm_affine(x, *args, block_n=4, block_k=4),
                               reference.gemm_affine(x, *args), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(tk.gemm_affine(x[0], *args), reference.gemm_affine(x[0], *args),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("n,k", [(5, 13), (4, 16)])
def test_triton_ternary_equals_reference(n, k):
    g = torch.Generator().manual_seed(k)
    qw = TernaryWeight(torch.randint(-1, 2, (n, k), generator=g, dtype=torch.int8), torch.tensor(0.4), "2bit")
    x = torch.randn(2, k, generator=g)
    torch.testing.assert_close(tk.gemm_ternary(x, qw.packed, qw.shape, qw.gamma, block_k=8),
                               reference.gemm_ternary(x, qw.packed, "2bit", qw.shape, qw.gamma),
                               rtol=1e-5, atol=1e-4)


def test_triton_rejects_bad_blocks_and_widths():
    qw = _affine(4, 2, 8, None)
    p = reference.affine_params(qw)
    with pytest.raises(ValueError, match="power of two"):
        tk.gemm_affine(torch.randn(8), p["packed"], 4, (2, 8), 8, p["scale"], p["zero"], block_k=12)
    q3 = _affine(3, 2, 8, None)
    p3 = reference.affine_params(q3)
    with pytest.raises(ValueError, match="bits must be 1, 2, 4 or 8"):
        tk.gemm_affine(torch.randn(8), p3["packed"], 3, (2, 8), 8, p3["scale"], p3["zero"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the interpreter question only arises without a GPU")
def test_triton_imported_first_without_the_interpreter_gives_a_clear_error():
    """Triton imported without TRITON_INTERPRET=1 (as torch._dynamo does) cannot interpret: say so and how."""
    import os
    import subprocess
    import sys

    code = ("import os, torch, triton\n"
            "os.environ['TRITON_INTERPRET'] = '1'  # too late: Triton is already imported\n"
            "from qcourse.kernels import triton as tk\n"
            "assert not tk.INTERPRETED\n"
            "try:\n"
            "    tk.gemm_ternary(torch.ones(4), torch.zeros(1, dtype=torch.uint8), (1, 4), 1.0)\n"
            "except RuntimeError as e:\n"
            "    print('ERR', e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "ERR no CUDA device" in out.stdout
    assert "set TRITON_INTERPRET=1 before starting Python" in out.stdout
