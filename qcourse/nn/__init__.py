"""Model-level quantization: ``QuantLinear``, calibration hooks and ``quantize_model`` for any PyTorch model.

>>> import torch
>>> from torch import nn
>>> from qcourse.nn import quantize_model
>>> torch.manual_seed(0)
<torch._C.Generator object at ...>
>>> model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
>>> qmodel, report = quantize_model(model, "rtn", bits=8, group_size=32, progress=False)
>>> x = torch.randn(5, 32)
>>> bool((qmodel(x) - model(x)).abs().max() < 1e-2)
True
"""

from qcourse.nn.calibration import (
    check_calibration,
    collect_hessians,
    hessian_hooks,
    linear_layers,
    vocab_size,
)
from qcourse.nn.linear import QuantLinear, resolve_method
from qcourse.nn.quantize import LayerReport, QuantReport, quantize_model

__all__ = [
    "LayerReport",
    "QuantLinear",
    "QuantReport",
    "check_calibration",
    "collect_hessians",
    "hessian_hooks",
    "linear_layers",
    "quantize_model",
    "resolve_method",
    "vocab_size",
]
