"""``QuantLinear``: a linear layer whose weight is a :class:`~qcourse.methods.base.QuantizedWeight`.

Any method's quantized weight can stand in for an ``nn.Linear`` weight. The layer computes
``y = x Ŵᵀ + b`` with ``Ŵ = qweight.dequantize()``: this is *simulated* (fake) quantization, the standard way
to measure the quality of a quantized model; the packed kernels of lesson 08 compute the same product
without materialising ``Ŵ``.

>>> import torch
>>> from torch import nn
>>> from qcourse.methods.base import Method, QuantizedWeight
>>> class Halves(QuantizedWeight):  # a toy "method": round to multiples of 1/2, 4 bits per weight
...     def __init__(self, w):
...         self.shape, self.q = tuple(w.shape), torch.round(2 * w) / 2
...     def dequantize(self, dtype=torch.float32):
...         return self.q.to(dtype)
...     @property
...     def storage_bits(self):
...         return 4 * self.q.numel()
>>> lin = nn.Linear(4, 3)
>>> q = QuantLinear(Halves(lin.weight.detach()), bias=lin.bias)
>>> q
QuantLinear(in_features=4, out_features=3, bias=True, weight=Halves, bits_per_weight=4)
>>> x = torch.randn(2, 4)
>>> torch.allclose(q(x), x @ q.weight.T + lin.bias)
True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from qcourse.methods.base import Method, QuantizedWeight

__all__ = ["QuantLinear", "resolve_method"]


def resolve_method(method: str | Method) -> Method:
    """Turn a method name (``"rtn"``, ``"gptq"``, ...) or a :class:`Method` instance into a :class:`Method`.

    >>> resolve_method("no-such-method")
    Traceback (most recent call last):
    ...
    ValueError: method must be one of [...]; got 'no-such-method'
    """
    if isinstance(method, Method):
        return method
    if isinstance(method, str):
        from qcourse import methods

        return methods.get(method)
    raise TypeError(
        f"method must be a method name (str) or a qcourse.methods.Method; got {type(method).__name__}"
    )


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

    Notes
    -----
    Gradients flow to the input and the bias but never into the codes: ``Ŵ`` is decoded without
    autograd and is a constant of the graph. The layer's ``state_dict`` holds only the bias; the codes live in
    :attr:`qweight`.

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
        self, qweight: QuantizedWeight, bias: torch.Tensor | None = None, cache: bool = True
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
        self.qweight = qweight
        self.out_features, self.in_features = int(shape[0]), int(shape[1])
        self.cache = cache
        self._cached: torch.Tensor | None = None
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
        **options: Any,
    ) -> QuantLinear:
        """Quantize ``linear.weight`` with ``method`` and wrap it (the bias is kept in float).

        ``hessian`` is ``E[x xᵀ]`` of the layer's inputs (see :func:`qcourse.nn.collect_hessians`), required
        by calibration-aware methods and ignored by the others; ``options`` go to the method.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear; got {type(linear).__name__}")
        m = resolve_method(method)
        # float32 copy without autograd history: methods work on plain float tensors
        w = linear.weight.detach().to(torch.float32)
        qweight = m.quantize(w, bits=bits, group_size=group_size, hessian=hessian, seed=seed, **options)
        return cls(qweight, bias=linear.bias, cache=cache)

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
        """Drop the cached float weight (it is rebuilt on the next forward if :attr:`cache` is true)."""
        self._cached = None

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
        w = self._decoded(x.dtype, x.device)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, "
            f"weight={type(self.qweight).__name__}, bits_per_weight={self.bits_per_weight:.4g}"
        )
