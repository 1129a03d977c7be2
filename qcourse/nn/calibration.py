"""Selecting linear layers by name, validating calibration data, and collecting ``H = E[x xᵀ]`` with hooks.

Calibration-aware methods (GPTQ, AQLM, QuIP#) minimise the layer-wise proxy loss
``E_x ‖(W − Ŵ) x‖² = tr((W − Ŵ) H (W − Ŵ)ᵀ)`` with ``H = E[x xᵀ]`` over the inputs ``x`` a layer sees on
calibration data. :func:`collect_hessians` runs the model on calibration data with forward hooks on the
selected ``nn.Linear`` layers and returns ``H`` per layer, accumulated in float64. The building blocks
(:func:`hessian_hooks`, :func:`accumulate_hessians`, :class:`HessianAccumulator`) are public so that other
calibration drivers (block by block, :mod:`qcourse.nn.blockwise`) reuse them.

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
>>> sorted(linear_layers(model))
['0', '2']
>>> x = torch.randn(16, 4)
>>> H = collect_hessians(model, x)
>>> torch.allclose(H["0"], x.double().T @ x.double() / 16)
True
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from qcourse.nn.linear import QuantLinear

__all__ = [
    "HessianAccumulator",
    "Patterns",
    "accumulate_hessians",
    "batches",
    "calib_runner",
    "check_batch_size",
    "check_calibration",
    "check_gram_dtype",
    "collect_hessians",
    "eval_mode",
    "gram_product",
    "hessian_hooks",
    "hessians_from",
    "linear_layers",
    "model_device",
        "vocab_size",
]

Patterns = str | Iterable[str] | None


def _patterns(patterns: Patterns, argname: str) -> tuple[str, ...] | None:
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return (patterns,)
    try:
        out = tuple(patterns)
    except TypeError:
        raise TypeError(
            f"{argname} must be None, a glob string or a sequence of them; got {patterns!r}"
        ) from None
    for p in out:
        if not isinstance(p, str) or not p:
            raise TypeError(f"{argname} must hold non-empty glob strings (e.g. 'layers.*'); got {p!r}")
    return out


def _matches(name: str, pattern: str) -> bool:
    """A pattern selects a module if it matches its name or the name of a module that contains it."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:k]), pattern) for k in range(len(parts), 0, -1))


