"""Fast unit tests for workbench.data: tokenizers, corpus loaders, fingerprints, splits, windows.

Every corpus is built in tmp_path (or is the local stdlib); nothing touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workbench.data import (
    ByteTokenizer,
    CharTokenizer,
    Corpus,
    CorpusError,
    HFTokenizer,
    Tokenizer,
    detect_kind,
    load_corpus,
    load_stdlib,
    make_tokenizer,
    random_windows,
    sequential_windows,
    train_val_split,
)

NON_ASCII = "naïve café ☃ 日本語 🙂 Ω≈ç√"


def json_round_trip(tokenizer: Tokenizer) -> Tokenizer:
    """Through a real JSON string, as a checkpoint file stores it."""
    return Tokenizer.from_json(json.loads(json.dumps(tokenizer.to_json())))


# --- tokenizers -----------------------------------------------------------------------------


def test_char_tokenizer_round_trip_and_sorted_vocab() -> None:
    text = "hello, world!\n" + NON_ASCII
    tok = CharTokenizer.from_text(text)
    assert list(tok.chars) == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(tok.encode_tensor(text)) == text
    assert tok.encode_tensor(text).dtype == torch.long
    assert CharTokenizer.from_text(text[::-1]) == tok  # order of the corpus does not matter


@pytest.mark.parametrize(
    "tok",
    [
        CharTokenizer.from_text("abc? "),
        CharTokenizer.from_text("abc? ", unknown="replace", replacement=" "),
        ByteTokenizer(),
    ],
    ids=["char", "char-replace", "byte"],
)
def test_tokenizer_json_round_trip(tok: Tokenizer) -> None:
    rebuilt = json_round_trip(tok)
    assert type(rebuilt) is type(tok)
    assert rebuilt == tok
    assert rebuilt.encode("ab? c") == tok.encode("ab? c")


def test_char_unknown_characters_error_names_them_and_the_fix() -> None:
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(ValueError) as info:
        tok.encode("ab é c ☃☃")
    message = str(info.value)
    assert "'é' (U+00E9) at position 3" in message
    assert "'☃' (U+2603) at positions 7, 8" in message
    assert "3 character(s)" in message
    assert "unknown='replace'" in message


def test_char_unknown_error_quotes_only_the_first_few() -> None:
    tok = CharTokenizer.from_text("a")
    with pytest.raises(ValueError, match="and 5 more distinct"):
        tok.encode("bcdefghijk")


def test_char_replace_maps_unknown_characters_to_a_known_one() -> None:
    tok = CharTokenizer.from_text("ab? ", unknown="replace")
    assert tok.replacement == "?"  # the first default that is in the vocabulary
    assert tok.decode(tok.encode("aéb☃")) == "a?b?"
    spaced = CharTokenizer.from_text("ab ", unknown="replace")
    assert spaced.replacement == " "
    custom = CharTokenizer.from_text("ab? ", unknown="replace", replacement="b")
    assert custom.decode(custom.encode("aé")) == "ab"


def test_char_replace_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="not in the vocabulary"):
        CharTokenizer.from_text("ab", unknown="replace", replacement="?")
    with pytest.raises(ValueError, match="pass replacement="):
        CharTokenizer.from_text("ab", unknown="replace")
    with pytest.raises(ValueError, match="only applies with unknown='replace'"):
        CharTokenizer.from_text("ab?", replacement="?")
    with pytest.raises(ValueError, match="'raise' or 'replace'"):
        CharTokenizer.from_text("ab?", unknown="ignore")  # type: ignore[arg-type]


def test_byte_tokenizer_round_trip_non_ascii() -> None:
    tok = ByteTokenizer()
    ids = tok.encode(NON_ASCII)
    assert tok.vocab_size == 256
    assert ids == list(NON_ASCII.encode("utf-8"))
    assert len(ids) > len(NON_ASCII)  # multi-byte characters take several ids
    assert tok.decode(ids) == NON_ASCII
    snowman = tok.encode("☃")
    assert tok.decode(snowman[:2]) == "\ufffd"  # a cut character decodes to U+FFFD, no crash


def test_decode_rejects_out_of_range_ids() -> None:
    with pytest.raises(ValueError, match=r"id 300 is out of range; valid ids are 0\.\.255"):
        ByteTokenizer().decode([65, 300])
    with pytest.raises(ValueError, match=r"valid ids are 0\.\.2"):
        CharTokenizer.from_text("abc").decode([3])


@pytest.fixture
def hf_tokenizer_file(tmp_path: Path) -> Path:
    """A tiny byte-level BPE trained in memory and saved as tokenizer.json."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainer)
    path = tmp_path / "tiny-bpe" / "tokenizer.json"
    path.parent.mkdir()
    backend.save(str(path))
    return path


