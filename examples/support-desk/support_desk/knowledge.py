"""The help-centre knowledge base and its BM25 search.

The articles ship with the example in ``knowledge_base.json``. Search is Okapi BM25
over each article's title (counted twice: a title says what an article is about),
tags and body, with a light suffix stemmer so "refunds" finds "refund".
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

KNOWLEDGE_BASE_FILE = Path(__file__).with_name("knowledge_base.json")
DEFAULT_TOP_K = 3
BM25_K1 = 1.5
BM25_B = 0.75

_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset(
    """a an and are as at be but by can do does for from had has have hi hello how i if in
    is it its me my no not of on or our so that the their then there this to was we what
    when where which who why will with you your please thanks thank""".split()
)


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def tokenize(text: str, stopwords: frozenset[str] = _STOPWORDS) -> list[str]:
    """Lower-cased, stemmed words of ``text`` without ``stopwords``."""
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in stopwords]


@dataclass(frozen=True, slots=True)
class Article:
    id: str
    title: str
    tags: tuple[str, ...]
    body: str


@dataclass(frozen=True, slots=True)
class Hit:
    """One search result: the article and how well it matched."""

    article: Article
    score: float

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.article.id,
            "title": self.article.title,
            "score": round(self.score, 3),
            "tags": list(self.article.tags),
        }


class KnowledgeBase:
    """Articles indexed for BM25 search."""

    def __init__(self, articles: Iterable[Article]) -> None:
        self.articles = tuple(articles)
        self._by_id = {a.id: a for a in self.articles}
        self._docs = [
            Counter(tokenize(f"{a.title} {a.title} {' '.join(a.tags)} {a.body}"))
            for a in self.articles
        ]
        self._lengths = [sum(d.values()) for d in self._docs]
        self._average_length = sum(self._lengths) / max(1, len(self._lengths))
        frequency: Counter[str] = Counter()
        for doc in self._docs:
            frequency.update(doc.keys())
        n = len(self._docs)
        self._idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5)) for t, df in frequency.items()}

    @classmethod
    def load(cls, path: Path = KNOWLEDGE_BASE_FILE) -> KnowledgeBase:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return cls(Article(a["id"], a["title"], tuple(a["tags"]), a["body"]) for a in raw)

    def get(self, article_id: str) -> Article | None:
        return self._by_id.get(article_id)

    def search(self, query: str, top_k: int = DEFAULT_TOP_K) -> list[Hit]:
        """The ``top_k`` best-matching articles, best first; none when nothing matches."""
        terms = set(tokenize(query))
        hits = []
        for article, doc, length in zip(self.articles, self._docs, self._lengths, strict=True):
            score = 0.0
            norm = BM25_K1 * (1 - BM25_B + BM25_B * length / self._average_length)
            for term in terms:
                tf = doc.get(term, 0)
                if tf:
                    score += self._idf[term] * tf * (BM25_K1 + 1) / (tf + norm)
            if score > 0:
                hits.append(Hit(article, score))
        hits.sort(key=lambda h: (-h.score, h.article.id))
        return hits[: max(0, top_k)]


@cache
def default_knowledge_base() -> KnowledgeBase:
    """The articles shipped with the example (loaded once per process)."""
    return KnowledgeBase.load()


def first_sentence(text: str) -> str:
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def render_hits(hits: Sequence[Hit]) -> str:
    """Search results as the model reads them: id, title and the gist of each article."""
    if not hits:
        return "No help-centre article matches this question."
    return " | ".join(
        f"[{h.article.id}] {h.article.title}: {first_sentence(h.article.body)}" for h in hits
    )
