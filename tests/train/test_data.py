"""Tests for nas.data: corpora, vocabulary, caching, batching."""

import pickle

import numpy as np
import pytest
import torch

from nas import corpus_files, data
from nas.data import (
    DataError,
    batchify,
    iterate_chunks,
    load_corpus,
    unigram_entropy_bits,
)

TINY_SHAKESPEARE_BYTES = 1_115_394


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    return load_corpus(cache_dir=tmp_path_factory.mktemp("cache"))


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_default_corpus_has_65_symbols_and_90_5_5_splits(shakespeare):
    n = TINY_SHAKESPEARE_BYTES
    assert shakespeare.name == "tinyshakespeare"
    assert shakespeare.vocab_size == 66 and shakespeare.symbols[0] == "<unk>"
    assert list(shakespeare.symbols[1:]) == sorted(shakespeare.symbols[1:])
    assert [len(shakespeare.split(s)) for s in ("train", "val", "test")] == [
        n * 90 // 100,
        n * 95 // 100 - n * 90 // 100,
        n - n * 95 // 100,
    ]
    assert shakespeare.train.dtype == np.uint8
    assert dict(shakespeare.unknown) == {"val": 0, "test": 0}


def test_default_corpus_decodes_to_the_packaged_text(shakespeare):
    text = data.default_corpus_path().read_text(encoding="utf-8")
    ids = np.concatenate([shakespeare.train, shakespeare.val, shakespeare.test])
    assert shakespeare.decode(ids) == text
    np.testing.assert_array_equal(shakespeare.encode(text), ids)


def test_unigram_entropy_of_tiny_shakespeare_is_4_78(shakespeare):
    text = data.default_corpus_path().read_text(encoding="utf-8")
    assert unigram_entropy_bits(shakespeare.encode(text)) == pytest.approx(
        4.78, abs=0.01
    )


def test_round_trip_and_unknown_symbol(shakespeare):
    assert (
        shakespeare.decode(shakespeare.encode("To be, or not to be"))
        == "To be, or not to be"
    )
    assert shakespeare.decode(shakespeare.encode("naïve")) == "na<unk>ve"


def test_split_rejects_unknown_name(shakespeare):
    with pytest.raises(ValueError, match="expected one of"):
        shakespeare.split("dev")


def test_unseen_val_and_test_symbols_are_counted(tmp_path):
    text = "ab" * 45 + "bcc a" + "éab c"  # 90 train, 5 val, 5 test characters
    corpus = load_corpus(
        write(tmp_path / "small.txt", text), cache_dir=tmp_path / "cache"
    )
    assert corpus.symbols == ("<unk>", "a", "b")
    assert dict(corpus.unknown) == {"val": 3, "test": 3}
    assert corpus.decode(corpus.val) == "b<unk><unk><unk>a"
    assert corpus.decode(corpus.test) == "<unk>ab<unk><unk>"
    with pytest.raises(TypeError):
        corpus.unknown["val"] = 0


def test_non_ascii_text_is_read_as_characters(tmp_path):
    text = "héllo wörld ✓ " * 20
    corpus = load_corpus(write(tmp_path / "u.txt", text), cache_dir=tmp_path / "cache")
    assert "✓" in corpus.symbols
    assert (
        corpus.decode(np.concatenate([corpus.train, corpus.val, corpus.test])) == text
    )


def test_file_named_enwik8_is_byte_level(tmp_path):
    raw = "é".encode() * 50  # 100 bytes, 50 characters
    (tmp_path / "enwik8").write_bytes(raw)
    corpus = load_corpus(tmp_path / "enwik8", cache_dir=tmp_path / "cache")
    assert corpus.symbols == ("<unk>", "\xa9", "\xc3")
    assert [len(corpus.train), len(corpus.val), len(corpus.test)] == [90, 5, 5]
    ids = np.concatenate([corpus.train, corpus.val, corpus.test])
    assert corpus.decode(ids).encode("latin-1") == raw


@pytest.mark.parametrize(
    "names",
    [
        ("train.txt", "valid.txt", "test.txt"),
        ("train.txt", "val.txt", "test.txt"),
        ("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"),
    ],
)
def test_folder_layouts(tmp_path, names):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in zip(names, ("abcabc", "abd", "ca")):
        write(folder / name, text)
    corpus = load_corpus(folder, cache_dir=tmp_path / "cache")
    assert corpus.name == "corpus"
    assert corpus.decode(corpus.train) == "abcabc"
    assert corpus.decode(corpus.val) == "ab<unk>"
    assert corpus.decode(corpus.test) == "ca"
    assert dict(corpus.unknown) == {"val": 1, "test": 0}


