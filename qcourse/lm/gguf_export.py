"""Writing the course's models as GGUF files with llama.cpp's ternary block types TQ1_0 and TQ2_0.

llama.cpp stores ternary weights in blocks of 256 along a row (``QK_K``), each with one fp16 scale ``d``
(``ggml/src/ggml-common.h``); a weight is ``d·t`` with ``t ∈ {−1, 0, 1}`` stored as ``q = t + 1``:

* **TQ2_0** (66 bytes per block, 2.0625 bits per weight): 64 bytes of 2-bit codes, then ``d``. The block is
  two halves of 128; in half ``h``, byte ``j`` (0–31) holds ``q[128h + 32m + j]`` in bits ``2m, 2m+1`` for
  ``m = 0…3``.
* **TQ1_0** (54 bytes per block, 1.6875 bits per weight): five trits per byte in base 3, then ``d``. Bytes
  0–31 hold ``q[j + 32k]``, ``k = 0…4``, bytes 32–47 hold ``q[160 + j + 16k]``, as ``n = Σ q·3^(4−k)``; bytes
  48–51 (``qh``) hold ``q[240 + j + 4k]``, ``k = 0…3``, as ``Σ q·3^(4−k)`` (a fifth trit 0). Each ``n ∈
  [0, 242]`` is stored as ``ceil(256·n/243)``, so that trit ``k`` is recovered with one 8-bit multiply by
  ``3^k`` and ``(x·3) >> 8`` — no division at decode time.

The encoders here are written from that layout; the tests prove that the ``gguf`` package's own decoders
return exactly ``d·t`` for our bytes, and that our bytes equal the package's own encoder's.

A BitNet b1.58 model (:class:`~qcourse.nn.bitlinear.BitLinear` blocks, per-tensor scale ``γ``) exports
losslessly up to the scale's precision: every block of a tensor gets ``d = fp16(γ)`` (0 for an all-zero
block, as llama.cpp writes it). The file says ``general.architecture = llama`` so
:func:`qcourse.lm.load_gguf` (and llama.cpp) read its tensors; BitLinear's input normalisation and 8-bit
activations are not part of the llama architecture, so :func:`load_bitnet_gguf` rebuilds them, and the key
``qcourse.bitnet`` marks such files.

>>> import torch
>>> t = torch.tensor([-1, 0, 1, 1] * 64, dtype=torch.int8)
>>> len(encode_tq2_0(t, 0.5)), len(encode_tq1_0(t, 0.5))      # one block each: 66 and 54 bytes
(66, 54)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qcourse.lm.model import Llama, LlamaConfig

__all__ = [
    "QK_K", "TERNARY_TYPES", "encode_tq1_0", "encode_tq2_0", "decode_ternary", "add_llama_metadata",
    "write_gguf", "load_bitnet_gguf", "kquant_tensors", "apply_kquant",
]

#: weights per block of llama.cpp's k-quant and ternary types
QK_K = 256
#: bytes per block of each ternary type
TERNARY_TYPES = {"TQ1_0": 54, "TQ2_0": 66}

_POW3_DESC = np.array([81, 27, 9, 3, 1], dtype=np.int32)


def _blocks(t: torch.Tensor) -> np.ndarray:
    if not isinstance(t, torch.Tensor) or t.dtype not in (torch.int8, torch.int16, torch.int32, torch.int64):
        raise TypeError(f"t must be an integer torch.Tensor of trits; got {getattr(t, 'dtype', type(t))}")
    a = t.detach().cpu().numpy().astype(np.int32).reshape(-1)
    if a.size == 0 or a.size % QK_K:
        raise ValueError(f"t must hold a positive multiple of {QK_K} trits (whole blocks); got {a.size}")
    if np.abs(a).max() > 1:
        raise ValueError("t must hold trits in {-1, 0, 1}")
    return a.reshape(-1, QK_K)


def _scales(blocks: np.ndarray, d: float) -> np.ndarray:
    if not np.isfinite(d) or d < 0:
        raise ValueError(f"d must be a finite non-negative scale; got {d!r}")
    # llama.cpp's d is the block's max |weight|: the scale for a block holding a ±1, 0 for an all-zero block
    nonzero = (blocks != 0).any(axis=1)
    return np.where(nonzero, np.float16(d), np.float16(0)).astype(np.float16).reshape(-1, 1)


def encode_tq2_0(t: torch.Tensor, d: float) -> bytes:
    """TQ2_0 bytes of the trits ``t`` (length a multiple of 256) with scale ``d`` (stored as fp16)."""
    blocks = _blocks(t)
    q = (blocks + 1).astype(np.uint8).reshape(-1, 2, 4, 32)
    packed = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    out = np.concatenate([packed.reshape(-1, 64), _scales(blocks, d).view(np.uint8)], axis=1)
    return out.tobytes()


def encode_tq1_0(t: torch.Tensor, d: float) -> bytes:
    """TQ1_0 bytes of the trits ``t`` (length a multiple of 256) with scale ``d`` (stored as fp16)."""
    blocks = _blocks(t)
    q = (blocks + 1).astype(np.int32)
    n = len(blocks)
    head = (q[:, :160].reshape(n, 5, 32) * _POW3_DESC[None, :, None]).sum(1)
    mid = (q[:, 160:240].reshape(n, 5, 16) * _POW3_DESC[None, :, None]).sum(1)
    tail = (q[:, 240:].reshape(n, 4, 4) * _POW3_DESC[None, :4, None]).sum(1)
    vals = np.concatenate([head, mid, tail], axis=1)
    stored = ((vals * 256 + 242) // 243).astype(np.uint8)  # ceil(256 n / 243)
    return np.concatenate([stored, _scales(blocks, d).view(np.uint8)], axis=1).tobytes()


def decode_ternary(data: bytes | np.ndarray, qtype: str) -> np.ndarray:
    """Our own decoder of TQ1_0/TQ2_0 bytes to float32 weights (the tests compare it with ``gguf``'s)."""
    if qtype not in TERNARY_TYPES:
        raise ValueError(f"qtype must be one of {sorted(TERNARY_TYPES)}; got {qtype!r}")
    raw = np.frombuffer(bytes(data), dtype=np.uint8).reshape(-1, TERNARY_TYPES[qtype])
    d = raw[:, -2:].copy().view(np.float16).astype(np.float32)
    if qtype == "TQ2_0":
        packed = raw[:, :64].reshape(-1, 2, 1, 32)
        q = (packed >> np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
        return (q.reshape(-1, QK_K).astype(np.float32) - 1) * d
    trits = []
    for lo, hi, count in ((0, 32, 5), (32, 48, 5), (48, 52, 4)):
        part = raw[:, lo:hi].astype(np.uint16)
        for k in range(count):
            trits.append(((part * 3**k % 256) * 3) >> 8)
    # trits were appended per byte range, trit k of every byte together: reorder to the value index
    head = np.stack(trits[0:5], axis=1).reshape(-1, 160)
    mid = np.stack(trits[5:10], axis=1).reshape(-1, 80)
    tail = np.stack(trits[10:14], axis=1).reshape(-1, 16)
    q = np.concatenate([head, mid, tail], axis=1).astype(np.float32)
    return (q - 1) * d


_GGUF_BLOCK = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def _gguf_name(name: str) -> str:
    top = {"embed_tokens": "token_embd", "norm": "output_norm", "lm_head": "output"}
    if name in top:
        return f"{top[name]}.weight"
    parts = name.split(".")
    return f"blk.{parts[1]}.{_GGUF_BLOCK['.'.join(parts[2:])]}.weight"


def _weights(model: Llama) -> list[tuple[str, nn.Module | torch.Tensor]]:
    """Every tensor a GGUF needs, in llama.cpp's order: ``(qcourse name, module or tensor)``."""
    out: list[tuple[str, nn.Module | torch.Tensor]] = [("embed_tokens", model.embed_tokens.weight)]
    for i, block in enumerate(model.layers):
        for sub, gname in _GGUF_BLOCK.items():
            mod = block.get_submodule(sub)
            out.append((f"layers.{i}.{sub}", mod.weight if gname.endswith("norm") else mod))
    out.append(("norm", model.norm.weight))
    if not model.config.tie_embeddings:
        out.append(("lm_head", model.lm_head))
    return out


def add_llama_metadata(writer: Any, cfg: LlamaConfig) -> None:
    """The ``llama.*`` hyper-parameters of ``cfg`` on a ``gguf.GGUFWriter`` (what :func:`load_gguf` reads)."""
    writer.add_block_count(cfg.n_layers)
    writer.add_context_length(cfg.max_seq_len)
    writer.add_embedding_length(cfg.d_model)
    writer.add_feed_forward_length(cfg.d_ff)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)


def write_gguf(model: Llama, path: str | os.PathLike, ternary_type: str = "TQ2_0",
               linear_type: str | None = None, tensors: Mapping[str, Any] | None = None,
               embedding_type: str = "F32", metadata_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write ``model`` as a llama GGUF; BitLinear layers in ``ternary_type``, everything else as F32 unless
    ``tensors`` or ``linear_type`` says otherwise.

    Parameters
    ----------
    model
        A qcourse :class:`~qcourse.lm.model.Llama`.
    path
        Output file.
    ternary_type
        ``"TQ2_0"`` or ``"TQ1_0"``, for :class:`~qcourse.nn.bitlinear.BitLinear` layers.
    linear_type
        ``"Q4_0"`` or ``"Q2_K"``: every other block linear (``nn.Linear`` or ``QuantLinear``, by its
        ``weight``) is encoded round-to-nearest with :func:`qcourse.kquants.encode`, as llama.cpp's
        reference does, in the type llama.cpp stores for its row length
        (:func:`qcourse.kquants.stored_type`: rows that are not whole Q2_K super-blocks become IQ4_NL);
        ``None`` keeps them F32. Norms and the head stay F32.
    tensors
        Pre-encoded block weights, ``{qcourse name: KQuantTensor}`` (for example GPTQ-rounded ones from
        :func:`kquant_tensors`); they take precedence over ``linear_type``.
    embedding_type
        ``"F32"`` or ``"Q8_0"`` (llama.cpp's 8-bit type, encoded by the ``gguf`` package) for the token
        embedding. SmolLM2's source file stores it as Q8_0, and re-encoding those values in Q8_0 is
        lossless; the summary says whether it was.
    metadata_from
        A GGUF file whose ``tokenizer.*`` keys (vocabulary, merges, special ids) are copied, so that
        llama.cpp can tokenize prompts for the written file (``llama-cli -m file.gguf -p …``).

    Returns a summary: file bytes, bits per weight of the ternary tensors as stored (their bytes·8 / their
    weights), the same for the k-quant tensors, the bytes of every tensor's data, the tensor types, and
    whether the embedding was stored losslessly.
    """
    import gguf

    from qcourse.lm.gguf import permute_qk
    from qcourse.nn.bitlinear import BitLinear

    if not isinstance(model, Llama):
        raise TypeError(f"model must be a qcourse Llama; got {type(model).__name__}")
    if ternary_type not in TERNARY_TYPES:
        raise ValueError(f"ternary_type must be one of {sorted(TERNARY_TYPES)}; got {ternary_type!r}")
    from qcourse import kquants

    if linear_type is not None and linear_type not in kquants.KQUANT_TYPES:
        allowed = sorted(kquants.KQUANT_TYPES)
        raise ValueError(f"linear_type must be None or one of {allowed}; got {linear_type!r}")
    tensors = dict(tensors or {})
    known = {name for name, _ in _weights(model)}
    for name, kt in tensors.items():
        if name not in known or not name.startswith("layers."):
            raise ValueError(f"tensors: {name!r} is not a block linear of this model")
        if not isinstance(kt, kquants.KQuantTensor):
            raise TypeError(f"tensors[{name!r}] must be a qcourse.kquants.KQuantTensor; "
                            f"got {type(kt).__name__}")
    if embedding_type not in ("F32", "Q8_0"):
        raise ValueError(f"embedding_type must be 'F32' or 'Q8_0'; got {embedding_type!r}")
    if metadata_from is not None and not Path(metadata_from).is_file():
        raise ValueError(f"metadata_from must be an existing GGUF file; got {str(metadata_from)!r}")
    encode = encode_tq2_0 if ternary_type == "TQ2_0" else encode_tq1_0
    qtype = gguf.GGMLQuantizationType[ternary_type]
    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    add_llama_metadata(w, cfg)
    bitnet = any(isinstance(m, BitLinear) for m in model.modules())
    w.add_bool("qcourse.bitnet", bitnet)
    if metadata_from is not None:
        _copy_tokenizer(metadata_from, w)
    types, ternary_bytes, ternary_weights, k_bytes, k_weights = {}, 0, 0, 0, 0
    tensor_bytes, embedding_lossless = {}, True
    for name, obj in _weights(model):
        gname = _gguf_name(name)
        heads = cfg.n_heads if name.endswith("q_proj") else cfg.n_kv_heads if name.endswith("k_proj") else 0
        if isinstance(obj, BitLinear):
            t, gamma = obj.trits()
            t = permute_qk(t.float(), heads).to(torch.int8) if heads else t
            data = encode(t, float(gamma))
            arr = np.frombuffer(data, dtype=np.uint8).reshape(t.shape[0], -1)
            w.add_tensor(gname, arr, raw_shape=arr.shape, raw_dtype=qtype)
            types[name] = ternary_type
            tensor_bytes[name] = len(data)
            ternary_bytes += len(data)
            ternary_weights += t.numel()
            continue
        block_linear = isinstance(obj, nn.Module) and name.startswith("layers.")
        kt = tensors.get(name)
        if kt is None and block_linear and linear_type is not None:
            stored = kquants.stored_type(linear_type, obj.weight.shape[1])
            kt = kquants.encode_tensor(obj.weight.detach().float(), stored)
        if kt is not None:
            if tuple(kt.shape) != tuple(obj.weight.shape):
                raise ValueError(f"tensors[{name!r}] has shape {kt.shape}; the layer's weight is "
                                 f"{tuple(obj.weight.shape)}")
            # blocks run along rows, so llama.cpp's q/k row permutation moves whole rows of bytes
            rows = torch.from_numpy(np.frombuffer(kt.data, dtype=np.uint8).reshape(kt.shape[0], -1).copy())
            arr = (permute_qk(rows, heads) if heads else rows).numpy()
            w.add_tensor(gname, arr, raw_shape=arr.shape, raw_dtype=gguf.GGMLQuantizationType[kt.qtype])
            types[name] = kt.qtype
            tensor_bytes[name] = len(kt.data)
            k_bytes += len(kt.data)
            k_weights += kt.shape[0] * kt.shape[1]
            continue
        tensor = obj.weight if isinstance(obj, nn.Module) else obj
        arr = tensor.detach().float()
        arr = permute_qk(arr, heads) if heads else arr
        if name == "embed_tokens" and embedding_type == "Q8_0":
            from gguf.quants import dequantize, quantize

            q8 = quantize(arr.numpy(), gguf.GGMLQuantizationType.Q8_0)
            back = dequantize(q8, gguf.GGMLQuantizationType.Q8_0)
            embedding_lossless = bool(np.array_equal(back, arr.numpy()))
            w.add_tensor(gname, q8, raw_shape=q8.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            types[name] = "Q8_0"
            tensor_bytes[name] = q8.nbytes
            continue
        w.add_tensor(gname, arr.numpy().copy())
        types[name] = "F32"
        tensor_bytes[name] = 4 * arr.numel()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {
        "path": str(path),
        "bytes": Path(path).stat().st_size,
        "ternary_type": ternary_type,
        "ternary_bits_per_weight": 8 * ternary_bytes / ternary_weights if ternary_weights else None,
        "kquant_bits_per_weight": 8 * k_bytes / k_weights if k_weights else None,
        "types": types,
        "tensor_bytes": tensor_bytes,
        "embedding_lossless": embedding_lossless,
    }


def _copy_tokenizer(src: str | os.PathLike, writer: Any) -> None:
    """Copy every ``tokenizer.*`` key of the GGUF file ``src`` onto ``writer``, with its value types."""
    import gguf

    from qcourse.lm.gguf import _contents

    reader = gguf.GGUFReader(str(src))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = gguf.GGUFValueType(field.types[0])
        sub = gguf.GGUFValueType(field.types[1]) if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, _contents(field), vtype, sub_type=sub)


def kquant_tensors(model: Llama, qtype: str, hessians: Mapping[str, torch.Tensor] | None = None,
                   percdamp: float = 0.01, progress: bool = False) -> dict[str, Any]:
    """Every block linear of ``model`` encoded in ``qtype`` (``"Q4_0"`` or ``"Q2_K"``), or in the type
    llama.cpp's quantizer falls back to when a row is not whole blocks of ``qtype``
    (:func:`qcourse.kquants.stored_type`; each tensor's ``qtype`` says which it got).

    Without ``hessians``: round-to-nearest as llama.cpp's reference encoder. With ``hessians`` (``{layer
    name: H}``, e.g. from :func:`qcourse.nn.collect_hessians`): GPTQ rounding on the type's own grid
    (:func:`qcourse.kquants.encode_gptq`), so the file stays a standard llama.cpp file. Returns ``{qcourse
    name: KQuantTensor}`` for :func:`write_gguf`'s ``tensors`` and :func:`apply_kquant`.
    """
    from qcourse import kquants

    if not isinstance(model, Llama):
        raise TypeError(f"model must be a qcourse Llama; got {type(model).__name__}")
    kquants._check_qtype(qtype)
    names = [n for n, obj in _weights(model) if isinstance(obj, nn.Module) and n.startswith("layers.")]
    if hessians is not None:
        missing = [n for n in names if n not in hessians]
        if missing:
            raise ValueError(f"hessians lacks {len(missing)} block linears, e.g. {missing[0]!r}")
    iterator: Any = names
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc=f"encode {qtype}", unit="layer")
    out = {}
    for name in iterator:
        wt = model.get_submodule(name).weight.detach().float()
        stored = kquants.stored_type(qtype, wt.shape[1])
        if hessians is None:
            out[name] = kquants.encode_tensor(wt, stored)
        else:
            out[name] = kquants.encode_gptq(wt, hessians[name], stored, percdamp=percdamp)[0]
    return out


def apply_kquant(model: Llama, tensors: Mapping[str, Any]) -> Llama:
    """Set each named ``nn.Linear``'s weight to its tensor's dequantized weights, in place; returns ``model``.

    The model then computes exactly what a GGUF holding ``tensors`` decodes to.
    """
    for name, kt in tensors.items():
        mod = model.get_submodule(name)
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{name!r} must be an nn.Linear; got {type(mod).__name__}")
        with torch.no_grad():
            mod.weight.copy_(torch.from_numpy(kt.dequantized).to(mod.weight.dtype))
    return model


def load_bitnet_gguf(path: str | os.PathLike, act_bits: int | None = 8) -> Llama:
    """Read a GGUF written by :func:`write_gguf` from a BitNet model back into a BitNet model.

    The tensors are read by :func:`qcourse.lm.load_gguf` (the ``gguf`` package's decoders); every block
    linear then becomes a frozen :class:`~qcourse.nn.bitlinear.BitLinear` whose trits are the signs of the
    decoded weights and whose ``γ`` is their largest magnitude (every non-zero weight of a tensor is ``±γ``).
    """
    from qcourse.lm.gguf import load_gguf
    from qcourse.lm.tokenizer import ByteTokenizer
    from qcourse.nn.bitlinear import BitLinear

    model = load_gguf(path, tokenizer=False)
    for name, mod in list(model.named_modules()):
        if not (isinstance(mod, nn.Linear) and name.startswith("layers.")):
            continue
        wt = mod.weight.detach()
        layer = BitLinear.from_trits(torch.sign(wt).to(torch.int8), wt.abs().max(), act_bits=act_bits)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.eval())
    model.tokenizer = ByteTokenizer()
    return model.eval()
