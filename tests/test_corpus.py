"""Tests of the shipped Austen corpus, its whole-chapter split, and the byte tokenizer."""

from __future__ import annotations

import gzip
import hashlib
import re
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qcourse.lm import corpus
from qcourse.lm.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


# --- the corpus file ------------------------------------------------------------------------------------


def test_full_text_matches_provenance_sha256_and_readme():
    txt = corpus.full_text()
    assert len(txt) == 4_025_028
    assert len(set(txt)) == 81
    assert hashlib.sha256(txt.encode("utf-8")).hexdigest() == corpus.SHA256
    readme = (corpus.resources.files("qcourse") / "data/README.md").read_text()
    assert corpus.SHA256 in readme


def test_corrupted_corpus_is_refused(monkeypatch, tmp_path):
    bad = tmp_path / "data"
    bad.mkdir()
    (bad / "austen.txt.gz").write_bytes(gzip.compress(b"not austen"))
    monkeypatch.setattr(corpus.resources, "files", lambda pkg: tmp_path)
    corpus.full_text.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="corrupted"):
            corpus.full_text()
    finally:
        corpus.full_text.cache_clear()


# --- the split ------------------------------------------------------------------------------------------


def test_pieces_tile_the_corpus_exactly():
    ps = corpus.pieces()
    assert ps[0].start == 0 and ps[-1].end == len(corpus.full_text())
    assert all(a.end == b.start for a, b in zip(ps[:-1], ps[1:], strict=True))
    assert all(p.end > p.start for p in ps)


def test_chapters_per_novel_match_the_books():
    counts = Counter(c.novel for c in corpus.chapters())
    # chapter counts of the six novels (Emma and Mansfield Park counted across their volumes)
    assert [counts[n] for n in corpus.NOVELS] == [50, 61, 48, 55, 31, 24]
    heading = re.compile(r"^(CHAPTER|Chapter) (\d+|[IVXLC]+)\.?$", re.MULTILINE)
    txt = corpus.full_text()
    for c in corpus.chapters():
        assert heading.match(txt, c.start), txt[c.start : c.start + 30]
        assert heading.search(txt, c.start + 1, c.end) is None  # exactly one heading per chapter
    ordinals = {}
    for c in corpus.chapters():
        ordinals.setdefault(c.novel, []).append(c.number)
    assert all(v == list(range(1, len(v) + 1)) for v in ordinals.values())


def test_split_rule_and_disjoint_whole_chapters():
    chs = corpus.chapters()
    by_split = {s: [c for c in chs if c.split == s] for s in corpus.SPLITS}
    assert all(c.number % 10 == 0 for c in by_split["validation"])
    assert all(c.number % 10 == 1 and c.number > 1 for c in by_split["test"])
    assert len(by_split["validation"]) == 25 and len(by_split["test"]) == 24
    for s in corpus.SPLITS:  # every novel contributes to every split
        assert {c.novel for c in by_split[s]} == set(corpus.NOVELS)
    # front matter (title pages) is train
    assert all(p.split == "train" for p in corpus.pieces() if p.number == 0)


def test_split_texts_partition_the_corpus():
    txt = corpus.full_text()
    for s in corpus.SPLITS:
        assert corpus.text(s) == "".join(txt[p.start : p.end] for p in corpus.pieces() if p.split == s)
    assert sum(len(corpus.text(s)) for s in corpus.SPLITS) == len(txt)
    assert [len(corpus.text(s)) for s in corpus.SPLITS] == [3_307_595, 358_854, 358_579]


def test_no_held_out_passage_appears_in_train():
    train = corpus.text("train")
    g = torch.Generator().manual_seed(0)
    for split in ("validation", "test"):
        held = corpus.text(split)
        for start in torch.randint(0, len(held) - 200, (20,), generator=g).tolist():
            assert held[start : start + 200] not in train


def test_bad_split_names_the_allowed_values():
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'validation', 'test'\]"):
        corpus.text("dev")
    with pytest.raises(ValueError, match="split must be one of"):
        corpus.token_stream(TOK, "valid", 10)


# --- token streams and calibration windows --------------------------------------------------------------


def test_token_stream_is_a_prefix_of_the_encoded_split():
    ids = corpus.token_stream(TOK, "validation", 1000)
    assert ids.dtype == torch.long and ids.shape == (1000,)
    assert ids.tolist() == TOK.encode(corpus.text("validation"))[:1000]
    assert corpus.encode_split(TOK, "validation") is corpus.encode_split(TOK, "validation")  # cached


def test_encode_split_without_fast_path_matches():
    class ListOnly:
        def encode(self, text: str) -> list[int]:
            return list(text.encode("utf-8"))

    slow = ListOnly()
    assert torch.equal(corpus.encode_split(slow, "test"), corpus.encode_split(TOK, "test"))


def test_token_stream_bad_arguments():
    n = len(corpus.encode_split(TOK, "test"))
    with pytest.raises(ValueError, match="exceeds"):
        corpus.token_stream(TOK, "test", n + 1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_tokens must be a positive int"):
            corpus.token_stream(TOK, "test", bad)
    with pytest.raises(TypeError, match="encode"):
        corpus.token_stream(object(), "test", 10)


def test_calibration_windows_are_seeded_train_windows():
    a = corpus.calibration_tokens(TOK, 8, 64, seed=3)
    assert a.shape == (8, 64) and a.dtype == torch.long
    assert torch.equal(a, corpus.calibration_tokens(TOK, 8, 64, seed=3))
    assert not torch.equal(a, corpus.calibration_tokens(TOK, 8, 64, seed=4))
    train = corpus.text("train").encode("utf-8")
    for row in a:
        assert bytes(row.tolist()) in train


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_sequences": 0, "seq_len": 8}, "n_sequences"),
        ({"n_sequences": 2, "seq_len": -1}, "seq_len"),
        ({"n_sequences": 2, "seq_len": 8, "seed": -1}, "seed"),
        ({"n_sequences": 2, "seq_len": 10**9}, "exceeds"),
    ],
)
def test_calibration_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        corpus.calibration_tokens(TOK, **kwargs)


# --- the byte tokenizer ---------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_tokenizer_round_trips_any_unicode_text(s):
    ids = TOK.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert ids == list(s.encode("utf-8"))
    assert TOK.decode(ids) == s
    assert TOK.encode_tensor(s).tolist() == ids


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 255), max_size=64))
def test_decode_never_raises_on_any_byte_sequence(ids):
    out = TOK.decode(ids)
    assert out == bytes(ids).decode("utf-8", errors="replace")
    assert TOK.decode(torch.tensor(ids, dtype=torch.long)) == out


def test_tokenizer_bad_input():
    with pytest.raises(TypeError, match="text must be str"):
        TOK.encode(b"bytes")
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        TOK.decode([65, 256])
    with pytest.raises(TypeError, match="ints"):
        TOK.decode([65.0])
    with pytest.raises(TypeError, match="not a string"):
        TOK.decode("abc")
    with pytest.raises(TypeError, match="1-D integer"):
        TOK.decode(torch.zeros(3))
