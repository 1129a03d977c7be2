"""Outlier diagnostics: how heavy-tailed are a model's weights and activations?

Sub-4-bit quantization fails on *outliers*: a few weights far out in the tails stretch a group's range,
and a few activation channels hundreds of times larger than the rest make every weight they multiply
matter more. This module measures both, on any model built from ``nn.Linear`` (or ``QuantLinear``) layers.

Weight statistics (:func:`weight_stats`), per linear layer, over all its weights ``w``:

* ``kurtosis`` -- Pearson's kurtosis ``E[(w - μ)⁴] / σ⁴``: **3 for a Gaussian** (``excess_kurtosis`` is that
  minus 3, 0 for a Gaussian); large values mean heavy tails;
* ``max_over_std`` -- ``max|w| / σ``: about 4.4 for a Gaussian matrix of 10⁵ entries, 4.9 for 10⁶;
* ``frac_beyond_6sigma`` -- fraction of weights with ``|w - μ| > 6σ`` (2·10⁻⁹ for a Gaussian);
* ``in_rms_spread`` / ``out_rms_spread`` -- per-channel RMS (columns = input channels, rows = output
  channels), max over median: 1.05–1.3 for a Gaussian matrix (the more entries per channel, the closer
  to 1); a large input spread marks the columns that outlier activation channels feed.

Activation statistics (:func:`activation_stats`), collected with forward hooks while the model reads some
tokens:

* for every linear layer's **input**: the per-channel absolute maximum over all tokens, and its
  ``outlier_ratio`` = max over channels / median over channels;
* for the **residual stream** (each block's output): the same per-channel ratio, plus ``massive_ratio`` =
  the largest ``|x|`` over the median ``|x|`` of all entries (the "massive activations" of Sun et al. 2024,
  arXiv 2402.17762).

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)  # doctest: +ELLIPSIS
<torch._C.Generator object at ...>
>>> lin = nn.Linear(256, 64, bias=False)
>>> with torch.no_grad():
...     _ = lin.weight.normal_()
>>> s = weight_stats(nn.Sequential(lin))[0]
>>> round(s["kurtosis"], 1), s["frac_beyond_6sigma"]   # Gaussian: kurtosis 3, nothing beyond 6σ
(3.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from qcourse.nn.calibration import linear_layers

__all__ = [
    "activation_stats",
    "kurtosis",
    "summarize",
    "weight_stats",
    "weight_tensor_stats",
]


#: layer names a statistic leaves out unless ``include_head``: a tied head *is* the embedding, and the
#: quantization lessons keep it in full precision
_HEAD = ("lm_head", "*.lm_head")


def _layers(model: nn.Module, include_head: bool) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every ``nn.Linear`` / ``QuantLinear`` of ``model``, in definition order."""
    return list(linear_layers(model, exclude=None if include_head else _HEAD, quantized=True).items())


def kurtosis(x: torch.Tensor, excess: bool = False) -> float:
    """Pearson kurtosis ``E[(x - μ)⁴] / σ⁴`` of all entries (3 for a Gaussian); ``excess=True`` subtracts 3.

    Computed in float64 with the population (biased) moments.

    >>> kurtosis(torch.tensor([-1.0, 1.0]))     # two-point distribution: the minimum possible, 1
    1.0
    >>> kurtosis(torch.tensor([-1.0, 1.0]), excess=True)
    -2.0
    """
    if not isinstance(x, torch.Tensor) or x.is_complex():
        raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
    v = x.detach().double().flatten()
    if v.numel() < 2:
        raise ValueError(f"x needs at least 2 entries; got {v.numel()}")
    c = v - v.mean()
    m2 = (c * c).mean()
    if m2 == 0:
        raise ValueError("x is constant: kurtosis is undefined")
    k = float((c**4).mean() / (m2 * m2))
    return k - 3.0 if excess else k


