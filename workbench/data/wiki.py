"""MediaWiki XML dumps (enwik8, enwik9) as corpora: one document per page, optionally cleaned
the way text8 was made.

text8 (Mahoney, "About the test data", 2006) is enwik9 passed through `wikifil.pl`: only the text
a browser would show, lowercase letters a-z and single spaces, digits spelled out. `text8_clean`
follows that script rule by rule on one page's wikitext (the script's record separator `>` only
occurs at XML tags there, since wikitext inside `<text>` has `<` and `>` escaped, so a page's text
is one record). Redirect pages are dropped, as the script drops them.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from workbench.data.corpus import Corpus, CorpusError

CLEANINGS = ("text8", "none")
_PAGE = re.compile(r"<page>(.*?)</page>", re.S)
_TEXT = re.compile(r"<text[^>]*>(.*?)</text>", re.S)
_DIGITS = {str(i): f" {w} " for i, w in enumerate("zero one two three four five six seven eight nine".split())}
# wikifil.pl's substitutions after the &amp; / &lt; / &gt; decoding, in its order.
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, flags), replacement)
    for pattern, replacement, flags in (
        (r"<ref[^<]*</ref>", "", 0),  # references
        (r"<[^>]*>", "", 0),  # xhtml tags
        (r"\[http:[^\] ]*", "[", 0),  # a url, keeping the visible text
        (r"\|thumb", "", re.I),  # image options, keeping the caption
        (r"\|left", "", re.I),
        (r"\|right", "", re.I),
        (r"\|\d+px", "", re.I),
        (r"\[\[image:[^\[\]]*\|", "", re.I),
        (r"\[\[category:([^|\]]*)[^\]]*\]\]", r"[[\1]]", re.I),  # categories without markup
        (r"\[\[[a-z\-]*:[^\]]*\]\]", "", 0),  # links to other languages
        (r"\[\[[^\|\]]*\|", "[[", 0),  # a link's target, keeping the visible text
        (r"\{\{[^}]*\}\}", "", 0),  # {{templates}}
        (r"\{[^}]*\}", "", 0),  # {tables}
        (r"[\[\]]", "", 0),
        (r"&[^;]*;", " ", 0),  # other entities
    )
)
_NOT_LETTER = re.compile(r"[^a-z]+")


def text8_clean(wikitext: str) -> str:
    """One page's wikitext (entities still escaped, as in the dump) as text8: a-z and single spaces."""
    text = wikitext.replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    text = text.lower()
    for digit, word in _DIGITS.items():
        text = text.replace(digit, word)
    return _NOT_LETTER.sub(" ", text).strip()


def load_mediawiki(path: Path, *, clean: str = "text8", min_chars: int = 1) -> Corpus:
    """The non-redirect pages of a MediaWiki XML dump, one document each (in dump order).

    ``clean="text8"`` applies :func:`text8_clean`; ``"none"`` keeps the wikitext (entities
    decoded). Pages shorter than ``min_chars`` after cleaning are dropped. A dump cut short (as
    enwik8 is) loses only its unfinished last page.
    """
    if clean not in CLEANINGS:
        raise CorpusError(f"clean={clean!r} is not a cleaning; use one of {CLEANINGS}")
    raw = Path(path).read_text(encoding="utf-8", errors="replace")
    documents = []
    for page in _PAGE.findall(raw):
        body = _TEXT.search(page)
        if body is None or re.match(r"\s*#redirect", body.group(1), re.I):
            continue
        text = text8_clean(body.group(1)) if clean == "text8" else html.unescape(body.group(1))
        if len(text) >= min_chars:
            documents.append(text)
    if not documents:
        raise CorpusError(f"{path} holds no MediaWiki <page> with text; is it a MediaWiki XML dump?")
    return Corpus(tuple(documents), kind="mediawiki", source=str(path), settings={"clean": clean, "min_chars": min_chars})
