"""`rlrf-hub evaluate`: benchmark a policy (base model, optionally with an adapter) and save the results."""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

from .judging import judge_from_spec, split_revision
from .results import EvaluationReport

DESCRIPTION = """Evaluate a policy on GSM8K (zero-shot, greedy, final-number accuracy with a 95% Wilson interval),
FactScore (biographies split into atomic facts and checked against a knowledge source by the judge) and
Just-Eval (the judge scores answers 1-5 per aspect). Numbers go to <output>/eval_results.json, each
judge-dependent one with the judge's identity; per-item outputs go to <output>/<task>/items/ (and
<output>/factscore/facts/) as datasets: datasets.load_dataset("<output>/gsm8k/items", split="train").

--from-labels FILE ... prints FactScore computed from FActScore's human atomic-fact labels
(labeled/<Model>.jsonl) and, with --judge and --knowledge-source, how the judge's support decisions on those
facts agree with the humans (agreement, and the FactScore error per model).

Data defaults: the copies under ../shared/data when they exist there, else the Hub ids (openai/gsm8k,
re-align/just-eval-instruct)."""


def add_parser(commands) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "evaluate",
        help="benchmark a policy on GSM8K, FactScore and Just-Eval",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="the base model: Hub id, folder or embedded name, optionally @revision")
    parser.add_argument("--adapter", help="a LoRA adapter: a folder, or a Hub repo id optionally @revision")
    parser.add_argument("--tasks", default="gsm8k,factscore,just_eval", help="comma-separated (default: all three)")
    parser.add_argument(
        "--limit",
        type=int,
        help="at most N items per task (default: all); with --from-labels and --judge, N responses per file",
    )
    parser.add_argument("--judge", help="judge for FactScore and Just-Eval: MODEL[@REV] in process, or an http(s) URL")
    parser.add_argument("--judge-template", help="Just-Eval judge template file (regular items) or folder")
    parser.add_argument("--judge-safety-template", help="Just-Eval judge template for the safety items")
    parser.add_argument("--knowledge-source", help="FactScore knowledge: {title, text} rows or {title: ...} JSON")
    parser.add_argument("--factscore-topics", help="entities: .txt (one per line) or rows with `topic`")
    parser.add_argument("--factscore-demos", help="atomic-fact demonstrations: JSON/text file or folder")
    parser.add_argument("--num-passages", type=int, default=5, help="passages shown per fact (default: 5)")
    parser.add_argument("--from-labels", nargs="+", metavar="FILE", help="FActScore human-labelled .jsonl file(s)")
    parser.add_argument("--gsm8k-data", help="GSM8K file, folder or Hub id")
    parser.add_argument("--just-eval-data", help="Just-Eval instructions: file, folder or Hub id")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit (default: 512)")
    parser.add_argument("--judge-max-new-tokens", type=int, default=640, help="Just-Eval judge reply limit")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per batch, in-process policy")
    parser.add_argument("--judge-batch-size", type=int, default=16, help="sequences per batch, in-process judge")
    parser.add_argument("--iteration", type=int, help="the policy's iteration (M<t>), recorded in the report")
    parser.add_argument("--output", help="output folder (default: eval/<model>[-<adapter>])")
    parser.set_defaults(handler=evaluate_command)
    return parser