def weight_tensor_stats(w: torch.Tensor) -> dict[str, float]:
    """Heavy-tail statistics of one weight matrix ``[out, in]`` (see the module docstring).

    >>> w = torch.ones(4, 8); w[0, 0] = 9.0
    >>> s = weight_tensor_stats(w)
    >>> s["in_rms_spread"] > 4, round(s["out_rms_spread"], 2) > 1
    (True, True)
    """
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or not w.is_floating_point():
        raise TypeError(f"w must be a 2-D floating torch.Tensor; got {getattr(w, 'shape', type(w).__name__)}")
    # float32 element-wise work with float64 accumulation: 135 M weights in a few seconds on a laptop,
    # and moments agree with a float64 computation to ~1e-6 relative
    v = w.detach().float()
    lo, hi = torch.aminmax(v)
    if not (torch.isfinite(lo) and torch.isfinite(hi)):
        raise ValueError("w contains NaN or Inf")
    n = v.numel()
    c = v - v.sum(dtype=torch.float64).div(n).float()
    c2 = c * c
    m2 = float(c2.sum(dtype=torch.float64)) / n
    if m2 == 0:
        raise ValueError("w is constant: its statistics are undefined")
    m4 = float((c2 * c2).sum(dtype=torch.float64)) / n
    sd = math.sqrt(m2)
    k = m4 / (m2 * m2)
    vv = v * v
    col_rms = vv.mean(0).sqrt()  # one value per input channel
    row_rms = vv.mean(1).sqrt()  # one value per output channel
    return {
        "kurtosis": k,
        "excess_kurtosis": k - 3.0,
        "max_over_std": max(-float(lo), float(hi)) / sd,
        "frac_beyond_6sigma": int(torch.count_nonzero(c2 > 36.0 * m2)) / n,
        "in_rms_spread": float(col_rms.max() / col_rms.median()),
        "out_rms_spread": float(row_rms.max() / row_rms.median()),
        "std": sd,
    }


def weight_stats(model: nn.Module, include_head: bool = False) -> list[dict[str, Any]]:
    """One dict per linear layer: ``name``, ``shape`` and :func:`weight_tensor_stats`.

    ``QuantLinear`` layers are measured on their decoded weight.
    """
    rows = []
    for name, m in _layers(model, include_head):
        w = m.weight
        rows.append({"name": name, "shape": tuple(w.shape), **weight_tensor_stats(w)})
    return rows


def _check_tokens(tokens: Any, model: nn.Module) -> torch.Tensor:
    if (
        not isinstance(tokens, torch.Tensor)
        or tokens.ndim != 2
        or tokens.dtype not in (torch.int64, torch.int32)
    ):
        raise TypeError(
            f"tokens must be a 2-D int64/int32 tensor [batch, seq]; got "
            f"{getattr(tokens, 'dtype', type(tokens).__name__)} {tuple(getattr(tokens, 'shape', ()))}"
        )
    if tokens.numel() == 0:
        raise ValueError("tokens is empty")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(
            f"token ids must lie in [0, {vocab}); got [{int(tokens.min())}, {int(tokens.max())}]"
        )
    return tokens.long()


class _ChannelMax:
    """Running per-channel max |x| over every position of every batch, and per-batch max and median |x|."""

    def __init__(self) -> None:
        self.absmax: torch.Tensor | None = None
        self.batch_max: list[float] = []
        self.batch_median: list[float] = []

    def update(self, x: torch.Tensor, with_median: bool) -> None:
        a = x.detach().abs().float().reshape(-1, x.shape[-1])
        cm = a.amax(0)
        self.absmax = cm if self.absmax is None else torch.maximum(self.absmax, cm)
        if with_median:
            self.batch_max.append(float(cm.max()))
            self.batch_median.append(float(a.median()))


def _ratio(absmax: torch.Tensor) -> dict[str, Any]:
    med = float(absmax.median())
    top = torch.argsort(absmax, descending=True)[:3].tolist()
    return {
        "absmax": float(absmax.max()),
        "median_channel_absmax": med,
        "outlier_ratio": float(absmax.max()) / med if med > 0 else math.inf,
        "top_channels": top,
        "channels_over_10x": int((absmax > 10 * med).sum()),
    }


