"""Data: corpora read from local sources, tokenizers, and windows of tokens for the models.

Typical use::

    corpus = load_corpus("stdlib")                    # or a path: file, dir, .jsonl, ...
    tokenizer = make_tokenizer("char", corpus.text)   # or "byte", or a tokenizer.json path
    split = train_val_split(tokenizer.encode_tensor(corpus.text), seq_len=128)
    batch = random_windows(split.train, 128, 32, torch.Generator().manual_seed(0))  # (batch, pos)
    eval_windows = sequential_windows(split.val, 128)  # (window, pos)

Checkpoints store ``tokenizer.to_json()`` and ``corpus.metadata()`` (with its fingerprint).
Nothing here touches the network.
"""

from workbench.data.char_tokenizer import CharTokenizer
from workbench.data.corpus import DOCUMENT_SEPARATOR, Corpus, CorpusError
from workbench.data.hf_tokenizer import HFTokenizer
from workbench.data.records import load_hf_dataset, load_jsonl, load_parquet
from workbench.data.specs import detect_kind, load_corpus, make_tokenizer
from workbench.data.text_files import STDLIB_MAX_CHARS, load_stdlib, load_text_dir, load_text_file
from workbench.data.tokenizers import ByteTokenizer, Tokenizer
from workbench.data.wiki import load_mediawiki, text8_clean
from workbench.data.windows import TokenSplit, document_split, random_windows, sequential_windows, train_val_split

__all__ = [
    "DOCUMENT_SEPARATOR",
    "STDLIB_MAX_CHARS",
    "ByteTokenizer",
    "CharTokenizer",
    "Corpus",
    "CorpusError",
    "HFTokenizer",
    "TokenSplit",
    "Tokenizer",
    "detect_kind",
    "document_split",
    "load_corpus",
    "load_hf_dataset",
    "load_jsonl",
    "load_mediawiki",
    "load_parquet",
    "load_stdlib",
    "load_text_dir",
    "load_text_file",
    "make_tokenizer",
    "random_windows",
    "sequential_windows",
    "text8_clean",
    "train_val_split",
]
