"""Evaluation results on adapter cards: `model-index`, `.eval_results/`, table and plots, on a real offline Hub."""

import os

os.environ["HF_HUB_DISABLE_XET"] = "1"

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import hf_clients
from huggingface_hub import HfApi, ModelCard, hf_hub_download, parse_eval_result_entries
from huggingface_hub.repocard import metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from rlrf_hub.cards import adapter_card
from rlrf_hub.cards.results import eval_results_files, model_index, update_card
from rlrf_hub.cards.tables import ResultsError, labelled_reports, model_label
from rlrf_hub.evaluation.results import EvaluationReport, TaskResult
from rlrf_hub.hub.server import serve
from rlrf_hub.publishing import FolderPublisher
from rlrf_hub.publishing.hub import HubPublisher
from rlrf_hub.publishing.results import publish_results

TOKEN = "hf_test_secret_token_0123456789"
JUDGE = "judge-org/judge-7b@0123abc"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """One offline Hub for the module; this process's HF clients point at it, with caches in temporary folders."""
    server, url = serve(tmp_path_factory.mktemp("hub-root"))
    with hf_clients(tmp_path_factory.mktemp("hf-caches"), url):
        yield url
    server.shutdown()
    server.server_close()


def make_report(t: int, gsm8k: float, factscore: float, just_eval: float, adapter: str | None = None):
    """A synthetic report of M_t: GSM8K by rule, FactScore and Just-Eval by a judge, with 95% intervals."""
    return EvaluationReport(
        model="tiny",
        adapter=adapter if t else None,
        adapter_revision=f"iter-{t}" if t else None,
        iteration=t,
        results=[
            TaskResult("gsm8k", "accuracy", gsm8k, 40, gsm8k - 0.12, gsm8k + 0.13, None, "openai/gsm8k", "a" * 40),
            TaskResult("factscore", "factscore", factscore, 12, factscore - 0.1, factscore + 0.1, JUDGE),
            TaskResult("factscore", "factscore_length_penalized", factscore - 0.04, 12, None, None, JUDGE),
            TaskResult("just_eval", "helpfulness", just_eval - 0.2, 8, just_eval - 0.6, just_eval + 0.3, JUDGE),
            TaskResult("just_eval", "average", just_eval, 8, just_eval - 0.4, just_eval + 0.4, JUDGE),
            TaskResult("just_eval", "length_words", 120.0 + t, 8, 100.0, 140.0),
        ],
    )


def lineage(t: int, run: str = "run") -> dict:
    return {
        "run": run,
        "stage": "adapter",
        "iteration": t - 1,
        "policy": {"model": "tiny", "revision": None},
        "parents": [{"stage": "pairs", "location": f"ns/{run}-pairs", "revision": f"{t}" * 40}],
        "counts": {"pairs": 3 + t},
        "model_name": f"M{t}",
        "method": "dpo",
        "trained_from": f"M{t - 1}" if t > 1 else "M0 (the base model)",
        "reference_model": "M0 (the base model)",
    }


def _values(results) -> list[tuple]:
    return sorted((r.dataset_type, r.metric_type, r.metric_value, r.metric_config, r.verified) for r in results)


def test_labels_merge_and_bad_labels():
    assert model_label(make_report(0, 0.1, 0.2, 3.0)) == "M0"
    assert model_label(make_report(2, 0.1, 0.2, 3.0, adapter="ns/run-adapter")) == "M2"
    folder = EvaluationReport(model="tiny", adapter="/runs/x/adapters/M3", adapter_revision="0" * 40)
    assert model_label(folder) == "M3"
    with pytest.raises(ResultsError, match="iteration"):
        model_label(EvaluationReport(model="tiny", adapter="ns/other", adapter_revision="abc"))
    gsm, rest = make_report(1, 0.3, 0.4, 3.0, "a"), make_report(1, 0.5, 0.6, 3.5, "a")
    gsm.results, rest.results = gsm.results[:1], rest.results[1:]
    merged = labelled_reports({"M1-reward-only": make_report(1, 0, 0, 0, "b"), "M1": [gsm, rest], "M0": []})
    assert list(merged) == ["M1", "M1-reward-only"], "run models first, then baselines; empty labels dropped"
    assert [(r.task, r.value) for r in merged["M1"].results][:2] == [("gsm8k", 0.3), ("factscore", 0.6)]
    with pytest.raises(ResultsError, match="M1 reward"):
        labelled_reports({"M1 reward": make_report(1, 0, 0, 0, "b")})


