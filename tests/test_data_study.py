"""The study's data: text8 cleaning of MediaWiki dumps, a held-out split by whole documents, and
the corpus builder's paragraph documents."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from workbench import checkpoint as ckpt
from workbench.data import CharTokenizer, CorpusError, document_split, load_corpus, text8_clean
from workbench.training import TrainSettings, train

ROOT = Path(__file__).resolve().parent.parent

DUMP = """<mediawiki><siteinfo><sitename>Wikipedia</sitename></siteinfo>
  <page><title>A</title><revision><text xml:space="preserve">'''Apollo 11''' landed in 1969 on the [[Moon|moon]].
&lt;ref&gt;NASA, [http://nasa.gov report]&lt;/ref&gt; See [[Image:x.jpg|thumb|left|200px|A caption]] and {{Infobox|x=1}}
[[de:Apollo 11]] [[Category:Space flight]] R&amp;D &amp;nbsp; done.</text></revision></page>
  <page><title>B</title><revision><text xml:space="preserve">#REDIRECT [[Apollo 11]]</text></revision></page>
  <page><title>C</title><revision><text xml:space="preserve">Second   page, with CAPS!</text></revision></page>
  <page><title>D</title><revision><text xml:space="preserve">cut short by the du"""


def test_text8_clean_follows_wikifil():
    page = DUMP.split('preserve">')[1].split("</text>")[0]
    assert text8_clean(page) == (
        "apollo one one landed in one nine six nine on the moon see a caption and space flight r done")  # &[^;]*; eats "&D &nbsp;", as in wikifil.pl


def test_mediawiki_corpus_keeps_pages_drops_redirects_and_the_unfinished_page(tmp_path):
    path = tmp_path / "dump.xml"
    path.write_text(DUMP)
    corpus = load_corpus(path)  # .xml: detected as a MediaWiki dump, text8-cleaned
    assert corpus.kind == "mediawiki" and corpus.n_documents == 2
    assert corpus.documents[1] == "second page with caps"
    raw = load_corpus(path, clean="none")
    assert "[[Moon|moon]]" in raw.documents[0] and "<ref>" in raw.documents[0]  # entities decoded
    assert raw.fingerprint != corpus.fingerprint
    with pytest.raises(CorpusError, match="clean='html' is not a cleaning"):
        load_corpus(path, clean="html")


def _documents(n: int) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return ["".join("abcdefgh"[i] for i in torch.randint(0, 8, (50 + 10 * k,), generator=g)) for k in range(n)]


def test_document_split_holds_out_whole_documents():
    documents = _documents(200)
    tokenizer = CharTokenizer.from_text("".join(documents) + "\n")
    split = document_split(documents, tokenizer.encode_tensor, 16, 0.2)
    val_text, train_text = tokenizer.decode(split.val.tolist()), tokenizer.decode(split.train.tolist())
    held = set(val_text.split("\n\n"))
    assert held and held.isdisjoint(train_text.split("\n\n"))  # no document on both sides
    assert held | set(train_text.split("\n\n")) == set(documents)
    assert 0.1 < len(held) / len(documents) < 0.3
    # the choice depends on a document's text only: the same documents are held out in any order
    shuffled = document_split(documents[::-1], tokenizer.encode_tensor, 16, 0.2)
    assert set(tokenizer.decode(shuffled.val.tolist()).split("\n\n")) == held
    with pytest.raises(CorpusError, match="held out by document, validation has"):
        document_split(documents[:3], tokenizer.encode_tensor, 16, 0.01)


def test_training_with_a_document_split(tmp_path):
    documents = _documents(60)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    settings = TrainSettings(variant="sigma_gpt", n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32,
                             data=str(path), seq_len=16, split="documents", val_fraction=0.2,
                             tokens_per_step=64, train_tokens=128, warmup_tokens=0, eval_windows=4)
    result = train(settings, tmp_path / "run", progress=False)
    val_text = (result.checkpoint / "val.txt").read_text()
    assert set(val_text.split("\n\n")) <= set(documents)
    assert ckpt.load(result.checkpoint).checkpoint.data["split"] == "documents"


def test_the_study_corpus_builder_cuts_books_at_paragraphs():
    spec = importlib.util.spec_from_file_location("build_study_corpus", ROOT / "scripts" / "build_study_corpus.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    paragraphs = [f"paragraph {i} " + "x" * (i % 7 * 10) for i in range(100)]
    chunks = builder.paragraph_chunks("\n\n".join(paragraphs), 300)
    assert "\n\n".join(chunks) == "\n\n".join(paragraphs)  # nothing lost, nothing cut
    assert all(len(c) >= 300 for c in chunks)
