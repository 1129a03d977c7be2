"""Lesson 06's helpers: binary MLPs on the 8×8 digits, packed XNOR-popcount inference, cost per layer.

* :class:`DigitsMLP` — ``64 → hidden → hidden → 10``, every linear followed by BatchNorm; ``kind`` picks the
  layers: ``"float"`` (``nn.Linear`` + ReLU), ``"binary_connect"`` (binary weights, float ReLU
  activations), ``"bnn"`` (binary weights and inputs: the sign of the previous BatchNorm output) and
  ``"xnor_net"`` (BNN with XNOR-Net's scales). Pixels enter as ``2x − 1 ∈ [−1, 1]`` so that the BNN's first
  sign is "ink ≥ half".
* :func:`train_digits` — Adam with a cosine schedule, minibatches, seeded; returns the model and its
  per-epoch history (train loss, test loss, test accuracy).
* :func:`packed_predict` — the trained BNN's inference from packed words only: each layer's
  pre-activation is :func:`qcourse.xnor.xnor_matmul` (XOR + popcount on 64-bit words) of the packed
  signs; BatchNorm (and XNOR-Net's scales) act on those integers.
* :data:`HOROWITZ_PJ` and :func:`layer_costs` — energy per operation and per memory access at 45 nm
  (Horowitz, ISSCC 2014) and the bits moved / operations / energy of one matrix-vector product.

>>> model, hist = train_digits("bnn", epochs=2, hidden=64, seed=0)
>>> len(hist["test_acc"]), 0.0 <= hist["test_acc"][-1] <= 1.0
(2, True)
>>> (_, _), (x_test, _) = digits.load()
>>> bool((packed_predict(model, x_test) == model.eval()(to_inputs(x_test)).argmax(-1)).all())
True
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcourse import digits, xnor
from qcourse.nn.binary import BinaryLinear, binary_connect, bnn, clip_binary_weights_, xnor_net

__all__ = [
    "KINDS", "DigitsMLP", "to_inputs", "train_digits", "packed_predict", "HOROWITZ_PJ", "SEED_ARTICLE_PJ",
    "layer_costs", "accuracy",
]

#: the MLP variants, in the lesson's order
KINDS = ("float", "binary_connect", "bnn", "xnor_net")
_FACTORIES = {"binary_connect": binary_connect, "bnn": bnn, "xnor_net": xnor_net}

#: Energy per operation / access in pJ, 45 nm, 0.9 V (M. Horowitz, "Computing's energy problem (and what
#: we can do about it)", ISSCC 2014). DRAM is the lower end of the quoted 1.3–2.6 nJ per 64-bit access.
HOROWITZ_PJ = {
    "int8_add": 0.03, "int16_add": 0.05, "int32_add": 0.1, "fp16_add": 0.4, "fp32_add": 0.9,
    "int8_mult": 0.2, "int32_mult": 3.1, "fp16_mult": 1.1, "fp32_mult": 3.7,
    "sram_8kb_64bit": 10.0, "sram_32kb_64bit": 20.0, "sram_1mb_64bit": 100.0, "dram_64bit": 1300.0,
}

#: The seed article's "Energy (pJ)" column as printed, for the lesson to check against :data:`HOROWITZ_PJ`.
SEED_ARTICLE_PJ = {"fp16_fma": 3.7, "int8_mac": 0.9, "int4_mac": 0.3, "ternary_mux": 0.02,
                   "binary_xnor": 0.005}


def to_inputs(x: torch.Tensor) -> torch.Tensor:
    """Pixels in ``[0, 1]`` → ``2x − 1 ∈ [−1, 1]`` (a BNN's first sign then means "ink ≥ half")."""
    return 2.0 * x - 1.0


class DigitsMLP(nn.Module):
    """``64 → hidden → hidden → 10`` with BatchNorm after every linear (see the module docstring).

    >>> DigitsMLP("bnn", hidden=32)(torch.zeros(5, 64)).shape
    torch.Size([5, 10])
    """

    def __init__(self, kind: str = "float", hidden: int = 256, in_features: int = 64, classes: int = 10
                 ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}; got {kind!r}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden <= 0:
            raise ValueError(f"hidden must be a positive int; got {hidden!r}")
        self.kind = kind
        sizes = [in_features, hidden, hidden, classes]
        make = _FACTORIES.get(kind, lambda i, o: nn.Linear(i, o, bias=False))
        self.linears = nn.ModuleList(make(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True))
        self.norms = nn.ModuleList(nn.BatchNorm1d(o) for o in sizes[1:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k, (lin, bn) in enumerate(zip(self.linears, self.norms, strict=True)):
            x = bn(lin(x))
            # binary-input layers take the sign of this output themselves; float inputs get a ReLU
            if k < len(self.linears) - 1 and self.kind in ("float", "binary_connect"):
                x = F.relu(x)
        return x


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of ``x`` (pixels in ``[0, 1]``) that ``model`` (in eval mode) labels ``y``."""
    model.eval()
    with torch.no_grad():
        return float((model(to_inputs(x)).argmax(-1) == y).float().mean())


def train_digits(kind: str, epochs: int = 10, hidden: int = 128, batch_size: int = 64,
                 lr: float | None = None, seed: int = 0, data: Any = None
                 ) -> tuple[DigitsMLP, dict[str, list[float]]]:
    """Train a :class:`DigitsMLP` of ``kind`` on the digits; returns ``(model, history)``.

    ``lr`` (default ``1e-2``) is the same for every kind. Binary kinds clip their latent weights to
    ``[−1, 1]`` after every step. ``history`` has ``train_loss``, ``test_loss`` and ``test_acc`` per epoch.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    (x_tr, y_tr), (x_te, y_te) = data if data is not None else digits.load()
    torch.manual_seed(seed)
    model = DigitsMLP(kind, hidden)
    lr = 1e-2 if lr is None else float(lr)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = math.ceil(len(x_tr) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed)
    hist: dict[str, list[float]] = {"train_loss": [], "test_loss": [], "test_acc": []}
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr), generator=gen)
        total = 0.0
        for i in range(0, len(x_tr), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(model(to_inputs(x_tr[idx])), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            clip_binary_weights_(model)
            total += loss.item() * len(idx)
        model.eval()
        with torch.no_grad():
            logits = model(to_inputs(x_te))
        hist["train_loss"].append(total / len(x_tr))
        hist["test_loss"].append(float(F.cross_entropy(logits, y_te)))
        hist["test_acc"].append(float((logits.argmax(-1) == y_te).float().mean()))
    return model.eval(), hist


@torch.no_grad()
def packed_predict(model: DigitsMLP, x: torch.Tensor, word_bits: int = 64) -> torch.Tensor:
    """Labels of ``x`` (pixels in ``[0, 1]``) computed by ``model`` (kind ``"bnn"`` or ``"xnor_net"``) with
    every matrix product done as XOR + popcount on packed words; BatchNorm (and XNOR-Net's ``α``, ``β``)
    act on the integer results exactly as the float model applies them."""
    if not isinstance(model, DigitsMLP) or model.kind not in ("bnn", "xnor_net"):
        raise ValueError("model must be a DigitsMLP of kind 'bnn' or 'xnor_net' (binary inputs and weights)")
    model.eval()
    h = to_inputs(x)
    for lin, bn in zip(model.linears, model.norms, strict=True):
        lin: BinaryLinear
        words_w = xnor.pack_signs(lin.signs(), word_bits)
        words_x = xnor.pack_signs(xnor.binarize(h), word_bits)
        z = torch.from_numpy(xnor.xnor_matmul(words_w, words_x, lin.in_features)).to(torch.float32)
        if lin.weight_scale == "row":
            z = z * lin.weight.abs().mean(dim=1)
        if lin.input_scale:
            z = z * h.abs().mean(dim=-1, keepdim=True)
        h = bn(z)
    return h.argmax(-1)


def layer_costs(out_features: int, in_features: int, scheme: str, memory: str = "dram_64bit"
                ) -> dict[str, float]:
    """Bits of weight moved, operations, and energy (pJ, Horowitz 45 nm) of one matrix-vector product.

    ``scheme``: ``"fp32"`` (fp32 multiply + fp32 add per weight), ``"fp16"``, ``"int8"`` (8-bit multiply,
    32-bit accumulate) or ``"binary"`` (XNOR + popcount; Horowitz has no entry for either, so the
    popcount of a 64-bit word is charged as one 8-bit add per bit, ``0.03 pJ`` — a deliberately pessimistic
    stand-in, about ten times a 1-bit full adder). Weight bits are fetched in 64-bit accesses from
    ``memory`` (a :data:`HOROWITZ_PJ` key).

    >>> c = layer_costs(4096, 4096, "fp32")
    >>> c["weight_bits"] == 32 * 4096 ** 2, round(c["compute_pj"] / 4096 ** 2, 2)
    (True, 4.6)
    >>> round(layer_costs(4096, 4096, "fp32")["memory_pj"] / layer_costs(4096, 4096, "binary")["memory_pj"])
    32
    """
    if memory not in HOROWITZ_PJ or "bit" not in memory:
        raise ValueError(f"memory must be one of {[k for k in HOROWITZ_PJ if '64bit' in k]}; got {memory!r}")
    n = out_features * in_features
    pj = HOROWITZ_PJ
    per_weight = {
        "fp32": (32, pj["fp32_mult"] + pj["fp32_add"], 2),
        "fp16": (16, pj["fp16_mult"] + pj["fp16_add"], 2),
        "int8": (8, pj["int8_mult"] + pj["int32_add"], 2),
        "binary": (1, pj["int8_add"], 2),     # XNOR + one popcount bit
    }
    if scheme not in per_weight:
        raise ValueError(f"scheme must be one of {sorted(per_weight)}; got {scheme!r}")
    bits, e_op, ops = per_weight[scheme]
    weight_bits = bits * n
    memory_pj = math.ceil(weight_bits / 64) * pj[memory]
    compute_pj = n * e_op
    return {"weight_bits": float(weight_bits), "ops": float(ops * n), "compute_pj": compute_pj,
            "memory_pj": memory_pj, "total_pj": compute_pj + memory_pj}



# --- language models -------------------------------------------------------------------------------------

#: the three twins of the short live run: float blocks, BitNet b1.58 ternary blocks, BitNet v1 binary blocks
LM_KINDS = ("float", "ternary", "binary")


def train_lm_short(kind: str, steps: int = 40, batch_size: int = 4, seq_len: int = 128,
                   lr: float | None = None, seed: int = 0, eval_tokens: int = 4096, config: Any = None
                   ) -> dict[str, Any]:
    """Train the embedded architecture from scratch for a few ``steps`` with ``kind`` blocks; same seed, same
    initial latent weights, same batches for every kind, so the runs differ only in the block linears.

    ``kind``: ``"float"`` (``nn.Linear``), ``"ternary"`` (:class:`~qcourse.nn.bitlinear.BitLinear`, BitNet
    b1.58) or ``"binary"`` (:func:`~qcourse.nn.binary.bitnet_v1`, BitNet's W1A8). The embedding and the head
    stay in float, as in BitNet. Recipe: AdamW (0.9, 0.95), weight decay 0.1 on matrices, warm-up for a
    tenth of the steps then cosine (:func:`qcourse.lm.train.lr_at`), gradient clipping at 1; ``lr`` defaults
    to 3e-3 for float and 6e-3 for the low-bit twins (the shipped models' peak rates).

    Returns ``{"kind", "steps", "tokens", "train_loss" (per step), "val_ppl", "seconds", "model"}``, the
    perplexity on the first ``eval_tokens`` validation bytes.
    """
    from qcourse.lm import corpus
    from qcourse.lm.evaluate import perplexity
    from qcourse.lm.model import Llama
    from qcourse.lm.tokenizer import ByteTokenizer
    from qcourse.lm.train import MODEL_CONFIG, TrainConfig, lr_at
    from qcourse.nn.binary import to_binary_linear
    from qcourse.nn.bitlinear import to_bitlinear

    if kind not in LM_KINDS:
        raise ValueError(f"kind must be one of {list(LM_KINDS)}; got {kind!r}")
    config = MODEL_CONFIG if config is None else config
    lr = (3e-3 if kind == "float" else 6e-3) if lr is None else float(lr)
    sched = TrainConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                        warmup_steps=max(1, steps // 10), seed=seed)
    tok = ByteTokenizer()
    data = corpus.encode_split(tok, "train")
    torch.manual_seed(seed)
    model = Llama(config)
    if kind == "ternary":
        to_bitlinear(model)
    elif kind == "binary":
        to_binary_linear(model, "bitnet_v1")
    model.tokenizer = tok
    matrices = [p for p in model.parameters() if p.ndim >= 2]
    others = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": matrices, "weight_decay": 0.1}, {"params": others, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed + 1)
    offsets = torch.arange(seq_len + 1)
    losses = []
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=g)
        w = data[starts[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, sched)
        logits = model(w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - t0
    model.eval()
    ppl = perplexity(model, tokens=eval_tokens)
    return {"kind": kind, "steps": steps, "tokens": steps * batch_size * seq_len, "train_loss": losses,
            "val_ppl": ppl, "seconds": seconds, "model": model}


# --- post-training binarization of a trained MLP, its widget and figures --------------------------------

#: widget schemes: label -> (bases, centre)
PTQ_SCHEMES = {"sign · mean|W| (XNOR-Net)": (1, False), "centred sign (BitNet v1)": (1, True),
               "residual, 2 bases": (2, False)}
#: widget scales: label -> (granularity, group_size)
PTQ_SCALES = {"tensor": ("tensor", None), "row": ("row", None), "group of 16": ("row", 16)}


def ptq_digits(model: DigitsMLP, scheme: str, scale: str, data: Any = None) -> dict[str, float]:
    """Binarize every linear of a trained float :class:`DigitsMLP` after training (``methods.get("binary")``)
    and measure ``{"rel_mse"`` (weight error over weight power, all layers), ``"acc"`` (test accuracy),
    ``"bits_per_weight"}``; BatchNorm stays in float.

    >>> m, _ = train_digits("float", epochs=1, hidden=32)
    >>> r = ptq_digits(m, "residual, 2 bases", "row")
    >>> 0 < r["rel_mse"] < 0.3, r["bits_per_weight"] > 2
    (True, True)
    """
    import copy

    from qcourse import methods

    if scheme not in PTQ_SCHEMES:
        raise ValueError(f"scheme must be one of {list(PTQ_SCHEMES)}; got {scheme!r}")
    if scale not in PTQ_SCALES:
        raise ValueError(f"scale must be one of {list(PTQ_SCALES)}; got {scale!r}")
    if not isinstance(model, DigitsMLP) or model.kind != "float":
        raise ValueError("model must be a DigitsMLP of kind 'float' (trained float weights to binarize)")
    bases, center = PTQ_SCHEMES[scheme]
    granularity, group_size = PTQ_SCALES[scale]
    q = copy.deepcopy(model).eval()
    err = power = bits = n = 0.0
    for lin in q.linears:
        w = lin.weight.detach()
        qw = methods.get("binary").quantize(w, bits=bases, group_size=group_size, granularity=granularity,
                                            center=center)
        w_hat = qw.dequantize()
        err += float(((w - w_hat) ** 2).sum())
        power += float((w ** 2).sum())
        bits += qw.storage_bits
        n += w.numel()
        with torch.no_grad():
            lin.weight.copy_(w_hat)
    _, (x_te, y_te) = data if data is not None else digits.load()
    return {"rel_mse": err / power, "acc": accuracy(q, x_te, y_te), "bits_per_weight": bits / n}


def plot_ptq_grid(model: DigitsMLP, data: Any = None, highlight: tuple[str, str] | None = None) -> Any:
    """Figure: relative weight error and test accuracy of every scheme × scale (the widget's static view)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    width = 0.8 / len(PTQ_SCALES)
    for j, scale in enumerate(PTQ_SCALES):
        rs = [ptq_digits(model, s, scale, data) for s in PTQ_SCHEMES]
        xs = [i + (j - 1) * width for i in range(len(PTQ_SCHEMES))]
        axes[0].bar(xs, [r["rel_mse"] for r in rs], width, label=f"scale per {scale}")
        axes[1].bar(xs, [r["acc"] for r in rs], width, label=f"scale per {scale}")
    for ax, title in zip(axes, ("relative weight MSE", "test accuracy after binarization"), strict=True):
        ax.set_xticks(range(len(PTQ_SCHEMES)), [s.split(" (")[0] for s in PTQ_SCHEMES], fontsize=8)
        ax.set_title(title)
    axes[1].legend(fontsize=8)
    if highlight is not None:
        fig.suptitle(f"selected: {highlight[0]}, scale per {highlight[1]}", fontsize=9)
    fig.tight_layout()
    return fig


def binarization_explorer(model: DigitsMLP, data: Any = None) -> Any:
    """A widget: pick a binarization scheme and a scale granularity for the trained float MLP; read the
    weight error, bits per weight and test accuracy. Controls: ``Dropdown(description="scheme")``,
    ``Dropdown(description="scale")``; an ``HTML`` read-out. Returns the ``VBox``."""
    import ipywidgets as widgets

    scheme_dd = widgets.Dropdown(options=list(PTQ_SCHEMES), value=next(iter(PTQ_SCHEMES)),
                                 description="scheme")
    scale_dd = widgets.Dropdown(options=list(PTQ_SCALES), value="row", description="scale")
    readout = widgets.HTML()

    def update(_: Any = None) -> None:
        r = ptq_digits(model, scheme_dd.value, scale_dd.value, data)
        readout.value = (f"relative weight MSE <b>{r['rel_mse']:.3f}</b> · {r['bits_per_weight']:.3f} "
                         f"bits per weight · test accuracy <b>{r['acc']:.3f}</b>")

    scheme_dd.observe(update, names="value")
    scale_dd.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([scheme_dd, scale_dd]), readout])


def plot_histories(histories: dict[str, dict[str, list[float]]]) -> Any:
    """Figure: test accuracy and train/test loss per epoch for each trained kind."""
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for kind, h in histories.items():
        epochs = range(1, len(h["test_acc"]) + 1)
        (line,) = a1.plot(epochs, h["test_acc"], marker="o", ms=3, label=kind)
        a2.plot(epochs, h["train_loss"], color=line.get_color(), label=f"{kind} (train)")
        a2.plot(epochs, h["test_loss"], color=line.get_color(), ls="--")
    a1.set(xlabel="epoch", ylabel="test accuracy", title="digits: accuracy")
    a2.set(xlabel="epoch", ylabel="cross-entropy", title="loss (solid: train, dashed: test)")
    a1.legend(fontsize=8)
    fig.tight_layout()
    return fig