def test_hf_tokenizer_round_trip_and_inline_json(hf_tokenizer_file: Path) -> None:
    tok = HFTokenizer.from_file(hf_tokenizer_file)
    assert tok.name == "tiny-bpe"
    text = "the lazy fox " + NON_ASCII
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")  # merges apply
    data = json.loads(json.dumps(tok.to_json()))
    assert data["kind"] == "hf" and isinstance(data["tokenizer"], dict)  # stored inline
    hf_tokenizer_file.unlink()  # the rebuilt tokenizer needs no file
    rebuilt = Tokenizer.from_json(data)
    assert rebuilt == tok
    assert rebuilt.encode(text) == tok.encode(text)
    assert rebuilt.vocab_size == tok.vocab_size


def test_hf_tokenizer_accepts_its_directory(hf_tokenizer_file: Path) -> None:
    assert HFTokenizer.from_file(hf_tokenizer_file.parent) == HFTokenizer.from_file(
        hf_tokenizer_file
    )


def test_hf_tokenizer_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no tokenizer file at"):
        HFTokenizer.from_file(tmp_path / "missing.json")
    not_a_tokenizer = tmp_path / "vocab.json"
    not_a_tokenizer.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="is not a tokenizers JSON file"):
        HFTokenizer.from_file(not_a_tokenizer)


def test_from_json_dispatch_errors() -> None:
    with pytest.raises(ValueError, match="has kind 'wordpiece'"):
        Tokenizer.from_json({"kind": "wordpiece"})
    with pytest.raises(ValueError, match="got a 'byte' tokenizer"):
        CharTokenizer.from_json(ByteTokenizer().to_json())


def test_make_tokenizer(hf_tokenizer_file: Path) -> None:
    assert make_tokenizer("byte") == ByteTokenizer()
    assert make_tokenizer("char", text="ba") == CharTokenizer("ab")
    assert isinstance(make_tokenizer(str(hf_tokenizer_file)), HFTokenizer)
    with pytest.raises(ValueError, match="neither 'char', 'byte'"):
        make_tokenizer("bpe")
    with pytest.raises(ValueError, match="pass text="):
        make_tokenizer("char")


# --- corpora --------------------------------------------------------------------------------


def test_text_file_normalises_newlines_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_bytes("\ufeffline one\r\nline two\rthree ☃\n".encode())
    corpus = load_corpus(path)
    assert corpus.kind == "text"
    assert corpus.text == "line one\nline two\nthree ☃\n"
    assert corpus.n_documents == 1 and corpus.n_chars == len(corpus.text)
    assert corpus.metadata()["fingerprint"] == corpus.fingerprint


def test_fingerprint_is_pinned(tmp_path: Path) -> None:
    """A fixed value: checkpoints name their data by it, so it must not drift between versions."""
    path = tmp_path / "a.txt"
    path.write_text("hello\n")
    assert load_corpus(path).fingerprint == "e1d5071a6771b3f6"


