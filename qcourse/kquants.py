"""llama.cpp's Q4_0, Q2_K and IQ4_NL block types: our own encoders and decoders, and grids GPTQ can round to.

Both types store a weight matrix row by row in blocks along the row (``ggml/src/ggml-common.h``):

* **Q4_0** (18 bytes per 32 weights, 4.5 bits per weight): an fp16 scale ``d`` then 16 bytes; byte ``j``
  holds code ``q[j]`` in its low nibble and ``q[j + 16]`` in its high nibble; ``y = d·(q − 8)``,
  ``q ∈ {0…15}``. llama.cpp's reference encoder (``quantize_row_q4_0_ref``) takes ``max``, the weight of
  largest magnitude *with its sign*, sets ``d = max/−8`` (so ``max`` itself lands exactly on code 0) and
  ``q = min(15, trunc(x/d + 8.5))``.
* **Q2_K** (84 bytes per super-block of 256 weights, 2.625 bits per weight): 16 bytes of scales (low
  nibble: 4-bit scale ``sc``, high nibble: 4-bit min ``m`` of each 16-weight sub-block), 64 bytes of 2-bit
  codes, then fp16 ``d`` and ``dmin``; ``y = d·sc·q − dmin·m``, ``q ∈ {0…3}``. In each 128-weight half,
  byte ``l`` (0–31) holds weights ``l, l+32, l+64, l+96`` at bit shifts 0, 2, 4, 6. The reference encoder
  (``quantize_row_q2_K_ref``) fits each sub-block's scale and min by ``make_qkx2_quants`` (an affine fit
  weighted by ``|x|``, minimising the weighted absolute error over a small grid of trial scales), then
  quantizes the 16 scales against ``max scale/15`` and the 16 mins against ``max min/15`` (4 bits each),
  and rounds every weight again on the sub-block grid those *quantized* numbers give.

* **IQ4_NL** (18 bytes per 32 weights, 4.5 bits per weight): Q4_0's layout, but the 16 codes index the
  non-uniform levels :data:`IQ4_NL_VALUES` (``y = d·value[q]``). llama.cpp's quantizer stores a tensor as
  IQ4_NL when it was asked for Q2_K but the rows are not whole 256-weight super-blocks
  (:func:`stored_type`; SmolLM2's rows of 576). The reference encoder (``quantize_row_iq4_nl_impl``, no
  importance matrix) weights each value by ``x²`` and tries 15 scales around ``max/127``, keeping the
  weighted least-squares scale of the best.

The ``gguf`` package decodes all three types and encodes Q4_0; the tests prove that its decoder returns
exactly our dequantized weights for our bytes, and that our Q4_0 bytes equal its encoder's. (The package has
no Q2_K or IQ4_NL encoder; ours follow llama.cpp's reference step by step, in float32, and the tests compare
them with a statement-by-statement transcription of the C loops.)

**GPTQ in the format.** :class:`Q4_0Grid` and :class:`Q2_KGrid` are :class:`~qcourse.ldlq.BlockQuantizer`
s (``dim = 1``), so :func:`qcourse.ldlq.ldlq` can choose the codes with error feedback while the file
stays a standard llama.cpp file. Q4_0's scale is refitted at each 32-column group from the error-updated
weights (GPTQ's dynamic groups); Q2_K's quantized scales and mins are fitted once per 256-column
super-block from the original weights (static groups) and GPTQ then picks the 2-bit codes.

>>> import numpy as np
>>> w = np.linspace(-1, 1, 256, dtype=np.float32)[None]
>>> data, deq = encode(w, "Q4_0")
>>> len(data), float(np.abs(deq - w).max()) < 1 / 16           # 8 blocks of 18 bytes
(144, True)
>>> data, deq = encode(w, "Q2_K")
>>> len(data), bool(np.array_equal(decode(data, "Q2_K", w.shape), deq))
(84, True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "IQ4_NL_VALUES", "IQ4_NLGrid", "KQUANT_TYPES", "KQuantTensor", "Q2_KGrid", "Q4_0Grid", "decode", "encode",
    "encode_gptq", "encode_tensor", "make_qkx2_quants", "pack_iq4_nl", "pack_q2_k", "pack_q4_0",
    "stored_type",
]

#: weights per block and bytes per block of each supported type
KQUANT_TYPES = {"Q4_0": (32, 18), "Q2_K": (256, 84), "IQ4_NL": (32, 18)}
#: IQ4_NL's 16 non-uniform levels (``kvalues_iq4nl`` in ``ggml-common.h``), scaled by each block's ``d``
IQ4_NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
#: what llama.cpp's quantizer stores instead when a row does not split into whole blocks of the requested
#: type (``llama_tensor_get_type``: Q2_K, Q3_K and the IQ types fall back to IQ4_NL, blocks of 32)
FALLBACK = {"Q2_K": "IQ4_NL"}


def stored_type(qtype: str, cols: int) -> str:
    """The type llama.cpp's quantizer actually stores for rows of ``cols`` weights when asked for ``qtype``.

    A k-quant needs whole super-blocks of 256 along each row; for other row lengths llama.cpp falls back
    (Q2_K → IQ4_NL, 4.5 bits per weight). SmolLM2-135M's rows of 576 are such a case.

    >>> stored_type("Q2_K", 1536), stored_type("Q2_K", 576), stored_type("Q4_0", 576)
    ('Q2_K', 'IQ4_NL', 'Q4_0')
    """
    block, _ = _check_qtype(qtype)
    if isinstance(cols, bool) or not isinstance(cols, int | np.integer) or cols <= 0:
        raise ValueError(f"cols must be a positive int; got {cols!r}")
    if cols % block == 0:
        return qtype
    fb = FALLBACK.get(qtype)
    if fb is None or cols % KQUANT_TYPES[fb][0]:
        # llama.cpp would store F16 (or refuse); this module writes block types only
        raise ValueError(f"rows of {cols} weights fit neither {qtype} nor its llama.cpp fallback")
    return fb


@dataclass
class KQuantTensor:
    """One weight matrix in a llama.cpp block type: the bytes and the weights they decode to."""

    qtype: str  #: "Q4_0" or "Q2_K"
    data: bytes  #: the row-major blocks, ``rows · cols/block · block_bytes`` bytes
    dequantized: np.ndarray  #: float32 ``[rows, cols]``, what any decoder of ``data`` returns
    shape: tuple[int, int]  #: ``(rows, cols)``

    @property
    def bits_per_weight(self) -> float:
        return 8 * len(self.data) / (self.shape[0] * self.shape[1])


def _check_qtype(qtype: Any) -> tuple[int, int]:
    if qtype not in KQUANT_TYPES:
        raise ValueError(f"qtype must be one of {sorted(KQUANT_TYPES)}; got {qtype!r}")
    return KQUANT_TYPES[qtype]


def _as_matrix(w: Any, block: int, name: str = "w") -> np.ndarray:
    if isinstance(w, torch.Tensor):
        w = w.detach().cpu().float().numpy()
    if not isinstance(w, np.ndarray) or w.ndim != 2 or not np.issubdtype(w.dtype, np.floating):
        got = getattr(w, "shape", w)
        raise TypeError(f"{name} must be a 2-D float array or tensor [rows, cols]; got {got!r}")
    if w.shape[0] == 0 or w.shape[1] == 0 or w.shape[1] % block:
        raise ValueError(f"{name} needs a positive multiple of {block} columns (whole blocks); got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name} must be finite")
    return np.ascontiguousarray(w, dtype=np.float32)


def _nearest_int(x: np.ndarray) -> np.ndarray:
    # llama.cpp's nearest_int adds 1.5·2^23 in float32: round half to even, like np.rint
    return np.rint(x.astype(np.float32)).astype(np.int32)


# ---------------------------------------------------------------------------------------------------- Q4_0

def pack_q4_0(q: np.ndarray, d: np.ndarray) -> bytes:
    """Q4_0 bytes of codes ``q`` (``[rows, cols]``, 0–15) and fp16 scales ``d`` (``[rows, cols/32]``)."""
    q = np.asarray(q)
    if q.ndim != 2 or q.shape[1] % 32 or q.min() < 0 or q.max() > 15:
        raise ValueError("q must be [rows, cols] codes in 0..15 with cols a multiple of 32")
    d = np.asarray(d, dtype=np.float16)
    if d.shape != (q.shape[0], q.shape[1] // 32):
        raise ValueError(f"d must be [rows, cols/32] = {(q.shape[0], q.shape[1] // 32)}; got {d.shape}")
    blocks = q.astype(np.uint8).reshape(-1, 2, 16)
    packed = blocks[:, 0] | (blocks[:, 1] << 4)
    return np.concatenate([d.reshape(-1, 1).view(np.uint8), packed], axis=1).tobytes()


def _encode_q4_0(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    blocks = w.reshape(-1, 32)
    imax = np.abs(blocks).argmax(axis=1)
    mx = blocks[np.arange(len(blocks)), imax]
    d = (mx / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    # the reference rounds with 1/d in float32 (before d is stored as fp16): trunc(x/d + 8.5), at most 15
    q = np.minimum(15, np.trunc(blocks * inv[:, None] + np.float32(8.5))).astype(np.int32)
    d16 = d.astype(np.float16)
    deq = d16.astype(np.float32)[:, None] * (q - 8).astype(np.float32)
    rows, cols = w.shape
    return pack_q4_0(q.reshape(rows, cols), d16.reshape(rows, -1)), deq.reshape(rows, cols)


def _decode_q4_0(raw: np.ndarray) -> np.ndarray:
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    qs = raw[:, 2:]
    q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float32) - 8
    return d * q


class Q4_0Grid:
    """Q4_0's grid as a :class:`~qcourse.ldlq.BlockQuantizer`: use with ``group_size=32``.

    ``fit(w)`` (``w`` one group ``[rows, 32]``) sets each row's ``d = fp16(max/−8)`` as llama.cpp does;
    ``quantize`` rounds a column to the nearest of ``d·(q − 8)``, ``q ∈ {0…15}`` (codes clipped: error
    feedback can push a weight past the group's original range).
    """

    dim = 1

    def __init__(self, d: torch.Tensor | None = None) -> None:
        self.d = d

    def fit(self, w: torch.Tensor) -> Q4_0Grid:
        if w.ndim != 2 or w.shape[1] != 32:
            raise ValueError(f"Q4_0Grid fits one 32-column group (group_size=32); got {tuple(w.shape)}")
        a = w.detach().cpu().float().numpy()
        mx = a[np.arange(len(a)), np.abs(a).argmax(1)]
        d = (mx / np.float32(-8)).astype(np.float16)
        return Q4_0Grid(torch.from_numpy(d.astype(np.float32)).to(torch.float64)[:, None])

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.d is None:
            raise ValueError("Q4_0Grid.quantize needs a fitted grid: call fit(w) first")
        d = self.d.to(block.dtype)
        safe = torch.where(d == 0, torch.ones_like(d), d)
        q = torch.where(d == 0, torch.full_like(block, 8), torch.round(block / safe) + 8).clamp(0, 15)
        # the dequantized value in float32, exactly as a decoder computes it
        deq = (d.float() * (q.float() - 8)).to(block.dtype)
        return q.to(torch.uint8), deq


# ---------------------------------------------------------------------------------------------------- Q2_K

def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int = 3, rmin: float = -0.5,
                     rdelta: float = 0.1, nstep: int = 15) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """llama.cpp's weighted affine fit of each row of ``x`` (``[n, k]``): ``x ≈ scale·L − min``.

    Starts from the min–max grid (``min`` capped at 0), then tries ``nstep + 1`` trial inverse scales
    ``(rmin + rdelta·i + nmax)/(max − min)``, ``min`` the best offset found so far; for each it rounds,
    solves the weighted least-squares ``(scale, min)`` for those codes (``min ≤ 0`` enforced) and keeps the
    fit with the smallest weighted absolute error. Returns ``(scale [n], the_min [n] = −min ≥ 0,
    L [n, k])``, all in float32 arithmetic.

    >>> s, m, L = make_qkx2_quants(np.array([[0.0, 1.0, 2.0, 3.0]], np.float32), np.ones((1, 4), np.float32))
    >>> s.tolist(), m.tolist() == [0.0], L.tolist()      # exact on the grid 0, 1, 2, 3: no offset
    ([1.0], True, [[0, 1, 2, 3]])
    """
    x = x.astype(np.float32)
    w = weights.astype(np.float32)
    mn = np.minimum(x.min(1), np.float32(0))
    mx = x.max(1)
    sum_w = w.sum(1, dtype=np.float32)
    sum_x = (w * x).sum(1, dtype=np.float32)
    flat = mx == mn
    rng = np.where(flat, np.float32(1), mx - mn).astype(np.float32)
    iscale = (np.float32(nmax) / rng).astype(np.float32)
    scale = (np.float32(1) / iscale).astype(np.float32)
    L = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best = (w * np.abs(scale[:, None] * L + mn[:, None] - x)).sum(1, dtype=np.float32)
    best_min = mn.copy()
    for i in range(nstep + 1):
        # as in the reference, later trials measure the range and the codes from the best min found so far
        rng = np.where(flat, np.float32(1), mx - best_min).astype(np.float32)
        trial = np.float32(rmin) + np.float32(rdelta) * np.float32(i) + np.float32(nmax)
        isc = (trial / rng).astype(np.float32)
        La = np.clip(_nearest_int(isc[:, None] * (x - best_min[:, None])), 0, nmax).astype(np.float32)
        sum_l = (w * La).sum(1, dtype=np.float32)
        sum_l2 = (w * La * La).sum(1, dtype=np.float32)
        sum_xl = (w * La * x).sum(1, dtype=np.float32)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        Ds = np.where(ok, D, np.float32(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / Ds
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / Ds
        pos = this_min > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            this_scale = np.where(pos, sum_xl / np.where(sum_l2 == 0, np.float32(1), sum_l2), this_scale)
        this_min = np.where(pos, np.float32(0), this_min).astype(np.float32)
        mad = (w * np.abs(this_scale[:, None] * La + this_min[:, None] - x)).sum(1, dtype=np.float32)
        better = ok & (mad < best) & ~flat
        L = np.where(better[:, None], La.astype(np.int32), L)
        best = np.where(better, mad, best)
        scale = np.where(better, this_scale, scale).astype(np.float32)
        best_min = np.where(better, this_min, best_min).astype(np.float32)
    scale = np.where(flat, np.float32(0), scale).astype(np.float32)
    L = np.where(flat[:, None], 0, L)
    return scale, (-best_min).astype(np.float32), L.astype(np.int32)


def _q2_k_params(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Quantized parameters of each super-block (rows of ``w`` ``[n, 256]``), as the reference sets them.

    Returns ``(scales_u8 [n, 16], d fp16 [n], dmin fp16 [n], L [n, 256] from the sub-block fits)``.
    """
    n = len(w)
    sub = w.reshape(-1, 16)
    scales, mins, L = make_qkx2_quants(sub, np.abs(sub))
    scales, mins = scales.reshape(n, 16), mins.reshape(n, 16)
    max_scale, max_min = scales.max(1), mins.max(1)
    q4 = np.float32(15)
    with np.errstate(divide="ignore"):
        isc = np.where(max_scale > 0, q4 / max_scale, np.float32(0)).astype(np.float32)
        imn = np.where(max_min > 0, q4 / max_min, np.float32(0)).astype(np.float32)
    ls = np.where(max_scale[:, None] > 0, _nearest_int(isc[:, None] * scales), 0)
    lm = np.where(max_min[:, None] > 0, _nearest_int(imn[:, None] * mins), 0)
    d = np.where(max_scale > 0, max_scale / q4, np.float32(0)).astype(np.float16)
    dmin = np.where(max_min > 0, max_min / q4, np.float32(0)).astype(np.float16)
    return (ls | (lm << 4)).astype(np.uint8), d, dmin, L.reshape(n, 256)


def _q2_k_grid(scales_u8: np.ndarray, d: np.ndarray, dmin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sub-block's step ``dl = d·sc`` and offset ``ml = dmin·m`` in float32 (``[n, 16]`` each)."""
    dl = d.astype(np.float32)[:, None] * (scales_u8 & 15).astype(np.float32)
    ml = dmin.astype(np.float32)[:, None] * (scales_u8 >> 4).astype(np.float32)
    return dl, ml


def pack_q2_k(L: np.ndarray, scales_u8: np.ndarray, d: np.ndarray, dmin: np.ndarray) -> bytes:
    """Q2_K bytes of ``n`` super-blocks.

    ``L``: codes ``[n, 256]`` (0–3); ``scales_u8``: ``[n, 16]`` (scale | min << 4);
    ``d``, ``dmin``: fp16 ``[n]``.
    """
    L = np.asarray(L)
    if L.ndim != 2 or L.shape[1] != 256 or L.min() < 0 or L.max() > 3:
        raise ValueError("L must be [n, 256] codes in 0..3")
    n = len(L)
    if np.shape(scales_u8) != (n, 16) or np.shape(d) != (n,) or np.shape(dmin) != (n,):
        raise ValueError("scales_u8 must be [n, 16], d and dmin [n]")
    q = L.astype(np.uint8).reshape(n, 2, 4, 32)
    qs = (q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)).reshape(n, 64)
    tail = np.stack([np.asarray(d, np.float16), np.asarray(dmin, np.float16)], 1).view(np.uint8)
    return np.concatenate([np.asarray(scales_u8, np.uint8), qs, tail], axis=1).tobytes()


def _q2_k_dequant(L: np.ndarray, dl: np.ndarray, ml: np.ndarray) -> np.ndarray:
    n = len(L)
    return (dl[:, :, None] * L.reshape(n, 16, 16).astype(np.float32) - ml[:, :, None]).reshape(n, 256)


def _encode_q2_k(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    sb = w.reshape(-1, 256)
    scales_u8, d, dmin, L = _q2_k_params(sb)
    dl, ml = _q2_k_grid(scales_u8, d, dmin)
    n = len(sb)
    x = sb.reshape(n, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        requant = np.clip(_nearest_int((x + ml[:, :, None]) / dl[:, :, None]), 0, 3)
    # a sub-block whose quantized scale is 0 keeps the codes of its own fit (they all decode to −ml)
    L = np.where((dl == 0)[:, :, None], L.reshape(n, 16, 16), requant).reshape(n, 256)
    return pack_q2_k(L, scales_u8, d, dmin), _q2_k_dequant(L, dl, ml).reshape(w.shape)


def _decode_q2_k(raw: np.ndarray) -> np.ndarray:
    n = len(raw)
    scales_u8 = raw[:, :16]
    qs = raw[:, 16:80].reshape(n, 2, 1, 32)
    L = ((qs >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 3).reshape(n, 256)
    d = raw[:, 80:82].copy().view(np.float16).reshape(n)
    dmin = raw[:, 82:84].copy().view(np.float16).reshape(n)
    dl, ml = _q2_k_grid(scales_u8, d, dmin)
    return _q2_k_dequant(L, dl, ml)


class Q2_KGrid:
    """Q2_K's grid as a :class:`~qcourse.ldlq.BlockQuantizer`; use ``group_size=256, static_groups=True``.

    ``fit(w)`` (one super-block of columns ``[rows, 256]``, the original weights) sets every row's
    quantized sub-block scales and mins exactly as llama.cpp's reference does. The fitted grid then rounds
    the super-block's 256 columns in order (the loop processes a static group's columns left to right
    when ``act_order`` is off); column ``c`` uses sub-block ``c // 16``'s grid ``dl·q − ml``, ``q ∈ {0…3}``.
    """

    dim = 1

    def __init__(self) -> None:
        self.params: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._dl = self._ml = None
        self._col = 0

    def fit(self, w: torch.Tensor) -> Q2_KGrid:
        if w.ndim != 2 or w.shape[1] != 256:
            raise ValueError(f"Q2_KGrid fits one 256-column super-block; got {tuple(w.shape)}")
        scales_u8, d, dmin, _ = _q2_k_params(w.detach().cpu().float().numpy())
        out = Q2_KGrid()
        out.params = (scales_u8, d, dmin)
        dl, ml = _q2_k_grid(scales_u8, d, dmin)
        out._dl, out._ml = torch.from_numpy(dl), torch.from_numpy(ml)
        return out

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.params is None:
            raise ValueError("Q2_KGrid.quantize needs a fitted grid: call fit(w) first")
        if self._col >= 256:
            raise ValueError("this fitted Q2_K grid has already rounded its super-block's 256 columns")
        s = self._col // 16
        self._col += 1
        dl = self._dl[:, s:s + 1].to(block.dtype)
        ml = self._ml[:, s:s + 1].to(block.dtype)
        safe = torch.where(dl == 0, torch.ones_like(dl), dl)
        q = torch.where(dl == 0, torch.zeros_like(block), torch.round((block + ml) / safe)).clamp(0, 3)
        deq = (dl.float() * q.float() - ml.float()).to(block.dtype)
        return q.to(torch.uint8), deq


# ---------------------------------------------------------------------------------------------------- IQ4_NL

def pack_iq4_nl(L: np.ndarray, d: np.ndarray) -> bytes:
    """IQ4_NL bytes of level indexes ``L`` (``[rows, cols]``, 0–15), fp16 scales ``d`` (``[rows, cols/32]``).

    Same layout as Q4_0 (fp16 ``d``, then byte ``j`` = index ``j`` | index ``j + 16`` << 4); the weight is
    ``d·IQ4_NL_VALUES[L]``.
    """
    return pack_q4_0(L, d)


def _best_index(x: np.ndarray) -> np.ndarray:
    """llama.cpp's ``best_index_int8`` on :data:`IQ4_NL_VALUES`: the nearest level, a tie going up."""
    v = IQ4_NL_VALUES.astype(np.float32)
    mu = np.clip(np.searchsorted(v, x, side="right"), 1, 15)
    lo = (x - v[mu - 1]) < (v[mu] - x)
    idx = np.where(lo, mu - 1, mu)
    return np.where(x <= v[0], 0, np.where(x >= v[15], 15, idx)).astype(np.int32)


def _iq4_nl_scales(b: np.ndarray) -> np.ndarray:
    """Each 32-weight block's float32 scale, as ``quantize_row_iq4_nl_impl`` (no importance matrix) fits it.

    Weights ``x²``; start from ``d = max/127`` (``max`` the signed weight of largest magnitude), then try
    the 15 inverse scales ``(t − 127)/max``, ``t = −7…7``, keeping the weighted least-squares ``d`` of the
    codes that maximises ``(Σ w q x)² / Σ w q²``. Sums run left to right in float32, as the C loop does.
    """
    f = np.float32
    v = IQ4_NL_VALUES.astype(np.float32)
    n = len(b)
    w = b * b
    rows = np.arange(n)
    mx = b[rows, np.abs(b).argmax(1)]
    tiny = np.abs(mx) < f(1e-15)          # GROUP_MAX_EPS: the block is stored as d = 0
    safe_mx = np.where(tiny, f(1), mx).astype(np.float32)

    def sums(inv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = v[_best_index((inv[:, None] * b).astype(np.float32))]
        sqx = np.zeros(n, np.float32)
        sq2 = np.zeros(n, np.float32)
        for j in range(32):
            wq = w[:, j] * q[:, j]
            sqx = (sqx + wq * b[:, j]).astype(np.float32)
            sq2 = (sq2 + wq * q[:, j]).astype(np.float32)
        return sqx, sq2

    d0 = (-safe_mx / f(-127)).astype(np.float32)
    sqx, sq2 = sums((f(1) / d0).astype(np.float32))
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sq2 > 0, sqx / sq2, f(0)).astype(np.float32)
    best = (d * sqx).astype(np.float32)
    for t in range(-7, 8):
        sqx, sq2 = sums((f(t - 127) / safe_mx).astype(np.float32))
        with np.errstate(divide="ignore", invalid="ignore"):
            better = (sq2 > 0) & (sqx * sqx > best * sq2)
            d = np.where(better, sqx / np.where(sq2 > 0, sq2, f(1)), d).astype(np.float32)
        best = np.where(better, d * sqx, best).astype(np.float32)
    return np.where(tiny, f(0), d).astype(np.float32)


def _encode_iq4_nl(w: np.ndarray) -> tuple[bytes, np.ndarray]:
    b = w.reshape(-1, 32)
    scale = _iq4_nl_scales(b)
    # the final rounding uses 1/scale in float32; the file stores scale as fp16
    with np.errstate(divide="ignore"):
        inv = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    L = _best_index((inv[:, None] * b).astype(np.float32))
    d16 = scale.astype(np.float16)
    deq = d16.astype(np.float32)[:, None] * IQ4_NL_VALUES.astype(np.float32)[L]
    rows, cols = w.shape
    return pack_iq4_nl(L.reshape(rows, cols), d16.reshape(rows, -1)), deq.reshape(rows, cols)


def _decode_iq4_nl(raw: np.ndarray) -> np.ndarray:
    d = raw[:, :2].copy().view(np.float16).astype(np.float32)
    qs = raw[:, 2:]
    L = np.concatenate([qs & 15, qs >> 4], axis=1)
    return d * IQ4_NL_VALUES.astype(np.float32)[L]


class IQ4_NLGrid:
    """IQ4_NL's grid as a :class:`~qcourse.ldlq.BlockQuantizer`: use with ``group_size=32``.

    ``fit(w)`` (one group ``[rows, 32]``, the error-updated weights: GPTQ's dynamic groups) fits each row's
    scale as llama.cpp does and stores it as fp16; ``quantize`` rounds a column to the nearest of
    ``d·IQ4_NL_VALUES`` (the levels are non-uniform, so "nearest" is taken on the stored grid).
    """

    dim = 1

    def __init__(self, d: torch.Tensor | None = None) -> None:
        self.d = d

    def fit(self, w: torch.Tensor) -> IQ4_NLGrid:
        if w.ndim != 2 or w.shape[1] != 32:
            raise ValueError(f"IQ4_NLGrid fits one 32-column group (group_size=32); got {tuple(w.shape)}")
        d = _iq4_nl_scales(w.detach().cpu().float().numpy()).astype(np.float16)
        return IQ4_NLGrid(torch.from_numpy(d.astype(np.float32)).to(torch.float64)[:, None])

    def quantize(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.d is None:
            raise ValueError("IQ4_NLGrid.quantize needs a fitted grid: call fit(w) first")
        if block.ndim != 2 or block.shape[1] != 1:
            raise ValueError(f"IQ4_NLGrid.quantize takes a [rows, 1] column; got {tuple(block.shape)}")
        levels = torch.from_numpy(IQ4_NL_VALUES.astype(np.float32))
        d = self.d.float()
        grid = d * levels[None, :]                                   # [rows, 16], as a decoder computes it
        q = (block.float() - grid).abs().argmin(1, keepdim=True)     # the nearest stored level
        # a zero scale keeps index 8, as llama.cpp writes an all-zero block
        q = torch.where(d == 0, torch.full_like(q, 8), q)
        deq = (d * levels[q]).to(block.dtype)
        return q.to(torch.uint8), deq


# ---------------------------------------------------------------------------------------------------- API

def encode(w: np.ndarray | torch.Tensor, qtype: str) -> tuple[bytes, np.ndarray]:
    """Round-to-nearest encoding of ``w`` (``[rows, cols]``) as llama.cpp's reference does.

    Returns ``(bytes, dequantized float32 [rows, cols])``; ``cols`` must be a multiple of the type's block
    (32 for Q4_0 and IQ4_NL, 256 for Q2_K).
    """
    block, _ = _check_qtype(qtype)
    a = _as_matrix(w, block)
    # every type stores its scales in fp16: a scale past 65504 would silently become inf
    limit = {"Q4_0": 8 * 65504.0, "Q2_K": 15 * 65504.0 / 2, "IQ4_NL": 127 * 65504.0}[qtype]
    if float(np.abs(a).max()) >= limit:
        raise ValueError(f"w has |weights| up to {float(np.abs(a).max()):g}; {qtype}'s fp16 scales overflow "
                         f"beyond about {limit:g}")
    return {"Q4_0": _encode_q4_0, "Q2_K": _encode_q2_k, "IQ4_NL": _encode_iq4_nl}[qtype](a)


def decode(data: bytes | np.ndarray, qtype: str, shape: tuple[int, int]) -> np.ndarray:
    """Our decoder: the float32 ``[rows, cols]`` weights of ``data`` (the tests compare it with gguf's)."""
    block, nbytes = _check_qtype(qtype)
    rows, cols = shape
    if cols % block:
        raise ValueError(f"shape[1] must be a multiple of {block}; got {shape}")
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    if raw.size != rows * cols // block * nbytes:
        need = rows * cols // block * nbytes
        raise ValueError(f"data holds {raw.size} bytes; shape {shape} in {qtype} needs {need}")
    raw = raw.reshape(-1, nbytes)
    out = {"Q4_0": _decode_q4_0, "Q2_K": _decode_q2_k, "IQ4_NL": _decode_iq4_nl}[qtype](raw)
    return out.reshape(rows, cols)


def encode_gptq(w: torch.Tensor, hessian: torch.Tensor, qtype: str, percdamp: float = 0.01,
                blocksize: int = 128) -> tuple[KQuantTensor, Any]:
    """GPTQ rounding on the grid of ``qtype``: :func:`qcourse.ldlq.ldlq` with :class:`Q4_0Grid` or
    :class:`IQ4_NLGrid` (dynamic 32-column groups) or :class:`Q2_KGrid` (static 256-column super-blocks
    fitted on the original weights).

    Returns ``(KQuantTensor, LDLQResult)``; the tensor's ``dequantized`` is decoded from its bytes.

    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(512, 256, generator=g, dtype=torch.float64)
    >>> H = x.T @ x / 512
    >>> w = torch.randn(4, 256, generator=g)
    >>> t, res = encode_gptq(w, H, "Q2_K")
    >>> bool(np.array_equal(t.dequantized, res.w_q.float().numpy()))
    True
    """
    from qcourse.ldlq import ldlq

    block, _ = _check_qtype(qtype)
    a = torch.from_numpy(_as_matrix(w, block)).to(torch.float64)
    rows, cols = a.shape
    if qtype in ("Q4_0", "IQ4_NL"):
        grid = Q4_0Grid() if qtype == "Q4_0" else IQ4_NLGrid()
        res = ldlq(a, hessian, grid, blocksize=blocksize, percdamp=percdamp, group_size=32)
        q = res.codes.numpy().astype(np.int32)
        d = torch.cat([g.d for g in res.quantizers], 1).numpy().astype(np.float16)
        data = pack_q4_0(q, d)      # IQ4_NL shares Q4_0's byte layout
    else:
        res = ldlq(a, hessian, Q2_KGrid(), blocksize=blocksize, percdamp=percdamp, group_size=256,
                   static_groups=True)
        L = res.codes.numpy().astype(np.int32).reshape(rows, cols // 256, 256)
        sc = np.stack([g.params[0] for g in res.quantizers], 1)
        d = np.stack([g.params[1] for g in res.quantizers], 1)
        dmin = np.stack([g.params[2] for g in res.quantizers], 1)
        data = pack_q2_k(L.reshape(-1, 256), sc.reshape(-1, 16), d.reshape(-1), dmin.reshape(-1))
    return KQuantTensor(qtype, data, decode(data, qtype, (rows, cols)), (rows, cols)), res


def encode_tensor(w: np.ndarray | torch.Tensor, qtype: str) -> KQuantTensor:
    """:func:`encode` wrapped as a :class:`KQuantTensor`."""
    data, deq = encode(w, qtype)
    return KQuantTensor(qtype, data, deq, tuple(deq.shape))