def test_eval_results_files_follow_the_hub_format():
    files = eval_results_files(make_report(1, 0.25, 0.5, 3.5, "ns/run-adapter"), source_url="http://hub/x")
    assert set(files) == {
        ".eval_results/gsm8k.yaml",
        ".eval_results/factscore.yaml",
        ".eval_results/factscore_factscore_length_penalized.yaml",
        ".eval_results/just_eval.yaml",
        ".eval_results/just_eval_helpfulness.yaml",
    }
    (gsm8k,) = parse_eval_result_entries(yaml.safe_load(files[".eval_results/gsm8k.yaml"]))
    assert (gsm8k.dataset_id, gsm8k.task_id, gsm8k.value, gsm8k.dataset_revision) == (
        "openai/gsm8k",
        "gsm8k",
        0.25,
        "a" * 40,
    )
    assert gsm8k.source_url == "http://hub/x" and "judge" not in gsm8k.notes
    (average,) = parse_eval_result_entries(yaml.safe_load(files[".eval_results/just_eval.yaml"]))
    assert average.value == 3.5 and average.dataset_id == "re-align/just-eval-instruct"
    assert f"judge: {JUDGE}" in average.notes and "metric: average" in average.notes
    assert not any("length_words" in text for text in files.values()), "a diagnostic is not a leaderboard score"


def test_update_card_keeps_metadata_and_replaces_its_section():
    card = adapter_card(lineage(1), {"train_loss": 0.69}, {"beta": 0.1}, "ns/run-adapter")
    report = make_report(1, 0.25, 0.5, 3.5, "ns/run-adapter")
    first = update_card(card, report, results_section="<!-- rlrf-results:start -->\nOLD\n<!-- rlrf-results:end -->")
    second = update_card(first, report, results_section="<!-- rlrf-results:start -->\nNEW\n<!-- rlrf-results:end -->")
    assert "NEW" in second.text and "OLD" not in second.text and second.text.count("rlrf-results:start") == 1
    assert second.text.index("NEW") < second.text.index("## Training results")
    assert second.data.rlrf == lineage(1) and second.data.base_model == "tiny" and "dpo" in second.data.tags
    assert second.data.model_name == "run-M1"
    assert _values(second.data.eval_results) == _values(model_index(report))


