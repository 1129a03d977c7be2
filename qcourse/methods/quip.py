"""QuIP# (Tseng et al. 2024, "QuIP#: Even Better LLM Quantization with Hadamard Incoherence and Lattice
Codebooks", arXiv 2402.04396): incoherence processing + BlockLDLQ + the E8P lattice codebook.

Three ingredients, each an option so that a lesson can switch them off one at a time:

1. **Incoherence processing** (``transform=True``; QuIP: Chee et al. 2023, arXiv 2307.13304). With random
   sign vectors ``s_in`` (length ``n``) and ``s_out`` (length ``m``) drawn from ``seed`` and the orthonormal
   Hadamard matrices ``H_n``, ``H_m`` (:mod:`qcourse.hadamard`)::

       W̃ = H_m diag(s_out) W diag(s_in) H_nᵀ        H̃ = H_n diag(s_in) H diag(s_in) H_nᵀ

   The proxy loss ``tr(ΔW H ΔWᵀ)`` is unchanged (the transforms are orthogonal), but no weight and no
   direction of ``H`` stands out any more: outliers are spread over whole rows and columns.
2. **BlockLDLQ** (``rounding="ldlq"``): GPTQ's error-feedback loop (:func:`qcourse.ldlq.ldlq`) with a vector
   quantizer, 8 columns at a time; ``rounding="nearest"`` rounds every 8-vector on its own instead.
3. **The E8P codebook** (``codebook="e8p"``, :mod:`qcourse.lattice`): 2 bits per weight as 16-bit codes
   for 8 weights; 3 and 4 bits by residual VQ. ``codebook="scalar"`` is QuIP#'s "no E8" ablation: a
   uniform half-integer grid ``{±½, ±3/2, …}`` of ``2^bits`` levels, one weight at a time.

Scale: one per matrix (QuIP#'s ``Wscale``): ``W̃`` is divided by ``RMS(W̃)/ρ`` before rounding, with ``ρ``
the RMS at which the codebook's Gaussian error is least (1.03 for E8P at 2 bits, 0.98 at 3, 1.03 at 4;
for the scalar grid ``1/Δ`` with Max's optimal uniform step ``Δ``); QuIP#'s README recommends ``ρ = 0.9``
for E8P in practice (``rho`` option). QuIP#'s fine-tuning step and its extra coordinate-descent passes
over the rounded blocks are not implemented here.

Storage (:class:`QuIPWeight`): the codes (16 bits per 8 weights per E8P stage, 8 for the 3-bit residual,
``bits`` per weight for the scalar grid), the float32 scale, and the two sign vectors as one bit per sign.

>>> import torch
>>> from qcourse.methods import get
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(2048, 64, generator=g, dtype=torch.float64)
>>> H = x.T @ x / 2048
>>> w = torch.randn(32, 64, generator=g)
>>> qw = get("quip").quantize(w, bits=2, hessian=H)
>>> qw.dequantize().shape, round(qw.bits_per_weight, 3)      # 2 + 32/2048 (scale) + 96/2048 (signs)
(torch.Size([32, 64]), 2.062)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from qcourse import hadamard, lattice, packing
from qcourse.ldlq import ldlq, proxy_loss
from qcourse.methods.base import Method, QuantizedWeight, state_tensor, to_float_dtype

__all__ = ["E8PQuantizer", "HalfIntegerQuantizer", "incoherence_signs", "transform_weight",
           "transform_hessian", "untransform_weight", "incoherence", "quip_quantize", "QuIPWeight", "QuIP",
           "METHODS", "proxy_loss", "SCALAR_RHO"]

#: RMS for the scalar half-integer grid: ``1/Δ`` with Δ the MSE-optimal uniform step for N(0, 1) with
#: ``2^bits`` levels (Max 1960: 0.9957, 0.5860, 0.3352 at 2, 3, 4 bits), so that the levels sit at ``±Δ/2,
#: ±3Δ/2, …`` in units of the weights' RMS.
SCALAR_RHO = {2: 1 / 0.9957, 3: 1 / 0.5860, 4: 1 / 0.3352}


class E8PQuantizer:
    """The E8P codebook (and its residual VQ) as a block quantizer for :func:`qcourse.ldlq.ldlq`.

    ``dim = 8``; ``quantize(block [rows, 8]) -> (codes [rows, stages] int64, points [rows, 8])``. The
    codebook is fixed, so :meth:`fit` returns ``self``; the caller scales the weights first.

    >>> q = E8PQuantizer(bits=2)
    >>> codes, pts = q.quantize(torch.full((2, 8), 0.7, dtype=torch.float64))
    >>> codes.tolist(), pts[0].tolist()
    ([[0], [0]], [0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75])
    """

    dim = 8

    def __init__(self, bits: int = 2) -> None:
        if bits not in lattice.CODE_BITS:
            raise ValueError(f"bits must be one of {sorted(lattice.CODE_BITS)} for E8P; got {bits!r}")
        self.bits = bits

    def fit(self, w: torch.Tensor) -> E8PQuantizer:
        return self

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the search runs in float32 (the codebook's points are exact there); ties aside it is exact
        codes, points = lattice.rvq_encode(block.to(torch.float32), self.bits)
        return torch.stack(codes, 1), points.to(block.dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """``[..., stages]`` codes → ``[..., 8]`` points."""
        return lattice.rvq_decode(tuple(codes.unbind(-1)), self.bits)

    def __repr__(self) -> str:
        return f"E8PQuantizer(bits={self.bits})"


class HalfIntegerQuantizer:
    """Scalar rounding to the ``2^bits`` half-integers ``−(L−1)/2 … (L−1)/2`` (``dim = 1``).

    QuIP#'s "no E8" ablation grid. Codes are ``0 … L−1``; values beyond the outer levels clamp to them.

    >>> q = HalfIntegerQuantizer(bits=2)
    >>> q.quantize(torch.tensor([[-3.0], [-0.2], [0.2], [0.9]]))[1].flatten().tolist()
    [-1.5, -0.5, 0.5, 0.5]
    """

    dim = 1

    def __init__(self, bits: int = 2) -> None:
        if bits not in SCALAR_RHO:
            raise ValueError(f"bits must be one of {sorted(SCALAR_RHO)} for the scalar grid; got {bits!r}")
        self.bits = bits
        self.levels = 2 ** bits

    def fit(self, w: torch.Tensor) -> HalfIntegerQuantizer:
        return self

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = (self.levels - 1) / 2
        codes = torch.clamp(torch.floor(block + half + 0.5), 0, self.levels - 1)
        return codes.to(torch.int64), (codes - half).to(block.dtype)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.to(torch.float32) - (self.levels - 1) / 2

    def __repr__(self) -> str:
        return f"HalfIntegerQuantizer(bits={self.bits})"


def incoherence_signs(m: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s_out [m], s_in [n])``: the random ±1 vectors of the two-sided transform, both from ``seed``.

    >>> s_out, s_in = incoherence_signs(4, 8, seed=0)
    >>> s_out.shape, s_in.shape, set(s_in.tolist()) <= {-1.0, 1.0}
    (torch.Size([4]), torch.Size([8]), True)
    """
    g = torch.Generator().manual_seed(seed)
    s_in = torch.randint(0, 2, (n,), generator=g).to(torch.float32) * 2 - 1
    s_out = torch.randint(0, 2, (m,), generator=g).to(torch.float32) * 2 - 1
    return s_out, s_in


