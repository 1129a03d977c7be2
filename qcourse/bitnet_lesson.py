"""Helpers of lesson 05 (BitNet b1.58): the straight-through estimator drawn, a live float-vs-ternary training
pair, the toy fit that shows the seed article's ``BitLinear`` cannot learn, trit statistics, byte accounting
of a ternary model and of its safetensors file, a weight tensor of SmolLM2 read straight from its GGUF, and
the activation-bits widget.

Every function here computes with the tested pieces of :mod:`qcourse.methods.bitnet`,
:mod:`qcourse.nn.bitlinear` and :mod:`qcourse.lm.train`; the figures only draw what they return.

>>> import torch
>>> c = ste_curves(gamma=1.0, n=5)            # x = −2, −1, 0, 1, 2
>>> c["forward"].tolist(), c["ste_grad"].tolist()
([-1.0, -1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0, 1.0])
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcourse.methods.bitnet import absmax_dequantize, absmax_quantize, absmean_ternary, check_act_bits
from qcourse.nn.bitlinear import BitLinear
from qcourse.nn.linear import swap_linears

#: where the shipped ternary twin of the embedded model lives (``qcourse.lm.load("austen-bitnet")``)
TWIN_FOLDER = Path(__file__).resolve().parent / "data" / "austen-bitnet"

__all__ = [
    "TWIN_FOLDER", "ste_curves", "plot_ste", "fit_toy_map", "plot_toy_fits", "train_pair", "plot_loss_curves",
    "PTQBitLinear", "ternary_ptq", "trit_stats", "plot_trit_histograms", "model_bytes", "safetensors_layout",
    "gguf_tensor_index", "smollm2_tensor", "relative_error", "set_act_bits", "act_bits_perplexity",
    "plot_act_bits", "act_bits_explorer",
]


# ---- the straight-through estimator --------------------------------------------------------------------

def ste_curves(gamma: float = 1.0, lo: float = -2.0, hi: float = 2.0, n: int = 401
               ) -> dict[str, torch.Tensor]:
    """Forward value and backward gradient of the ternary quantizer ``γ·RoundClip(x/γ, −1, 1)`` (fixed ``γ``).

    Returns ``x``; ``forward`` (the staircase); ``ste_grad``, the gradient autograd computes through the
    straight-through form ``x + (q(x) − x).detach()`` (the identity's: 1 everywhere); and ``true_grad``, the
    derivative of the staircase itself (0 everywhere except at the two jumps, where it does not exist).
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0; got {gamma!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2; got {n!r}")
    x = torch.linspace(lo, hi, n, requires_grad=True)
    q = gamma * torch.round(x.detach() / gamma).clamp(-1, 1)
    y = x + (q - x).detach()
    y.sum().backward()
    return {"x": x.detach(), "forward": y.detach(), "ste_grad": x.grad.detach(),
            "true_grad": torch.zeros(n)}


def plot_ste(gamma: float = 1.0) -> Any:
    """Two panels: the forward staircase against the identity, and the two backward passes."""
    import matplotlib.pyplot as plt

    c = ste_curves(gamma)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.plot(c["x"], c["x"], "--", color="gray", label="identity x")
    a.plot(c["x"], c["forward"], lw=2, label="forward: γ·RoundClip(x/γ, −1, 1)")
    for edge in (-gamma / 2, gamma / 2):
        a.axvline(edge, color="k", lw=0.5, ls=":")
    a.set(xlabel="latent weight x", ylabel="value used in the forward pass", title=f"forward (γ = {gamma:g})")
    a.legend(fontsize=8)
    b.plot(c["x"], c["ste_grad"], lw=2, label="backward with the STE: d/dx = 1")
    b.plot(c["x"], c["true_grad"], lw=2, label="true derivative of the staircase: 0")
    b.scatter([-gamma / 2, gamma / 2], [0, 0], color="C1", zorder=3, label="jumps (undefined)")
    b.set(xlabel="latent weight x", ylabel="gradient passed to x", ylim=(-0.2, 1.3), title="backward")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- the toy fit: BitLinear learns, the seed article's sketch does not ----------------------------------

def fit_toy_map(layer: nn.Module, steps: int = 150, lr: float = 1e-2, seed: int = 123) -> list[float]:
    """Train ``layer`` (``[.., 32] → [.., 16]``) with Adam to reproduce a fixed random ternary linear map.

    The target map and the inputs come from a generator seeded with ``seed`` (not the layer's init stream);
    returns the mean squared error at every step.

    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> losses = fit_toy_map(BitLinear(32, 16), steps=60)
    >>> losses[-1] < 0.5 * losses[0]
    True
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int; got {steps!r}")
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(-1, 2, (16, 32), generator=g).float()
    x = torch.randn(256, 32, generator=g)
    y = x @ target.T
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = nn.functional.mse_loss(layer(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def plot_toy_fits(curves: dict[str, Sequence[float]]) -> Any:
    """Loss per step of each layer in ``curves`` (label → losses), log scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for label, losses in curves.items():
        ax.semilogy(list(losses), label=label)
    ax.set(xlabel="Adam step", ylabel="mean squared error", title="fitting a ternary 32 → 16 map")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- the live training pair ----------------------------------------------------------------------------

def train_pair(model_config: Any, steps: int = 150, batch_size: int = 8, seq_len: int = 64,
               eval_every: int = 15, eval_tokens: int = 1024, final_eval_tokens: int = 4096,
               seed: int = 0, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train a float model and its ternary twin with :func:`qcourse.lm.train.train`, same seed, data, steps.

    The float model uses the course's recipe (cosine schedule, peak 3e-3); the ternary one BitNet b1.58's
    two-stage schedule at twice that peak, exactly as :data:`qcourse.lm.train.BITNET_TRAIN_CONFIG` does for
    the shipped twin. Returns ``{"float": record, "ternary": record}`` (records as ``train`` returns them,
    the model under ``"model"``). One thread, so the run is reproducible bit for bit on one machine.
    """
    from qcourse.lm.train import BITNET_TRAIN_CONFIG, TRAIN_CONFIG, TrainConfig, train

    warm = max(1, steps // 10)
    common = dict(steps=steps, batch_size=batch_size, seq_len=seq_len, warmup_steps=warm,
                  eval_every=eval_every, eval_tokens=eval_tokens, final_eval_tokens=final_eval_tokens,
                  seed=seed, threads=1)
    configs = {
        "float": TrainConfig(**common, lr=TRAIN_CONFIG.lr),
        "ternary": TrainConfig(**common, lr=BITNET_TRAIN_CONFIG.lr, model="bitnet", schedule="two-stage",
                               stage2_lr_ratio=BITNET_TRAIN_CONFIG.stage2_lr_ratio),
    }
    return {k: train(model_config, tc, progress=progress) for k, tc in configs.items()}


def plot_loss_curves(records: dict[str, dict[str, Any]], title: str = "") -> Any:
    """Validation (solid) and training (dotted) loss in bits per byte against tokens seen, per record."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (label, rec) in enumerate(records.items()):
        tc = rec["train_config"]
        tok = [h["step"] * tc["batch_size"] * tc["seq_len"] for h in rec["history"]]
        ax.plot(tok, [h["val_loss"] / math.log(2) for h in rec["history"]], "o-", color=f"C{i}",
                label=f"{label}: validation")
        ax.plot(tok, [h["train_loss"] / math.log(2) for h in rec["history"]], ":", color=f"C{i}",
                label=f"{label}: training batch")
        if tc.get("schedule") == "two-stage":
            ax.axvline(tc["steps"] // 2 * tc["batch_size"] * tc["seq_len"], color=f"C{i}", lw=0.6, ls="--")
    ax.set(xlabel="tokens seen", ylabel="loss (bits per byte)", title=title or "float vs ternary, same data")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# ---- ternary models: post-training quantization, trit statistics, bytes -------------------------------

class PTQBitLinear(BitLinear):
    """A frozen ternary linear made from a *trained float* layer (post-training quantization).

    Same trits, scale and activation quantizer as :class:`BitLinear`, but without its SubLN normalisation:
    the float model was trained without that norm, so inserting it would change the network, not just
    round it. Per-token absmax quantization is scale-invariant, so the activations are rounded exactly as a
    BitLinear would round them after its norm, up to the norm's scale.
    """

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is None:
            return x
        return absmax_dequantize(*absmax_quantize(x, self.act_bits)).to(x.dtype)


def ternary_ptq(model: nn.Module, include: tuple[str, ...] = ("layers.",), act_bits: int | None = None
                ) -> nn.Module:
    """A copy of a float model whose block linears are absmean-ternary :class:`PTQBitLinear` layers.

    ``act_bits=None`` (default) is weight-only ternary PTQ — the same ``γ·t`` as ``methods.get("bitnet")``;
    ``act_bits=8`` also rounds the activations per token to 8 bits, as a trained BitNet does.

    >>> from qcourse.lm import toy_model
    >>> m = toy_model()
    >>> q = ternary_ptq(m)
    >>> type(q.layers[0].mlp.up_proj).__name__, type(m.layers[0].mlp.up_proj).__name__
    ('PTQBitLinear', 'Linear')
    """
    import copy

    check_act_bits(act_bits)
    new = copy.deepcopy(model)
    swap_linears(new, include, lambda lin: PTQBitLinear.from_linear(lin, act_bits=act_bits).freeze())
    if hasattr(model, "tokenizer"):
        new.tokenizer = model.tokenizer
    return new.eval()


def _bitlinears(model: nn.Module) -> list[tuple[str, BitLinear]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]
    if not layers:
        raise ValueError("model has no BitLinear layer (a ternary model is expected)")
    return layers


def trit_stats(model: nn.Module) -> dict[str, Any]:
    """Fractions of −1, 0, +1 over all trits of the model's ``BitLinear`` layers, and their entropy.

    The entropy (bits per weight) is what an ideal entropy coder would need for trits drawn with these
    frequencies; ``log2 3 ≈ 1.585`` for equal thirds.

    >>> import torch
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> s = trit_stats(torch.nn.Sequential(BitLinear(64, 64)))
    >>> round(s["fractions"][0] + s["fractions"][-1] + s["fractions"][1], 6), s["weights"]
    (1.0, 4096)
    """
    counts = torch.zeros(3, dtype=torch.float64)
    per_layer = {}
    for name, m in _bitlinears(model):
        t, _ = m.trits()
        c = torch.stack([(t == v).sum() for v in (-1, 0, 1)]).double()
        counts += c
        per_layer[name] = float(c[1] / c.sum())
    p = counts / counts.sum()
    entropy = float(-(p[p > 0] * p[p > 0].log2()).sum())
    return {"fractions": {-1: float(p[0]), 0: float(p[1]), 1: float(p[2])}, "entropy_bits": entropy,
            "weights": int(counts.sum()), "zero_fraction_per_layer": per_layer}


def plot_trit_histograms(float_model: nn.Module, ternary_model: nn.Module, layer: str) -> Any:
    """Left: one layer's float weights ``w/γ`` with the ternary thresholds ``±½``; right: trit fractions of
    the ternary-from-scratch model and of absmean PTQ of the float model."""
    import matplotlib.pyplot as plt

    w = dict(float_model.named_modules())[layer].weight.detach().float()
    t_ptq, gamma = absmean_ternary(w)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4))
    a.hist((w / gamma).flatten().numpy(), bins=121, range=(-4, 4), color="C0")
    for edge in (-0.5, 0.5):
        a.axvline(edge, color="k", lw=0.8, ls="--")
    a.set(xlabel="w / γ  (γ = mean|W|)", ylabel="weights", title=f"float twin, {layer}")
    t_own, _ = dict(ternary_model.named_modules())[layer].trits()
    width = 0.38
    pairs = (("ternary from scratch", t_own), ("absmean PTQ of the float twin", t_ptq))
    for i, (label, t) in enumerate(pairs):
        frac = [float((t == v).float().mean()) for v in (-1, 0, 1)]
        b.bar([v + (i - 0.5) * width for v in (-1, 0, 1)], frac, width, label=label)
    b.set(xticks=[-1, 0, 1], xlabel="trit", ylabel="fraction of weights", title=f"trits of {layer}")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _unique_params(model: nn.Module) -> list[torch.Tensor]:
    seen, out = set(), []
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            out.append(p)
    return out


def model_bytes(model: nn.Module) -> dict[str, Any]:
    """Bytes a model needs: packed trits and their fp32 scales (``BitLinear``), and every float parameter.

    ``ternary_weights`` counts the weights stored as trits, ``ternary_bits_per_weight`` is their storage
    cost as packed here (2 bits each plus the 32-bit scale of each tensor); tied tensors count once.
    """
    packed = scales = n_ternary = 0
    for _, m in [(n, m) for n, m in model.named_modules() if isinstance(m, BitLinear)]:
        if not m.frozen:
            raise ValueError("freeze() every BitLinear first: only packed trits have a storage size")
        packed += m.packed.numel()
        scales += 4
        n_ternary += m.in_features * m.out_features
    params = _unique_params(model)
    float_bytes = sum(p.numel() * p.element_size() for p in params)
    return {
        "packed_trit_bytes": packed, "scale_bytes": scales, "float_bytes": float_bytes,
        "total_bytes": packed + scales + float_bytes, "ternary_weights": n_ternary,
        "float_weights": sum(p.numel() for p in params),
        "ternary_bits_per_weight": 8 * (packed + scales) / n_ternary if n_ternary else None,
    }


def safetensors_layout(path: str | Path) -> dict[str, Any]:
    """Read a safetensors file's header: file bytes = 8 (header length) + header + every tensor's bytes.

    Returns ``file_bytes``, ``header_bytes``, ``data_bytes`` (sum of the tensors' byte ranges) and per
    tensor ``(dtype, shape, bytes)``.
    """
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    tensors = {k: (v["dtype"], tuple(v["shape"]), v["data_offsets"][1] - v["data_offsets"][0])
               for k, v in header.items() if k != "__metadata__"}
    return {"file_bytes": path.stat().st_size, "header_bytes": 8 + n,
            "data_bytes": sum(b for _, _, b in tensors.values()), "tensors": tensors}


# ---- SmolLM2: one weight tensor straight from the GGUF --------------------------------------------------

_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}


def gguf_tensor_index(path: str | Path) -> dict[str, tuple[int, tuple[int, ...], int]]:
    """``name → (ggml type, shape [out, in], absolute byte offset)`` of every tensor of a GGUF file (v2/v3).

    Reads only the header, skipping the metadata values (SmolLM2's 100,000 vocabulary strings) instead of
    decoding them as ``gguf.GGUFReader`` does, so it takes milliseconds instead of seconds.
    """
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm[:4] != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (magic {bytes(mm[:4])!r})")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, 4)
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3 expected)")
        pos, alignment = 24, 32

        def string() -> str:
            nonlocal pos
            (n,) = struct.unpack_from("<Q", mm, pos)
            pos += 8 + n
            return mm[pos - n:pos].decode("utf-8", errors="replace")

        def skip(vtype: int) -> Any:
            nonlocal pos
            if vtype == 8:
                return string()
            if vtype == 9:
                etype, count = struct.unpack_from("<IQ", mm, pos)
                pos += 12
                if etype in _GGUF_SCALARS:
                    pos += count * struct.calcsize(_GGUF_SCALARS[etype])
                else:
                    for _ in range(count):
                        skip(etype)
                return None
            (v,) = struct.unpack_from(_GGUF_SCALARS[vtype], mm, pos)
            pos += struct.calcsize(_GGUF_SCALARS[vtype])
            return v

        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack_from("<I", mm, pos)
            pos += 4
            value = skip(vtype)
            if key == "general.alignment":
                alignment = int(value)
        infos = []
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = struct.unpack_from("<I", mm, pos)
            dims = struct.unpack_from(f"<{n_dims}Q", mm, pos + 4)
            ttype, offset = struct.unpack_from("<IQ", mm, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, ttype, tuple(int(d) for d in reversed(dims)), offset))
        data_start = (pos + alignment - 1) // alignment * alignment
    return {name: (ttype, shape, data_start + off) for name, ttype, shape, off in infos}


