"""`rlrf-hub report`: a run's benchmark table from its adapter repo on an offline Hub, or from its folders."""

import os

os.environ["HF_HUB_DISABLE_XET"] = "1"

import json
from pathlib import Path

import pytest
from conftest import hf_clients

from rlrf_hub.cli import main
from rlrf_hub.evaluation.results import EvaluationReport, TaskResult
from rlrf_hub.hub.server import serve
from rlrf_hub.publishing import FolderPublisher
from rlrf_hub.publishing.hub import HubPublisher

JUDGE = "judge-org/judge-7b@0123abc"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("results.png", "just_eval.png", "factscore.png", "gsm8k.png")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server, url = serve(tmp_path_factory.mktemp("hub-root"))
    with hf_clients(tmp_path_factory.mktemp("hf-caches"), url):
        yield url
    server.shutdown()
    server.server_close()


def make_report(t: int, gsm8k: float, factscore: float, just_eval: float, adapter: str | None = None):
    """The GSM8K result carries per-item outcomes: the first `40 * gsm8k` of 40 items right."""
    right = round(40 * gsm8k)
    items = {"item_ids": [f"p-{i}" for i in range(40)], "item_values": [1.0] * right + [0.0] * (40 - right)}
    return EvaluationReport(
        model="tiny",
        adapter=adapter if t else None,
        adapter_revision=f"iter-{t}" if t else None,
        iteration=t,
        results=[
            TaskResult("gsm8k", "accuracy", gsm8k, 40, gsm8k - 0.12, gsm8k + 0.13, None, "openai/gsm8k", **items),
            TaskResult("factscore", "factscore", factscore, 12, factscore - 0.1, factscore + 0.1, JUDGE),
            TaskResult("just_eval", "average", just_eval, 8, just_eval - 0.4, just_eval + 0.4, JUDGE),
        ],
    )


def lineage(t: int) -> dict:
    return {
        "run": "run",
        "stage": "adapter",
        "iteration": t - 1,
        "policy": {"model": "tiny", "revision": None},
        "parents": [{"stage": "pairs", "location": "ns/run-pairs", "revision": f"{t}" * 40}],
        "counts": {"pairs": 10 * t + 3},
        "model_name": f"M{t}",
        "method": "dpo",
        "trained_from": f"M{t - 1}" if t > 1 else "M0 (the base model)",
        "reference_model": "M0 (the base model)",
    }


EXPECTED_ROWS = [
    "| M0 | base model | - | 3.1 [2.7, 3.5] | 0.4 [0.3, 0.5] | 0.2 [0.08, 0.33] |",
    "| M1 | DPO from M0 | 13 | 3.5 [3.1, 3.9] | 0.5 [0.4, 0.6] | 0.25 [0.13, 0.38] |",
    "| M2 | DPO from M1 | 23 | 3.4 [3, 3.8] | 0.55 [0.45, 0.65] | 0.3 [0.18, 0.43] |",
    "| M1-reward-only | - | - | 3.2 [2.8, 3.6] | 0.35 [0.25, 0.45] | 0.21 [0.09, 0.34] |",
]


def publish_run(publisher) -> None:
    """Two fake adapters (an adapter repo only needs files here) with the results of M0, M1, M2 and a baseline."""
    repo = "ns/run-adapter"
    for t in (1, 2):
        folder = publisher.adapter_dir(t)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_config.json").write_text(json.dumps({"r": 4, "t": t}))
        (folder / "adapter_model.safetensors").write_bytes(bytes([t]) * 128)
        publisher.publish_adapter(t, lineage(t), {"train_loss": 0.6}, {"beta": 0.1})
        if t == 1:
            publisher.publish_results(1, [make_report(0, 0.2, 0.4, 3.1), make_report(1, 0.25, 0.5, 3.5, repo)])
    baseline = make_report(1, 0.21, 0.35, 3.2, "ns/run-reward-only-adapter")
    publisher.publish_results(2, {"M2": make_report(2, 0.3, 0.55, 3.4, repo), "M1-reward-only": baseline})


