"""Byte-level tokenizer of the embedded model: one token per UTF-8 byte, vocabulary 256.

Any text a learner brings (accents, emoji, other scripts) encodes losslessly, with no vocabulary file.
The GGUF tokenizer of SmolLM2 has the same interface (``encode``, ``decode``, ``vocab_size``), so
``qcourse.lm.perplexity`` and ``generate`` work with either.

>>> tok = ByteTokenizer()
>>> tok.encode("café")
[99, 97, 102, 195, 169]
>>> tok.decode(tok.encode("café"))
'café'
>>> tok.vocab_size
256
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

__all__ = ["ByteTokenizer"]


class ByteTokenizer:
    """Text ↔ UTF-8 bytes. Token ``i`` is the byte with value ``i``."""

    vocab_size: int = 256
    name: str = "bytes"

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of ``text`` as a list of ints in ``[0, 256)``.

        >>> ByteTokenizer().encode("A\\n")
        [65, 10]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str; got {type(text).__name__}")
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        """Same as :meth:`encode` as a 1-D ``torch.long`` tensor, without a Python list (fast for MB of text).

        >>> ByteTokenizer().encode_tensor("hi").tolist()
        [104, 105]
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be str; got {type(text).__name__}")
        data = bytearray(text.encode("utf-8"))
        if not data:
            return torch.zeros(0, dtype=torch.long)
        return torch.frombuffer(data, dtype=torch.uint8).long()

    def decode(self, tokens: Sequence[int] | torch.Tensor) -> str:
        """Bytes back to text; a byte sequence that is not valid UTF-8 (a sample cut mid-character, a
        corrupted model) decodes to U+FFFD rather than raising, so generated text can always be shown.

        >>> ByteTokenizer().decode([104, 105, 255])
        'hi\\ufffd'
        """
        if isinstance(tokens, torch.Tensor):
            if tokens.ndim != 1 or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
                shape = tuple(tokens.shape)
                raise TypeError(f"tokens tensor must be 1-D integer; got {tokens.dtype} {shape}")
            tokens = tokens.tolist()
        if isinstance(tokens, str | bytes):
            raise TypeError("tokens must be a sequence of ints, not a string")
        values = []
        for t in tokens:
            if isinstance(t, bool) or isinstance(t, float):
                raise TypeError(f"tokens must be ints; got {type(t).__name__}")
            try:
                t = operator.index(t)  # accepts numpy integers, refuses floats and strings
            except TypeError:
                raise TypeError(f"tokens must be ints; got {type(t).__name__}") from None
            values.append(t)
            if not 0 <= t < 256:
                raise ValueError(f"token ids must be in [0, 256); got {t}")
        return bytes(values).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"
