"""What every lesson's setup cell needs: seeding, device choice, and a compact environment summary.

>>> seed_everything(0)
>>> import torch
>>> a = torch.rand(2); seed_everything(0); bool((a == torch.rand(2)).all())
True
>>> str(device(prefer_gpu=False))
'cpu'
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (CPU and CUDA) so a notebook gives the same numbers every run."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 -- learners' code uses the legacy global RNG too
    torch.manual_seed(seed)  # also seeds CUDA generators when a GPU is present
    os.environ["PYTHONHASHSEED"] = str(seed)


def device(prefer_gpu: bool = True) -> torch.device:
    """CPU unless a CUDA (or Apple MPS) GPU is present and ``prefer_gpu``; set QCOURSE_DEVICE to force one."""
    forced = os.environ.get("QCOURSE_DEVICE")
    if forced:
        return torch.device(forced)
    if prefer_gpu and torch.cuda.is_available():
        return torch.device("cuda")
    if prefer_gpu and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
