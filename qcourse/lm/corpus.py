"""The Austen corpus shipped with the package, and its train / validation / test split by whole chapters.

``qcourse/data/austen.txt.gz`` holds Jane Austen's six novels (public domain; provenance in
``qcourse/data/README.md``). Its sha256 is checked on every load, so a corrupted install fails loudly
instead of silently shifting every perplexity in the course.

Split rule (deterministic, no RNG): the text is cut at every chapter heading (a line ``CHAPTER N`` or
``Chapter N``, arabic or roman numeral) and at every novel's title line. Counting the chapters of each novel
from 1 across its volumes, chapters 10, 20, 30, ... go to **validation**, chapters 11, 21, 31, ... to
**test**, and everything else (all other chapters, title pages, volume headings, "THE END", the note on the
text) to **train**. Whole chapters are held out so that validation text is never a neighbouring line of a
training line; the novels all contribute to every split. A split's text is its pieces in corpus order.

>>> SPLITS
('train', 'validation', 'test')
>>> sum(len(text(s)) for s in SPLITS) == len(full_text())
True
>>> [c.number for c in chapters() if c.novel == "Persuasion" and c.split != "train"]
[10, 11, 20, 21]
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import re
import weakref
from dataclasses import dataclass
from importlib import resources
from typing import Any

import torch

__all__ = [
    "SPLITS",
    "NOVELS",
    "SHA256",
    "Piece",
    "chapters",
    "pieces",
    "full_text",
    "text",
    "encode_split",
    "token_stream",
    "calibration_tokens",
]

#: the three splits, in the order their names are usually listed
SPLITS = ("train", "validation", "test")
#: the six novels, in corpus order, as their title lines read
NOVELS = (
    "SENSE AND SENSIBILITY",
    "PRIDE AND PREJUDICE",
    "MANSFIELD PARK",
    "EMMA",
    "NORTHANGER ABBEY",
    "Persuasion",
)
#: sha256 of the uncompressed UTF-8 text (see qcourse/data/README.md)
SHA256 = "f2516f2139e3cecf49657122fed58ac46313f1fdff32a26fc66789293e92d573"

_HEADING = re.compile(r"^(?:CHAPTER|Chapter) (?:\d+|[IVXLC]+)\.?$", re.MULTILINE)
_TITLE = re.compile(r"^(?:" + "|".join(re.escape(t) for t in NOVELS) + r")$", re.MULTILINE)


@dataclass(frozen=True)
class Piece:
    """A contiguous span ``[start, end)`` of the full text: one chapter, or front matter (``number == 0``)."""

    novel: str
    number: int  # chapter ordinal within the novel, from 1 across volumes; 0 for title pages
    start: int
    end: int
    split: str


def _split_of(number: int) -> str:
    if number > 0 and number % 10 == 0:
        return "validation"
    if number > 1 and number % 10 == 1:
        return "test"
    return "train"


@functools.cache
def full_text() -> str:
    """The whole corpus (4,025,028 characters), checked against :data:`SHA256`."""
    raw = resources.files("qcourse").joinpath("data/austen.txt.gz").read_bytes()
    data = gzip.decompress(raw)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise RuntimeError(
            f"qcourse/data/austen.txt.gz is corrupted: sha256 of its text is {digest}, expected {SHA256}; "
            "reinstall qcourse"
        )
    return data.decode("utf-8")


@functools.cache
def pieces() -> tuple[Piece, ...]:
    """All pieces (chapters and front matter) in corpus order; they tile the full text exactly.

    >>> ps = pieces()
    >>> ps[0].start, ps[-1].end == len(full_text())
    (0, True)
    """
    txt = full_text()
    cuts = sorted({m.start() for m in _HEADING.finditer(txt)} | {m.start() for m in _TITLE.finditer(txt)})
    if not cuts or cuts[0] != 0:
        raise RuntimeError("corpus does not start with a novel title; the chapter parser needs updating")
    bounds = cuts + [len(txt)]
    out: list[Piece] = []
    novel, number = "", 0
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        first_line = txt[start : txt.find("\n", start)]
        if _TITLE.fullmatch(first_line):
            novel, number = first_line, 0
        else:
            number += 1
        out.append(Piece(novel, number, start, end, _split_of(number)))
    return tuple(out)


def chapters() -> list[Piece]:
    """The chapters only (269 of them), each with its novel, ordinal and split."""
    return [p for p in pieces() if p.number > 0]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}; got {split!r}")


@functools.cache
def text(split: str) -> str:
    """The text of one split: its pieces concatenated in corpus order.

    >>> len(text("train")) > 8 * len(text("validation")) > 0
    True
    """
    _check_split(split)
    txt = full_text()
    return "".join(txt[p.start : p.end] for p in pieces() if p.split == split)


# Encoded splits, cached per tokenizer object (dropped when the tokenizer is garbage-collected).
_ENCODED: weakref.WeakKeyDictionary[Any, dict[str, torch.Tensor]] = weakref.WeakKeyDictionary()


def _check_tokenizer(tokenizer: Any) -> None:
    if not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"tokenizer must have an encode(str) method; got {type(tokenizer).__name__}")


def encode_split(tokenizer: Any, split: str) -> torch.Tensor:
    """All tokens of ``split`` as a 1-D ``torch.long`` tensor (cached per tokenizer)."""
    _check_tokenizer(tokenizer)
    _check_split(split)
    try:
        cache = _ENCODED.setdefault(tokenizer, {})
    except TypeError:  # tokenizer not weak-referenceable: encode every time
        cache = {}
    if split not in cache:
        fast = getattr(tokenizer, "encode_tensor", None)
        ids = fast(text(split)) if callable(fast) else torch.tensor(tokenizer.encode(text(split)))
        cache[split] = ids.to(torch.long)
    return cache[split]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def token_stream(tokenizer: Any, split: str, n_tokens: int) -> torch.Tensor:
    """The first ``n_tokens`` tokens of ``split`` (1-D ``torch.long``).

    >>> from qcourse.lm.tokenizer import ByteTokenizer
    >>> tok = ByteTokenizer()
    >>> tok.decode(token_stream(tok, "train", 21))
    'SENSE AND SENSIBILITY'
    """
    _positive_int("n_tokens", n_tokens)
    ids = encode_split(tokenizer, split)
    if n_tokens > len(ids):
        raise ValueError(f"n_tokens={n_tokens} exceeds the {len(ids)} tokens of the {split!r} split")
    return ids[:n_tokens]


def calibration_tokens(tokenizer: Any, n_sequences: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``n_sequences`` random windows of ``seq_len`` tokens from the TRAIN split, ``[n_sequences, seq_len]``.

    Window starts are drawn uniformly by a ``torch.Generator`` seeded with ``seed``, so the same arguments
    always give the same batch; calibration never sees validation or test text.

    >>> from qcourse.lm.tokenizer import ByteTokenizer
    >>> x = calibration_tokens(ByteTokenizer(), 4, 32, seed=0)
    >>> x.shape, x.dtype, bool((x == calibration_tokens(ByteTokenizer(), 4, 32, seed=0)).all())
    (torch.Size([4, 32]), torch.int64, True)
    """
    _positive_int("n_sequences", n_sequences)
    _positive_int("seq_len", seq_len)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int; got {seed!r}")
    ids = encode_split(tokenizer, "train")
    if seq_len > len(ids):
        raise ValueError(f"seq_len={seq_len} exceeds the {len(ids)} tokens of the train split")
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len + 1, (n_sequences,), generator=g)
    return ids[starts[:, None] + torch.arange(seq_len)]
