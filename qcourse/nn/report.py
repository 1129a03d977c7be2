"""What :func:`~qcourse.nn.quantize_model` reports: a :class:`LayerReport` per layer, a :class:`QuantReport`.

>>> layer = LayerReport(name="fc", shape=(2, 4), bits=4, bits_per_weight=4.5, storage_bits=36,
...                     rel_error=0.01, proxy_loss=None, seconds=0.001, weight_sq=8.0)
>>> report = QuantReport(method="rtn", bits=4, group_size=4, layers=[layer], seconds=0.002)
>>> print(report)
rtn · 4 bits · group 4 · 1 layers, 8 weights · 4.500 bits/weight · rel. error 0.01 · 0.00 s
layer  shape  bits/w   rel.err  proxy     s
fc     2×4     4.500  1.00e-02  -      0.00
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from qcourse.tables import format_table

__all__ = ["LayerReport", "QuantReport", "layer_errors"]


@dataclass
class LayerReport:
    """What quantizing one layer did.

    ``bits`` is the bit width the method was asked for (per layer: a plan may give layers different
    widths); ``bits_per_weight`` what it really stores, scales and zeros included. ``rel_error`` is
    ``‖W − Ŵ‖²_F / ‖W‖²_F``; ``proxy_loss`` is the relative output error on the calibration inputs,
    ``tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)`` with ``ΔW = W − Ŵ`` (``None`` without calibration data).
    """

    name: str
    shape: tuple[int, int]
    bits: float
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
    """Per-layer results of :func:`~qcourse.nn.quantize_model` and their totals.

    ``bits`` is what the call asked for: one width for every layer, or the per-layer plan
    ``{layer name: bits}``. ``seconds`` is the wall time of the whole call (calibration passes included);
    ``calibration_seconds`` the part spent running the model to collect ``H``; each layer's ``seconds`` the
    method's own time.
    """

    method: str
    bits: float | dict[str, float]
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
            "bits": dict(self.bits) if isinstance(self.bits, Mapping) else self.bits,
            "group_size": self.group_size,
            "layers": len(self.layers),
            "weights": self.numel,
            "bits_per_weight": self.bits_per_weight,
            "rel_error": self.rel_error,
            "seconds": self.seconds,
            "calibration_seconds": self.calibration_seconds,
            "sequential": self.sequential,
        }

    def _bits_text(self) -> str:
        if not isinstance(self.bits, Mapping):
            return f"{self.bits:g} bits"
        widths = sorted(set(self.bits.values()))
        return "mixed bits (" + ", ".join(f"{b:g}" for b in widths) + ")"

    def __str__(self) -> str:
        group = "per-channel" if self.group_size is None else f"group {self.group_size}"
        head = (
            f"{self.method} · {self._bits_text()} · {group} · {len(self.layers)} layers, "
            f"{self.numel:,} weights · "
            f"{self.bits_per_weight:.3f} bits/weight · rel. error {self.rel_error:.3g} · {self.seconds:.2f} s"
        )
        columns = ["layer", "shape"]
        # a per-layer plan shows each layer's width; with one width for all it is in the head line
        columns += ["bits"] if isinstance(self.bits, Mapping) else []
        columns += ["bits/w", "rel.err", "proxy", "s"]
        columns += ["note"] if any(r.note for r in self.layers) else []
        rows = [
            {
                "layer": r.name,
                "shape": f"{r.shape[0]}×{r.shape[1]}",
                "bits": r.bits,
                "bits/w": r.bits_per_weight,
                "rel.err": r.rel_error,
                "proxy": r.proxy_loss,
                "s": r.seconds,
                "note": r.note or None,
            }
            for r in self.layers
        ]
        formats = {"bits": "g", "bits/w": ".3f", "rel.err": ".2e", "proxy": ".2e", "s": ".2f"}
        table = format_table(rows, columns, formats={k: v for k, v in formats.items() if k in columns})
        return head + "\n" + table

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:  # IPython shows the table, not the dataclass repr
        p.text(str(self))


def layer_errors(
    w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor | None
) -> tuple[float, float | None, float]:
    """``(‖ΔW‖²/‖W‖², tr(ΔW H ΔWᵀ)/tr(W H Wᵀ) or None, ‖W‖²)``; sums of squares accumulated in float64.

    >>> w = torch.tensor([[1.0, 2.0]])
    >>> rel, proxy, wsq = layer_errors(w, torch.tensor([[1.0, 1.0]]), torch.eye(2, dtype=torch.float64))
    >>> round(rel, 12), round(proxy, 12), round(wsq, 12)
    (0.2, 0.2, 5.0)
    """
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