def transform_weight(w: torch.Tensor, s_out: torch.Tensor, s_in: torch.Tensor) -> torch.Tensor:
    """``W̃ = H_m diag(s_out) W diag(s_in) H_nᵀ`` (rows: RHT with ``s_in``; columns: RHT with ``s_out``).

    >>> w = torch.randn(12, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> s_out, s_in = incoherence_signs(12, 16, seed=1)
    >>> torch.allclose(untransform_weight(transform_weight(w, s_out, s_in), s_out, s_in), w)
    True
    """
    rows = hadamard.rht(w, s_in)
    return hadamard.rht(rows.T, s_out).T


def untransform_weight(wt: torch.Tensor, s_out: torch.Tensor, s_in: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`transform_weight`: ``W = diag(s_out) H_mᵀ W̃ H_n diag(s_in)``."""
    cols = hadamard.inverse_rht(wt.T, s_out).T
    return hadamard.inverse_rht(cols, s_in)


def transform_hessian(h: torch.Tensor, s_in: torch.Tensor) -> torch.Tensor:
    """``H̃ = H_n diag(s_in) H diag(s_in) H_nᵀ`` (symmetrised against rounding).

    >>> x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> H = x.T @ x
    >>> _, s = incoherence_signs(1, 8, seed=0)
    >>> torch.allclose(torch.linalg.eigvalsh(transform_hessian(H, s)), torch.linalg.eigvalsh(H))
    True
    """
    a = hadamard.rht(h, s_in)            # H diag(s) H_nᵀ  (rows of H, H symmetric)
    out = hadamard.rht(a.T, s_in)        # H_n diag(s) H diag(s) H_nᵀ
    return (out + out.T) / 2


def incoherence(w: torch.Tensor, h: torch.Tensor | None = None) -> dict[str, float]:
    """The incoherence figures of QuIP (Def. 2.1 of QuIP#): ``mu_w`` and, given ``h``, ``mu_h``.

    ``mu_w = max|W_ij| · √(mn) / ‖W‖_F`` (1 for a constant matrix, up to ``√(mn)`` for a single spike);
    ``mu_h = max|Q_ij| · √n`` for the eigenvectors ``Q`` of ``H`` (1 when they are perfectly spread, ``√n``
    for axis-aligned ones).

    >>> incoherence(torch.ones(4, 4))["mu_w"]
    1.0
    >>> h = torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))      # eigenvectors = the axes
    >>> round(incoherence(torch.eye(4), h)["mu_h"], 6)
    2.0
    """
    m, n = w.shape
    w64 = w.to(torch.float64)
    out = {"mu_w": float(w64.abs().max() * (m * n) ** 0.5 / w64.norm())}
    if h is not None:
        _, q = torch.linalg.eigh(h.to(torch.float64))
        out["mu_h"] = float(q.abs().max() * n ** 0.5)
    return out


def _check_sizes(shape: tuple[int, int], transform: bool, dim: int) -> None:
    m, n = shape
    if n % dim:
        raise ValueError(f"in_features={n} must be a multiple of the codebook dimension {dim} for QuIP#")
    if transform:
        for name, size in (("out_features", m), ("in_features", n)):
            if not hadamard.supported_size(size):
                raise ValueError(
                    f"{name}={size} has no Hadamard transform: it must be 2^k or K·2^k with K a Paley order "
                    f"{hadamard.paley_orders()[:8]}…; use transform=False for this layer")


def quip_quantize(w: torch.Tensor, hessian: torch.Tensor | None, bits: int = 2, *, codebook: str = "e8p",
                  transform: bool = True, rounding: str = "ldlq", rho: float = 0.0, seed: int = 0,
                  percdamp: float = 0.01, blocksize: int = 128) -> QuIPWeight:
    """Quantize ``w`` (``[m, n]``) with QuIP#; see the module docstring for the options.

    ``hessian`` (``E[x xᵀ]``, ``[n, n]``) is needed for ``rounding="ldlq"``. ``rho = 0`` takes the
    codebook's Gaussian-optimal RMS. Returns a :class:`QuIPWeight` whose ``loss`` attribute is the proxy
    loss ``tr(ΔW H ΔWᵀ)`` when ``hessian`` is given (``nan`` otherwise).
    """
    if codebook not in ("e8p", "scalar"):
        raise ValueError(f"codebook must be 'e8p' or 'scalar'; got {codebook!r}")
    if rounding not in ("ldlq", "nearest"):
        raise ValueError(f"rounding must be 'ldlq' or 'nearest'; got {rounding!r}")
    if rho < 0:
        raise ValueError(f"rho must be positive (or 0 for the codebook's default); got {rho!r}")
    quantizer: E8PQuantizer | HalfIntegerQuantizer = (
        E8PQuantizer(bits) if codebook == "e8p" else HalfIntegerQuantizer(bits))
    m, n = w.shape
    _check_sizes((m, n), transform, quantizer.dim)
    if rounding == "ldlq" and hessian is None:
        raise ValueError("rounding='ldlq' needs hessian=E[x xᵀ] ([in, in]); "
                         "use rounding='nearest' without one")
    w64 = w.detach().to(torch.float64)
    h64 = hessian.to(torch.float64) if hessian is not None else None
    if transform:
        s_out, s_in = incoherence_signs(m, n, seed)
        wt = transform_weight(w64, s_out.double(), s_in.double())
        ht = transform_hessian(h64, s_in.double()) if h64 is not None else None
    else:
        s_out = s_in = None
        wt, ht = w64, h64
    if rho == 0:
        rho = lattice.OPT_SCALE[bits] if codebook == "e8p" else SCALAR_RHO[bits]
    rms = float(wt.pow(2).mean().sqrt())
    # one scale per matrix; stored as float32, so round it there before using it
    wscale = torch.tensor(rms / rho if rms > 0 else 1.0, dtype=torch.float32)
    x = wt / float(wscale)
    if rounding == "ldlq":
        res = ldlq(x, ht, quantizer, blocksize=blocksize, percdamp=percdamp)
        codes = res.codes.reshape(m, n // quantizer.dim, -1)
    else:
        c, _ = quantizer.quantize(x.reshape(-1, quantizer.dim))
        codes = c.reshape(m, n // quantizer.dim, -1)
    qw = QuIPWeight((m, n), bits, codebook, codes, wscale, s_out, s_in)
    qw.loss = proxy_loss(w64, qw.dequantize(torch.float64), h64) if h64 is not None else float("nan")
    return qw


class QuIPWeight(QuantizedWeight):
    """QuIP#'s storage: codes, one float32 scale, and the two sign vectors (one bit per sign).

    ``Ŵ = diag(s_out) H_mᵀ (Wscale · decode(codes)) H_n diag(s_in)``; without the transform just
    ``Wscale · decode(codes)``.

    State: ``codes`` (E8P: int16, QuIP#'s offset ``code − 2¹⁵``, ``[m, n/8]``), ``codes2`` (second RVQ stage:
    int16 at 4 bits, uint8 at 3 bits), or ``packed`` (scalar grid: bit-packed codes); ``wscale``
    (float32); ``signs`` (``s_in`` then ``s_out``, bit-packed; only with the transform). Meta: ``bits``,
    ``codebook``, ``transform``, ``loss``.
    """

    def __init__(self, shape: tuple[int, int], bits: int, codebook: str, codes: torch.Tensor,
                 wscale: torch.Tensor, s_out: torch.Tensor | None, s_in: torch.Tensor | None) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.bits, self.codebook = int(bits), codebook
        self.codes = codes.to(torch.int64)            # [m, n/dim, stages]
        self.wscale = wscale.to(torch.float32)
        self.s_out, self.s_in = s_out, s_in
        self.loss = float("nan")

    @property
    def transform(self) -> bool:
        return self.s_in is not None

    def _quantizer(self) -> E8PQuantizer | HalfIntegerQuantizer:
        return E8PQuantizer(self.bits) if self.codebook == "e8p" else HalfIntegerQuantizer(self.bits)

    def dequantize_transformed(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``Wscale · decode(codes)``: the rounded weight in the rotated basis (``Ŵ̃``)."""
        pts = self._quantizer().decode(self.codes).to(torch.float64)
        return (pts.reshape(self.shape) * float(self.wscale)).to(dtype)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        wt = self.dequantize_transformed(torch.float64)
        if self.transform:
            assert self.s_out is not None and self.s_in is not None
            wt = untransform_weight(wt, self.s_out.double(), self.s_in.double())
        return to_float_dtype(wt, dtype)

    @property
    def code_bits(self) -> int:
        m, n = self.shape
        if self.codebook == "scalar":
            return m * n * self.bits
        return m * (n // 8) * lattice.CODE_BITS[self.bits]

    @property
    def storage_bits(self) -> int:
        m, n = self.shape
        return self.code_bits + 32 + ((m + n) if self.transform else 0)

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        m, n = self.shape
        tensors: dict[str, torch.Tensor] = {"wscale": self.wscale.reshape(())}
        if self.codebook == "scalar":
            tensors["packed"] = packing.pack(self.codes.reshape(m, n), self.bits)
        else:
            tensors["codes"] = (self.codes[..., 0] - (1 << 15)).to(torch.int16)
            if self.bits == 4:
                tensors["codes2"] = (self.codes[..., 1] - (1 << 15)).to(torch.int16)
            elif self.bits == 3:
                tensors["codes2"] = self.codes[..., 1].to(torch.uint8)
        if self.transform:
            assert self.s_out is not None and self.s_in is not None
            bits01 = torch.cat([self.s_in, self.s_out]).lt(0).to(torch.uint8)
            tensors["signs"] = packing.pack(bits01, 1)
        meta = self.state_meta(bits=self.bits, codebook=self.codebook, transform=self.transform,
                               loss=float(self.loss))
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> QuIPWeight:
        m, n = (int(s) for s in meta["shape"])
        bits, codebook, transform = meta.get("bits"), meta.get("codebook"), meta.get("transform")
        if codebook not in ("e8p", "scalar") or bits not in (2, 3, 4) or not isinstance(transform, bool):
            raise ValueError(f"meta must have codebook 'e8p'/'scalar', bits 2/3/4 and transform True/False; "
                             f"got {codebook!r}, {bits!r}, {transform!r}")
        wscale = state_tensor(tensors, "wscale", torch.float32, ())
        if codebook == "scalar":
            packed = state_tensor(tensors, "packed", torch.uint8, (packing.packed_nbytes(m * n, bits),))
            codes = packing.unpack(packed, bits, m * n).to(torch.int64).reshape(m, n, 1)
        else:
            if n % 8:
                raise ValueError(f"meta['shape'] in_features={n} must be a multiple of 8 for E8P")
            c1 = state_tensor(tensors, "codes", torch.int16, (m, n // 8)).to(torch.int64) + (1 << 15)
            stages = [c1]
            if bits == 4:
                stages.append(state_tensor(tensors, "codes2", torch.int16, (m, n // 8)).to(torch.int64)
                              + (1 << 15))
            elif bits == 3:
                stages.append(state_tensor(tensors, "codes2", torch.uint8, (m, n // 8)).to(torch.int64))
            codes = torch.stack(stages, -1)
        s_out = s_in = None
        if transform:
            packed = state_tensor(tensors, "signs", torch.uint8, (packing.packed_nbytes(m + n, 1),))
            signs = 1 - 2 * packing.unpack(packed, 1, m + n).to(torch.float32)
            s_in, s_out = signs[:n], signs[n:]
        qw = cls((m, n), bits, codebook, codes, wscale, s_out, s_in)
        qw.loss = float(meta.get("loss", float("nan")))
        return qw


class QuIP(Method):
    """QuIP#; options ``codebook`` (``"e8p"``/``"scalar"``), ``transform`` (bool), ``rounding``
    (``"ldlq"``/``"nearest"``), ``rho`` (RMS before rounding; 0 = the codebook's default), ``percdamp``,
    ``blocksize``. Needs ``hessian``. ``group_size`` does not apply (one scale per matrix) and is ignored;
    ``seed`` draws the sign vectors.
    """

    #: one scale per matrix, no groups (``qcourse.bench quality`` runs it with ``group_size=None``)
    uses_group_size = False

    def check_options(self, opts: dict[str, Any]) -> None:
        if opts["codebook"] not in ("e8p", "scalar"):
            raise ValueError(f"codebook must be 'e8p' or 'scalar'; got {opts['codebook']!r}")
        if opts["rounding"] not in ("ldlq", "nearest"):
            raise ValueError(f"rounding must be 'ldlq' or 'nearest'; got {opts['rounding']!r}")
        if opts["rho"] < 0:
            raise ValueError(f"rho must be positive, or 0 for the codebook's default; got {opts['rho']!r}")
        if opts["percdamp"] < 0:
            raise ValueError(f"percdamp must be a non-negative number; got {opts['percdamp']!r}")
        if opts["blocksize"] <= 0 or opts["blocksize"] % 8:
            raise ValueError(f"blocksize must be a positive multiple of 8; got {opts['blocksize']!r}")

    def _quantize(self, w: torch.Tensor, bits: float, group_size: int | None, hessian: torch.Tensor | None,
                  seed: int, opts: dict[str, Any]) -> QuIPWeight:
        return quip_quantize(w, hessian, int(bits), codebook=opts["codebook"], transform=opts["transform"],
                             rounding=opts["rounding"], rho=opts["rho"], seed=seed,
                             percdamp=opts["percdamp"], blocksize=opts["blocksize"])


METHODS = {
    "quip": QuIP(name="quip", supported_bits=(2, 3, 4), needs_hessian=True,
                 description="QuIP#: randomized Hadamard incoherence, BlockLDLQ, E8P lattice codebook (+RVQ)",
                 defaults={"codebook": "e8p", "transform": True, "rounding": "ldlq", "rho": 0.0,
                           "percdamp": 0.01, "blocksize": 128}),
}
