"""The embedded Austen model: loads the shipped weights from ``qcourse/data/austen-model/``.

Only safetensors is read (no pickle is ever unpickled), and the architecture comes from ``config.json``,
so a retrained model (``python -m qcourse.lm train --out DIR``) loads the same way with ``path=DIR``.

>>> model = load_embedded()
>>> model.training, model.tokenizer.vocab_size, model.config.vocab_size
(False, 256, 256)
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from qcourse.lm.model import Llama, LlamaConfig
from qcourse.lm.tokenizer import ByteTokenizer

__all__ = ["MODEL_DIR", "load_embedded", "training_record"]

#: folder of the shipped model inside the installed package
MODEL_DIR = Path(str(resources.files("qcourse").joinpath("data/austen-model")))


def _folder(path: str | os.PathLike | None, names: tuple[str, ...]) -> Path:
    folder = MODEL_DIR if path is None else Path(path)
    for name in names:
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found; path must be a folder written by "
                "`python -m qcourse.lm train --out DIR`"
            )
    return folder


def training_record(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``training.json`` of the shipped model (or of the model in ``path``).

    >>> rec = training_record()
    >>> sorted(k for k in ("steps", "tokens_seen", "validation", "sha256", "machine") if k in rec)
    ['machine', 'sha256', 'steps', 'tokens_seen', 'validation']
    """
    folder = _folder(path, ("training.json",))
    return json.loads((folder / "training.json").read_text())


def load_embedded(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32) -> Llama:
    """The trained byte-level Austen model, in eval mode, with its tokenizer attached.

    Parameters
    ----------
    path : path-like, optional
        Folder holding ``model.safetensors`` and ``config.json``; default: the shipped model.
    dtype : torch.dtype
        Floating dtype of the weights (float32 as trained; bfloat16/float16 to study those formats).

    Returns
    -------
    Llama
        A fresh copy each call, so a lesson may quantize it in place without affecting the next load.
    """
    from safetensors.torch import load_file

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    folder = _folder(path, ("model.safetensors", "config.json"))
    cfg = LlamaConfig(**json.loads((folder / "config.json").read_text()))
    state = load_file(str(folder / "model.safetensors"))
    # Build on the CPU (the meta device would pull in torch._dynamo, seconds of imports) inside fork_rng,
    # so the throw-away random initialisation leaves the caller's global RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        model = Llama(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:  # assign=True replaced both tensors; re-tie them as the config says
        model.lm_head.weight = model.embed_tokens.weight
    model = model.to(dtype)
    model.tokenizer = ByteTokenizer()
    return model.eval()
