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

__all__ = ["ByteTokenizer", "token_ids"]


def token_ids(ids: Sequence[int] | torch.Tensor, vocab_size: int, name: str = "tokens") -> list[int]:
    """Validate token ids for ``decode``: a 1-D integer tensor or a sequence of ints in ``[0, vocab_size)``.

    Shared by every tokenizer of the course, so they refuse the same inputs with the same messages.

    Parameters
    ----------
    ids : sequence of int or 1-D integer tensor
        Token ids; numpy integers are accepted, floats, bools and strings are not.
    vocab_size : int
        Ids must lie in ``[0, vocab_size)``.
    name : str
        The argument's name in error messages.

    Returns
    -------
    list[int]

    Examples
    --------
    >>> token_ids(torch.tensor([3, 1]), 4)
    [3, 1]
    >>> token_ids([1, 7, 9], 8, name="ids")
    Traceback (most recent call last):
    ...
    ValueError: ids must lie in [0, 8); got 9 (and 0 more out of range)
    """
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} tensor must be 1-D integer; got {ids.dtype} {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, str | bytes):
        raise TypeError(f"{name} must be a sequence of ints, not a string")
    values = []
    for t in ids:
        if isinstance(t, bool | float):
            raise TypeError(f"{name} must be ints; got {type(t).__name__}")
        try:
            values.append(operator.index(t))  # accepts numpy integers, refuses floats and strings
        except TypeError:
            raise TypeError(f"{name} must be ints; got {type(t).__name__}") from None
    bad = [t for t in values if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(
            f"{name} must lie in [0, {vocab_size}); got {bad[0]} (and {len(bad) - 1} more out of range)")
    return values


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
        values = token_ids(tokens, self.vocab_size, name="tokens")
        return bytes(values).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=256)"
