"""Build the study's corpus (issue 16, docs/training.md) as a .jsonl of documents.

Three natural-language sources, character level: tinyshakespeare and War and Peace (plain text,
cut into documents of whole paragraphs, at least `--chunk-chars` long, so that a held-out
document is a stretch of the book, never a cut inside a paragraph) and the first 4 MB of enwik8
(one document per Wikipedia page, text8-cleaned: `workbench.data.wiki`). Train with
`--data OUT.jsonl --split documents`, which holds out whole documents by a hash of their text.

    python scripts/build_study_corpus.py --shared ../shared/data --out runs/study-corpus.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from workbench.data import load_corpus
from workbench.results_io import write_bytes_atomic

BOOKS = ("tinyshakespeare.txt", "warandpeace.txt")
WIKI = "enwik8-first-4MB.xml"


def paragraph_chunks(text: str, chunk_chars: int) -> list[str]:
    """Consecutive paragraphs (split at blank lines) grouped into documents of >= chunk_chars;
    the last, shorter remainder joins the document before it."""
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    chunks: list[list[str]] = [[]]
    size = 0
    for paragraph in paragraphs:
        chunks[-1].append(paragraph)
        size += len(paragraph) + 2
        if size >= chunk_chars:
            chunks.append([])
            size = 0
    if not chunks[-1]:
        chunks.pop()
    elif len(chunks) > 1 and size < chunk_chars:
        chunks[-2].extend(chunks.pop())
    return ["\n\n".join(c) for c in chunks]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shared", required=True, help="folder holding the three source files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--chunk-chars", type=int, default=16384)
    args = parser.parse_args()
    shared = Path(args.shared)
    records = []
    for name in BOOKS:
        text = (shared / name).read_text(encoding="utf-8")
        records += [{"source": name, "text": chunk} for chunk in paragraph_chunks(text, args.chunk_chars)]
    wiki = load_corpus(shared / WIKI, clean="text8", min_chars=args.chunk_chars // 16)
    records += [{"source": WIKI, "text": page} for page in wiki.documents]
    write_bytes_atomic(Path(args.out), "".join(json.dumps(r) + "\n" for r in records).encode())
    for source in (*BOOKS, WIKI):
        docs = [r["text"] for r in records if r["source"] == source]
        print(f"{source}: {len(docs)} documents, {sum(map(len, docs)):,} characters")
    print(f"wrote {args.out}: {len(records)} documents, {sum(len(r['text']) for r in records):,} characters")


if __name__ == "__main__":
    main()
