"""GSM8K, zero-shot: greedy answers, the final number read by rule, accuracy with a 95 % Wilson interval.

The final number is read with the same rules the loop's math verifier uses (`feedback.verifier`), so a
policy is evaluated exactly as it was rewarded: a `#### N` line first, then the last `\\boxed{N}`, then
the number after the last "the answer is" / "Answer:" (after its last `=` when the statement shows a
calculation), else the last number of the reply. Thousands separators, currency signs, units, percent
signs, trailing punctuation, Markdown emphasis, negative numbers, decimals and fractions are normalised,
and numbers are compared as exact fractions (`18`, `18.00` and `$18` are one answer).

Each problem is named by the prompt id of its question (`ids.prompt_id`, the id the loop gives RL prompts), so the
per-item outcomes of two models pair up, and evaluation items can be checked against a run's RL prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from datasets import Features, Value

from ..backends.base import GenerationBackend, GenerationRequest, SamplingParams
from ..feedback.verifier import extract_final_number, numbers_equal, reference_number
from ..ids import prompt_id
from .records import TaskOutcome, load_records, require_fields
from .results import TaskResult
from .stats import wilson_interval

TASK = "gsm8k"
HUB_ID = "openai/gsm8k"
PROMPT_TEMPLATE = (
    "Solve this math word problem. Reason through it step by step, then end with a final line of the form "
    '"The answer is N." where N is just the number.\n\n{question}'
)
POLICY_PARAMS = SamplingParams(max_new_tokens=512, temperature=0.0, top_p=1.0, do_sample=False, seed=0)

ITEM_FEATURES = Features(
    {
        "index": Value("int32"),
        "item_id": Value("string"),
        "question": Value("string"),
        "reference_solution": Value("string"),
        "reference_answer": Value("string"),
        "response": Value("string"),
        "predicted_answer": Value("string"),
        "correct": Value("bool"),
        "num_tokens": Value("int32"),
        "finish_reason": Value("string"),
    }
)


@dataclass
class GSM8KItem:
    index: int
    question: str
    solution: str
    answer: str  # the reference's final number, canonical


def extract_answer(text: str | None) -> str | None:
    """The reply's final number in canonical form (`"1200"`, `"-0.5"`, `"3/7"`), or `None` when it states none."""
    return extract_final_number(text)


def is_correct(response: str | None, reference_answer: str) -> bool:
    predicted = extract_answer(response)
    return predicted is not None and numbers_equal(predicted, reference_answer)


def load_gsm8k(
    source: str | Path = HUB_ID,
    split: str = "test",
    limit: int | None = None,
    revision: str | None = None,
    config: str = "main",
) -> tuple[list[GSM8KItem], dict]:
    """GSM8K problems (`question`, `answer` ending in `#### N`) from a file, folder or Hub id, and their provenance."""
    records = load_records(source, split=split, config=config, revision=revision)
    rows = records.rows[:limit] if limit is not None else records.rows
    items = []
    for index, row in enumerate(rows):
        where = f"{source} row {index}"
        require_fields(row, ("question", "answer"), where)
        answer = reference_number(str(row["answer"]))
        if answer is None:
            raise ValueError(f"{where}: field 'answer' states no final number (expected a '#### N' line)")
        items.append(GSM8KItem(index, str(row["question"]), str(row["answer"]), answer))
    provenance = {"dataset_id": records.dataset_id, "dataset_revision": records.revision, "split": records.split}
    return items, provenance


def gsm8k_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPT_TEMPLATE.format(question=question)}]


def answer_requests(items: Sequence[GSM8KItem]) -> list[GenerationRequest]:
    return [GenerationRequest(gsm8k_messages(item.question)) for item in items]


def accuracy_result(
    correct: Sequence[bool], provenance: dict | None = None, item_ids: Sequence[str] | None = None
) -> TaskResult:
    """Accuracy in percent with its 95 % Wilson interval; with `item_ids`, the per-item outcomes (1/0) too."""
    n = len(correct)
    if n == 0:
        raise ValueError("no GSM8K items were evaluated")
    low, high = wilson_interval(sum(correct), n)
    return TaskResult(
        task=TASK,
        metric="accuracy",
        value=100 * sum(correct) / n,
        n=n,
        ci_low=100 * low,
        ci_high=100 * high,
        **(provenance or {}),
        item_ids=list(item_ids) if item_ids is not None else None,
        item_values=[float(value) for value in correct] if item_ids is not None else None,
    )


def run_gsm8k(
    policy: GenerationBackend,
    items: Sequence[GSM8KItem],
    provenance: dict | None = None,
    params: SamplingParams = POLICY_PARAMS,
) -> TaskOutcome:
    """Answer every problem once (greedy by default) and score the final numbers."""
    outputs = policy.generate(answer_requests(items), params, desc="gsm8k")
    rows = []
    for item, generations in zip(items, outputs, strict=True):
        generation = generations[0]
        predicted = extract_answer(generation.text)
        rows.append(
            {
                "index": item.index,
                "item_id": prompt_id(item.question),
                "question": item.question,
                "reference_solution": item.solution,
                "reference_answer": item.answer,
                "response": generation.text,
                "predicted_answer": predicted,
                "correct": predicted is not None and numbers_equal(predicted, item.answer),
                "num_tokens": generation.num_tokens,
                "finish_reason": generation.finish_reason,
            }
        )
    correct = [row["correct"] for row in rows]
    result = accuracy_result(correct, provenance, [row["item_id"] for row in rows])
    return TaskOutcome([result], {"items": (rows, ITEM_FEATURES)})
