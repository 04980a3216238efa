import json
import weakref

import pytest
from datasets import load_dataset

from rlrf_hub.backends.base import GenerationRequest, SamplingParams
from rlrf_hub.cli import main
from rlrf_hub.evaluation.factscore import FactScoreSettings
from rlrf_hub.evaluation.judging import judge_identity
from rlrf_hub.evaluation.results import EvaluationReport
from rlrf_hub.evaluation.runner import AnsweredFirst, EvaluationSettings, evaluate_policy


@pytest.fixture(scope="module")
def tiny_backend(tiny_model):
    from rlrf_hub.backends.transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(tiny_model, batch_size=8)


def _settings(data_dir, **overrides) -> EvaluationSettings:
    settings = EvaluationSettings(
        gsm8k_source=str(data_dir / "gsm8k/test.jsonl"),
        just_eval_source=str(data_dir / "just_eval/just_eval_instruct.jsonl"),
        knowledge_source=str(data_dir / "factscore/wikipedia/wikipedia_reference_text.json"),
        factscore_topics=str(data_dir / "factscore/labeled/prompt_entities.txt"),
        judge_max_new_tokens=160,
        reason_max_chars=4,
        factscore=FactScoreSettings(
            num_passages=1,
            decompose_max_new_tokens=64,
            max_facts_per_sentence=2,
            min_facts_per_sentence=1,
            fact_max_chars=30,
        ),
        # The random tiny model's greedy answers are blank lines; sampled ones give the judge text to work on.
        policy_params=SamplingParams(max_new_tokens=20, temperature=1.0, top_p=1.0, do_sample=True, seed=1),
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def test_evaluate_policy_end_to_end_on_tiny_model(tmp_path, data_dir, tiny_backend):
    report = evaluate_policy(
        tiny_backend,
        ["gsm8k", "factscore", "just_eval"],
        tiny_backend,
        2,
        tmp_path,
        _settings(data_dir),
        model="embedded:tiny",
        iteration=0,
    )
    judge = judge_identity(tiny_backend)
    saved = EvaluationReport.load(tmp_path)
    assert saved == report and saved.model == "embedded:tiny" and saved.iteration == 0
    by_metric = {(r.task, r.metric): r for r in report.results}
    accuracy = by_metric["gsm8k", "accuracy"]
    assert accuracy.n == 2 and accuracy.judge is None and 0 <= accuracy.ci_low <= accuracy.value <= accuracy.ci_high
    assert by_metric["factscore", "abstention_rate"].n == 2
    for (task, metric), result in by_metric.items():
        judged = task == "just_eval" and metric not in ("length_words", "length_tokens")
        judged |= task == "factscore" and metric != "abstention_rate"
        assert result.judge == (judge if judged else None), (task, metric)

    gsm8k = load_dataset(str(tmp_path / "gsm8k/items"), split="train")
    assert gsm8k.num_rows == 2 and set(gsm8k["correct"]) <= {True, False}

    items = load_dataset(str(tmp_path / "factscore/items"), split="train")
    assert items.num_rows == 2 and items["prompt"][0].startswith("Tell me a bio of ")
    facts = load_dataset(str(tmp_path / "factscore/facts"), split="train")
    assert facts.num_rows == sum(items["num_facts"]) > 0
    assert set(facts["parse_status"]) <= {"strict", "tolerant", "failed"}
    scored = [s for s in items["score"] if s is not None]
    if scored:
        assert by_metric["factscore", "factscore"].value == pytest.approx(100 * sum(scored) / len(scored))

    answers = load_dataset(str(tmp_path / "just_eval/items"), split="train")
    assert answers["category"] == ["regular", "safety"]
    breakdown = json.loads((tmp_path / "just_eval" / "breakdown.json").read_text())
    assert breakdown["overall"]["n"] == 2
    assert sum(breakdown["parse_status"].values()) == 2
    for aspect in ("helpfulness", "safety"):
        if (("just_eval", aspect)) in by_metric:
            assert 1 <= by_metric["just_eval", aspect].value <= 5


def test_evaluate_policy_checks_tasks_before_generating(tmp_path, data_dir, tiny_backend):
    settings = _settings(data_dir)
    with pytest.raises(ValueError, match="need.* a judge"):
        evaluate_policy(tiny_backend, ["just_eval"], None, 1, tmp_path, settings)
    with pytest.raises(ValueError, match="unknown task"):
        evaluate_policy(tiny_backend, ["mmlu"], tiny_backend, 1, tmp_path, settings)
    with pytest.raises(ValueError, match="knowledge source"):
        evaluate_policy(
            tiny_backend, ["factscore"], tiny_backend, 1, tmp_path, _settings(data_dir, knowledge_source=None)
        )
    with pytest.raises(FileNotFoundError, match="judge template not found"):
        evaluate_policy(
            tiny_backend,
            ["gsm8k", "just_eval"],
            tiny_backend,
            1,
            tmp_path,
            _settings(data_dir, judge_template=str(tmp_path / "nope.txt")),
        )
    assert not (tmp_path / "eval_results.json").exists()


def test_cli_from_labels_prints_human_factscore(tmp_path, data_dir, capsys):
    files = [str(data_dir / f"factscore/labeled/{m}.jsonl") for m in ("ChatGPT", "InstructGPT", "PerplexityAI")]
    assert main(["evaluate", "--from-labels", *files, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ChatGPT: human-label FactScore 58.30" in out
    assert "InstructGPT: human-label FactScore 42.81" in out
    assert "PerplexityAI: human-label FactScore 80.38" in out
    saved = json.loads((tmp_path / "factscore_labels.json").read_text())
    assert [entry["model"] for entry in saved] == ["ChatGPT", "InstructGPT", "PerplexityAI"]


def test_cli_evaluate_gsm8k(tmp_path, data_dir, tiny_model, capsys):
    code = main(
        [
            "evaluate",
            "--model",
            tiny_model,
            "--tasks",
            "gsm8k",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--gsm8k-data",
            str(data_dir / "gsm8k/test.jsonl"),
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = EvaluationReport.load(tmp_path)
    assert report.model == tiny_model and [(r.task, r.metric, r.n) for r in report.results] == [
        ("gsm8k", "accuracy", 2)
    ]
    assert "gsm8k" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, tiny_model, capsys):
    assert main(["evaluate", "--model", tiny_model, "--tasks", "factscore", "--output", str(tmp_path)]) == 2
    assert "factscore need(s) a judge" in capsys.readouterr().err
    assert main(["evaluate", "--tasks", "gsm8k"]) == 2
    assert "give --model" in capsys.readouterr().err


class CallLog:
    """The tiny backend, with every `generate` call's description, prompts and replies kept."""

    def __init__(self, backend):
        self.backend = backend
        self.model_id, self.revision, self.adapter = backend.model_id, backend.revision, backend.adapter
        self.calls: list[tuple[str | None, list[str], list[str]]] = []

    def generate(self, requests, params, desc=None):
        outputs = self.backend.generate(requests, params, desc)
        prompts = [request.messages[-1]["content"] for request in requests]
        self.calls.append((desc, prompts, [generations[0].text for generations in outputs]))
        return outputs


def test_the_policy_answers_every_tasks_prompts_in_one_call(tmp_path, data_dir, tiny_backend):
    """Three tasks of two items are one batch of six answers, not three batches of two."""
    policy = CallLog(tiny_backend)
    evaluate_policy(policy, ["gsm8k", "factscore", "just_eval"], tiny_backend, 2, tmp_path, _settings(data_dir))
    ((desc, prompts, replies),) = policy.calls
    assert desc == "answers" and len(prompts) == 6
    answered = dict(zip(prompts, replies, strict=True))
    gsm8k_items = load_dataset(str(tmp_path / "gsm8k/items"), split="train")
    bios = load_dataset(str(tmp_path / "factscore/items"), split="train")
    just_eval_items = load_dataset(str(tmp_path / "just_eval/items"), split="train")
    saved = [
        *zip(bios["prompt"], bios["response"], strict=True),
        *zip(just_eval_items["instruction"], just_eval_items["response"], strict=True),
    ]
    assert all(answered[prompt] == response for prompt, response in saved)
    assert sorted(gsm8k_items["response"]) == sorted(
        reply for prompt, reply in answered.items() if any(q in prompt for q in gsm8k_items["question"])
    )


def test_a_released_policy_is_freed_before_the_judge_works_and_its_answers_still_serve(
    tmp_path, data_dir, tiny_backend
):
    """The caller keeps no reference (as the loop's evaluation stage does): the judge never runs beside the policy."""
    refs = []

    def new_policy():
        policy = CallLog(tiny_backend)
        refs.append(weakref.ref(policy))
        return policy

    judge = CallLog(tiny_backend)
    seen_alive = []
    judged = judge.generate
    judge.generate = lambda *args, **kwargs: seen_alive.append(refs[0]() is not None) or judged(*args, **kwargs)

    tasks, settings = ["factscore", "just_eval"], _settings(data_dir)
    report = evaluate_policy(new_policy(), tasks, judge, 1, tmp_path, settings, release_policy=True)

    assert seen_alive and not any(seen_alive)
    assert {result.task for result in report.results} == set(tasks)
    answering = AnsweredFirst(CallLog(tiny_backend), [], SamplingParams(max_new_tokens=2))
    answering.release()
    with pytest.raises(RuntimeError, match="released after answering; bios asked for more"):
        answering.generate([GenerationRequest([{"role": "user", "content": "hi"}])], answering.params, "bios")


@pytest.fixture(scope="module")
def served_judge_url(tiny_model):
    from rlrf_hub.serving.launch import start_server

    with start_server(tiny_model) as server:
        yield server.url


def test_evaluate_policy_with_judge_behind_rlrf_hub_serve(tmp_path, data_dir, tiny_backend, served_judge_url):
    from rlrf_hub.backends.endpoint import EndpointBackend

    judge = EndpointBackend(served_judge_url)
    report = evaluate_policy(tiny_backend, ["factscore", "just_eval"], judge, 2, tmp_path, _settings(data_dir))
    judged = [r for r in report.results if r.judge is not None]
    assert {r.task for r in judged} == {"factscore", "just_eval"}
    assert all(served_judge_url in r.judge for r in judged)
    answers = load_dataset(str(tmp_path / "just_eval/items"), split="train")
    assert answers["category"] == ["regular", "safety"]
    assert set(answers["judge"]) == {judge_identity(judge)}


def test_cli_agreement_with_judge_url(tmp_path, data_dir, served_judge_url, capsys):
    code = main(
        [
            "evaluate",
            "--from-labels",
            str(data_dir / "factscore/labeled/InstructGPT.jsonl"),
            "--judge",
            served_judge_url,
            "--knowledge-source",
            str(data_dir / "factscore/wikipedia/wikipedia_reference_text.json"),
            "--num-passages",
            "1",
            "--limit",
            "1",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "InstructGPT: human-label FactScore 42.81" in out
    assert f"via {served_judge_url}" in out and "agreement" in out
    (entry,) = json.loads((tmp_path / "factscore_labels.json").read_text())
    agreement = entry["agreement"]
    assert agreement["num_responses"] == 1 and agreement["num_facts"] > 0
    assert 0 <= agreement["agreement"] <= 100
    counts = ("true_positives", "false_positives", "false_negatives", "true_negatives")
    assert sum(agreement[key] for key in counts) == agreement["num_facts"]


def test_a_judge_with_the_policys_weights_shares_them_and_batches_as_a_judge(tiny_backend):
    """`evaluate --judge` naming the policy's model: one copy in memory, but the judge's batch size (a support check's
    prompt is ten times a GSM8K one, and its cache grows with the batch)."""
    import argparse

    from rlrf_hub.evaluation.cli import _judge

    judge = _judge(argparse.Namespace(judge=tiny_backend.model_id, judge_batch_size=3), tiny_backend)
    assert judge.model is tiny_backend.model and judge.weight_precision == tiny_backend.weight_precision
    assert judge._decoder is tiny_backend._decoder
    assert (judge.batch_size, tiny_backend.batch_size) == (3, 8)
