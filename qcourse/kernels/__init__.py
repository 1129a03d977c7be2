"""Packed low-bit kernels (lesson 08): ``y = x Ŵᵀ`` computed from the stored codes, without decoding ``Ŵ``.

* :mod:`qcourse.kernels.reference` — torch oracles for every format (always available);
* :mod:`qcourse.kernels.cpu` — numba kernels (the optional ``kernels`` extra).

:func:`matmul` picks the kernel for a quantized weight: ``backend="auto"`` uses the numba kernel when numba
is installed and the format has one, and otherwise decodes the weight and calls ``F.linear``;
``"cpu"`` insists on the numba kernel, ``"reference"`` runs the oracle, ``"decode"`` always decodes.

>>> import torch
>>> from qcourse.methods.bitnet import TernaryWeight
>>> trits = torch.tensor([[1, 0, -1, 1], [0, 0, 1, -1]], dtype=torch.int8)
>>> qw = TernaryWeight(trits, torch.tensor(0.5), "2bit")
>>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
>>> matmul(x, qw).tolist(), matmul(x, qw, backend="decode").tolist()
([[1.0, -0.5]], [[1.0, -0.5]])
>>> kernel_name(qw) if cpu.AVAILABLE else "ternary"
'ternary'
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcourse.kernels import cpu, reference
from qcourse.methods.base import QuantizedWeight

__all__ = ["BACKENDS", "kernel_name", "matmul", "prepare", "cpu", "reference"]

BACKENDS = ("auto", "cpu", "reference", "decode")


def kernel_name(qweight: QuantizedWeight) -> str | None:
    """The numba kernel :func:`matmul` would use for ``qweight`` (``"int4"``, ``"int2"``, ``"int1"``,
    ``"int8"``, ``"ternary"``, ``"ternary-base3"``, ``"aqlm-Mx8"``, ``"e8p"``, ``"binary-signs"``), or
    ``None`` when there is none (other formats, groups along the output axis or across rows) or numba is
    missing. GPTQ weights share the affine int kernels when their groups are contiguous (see
    :func:`_gptq_groups`)."""
    from qcourse.affine import AffineQuantizedWeight
    from qcourse.methods.bitnet import TernaryWeight

    if not cpu.AVAILABLE:
        return None
    if isinstance(qweight, AffineQuantizedWeight) and qweight.bits in (1, 2, 4, 8) \
            and (qweight.axis == 1 or qweight.group_size == "tensor"):
        return f"int{qweight.bits}"
    if _gptq_groups(qweight) is not None and qweight.bits in (1, 2, 4, 8):
        return f"int{qweight.bits}"
    if isinstance(qweight, TernaryWeight):
        return "ternary" if qweight.packing_kind == "2bit" else "ternary-base3"
    from qcourse.methods.aqlm import AQLMWeight

    if isinstance(qweight, AQLMWeight) and qweight.codebook_bits == 8:
        return f"aqlm-{qweight.n_codebooks}x8"
    from qcourse.methods.quip import QuIPWeight

    if isinstance(qweight, QuIPWeight) and qweight.codebook == "e8p":
        return "e8p"
    from qcourse.methods.binary import BinaryWeight

    if isinstance(qweight, BinaryWeight) and cpu.binary_weight_groups(qweight) is not None:
        return "binary-signs"
    return None


def _gptq_groups(qweight: QuantizedWeight) -> int | None:
    """Codes per group when ``qweight`` is a :class:`~qcourse.methods.gptq.GPTQWeight` whose groups are
    contiguous runs of input columns, else ``None``.

    GPTQ stores its codes, scales and zeros on RTN's affine grid and in the ORIGINAL column order (act-order
    only changes the order in which columns were rounded), so the int kernels read it as they read an
    :class:`~qcourse.affine.AffineQuantizedWeight` whenever ``g_idx[c] == c // group``: act-order off, or
    act-order with static groups. Act-order with dynamic groups scatters each group over the columns;
    permuting ``x`` would not help (the codes are not stored permuted), so that weight has no kernel.
    """
    from qcourse.methods.gptq import GPTQWeight

    if not isinstance(qweight, GPTQWeight):
        return None
    k, n_groups = qweight.shape[1], int(qweight.scale.shape[1])
    if k % n_groups:
        return None
    group = k // n_groups
    contiguous = torch.equal(qweight.g_idx.long(), torch.arange(k) // group)
    return group if contiguous else None


def _affine_args(qweight: QuantizedWeight) -> dict:
    """Kernel arguments (as :func:`reference.affine_params`) of an affine or a dispatchable GPTQ weight."""
    group = _gptq_groups(qweight)
    if group is None:
        return reference.affine_params(qweight)
    scale = qweight.scale.float()
    zero = (torch.full_like(scale, qweight.symmetric_zero) if qweight.zero is None else qweight.zero.float())
    return {"packed": qweight.packed, "bits": int(qweight.bits), "shape": tuple(qweight.shape),
            "group": group, "scale": scale, "zero": zero}


def prepare(qweight: QuantizedWeight) -> cpu.AffineTiles | cpu.E8PCodes | None:
    """The weight re-laid for the fastest numba kernel, when it has one (int4/int2 with groups of whole
    64-code chunks, 2-bit ternary; ``in_features % 64 == 0``; E8P codes as uint16), else ``None``.

    Preparing copies the codes once (same bytes as the packed weight, plus float32 scales); pass the result
    to :func:`matmul` as ``prepared`` for every later product with this weight (``QuantLinear`` keeps it).

    >>> import torch
    >>> from qcourse import methods
    >>> qw = methods.get("rtn").quantize(torch.randn(8, 128), bits=4, group_size=64)
    >>> x = torch.randn(2, 128)
    >>> p = prepare(qw)
    >>> p is None or torch.allclose(matmul(x, qw, prepared=p), matmul(x, qw, backend="decode"), atol=1e-4)
    True
    """
    from qcourse.affine import AffineQuantizedWeight
    from qcourse.methods.bitnet import TernaryWeight

    name = kernel_name(qweight)
    if name in ("int2", "int4") and (isinstance(qweight, AffineQuantizedWeight)
                                     or _gptq_groups(qweight) is not None):
        p = _affine_args(qweight)
        if cpu.tiles_supported(p["bits"], p["shape"], p["group"]):
            return cpu.prepare_affine(p["packed"], p["bits"], p["shape"], p["group"], p["scale"], p["zero"])
    if name == "ternary" and isinstance(qweight, TernaryWeight) and cpu.tiles_supported(2, qweight.shape,
                                                                                         qweight.numel):
        return cpu.prepare_ternary(qweight.packed, qweight.shape, qweight.gamma)
    if name == "e8p":
        return cpu.prepare_e8p(qweight)
    return None


def matmul(x: torch.Tensor, qweight: QuantizedWeight, backend: str = "auto",
           prepared: cpu.AffineTiles | cpu.E8PCodes | None = None) -> torch.Tensor:
    """``x Ŵᵀ`` for ``x`` of shape ``[..., in_features]``; returns ``[..., out_features]`` in ``x.dtype``.

    ``prepared`` (from :func:`prepare` for this ``qweight``) selects the tiled kernel under ``"auto"`` and
    ``"cpu"``. No autograd through the kernels: use ``backend="decode"`` when ``x`` needs a gradient.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}; got {backend!r}")
    if not isinstance(qweight, QuantizedWeight):
        raise TypeError(f"qweight must be a QuantizedWeight; got {type(qweight).__name__}")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    n, k = qweight.shape
    if x.shape[-1] != k:
        raise ValueError(f"x's last dimension must be in_features={k}; got {x.shape[-1]}")
    if prepared is not None and backend in ("auto", "cpu"):
        if not isinstance(prepared, cpu.AffineTiles | cpu.E8PCodes) or prepared.shape != (n, k):
            raise ValueError("prepared must be kernels.prepare(qweight) of this weight")
        flat = x.reshape(-1, k).detach().to(device="cpu", dtype=torch.float32)
        y = (cpu.gemm_tiles(flat, prepared) if isinstance(prepared, cpu.AffineTiles)
             else cpu.gemm_e8p(flat, prepared))
        return y.reshape(*x.shape[:-1], n).to(device=x.device, dtype=x.dtype)
    name = kernel_name(qweight) if backend in ("auto", "cpu") else None
    if backend == "cpu" and name is None:
        why = "numba is not installed" if not cpu.AVAILABLE else f"{type(qweight).__name__} has no CPU kernel"
        raise ValueError(f"backend='cpu' unavailable for this weight: {why}; use 'auto' or 'decode'")
    if backend == "decode" or (backend == "auto" and name is None):
        return F.linear(x, qweight.dequantize(torch.float32).to(device=x.device, dtype=x.dtype))
    flat = x.reshape(-1, k).detach().to(device="cpu", dtype=torch.float32)
    if backend == "reference":
        y = reference.matmul(flat, qweight)
    elif name == "ternary":
        y = cpu.gemm_ternary(flat, qweight.packed, qweight.shape, qweight.gamma)
    elif name.startswith("aqlm"):
        y = cpu.gemm_aqlm8(flat, qweight)
    elif name == "e8p":
        y = cpu.gemm_e8p(flat, qweight)
    elif name == "ternary-base3":
        y = cpu.gemm_ternary_base3(flat, qweight.packed, qweight.shape, qweight.gamma)
    elif name == "binary-signs":
        y = cpu.gemm_binary_weight(flat, qweight)
    else:
        p = _affine_args(qweight)
        y = cpu.gemm_affine(flat, p["packed"], p["bits"], p["shape"], p["group"], p["scale"], p["zero"])
    return y.reshape(*x.shape[:-1], n).to(device=x.device, dtype=x.dtype)