def linear_layers(
    model: nn.Module, include: Patterns = None, exclude: Patterns = None, quantized: bool = False
) -> dict[str, nn.Module]:
    """The linear layers of ``model`` selected by name, in module order.

    Parameters
    ----------
    model
        Any PyTorch module.
    include, exclude
        ``fnmatch`` globs over module names (``"layers.*"``, ``"*.mlp.*"``, ``"lm_head"``). A pattern
        selects a linear layer when it matches the layer's name or the name of a module containing it, so
        ``"layers.0"`` selects every linear of block 0. ``include=None`` means all linear layers. Every
        include pattern must select at least one linear layer (a typo should not silently quantize nothing);
        exclude patterns may match nothing.
    quantized
        ``False`` (default): only ``nn.Linear`` (the layers :func:`~qcourse.nn.quantize_model` can
        quantize). ``True``: also the :class:`~qcourse.nn.QuantLinear` layers of an already quantized
        model (for statistics of its weights).

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    >>> list(linear_layers(model, include="1"))
    ['1.0', '1.1']
    >>> list(linear_layers(model, exclude=["1.*"]))
    ['0']
    >>> linear_layers(model, include="blocks.*")
    Traceback (most recent call last):
    ...
    ValueError: include pattern 'blocks.*' matches no nn.Linear in the model; linear layers are: [...]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(quantized, bool):
        raise TypeError(f"quantized must be True or False; got {quantized!r}")
    inc = _patterns(include, "include")
    exc = _patterns(exclude, "exclude")
    types: tuple[type, ...] = (nn.Linear, QuantLinear) if quantized else (nn.Linear,)
    every = {name: m for name, m in model.named_modules() if isinstance(m, types)}
    if inc is not None:
        for p in inc:
            if not any(_matches(name, p) for name in every):
                names = list(every)
                shown = names if len(names) <= 12 else names[:12] + ["..."]
                raise ValueError(
                    f"include pattern {p!r} matches no nn.Linear in the model; linear layers are: {shown}"
                )
    chosen = {
        name: m
        for name, m in every.items()
        if (inc is None or any(_matches(name, p) for p in inc))
        and not (exc and any(_matches(name, p) for p in exc))
    }
    if not chosen:
        raise ValueError(
            f"include={include!r} and exclude={exclude!r} leave no nn.Linear to quantize; "
            f"linear layers are: {list(every)[:12]}"
        )
    return chosen


def vocab_size(model: nn.Module) -> int | None:
    """Vocabulary size if ``model`` takes token ids: ``config.vocab_size``, else its first ``nn.Embedding``.

    ``None`` means the model takes float inputs (an MLP, a CNN).

    >>> from torch import nn
    >>> vocab_size(nn.Sequential(nn.Embedding(100, 8), nn.Linear(8, 4))), vocab_size(nn.Linear(8, 4))
    (100, None)
    """
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None)
    if isinstance(v, int):
        return v
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            return m.num_embeddings
    return None


def check_calibration(model: nn.Module, data: torch.Tensor) -> torch.Tensor:
    """Validate calibration data for ``model`` and return it (token ids as ``torch.long``).

    Language models (those with a vocabulary, see :func:`vocab_size`) need token ids: an integer tensor
    ``[n_sequences, seq_len]`` with ids in ``[0, vocab_size)`` and ``seq_len <= model.config.max_seq_len``
    when the model has one. Other models need a finite floating-point tensor batched along dimension 0
    (whether its shape fits the model shows when it runs: see :func:`calib_runner`).

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Embedding(256, 8), nn.Linear(8, 4))  # a (tiny) model of token ids
    >>> check_calibration(model, torch.zeros(2, 8, dtype=torch.int32)).dtype
    torch.int64
    >>> check_calibration(model, torch.zeros(2, 8))
    Traceback (most recent call last):
    ...
    TypeError: calib must hold integer token ids (torch.long) for a language model; got dtype torch.float32
    >>> check_calibration(model, torch.full((1, 8), 300))
    Traceback (most recent call last):
    ...
    ValueError: calib token ids must lie in [0, 256) (the model's vocabulary); got values in [300, 300]
    """
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"calib must be a torch.Tensor; got {type(data).__name__}")
    if data.numel() == 0 or data.ndim == 0 or data.shape[0] == 0:
        raise ValueError(f"calib must not be empty; got shape {tuple(data.shape)}")
    vocab = vocab_size(model)
    if vocab is None:
        if not data.is_floating_point():
            raise TypeError(
                "calib for a model without a vocabulary must be a floating-point input batch; "
                f"got dtype {data.dtype}"
            )
        if data.ndim < 2:
            raise ValueError(
                f"calib must be batched along dimension 0 ([n, ...features]); got shape {tuple(data.shape)}"
            )
        if not torch.isfinite(data).all():
            raise ValueError("calib contains NaN or Inf")
        return data
    if data.is_floating_point() or data.is_complex() or data.dtype == torch.bool:
        raise TypeError(
            f"calib must hold integer token ids (torch.long) for a language model; got dtype {data.dtype}"
        )
    if data.ndim != 2:
        raise ValueError(
            f"calib must be token ids shaped [n_sequences, seq_len]; got shape {tuple(data.shape)}"
        )
    lo, hi = int(data.min()), int(data.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(
            f"calib token ids must lie in [0, {vocab}) (the model's vocabulary); got values in [{lo}, {hi}]"
        )
    max_len = getattr(getattr(model, "config", None), "max_seq_len", None)
    if isinstance(max_len, int) and data.shape[1] > max_len:
        raise ValueError(f"calib sequences have length {data.shape[1]}; the model's max_seq_len is {max_len}")
    return data.long()


def check_batch_size(batch_size: int) -> None:
    """``batch_size`` must be a positive int (not a bool)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")


def check_gram_dtype(gram_dtype: torch.dtype) -> None:
    """``gram_dtype`` must be ``torch.float64`` or ``torch.float32``."""
    if gram_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"gram_dtype must be torch.float64 or torch.float32; got {gram_dtype!r}")


