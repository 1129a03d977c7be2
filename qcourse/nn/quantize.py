"""``quantize_model``: replace the selected ``nn.Linear`` layers of any model by :class:`QuantLinear`.

Data-free methods (RTN, HQQ) quantize each layer from its weight alone. Calibration-aware methods (GPTQ,
AQLM, QuIP#) also need ``H = E[x xᵀ]`` of each layer's inputs on calibration data. On a model that offers
the :class:`~qcourse.nn.blockwise.BlockwiseModel` interface (the course's ``Llama`` does) this is done
*sequentially*, block by block, like the GPTQ reference (see :mod:`qcourse.nn.blockwise`): each block is
calibrated on the outputs of the already quantized blocks before it. On any other model, ``H`` is collected
in one full forward pass of the float model.

:func:`quantize_model` reads as its five steps: :func:`check_arguments` → :func:`select_layers` →
calibrate and quantize (:func:`calibrate_and_quantize`, which hands each layer to a :class:`LayerQuantizer`
as soon as its ``H`` is known) → :func:`~qcourse.nn.report.QuantReport`.

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
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from qcourse import methods
from qcourse.methods.base import Method, check_group_size
from qcourse.nn.blockwise import BlockwiseModel, calibrate_blockwise
from qcourse.nn.calibration import (
    Patterns,
    accumulate_hessians,
    calib_runner,
    check_batch_size,
    check_calibration,
    check_gram_dtype,
    eval_mode,
    linear_layers,
)
from qcourse.nn.linear import QuantLinear
from qcourse.nn.report import LayerReport, QuantReport, layer_errors

__all__ = [
    "LayerQuantizer",
    "QuantSettings",
    "calibrate_and_quantize",
    "check_arguments",
    "quantize_model",
    "select_layers",
]

Bits = float | Mapping[str, float]


def quantize_model(
    model: nn.Module,
    method: str | Method,
    bits: Bits,
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
    bits
        Bit width for every layer, or a per-layer plan ``{layer name: bits}`` (e.g. from a bit-allocation
        rule) that names every selected layer, and nothing else.
    group_size
        Passed to the method for every layer; ``None`` is per-channel (one group per output row). It must
        divide the ``in_features`` of every selected layer (checked before any work).
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
        ``None`` (default): block-by-block calibration on models offering
        :class:`~qcourse.nn.blockwise.BlockwiseModel`, one full pass on others. ``True`` requires
        block-by-block calibration, ``False`` collects every ``H`` in one pass of the float model.
    true_sequential
        Within each block, also quantize in the order the layers compute (the model's
        ``calibration_stages()``: for a LLaMA block ``q/k/v_proj``, then ``o_proj``, then ``gate/up_proj``,
        then ``down_proj``), each stage calibrated on inputs produced by the already quantized stages before
        it (the GPTQ reference's ``--true-sequential``; its published LLaMA results use it). Costs one
        calibration pass per stage instead of one per block. Block-by-block mode only.
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
    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> plan = {"0": 4, "2": 2, "4": 8}  # bits per layer
    >>> qm, report = quantize_model(model, "rtn", bits=plan, group_size=32, progress=False)
    >>> [(r.name, r.bits) for r in report.layers]
    [('0', 4), ('2', 2), ('4', 8)]
    >>> qm, report = quantize_model(model, "rtn", bits=4, group_size=32, calib=torch.randn(16, 32),
    ...                             progress=False)
    >>> report.sequential, report["2"].proxy_loss < 0.05
    (False, True)
    >>> quantize_model(model, "rtn", bits=4, group_size=48, progress=False)
    Traceback (most recent call last):
    ...
    ValueError: layer '0' (in_features=32): group_size=48 does not divide ...
    """
    start = time.perf_counter()
    settings = check_arguments(
        model, method, bits, group_size, calib, inplace=inplace, seed=seed, progress=progress,
        sequential=sequential, true_sequential=true_sequential, batch_size=batch_size, cache=cache,
        gram_dtype=gram_dtype, options=method_options,
    )
    model, layers, layer_bits, tied = select_layers(model, settings, include, exclude)
    quantizer = LayerQuantizer(model, layers, layer_bits, tied, settings)
    with eval_mode(model), quantizer.progress_bar():
        calib_seconds = calibrate_and_quantize(model, layers, settings, quantizer)
    report = QuantReport(
        method=settings.method.name,
        bits=dict(layer_bits) if isinstance(settings.bits, Mapping) else settings.bits,
        group_size=group_size,
        layers=quantizer.rows,
        seconds=time.perf_counter() - start,
        calibration_seconds=calib_seconds,
        sequential=settings.sequential,
        options=dict(method_options, true_sequential=True) if true_sequential else dict(method_options),
    )
    return model, report


