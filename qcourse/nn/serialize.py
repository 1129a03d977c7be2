"""Saving and loading quantized models with safetensors (no pickle).

:func:`save_quantized` writes what :func:`~qcourse.nn.quantize_model` returned: every tensor of its
``state_dict`` (float weights, biases, and each :class:`~qcourse.nn.QuantLinear`'s packed codes, scales,
zeros, codebooks...), with the quantized layers' metadata (method class, shape, bit width) as JSON in the
safetensors header. :func:`load_quantized` puts it back into a fresh copy of the *float* architecture: the
layers that were quantized become :class:`~qcourse.nn.QuantLinear` again, everything else is loaded as
usual. The file holds the codes at their packed size, so it is as small as ``bits_per_weight`` says.

>>> import tempfile, torch
>>> from torch import nn
>>> from qcourse.nn import quantize_model
>>> def make():
...     torch.manual_seed(0)
...     return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
>>> qmodel, report = quantize_model(make(), "rtn", bits=2, group_size=32, progress=False)
>>> path = tempfile.mkdtemp() + "/model.safetensors"
>>> size = save_quantized(qmodel, path)
>>> loaded = load_quantized(path, make)
>>> x = torch.randn(3, 64)
>>> torch.equal(loaded(x), qmodel(x)), type(loaded[0]).__name__
(True, 'QuantLinear')
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcourse.nn.linear import QuantLinear, decode_meta, encode_meta

__all__ = ["FILE_FORMAT", "load_quantized", "save_quantized", "saved_sizes"]

#: format tag in the safetensors header of files written by :func:`save_quantized`
FILE_FORMAT = "qcourse.quantized/1"
_META_SUFFIX = ".qweight_meta"


def _check_path(path: Any) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    return Path(path)


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store a tensor shared under several names (a tied embedding and head) once: ``(tensors, aliases)``."""
    first: dict[tuple, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
            tensors[name] = t.detach().contiguous()
    return tensors, aliases


def save_quantized(model: nn.Module, path: str | os.PathLike) -> int:
    """Write ``model`` (e.g. what ``quantize_model`` returned) to a safetensors file; return its byte size.

    Tensors shared under several names are stored once. The header's metadata entry ``"qcourse"`` holds
    JSON: the format tag, each quantized layer's metadata (what :meth:`QuantLinear.state_dict` stores in
    ``qweight_meta``) and the shared-tensor aliases.
    """
    from safetensors.torch import save_file

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    path = _check_path(path)
    state = model.state_dict()
    metas = [k for k in state if k.endswith(_META_SUFFIX)]
    layers = {k[: -len(_META_SUFFIX)]: decode_meta(state.pop(k)) for k in metas}
    tensors, aliases = _dedupe(state)
    doc = {"format": FILE_FORMAT, "quantized": layers, "aliases": aliases}
    save_file(tensors, str(path), metadata={"qcourse": json.dumps(doc)})  # layers in model order
    return path.stat().st_size


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the ``qcourse`` header document of a file written by :func:`save_quantized`."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (path must be a file from qcourse.nn.save_quantized)")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        doc = json.loads(header["qcourse"])
    except (KeyError, json.JSONDecodeError):
        raise ValueError(
            f"{path} was not written by qcourse.nn.save_quantized (no 'qcourse' metadata)"
        ) from None
    if doc.get("format") != FILE_FORMAT:
        raise ValueError(f"{path}: unknown format {doc.get('format')!r}; expected {FILE_FORMAT!r}")
    return tensors, doc


def load_quantized(
    path: str | os.PathLike, model: nn.Module | Callable[[], nn.Module], cache: bool = True
) -> nn.Module:
    """Load a file written by :func:`save_quantized` into ``model``, the float architecture it came from.

    Parameters
    ----------
    path
        The safetensors file.
    model
        The float model to load into (a fresh copy, e.g. ``qcourse.lm.load()``, or any instance of the
        architecture whose weights will be overwritten), or a function without arguments that builds one.
        A module is modified in place: each layer that was quantized is replaced by a
        :class:`~qcourse.nn.QuantLinear`, every other tensor is loaded with ``load_state_dict(strict=True)``.
    cache
        Passed to each :class:`~qcourse.nn.QuantLinear`.

    Returns
    -------
    nn.Module
        The model, now equal to the one that was saved (same outputs, bit for bit).
    """
    path = _check_path(path)
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise TypeError(
                f"model must be an nn.Module (the float architecture) or a function building one; got "
                f"{type(model).__name__}"
            )
        model = model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model() must return an nn.Module; got {type(model).__name__}")
    state, doc = _read(path)
    for alias, target in doc.get("aliases", {}).items():
        state[alias] = state[target]
    for name, meta in doc["quantized"].items():
        state[name + _META_SUFFIX] = encode_meta(meta)
        _swap_in(model, name, QuantLinear.from_state_dict(state, f"{name}.", cache=cache), path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path} does not fit {type(model).__name__}: {e}") from None
    return model


def _swap_in(model: nn.Module, name: str, layer: QuantLinear, path: Path) -> None:
    """Replace the float layer ``name`` of ``model`` by ``layer``, after checking it is the same shape."""
    try:
        old = model.get_submodule(name)
    except AttributeError:
        lacks = f"{path} holds quantized layer {name!r}, which {type(model).__name__} lacks"
        raise ValueError(lacks) from None
    if not isinstance(old, nn.Linear | QuantLinear) or (old.out_features, old.in_features) != (
        layer.out_features,
        layer.in_features,
    ):
        raise ValueError(
            f"{path}: layer {name!r} was saved as {layer.out_features}×{layer.in_features} linear; "
            f"the model has {old}"
        )
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)


def saved_sizes(path: str | os.PathLike) -> dict[str, int]:
    """Where the bytes of a :func:`save_quantized` file go: ``file``, ``header`` (8-byte length + JSON),
    ``tensors`` (all tensor data), ``quantized`` (the tensors of quantized layers' weights: codes, scales...).

    ``tensors + header == file`` exactly; ``quantized * 8`` is what the layers' ``storage_bits`` account for.
    """
    path = _check_path(path)
    state, _ = _read(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    file_bytes = path.stat().st_size
    quantized = sum(t.numel() * t.element_size() for k, t in state.items() if ".qweight." in f".{k}")
    return {"file": file_bytes, "header": 8 + n, "tensors": file_bytes - 8 - n, "quantized": quantized}