def batches(data: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Slices of ``data`` along dimension 0, ``batch_size`` rows each (the last one may be shorter)."""
    for i in range(0, data.shape[0], batch_size):
        yield data[i : i + batch_size]


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Context manager: ``model`` in eval mode inside, its previous train/eval mode restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def gram_product(x: torch.Tensor, gram_dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, int]:
    """``(xᵀx, rows)`` of ``x`` flattened to ``[rows, features]``, computed in ``gram_dtype``, as float64.

    >>> xtx, rows = gram_product(torch.ones(2, 3, 4))
    >>> rows, float(xtx[0, 0]), xtx.dtype
    (6, 6.0, torch.float64)
    """
    x = x.detach().reshape(-1, x.shape[-1]).to(gram_dtype)
    return (x.T @ x).to(torch.float64), x.shape[0]


class HessianAccumulator:
    """Running ``Σ x xᵀ`` and row count for one layer, in float64; :meth:`mean` is ``H = E[x xᵀ]``.

    >>> acc = HessianAccumulator(2, torch.device("cpu"))
    >>> acc.add(torch.tensor([[1.0, 0.0], [1.0, 2.0]]))
    >>> acc.count, acc.mean().tolist()
    (2, [[1.0, 1.0], [1.0, 2.0]])
    """

    def __init__(self, n: int, device: torch.device) -> None:
        self.sum = torch.zeros(n, n, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, x: torch.Tensor, gram_dtype: torch.dtype = torch.float64) -> None:
        """Add the rows of ``x`` (any leading shape, features last)."""
        self.add_product(*gram_product(x, gram_dtype))

    def add_product(self, xtx: torch.Tensor, rows: int) -> None:
        """Add a precomputed ``xᵀx`` over ``rows`` rows."""
        self.sum += xtx
        self.count += rows

    def mean(self) -> torch.Tensor:
        return self.sum / self.count


def _version(x: torch.Tensor) -> int | None:
    """In-place modification counter; ``None`` for inference-mode tensors, which have none (never reuse)."""
    try:
        return x._version
    except RuntimeError:
        return None


@contextmanager
def hessian_hooks(
    layers: dict[str, nn.Module], gram_dtype: torch.dtype = torch.float64
) -> Iterator[dict[str, HessianAccumulator]]:
    """Context manager: while active, every call of a layer in ``layers`` adds its inputs to ``Σ x xᵀ``.

    Yields ``{name: accumulator}``; ``accumulator.mean()`` is ``H = E[x xᵀ]`` and ``accumulator.count`` the
    number of input rows (tokens) seen. The hooks are removed on exit, even after an error.

    Layers fed the very same input tensor one after another (``q/k/v_proj``, ``gate/up_proj`` in a LLaMA
    block) share one ``xᵀx`` product: the Gram matrix is the dominant cost of calibration.

    ``gram_dtype`` is the precision of each batch's product ``xᵀx``; the running sum is float64 either way.
    ``torch.float64`` (default) is exact to double precision; ``torch.float32`` is about 3× faster on CPU,
    differs by ~1e-6 relative, and is still more precise than the GPTQ reference, which keeps all of ``H``
    in float32.
    """
    check_gram_dtype(gram_dtype)
    accs = {name: HessianAccumulator(m.in_features, m.weight.device) for name, m in layers.items()}
    handles = []
    # last input seen and its product; holding the tensor keeps its identity from being reused
    last: dict[str, object] = {"x": None, "version": -1, "product": None}

    def make_hook(acc: HessianAccumulator):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0]
            version = _version(x)
            if last["x"] is not x or version is None or last["version"] != version:
                last.update(x=x, version=version, product=gram_product(x, gram_dtype))
            acc.add_product(*last["product"])  # type: ignore[misc]

        return hook

    try:
        for name, m in layers.items():
            handles.append(m.register_forward_pre_hook(make_hook(accs[name])))
        yield accs
    finally:
        last.clear()
        for h in handles:
            h.remove()


def hessians_from(accs: dict[str, HessianAccumulator]) -> dict[str, torch.Tensor]:
    """``{name: H}`` from accumulators; a layer that saw no input is an error naming it."""
    missing = [name for name, a in accs.items() if a.count == 0]
    if missing:
        raise ValueError(
            f"layers {missing} were never called during the calibration forward pass "
            "(their weight may be used directly, as nn.MultiheadAttention does with out_proj); exclude them"
        )
    return {name: a.mean() for name, a in accs.items()}


def accumulate_hessians(
    layers: dict[str, nn.Module],
    run: Callable[[torch.Tensor], Any],
    data: torch.Tensor,
    batch_size: int = 8,
    gram_dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``{name: H}`` of ``layers`` while ``run(batch)`` is called on every batch of ``data`` (without grad).

    The one calibration loop of the package: :func:`collect_hessians` runs a whole model with it,
    block-by-block calibration runs one block at a time.

    >>> from torch import nn
    >>> lin = nn.Linear(3, 1)
    >>> H = accumulate_hessians({"lin": lin}, lin, torch.eye(3), batch_size=2)
    >>> torch.equal(H["lin"], torch.eye(3, dtype=torch.float64) / 3)
    True
    """
    parts: Iterable[torch.Tensor] = list(batches(data, batch_size))
    if progress:
        from tqdm.auto import tqdm

        parts = tqdm(parts, desc="calibration", unit="batch")
    with torch.no_grad(), hessian_hooks(layers, gram_dtype) as accs:
        for b in parts:
            run(b)
    return hessians_from(accs)


def _expected_input(module: nn.Module) -> str:
    """What input shape ``module`` accepts, in words (empty when it has no simple rule)."""
    if isinstance(module, nn.Linear):
        return f"[..., {module.in_features}] (last dimension in_features={module.in_features})"
    if isinstance(module, nn.modules.conv._ConvNd):
        spatial = {1: "L", 2: "H, W", 3: "D, H, W"}.get(len(module.kernel_size), "...")
        return f"[n, {module.in_channels}, {spatial}] (in_channels={module.in_channels})"
    if isinstance(module, nn.Embedding):
        return f"integer ids in [0, {module.num_embeddings})"
    return ""


def calib_runner(model: nn.Module) -> Callable[[torch.Tensor], Any]:
    """A function ``run(batch)`` that calls ``model`` on a calibration batch (moved to the model's device).

    The first call watches for failures and re-raises them naming ``calib``, its shape and the layer
    that failed: calibration data of the wrong shape (images ``[n, 5, 8, 8]`` for a CNN with 3 input
    channels, features of the wrong width for an MLP) otherwise fail deep inside ``conv2d`` or ``linear``
    with a message that does not mention the data. The layer named is the last one entered before the
    failure. Later calls run the model plainly.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    >>> run = calib_runner(model)
    >>> run(torch.zeros(2, 5, 3, 3))
    Traceback (most recent call last):
    ...
    ValueError: calib of shape (2, 5, 3, 3) does not fit the model: layer '0' (Conv2d) ... [n, 3, H, W] ...
    """
    device = model_device(model)
    checked = False

    def run(batch: torch.Tensor) -> Any:
        nonlocal checked
        batch = batch.to(device)
        if checked:
            return model(batch)
        out = _first_call(model, batch)
        checked = True
        return out

    return run


def _first_call(model: nn.Module, batch: torch.Tensor) -> Any:
    """``model(batch)`` with pre-hooks on every leaf module, to name the layer a failure happened in."""
    entered: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0] if args else None
            entered.append((name, module, tuple(x.shape) if isinstance(x, torch.Tensor) else None))

        return hook

    leaves = [(n, m) for n, m in model.named_modules() if n and next(m.children(), None) is None]
    # prepended: runs before any other pre-hook (a calibration hook may be what fails)
    handles = [m.register_forward_pre_hook(make_hook(n), prepend=True) for n, m in leaves]
    try:
        return model(batch)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:
        where = ""
        if entered:
            name, module, shape = entered[-1]
            expected = _expected_input(module)
            where = f"layer {name!r} ({type(module).__name__})"
            where += f" got an input of shape {shape}" if shape is not None else " failed"
            where += (f" but expects {expected}" if expected else "") + "; "
        raise ValueError(
            f"calib of shape {tuple(batch.shape)} does not fit the model: {where}"
            f"running the model on the first calibration batch failed with {type(e).__name__}: {e}"
        ) from e
    finally:
        for h in handles:
            h.remove()