def test_fingerprint_ignores_location_and_tracks_content_and_settings(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.txt").write_text("same text\n")
    first = load_corpus(tmp_path / "a" / "x.txt")
    assert load_corpus(tmp_path / "b" / "x.txt").fingerprint == first.fingerprint
    (tmp_path / "b" / "x.txt").write_text("same text!\n")
    assert load_corpus(tmp_path / "b" / "x.txt").fingerprint != first.fingerprint
    assert load_corpus(tmp_path / "a" / "x.txt", max_chars=100).fingerprint != first.fingerprint
    assert load_corpus(tmp_path / "a").fingerprint != first.fingerprint  # another kind


def test_text_dir_is_recursive_sorted_and_skips_hidden(tmp_path: Path) -> None:
    files = {
        "b.txt": "B",
        "a/z.txt": "AZ",
        "a/b/c.txt": "ABC",
        "notes.md": "MD",
        ".ipynb_checkpoints/b.txt": "HIDDEN",
        "empty.txt": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    corpus = load_corpus(tmp_path)
    assert corpus.kind == "text_dir"
    assert corpus.documents == ("ABC", "AZ", "B")  # a/b/c, a/z, b; empty and hidden skipped
    assert load_corpus(tmp_path, glob="**/*.md").documents == ("MD",)
    assert load_corpus(tmp_path, glob="*.txt").documents == ("B",)


def test_text_dir_without_matches_says_what_it_holds(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("x")
    with pytest.raises(CorpusError, match=r"match glob='\*\*/\*.txt' \(it holds 1 .md files\)"):
        load_corpus(tmp_path)


def test_jsonl_reads_a_configurable_field(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "first", "body": "one"}, {"text": "second ☃", "body": "two"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert load_corpus(path).documents == ("first", "second ☃")
    assert load_corpus(path, text_field="body").documents == ("one", "two")
    with pytest.raises(CorpusError, match=r"docs.jsonl:1: has no 'content' field .*'body'"):
        load_corpus(path, text_field="content")


def test_jsonl_bad_lines_are_located(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": oops}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: not valid JSON"):
        load_corpus(path)
    path.write_text('{"text": "ok"}\n{"text": 3}\n')
    with pytest.raises(CorpusError, match=r"bad.jsonl:2: field 'text' holds int"):
        load_corpus(path)


def test_parquet_reads_a_text_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "docs.parquet"
    table = pa.table({"id": [1, 2, 3], "text": ["alpha", "beta ☃", "gamma"]})
    pq.write_table(table, path, row_group_size=2)
    corpus = load_corpus(path)
    assert corpus.kind == "parquet"
    assert corpus.documents == ("alpha", "beta ☃", "gamma")
    with pytest.raises(CorpusError, match=r"no column 'body' \(its columns: \['id', 'text'\]\)"):
        load_corpus(path, text_field="body")
    with pytest.raises(CorpusError, match="column 'id' has type int64, expected strings"):
        load_corpus(path, text_field="id")


def test_hf_dataset_directory(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "ds"
    datasets.Dataset.from_dict({"text": ["one", "two ☃"], "n": [1, 2]}).save_to_disk(str(path))
    assert detect_kind(path) == "hf"
    corpus = load_corpus(path)
    assert corpus.kind == "hf"
    assert corpus.documents == ("one", "two ☃")
    with pytest.raises(CorpusError, match="has no splits"):
        load_corpus(path, split="train")


def test_hf_dataset_dict_splits(tmp_path: Path) -> None:
    import datasets

    path = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"story": ["a", "b"]}),
            "test": datasets.Dataset.from_dict({"story": ["c"]}),
        }
    ).save_to_disk(str(path))
    assert load_corpus(path, split="test", text_field="story").documents == ("c",)
    with pytest.raises(CorpusError, match=r"splits \['train', 'test'\]; pass split="):
        load_corpus(path, text_field="story")


def test_stdlib_corpus_loads_deterministically() -> None:
    first = load_corpus("stdlib", max_chars=200_000)
    second = load_stdlib(max_chars=200_000)
    assert first.kind == "stdlib" and first.n_documents > 1
    assert first.n_chars == 200_000  # the cap, exactly (separators count)
    assert first.fingerprint == second.fingerprint
    assert first.documents == second.documents
    assert "def " in first.text and "\r" not in first.text


def test_stdlib_default_cap_is_a_few_megabytes() -> None:
    corpus = load_corpus("stdlib")
    assert 1_000_000 <= corpus.n_chars <= 4_000_000


def test_options_are_checked_against_the_kind(tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "x"}\n')
    with pytest.raises(TypeError, match=r"\['glob'\] do not apply to a jsonl corpus"):
        load_corpus(path, glob="*.txt")
    odd = tmp_path / "corpus.dat"
    odd.write_text("plain text")
    with pytest.raises(CorpusError, match=r"suffix '\.dat'.*kind='text'"):
        load_corpus(odd)
    assert load_corpus(odd, kind="text").text == "plain text"


# --- corpus errors --------------------------------------------------------------------------


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\r\n" * 0)
    with pytest.raises(CorpusError, match=r"empty.txt holds no text"):
        load_corpus(path)


def test_empty_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="holds no files"):
        load_corpus(tmp_path)
    (tmp_path / "a.txt").write_text("")
    with pytest.raises(CorpusError, match="holds no text"):
        load_corpus(tmp_path)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist\. Expected 'stdlib' or a path"):
        load_corpus(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match=r"nope\.dat does not exist"):
        load_corpus(tmp_path / "nope.dat", kind="text")