# (row start, row end) of the paired table: exact McNemar p of 2 / 0 discordant items is 2 / 2**2, of 4 / 0 2 / 2**4.
PAIRED_ROWS = [
    ("| M1 | GSM8K | 40 | +5.00 [-", "] | 0.5000 | 2 / 0 |"),
    ("| M2 | GSM8K | 40 | +10.00 [+", "] | 0.1250 | 4 / 0 |"),
    ("| M1-reward-only | GSM8K | 40 | +0.00 [-", "] | 1.0000 | 0 / 0 |"),
]


def check_outputs(folder: Path, printed: str) -> None:
    """The table, the paired comparisons against M0 (GSM8K carries per-item outcomes), and the plumbing-check
    warning (40 items per model are too few)."""
    assert "Paired against M0" in printed and "Plumbing check" in printed and "rlrf-gsm8k.yaml" in printed
    for row in EXPECTED_ROWS:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert any(all(cell in line for cell in cells) for line in printed.splitlines()), (row, printed)
    markdown = (folder / "report.md").read_text()
    assert "| model | trained | pairs | Just-Eval avg | FactScore | GSM8K |" in markdown
    for row in EXPECTED_ROWS:
        assert row in markdown
    for start, end in PAIRED_ROWS:
        assert any(line.startswith(start) and end in line for line in markdown.splitlines()), (start, markdown)
    assert "**Plumbing check, not a measurement" in markdown
    assert f"`{JUDGE}`" in markdown and "![results](results.png)" in markdown
    for name in PLOTS:
        assert (folder / name).read_bytes().startswith(PNG_MAGIC), name
        assert str(folder / name) in printed