def activation_stats(
    model: nn.Module,
    tokens: torch.Tensor,
    batch_size: int = 4,
    blocks: Sequence[nn.Module] | None = None,
    include_head: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Per-channel activation magnitudes, collected with forward hooks while ``model`` reads ``tokens``.

    Parameters
    ----------
    model : nn.Module
        Called as ``model(tokens[i : i + batch_size])``.
    tokens : LongTensor ``[n, seq]``
        Input token ids (e.g. ``qcourse.lm.corpus.calibration_tokens``).
    batch_size : int
        Sequences per forward pass.
    blocks : sequence of modules, optional
        Modules whose *output* is the residual stream; default ``model.layers`` when it exists.
    include_head : bool
        Also hook ``lm_head``'s input.

    Returns
    -------
    dict
        ``"inputs"``: one dict per linear layer (``name``, ``absmax``, ``median_channel_absmax``,
        ``outlier_ratio``, ``top_channels``, ``channels_over_10x`` and ``channel_absmax``, the per-channel
        tensor for plots); ``"residual"``: the same per block (``name`` ``"layers.{i}"``), plus
        ``massive_ratio`` (largest ``|x|`` over median ``|x|`` of all entries; the median is taken per batch
        and averaged over batches).
    """
    tokens = _check_tokens(tokens, model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
    if blocks is None:
        blocks = list(getattr(model, "layers", []))
    lin = _layers(model, include_head)
    acc_in = {n: _ChannelMax() for n, _ in lin}
    acc_res = [_ChannelMax() for _ in blocks]
    handles = []
    try:
        for n, m in lin:
            handles.append(
                m.register_forward_pre_hook(lambda _m, args, n=n: acc_in[n].update(args[0], False))
            )
        for i, b in enumerate(blocks):
            handles.append(b.register_forward_hook(lambda _m, _a, out, i=i: acc_res[i].update(out, True)))
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                dev = next(model.parameters()).device
                for s in range(0, len(tokens), batch_size):
                    model(tokens[s : s + batch_size].to(dev))
        finally:
            model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    inputs = [{"name": n, **_ratio(a.absmax), "channel_absmax": a.absmax.cpu()} for n, a in acc_in.items()]
    residual = []
    for i, a in enumerate(acc_res):
        med = sum(a.batch_median) / len(a.batch_median)
        residual.append(
            {
                "name": f"layers.{i}",
                **_ratio(a.absmax),
                "massive_ratio": max(a.batch_max) / med if med > 0 else math.inf,
                "channel_absmax": a.absmax.cpu(),
            }
        )
    return {"inputs": inputs, "residual": residual}


def summarize(model: nn.Module, tokens: torch.Tensor | None = None, batch_size: int = 4) -> dict[str, float]:
    """The headline numbers of one model: worst and median over its linear layers (and activations).

    Keys: ``max_kurtosis``, ``median_kurtosis`` (Pearson, Gaussian 3), ``max_max_over_std``,
    ``max_frac_beyond_6sigma``, ``max_in_rms_spread``; with ``tokens`` also ``max_input_outlier_ratio``,
    ``median_input_outlier_ratio``, ``max_residual_outlier_ratio`` and ``max_residual_massive_ratio``.

    >>> import torch
    >>> from qcourse.lm.model import Llama, LlamaConfig
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> m = Llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16))
    >>> s = summarize(m, torch.randint(0, 64, (2, 16)))
    >>> 2.5 < s["median_kurtosis"] < 3.5      # a freshly initialised model is Gaussian
    True
    """
    ws = weight_stats(model)
    if not ws:
        raise ValueError("model has no nn.Linear / QuantLinear layers")

    def med(xs: Iterable[float]) -> float:
        return float(torch.tensor(list(xs), dtype=torch.float64).median())

    out = {
        "max_kurtosis": max(r["kurtosis"] for r in ws),
        "median_kurtosis": med(r["kurtosis"] for r in ws),
        "max_max_over_std": max(r["max_over_std"] for r in ws),
        "max_frac_beyond_6sigma": max(r["frac_beyond_6sigma"] for r in ws),
        "max_in_rms_spread": max(r["in_rms_spread"] for r in ws),
    }
    if tokens is not None:
        acts = activation_stats(model, tokens, batch_size=batch_size)
        out["max_input_outlier_ratio"] = max(r["outlier_ratio"] for r in acts["inputs"])
        out["median_input_outlier_ratio"] = med(r["outlier_ratio"] for r in acts["inputs"])
        if acts["residual"]:
            out["max_residual_outlier_ratio"] = max(r["outlier_ratio"] for r in acts["residual"])
            out["max_residual_massive_ratio"] = max(r["massive_ratio"] for r in acts["residual"])
    return out
