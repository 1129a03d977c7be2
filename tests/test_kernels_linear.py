"""``qcourse.kernels.matmul`` dispatch and ``QuantLinear(kernel=...)``: same outputs as decoding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcourse import kernels
from qcourse.methods.bitnet import TernaryWeight
from qcourse.nn.linear import QuantLinear
from tests.test_kernels import _affine


def _weights():
    g = torch.Generator().manual_seed(0)
    yield _affine(4, 6, 20, 10)
    yield _affine(2, 5, 12, None)
    yield _affine(4, 3, 9, 3)                            # rows off byte boundaries
    for shape, kind in (((7, 13), "2bit"), ((4, 10), "base3")):
        trits = torch.randint(-1, 2, shape, generator=g, dtype=torch.int8)
        yield TernaryWeight(trits, torch.tensor(0.3), kind)
    from qcourse.methods.aqlm import AQLMWeight

    yield AQLMWeight(torch.randint(0, 256, (5, 3, 2), generator=g), torch.randn(2, 256, 4, generator=g),
                     torch.rand(5, generator=g) + 0.5)


@pytest.mark.parametrize("qw", list(_weights()), ids=lambda q: f"{type(q).__name__}{q.shape}")
@pytest.mark.parametrize("backend", ["auto", "reference", "decode"])
@pytest.mark.parametrize("lead", [(1,), (4,), (2, 3), ()])
def test_matmul_equals_decoded(qw, backend, lead):
    x = torch.randn(*lead, qw.shape[1], generator=torch.Generator().manual_seed(1))
    want = x @ qw.dequantize().T
    got = kernels.matmul(x, qw, backend=backend)
    assert got.shape == want.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_matmul_cpu_backend_and_errors():
    pytest.importorskip("numba")
    qw = _affine(4, 6, 20, 10)
    x = torch.randn(2, 20, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(kernels.matmul(x, qw, backend="cpu"), x @ qw.dequantize().T, rtol=1e-5,
                               atol=1e-4)
    assert kernels.kernel_name(qw) == "int4"
    base3 = TernaryWeight(torch.zeros(2, 5, dtype=torch.int8), torch.tensor(1.0), "base3")
    assert kernels.kernel_name(base3) == "ternary-base3"
    three = _affine(3, 4, 12, 6)  # 3-bit codes straddle bytes: no CPU kernel
    assert kernels.kernel_name(three) is None
    with pytest.raises(ValueError, match="no CPU kernel"):
        kernels.matmul(torch.randn(12), three, backend="cpu")
    with pytest.raises(ValueError, match="backend must be"):
        kernels.matmul(x, qw, backend="gpu")
    with pytest.raises(ValueError, match="in_features=20"):
        kernels.matmul(torch.randn(3), qw)


@pytest.mark.parametrize("kernel", ["auto", "reference"])
def test_quantlinear_kernel_flag(kernel):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    q = QuantLinear.from_linear(lin, "rtn", bits=4, group_size=32, kernel=kernel)
    dec = QuantLinear(q.qweight, bias=lin.bias, kernel="decode")
    x = torch.randn(3, 5, 64)
    with torch.no_grad():
        torch.testing.assert_close(q(x), dec(x), rtol=1e-5, atol=1e-4)
    if kernel == "reference" or kernels.cpu.AVAILABLE:
        assert q._cached is None  # the packed path never materialises the float weight
    else:
        assert q._cached is not None  # "auto" without numba falls back to decoding (and caches)
    # an input that needs a gradient takes the decoding path, and the gradient flows
    xg = torch.randn(2, 64, requires_grad=True)
    q(xg).sum().backward()
    assert xg.grad is not None and xg.grad.shape == (2, 64)
    with pytest.raises(ValueError, match="kernel must be"):
        QuantLinear(q.qweight, kernel="fast")


def _gptq(shape, bits, group_size, seed=0, **options):
    from qcourse import methods

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g)
    a = torch.randn(4 * shape[1], shape[1], generator=g) * torch.linspace(0.2, 3.0, shape[1])
    return methods.get("gptq").quantize(w, bits=bits, group_size=group_size, hessian=a.T @ a / len(a),
                                        **options)


# odd output rows; groups of 8..64, per-row (None); symmetric grids; act-order with static groups keeps the
# columns' groups contiguous (codes are stored in the original column order)
_GPTQ_CASES = [((7, 96), 4, 32, {}), ((5, 40), 2, None, {}), ((3, 24), 2, 8, {"symmetric": True}),
               ((9, 64), 8, 64, {}), ((11, 128), 4, 64, {"act_order": True, "static_groups": True}),
               ((13, 64), 1, 16, {})]


@pytest.mark.parametrize("shape,bits,group_size,options", _GPTQ_CASES,
                         ids=[f"{c[0]}-b{c[1]}-g{c[2]}-{sorted(c[3])}" for c in _GPTQ_CASES])
def test_gptq_dispatch_equals_decoded(shape, bits, group_size, options):
    from qcourse.methods.gptq import GPTQWeight

    qw = _gptq(shape, bits, group_size, **options)
    assert isinstance(qw, GPTQWeight)
    if kernels.cpu.AVAILABLE:
        assert kernels.kernel_name(qw) == f"int{bits}"
    reloaded = GPTQWeight.from_state(*qw.to_state())
    prepared = kernels.prepare(qw)
    for batch in range(1, 9):
        x = torch.randn(batch, shape[1], generator=torch.Generator().manual_seed(batch))
        want = kernels.matmul(x, qw, backend="decode")
        torch.testing.assert_close(want, x @ qw.dequantize().T)
        for got in (kernels.matmul(x, qw), kernels.matmul(x, reloaded),
                    kernels.matmul(x, qw, backend="reference"),
                    kernels.matmul(x, qw, prepared=prepared)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        if kernels.cpu.AVAILABLE:
            torch.testing.assert_close(kernels.matmul(x, qw, backend="cpu"), want, rtol=1e-5, atol=1e-4)


def test_gptq_act_order_dynamic_groups_has_no_kernel():
    # act-order with dynamic groups: each group is a set of columns scattered over the row, so no
    # contiguous-group kernel reads it; it must fall back to decoding (and still be exact)
    qw = _gptq((6, 64), 4, 16, act_order=True)
    assert qw.stores_g_idx and not torch.equal(qw.g_idx.long(), torch.arange(64) // 16)
    assert kernels.kernel_name(qw) is None and kernels.prepare(qw) is None
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(kernels.matmul(x, qw), x @ qw.dequantize().T, rtol=1e-5, atol=1e-4)
    three = _gptq((4, 32), 3, 16)     # 3-bit codes straddle bytes: no int kernel, as for RTN
    assert kernels.kernel_name(three) is None


def test_gptq_quantlinear_runs_packed():
    pytest.importorskip("numba")
    torch.manual_seed(0)
    lin = nn.Linear(64, 10)
    a = torch.randn(256, 64)
    q = QuantLinear.from_linear(lin, "gptq", bits=4, group_size=32, hessian=a.T @ a / 256, kernel="auto")
    dec = QuantLinear(q.qweight, bias=lin.bias, kernel="decode")
    x = torch.randn(2, 3, 64)
    with torch.no_grad():
        torch.testing.assert_close(q(x), dec(x), rtol=1e-5, atol=1e-4)
    assert q._cached is None and q._kernel_plan()[0] == "int4"   # no float copy: the int kernel ran