@dataclass
class QuantSettings:
    """The checked arguments of one :func:`quantize_model` call (``sequential`` resolved to a bool)."""

    method: Method
    bits: Bits
    group_size: int | None
    calib: torch.Tensor | None
    inplace: bool = False
    seed: int = 0
    progress: bool = True
    sequential: bool = False
    true_sequential: bool = False
    batch_size: int = 8
    cache: bool = True
    gram_dtype: torch.dtype = torch.float64
    options: dict[str, Any] = field(default_factory=dict)


def _checked_bits(method: Method, bits: Any) -> Bits:
    """``bits`` (one width or a plan) checked against the method and normalised (``4.0`` → ``4``)."""
    if not isinstance(bits, Mapping):
        return method.check_bits(bits)
    out = {}
    for name, b in bits.items():
        try:
            out[name] = method.check_bits(b)
        except (TypeError, ValueError) as e:
            raise type(e)(f"bits[{name!r}]: {e}") from None
    return out


def check_arguments(
    model: nn.Module,
    method: str | Method,
    bits: Bits,
    group_size: int | None,
    calib: torch.Tensor | None,
    **flags: Any,
) -> QuantSettings:
    """Step 1: validate everything that does not depend on which layers are selected; resolve ``sequential``.

    ``flags`` are :class:`QuantSettings` fields. Bad values raise ``TypeError``/``ValueError`` naming the
    argument, before any work.
    """
    m = methods.get(method)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    bits = _checked_bits(m, bits)
    for argname in ("inplace", "progress", "cache", "true_sequential"):
        if not isinstance(flags.get(argname, False), bool):
            raise TypeError(f"{argname} must be True or False; got {flags[argname]!r}")
    sequential = flags.pop("sequential", None)
    if sequential is not None and not isinstance(sequential, bool):
        raise TypeError(f"sequential must be None, True or False; got {sequential!r}")
    check_batch_size(flags.get("batch_size", 8))
    check_gram_dtype(flags.get("gram_dtype", torch.float64))
    if m.needs_hessian and calib is None:
        raise ValueError(
            f"method {m.name!r} needs calibration data: pass calib= token ids [n_sequences, seq_len] "
            "(e.g. qcourse.lm.corpus.calibration_tokens(...)) or an input batch for non-language models"
        )
    if calib is not None:
        calib = check_calibration(model, calib)
    blockwise = isinstance(model, BlockwiseModel)
    if sequential and not blockwise:
        raise ValueError(
            "sequential=True needs a model offering qcourse.nn.BlockwiseModel (calibration_blocks(), "
            f"block_inputs(), ...); got {type(model).__name__}. "
            "Use sequential=None or False for a single calibration pass"
        )
    resolved = calib is not None and blockwise and sequential is not False
    if flags.get("true_sequential") and not resolved:
        raise ValueError(
            "true_sequential=True needs block-by-block calibration: a model offering "
            "qcourse.nn.BlockwiseModel, calib data, and sequential=None or True"
        )
    return QuantSettings(
        method=m, bits=bits, group_size=group_size, calib=calib, sequential=resolved, **flags
    )


def _layer_bits(bits: Bits, names: list[str]) -> dict[str, float]:
    """``{layer: bits}`` for the selected layers; a plan must name each of them, and nothing else."""
    if not isinstance(bits, Mapping):
        return dict.fromkeys(names, bits)
    missing = [n for n in names if n not in bits]
    unknown = [n for n in bits if n not in names]
    if missing or unknown:
        raise ValueError(
            "bits as a per-layer plan must name every selected layer and no other: "
            + (f"missing {missing}" if missing else "")
            + ("; " if missing and unknown else "")
            + (f"not selected {unknown}" if unknown else "")
            + f" (selected layers: {names})"
        )
    return {n: bits[n] for n in names}


def _tied_names(model: nn.Module, selected: dict[str, nn.Module]) -> dict[str, list[str]]:
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


def select_layers(
    model: nn.Module, settings: QuantSettings, include: Patterns, exclude: Patterns
) -> tuple[nn.Module, dict[str, nn.Module], dict[str, float], dict[str, list[str]]]:
    """Step 2: choose the layers, check them against ``group_size`` and the bits plan, copy the model.

    Returns ``(model or its deep copy, {name: layer of that model}, {name: bits}, {name: tied names})``.
    """
    selected = linear_layers(model, include, exclude)
    for name, lin in selected.items():
        try:
            check_group_size(settings.group_size, lin.in_features)
        except ValueError as e:
            raise ValueError(f"layer {name!r} (in_features={lin.in_features}): {e}") from None
    layer_bits = _layer_bits(settings.bits, list(selected))
    tied = _tied_names(model, selected)
    if not settings.inplace:
        # share the tokenizer (and nothing else) with the original: it is immutable and may not deep-copy
        tok = getattr(model, "tokenizer", None)
        memo = {id(tok): tok} if tok is not None else {}
        model = copy.deepcopy(model, memo)
        selected = linear_layers(model, include, exclude)
    return model, selected, layer_bits, tied


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    """Put ``new`` wherever ``old`` is a child (a module registered under several names: in every place)."""
    for parent in model.modules():
        for cname, child in list(parent.named_children()):
            if child is old:
                setattr(parent, cname, new)


