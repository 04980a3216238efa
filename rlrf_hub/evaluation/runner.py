"""Evaluate one policy on the benchmarks and save its numbers and per-item outputs.

Layout of `output_dir`:

    eval_results.json        the `EvaluationReport` (rewritten after each task, so a crash keeps what was done); the
                             GSM8K and FactScore results carry their per-item outcomes (`item_ids`, `item_values`)
    gsm8k/items/             one row per problem: `load_dataset("<output_dir>/gsm8k/items", split="train")`, its
                             `item_id` the prompt id of the question and `correct` the outcome
    factscore/items/         one row per biography
    factscore/facts/         one row per atomic fact, with the judge's decision and the passages it saw
    just_eval/items/         one row per instruction, with the judge's scores and reasons
    just_eval/breakdown.json the scores per category and task tag (what `format_breakdown` prints)

Every row of a judged task names the judge in its `judge` column.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from ..backends.base import Generation, GenerationBackend, GenerationRequest, SamplingParams
from . import gsm8k, just_eval
from .factscore import TASK as FACTSCORE
from .factscore import FactDecomposer, FactScorer, FactScoreSettings, KnowledgeSource, load_demos, load_topics
from .factscore.pipeline import asked_topics, bio_requests, run_factscore
from .records import TaskOutcome, save_tables
from .results import EvaluationReport

SHARED_DATA = Path("../shared/data")
TASKS = (gsm8k.TASK, FACTSCORE, just_eval.TASK)
JUDGED_TASKS = (FACTSCORE, just_eval.TASK)


@dataclass
class EvaluationSettings:
    """Where each benchmark's data comes from and how long answers and judge replies may be.

    `policy_params` replaces the greedy decoding of answers (its `max_new_tokens` included) when given.
    """

    gsm8k_source: str = gsm8k.HUB_ID
    gsm8k_split: str = "test"
    just_eval_source: str = just_eval.HUB_ID
    just_eval_split: str = "test"
    knowledge_source: str | None = None
    factscore_topics: str | None = None
    factscore_demos: str | None = None
    judge_template: str | None = None
    judge_safety_template: str | None = None
    max_new_tokens: int = 512
    judge_max_new_tokens: int = just_eval.JUDGE_MAX_NEW_TOKENS
    reason_max_chars: int | None = None
    judge_retries: int = 1
    factscore: FactScoreSettings = field(default_factory=FactScoreSettings)
    policy_params: SamplingParams | None = None


def benchmark_sources(gsm8k_data: str | None = None, just_eval_data: str | None = None) -> dict[str, str]:
    """GSM8K's and Just-Eval's data: what is given, else the copies under `../shared/data` when they exist there,
    else the Hub ids (as `EvaluationSettings` fields)."""

    def local_or_hub(relative: str, hub_id: str) -> str:
        local = SHARED_DATA / relative
        return str(local) if local.is_file() else hub_id

    return {
        "gsm8k_source": gsm8k_data or local_or_hub("gsm8k/test.jsonl", gsm8k.HUB_ID),
        "just_eval_source": just_eval_data or local_or_hub("just_eval/just_eval_instruct.jsonl", just_eval.HUB_ID),
    }


def check_tasks(tasks: Sequence[str], judge: GenerationBackend | None, settings: EvaluationSettings) -> list[str]:
    """The tasks in order, without repeats; one error naming what is unknown or missing, before any generation."""
    chosen = list(dict.fromkeys(tasks))
    unknown = [task for task in chosen if task not in TASKS]
    if unknown or not chosen:
        raise ValueError(f"unknown task(s) {unknown or tasks}: choose from {', '.join(TASKS)}")
    judged = [task for task in chosen if task in JUDGED_TASKS]
    if judged and judge is None:
        raise ValueError(f"{', '.join(judged)} need(s) a judge (--judge MODEL[@REV] or URL)")
    if FACTSCORE in chosen and not settings.knowledge_source:
        raise ValueError("factscore needs a knowledge source (--knowledge-source FILE|FOLDER|HUB_ID)")
    if just_eval.TASK in chosen:
        just_eval.resolve_templates(settings.judge_template, settings.judge_safety_template)
    return chosen


def evaluate_policy(
    policy: GenerationBackend,
    tasks: Sequence[str],
    judge: GenerationBackend | None,
    limit: int | None,
    output_dir: Path,
    settings: EvaluationSettings | None = None,
    *,
    model: str | None = None,
    model_revision: str | None = None,
    adapter: str | None = None,
    adapter_revision: str | None = None,
    iteration: int | None = None,
    release_policy: bool = False,
) -> EvaluationReport:
    """Run `tasks` on `policy` (at most `limit` items each), judged by `judge` where a task needs one.

    `model`/`adapter` and their revisions name the policy in the report (default: what the backend says).
    `release_policy` lets go of the policy once it has answered every task's prompts, before any judging: when the
    caller keeps no reference either, its weights are freed while the judge works (on 2 cores of an AVX2 CPU with a
    135M policy and judge, `make main` peaked at 3.8 GB with it and 4.6 GB without).
    """
    settings = settings or EvaluationSettings()
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be positive, got {limit}")
    chosen = check_tasks(tasks, judge, settings)
    output_dir = Path(output_dir)
    report = EvaluationReport(
        model=model or policy.model_id,
        model_revision=model_revision if model_revision is not None else policy.revision,
        adapter=adapter if adapter is not None else policy.adapter,
        adapter_revision=adapter_revision,
        iteration=iteration,
    )
    params = settings.policy_params or replace(gsm8k.POLICY_PARAMS, max_new_tokens=settings.max_new_tokens)
    prepared = {task: _prepare_task(task, judge, limit, settings, params) for task in chosen}
    answering = AnsweredFirst(policy, [r for task in prepared.values() for r in task.requests], params)
    if release_policy:
        del policy
        answering.release()
    for name, task in prepared.items():
        outcome = task.run(answering)
        _save_outcome(output_dir / name, outcome)
        report.results.extend(outcome.results)
        report.save(output_dir)
    return report


@dataclass
class _Task:
    requests: list[GenerationRequest]  # what the task asks the policy
    run: Callable[[GenerationBackend], TaskOutcome]


def _prepare_task(
    task: str,
    judge: GenerationBackend | None,
    limit: int | None,
    settings: EvaluationSettings,
    params: SamplingParams,
) -> _Task:
    if task == gsm8k.TASK:
        items, provenance = gsm8k.load_gsm8k(settings.gsm8k_source, settings.gsm8k_split, limit)
        return _Task(gsm8k.answer_requests(items), lambda policy: gsm8k.run_gsm8k(policy, items, provenance, params))
    if task == just_eval.TASK:
        items, provenance = just_eval.load_just_eval(settings.just_eval_source, settings.just_eval_split, limit)
        templates = just_eval.resolve_templates(settings.judge_template, settings.judge_safety_template)
        run = partial(
            just_eval.run_just_eval,
            judge=judge,
            items=items,
            templates=templates,
            provenance=provenance,
            params=params,
            judge_max_new_tokens=settings.judge_max_new_tokens,
            reason_max_chars=settings.reason_max_chars,
            retries=settings.judge_retries,
        )
        return _Task(just_eval.answer_requests(items), run)
    scorer = factscore_scorer(judge, settings)
    topics, provenance = load_topics(settings.factscore_topics, scorer.knowledge)
    topics = asked_topics(topics, scorer.knowledge, limit)
    return _Task(bio_requests(topics), lambda policy: run_factscore(policy, scorer, topics, provenance, params))


class AnsweredFirst:
    """The policy, with its answers to every task's prompts generated in one call before any task runs.

    Each task asks the policy once, for few prompts in the CPU recipes; on 2 cores a decoding step of 3 rows costs
    nearly what a step of 9 does, so answering every task's prompts together saves most of two tasks' answer time.
    A task's own call then reads its answers; any other call goes to the policy, unless it was released.
    """

    def __init__(self, policy: GenerationBackend, requests: list[GenerationRequest], params: SamplingParams):
        self.policy: GenerationBackend | None = policy
        self.params = params
        self.model_id, self.revision, self.adapter = policy.model_id, policy.revision, policy.adapter
        outputs = policy.generate(requests, params, desc="answers") if requests else []
        self.answers = {_request_key(r): out for r, out in zip(requests, outputs, strict=True)}

    def generate(
        self, requests: Sequence[GenerationRequest], params: SamplingParams, desc: str | None = None
    ) -> list[list[Generation]]:
        keys = [_request_key(request) for request in requests]
        if params == self.params and all(key in self.answers for key in keys):
            return [self.answers[key] for key in keys]
        if self.policy is None:
            raise RuntimeError(f"the policy was released after answering; {desc or 'a call'} asked for more")
        return self.policy.generate(requests, params, desc)

    def release(self) -> None:
        """Drop the policy (and collect it, models hold reference cycles); only the answers stay."""
        self.policy = None
        gc.collect()


def _request_key(request: GenerationRequest) -> str:
    return json.dumps([request.messages, request.n, request.json_schema], sort_keys=True)


def factscore_scorer(judge: GenerationBackend, settings: EvaluationSettings) -> FactScorer:
    knowledge = KnowledgeSource.load(settings.knowledge_source)
    demos = load_demos(settings.factscore_demos) if settings.factscore_demos else None
    factscore_settings = replace(settings.factscore, judge_retries=settings.judge_retries)
    return FactScorer(judge, knowledge, FactDecomposer(demos), factscore_settings)


def _save_outcome(folder: Path, outcome: TaskOutcome) -> None:
    save_tables(folder, outcome.tables)
    for name, payload in outcome.files.items():
        (folder / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
