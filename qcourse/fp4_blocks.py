"""4-bit block formats taken apart: E2M1 with any block size and either scale type, and NF4.

MXFP4 and NVFP4 (:mod:`qcourse.formats`) differ in two things at once: the block size (32 vs 16) and the
scale type (a power of two, E8M0, vs an E4M3 float under one FP32 per-tensor scale). :func:`block_fp4`
quantizes with any block size and either scale, so a lesson can change one thing at a time; with
``(32, "e8m0")`` it is MXFP4 and with ``(16, "e4m3")`` NVFP4, bit for bit.

NF4 (Dettmers et al., QLoRA, 2023, arXiv:2305.14314) is the 4-bit grid built from quantiles of the standard
normal distribution, normalised to [−1, 1], used with one absmax scale per block of 64:
:func:`nf4_levels` constructs it and :func:`nf4_quantize` applies it.
"""
from __future__ import annotations

import torch

from .formats import E2M1, E4M3

__all__ = ["SCALE_TYPES", "NF4_OFFSET", "block_fp4", "block_fp4_bits", "nf4_levels", "nf4_quantize"]

#: scale types of :func:`block_fp4`: MX's power-of-two E8M0, NVFP4's E4M3 under an FP32 tensor scale
SCALE_TYPES = ("e8m0", "e4m3")
#: QLoRA's quantile offset: the grid spans the normal quantiles from 1 − δ to δ, δ = (1/(2·15) + 1/(2·16))/2
NF4_OFFSET = 0.5 * (1 / 30 + 1 / 32)  # = 0.0323; 1 − δ = 0.9677


def _check(x: torch.Tensor, block: int) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor; got {type(x).__name__}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int; got {block!r}")
    if x.ndim == 0 or x.shape[-1] % block:
        raise ValueError(f"x's last dimension must be a multiple of block={block}; got shape "
                         f"{tuple(x.shape)} (nothing is padded)")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or Inf")


def block_fp4(x: torch.Tensor, block: int, scale: str) -> torch.Tensor:
    """E2M1 elements with one scale per ``block`` consecutive values (last dimension); dequantized result.

    Parameters
    ----------
    x
        Finite float tensor whose last dimension is a multiple of ``block``.
    block
        Values per scale.
    scale
        ``"e8m0"``: a power of two ``2^(floor(log2 amax) − 2)`` per block (the OCP MX rule, elements
        saturate at ±6); ``"e4m3"``: one FP32 scale per tensor ``g = amax / (6·448)`` and an E4M3 block
        scale ``E4M3(amax_block / 6 / g)`` (NVIDIA's NVFP4 recipe).

    Examples
    --------
    >>> x = torch.tensor([[7.5, 3.2, -1.1, 0.4]])
    >>> block_fp4(x, 4, "e8m0")          # X = 1: 7.5 is clipped to 6
    tensor([[ 6.0000,  3.0000, -1.0000,  0.5000]])
    >>> block_fp4(x, 4, "e4m3")[0, 0]    # the block maximum lands on 6 · scale = 7.5
    tensor(7.5000)
    """
    _check(x, block)
    if scale not in SCALE_TYPES:
        raise ValueError(f"scale must be one of {SCALE_TYPES}; got {scale!r}")
    v = x.detach().to(torch.float64).reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = v.abs().amax(dim=-1, keepdim=True)
    if scale == "e8m0":
        _, exp = torch.frexp(amax)                     # amax = m·2^exp, m in [0.5, 1): floor(log2) = exp − 1
        shared = torch.where(amax > 0, exp.to(torch.int64) - 3, torch.full_like(exp, -127, dtype=torch.int64))
        s = torch.ldexp(torch.ones_like(amax), shared.clamp(-127, 127))
    else:
        top = float(v.abs().max()) if v.numel() else 0.0
        g = float(torch.tensor(top / (6.0 * 448.0), dtype=torch.float32)) if top > 0 else 1.0
        s = E4M3.round(amax / 6.0 / g, saturate=True).to(torch.float64) * g
    safe = torch.where(s > 0, s, torch.ones_like(s))
    out = E2M1.round(v / safe, saturate=True).to(torch.float64) * s
    return out.reshape(x.shape).to(torch.float32)


def block_fp4_bits(block: int, scale: str) -> float:
    """Bits per weight of :func:`block_fp4`: 4 + 8/block (both scale types are 8 bits; NVFP4's one FP32 per
    tensor is not counted).

    >>> block_fp4_bits(32, "e8m0"), block_fp4_bits(16, "e4m3")
    (4.25, 4.5)
    """
    if scale not in SCALE_TYPES:
        raise ValueError(f"scale must be one of {SCALE_TYPES}; got {scale!r}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int; got {block!r}")
    return 4 + 8 / block


def nf4_levels() -> torch.Tensor:
    """The 16 NF4 levels of QLoRA, ascending, in [−1, 1] with an exact 0.

    Eight positive levels are the standard-normal quantiles at ``linspace(1 − δ, 1/2, 9)`` (the last, 0,
    dropped) and seven negative ones at ``linspace(1 − δ, 1/2, 8)``, mirrored; each side is divided by its
    largest quantile so that the ends are exactly ±1. The asymmetry (8 + 7 + zero) gives 0 its own code.

    >>> [round(v, 4) for v in nf4_levels().tolist()][:4], [round(v, 4) for v in nf4_levels().tolist()][-3:]
    ([-1.0, -0.6962, -0.5251, -0.3949], [0.5626, 0.723, 1.0])
    """
    top = 1 - NF4_OFFSET
    pos = torch.special.ndtri(torch.linspace(top, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(top, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([pos / pos.max(), torch.zeros(1, dtype=torch.float64), neg / neg.abs().max()])
    return levels.sort().values.to(torch.float32)


def nf4_quantize(x: torch.Tensor, block: int = 64) -> torch.Tensor:
    """NF4 with one absmax scale per ``block`` values (last dimension); dequantized result.

    Each value becomes ``amax · level`` with the level of :func:`nf4_levels` nearest to ``x / amax``.

    >>> nf4_quantize(torch.tensor([[1.0, -1.0, 0.0, 0.3]]), block=4)
    tensor([[ 1.0000, -1.0000,  0.0000,  0.3379]])
    """
    _check(x, block)
    levels = nf4_levels().to(torch.float64)
    v = x.detach().to(torch.float64).reshape(*x.shape[:-1], x.shape[-1] // block, block)
    amax = v.abs().amax(dim=-1, keepdim=True)
    u = v / torch.where(amax > 0, amax, torch.ones_like(amax))
    # nearest level: the midpoints between neighbours are the decision boundaries
    idx = torch.bucketize(u, (levels[1:] + levels[:-1]) / 2)
    return (levels[idx] * amax).reshape(x.shape).to(torch.float32)