def test_ptb_char_files_win_over_word_level_files(tmp_path):
    for split in ("train", "valid", "test"):
        write(tmp_path / f"ptb.{split}.txt", "word level")
        write(tmp_path / f"ptb.char.{split}.txt", "c h a r")
    corpus = load_corpus(tmp_path, cache_dir=tmp_path / "cache")
    assert corpus.decode(corpus.train) == "char\n"


# PTB's character files: one sentence a line, characters separated by single spaces, "_" between
# words (the real files also start each line with a space).
PTB_TRAIN = " a e r _ b a n k n o t e \n t h e _ c a t \n\n"
PTB_VALID = " t h e _ b a t \n"
PTB_TEST = " c a t"  # no final newline: the last line still ends with one end-of-line symbol


def write_ptb(folder):
    folder.mkdir()
    for split, text in (("train", PTB_TRAIN), ("valid", PTB_VALID), ("test", PTB_TEST)):
        write(folder / f"ptb.char.{split}.txt", text)
    return folder


def test_ptb_char_layout_is_read_as_spaced_characters(tmp_path):
    corpus = load_corpus(write_ptb(tmp_path / "ptb"), cache_dir=tmp_path / "cache")
    assert corpus.format == "spaced"
    assert corpus.decode(corpus.train) == "aer_banknote\nthe_cat\n\n"
    assert corpus.decode(corpus.val) == "the_bat\n" and corpus.decode(corpus.test) == "cat\n"
    assert " " not in corpus.symbols and "\n" in corpus.symbols
    # the published protocol's symbols: every token of line.split() plus one <eos> per line
    for split, text in (("train", PTB_TRAIN), ("val", PTB_VALID), ("test", PTB_TEST)):
        lines = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        assert len(corpus.split(split)) == sum(len(line.split()) + 1 for line in lines)


def test_format_is_part_of_the_cache_key(tmp_path):
    folder = write_ptb(tmp_path / "ptb")
    spaced = load_corpus(folder, cache_dir=tmp_path / "cache")
    chars = load_corpus(folder, cache_dir=tmp_path / "cache", format="chars")
    assert chars.format == "chars" and chars.decode(chars.val) == PTB_VALID
    assert " " in chars.symbols and len(chars.val) == 2 * len(spaced.val)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2
    again = load_corpus(folder, cache_dir=tmp_path / "cache", format="spaced")
    assert again.symbols == spaced.symbols


def test_spaced_format_for_any_file(tmp_path):
    source = write(tmp_path / "spaced.txt", "a b\n" * 50)
    corpus = load_corpus(source, cache_dir=tmp_path / "cache", format="spaced")
    assert corpus.symbols == ("<unk>", "\n", "a", "b")
    assert len(corpus.train) + len(corpus.val) + len(corpus.test) == 150


def test_spaced_format_refuses_multi_character_tokens(tmp_path):
    source = write(tmp_path / "words.txt", "a b\nthe cat\n")
    with pytest.raises(DataError, match=r"words\.txt: line 2: spaced format expects single characters .* 'the'"):
        load_corpus(source, cache_dir=tmp_path / "cache", format="spaced")


def test_unknown_format_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"data\.format: expected one of auto, chars, bytes, spaced, got 'words'"):
        load_corpus(write(tmp_path / "s.txt", "abc" * 20), cache_dir=tmp_path, format="words")


def test_bytes_format_on_any_file(tmp_path):
    corpus = load_corpus(write(tmp_path / "s.txt", "é" * 50), cache_dir=tmp_path, format="bytes")
    assert corpus.format == "bytes" and corpus.symbols == ("<unk>", "\xa9", "\xc3")


def test_missing_path_raises(tmp_path):
    with pytest.raises(DataError, match=r"nowhere\.txt: no such file or folder"):
        load_corpus(tmp_path / "nowhere.txt", cache_dir=tmp_path / "cache")


def test_empty_file_raises(tmp_path):
    write(tmp_path / "empty.txt", "")
    with pytest.raises(DataError, match=r"empty\.txt: file is empty"):
        load_corpus(tmp_path / "empty.txt", cache_dir=tmp_path / "cache")


def test_undecodable_bytes_raise_with_offset(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"hello \xc3\xa9 \xff world")
    with pytest.raises(DataError, match=r"bad\.txt: not valid UTF-8 at byte offset 9"):
        load_corpus(tmp_path / "bad.txt", cache_dir=tmp_path / "cache")


def test_folder_missing_a_split_raises(tmp_path):
    write(tmp_path / "train.txt", "abc")
    write(tmp_path / "valid.txt", "abc")
    with pytest.raises(DataError, match="folder is missing a test split"):
        load_corpus(tmp_path, cache_dir=tmp_path / "cache")


