"""``quantize_model``: replace the selected ``nn.Linear`` layers of any model by :class:`QuantLinear`.

Data-free methods (RTN, HQQ) quantize each layer from its weight alone. Calibration-aware methods (GPTQ,
AQLM, QuIP#) also need ``H = E[x xᵀ]`` of each layer's inputs on calibration data. On the course's
:class:`~qcourse.lm.model.Llama` models this is done *sequentially*, block by block, like the GPTQ reference
(``llama.py``): the hidden states entering block ``i`` are cached, ``H`` of block ``i``'s linears is collected
from them, block ``i`` is quantized, and the cached states are pushed through the *quantized* block to
become the inputs of block ``i + 1`` — so each block is calibrated on what it will really see, and the
model is never run end to end more than once. On any other model, ``H`` is collected in one full forward
pass of the float model.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
>>> qmodel, report = quantize_model(model, "rtn", bits=4, group_size=32, progress=False)
>>> qmodel[0]
QuantLinear(in_features=64, out_features=64, bias=True, weight=..., bits_per_weight=...)
>>> isinstance(model[0], nn.Linear)  # the original is untouched (inplace=False)
True
>>> [row.name for row in report.layers]
['0', '2']
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from qcourse.methods.base import Method, check_group_size
from qcourse.nn.calibration import (
    Patterns,
    _Accumulator,
    _batches,
    _check_batch_size,
    _device,
    check_calibration,
    check_gram_dtype,
    finish,
    hessian_hooks,
    linear_layers,
)
from qcourse.nn.linear import QuantLinear, resolve_method

__all__ = ["LayerReport", "QuantReport", "quantize_model"]


@dataclass
class LayerReport:
    """What quantizing one layer did.

    ``rel_error`` is ``‖W − Ŵ‖²_F / ‖W‖²_F``; ``proxy_loss`` is the relative output error on the calibration
    inputs, ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` with ``ΔW = W − Ŵ`` (``None`` without calibration data).
    """

    name: str
    shape: tuple[int, int]
    bits_per_weight: float
    storage_bits: int
    rel_error: float
    proxy_loss: float | None
    seconds: float
    note: str = ""
    #: ``‖W‖²_F``, so totals can weight each layer's error by its size
    weight_sq: float = 0.0

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]


@dataclass
class QuantReport:
    """Per-layer results of :func:`quantize_model` and their totals.

    ``seconds`` is the wall time of the whole call (calibration passes included); ``calibration_seconds``
    the part spent running the model to collect ``H``; each layer's ``seconds`` the method's own time.
    """

    method: str
    bits: float
    group_size: int | None
    layers: list[LayerReport]
    seconds: float = 0.0
    calibration_seconds: float = 0.0
    sequential: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        """Number of quantized weights."""
        return sum(r.numel for r in self.layers)

    @property
    def storage_bits(self) -> int:
        return sum(r.storage_bits for r in self.layers)

    @property
    def bits_per_weight(self) -> float:
        """Average bits per quantized weight, weighted by layer size (total stored bits / total weights)."""
        return self.storage_bits / self.numel

    @property
    def rel_error(self) -> float:
        """``Σ ‖W − Ŵ‖² / Σ ‖W‖²`` over all quantized layers."""
        num = sum(r.rel_error * r.weight_sq for r in self.layers)
        den = sum(r.weight_sq for r in self.layers)
        return num / den if den > 0 else 0.0

    def __getitem__(self, name: str) -> LayerReport:
        for r in self.layers:
            if r.name == name:
                return r
        raise KeyError(f"no quantized layer named {name!r}; layers are {[r.name for r in self.layers]}")

    def __len__(self) -> int:
        return len(self.layers)

    def to_rows(self) -> list[dict[str, Any]]:
        """One plain dict per layer (for tables and ``pandas.DataFrame``)."""
        rows = []
        for r in self.layers:
            d = asdict(r)
            d["shape"] = list(r.shape)
            rows.append(d)
        return rows

    def summary(self) -> dict[str, Any]:
        """The totals as a plain dict."""
        return {
            "method": self.method,
            "bits": self.bits,
            "group_size": self.group_size,
            "layers": len(self.layers),
            "weights": self.numel,
            "bits_per_weight": self.bits_per_weight,
            "rel_error": self.rel_error,
            "seconds": self.seconds,
            "calibration_seconds": self.calibration_seconds,
            "sequential": self.sequential,
        }

    def __str__(self) -> str:
        group = "per-channel" if self.group_size is None else f"group {self.group_size}"
        head = (
            f"{self.method} · {self.bits:g} bits · {group} · {len(self.layers)} layers, "
            f"{self.numel:,} weights · "
            f"{self.bits_per_weight:.3f} bits/weight · rel. error {self.rel_error:.3g} · {self.seconds:.2f} s"
        )
        width = max([5] + [len(r.name) for r in self.layers])
        lines = [
            head,
            f"{'layer':<{width}}  {'shape':>11}  {'bits/w':>6}  {'rel.err':>8}  {'proxy':>8}  {'s':>6}",
        ]
        for r in self.layers:
            proxy = "-" if r.proxy_loss is None else f"{r.proxy_loss:.2e}"
            shape = f"{r.shape[0]}×{r.shape[1]}"
            line = (
                f"{r.name:<{width}}  {shape:>11}  {r.bits_per_weight:6.3f}  {r.rel_error:8.2e}  {proxy:>8}  "
                f"{r.seconds:6.2f}"
            )
            lines.append(line + (f"  ({r.note})" if r.note else ""))
        return "\n".join(lines)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython shows the table, not the dataclass repr
        p.text(str(self))


def _is_llama(model: nn.Module) -> bool:
    from qcourse.lm.model import Llama

    return isinstance(model, Llama)


def _tied_names(model: nn.Module, selected: dict[str, nn.Linear]) -> dict[str, list[str]]:
    """For each selected layer whose weight Parameter is shared, the other names that parameter has."""
    owners: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(pname)
    out = {}
    for name, m in selected.items():
        others = [o for o in owners.get(id(m.weight), []) if o != f"{name}.weight"]
        if others:
            out[name] = others
    return out


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is a child (a module registered under several names: in every place)."""
    for parent in model.modules():
        for cname, child in list(parent.named_children()):
            if child is old:
                setattr(parent, cname, new)


def _errors(
    w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor | None
) -> tuple[float, float | None, float]:
    """``(‖ΔW‖²/‖W‖², tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) or None, ‖W‖²)``; sums of squares accumulated in float64."""
    w = w.detach().float()
    d = w - w_hat.detach().to(device=w.device, dtype=torch.float32)
    wsq = float(torch.linalg.vector_norm(w, dtype=torch.float64)) ** 2
    dsq = float(torch.linalg.vector_norm(d, dtype=torch.float64)) ** 2
    rel = dsq / wsq if wsq > 0 else (0.0 if dsq == 0 else math.inf)
    proxy = None
    if hessian is not None:
        h = hessian.to(device=w.device, dtype=torch.float64)
        w64, d64 = w.double(), d.double()
        den = float(((w64 @ h) * w64).sum())
        num = float(((d64 @ h) * d64).sum())
        proxy = num / den if den > 0 else math.nan
    return rel, proxy, wsq


def quantize_model(
    model: nn.Module,
    method: str | Method,
    bits: float,
    group_size: int | None = 64,
    calib: torch.Tensor | None = None,
    include: Patterns = None,
    exclude: Patterns = ("lm_head",),
    inplace: bool = False,
    seed: int = 0,
    progress: bool = True,
    sequential: bool | None = None,
    true_sequential: bool = False,
    batch_size: int = 8,
    cache: bool = True,
    gram_dtype: torch.dtype = torch.float64,
    **method_options: Any,
) -> tuple[nn.Module, QuantReport]:
    """Quantize every selected ``nn.Linear`` of ``model`` with ``method``; return ``(qmodel, report)``.

    Parameters
    ----------
    model
        Any PyTorch module; its ``nn.Linear`` layers are candidates (convolutions, embeddings and norms are
        left alone).
    method
        A registered name (``qcourse.methods.available()``) or a :class:`~qcourse.methods.base.Method`.
    bits, group_size
        Passed to the method for every layer; ``group_size=None`` is per-channel (one group per output row).
        ``group_size`` must divide the ``in_features`` of every selected layer (checked before any work).
    calib
        Calibration data (see :func:`~qcourse.nn.calibration.check_calibration`): token ids
        ``[n_sequences, seq_len]`` for language models, a float input batch for other models. Required by
        methods with ``needs_hessian``; when given to a data-free method it is used only to report each
        layer's proxy loss.
    include, exclude
        Name globs selecting layers (see :func:`~qcourse.nn.calibration.linear_layers`). The default excludes
        ``lm_head``, as the course's tables do (the head of SmolLM2 is also tied to its embedding). If a
        selected layer's weight is tied to another parameter, the layer is quantized and the other user
        (e.g. ``embed_tokens``) keeps the float weight; the report notes it.
    inplace
        Modify ``model`` itself instead of a deep copy (saves memory on large models).
    seed
        Passed to every layer's ``quantize`` (same seed for every layer).
    progress
        Show a progress bar over layers.
    sequential
        ``None`` (default): block-by-block calibration on :class:`~qcourse.lm.model.Llama` models, one full
        pass on others. ``True`` forces sequential (Llama models only), ``False`` collects every ``H`` in one
        pass of the float model.
    true_sequential
        Within each block, also quantize in the order the layers compute — ``q/k/v_proj``, then ``o_proj``,
        then ``gate/up_proj``, then ``down_proj`` — each calibrated on inputs produced by the already
        quantized layers before it (the GPTQ reference's ``--true-sequential``; its published LLaMA results
        use it). Costs up to four calibration passes per block instead of one. Sequential mode only.
    batch_size
        Calibration sequences per forward pass.
    cache
        Passed to :class:`QuantLinear` (``True`` keeps a decoded float copy of each weight for speed).
    gram_dtype
        Precision of each calibration batch's ``xᵀx``: ``torch.float64`` (default) or ``torch.float32``
        (about 3× faster on CPU, ~1e-6 relative difference; see :func:`~qcourse.nn.hessian_hooks`).
    **method_options
        Extra keyword arguments for the method (e.g. ``act_order=True`` for GPTQ).

    Returns
    -------
    (nn.Module, QuantReport)
        The quantized model (``model`` itself if ``inplace``) and the per-layer report.

    Examples
    --------
    >>> import torch
    >>> from qcourse.lm.model import Llama, LlamaConfig
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> lm = Llama(LlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16))
    >>> qlm, report = quantize_model(lm, "rtn", bits=4, group_size=32, progress=False)
    >>> len(report), round(report.bits_per_weight, 3) > 4, type(qlm.lm_head).__name__
    (14, True, 'Linear')
    >>> calib = torch.randint(0, 64, (4, 16))
    >>> qlm, report = quantize_model(lm, "rtn", bits=4, group_size=32, calib=calib, progress=False)
    >>> report.sequential, report["layers.1.mlp.down_proj"].proxy_loss < 0.05
    (True, True)
    >>> quantize_model(lm, "rtn", bits=4, group_size=48, progress=False)
    Traceback (most recent call last):
    ...
    ValueError: layer 'layers.0.self_attn.q_proj' (in_features=32): group_size=48 does not divide ...
    """
    start = time.perf_counter()
    m = resolve_method(method)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if bits not in m.supported_bits:
        raise ValueError(f"bits must be one of {list(m.supported_bits)} for method {m.name!r}; got {bits!r}")
    for argname, flag in (("inplace", inplace), ("progress", progress), ("cache", cache)):
        if not isinstance(flag, bool):
            raise TypeError(f"{argname} must be True or False; got {flag!r}")
    if sequential is not None and not isinstance(sequential, bool):
        raise TypeError(f"sequential must be None, True or False; got {sequential!r}")
    _check_batch_size(batch_size)
    check_gram_dtype(gram_dtype)
    selected = linear_layers(model, include, exclude)
    for name, lin in selected.items():
        try:
            check_group_size(group_size, lin.in_features)
        except ValueError as e:
            raise ValueError(f"layer {name!r} (in_features={lin.in_features}): {e}") from None
    if m.needs_hessian and calib is None:
        raise ValueError(
            f"method {m.name!r} needs calibration data: pass calib= token ids [n_sequences, seq_len] "
            "(e.g. qcourse.lm.corpus.calibration_tokens(...)) or an input batch for non-language models"
        )
    if calib is not None:
        calib = check_calibration(model, calib)
    is_llama = _is_llama(model)
    if sequential and not is_llama:
        raise ValueError(
            "sequential=True needs a qcourse Llama model (blocks in model.layers); "
            f"got {type(model).__name__}. "
            "Use sequential=None or False for a single calibration pass"
        )
    use_sequential = calib is not None and is_llama and sequential is not False
    if not isinstance(true_sequential, bool):
        raise TypeError(f"true_sequential must be True or False; got {true_sequential!r}")
    if true_sequential and not use_sequential:
        raise ValueError(
            "true_sequential=True needs sequential calibration: a qcourse Llama model, calib data, "
            "and sequential=None or True"
        )

    names = list(selected)
    tied = _tied_names(model, selected)
    if not inplace:
        # share the tokenizer (and nothing else) with the original: it is immutable and may not deep-copy
        tok = getattr(model, "tokenizer", None)
        memo = {id(tok): tok} if tok is not None else {}
        model = copy.deepcopy(model, memo)
        selected = linear_layers(model, include, exclude)

    rows: list[LayerReport] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(names), desc=f"{m.name} {bits:g}-bit", unit="layer")

    def quantize_one(name: str, hessian: torch.Tensor | None) -> None:
        lin = selected[name]
        t0 = time.perf_counter()
        try:
            q = QuantLinear.from_linear(
                lin,
                m,
                bits=bits,
                group_size=group_size,
                hessian=hessian,
                seed=seed,
                cache=cache,
                **method_options,
            )
        except (ValueError, TypeError) as e:
            # same kind of error, now naming the layer (a subclass's constructor may take other arguments)
            kind = TypeError if isinstance(e, TypeError) else ValueError
            raise kind(f"layer {name!r} ({lin.out_features}×{lin.in_features}): {e}") from e
        seconds = time.perf_counter() - t0
        # decode once: the error needs Ŵ, and the layer caches it (when cache=True) for its first forward
        w_hat = q._decoded(torch.float32, lin.weight.device)
        rel, proxy, wsq = _errors(lin.weight, w_hat, hessian)
        note = ""
        if name in tied:
            note = f"weight tied to {', '.join(tied[name])}, which keeps the float weight"
        row = LayerReport(
            name=name,
            shape=(lin.out_features, lin.in_features),
            bits_per_weight=float(q.qweight.bits_per_weight),
            storage_bits=int(q.qweight.storage_bits),
            rel_error=rel,
            proxy_loss=proxy,
            seconds=seconds,
            note=note,
            weight_sq=wsq,
        )
        rows.append(row)
        _replace(model, lin, q)
        if bar is not None:
            bar.update(1)

    calib_seconds = 0.0
    was_training = model.training
    model.eval()
    try:
        if calib is None:
            for name in names:
                quantize_one(name, None)
        elif use_sequential:
            calib_seconds = _sequential(
                model, names, selected, calib, batch_size, quantize_one, bar, true_sequential, gram_dtype
            )
        else:
            t0 = time.perf_counter()
            device = _device(model)
            with torch.no_grad(), hessian_hooks(selected, gram_dtype) as accs:
                for b in _batches(calib, batch_size):
                    model(b.to(device))
            hessians = finish(accs)
            calib_seconds = time.perf_counter() - t0
            for name in names:
                quantize_one(name, hessians.pop(name))
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()

    report = QuantReport(
        method=m.name,
        bits=bits,
        group_size=group_size,
        layers=rows,
        seconds=time.perf_counter() - start,
        calibration_seconds=calib_seconds,
        sequential=use_sequential,
        options=dict(method_options, true_sequential=true_sequential)
        if true_sequential
        else dict(method_options),
    )
    return model, report


#: order in which a LLaMA block's linears compute (stage index), for ``true_sequential``
_STAGES = {
    "self_attn.q_proj": 0,
    "self_attn.k_proj": 0,
    "self_attn.v_proj": 0,
    "self_attn.o_proj": 1,
    "mlp.gate_proj": 2,
    "mlp.up_proj": 2,
    "mlp.down_proj": 3,
}


def _stages(names: list[str], block: int) -> list[list[str]]:
    """Split block ``block``'s selected layer names into the non-empty stages of :data:`_STAGES`, in order."""
    stages: list[list[str]] = [[] for _ in range(max(_STAGES.values()) + 1)]
    prefix = f"layers.{block}."
    for name in names:
        suffix = name[len(prefix) :]
        if suffix not in _STAGES:
            raise ValueError(f"true_sequential knows the LLaMA block layers {list(_STAGES)}; got {name!r}")
        stages[_STAGES[suffix]].append(name)
    return [s for s in stages if s]


def _sequential(
    model: nn.Module,
    names: list[str],
    selected: dict[str, nn.Linear],
    calib: torch.Tensor,
    batch_size: int,
    quantize_one: Callable[[str, torch.Tensor | None], None],
    bar: Any,
    true_sequential: bool = False,
    gram_dtype: torch.dtype = torch.float64,
) -> float:
    """Block-by-block calibration of a Llama (GPTQ's ``llama_sequential``); returns seconds spent in passes.

    Cost: one embedding pass, then per block one pass to collect ``H`` and one to push the cached states
    through the quantized block (the reference does the same two passes per block); ``true_sequential``
    splits the first pass into one pass per stage of :data:`_STAGES`.
    """
    n_blocks = len(model.layers)
    by_block: list[list[str]] = [[] for _ in range(n_blocks)]
    head: list[str] = []
    for name in names:
        parts = name.split(".")
        if len(parts) > 2 and parts[0] == "layers" and parts[1].isdigit():
            by_block[int(parts[1])].append(name)
        elif name == "lm_head":
            head.append(name)
        else:
            raise ValueError(
                f"sequential calibration handles linears inside model.layers and lm_head; got {name!r}. "
                "Pass sequential=False for a single calibration pass"
            )
    device = _device(model)
    tokens = calib.to(device)
    t = tokens.shape[1]
    spent = 0.0
    t0 = time.perf_counter()
    with torch.no_grad():
        hidden = torch.cat([model.embed_tokens(b) for b in _batches(tokens, batch_size)])
        cos, sin = model.rope_cos[:t].to(hidden.dtype), model.rope_sin[:t].to(hidden.dtype)
        last = max([i for i, b in enumerate(by_block) if b], default=-1)
        spent += time.perf_counter() - t0
        for i, block in enumerate(model.layers):
            if i > last and not head:
                break  # nothing after this block needs calibration inputs
            for stage in _stages(by_block[i], i) if true_sequential else [by_block[i]] if by_block[i] else []:
                if bar is not None:
                    bar.set_postfix_str(f"block {i}")
                t0 = time.perf_counter()
                with hessian_hooks({nm: selected[nm] for nm in stage}, gram_dtype) as accs:
                    for b in _batches(hidden, batch_size):
                        block(b, cos, sin)
                hessians = finish(accs)
                spent += time.perf_counter() - t0
                for nm in stage:
                    quantize_one(nm, hessians.pop(nm))
            t0 = time.perf_counter()
            # the next block sees the outputs of this block as quantized
            hidden = torch.cat([block(b, cos, sin) for b in _batches(hidden, batch_size)])
            spent += time.perf_counter() - t0
        if head:
            t0 = time.perf_counter()
            # the head's input is norm(hidden): accumulate it directly, no [n, t, vocab] logits needed
            acc = _Accumulator(model.lm_head.in_features, hidden.device)
            for b in _batches(hidden, batch_size):
                acc.add(model.norm(b), gram_dtype)
            spent += time.perf_counter() - t0
            quantize_one("lm_head", acc.mean())
    return spent
