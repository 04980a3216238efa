"""The feedback stage: judge prompts and their JSON contract, reply parsing, the math verifier, the stage."""

from .judge import (
    GENERAL_FALLBACK,
    aspects_for,
    feedback_text,
    rate_responses,
    select_aspects,
    summarise,
    unrated_row,
)
from .parsing import ParsedRatings, parse_ratings, parse_selection
from .templates import (
    TEMPLATES_SHA256,
    critique_limit,
    dump_ratings,
    format_feedback,
    rating_messages,
    rating_schema,
    reflection_messages,
    selection_messages,
    selection_schema,
)
from .verifier import VERIFIER_NAME, Verdict, extract_final_number, reference_number, verify_math

__all__ = [
    "GENERAL_FALLBACK",
    "TEMPLATES_SHA256",
    "VERIFIER_NAME",
    "ParsedRatings",
    "Verdict",
    "aspects_for",
    "critique_limit",
    "dump_ratings",
    "extract_final_number",
    "feedback_text",
    "format_feedback",
    "parse_ratings",
    "parse_selection",
    "rate_responses",
    "rating_messages",
    "rating_schema",
    "reference_number",
    "reflection_messages",
    "select_aspects",
    "selection_messages",
    "selection_schema",
    "summarise",
    "unrated_row",
    "verify_math",
]
