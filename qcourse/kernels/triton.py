"""The packed int4 / int2 / ternary GEMV in Triton: on a GPU when there is one, else in Triton's interpreter.

One program computes ``BLOCK_N`` outputs of one batch row. It walks the input dimension in tiles of
``BLOCK_K`` codes; for the ``BLOCK_N × BLOCK_K`` tile it computes every code's flat index
``i = r·K + k``, loads byte ``i // (8/bits)``, shifts by ``(i mod (8/bits))·bits`` and masks (the layout of
:mod:`qcourse.packing`, so rows need not start on a byte), gathers the group's scale and zero
(``i // group``), and accumulates ``Σₖ scale·(q − zero)·x[k]`` in float32. Out-of-range rows and columns are
masked, never read: there is no remainder to drop. Trits in the 2-bit packing are the int2 case with one
group, ``zero = 1`` and ``scale = γ``.

Triton is optional (``pip install triton``). Importing this module without a CUDA device sets
``TRITON_INTERPRET=1`` *before* importing Triton (the interpreter runs the same kernel with numpy on the
CPU — correctness, not speed), so import it before anything else imports Triton. :data:`AVAILABLE` says
whether Triton imported; :data:`INTERPRETED` whether kernels run in the interpreter.
"""

# no ``from __future__ import annotations``: Triton reads the ``tl.constexpr`` annotations at run time
import os
import sys

import torch

from qcourse import packing
from qcourse.kernels import reference

# the interpreter is chosen when Triton is imported: setting the variable after that has no effect
_PREIMPORTED = "triton" in sys.modules
if not torch.cuda.is_available() and not _PREIMPORTED:
    os.environ.setdefault("TRITON_INTERPRET", "1")

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - machines without triton
    AVAILABLE = False

__all__ = ["AVAILABLE", "INTERPRETED", "gemm_affine", "gemm_ternary"]

if AVAILABLE:
    # the truth, not the environment variable: Triton builds its own language functions for the interpreter
    # only if TRITON_INTERPRET=1 when it is first imported, whoever imports it (torch._dynamo does, e.g.
    # while SmolLM2 loads); setting the variable later changes nothing
    from triton.runtime.interpreter import InterpretedFunction

    INTERPRETED = isinstance(tl.sum, InterpretedFunction)
else:  # pragma: no cover
    INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def _require() -> None:
    if not AVAILABLE:
        raise RuntimeError("triton is not installed: pip install triton, or use qcourse.kernels.reference")
    if not INTERPRETED and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device, and Triton was imported before qcourse.kernels.triton without "
                           "TRITON_INTERPRET=1 (torch._dynamo imports it, e.g. while SmolLM2 loads), so its "
                           "interpreter is off: set TRITON_INTERPRET=1 before starting Python, or import "
                           "qcourse.kernels.triton before loading models")


if AVAILABLE:
    @triton.jit
    def _affine_kernel(x_ptr, p_ptr, s_ptr, z_ptr, y_ptr, N, K, group,
                       BITS: tl.constexpr, PER: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        b = tl.program_id(1)
        rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rmask = rows < N
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < K
            m = rmask[:, None] & kmask[None, :]
            i = rows[:, None].to(tl.int64) * K + ks[None, :]
            byte = tl.load(p_ptr + i // PER, mask=m, other=0).to(tl.int32)
            q = (byte >> ((i % PER) * BITS).to(tl.int32)) & ((1 << BITS) - 1)
            gi = i // group
            s = tl.load(s_ptr + gi, mask=m, other=0.0)
            z = tl.load(z_ptr + gi, mask=m, other=0.0)
            xv = tl.load(x_ptr + b * K + ks, mask=kmask, other=0.0)
            acc += tl.sum(s * (q.to(tl.float32) - z) * xv[None, :], axis=1)
        tl.store(y_ptr + b * N + rows, acc, mask=rmask)


def _device() -> torch.device:
    return torch.device("cpu" if INTERPRETED or not torch.cuda.is_available() else "cuda")


def gemm_affine(x: torch.Tensor, packed: torch.Tensor, bits: int, shape: tuple[int, int], group: int,
                scale: torch.Tensor, zero: torch.Tensor, block_n: int = 16, block_k: int = 64
                ) -> torch.Tensor:
    """Same arguments and result as :func:`qcourse.kernels.reference.gemm_affine`; ``bits`` ∈ {1, 2, 4, 8}.

    ``block_n``/``block_k`` are the tile sizes (powers of two); the result is on ``x``'s device.
    """
    _require()
    n, k = reference._check_affine(packed, bits, shape, group, scale, zero)
    if bits not in (1, 2, 4, 8):
        raise ValueError(f"bits must be 1, 2, 4 or 8 for the Triton kernel (codes whole in a byte); "
                         f"got {bits}")
    for name, v in (("block_n", block_n), ("block_k", block_k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
            raise ValueError(f"{name} must be a power of two; got {v!r}")
    reference._check_x(x, k)
    dev = _device()
    xb = x.detach().reshape(-1, k).to(device=dev, dtype=torch.float32).contiguous()
    y = torch.empty(xb.shape[0], n, dtype=torch.float32, device=dev)
    args = (packed.to(dev).contiguous(), scale.detach().reshape(-1).to(dev, torch.float32).contiguous(),
            zero.detach().reshape(-1).to(dev, torch.float32).contiguous())
    grid = (triton.cdiv(n, block_n), xb.shape[0])
    _affine_kernel[grid](xb, *args, y, n, k, group, BITS=bits, PER=8 // bits, BLOCK_N=block_n,
                         BLOCK_K=block_k)
    y = y.to(x.device)
    return y[0] if x.ndim == 1 else y


def gemm_ternary(x: torch.Tensor, packed: torch.Tensor, shape: tuple[int, int],
                 gamma: torch.Tensor | float, block_n: int = 16, block_k: int = 64) -> torch.Tensor:
    """``x (γ·T)ᵀ`` for trits in the 2-bit packing (codes ``t + 1``): the int2 kernel, one group, zero 1."""
    n, k = reference._check_shape(shape)
    if not isinstance(packed, torch.Tensor) or packed.numel() != packing.packed_nbytes(n * k, 2):
        raise ValueError(f"packed must be the 2-bit packing of {n}×{k} trits "
                         f"({packing.packed_nbytes(n * k, 2)} bytes)")
    one = torch.ones(1)
    return gemm_affine(x, packed, 2, (n, k), n * k, one * float(gamma), one, block_n, block_k)
