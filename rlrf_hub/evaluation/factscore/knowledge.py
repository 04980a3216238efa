"""The knowledge source facts are checked against: articles by title, split into passages, ranked by BM25.

Accepted shapes: rows of `{title, text}` (a `.jsonl`/`.json`/`.parquet` file, a dataset folder or a Hub
dataset id; several rows may share a title, e.g. an article already cut into passages), or one JSON object
`{title: text}` or `{title: {"resolved_title": ..., "extract": ...}}` (the shape of the FActScore
Wikipedia file in the shared data). Titles are matched exactly, then ignoring case, Unicode form and
spacing, then through `resolved_title`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..records import load_records
from .bm25 import BM25

PASSAGE_WORDS = 200
_HEADING = re.compile(r"^=+\s*(?P<title>[^=]+?)\s*=+$")


@dataclass(frozen=True)
class Passage:
    title: str
    text: str
    index: int


def title_key(title: str) -> str:
    return " ".join(unicodedata.normalize("NFC", title).casefold().split())


def split_passages(text: str, max_words: int = PASSAGE_WORDS) -> list[str]:
    """Cut an article into passages of at most `max_words` words at paragraph and section boundaries.

    A section heading (`== Career ==`, MediaWiki plain-text style) starts a new passage and stays in it as
    plain words, so a fact about a career can match the heading too. A paragraph longer than `max_words`
    is cut into windows of `max_words` words.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be positive, got {max_words}")
    passages: list[str] = []
    current: list[str] = []
    has_text = False

    def flush() -> None:
        nonlocal has_text
        if current:
            passages.append(" ".join(current))
        current.clear()
        has_text = False

    for line in text.splitlines():
        line = line.strip()
        heading = _HEADING.match(line)
        if heading:
            if has_text:
                flush()
            current.extend((heading.group("title") + ".").split())
            continue
        words = line.split()
        if has_text and len(current) + len(words) > max_words:
            flush()
        while words and len(current) + len(words) > max_words:
            room = max(1, max_words - len(current))
            current.extend(words[:room])
            words = words[room:]
            flush()
        if words:
            current.extend(words)
            has_text = True
    flush()
    return passages


class KnowledgeSource:
    """Articles by title; each article's passages are indexed with BM25 on first use."""

    def __init__(
        self,
        articles: dict[str, list[str]],
        aliases: dict[str, str] | None = None,
        passage_words: int = PASSAGE_WORDS,
        name: str = "knowledge",
    ):
        self.articles = articles
        self.passage_words = passage_words
        self.name = name
        self._keys = {title_key(title): title for title in articles}
        for alias, title in (aliases or {}).items():
            self._keys.setdefault(title_key(alias), title)
        self._indexed: dict[str, tuple[list[Passage], BM25]] = {}

    @classmethod
    def load(
        cls, source: str | Path, split: str = "train", revision: str | None = None, passage_words: int = PASSAGE_WORDS
    ) -> KnowledgeSource:
        path = Path(source)
        if path.is_file() and path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict):
                articles, aliases = _from_mapping(data, str(path))
                return cls(articles, aliases, passage_words, name=str(source))
        records = load_records(source, split=split, revision=revision)
        return cls(_from_rows(records.rows, str(source)), None, passage_words, name=str(source))

    def title_for(self, entity: str) -> str | None:
        if entity in self.articles:
            return entity
        return self._keys.get(title_key(entity))

    def __contains__(self, entity: str) -> bool:
        return self.title_for(entity) is not None

    def titles(self) -> list[str]:
        return list(self.articles)

    def passages(self, entity: str) -> list[Passage]:
        return self._index(entity)[0]

    def retrieve(self, entity: str, query: str, k: int = 5) -> list[Passage]:
        """The `k` passages of the entity's article that best match `query` (empty when the entity is unknown)."""
        passages, bm25 = self._index(entity)
        return [passages[i] for i in bm25.top_k(query, k)] if passages else []

    def _index(self, entity: str) -> tuple[list[Passage], BM25]:
        title = self.title_for(entity)
        if title is None:
            return [], BM25([])
        if title not in self._indexed:
            texts = [p for text in self.articles[title] for p in split_passages(text, self.passage_words)]
            passages = [Passage(title, text, index) for index, text in enumerate(texts)]
            self._indexed[title] = (passages, BM25(texts))
        return self._indexed[title]


def _from_mapping(data: dict, where: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    articles, aliases = {}, {}
    for title, value in data.items():
        if isinstance(value, str):
            articles[title] = [value]
        elif isinstance(value, dict) and isinstance(value.get("extract", value.get("text")), str):
            articles[title] = [value.get("extract", value.get("text"))]
            if isinstance(value.get("resolved_title"), str):
                aliases[value["resolved_title"]] = title
        else:
            raise ValueError(
                f"{where}: entry {title!r} must be a text or an object with 'extract' (or 'text'), got {value!r:.80}"
            )
    return articles, aliases


def _from_rows(rows: Iterable[dict], where: str) -> dict[str, list[str]]:
    articles: dict[str, list[str]] = {}
    for index, row in enumerate(rows):
        for field in ("title", "text"):
            if not isinstance(row.get(field), str):
                raise ValueError(f"{where} row {index}: missing text field {field!r} (fields present: {sorted(row)})")
        articles.setdefault(row["title"], []).append(row["text"])
    if not articles:
        raise ValueError(f"{where} holds no articles")
    return articles