def test_report_reads_an_adapter_repo(hub, tmp_path, capsys):
    publish_run(HubPublisher("gina", "run", tmp_path / "work", endpoint=hub))
    assert main(["report", "gina/run-adapter", "--endpoint", hub, "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "Evaluation of gina/run-adapter" in printed and JUDGE in printed
    check_outputs(tmp_path / "out", printed)

    assert main(["report", "gina/run-adapter@iter-1-eval", "--output", str(tmp_path / "m1")]) == 0
    markdown = (tmp_path / "m1" / "report.md").read_text()
    assert EXPECTED_ROWS[1] in markdown and "| M2 |" not in markdown, "the results as of M1"


def test_report_of_an_output_dir_serves_its_offline_store(tmp_path, capsys):
    out = tmp_path / "run"
    with hf_clients(tmp_path / "cache") as patch:
        store = tmp_path / "store"
        server, url = serve(store)
        try:
            publish_run(HubPublisher("hal", "run", out, endpoint=url))
        finally:
            server.shutdown()
            server.server_close()
        (out / "hub.json").write_text(json.dumps({"store": str(store)}))
        patch.delenv("HF_ENDPOINT")
        assert main(["report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Evaluation of hal/run-adapter" in printed
    check_outputs(out / "report", printed)


def test_report_publishes_a_baseline_on_an_output_dirs_offline_store_with_xet_installed(tmp_path, capsys):
    """The offline Hub takes plain LFS uploads: `--publish` must not try Xet where `HF_HUB_DISABLE_XET` is unset."""
    from huggingface_hub import HfApi, constants

    out, store = tmp_path / "run", tmp_path / "store"
    publish_run(FolderPublisher(tmp_path / "other"))
    with hf_clients(tmp_path / "cache") as patch:
        server, url = serve(store)
        try:
            publish_run(HubPublisher("hal", "run", out, endpoint=url))
        finally:
            server.shutdown()
            server.server_close()
        (out / "hub.json").write_text(json.dumps({"store": str(store)}))
        patch.delenv("HF_ENDPOINT")
        patch.delenv("HF_HUB_DISABLE_XET")
        patch.setattr(constants, "HF_HUB_DISABLE_XET", False)
        assert main(["report", str(out), "--baseline", f"ro={tmp_path / 'other'}", "--publish"]) == 0, (
            capsys.readouterr()
        )
        assert constants.HF_HUB_DISABLE_XET is False, "the client setting is restored"
        server, url = serve(store)
        try:
            card = Path(HfApi(endpoint=url).hf_hub_download("hal/run-adapter", "README.md")).read_text()
        finally:
            server.shutdown()
            server.server_close()
    assert "| M2-ro | GSM8K | 40 | +10.00 [" in card


def test_report_of_a_run_published_to_folders(tmp_path, capsys):
    out = tmp_path / "run"
    publish_run(FolderPublisher(out))
    assert main(["report", str(out), "--output", str(tmp_path / "report")]) == 0
    printed = capsys.readouterr().out
    check_outputs(tmp_path / "report", printed)
    card = (out / "adapters" / "M2" / "README.md").read_text()
    assert "**Plumbing check, not a measurement" in card
    for start, end in PAIRED_ROWS:
        assert any(line.startswith(start) and end in line for line in card.splitlines()), (start, card)


def test_report_adds_another_runs_models_as_baselines(tmp_path, capsys):
    """`--baseline NAME=RUN`: the other run's M1 and M2 become rows M1-NAME and M2-NAME, paired with this run's M0."""
    publish_run(FolderPublisher(tmp_path / "run"))
    other = FolderPublisher(tmp_path / "other")
    publish_run(other)
    args = ["report", str(tmp_path / "run"), "--baseline", f"ro={tmp_path / 'other'}", "--output", str(tmp_path / "r")]
    assert main(args) == 0
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert "| M1-ro | DPO from M0 | 13 | 3.5 [3.1, 3.9] |" in markdown
    assert "| M2-ro | DPO from M1 | 23 |" in markdown and "M1-reward-only-ro" not in markdown
    assert "| M2-ro | GSM8K | 40 | +10.00 [" in markdown
    assert "M1-ro" not in (tmp_path / "run" / "adapters" / "M2" / "README.md").read_text(), "cards only on --publish"
    assert main(["report", str(tmp_path / "run"), "--baseline", "no-equals-sign"]) == 2
    assert "expected NAME=RUN" in capsys.readouterr().err

    assert main([*args, "--publish"]) == 0
    card = (tmp_path / "run" / "adapters" / "M2" / "README.md").read_text()
    assert "| M1-ro | 3.5 [3.1, 3.9] |" in card and "| M2-ro | GSM8K | 40 | +10.00 [" in card
    assert (tmp_path / "run" / "adapters" / "M2" / "eval" / "M2-ro" / "eval_results.json").is_file()


def test_report_publishes_baselines_on_the_hub_card(hub, tmp_path):
    publish_run(HubPublisher("ivy", "run", tmp_path / "work", endpoint=hub))
    publish_run(HubPublisher("ivy", "other", tmp_path / "other", endpoint=hub))
    args = ["report", "ivy/run-adapter", "--baseline", "ro=ivy/other-adapter", "--output", str(tmp_path / "out")]
    assert main([*args, "--publish"]) == 0
    from huggingface_hub import HfApi

    from rlrf_hub.publishing.results import read_hub_results

    api = HfApi(endpoint=hub)
    reports, _ = read_hub_results(api, "ivy/run-adapter")
    assert {"M1-ro", "M2-ro"} <= set(reports) and reports["M2-ro"].adapter == "ns/run-adapter"
    card = Path(api.hf_hub_download("ivy/run-adapter", "README.md", revision="main")).read_text()
    assert "| M2-ro | 3.4 [3, 3.8] |" in card and "| M2-ro | GSM8K | 40 | +10.00 [" in card


def test_report_errors_name_what_is_missing(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "published.json" in capsys.readouterr().err
    assert main(["report", "not a repo"]) == 2
    assert "neither a run's output_dir nor a repo id" in capsys.readouterr().err
    publisher = FolderPublisher(tmp_path / "bare")
    folder = publisher.adapter_dir(1)
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"0" * 16)
    publisher.publish_adapter(1, lineage(1), {}, {})
    assert main(["report", str(tmp_path / "bare")]) == 2
    assert "no evaluation results" in capsys.readouterr().err