def collect_hessians(
    model: nn.Module,
    tokens: torch.Tensor,
    include: Patterns = None,
    exclude: Patterns = None,
    batch_size: int = 8,
    progress: bool = False,
    gram_dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """``H = E[x xᵀ]`` of the inputs of each selected ``nn.Linear``, over all calibration tokens, in float64.

    Parameters
    ----------
    model
        Any PyTorch module. It is run in ``eval`` mode without gradients (its mode is restored after).
    tokens
        Calibration data, validated by :func:`check_calibration`: token ids ``[n_sequences, seq_len]`` for a
        language model, a float input batch ``[n, ...]`` for other models.
    include, exclude
        Name globs choosing the layers, as in :func:`linear_layers`.
    batch_size
        Sequences per forward pass (memory, not the result, depends on it).
    progress
        Show a progress bar over batches.
    gram_dtype
        Precision of each batch's ``xᵀx`` (see :func:`hessian_hooks`); sums are float64 either way.

    Returns
    -------
    dict[str, torch.Tensor]
        ``{layer name: H}``, each ``[in_features, in_features]`` float64: the *mean* ``(1/N) Σ x xᵀ`` over the
        ``N`` input rows the layer saw (every token of every sequence; inputs are flattened over batch and
        sequence). The GPTQ reference accumulates ``(2/N) Σ x xᵀ`` (the gradient of the squared error); a
        constant factor changes neither GPTQ's updates (it cancels between ``H⁻¹`` and the diagonal) nor its
        relative damping, so the results are identical.

    Examples
    --------
    A tiny language model (embedding, then a two-layer MLP per token):

    >>> import torch
    >>> from torch import nn
    >>> torch.manual_seed(0)
    <torch._C.Generator object at ...>
    >>> model = nn.Sequential(nn.Embedding(64, 16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 64))
    >>> H = collect_hessians(model, torch.randint(0, 64, (4, 8)), include="3")
    >>> list(H), tuple(H["3"].shape), H["3"].dtype
    (['3'], (32, 32), torch.float64)
    """
    layers = linear_layers(model, include, exclude)
    data = check_calibration(model, tokens)
    check_batch_size(batch_size)
    with eval_mode(model):
        return accumulate_hessians(layers, calib_runner(model), data, batch_size, gram_dtype, progress)
