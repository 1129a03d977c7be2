"""The embedded Austen model: loads the shipped weights from ``qcourse/data/austen-model/``.

Only safetensors is read (no pickle is ever unpickled), and the architecture comes from ``config.json``,
so a retrained model (``python -m qcourse.lm train --out DIR``) loads the same way with ``path=DIR``.
The weights' SHA-256 recorded in ``training.json`` is checked on every load (about 30 ms for the 13 MB
shipped file, cached per file while it is unchanged), so corrupted bytes are an error naming the file, never
a silently wrong model.

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

__all__ = ["BITNET_DIR", "MODEL_DIR", "MODEL_DIRS", "load_embedded", "training_record", "verify_weights"]

#: folder of the shipped model inside the installed package
MODEL_DIR = Path(str(resources.files("qcourse").joinpath("data/austen-model")))
#: folder of the shipped ternary twin (lesson 05: ``python -m qcourse.lm train --bitnet``)
BITNET_DIR = Path(str(resources.files("qcourse").joinpath("data/austen-bitnet")))
#: every shipped embedded model by its ``qcourse.lm.load`` name; the family of lesson 09 shares the large
#: model's recipe, data and seed (``python -m qcourse.lm train --size small|medium``)
MODEL_DIRS = {
    "austen": MODEL_DIR,
    "austen-medium": MODEL_DIR.parent / "austen-medium",
    "austen-small": MODEL_DIR.parent / "austen-small",
    "austen-bitnet": BITNET_DIR,
}


def _folder(path: str | os.PathLike | None, names: tuple[str, ...]) -> Path:
    folder = MODEL_DIR if path is None else Path(path)
    for name in names:
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found; path must be a folder written by "
                "`python -m qcourse.lm train --out DIR`"
            )
    return folder


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file} is not valid JSON ({exc}); restore it, or retrain into a fresh folder with "
                         "`python -m qcourse.lm train --out DIR`") from None


def training_record(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``training.json`` of the shipped model (or of the model in ``path``).

    >>> rec = training_record()
    >>> sorted(k for k in ("steps", "tokens_seen", "validation", "sha256", "machine") if k in rec)
    ['machine', 'sha256', 'steps', 'tokens_seen', 'validation']
    """
    folder = _folder(path, ("training.json",))
    record = _read_json(folder / "training.json")
    if not isinstance(record, dict):
        raise ValueError(f"{folder / 'training.json'} must hold a JSON object; got {type(record).__name__}")
    return record


def verify_weights(path: str | os.PathLike | None = None) -> str | None:
    """Check ``model.safetensors`` against the SHA-256 recorded in ``training.json``; return the digest.

    The shipped model must have its record; a folder of your own without ``training.json`` (or without a
    ``sha256`` in it) cannot be checked and returns None.

    Raises
    ------
    ValueError
        If the file's SHA-256 differs from the recorded one (corrupted or replaced), naming the file.

    >>> verify_weights() == training_record()["sha256"]
    True
    """
    from qcourse.lm.gguf import sha256_file

    folder = _folder(path, ("model.safetensors",))
    if path is not None and not (folder / "training.json").is_file():
        return None
    expected = training_record(path).get("sha256")
    if expected is None and path is not None:
        return None
    if not isinstance(expected, str):
        raise ValueError(f"{folder / 'training.json'} records no sha256 string for model.safetensors")
    weights = folder / "model.safetensors"
    digest = sha256_file(weights)
    if digest != expected.lower():
        fix = ("reinstall qcourse, or restore the file from the course repository"
               if path is None else "restore it, or retrain with `python -m qcourse.lm train --out DIR`")
        raise ValueError(
            f"{weights} is corrupted or was replaced: its SHA-256 is {digest}, but "
            f"{folder / 'training.json'} records {expected}; {fix}")
    return digest


def load_embedded(
    path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32, *, verify: bool = True
) -> Llama:
    """The trained byte-level Austen model, in eval mode, with its tokenizer attached.

    Parameters
    ----------
    path : path-like, optional
        Folder holding ``model.safetensors`` and ``config.json``; default: the shipped model.
    dtype : torch.dtype
        Floating dtype of the weights (float32 as trained; bfloat16/float16 to study those formats).
    verify : bool
        Check the weights against the SHA-256 in ``training.json`` (:func:`verify_weights`). The shipped
        model is always checked; ``verify=False`` only skips the check for a folder of your own.

    Returns
    -------
    Llama
        A fresh copy each call, so a lesson may quantize it in place without affecting the next load.

    Raises
    ------
    FileNotFoundError
        A file of the folder is missing.
    ValueError
        Corrupted weights (SHA-256 mismatch), or a ``config.json`` that is not valid JSON or not a model
        configuration; the message names the file.
    """
    from safetensors.torch import load_file

    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    if not isinstance(verify, bool):
        raise TypeError(f"verify must be True or False; got {verify!r}")
    folder = _folder(path, ("model.safetensors", "config.json"))
    if verify or path is None:
        verify_weights(path)
    config_file = folder / "config.json"
    raw = _read_json(config_file)
    try:
        cfg = LlamaConfig(**raw)
    except TypeError as exc:  # not a mapping, or keys LlamaConfig does not know
        raise ValueError(f"{config_file} is not a model configuration: {exc}") from None
    state = load_file(str(folder / "model.safetensors"))
    # Build on the CPU (the meta device would pull in torch._dynamo, seconds of imports) inside fork_rng,
    # so the throw-away random initialisation leaves the caller's global RNG stream untouched.
    with torch.random.fork_rng(devices=[]):
        model = Llama(cfg)
        if any(k.endswith(".packed") for k in state):
            _as_frozen_bitnet(model)
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:  # assign=True replaced both tensors; re-tie them as the config says
        model.lm_head.weight = model.embed_tokens.weight
    model = model.to(dtype)
    model.tokenizer = ByteTokenizer()
    return model.eval()


def _as_frozen_bitnet(model: Llama) -> None:
    """Turn the blocks' linears into frozen BitLinear layers, ready to receive saved packed trits."""
    from qcourse.nn.bitlinear import BitLinear, to_bitlinear

    to_bitlinear(model)
    for m in model.modules():
        if isinstance(m, BitLinear):
            m.freeze()