def test_ambiguous_folder_raises(tmp_path):
    for name in ("a.train", "b.train", "x.valid", "x.test"):
        write(tmp_path / name, "abc")
    with pytest.raises(DataError, match="ambiguous train split"):
        load_corpus(tmp_path, cache_dir=tmp_path / "cache")


def test_empty_split_file_in_folder_raises(tmp_path):
    for name, text in (("train.txt", "abc"), ("valid.txt", ""), ("test.txt", "abc")):
        write(tmp_path / name, text)
    with pytest.raises(DataError, match=r"valid\.txt: file is empty"):
        load_corpus(tmp_path, cache_dir=tmp_path / "cache")


def test_second_load_hits_the_cache_without_reading_the_text(tmp_path, monkeypatch):
    source = write(tmp_path / "small.txt", "the quick brown fox " * 10)
    first = load_corpus(source, cache_dir=tmp_path / "cache")
    entries = sorted(p.suffix for p in (tmp_path / "cache").iterdir())
    assert entries == [".json", ".npy"]  # no temp files left behind

    def must_not_read(path):
        raise AssertionError(f"cache miss: reread {path}")

    monkeypatch.setattr(corpus_files, "read_bytes", must_not_read)
    second = load_corpus(source, cache_dir=tmp_path / "cache")
    assert isinstance(second.train, np.memmap)
    assert second.symbols == first.symbols and second.source_hash == first.source_hash
    np.testing.assert_array_equal(second.test, first.test)


def test_changed_text_misses_the_cache(tmp_path):
    source = write(tmp_path / "small.txt", "abc" * 20)
    first = load_corpus(source, cache_dir=tmp_path / "cache")
    write(source, "xyz" * 20)
    second = load_corpus(source, cache_dir=tmp_path / "cache")
    assert second.source_hash != first.source_hash
    assert second.symbols == ("<unk>", "x", "y", "z")


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NAS_CACHE_DIR", str(tmp_path / "env-cache"))
    load_corpus(write(tmp_path / "small.txt", "abc" * 20))
    assert len(list((tmp_path / "env-cache").glob("*.npy"))) == 1


def test_batchify_cuts_contiguous_streams():
    ids = np.arange(103, dtype=np.uint8)
    streams = batchify(ids, batch_size=4, seq_len=5)
    assert streams.shape == (4, 25) and streams.dtype == torch.int64
    for b in range(4):
        np.testing.assert_array_equal(streams[b].numpy(), ids[b * 25 : (b + 1) * 25])


def test_batchify_too_small_raises():
    with pytest.raises(DataError, match="needs 24 characters, it has 23"):
        batchify(np.zeros(23, dtype=np.uint8), batch_size=4, seq_len=5, name="val")
    batchify(np.zeros(24, dtype=np.uint8), batch_size=4, seq_len=5)


def test_iterate_chunks_covers_streams_once_with_shifted_targets():
    streams = batchify(np.arange(4 * 23), batch_size=4, seq_len=5)
    chunks = list(iterate_chunks(streams, seq_len=5))
    assert [x.shape for x, _ in chunks] == [(5, 4)] * 4 + [(2, 4)]
    inputs = torch.cat([x for x, _ in chunks])
    targets = torch.cat([y for _, y in chunks])
    assert torch.equal(inputs, streams[:, :-1].t())
    assert torch.equal(targets, streams[:, 1:].t())


def test_iterate_chunks_resumes_from_start():
    streams = batchify(np.arange(4 * 23), batch_size=4, seq_len=5)
    resumed = list(iterate_chunks(streams, seq_len=5, start=10))
    full = list(iterate_chunks(streams, seq_len=5))
    assert len(resumed) == 3
    for (x, y), (fx, fy) in zip(resumed, full[2:]):
        assert torch.equal(x, fx) and torch.equal(y, fy)


def test_unigram_entropy_of_uniform_and_constant():
    assert unigram_entropy_bits(np.arange(8).repeat(3)) == pytest.approx(3.0)
    assert unigram_entropy_bits(np.ones(10, dtype=np.uint8)) == 0.0


def test_corpus_is_frozen_and_pickles(tmp_path):
    corpus = load_corpus(write(tmp_path / "s.txt", "abc" * 20), cache_dir=tmp_path)
    with pytest.raises(AttributeError):
        corpus.name = "other"
    copy = pickle.loads(pickle.dumps(corpus))
    assert copy.symbols == corpus.symbols and dict(copy.unknown) == dict(corpus.unknown)
    assert copy.format == corpus.format == "chars"
    np.testing.assert_array_equal(copy.train, corpus.train)