def test_card_metadata_round_trip_through_the_hub(hub, tmp_path):
    api = HfApi(token=TOKEN)
    repo = "dora/run-adapter"
    api.create_repo(repo)
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    adapter_card(lineage(1), {"train_loss": 0.69}, {"beta": 0.1}, repo).save(folder / "README.md")
    first = api.upload_folder(repo_id=repo, folder_path=folder).oid
    api.create_tag(repo, tag="iter-1", revision=first)
    reports = [make_report(0, 0.2, 0.4, 3.1), make_report(1, 0.25, 0.5, 3.5, repo)]

    sha = publish_results(api, repo, "iter-1", reports)

    card = ModelCard.load(repo)
    expected = model_index(reports[1])
    assert _values(card.data.eval_results) == _values(expected)
    assert card.data.rlrf == lineage(1) and card.data.base_model == "tiny" and card.data.library_name == "peft"
    meta = metadata_load(hf_hub_download(repo, "README.md", revision=sha))
    name, parsed = model_index_to_eval_results(meta["model-index"])
    assert name == "run-M1" and meta["rlrf"]["model_name"] == "M1"
    by_metric = {r.metric_type: r for r in parsed}
    assert by_metric["accuracy"].metric_value == 0.25 and by_metric["accuracy"].metric_config is None
    assert by_metric["accuracy"].dataset_revision == "a" * 40 and by_metric["accuracy"].dataset_config == "main"
    assert by_metric["factscore"].metric_config == f"judge={JUDGE}" and JUDGE in by_metric["factscore"].metric_name
    assert by_metric["factscore"].metric_args == {"n": 12, "ci95_low": 0.4, "ci95_high": 0.6, "judge": JUDGE}
    assert all(r.verified is False and r.task_type == "text-generation" for r in parsed)
    assert by_metric["average"].source_url.endswith(f"/{repo}/blob/main/eval/M1/eval_results.json")
    assert _values(parsed) == _values(expected)
    assert "length_words" not in by_metric and "| Just-Eval | length_words | 120 [100, 140] (n=8) |" in card.text
    assert "| M0 | 3.1 [2.7, 3.5] | 0.4 [0.3, 0.5] | 0.2 [0.08, 0.33] |" in card.text
    assert TOKEN not in card.content


def _tiny_adapter(tiny_model: str, folder: Path, seed: int):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    adapter = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    adapter.save_pretrained(folder)
    return adapter


def test_results_commit_keeps_iteration_tags_and_peft_loads(hub, tmp_path, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    publisher = HubPublisher("erin", "run", tmp_path / "work", endpoint=hub, token=TOKEN)
    api, repo = publisher.api, "erin/run-adapter"
    m1 = _tiny_adapter(tiny_model, publisher.adapter_dir(1), seed=1)
    iter1 = publisher.publish_adapter(1, lineage(1), {"train_loss": 0.69}, {"beta": 0.1}).revision

    assert publisher.find_results(1) is None
    published = publisher.publish_results(1, [make_report(0, 0.2, 0.4, 3.1), make_report(1, 0.25, 0.5, 3.5, repo)])
    assert publisher.find_results(1) == make_report(1, 0.25, 0.5, 3.5, repo), "a resumed run finds it"
    assert publisher.find_results(1, "M0") == make_report(0, 0.2, 0.4, 3.1)
    assert publisher.find_results(2) is None
    tags = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo).tags}
    assert tags == {"iter-1": iter1, "iter-1-eval": published.revision}
    assert [c.commit_id for c in api.list_repo_commits(repo)][:2] == [published.revision, iter1]
    files = set(api.list_repo_files(repo, revision="iter-1-eval"))
    assert {"eval/M0/eval_results.json", "eval/M1/eval_results.json", ".eval_results/gsm8k.yaml"} <= files
    assert {"eval/gsm8k.png", "eval/factscore.png", "eval/just_eval.png", "adapter_model.safetensors"} <= files
    unchanged = set(api.list_repo_files(repo, revision="iter-1")) - {".gitattributes"}
    assert unchanged == set(os.listdir(publisher.adapter_dir(1))), "the adapter's tag still names the adapter alone"
    again = publisher.publish_results(1, [make_report(1, 0.25, 0.5, 3.5, repo)])
    assert again.revision == published.revision, "the same results again change nothing"

    _tiny_adapter(tiny_model, publisher.adapter_dir(2), seed=2)
    iter2 = publisher.publish_adapter(2, lineage(2), {"train_loss": 0.6}, {"beta": 0.1}).revision
    with pytest.raises(ResultsError, match="different adapter"):
        publish_results(api, repo, "iter-1", [make_report(1, 0.3, 0.5, 3.5, repo)])
    second = publisher.publish_results(2, [make_report(2, 0.3, 0.55, 3.4, repo)])

    tags = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo).tags}
    assert tags == {
        "iter-1": iter1,
        "iter-1-eval": published.revision,
        "iter-2": iter2,
        "iter-2-eval": second.revision,
    }
    card = ModelCard.load(hf_hub_download(repo, "README.md"))
    assert card.data.rlrf["model_name"] == "M2" and card.data.model_name == "run-M2"
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["accuracy"] == 0.3
    rows = [line for line in card.text.splitlines() if line.startswith("| M")]
    assert [row.split(" | ")[0] for row in rows[:3]] == ["| M0", "| M1", "| M2"], "earlier results carried forward"
    assert "| M1 | 3.5 [3.1, 3.9] | 0.5 [0.4, 0.6] | 0.25 [0.13, 0.38] |" in card.text
    png = hf_hub_download(repo, "eval/gsm8k.png")
    assert Path(png).read_bytes().startswith(PNG_MAGIC)
    m1_card = ModelCard.load(hf_hub_download(repo, "README.md", revision="iter-1-eval"))
    assert m1_card.data.rlrf["model_name"] == "M1" and "| M2 |" not in m1_card.text

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = torch.tensor([[1, 2, 3, 4]])
    for revision in ("iter-1", "iter-1-eval"):
        restored = PeftModel.from_pretrained(base, repo, revision=revision, cache_dir=tmp_path / revision)
        with torch.no_grad():
            assert torch.allclose(restored(ids).logits, m1(ids).logits), revision
        base = restored.unload()
    entries = json.loads((tmp_path / "work" / "published.json").read_text())
    results = [(e["name"], e["tag"], e["revision"]) for e in entries if e["kind"] == "results"]
    assert results == [("M1", "iter-1-eval", published.revision), ("M2", "iter-2-eval", second.revision)]


