"""Model-level quantization: ``QuantLinear``, calibration hooks and ``quantize_model`` for any PyTorch model.

``qcourse.nn`` never imports ``qcourse.lm``: it works on any ``nn.Module``, and a model that wants
block-by-block calibration offers the small :class:`BlockwiseModel` interface (``qcourse.lm``'s ``Llama``
does). Quantized models are saved and loaded with :func:`save_quantized` / :func:`load_quantized`.

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

from qcourse.nn.binary import BinaryLinear, to_binary_linear
from qcourse.nn.bitlinear import BitLinear, SeedArticleBitLinear, to_bitlinear
from qcourse.nn.blockwise import BlockwiseModel, calibrate_blockwise
from qcourse.nn.calibration import (
    check_calibration,
    collect_hessians,
    hessian_hooks,
    linear_layers,
    vocab_size,
)
from qcourse.nn.linear import QuantLinear
from qcourse.nn.quantize import quantize_model
from qcourse.nn.report import LayerReport, QuantReport
from qcourse.nn.serialize import load_quantized, save_quantized

__all__ = [
    "BinaryLinear",
    "BitLinear",
    "BlockwiseModel",
    "LayerReport",
    "QuantLinear",
    "QuantReport",
    "SeedArticleBitLinear",
    "calibrate_blockwise",
    "check_calibration",
    "collect_hessians",
    "hessian_hooks",
    "linear_layers",
    "load_quantized",
    "quantize_model",
    "save_quantized",
    "to_binary_linear",
    "to_bitlinear",
    "vocab_size",
]
