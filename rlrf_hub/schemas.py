"""What a row of each stage dataset is: one `datasets.Features` per stage.

Every stage has `prompt_id`; candidates and refinements share the response schema; feedback has one
flat `rating_<aspect>` column per aspect (null when the aspect was not rated) next to the ordered
`aspects`/`ratings`/`critiques` lists; pairs are in TRL's conversational preference format.
"""

from __future__ import annotations

from datasets import Dataset, Features, List, Value

from .aspects import ASPECT_KEYS

STAGES = ("prompts", "candidates", "feedback", "refinements", "pairs")
TASKS = ("general", "math", "bio")
ORIGINS = ("candidate", "refinement")
PARSE_STATUSES = ("strict", "tolerant", "verifier", "failed", "unrated")

MESSAGES = List({"role": Value("string"), "content": Value("string")})

PROMPTS = Features(
    {
        "prompt_id": Value("string"),
        "prompt": Value("string"),
        "task": Value("string"),
        "reference": Value("string"),
        "source": Value("string"),
    }
)

RESPONSES = Features(
    {
        "prompt_id": Value("string"),
        "response_id": Value("string"),
        "iteration": Value("int32"),
        "origin": Value("string"),
        "sample_index": Value("int32"),
        "parent_id": Value("string"),
        "task": Value("string"),
        "prompt": Value("string"),
        "messages": MESSAGES,
        "response": Value("string"),
        "num_tokens": Value("int32"),
        "finish_reason": Value("string"),
        "policy": Value("string"),
    }
)

FEEDBACK = Features(
    {
        "prompt_id": Value("string"),
        "response_id": Value("string"),
        "iteration": Value("int32"),
        "origin": Value("string"),
        "task": Value("string"),
        "aspects": List(Value("string")),
        "ratings": List(Value("int8")),
        "critiques": List(Value("string")),
        **{f"rating_{key}": Value("int8") for key in ASPECT_KEYS},
        "critique": Value("string"),
        "raw_feedback": Value("string"),
        "parse_status": Value("string"),
        "parse_attempts": Value("int32"),
        "mean_rating": Value("float32"),
        "is_positive": Value("bool"),
        "reward": Value("float32"),
        "judge": Value("string"),
        "judge_revision": Value("string"),
    }
)

PAIRS = Features(
    {
        "prompt_id": Value("string"),
        "iteration": Value("int32"),
        "pairing": Value("string"),
        "prompt": MESSAGES,
        "chosen": MESSAGES,
        "rejected": MESSAGES,
        "chosen_id": Value("string"),
        "rejected_id": Value("string"),
        "chosen_origin": Value("string"),
        "rejected_origin": Value("string"),
        "chosen_ratings": List(Value("int8")),
        "rejected_ratings": List(Value("int8")),
        "chosen_reward": Value("float32"),
        "rejected_reward": Value("float32"),
    }
)

FEATURES: dict[str, Features] = {
    "prompts": PROMPTS,
    "candidates": RESPONSES,
    "refinements": RESPONSES,
    "feedback": FEEDBACK,
    "pairs": PAIRS,
}


def to_dataset(stage: str, rows: list[dict]) -> Dataset:
    """Build a stage dataset; a row with a missing or mistyped column fails here, not stages later."""
    features = FEATURES[stage]
    missing = [name for name in features if rows and name not in rows[0]]
    if missing:
        raise ValueError(f"{stage} rows lack column(s) {missing}")
    columns = {name: [row[name] for row in rows] for name in features}
    return Dataset.from_dict(columns, features=features)
