"""FactScore: atomic-fact precision of biographies against a knowledge source (Min et al., 2023), re-implemented.

`scoring` holds the counting rule and the human labels, `knowledge` and `bm25` the retrieval, `decompose`
and `verify` the two judge steps, `abstention` the rule for answers that decline, `pipeline` the whole.
"""

from .abstention import is_abstention
from .bm25 import BM25
from .decompose import FactDecomposer, load_demos, split_sentences
from .knowledge import KnowledgeSource, Passage, split_passages
from .pipeline import (
    TASK,
    AgreementReport,
    FactScorer,
    FactScoreSettings,
    bio_prompt,
    compare_with_labels,
    load_topics,
    run_factscore,
)
from .scoring import (
    GAMMA,
    FactScoreSummary,
    LabeledResponse,
    ResponseFacts,
    human_summary,
    length_penalty,
    load_labeled,
    summarize,
)

__all__ = [
    "BM25",
    "GAMMA",
    "TASK",
    "AgreementReport",
    "FactDecomposer",
    "FactScoreSettings",
    "FactScoreSummary",
    "FactScorer",
    "KnowledgeSource",
    "LabeledResponse",
    "Passage",
    "ResponseFacts",
    "bio_prompt",
    "compare_with_labels",
    "human_summary",
    "is_abstention",
    "length_penalty",
    "load_demos",
    "load_labeled",
    "load_topics",
    "run_factscore",
    "split_passages",
    "split_sentences",
    "summarize",
]
