"""Publishing into plain folders (`hub_endpoint: none`).

`FolderPublisher` lays each stage out as a Hub dataset repo (parquet shards under `data/` plus a
README card with `configs` metadata) under `<output_dir>/iter-<t>/<stage>/`, so
`datasets.load_dataset(<folder>, split="train")` reads it; adapters go to `<output_dir>/adapters/M<t>/`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from datasets import Dataset, load_dataset

from ..cards import adapter_card, dataset_card
from ..cards.tables import Reports
from ..evaluation.results import EvaluationReport
from ..schemas import FEATURES, to_dataset
from .base import Published, card_content_key, content_sha, record_published
from .results import check_results_iteration, folder_results_revision, publish_results_to_folder, results_path


def write_stage_folder(
    target: Path, stage: str, rows: list[dict], lineage: dict, load_path: str, description: str
) -> None:
    """Lay a stage out at `target` as a Hub dataset repo: one parquet shard under `data/` and the README card.

    Shards and card are written into a temporary sibling, then renamed: readers never see half a stage.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage}-", dir=target.parent))
    try:
        (tmp / "data").mkdir()
        shard = tmp / "data" / "train.parquet"
        to_dataset(stage, rows).to_parquet(str(shard))
        pattern = f"data/train-{content_sha([shard])[:16]}-*"
        shard.rename(tmp / pattern.replace("*", "00000-of-00001.parquet"))
        dataset_card(lineage, rows, load_path, pattern, description).save(tmp / "README.md")
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class FolderPublisher:
    """Publishes into a local folder; the revision of a dataset or adapter is a hash of its content."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def check(self) -> None:
        """Nothing to ask: the run's lock on `output_dir` has already shown that the folder can be written."""

    def dataset_dir(self, stage: str, iteration: int) -> Path:
        """Prompts serve every iteration and live at the top; the other stages under `iter-<t>/`."""
        if stage == "prompts":
            return self.root / "prompts"
        return self.root / f"iter-{iteration}" / stage

    def adapter_dir(self, model_index: int) -> Path:
        return self.root / "adapters" / f"M{model_index}"

    def find(self, stage: str, iteration: int) -> Published | None:
        folder = self.dataset_dir(stage, iteration)
        shards = sorted((folder / "data").glob("train-*.parquet"))
        if not (folder / "README.md").is_file() or not shards:
            return None
        key = card_content_key(folder / "README.md")
        return Published("dataset", stage, iteration, str(folder), content_sha(shards), key)

    def load(self, stage: str, iteration: int) -> Dataset:
        return load_dataset(str(self.dataset_dir(stage, iteration)), split="train", features=FEATURES[stage])

    def publish_dataset(
        self, stage: str, iteration: int, rows: list[dict], lineage: dict, description: str
    ) -> Published:
        target = self.dataset_dir(stage, iteration)
        write_stage_folder(target, stage, rows, lineage, str(target), description)
        published = self.find(stage, iteration)
        self.record(published)
        return published

    def checkpoint_mirror(self, stage: str, iteration: int, key: str) -> None:
        """Local folders have no remote copy: the checkpoint under `output_dir` is the only one."""
        return None

    def find_adapter(self, model_index: int) -> Published | None:
        folder = self.adapter_dir(model_index)
        weights = sorted(folder.glob("adapter_model.*"))
        if not weights or not (folder / "README.md").is_file():
            return None
        key = card_content_key(folder / "README.md")
        return Published("adapter", f"M{model_index}", model_index, str(folder), content_sha(weights), key)

    def publish_adapter(self, model_index: int, lineage: dict, metrics: dict, settings: dict) -> Published:
        """The trainer wrote the adapter into `adapter_dir`; the card completes it."""
        folder = self.adapter_dir(model_index)
        card = adapter_card(lineage, metrics, settings, str(folder))
        tmp = folder / "README.md.tmp"
        card.save(tmp)
        os.replace(tmp, folder / "README.md")
        published = self.find_adapter(model_index)
        self.record(published)
        return published

    def publish_results(self, model_index: int, reports: Reports) -> Published:
        """Results of M_<model_index> (and any other model, e.g. M0 with M1) written into `adapters/M<model_index>/`,
        carrying the results of the earlier adapters' folders; recorded as kind `results`."""
        check_results_iteration(model_index)
        folder = self.adapter_dir(model_index)
        carry = [self.adapter_dir(k) for k in range(1, model_index)]
        publish_results_to_folder(folder, reports, carry_from=[p for p in carry if p.is_dir()])
        published = Published("results", f"M{model_index}", model_index, str(folder), folder_results_revision(folder))
        self.record(published)
        return published

    def find_results(self, model_index: int, label: str | None = None) -> EvaluationReport | None:
        """The report of `label` (default `M<model_index>`) in the folder of adapter M_<model_index>, or None."""
        local = self.adapter_dir(model_index) / results_path(label or f"M{model_index}")
        return EvaluationReport.load(local) if local.is_file() else None

    def record(self, published: Published) -> None:
        """List `published` in `published.json`."""
        record_published(self.root / "published.json", published)