def smollm2_tensor(name: str, path: str | Path | None = None) -> torch.Tensor:
    """One weight matrix of SmolLM2-135M as float32 ``[out, in]`` (GGUF name: ``"blk.2.ffn_down.weight"``).

    Finds the tensor with :func:`gguf_tensor_index` and decodes only its bytes with the ``gguf`` package's
    dequantizer, so it takes a fraction of a second where loading the whole model takes many. Query/key
    rows are in GGUF's order.
    """
    import gguf
    import numpy as np

    from qcourse.lm.gguf import smollm2_path

    path = Path(path if path is not None else smollm2_path())
    index = gguf_tensor_index(path)
    if name not in index:
        raise ValueError(f"name must be a tensor of the GGUF file; got {name!r} (e.g. {list(index)[:4]})")
    ttype, shape, offset = index[name]
    qtype = gguf.GGMLQuantizationType(ttype)
    block, type_size = gguf.constants.GGML_QUANT_SIZES[qtype]
    rows, cols = shape[0], int(np.prod(shape[1:]))
    raw = np.fromfile(path, dtype=np.uint8, count=rows * cols // block * type_size, offset=offset)
    arr = gguf.quants.dequantize(raw.reshape(rows, cols // block * type_size), qtype)
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32).reshape(shape))


def relative_error(w: torch.Tensor, method: str, bits: float, group_size: int | None) -> float:
    """``‖W − Ŵ‖² / ‖W‖²`` of one weight matrix quantized with ``qcourse.methods.get(method)``."""
    from qcourse import methods

    wq = methods.get(method).quantize(w, bits=bits, group_size=group_size).dequantize()
    return float(((w - wq) ** 2).sum() / (w ** 2).sum())


# ---- activation bits: the widget and its static figure --------------------------------------------------

def set_act_bits(model: nn.Module, act_bits: int | None) -> None:
    """Set the activation bit width of every ``BitLinear`` of ``model`` (2–8, or None for float)."""
    check_act_bits(act_bits)
    for _, m in _bitlinears(model):
        m.act_bits = act_bits


def act_bits_perplexity(model: nn.Module, options: Sequence[int | None] = (4, 6, 8, None), tokens: int = 2048
                        ) -> dict[int | None, float]:
    """Perplexity of a ternary model with its activations at each bit width of ``options``.

    The model's own setting is restored afterwards.
    """
    from qcourse.lm.evaluate import perplexity

    before = [m.act_bits for _, m in _bitlinears(model)]
    out = {}
    try:
        for b in options:
            set_act_bits(model, b)
            out[b] = perplexity(model, tokens=tokens)
    finally:
        for (_, m), b in zip(_bitlinears(model), before, strict=True):
            m.act_bits = b
    return out


def _bits_label(b: int | None) -> str:
    return "float" if b is None else f"{b}-bit"


def plot_act_bits(ppl: dict[int | None, float], reference: float | None = None, highlight: int | None = 8
                  ) -> Any:
    """Bar chart of perplexity against activation bits; ``reference`` (e.g. the float twin) as a line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [_bits_label(b) for b in ppl]
    colors = ["C1" if b == highlight else "C0" for b in ppl]
    ax.bar(labels, list(ppl.values()), color=colors)
    for i, v in enumerate(ppl.values()):
        ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=8)
    if reference is not None:
        ax.axhline(reference, color="k", ls="--", lw=0.8, label=f"float twin {reference:.3f}")
        ax.legend(fontsize=8)
    ax.set(xlabel="activation bits of every BitLinear", ylabel="perplexity (per byte)",
           title="ternary weights, activations at b bits")
    fig.tight_layout()
    return fig


def act_bits_explorer(model: nn.Module, options: Sequence[int | None] = (4, 6, 8, None), tokens: int = 2048,
                      reference: float | None = None, value: int | None = 8,
                      precomputed: dict[int | None, float] | None = None) -> Any:
    """A widget: pick the activation bits → perplexity of the ternary model (cached per setting).

    Controls: ``ToggleButtons`` ``activations``; an ``Output`` with :func:`plot_act_bits` of every setting
    computed so far, the chosen one highlighted. ``precomputed`` (bits → perplexity on the same ``tokens``,
    e.g. from :func:`act_bits_perplexity`) seeds the cache. Returns the ``VBox``.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    cache: dict[int | None, float] = dict(precomputed or {})
    pick = widgets.ToggleButtons(options=[(_bits_label(b), b) for b in options], value=value,
                                 description="activations")
    out = widgets.Output()

    def update(_: Any = None) -> None:
        if pick.value not in cache:
            cache.update(act_bits_perplexity(model, (pick.value,), tokens))
        with out:
            out.clear_output(wait=True)
            fig = plot_act_bits({b: cache[b] for b in options if b in cache}, reference, pick.value)
            display(fig)
            plt.close(fig)

    pick.observe(update, names="value")
    update()
    return widgets.VBox([pick, out])
