"""Okapi BM25 over a small set of passages (one entity's article), with no dependency beyond the standard library."""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens with accents removed, so "Kō Itakura" matches "Ko Itakura"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return _WORD.findall("".join(ch for ch in decomposed if not unicodedata.combining(ch)))


class BM25:
    """Ranks documents for a query by Okapi BM25.

    The idf is the non-negative form `log(1 + (N - df + 0.5) / (df + 0.5))`, so a term found in most of an
    entity's passages (its name, say) still counts a little instead of pushing scores below zero.
    """

    def __init__(self, documents: Sequence[str], k1: float = 1.5, b: float = 0.75):
        self.k1 = k1
        self.b = b
        self.term_counts = [Counter(tokenize(document)) for document in documents]
        self.lengths = [sum(counts.values()) for counts in self.term_counts]
        self.average_length = (sum(self.lengths) / len(self.lengths)) if self.lengths else 0.0
        document_frequency: Counter[str] = Counter()
        for counts in self.term_counts:
            document_frequency.update(counts.keys())
        n = len(documents)
        self.idf = {term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in document_frequency.items()}

    def scores(self, query: str) -> list[float]:
        terms = Counter(tokenize(query))
        scores = []
        for counts, length in zip(self.term_counts, self.lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / self.average_length) if self.average_length else self.k1
            score = 0.0
            for term, query_count in terms.items():
                tf = counts.get(term)
                if tf:
                    score += query_count * self.idf[term] * tf * (self.k1 + 1) / (tf + norm)
            scores.append(score)
        return scores

    def top_k(self, query: str, k: int) -> list[int]:
        """Indices of the `k` best documents, best first; ties keep document order."""
        scores = self.scores(query)
        return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]
