"""Model size, memory fit and hardware cost: what a number format's bits per weight mean for a real model.

:mod:`qcourse.formats` says how many bits one weight of a format costs (:func:`~qcourse.formats.
bits_per_weight`); this module turns that into bytes of a whole model and asks which GPU holds them.
Lessons 07–09 extend it (bytes moved per token, rooflines, energy per operation).

Units. ``GB`` is 10⁹ bytes, the unit of model sizes here and in the seed article's table; ``GiB`` is 2³⁰
bytes, as ``nvidia-smi`` and operating systems report memory. A "70 GB" model is 65.2 GiB:

>>> model_bytes(70e9, 8.0) / GB, round(model_bytes(70e9, 8.0) / GiB, 1)
(70.0, 65.2)
>>> smallest_gpu(model_bytes(70e9, 4.25))     # 37.2 GB of weights
'A100 (40 GB)'

GPU memory is sold in "GB" that are in fact close to GiB: an "80 GB" H100 reports 81,559 MiB (85.5 GB),
an "80 GB" A100 81,920 MiB, a "24 GB" RTX 4090 24,564 MiB. :data:`GPUS` keeps the marketed numbers and
:func:`smallest_gpu` compares GB of weights with them, which errs on the safe side by up to 7 %; the KV
cache, activations and the runtime need room beyond the weights anyway (``headroom``).

What is here
------------
* :func:`model_bytes`, :data:`GB`, :data:`GiB`; :data:`GPUS` (marketed memory sizes) and
  :func:`smallest_gpu`.
* :func:`llama2_70b_linear_shapes`: the shapes of a real 70B model's linear layers, over which AQLM's
  codebook + code + scale accounting (:func:`qcourse.methods.aqlm.bits_per_weight_layers`) is charged.
* :func:`precision_table`: a 70B model's weights by precision, with the seed article's quoted figures
  (:data:`ARTICLE_TABLE`) beside the honest ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from qcourse.formats import bits_per_weight
from qcourse.methods.aqlm import bits_per_weight_layers as aqlm_bits

__all__ = [
    "GB", "GiB", "GPUS", "ARTICLE_TABLE", "model_bytes", "smallest_gpu", "llama2_70b_linear_shapes",
    "precision_table",
]

#: bytes in a (decimal) gigabyte: the unit of model sizes here and in the seed article
GB = 1e9
#: bytes in a gibibyte, the unit ``nvidia-smi`` and operating systems report
GiB = float(2**30)


def model_bytes(n_params: float, bits_per_weight: float) -> float:
    """Bytes of ``n_params`` weights stored at ``bits_per_weight`` (metadata included in the bits).

    >>> model_bytes(135e6, 16.0) / 1e6      # SmolLM2-135M in BF16: 270 MB
    270.0
    """
    for name, v in (("n_params", n_params), ("bits_per_weight", bits_per_weight)):
        if isinstance(v, bool) or not isinstance(v, int | float) or not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{name} must be a positive finite number; got {v!r}")
    return n_params * bits_per_weight / 8


#: GPU memory as marketed ("GB", in fact about GiB; see the module docstring), small to large
GPUS: tuple[tuple[str, float], ...] = (
    ("RTX 3060 (12 GB)", 12.0), ("RTX 4090 (24 GB)", 24.0), ("A100 (40 GB)", 40.0),
    ("A100/H100 (80 GB)", 80.0), ("H200 (141 GB)", 141.0), ("2×H100 (160 GB)", 160.0),
    ("4×H100 (320 GB)", 320.0), ("8×H100 (640 GB)", 640.0),
)

#: the seed article's "precision spectrum" table for a 70B model: name -> (bits/weight, GB, fits on)
ARTICLE_TABLE: dict[str, tuple[float, float, str]] = {
    "FP16": (16, 140, "2x H100 (TP)"),
    "FP8": (8, 70, "1x H100"),
    "INT4 (GPTQ/AWQ)": (4.2, 37, "1x A100-40GB"),
    "3-bit (AQLM)": (3.1, 27, "1x RTX 4090 (24GB)"),
    "2-bit (QuIP#)": (2.1, 18, "1x RTX 3090 (24GB)"),
    "Ternary (BitNet 1.58b)": (1.58, 14, "1x RTX 3060 (12GB)"),
    "Binary (1-bit)": (1.0, 9, "1x RTX 3060 (12GB)"),
}


def smallest_gpu(n_bytes: float, headroom: float = 0.0) -> str | None:
    """The first GPU of :data:`GPUS` whose memory, less a ``headroom`` fraction, holds ``n_bytes``.

    ``None`` when none does. ``n_bytes`` is compared with the marketed capacity read as 10⁹ bytes per GB,
    a few per cent less than the card really has (the module docstring), so a "fits" here is safe.

    >>> smallest_gpu(20e9), smallest_gpu(20e9, headroom=0.2), smallest_gpu(1e15)
    ('RTX 4090 (24 GB)', 'A100 (40 GB)', None)
    """
    if isinstance(n_bytes, bool) or not isinstance(n_bytes, int | float) or not (n_bytes >= 0
                                                                                and math.isfinite(n_bytes)):
        raise ValueError(f"n_bytes must be a non-negative finite number; got {n_bytes!r}")
    if isinstance(headroom, bool) or not isinstance(headroom, int | float) or not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be a fraction in [0, 1); got {headroom!r}")
    return next((name for name, mem in GPUS if n_bytes <= mem * GB * (1.0 - headroom)), None)


def llama2_70b_linear_shapes() -> list[tuple[int, int]]:
    """``(d_out, d_in)`` of every linear layer in Llama-2-70B's 80 blocks (GQA: 8 KV heads of 128).

    >>> shapes = llama2_70b_linear_shapes(); len(shapes), sum(o * i for o, i in shapes) / 1e9
    (560, 68.45104128)
    """
    d, ff, kv = 8192, 28672, 8 * 128
    per_block = [(d, d), (kv, d), (kv, d), (d, d), (ff, d), (ff, d), (d, ff)]
    return per_block * 80


def _precision_rows() -> list[tuple[str, float, str | None, str]]:
    """(name, bits per weight, article row, how the bits are counted)."""
    row = 8192  # Llama-2-70B hidden size: the row length of a per-channel scale
    aqlm = aqlm_bits(llama2_70b_linear_shapes())
    return [
        ("FP16/BF16", 16.0, "FP16", "16-bit values, no scale"),
        ("FP8 (E4M3, per-tensor scale)", 8.0, "FP8", "8-bit values; one FP32 scale per tensor (negligible)"),
        ("INT8 per-channel", bits_per_weight("int8", row, 16), None, "8 + 16/8192 (fp16 scale per row)"),
        ("INT4 g128 (scale+zero fp16)", bits_per_weight("int4", 128, 16, 16), "INT4 (GPTQ/AWQ)",
         "4 + 32/128; the article's 4.2 lies between 4.125 (fp16 scale only) and 4.25; GPTQ's packed "
         "4-bit zero gives 4 + 20/128 = 4.16"),
        ("MXFP4", bits_per_weight("mxfp4"), None, "4 + 8/32 (E8M0 scale per 32)"),
        ("NVFP4", bits_per_weight("nvfp4"), None, "4 + 8/16 (E4M3 scale per 16) + one FP32 per tensor"),
        ("3-bit g128 (scale+zero fp16)", bits_per_weight("int3", 128, 16, 16), "3-bit (AQLM)",
         "3 + 32/128; the article's 3.1 bpw AQLM row gives 27 GB, which does NOT fit its own 24 GB RTX 4090"),
        ("2-bit g64 (scale+zero fp16)", bits_per_weight("int2", 64, 16, 16), "2-bit (QuIP#)",
         "2 + 32/64 (HQQ-style 2-bit: 0.5 bpw of metadata)"),
        ("AQLM 2×8 g8", aqlm, None, "codebooks + codes + row scales on Llama-2-70B's linear layers "
         "(AQLM App. H Eq. 10), applied to all parameters"),
        ("Ternary ideal (log2 3)", bits_per_weight("ternary"), "Ternary (BitNet 1.58b)",
         "information-theoretic 1.585; 14 GB does NOT fit the article's 12 GB RTX 3060"),
        ("Ternary TQ1_0 (llama.cpp)", 1.6875, None,
         "54 bytes per 256 weights (base-3 packing + fp16 scale)"),
        ("Ternary 2-bit TQ2_0 (llama.cpp)", 2.0625, None,
         "66 bytes per 256 weights (2 bits/trit + fp16 scale)"),
        ("Binary (sign + fp16 row scale)", bits_per_weight("binary", row, 16), "Binary (1-bit)",
         "1 + 16/8192"),
    ]


def precision_table(n_params: float = 70e9, formats: Sequence[str] | None = None,
                    headroom: float = 0.0) -> list[dict[str, Any]]:
    """Model size by precision and the smallest GPU (from :data:`GPUS`) whose memory holds the weights.

    Counts weights only — not the KV cache, activations or the CUDA context; ``headroom`` reserves that
    fraction of each GPU's memory for them. GB = 1e9 bytes; GPU capacities are the marketed ones
    (:func:`smallest_gpu`). Every parameter is charged the same bits per weight (embeddings included), an
    approximation for real models.

    Parameters
    ----------
    n_params
        Number of weights (70e9 for a 70B model).
    formats
        Names of rows to keep (see the ``name`` key); ``None`` keeps all.
    headroom
        Fraction in [0, 1) of GPU memory kept free.

    Returns
    -------
    list of dicts with keys ``name, bits_per_weight, gigabytes`` (10⁹ bytes), ``gibibytes`` (2³⁰ bytes),
    ``fits_on`` (``None`` if no GPU in the list
    holds it), ``article_bits_per_weight``, ``article_gigabytes``, ``article_fits_on`` (the seed article's
    quoted row where it has one, else ``None``) and ``how`` (what the bits count).

    Examples
    --------
    >>> rows = {r["name"]: r for r in precision_table(70e9)}
    >>> r = rows["INT4 g128 (scale+zero fp16)"]; r["bits_per_weight"], round(r["gigabytes"], 2), r["fits_on"]
    (4.25, 37.19, 'A100 (40 GB)')
    >>> rows["FP16/BF16"]["fits_on"], rows["Ternary ideal (log2 3)"]["fits_on"]
    ('H200 (141 GB)', 'RTX 4090 (24 GB)')
    """
    if isinstance(n_params, bool) or not (isinstance(n_params, int | float) and n_params > 0
                                          and math.isfinite(n_params)):
        raise ValueError(f"n_params must be a positive number; got {n_params!r}")
    if isinstance(headroom, bool) or not isinstance(headroom, int | float) or not 0.0 <= headroom < 1.0:
        raise ValueError(f"headroom must be in [0, 1); got {headroom!r}")
    all_rows = _precision_rows()
    names = [r[0] for r in all_rows]
    if formats is not None:
        unknown = [f for f in formats if f not in names]
        if unknown:
            raise ValueError(f"formats must be row names from {names}; unknown: {unknown}")
    out = []
    for name, bpw, art, how in all_rows:
        if formats is not None and name not in formats:
            continue
        size = model_bytes(n_params, bpw)
        a = ARTICLE_TABLE.get(art) if art else None
        out.append({"name": name, "bits_per_weight": bpw, "gigabytes": size / GB, "gibibytes": size / GiB,
                    "fits_on": smallest_gpu(size, headroom),
                    "article_bits_per_weight": a[0] if a else None, "article_gigabytes": a[1] if a else None,
                    "article_fits_on": a[2] if a else None, "how": how})
    return out