class LayerQuantizer:
    """Step 4, one layer at a time: ``quantizer(name, H)`` quantizes layer ``name``, swaps in a
    :class:`QuantLinear` and appends its :class:`~qcourse.nn.report.LayerReport` to :attr:`rows`.

    Errors from the method are re-raised naming the layer.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        layer_bits: dict[str, float],
        tied: dict[str, list[str]],
        settings: QuantSettings,
    ) -> None:
        self.model, self.layers, self.layer_bits, self.tied, self.settings = (
            model, layers, layer_bits, tied, settings,
        )
        self.rows: list[LayerReport] = []
        self.bar: Any = None

    def progress_bar(self) -> Any:
        """Context manager: a tqdm bar over layers while quantizing (a no-op without ``progress``)."""
        if not self.settings.progress:
            return nullcontext()
        from tqdm.auto import tqdm

        bits = self.settings.bits
        label = "mixed" if isinstance(bits, Mapping) else f"{bits:g}"
        self.bar = tqdm(total=len(self.layers), desc=f"{self.settings.method.name} {label}-bit", unit="layer")
        return self.bar

    def on_block(self, i: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"block {i}")

    def __call__(self, name: str, hessian: torch.Tensor | None) -> None:
        s, lin = self.settings, self.layers[name]
        where = f"layer {name!r} ({lin.out_features}×{lin.in_features})"
        if hessian is not None and not bool(hessian.abs().amax() > 0):
            raise ValueError(
                f"{where}: its calibration inputs are all zero (H = E[x xᵀ] = 0), so calibration says "
                "nothing about this layer (and a proxy loss is undefined); check calib (all zeros?) and the "
                "layers before this one"
            )
        t0 = time.perf_counter()
        try:
            q = QuantLinear.from_linear(
                lin, s.method, bits=self.layer_bits[name], group_size=s.group_size, hessian=hessian,
                seed=s.seed, cache=s.cache, **s.options,
            )
        except (ValueError, TypeError) as e:
            # same kind of error, now naming the layer (a subclass's constructor may take other arguments)
            kind = TypeError if isinstance(e, TypeError) else ValueError
            raise kind(f"{where}: {e}") from e
        self.rows.append(self._row(name, lin, q, hessian, time.perf_counter() - t0))
        _replace(self.model, lin, q)
        if self.bar is not None:
            self.bar.update(1)

    def _row(
        self, name: str, lin: nn.Module, q: QuantLinear, hessian: torch.Tensor | None, seconds: float
    ) -> LayerReport:
        # decode once: the error needs Ŵ, and the layer caches it (when cache=True) for its first forward
        rel, proxy, wsq = layer_errors(lin.weight, q._decoded(torch.float32, lin.weight.device), hessian)
        tied = self.tied.get(name)
        return LayerReport(
            name=name,
            shape=(lin.out_features, lin.in_features),
            bits=self.layer_bits[name],
            bits_per_weight=float(q.qweight.bits_per_weight),
            storage_bits=int(q.qweight.storage_bits),
            rel_error=rel,
            proxy_loss=proxy,
            seconds=seconds,
            note=f"weight tied to {', '.join(tied)}, which keeps the float weight" if tied else "",
            weight_sq=wsq,
        )


def calibrate_and_quantize(
    model: nn.Module, layers: dict[str, nn.Module], settings: QuantSettings, quantize: LayerQuantizer
) -> float:
    """Step 3 (and 4): collect ``H`` as the settings ask and quantize every layer; return calibration seconds.

    Without calibration data every layer is quantized from its weight alone. Block by block
    (:func:`~qcourse.nn.blockwise.calibrate_blockwise`) each layer is quantized as soon as its block has been
    calibrated. Otherwise one pass of the float model collects every ``H`` first.
    """
    s = settings
    if s.calib is None:
        for name in layers:
            quantize(name, None)
        return 0.0
    if s.sequential:
        return calibrate_blockwise(
            model, layers, s.calib, quantize, batch_size=s.batch_size, true_sequential=s.true_sequential,
            gram_dtype=s.gram_dtype, on_block=quantize.on_block,
        )
    t0 = time.perf_counter()
    hessians = accumulate_hessians(layers, calib_runner(model), s.calib, s.batch_size, s.gram_dtype)
    seconds = time.perf_counter() - t0
    for name in layers:
        quantize(name, hessians.pop(name))
    return seconds
