"""``QuantLinear``: a linear layer whose weight is a :class:`~qcourse.methods.base.QuantizedWeight`.

Any method's quantized weight can stand in for an ``nn.Linear`` weight. The layer computes
``y = x Ŵᵀ + b`` with ``Ŵ = qweight.dequantize()``: this is *simulated* (fake) quantization, the standard way
to measure the quality of a quantized model; the packed kernels of lesson 08 compute the same product
without materialising ``Ŵ``.

>>> import torch
>>> from torch import nn
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> lin = nn.Linear(64, 3)
>>> q = QuantLinear.from_linear(lin, "rtn", bits=4, group_size=32)
>>> q
QuantLinear(in_features=64, out_features=3, bias=True, weight=AffineQuantizedWeight, bits_per_weight=4.625)
>>> x = torch.randn(2, 64)
>>> torch.allclose(q(x), x @ q.weight.T + lin.bias)
True
>>> sorted(q.state_dict())  # what saving it stores: bias, packed codes, scales, zeros, metadata
['bias', 'qweight.packed', 'qweight.scale', 'qweight.zero', 'qweight_meta']
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcourse import methods
from qcourse.methods.base import Method, QuantizedWeight

__all__ = ["QuantLinear", "set_kernel", "swap_linears"]

#: version tag of the layout QuantLinear writes into a state dict (see ``QuantLinear._save_to_state_dict``)
STATE_FORMAT = "qcourse.QuantLinear/1"


class QuantLinear(nn.Module):
    """A linear layer ``y = x Ŵᵀ + b`` whose weight ``Ŵ`` is decoded from a quantized weight.

    Parameters
    ----------
    qweight
        The quantized weight (any method's :class:`~qcourse.methods.base.QuantizedWeight`), shaped
        ``(out_features, in_features)``.
    bias
        Optional bias ``[out_features]``; copied into a trainable ``nn.Parameter`` (the codes never are).
    cache
        ``True`` (default) decodes ``Ŵ`` on the first forward and keeps it: every later call is as fast as
        ``nn.Linear``, but the layer then holds a full float copy of the weight *beside* the packed codes,
        so a cached model uses at least as much memory as the float model (fine for measuring quality, which
        is what the course does). ``False`` decodes on every call: memory stays at the packed size, each
        forward pays one dequantization. Packed inference kernels (lesson 08) avoid both costs.
    kernel
        How the product is computed at inference (see :func:`qcourse.kernels.matmul`): ``"decode"``
        (default) decodes ``Ŵ`` as above; ``"auto"`` uses the packed numba kernel when the format has one
        and numba is installed, and decodes otherwise; ``"cpu"`` requires the packed kernel; ``"reference"``
        runs the slow packed oracle. Kernels are used only when no gradient to the input is needed
        (``torch.no_grad()`` or an input without ``requires_grad``); training always decodes. The fastest
        kernels (int4/int2/ternary tiles, E8P) read a copy of the codes laid out for them
        (:func:`qcourse.kernels.prepare`, built on the first kernel forward: as many bytes as the codes plus
        float32 scales); :func:`set_kernel` switches a whole model and drops decoded float copies.

    Notes
    -----
    Gradients flow to the input and the bias but never into the codes: ``Ŵ`` is decoded without
    autograd and is a constant of the graph; :meth:`named_parameters` holds only the bias.

    The layer's ``state_dict`` holds everything needed to rebuild it, without pickle: the bias, every tensor
    the quantized weight stores (``qweight.<name>``: packed codes, scales, zeros, codebooks, signs, as
    :meth:`~qcourse.methods.base.QuantizedWeight.to_state` lists them) and ``qweight_meta``, the weight's
    metadata (method class, shape, bit width...) as UTF-8 JSON in a ``uint8`` tensor, so that ``torch.save``,
    ``load_state_dict`` and safetensors (:func:`qcourse.nn.save_quantized`) all carry it.

    Examples
    --------
    A layer's output matches ``x @ Ŵᵀ + b`` and the input still receives gradients:

    >>> import torch
    >>> from torch import nn
    >>> from qcourse.methods.base import QuantizedWeight
    >>> class Exact(QuantizedWeight):
    ...     def __init__(self, w):
    ...         self.shape, self.w = tuple(w.shape), w.detach().clone()
    ...     def dequantize(self, dtype=torch.float32):
    ...         return self.w.to(dtype)
    ...     @property
    ...     def storage_bits(self):
    ...         return 32 * self.w.numel()
    >>> lin = nn.Linear(8, 2, bias=False)
    >>> q = QuantLinear(Exact(lin.weight), cache=False)
    >>> x = torch.randn(3, 8, requires_grad=True)
    >>> torch.allclose(q(x), lin(x)), q.in_features, q.out_features, q.bits_per_weight
    (True, 8, 2, 32.0)
    >>> q(x).sum().backward(); x.grad.shape
    torch.Size([3, 8])
    """

    def __init__(
        self, qweight: QuantizedWeight, bias: torch.Tensor | None = None, cache: bool = True,
        kernel: str = "decode",
    ) -> None:
        super().__init__()
        if not isinstance(qweight, QuantizedWeight):
            raise TypeError(
                f"qweight must be a qcourse.methods.QuantizedWeight; got {type(qweight).__name__}"
            )
        shape = tuple(qweight.shape)
        if len(shape) != 2:
            raise ValueError(f"qweight.shape must be (out_features, in_features); got {shape}")
        if not isinstance(cache, bool):
            raise TypeError(f"cache must be True or False; got {cache!r}")
        from qcourse.kernels import BACKENDS

        if kernel not in BACKENDS:
            raise ValueError(f"kernel must be one of {list(BACKENDS)}; got {kernel!r}")
        self.kernel = kernel
        self.qweight = qweight
        self.out_features, self.in_features = int(shape[0]), int(shape[1])
        self.cache = cache
        self._cached: torch.Tensor | None = None
        self._plan: tuple[str, str | None, Any] | None = None
        if bias is None:
            self.register_parameter("bias", None)
        else:
            if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (self.out_features,):
                got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
                raise ValueError(f"bias must be a tensor of shape ({self.out_features},); got {got}")
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        method: str | Method,
        bits: float,
        group_size: int | None = 64,
        hessian: torch.Tensor | None = None,
        seed: int = 0,
        cache: bool = True,
        kernel: str = "decode",
        **options: Any,
    ) -> QuantLinear:
        """Quantize ``linear.weight`` with ``method`` and wrap it (the bias is kept in float).

        ``hessian`` is ``E[x xᵀ]`` of the layer's inputs (see :func:`qcourse.nn.collect_hessians`), required
        by calibration-aware methods and ignored by the others; ``options`` go to the method.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear; got {type(linear).__name__}")
        m = methods.get(method)
        # float32 copy without autograd history: methods work on plain float tensors
        w = linear.weight.detach().to(torch.float32)
        qweight = m.quantize(w, bits=bits, group_size=group_size, hessian=hessian, seed=seed, **options)
        return cls(qweight, bias=linear.bias, cache=cache, kernel=kernel)

    @property
    def bits_per_weight(self) -> float:
        """Bits stored per weight by the quantized weight (codes, scales, zeros, codebooks...)."""
        return float(self.qweight.bits_per_weight)

    @property
    def weight(self) -> torch.Tensor:
        """The decoded weight ``Ŵ`` (float32, no gradient); cached when :attr:`cache` is true.

        Provided so code that reads ``module.weight`` (diagnostics, ``nn.MultiheadAttention``) keeps working.
        """
        device = self.bias.device if self.bias is not None else None
        return self._decoded(torch.float32, device)

    def clear_cache(self) -> None:
        """Drop the cached float weight (it is rebuilt on the next forward if :attr:`cache` is true) and the
        kernel's layout of the codes (rebuilt on the next kernel forward)."""
        self._cached = None
        self._plan = None

    def _kernel_plan(self) -> tuple[str | None, Any]:
        """``(numba kernel name or None, kernels.prepare(qweight) or None)`` for :attr:`kernel`, computed
        once: the tiled layout is a second copy of the codes (as many bytes as the packed weight, plus float32
        scales), never a float copy of the weight."""
        from qcourse import kernels

        plan = getattr(self, "_plan", None)
        if plan is None or plan[0] != self.kernel:
            name = kernels.kernel_name(self.qweight)
            prepared = kernels.prepare(self.qweight) if self.kernel in ("auto", "cpu") and name else None
            plan = self._plan = (self.kernel, name, prepared)
        return plan[1], plan[2]

    def _decoded(self, dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
        c = self._cached
        if c is not None and c.dtype == dtype and (device is None or c.device == device):
            return c
        with torch.no_grad():
            w = self.qweight.dequantize(torch.float32)
            if tuple(w.shape) != (self.out_features, self.in_features):
                raise RuntimeError(
                    f"{type(self.qweight).__name__}.dequantize() returned shape {tuple(w.shape)}; "
                    f"expected {(self.out_features, self.in_features)}"
                )
            w = w.to(device=device if device is not None else w.device, dtype=dtype).detach()
        if self.cache:
            self._cached = w
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"input's last dimension must be in_features={self.in_features}; got {x.shape[-1]}"
            )
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.kernel != "decode" and not (torch.is_grad_enabled() and x.requires_grad):
            from qcourse import kernels

            name, prepared = self._kernel_plan()
            if self.kernel != "auto" or name is not None:
                y = kernels.matmul(x, self.qweight, backend=self.kernel, prepared=prepared)
                return y if bias is None else y + bias
        w = self._decoded(x.dtype, x.device)
        return F.linear(x, w, bias)

    # ---- state dict: the quantized weight travels as its tensors plus JSON metadata ---------------------

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)  # the bias
        try:
            tensors, meta = self.qweight.to_state()
        except NotImplementedError as e:
            raise NotImplementedError(
                f"QuantLinear {prefix.rstrip('.') or '(root)'}: its {type(self.qweight).__name__} cannot be "
                f"saved ({e}); implement to_state() and register the class with weight_from_state"
            ) from e
        for key, t in tensors.items():
            destination[f"{prefix}qweight.{key}"] = t if keep_vars else t.detach()
        doc = {"format": STATE_FORMAT, "out_features": self.out_features, "in_features": self.in_features,
               "weight": meta}
        destination[prefix + "qweight_meta"] = encode_meta(doc)

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        ours = [k for k in state_dict if k == prefix + "qweight_meta" or k.startswith(prefix + "qweight.")]
        if prefix + "qweight_meta" not in state_dict:
            missing_keys.append(prefix + "qweight_meta")
        else:
            try:
                shape = (self.out_features, self.in_features)
                self.qweight = weight_from_state_dict(state_dict, prefix, shape)
                self.clear_cache()
            except (ValueError, TypeError, KeyError) as e:
                error_msgs.append(f"{prefix}qweight: {e}")
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        # the base class knows only parameters and buffers: the quantized weight's keys are expected here
        unexpected_keys[:] = [k for k in unexpected_keys if k not in ours]

    @classmethod
    def from_state_dict(
        cls, state_dict: dict[str, torch.Tensor], prefix: str = "", cache: bool = True
    ) -> QuantLinear:
        """Rebuild a layer from what its :meth:`state_dict` wrote under ``prefix`` (e.g. ``"mlp.up."``)."""
        qweight = weight_from_state_dict(state_dict, prefix, None)
        return cls(qweight, bias=state_dict.get(prefix + "bias"), cache=cache)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, "
            f"weight={type(self.qweight).__name__}, bits_per_weight={self.bits_per_weight:.4g}"
        )