def test_non_utf8_file_names_the_file_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(CorpusError) as info:
        load_corpus(path)
    message = str(info.value)
    assert "latin.txt as utf-8" in message and "byte 0xe9 at offset 3" in message
    assert "encoding='latin-1'" in message and "errors='replace'" in message
    assert load_corpus(path, encoding="latin-1").text == "café"
    assert load_corpus(path, errors="replace").text == "caf\ufffd"


def test_unreadable_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret.txt"
    path.write_text("x")

    def deny(self: Path) -> bytes:  # chmod 0 does not stop root, so fake the OS refusing
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(PermissionError, match=r"secret\.txt: permission denied\. Fix"):
        load_corpus(path)


def test_max_chars_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("abc")
    with pytest.raises(CorpusError, match="max_chars must be a positive"):
        load_corpus(tmp_path / "a.txt", max_chars=0)


def test_corpus_repr_is_short() -> None:
    corpus = Corpus(documents=("x" * 10_000,), kind="text", source="mem", settings={})
    assert len(repr(corpus)) < 200 and "chars=10000" in repr(corpus)


# --- split and windows ----------------------------------------------------------------------


def test_split_is_deterministic_disjoint_and_covering() -> None:
    tokens = torch.arange(1000)
    split = train_val_split(tokens, seq_len=16, val_fraction=0.1)
    assert split.train.numel() == 900 and split.val.numel() == 100
    assert torch.equal(torch.cat([split.train, split.val]), tokens)  # contiguous, no overlap
    again = train_val_split(tokens.clone(), seq_len=16, val_fraction=0.1)
    assert torch.equal(again.train, split.train) and torch.equal(again.val, split.val)


def test_split_too_short_for_seq_len_says_how_many_tokens() -> None:
    tokens = torch.arange(300)
    with pytest.raises(CorpusError) as info:
        train_val_split(tokens, seq_len=64, val_fraction=0.1)
    message = str(info.value)
    assert "has 300 tokens" in message and "validation gets 30" in message
    assert "needs at least 635 tokens" in message  # round(635 * 0.1) = 64 (634 gives 63)
    train_val_split(torch.arange(635), seq_len=64, val_fraction=0.1)  # and 635 is enough


def test_random_windows_shape_determinism_and_coverage() -> None:
    tokens = torch.arange(100, 110)
    batch = random_windows(tokens, 8, 64, torch.Generator().manual_seed(0))
    assert batch.shape == (64, 8) and batch.dtype == torch.long
    assert torch.equal(batch, random_windows(tokens, 8, 64, torch.Generator().manual_seed(0)))
    assert not torch.equal(batch, random_windows(tokens, 8, 64, torch.Generator().manual_seed(1)))
    assert torch.equal(batch - batch[:, :1], torch.arange(8).expand(64, 8))  # consecutive tokens
    assert set(batch[:, 0].tolist()) == {100, 101, 102}  # every start offset is drawn


def test_sequential_windows_cover_in_order_and_drop_the_tail() -> None:
    tokens = torch.arange(23)
    windows = sequential_windows(tokens, 5)
    assert windows.shape == (4, 5)
    assert torch.equal(windows.flatten(), tokens[:20])


def test_windows_errors() -> None:
    with pytest.raises(CorpusError, match="has 3 tokens, fewer than one window of seq_len=4"):
        sequential_windows(torch.arange(3), 4)
    with pytest.raises(CorpusError, match="has 3 tokens"):
        random_windows(torch.arange(3), 4, 2, torch.Generator())
    with pytest.raises(ValueError, match="1-D integer token stream"):
        sequential_windows(torch.zeros(2, 8, dtype=torch.long), 4)


def test_end_to_end_stdlib_to_windows() -> None:
    corpus = load_corpus("stdlib", max_chars=50_000)
    tokenizer = CharTokenizer.from_text(corpus.text)
    split = train_val_split(tokenizer.encode_tensor(corpus.text), seq_len=128)
    assert sequential_windows(split.val, 128).shape == (5000 // 128, 128)
    batch = random_windows(split.train, 128, 4, torch.Generator().manual_seed(0))
    assert tokenizer.decode(batch[0]) in corpus.text