def evaluate_command(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        return _evaluate(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"rlrf-hub evaluate: error: {err}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    if not args.model and not args.from_labels:
        raise ValueError("give --model (to evaluate a policy) and/or --from-labels FILE ...")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    settings = _settings(args)
    output = Path(args.output) if args.output else None
    policy = None
    if args.model:
        from .runner import check_tasks

        tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
        check_tasks(tasks, args.judge or None, settings)
        policy, names = _policy(args)
        output = output or Path("eval") / _slug(names["model"], names["adapter"])
    judge = _judge(args, policy) if args.judge else None
    if args.from_labels:
        _from_labels(args, judge, settings, output)
    if policy is None:
        return 0
    from .just_eval import format_breakdown
    from .runner import evaluate_policy

    report = evaluate_policy(policy, tasks, judge, args.limit, output, settings, iteration=args.iteration, **names)
    print(format_report(report))
    breakdown = output / "just_eval" / "breakdown.json"
    if "just_eval" in tasks and breakdown.is_file():
        print("\n" + format_breakdown(json.loads(breakdown.read_text())))
    print(f"\nresults: {output.resolve()}")
    return 0


def _settings(args: argparse.Namespace):
    from .runner import EvaluationSettings, benchmark_sources

    settings = EvaluationSettings(
        **benchmark_sources(args.gsm8k_data, args.just_eval_data),
        knowledge_source=args.knowledge_source,
        factscore_topics=args.factscore_topics,
        factscore_demos=args.factscore_demos,
        judge_template=args.judge_template,
        judge_safety_template=args.judge_safety_template,
        max_new_tokens=args.max_new_tokens,
        judge_max_new_tokens=args.judge_max_new_tokens,
    )
    settings.factscore.num_passages = args.num_passages
    return settings


def _policy(args: argparse.Namespace):
    from ..backends.transformers_backend import TransformersBackend

    model, revision = split_revision(args.model)
    adapter_path, adapter, adapter_revision = _adapter(args.adapter)
    policy = TransformersBackend.from_pretrained(
        model, revision=revision, adapter=adapter_path, batch_size=args.batch_size
    )
    names = {"model": model, "model_revision": revision, "adapter": adapter, "adapter_revision": adapter_revision}
    return policy, names


def _adapter(spec: str | None) -> tuple[str | None, str | None, str | None]:
    """(folder to load, name to record, revision to record); a Hub adapter is downloaded at its revision."""
    if not spec:
        return None, None, None
    name, revision = split_revision(spec)
    if Path(name).is_dir():
        return name, name, revision
    from huggingface_hub import snapshot_download

    folder = snapshot_download(name, revision=revision)
    commit = Path(folder).name
    return folder, name, commit if re.fullmatch(r"[0-9a-f]{40}", commit) else revision


def _judge(args: argparse.Namespace, policy):
    spec = args.judge
    if policy is not None and not re.match(r"https?://", spec) and not policy.adapter:
        if (policy.model_id, policy.revision) == split_revision(spec):
            return policy.with_batch_size(args.judge_batch_size)  # the same weights: no second copy in memory
    return judge_from_spec(spec, args.judge_batch_size)


def _from_labels(args: argparse.Namespace, judge, settings, output: Path | None) -> None:
    from .factscore import compare_with_labels, human_summary, load_labeled
    from .runner import factscore_scorer

    if judge is not None and not settings.knowledge_source:
        raise ValueError("comparing the judge with the human labels needs --knowledge-source")
    scorer = factscore_scorer(judge, settings) if judge is not None else None
    payload = []
    for path in args.from_labels:
        responses = load_labeled(path)
        model = Path(path).stem
        summary = human_summary(responses)
        entry = {
            "model": model,
            "file": str(path),
            "human": {**asdict(summary), "abstention_rate": summary.abstention_rate},
        }
        print(
            f"{model}: human-label FactScore {summary.factscore:.2f} "
            f"(length-penalised {summary.factscore_length_penalized:.2f}) over {summary.num_scored} responses; "
            f"{summary.num_abstained} abstained, {summary.num_without_facts} without facts, {summary.num_facts} facts"
        )
        if scorer is not None:
            agreement = compare_with_labels(scorer, responses, model, limit=args.limit)
            entry["agreement"] = asdict(agreement)
            print(format_agreement(agreement))
        payload.append(entry)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        path = output / "factscore_labels.json"
        path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        print(f"saved {path}")


def format_agreement(report) -> str:
    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    return (
        f"  judge {report.judge} on {report.num_facts} human atomic facts of {report.num_responses} responses: "
        f"agreement {report.agreement:.1f}%, FactScore {number(report.judge_factscore)} vs human "
        f"{number(report.human_factscore)} (error {number(report.factscore_error)}); "
        f"TP {report.true_positives} FP {report.false_positives} FN {report.false_negatives} "
        f"TN {report.true_negatives}; unreadable replies {report.verify_failures}; "
        f"{report.skipped_without_knowledge} responses skipped (entity not in the knowledge source)"
    )


def format_report(report: EvaluationReport) -> str:
    policy = report.model + (f"@{report.model_revision}" if report.model_revision else "")
    if report.adapter:
        policy += f" + {report.adapter}" + (f"@{report.adapter_revision}" if report.adapter_revision else "")
    lines = [
        f"Evaluation of {policy}",
        f"{'task':<10} {'metric':<28} {'value':>9} {'95% interval':>20} {'n':>6}  judge",
    ]
    for r in report.results:
        interval = f"[{r.ci_low:.2f}, {r.ci_high:.2f}]" if r.ci_low is not None and r.ci_high is not None else "-"
        value = f"{r.value:>9.2f}" if r.value is not None else f"{'undefined':>9}"
        line = f"{r.task:<10} {r.metric:<28} {value} {interval:>20} {r.n:>6}  {r.judge or '-'}"
        lines.append(line + (f"  ({r.undefined})" if r.undefined else ""))
    return "\n".join(lines)


def _slug(model: str, adapter: str | None) -> str:
    parts = [Path(model).name or model] + ([Path(adapter).name or adapter] if adapter else [])
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("_") or "model"