def encode_meta(doc: dict[str, Any]) -> torch.Tensor:
    """JSON ``doc`` as a ``uint8`` tensor of its UTF-8 bytes (how metadata rides in a state dict).

    >>> decode_meta(encode_meta({"bits": 2, "class": "X"}))
    {'bits': 2, 'class': 'X'}
    """
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return torch.tensor(list(data), dtype=torch.uint8)


def decode_meta(t: torch.Tensor) -> dict[str, Any]:
    """Inverse of :func:`encode_meta`; a clear ``ValueError`` if the bytes are not a JSON object."""
    if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.ndim != 1:
        raise ValueError(f"metadata must be a 1-D uint8 tensor of JSON bytes; got {t!r:.60}")
    try:
        doc = json.loads(bytes(t.tolist()).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"metadata is not UTF-8 JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"metadata must be a JSON object; got {type(doc).__name__}")
    return doc


def weight_from_state_dict(
    state_dict: dict[str, torch.Tensor], prefix: str, shape: tuple[int, int] | None
) -> QuantizedWeight:
    """The quantized weight a :class:`QuantLinear` saved under ``prefix`` (checked against ``shape``)."""
    from qcourse.methods.base import weight_from_state

    doc = decode_meta(state_dict[prefix + "qweight_meta"])
    if doc.get("format") != STATE_FORMAT:
        raise ValueError(f"unknown QuantLinear state format {doc.get('format')!r}; expected {STATE_FORMAT!r}")
    saved = (int(doc["out_features"]), int(doc["in_features"]))
    if shape is not None and saved != tuple(shape):
        raise ValueError(f"saved weight is {saved[0]}×{saved[1]}; this layer is {shape[0]}×{shape[1]}")
    start = prefix + "qweight."
    tensors = {k[len(start):]: v for k, v in state_dict.items() if k.startswith(start)}
    qweight = weight_from_state(tensors, doc["weight"])
    if tuple(qweight.shape) != saved:
        raise ValueError(f"rebuilt weight has shape {tuple(qweight.shape)}; the state says {saved}")
    return qweight


def swap_linears(model: nn.Module, include: str | tuple[str, ...],
                 make: Callable[[nn.Linear], nn.Module]) -> list[str]:
    """Replace, in place, every ``nn.Linear`` whose qualified name starts with one of ``include`` by
    ``make(linear)``; return the names replaced (``ValueError`` if there is none).

    The course's layer families (BitLinear, binary layers, ternary PTQ) convert a model this way:
    ``include=("layers.",)`` converts a transformer's blocks and keeps the embedding and head as they are.

    >>> from torch import nn
    >>> m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> swap_linears(m, ("2",), lambda lin: nn.Identity())
    ['2']
    >>> type(m[2]).__name__
    'Identity'
    """
    if isinstance(include, str):
        include = (include,)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(tuple(include))]
    if not names:
        raise ValueError(f"no nn.Linear whose name starts with {include!r}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(getattr(parent, child)))
    return names


def set_kernel(model: nn.Module, kernel: str = "auto") -> dict[str, str]:
    """Make every :class:`QuantLinear` of ``model`` compute with ``kernel``; return ``{layer name: what
    runs}``, where what runs is the packed kernel's name (``"int4"``, ``"ternary"``, ...), ``"reference"``
    or ``"decode"``.

    A layer that runs a packed kernel also drops its decoded float copy and stops caching one (``cache``
    becomes ``False``): a packed model then holds only its codes, scales and zeros, so its memory and speed
    are those of the packed format. A layer whose format has no kernel keeps decoding under ``"auto"``
    (with its cache); ``kernel="cpu"`` raises ``ValueError`` naming the first such layer instead.
    ``kernel="decode"`` restores plain decoding (the float copy is rebuilt on the next forward if ``cache``
    is set again).

    >>> import torch
    >>> from torch import nn
    >>> from qcourse.kernels import cpu
    >>> m = nn.Sequential(nn.Linear(64, 8, bias=False))
    >>> m[0] = QuantLinear.from_linear(m[0], "rtn", bits=4, group_size=32)
    >>> _ = m(torch.randn(1, 64)); m[0]._cached is not None       # decoding keeps a float copy
    True
    >>> used = set_kernel(m, "auto")
    >>> used == ({"0": "int4"} if cpu.AVAILABLE else {"0": "decode"}), m[0]._cached is None
    (True, True)
    """
    from qcourse import kernels

    if kernel not in kernels.BACKENDS:
        raise ValueError(f"kernel must be one of {list(kernels.BACKENDS)}; got {kernel!r}")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    if not layers:
        raise ValueError(f"model has no QuantLinear layers ({type(model).__name__}); quantize it first")
    used: dict[str, str] = {}
    for name, layer in layers:
        found = kernels.kernel_name(layer.qweight) if kernel in ("auto", "cpu") else None
        if kernel == "cpu" and found is None:
            raise ValueError(f"layer {name}: {type(layer.qweight).__name__} has no packed CPU kernel "
                             "(or numba is missing); use kernel='auto' or 'decode'")
        used[name] = found if found is not None else ("reference" if kernel == "reference" else "decode")
    for name, layer in layers:
        layer.kernel = kernel
        if used[name] != "decode":
            layer.cache = False
            layer.clear_cache()
    return used