def _fake_adapter(folder: Path, weights: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(weights)


def test_folder_publisher_gets_the_same_card(tmp_path):
    publisher = FolderPublisher(tmp_path / "out")
    for t in (1, 2):
        _fake_adapter(publisher.adapter_dir(t), bytes([t]) * 64)
        publisher.publish_adapter(t, lineage(t), {"train_loss": 0.6}, {"beta": 0.1})
    before = publisher.find_adapter(2)
    publisher.publish_results(1, [make_report(0, 0.2, 0.4, 3.1), make_report(1, 0.25, 0.5, 3.5, "x/M1")])
    publisher.publish_results(2, {"M2": make_report(2, 0.3, 0.55, 3.4, "x/M2")})

    assert publisher.find_results(2) == make_report(2, 0.3, 0.55, 3.4, "x/M2") and not publisher.find_results(3)
    folder = publisher.adapter_dir(2)
    assert publisher.find_adapter(2) == before, "results do not change the adapter's revision"
    assert sorted(p.name for p in (folder / "eval").iterdir() if p.is_dir()) == ["M0", "M1", "M2"]
    assert (folder / "eval" / "just_eval.png").read_bytes().startswith(PNG_MAGIC)
    card = ModelCard.load(folder / "README.md")
    assert card.data.rlrf == lineage(2) and {r.metric_type: r.metric_value for r in card.data.eval_results}[
        "average"
    ] == pytest.approx(3.4)
    assert all(r.source_url is None for r in card.data.eval_results), "a folder has no public URL"
    assert "| M2 | 3.4 [3, 3.8] | 0.55 [0.45, 0.65] | 0.3 [0.18, 0.43] |" in card.text
    assert (folder / ".eval_results" / "factscore.yaml").is_file()
    m1_card = (publisher.adapter_dir(1) / "README.md").read_text()
    assert "| M1 |" in m1_card and "| M2 |" not in m1_card
    entries = json.loads((tmp_path / "out" / "published.json").read_text())
    assert [(e["kind"], e["name"]) for e in entries if e["kind"] == "results"] == [
        ("results", "M1"),
        ("results", "M2"),
    ]
    with pytest.raises(ResultsError, match="M1"):
        publisher.publish_results(0, [make_report(0, 0.2, 0.4, 3.1)])
