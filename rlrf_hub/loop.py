"""The RLRF loop: M0 -> M1 -> ... -> M_T, regenerating data with the current policy each iteration.

Iteration t samples with M_t, rates, refines, pairs, and trains M_(t+1) on its pairs. Every stage is
published when complete and never recomputed; an interrupted stage resumes from its checkpoint.

Sharded runs. `rlrf-hub run --shard i/N` (recipe key `shard`) makes the process worker i of N; the N workers run
the same recipe against the same Hub, each with its own `output_dir` and caches, on one machine or several. The
work of the candidates, feedback and refinements stages is cut into chunks exactly as an unsharded run cuts it
(sampling: `2 * generation_batch_size` sequences; judging and aspect selection: `4 * feedback_batch_size`
requests), from the whole list, and worker i does chunks i, i + N, i + 2N, ... Each chunk's batches and seeds
come from its content alone, so every row is the row an unsharded run makes (on the same hardware), and the
merged stage is published in the unsharded order, under the same content key. Chunks rather than prompts are
dealt out because a prompt-by-prompt split would regroup the batches and change the chunk seeds.

Workers push their parts (`part-s<i>of<N>-<k>.parquet`) to the stage's `checkpoints/iter-<t>-<key>` branch and, when
their share of a step is done, a marker `<step>-s<i>of<N>.done` with it (forced, whatever
`checkpoint_push_interval` says). Worker 0 waits for all N markers (at most `shard_wait_timeout` seconds),
pulls every part, checks that every expected row is there, publishes and tags the stage as an unsharded run
would, and deletes the branch; the other workers wait for the stage's `iter-<t>` tag and read it back. The
feedback stage has two meeting points inside it: the judge's aspect choices (`aspects-s<i>of<N>.json`), and the
rating of the candidates (`rated` markers), since the refinements of a prompt need the feedback on all its
candidates. Worker 0 alone builds the pairs, trains and evaluates; the others wait for the pairs and the
adapter's tag and go on to the next iteration, sampling from the new adapter. A crashed worker restarted with
the same command pulls back only its own parts and continues its share.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from .aspects import rubric_sha256
from .backends import SamplingParams, factory
from .candidates import candidate_jobs
from .checkpoint import StageCheckpoint
from .config import Recipe, RecipeError
from .errors import RunError
from .feedback import judge
from .feedback.templates import TEMPLATES_SHA256
from .ids import response_id
from .models import cache_dir
from .pairs import build_pairs
from .prompts import build_prompts, check_prompt_lengths
from .publishing import OFFLINE_STORE_FILE, FolderPublisher, Published, Publisher
from .refinements import refinement_jobs
from .reward import attach_rewards
from .sampling import sample_responses
from .sharding import Shard, ShardTimeoutError, wait_until
from .stage_keys import content_key, stage_settings
from .training import METRICS_FILE

OFFLINE_NAMESPACE = "local"
ENDPOINT_PREFIX = "endpoint_"
KEY_FILE = ".content-key"


def reusable(publisher: Publisher, found: Published | None, key: str) -> bool:
    """Whether a published artifact was made from the inputs with content key `key` (then this run records it in
    its `published.json` too); an error if it was not: published results are never replaced."""
    if found is None:
        return False
    if found.content_key == key:
        publisher.record(found)
        return True
    raise RunError(
        f"{found.location} (iteration {found.iteration}, revision {found.revision}) was made from other inputs than "
        f"this recipe gives (content key {found.content_key or 'missing'}, expected {key}). Published results are "
        "never replaced: set another run_name to start a new run, or restore the recipe that made it."
    )


@dataclass
class IterationSummary:
    iteration: int
    trained: str
    prompts: int
    candidates: int
    refinements: int
    rated: int
    parse_rate: float
    positives: int
    prompts_with_positive: int
    pairs: int
    train_loss: float | None
    reward_accuracy: float | None
    tokens_generated: int


class _Backends:
    """Loads the policy, the judge and the reward model only when a stage needs them."""

    def __init__(self, recipe: Recipe, policy_adapter: str | None):
        self.recipe = recipe
        self.policy_adapter = policy_adapter
        self._policy = self._judge = self._reward = None

    def policy(self):
        if self._policy is None:
            self._policy = factory.policy_backend(self.recipe, self.policy_adapter)
        return self._policy

    def judge(self):
        if self._judge is None:
            self._judge = factory.judge_backend(self.recipe)
        return self._judge

    def reward(self):
        r = self.recipe.rlrf
        if r.reward_model and self._reward is None:
            from .reward import RewardScorer

            self._reward = RewardScorer.from_pretrained(r.reward_model, r.reward_revision, r.reward_batch_size)
        return self._reward

    def judge_counters(self) -> dict[str, int]:
        """An endpoint judge's requests, retries, failures by reason and schema-invalid replies, for the card."""
        counters = getattr(self._judge, "counters", None)
        return counters(prefix=ENDPOINT_PREFIX) if counters else {}

    def close(self) -> None:
        """Drop the models; endpoint backends also stop the `rlrf-hub serve` they started."""
        for backend in (self._policy, self._judge):
            if hasattr(backend, "close"):
                backend.close()
        self._policy = self._judge = self._reward = None
        gc.collect()


class Iteration:
    """One pass of the loop with the policy M_t."""

    def __init__(self, recipe: Recipe, publisher: Publisher, prompts: list[dict], t: int):
        self.recipe, self.publisher, self.prompts, self.t = recipe, publisher, prompts, t
        self.args = recipe.rlrf
        self.rule = self.args.pairing_for(t)
        self.work = recipe.output_dir / f"iter-{t}" / ".work"
        adapter = publisher.find_adapter(t) if t > 0 else None
        if t > 0 and adapter is None:
            raise RunError(f"iteration {t} needs the adapter of M{t}, which is not published")
        self.policy_adapter = adapter
        self.adapter_path = str(publisher.adapter_dir(t)) if adapter else None
        self.backends = _Backends(recipe, self.adapter_path)
        self.by_id = {row["prompt_id"]: row for row in prompts}
        self.judge_stats: dict = {}
        self.shard = Shard.parse(self.args.shard)
        self._aspect_map: dict[str, list[str]] | None = None

    def _lineage(self, stage: str, rows: list[dict], parents: list[Published], started: float, **extra) -> dict:
        m, r = self.recipe.model, self.args
        adapter = self.policy_adapter
        return {
            "run": self.recipe.run_name,
            "stage": stage,
            "iteration": self.t,
            "policy": {
                "model": m.model_name_or_path,
                "revision": m.model_revision,
                "adapter": adapter.location if adapter else None,
                "adapter_revision": adapter.revision if adapter else None,
            },
            "feedback_model": {
                "model": r.feedback_model,
                "revision": r.feedback_revision,
                "backend": r.feedback_backend,
                "aspect_mode": r.aspect_mode,
                "verifier_tasks": list(r.verifier_tasks),
            },
            "reward_model": {"model": r.reward_model, "revision": r.reward_revision} if r.reward_model else None,
            "rubric_sha256": rubric_sha256(),
            "templates_sha256": TEMPLATES_SHA256,
            "sampling": {
                "num_candidates": r.num_candidates,
                "num_refinements": r.num_refinements,
                "temperature": r.temperature,
                "top_p": r.top_p,
                "max_new_tokens": r.max_new_tokens,
                "seed": self.recipe.training.seed,
            },
            "parents": [{"stage": p.name, "location": p.location, "revision": p.revision} for p in parents],
            "counts": {"rows": len(rows), **extra.pop("counts", {})},
            "tokens_generated": sum(row.get("num_tokens", 0) for row in rows),
            "wall_time_s": round(time.time() - started, 1),
            **extra,
        }

    def _key(self, stage: str, parents: list[Published | None]) -> str:
        """The content key of this iteration's `stage`; the policy's adapter is a parent of everything it makes."""
        revisions = [p.revision if p else None for p in parents]
        revisions.append(self.policy_adapter.revision if self.policy_adapter else None)
        return content_key(stage, stage_settings(self.recipe, stage, self.t), revisions)

    def _sampling_params(self) -> SamplingParams:
        r = self.args
        return SamplingParams(
            max_new_tokens=r.max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            do_sample=True,
            seed=self.recipe.training.seed,
        )

    def _sample_stage(self, stage: str, jobs, num_samples: int, parents: list[Published]) -> tuple[list, Published]:
        key = self._key(stage, parents)
        found = self.publisher.find(stage, self.t)
        if reusable(self.publisher, found, key):
            return list(self.publisher.load(stage, self.t)), found
        started = time.time()
        checkpoint = self._checkpoint(stage, key)
        origin = "candidate" if stage == "candidates" else "refinement"
        job_list = jobs()
        sample_responses(
            job_list,
            self.backends.policy(),
            self._sampling_params(),
            num_samples,
            self.t,
            origin,
            checkpoint,
            sequences_per_chunk=2 * self.args.generation_batch_size,
            shard=self.shard,
        )
        expected = [
            response_id(job.prompt["prompt_id"], self.t, origin, k) for job in job_list for k in range(num_samples)
        ]
        return self._finish(
            stage, checkpoint, expected, key, lambda rows, stats: self._lineage(stage, rows, parents, started)
        )

    def _checkpoint(self, stage: str, key: str) -> StageCheckpoint:
        """The stage's unfinished work for the inputs with content key `key`, here and on the Hub."""
        mirror = self.publisher.checkpoint_mirror(stage, self.t, key)
        if self.shard.sharded and mirror is None:
            raise RunError(f"shard: the workers of a sharded run meet on a Hub; {self.publisher!r} is not one")
        folder = self.work / stage
        _drop_other_inputs(folder, key)
        return StageCheckpoint(folder, stage, mirror, self.shard)

    def _finish(self, stage: str, checkpoint: StageCheckpoint, expected: list[str], key: str, lineage):
        """Publish a stage whose rows are all checkpointed, one row per `expected` response id in that order.

        Sharded, each worker marks its share done; worker 0 waits for every share, merges and publishes (the
        card counts the rows of each worker), the others wait for its tag and read the stage back.
        `lineage(rows, stats)` makes the card's lineage; `stats` sums the judge statistics of all workers.
        """
        stats = self.judge_stats
        if self.shard.sharded:
            own = checkpoint.own_rows()
            checkpoint.mark_done(stage, {"rows": own, "stats": self.judge_stats})
            print(f"shard {self.shard}: done with my share of {stage} of iteration {self.t}: {own} rows", flush=True)
            if not self.shard.merger:
                found = self._wait_published(stage, lambda: self.publisher.find(stage, self.t))
                reusable(self.publisher, found, key)
                checkpoint.clear(local_only=True)
                return list(self.publisher.load(stage, self.t)), found
            markers = self._wait_for_shards(checkpoint, stage, f"share of {stage} of iteration {self.t}")
            stats = _sum_stats(marker["stats"] for marker in markers.values())
        rows = self._complete(checkpoint.rows(), expected, stage)
        info = {**lineage(rows, stats), "content_key": key}
        if self.shard.sharded:
            info["shards"] = {"count": self.shard.count, "rows": {tag: m["rows"] for tag, m in markers.items()}}
            print(f"shard {self.shard}: merged {stage} of iteration {self.t}: {info['shards']['rows']}", flush=True)
        published = self.publisher.publish_dataset(stage, self.t, rows, info)
        checkpoint.clear()
        return rows, published

    def _complete(self, rows: list[dict], expected: list[str], stage: str) -> list[dict]:
        """One row per expected response id, in the order an unsharded, uninterrupted run gives."""
        by_id: dict[str, dict] = {}
        for row in rows:
            by_id.setdefault(row["response_id"], row)
        missing = [rid for rid in expected if rid not in by_id]
        if missing:
            raise RunError(
                f"{stage} of iteration {self.t} lacks {len(missing)} of {len(expected)} rows (for example "
                f"{missing[0]}) although every share of it is marked done. The workers of a sharded run must run the "
                "same recipe: sizes such as generation_batch_size and feedback_batch_size decide who does what."
            )
        return [by_id[rid] for rid in expected]

    def _wait_for_shards(self, checkpoint: StageCheckpoint, step: str, what: str) -> dict[str, dict]:
        """Wait until every worker marked `step` done on the mirror, pull all their files; their markers."""
        self._wait_for_files(checkpoint, {s.marker(step) for s in self.shard.workers()}, what)
        return checkpoint.markers(step)

    def _wait_for_files(self, checkpoint: StageCheckpoint, names: set[str], what: str) -> None:
        """Wait until the mirror has every file of `names`, then pull every worker's files."""

        def missing() -> list[str]:
            return sorted(names - checkpoint.remote_names())

        _wait_until(lambda: not missing(), lambda: f"the other workers' {what} (missing {missing()})", *self._wait)
        checkpoint.pull_all()

    def _wait_published(self, what: str, find):
        """What `find` returns once worker 0 has published it (at once for worker 0 and unsharded runs)."""
        found = find()
        if found is None and self.shard.sharded and not self.shard.merger:
            found = _wait_until(find, lambda: f"worker 0 to publish {what} of iteration {self.t}", *self._wait)
        return found

    @property
    def _wait(self) -> tuple[float, Shard]:
        return self.args.shard_wait_timeout, self.shard

    def _rate(self, responses: list[dict], checkpoint: StageCheckpoint) -> None:
        """Feedback (and reward) for this worker's chunks of `responses`, skipping checkpointed rows."""
        done = checkpoint.done("response_id")
        aspects = None if self.rule == "reward_only" else self._aspects(checkpoint)
        size = 4 * self.args.feedback_batch_size
        for chunk in self.shard.take([responses[i : i + size] for i in range(0, len(responses), size)]):
            todo = [row for row in chunk if row["response_id"] not in done]
            if not todo:
                continue
            if aspects is None:
                rated = [judge.unrated_row(row, self.t) for row in todo]
            else:
                rated = judge.rate_responses(
                    todo, self.by_id, aspects, self.backends.judge(), self.args, self.t, self.judge_stats
                )
            checkpoint.append(attach_rewards(rated, todo, self.backends.reward()))

    def _aspects(self, checkpoint: StageCheckpoint) -> dict[str, list[str]]:
        """The aspects of every prompt for this iteration; the judge's choices are kept with the feedback parts."""
        if self._aspect_map is None:
            chosen = self._chosen_aspects(checkpoint)
            self._aspect_map = {
                p["prompt_id"]: chosen.get(p["prompt_id"])
                or judge.aspects_for(p["task"], self.args.aspect_mode, self.args.num_general_aspects)
                for p in self.prompts
            }
        return self._aspect_map

    def _chosen_aspects(self, checkpoint: StageCheckpoint) -> dict[str, list[str]]:
        """The judge's aspect choice for the general prompts (paper mode), asked once per iteration, chunk by chunk
        as the ratings are; a sharded worker asks for its chunks and then reads every worker's choices."""
        name = f"aspects-{self.shard.tag}.json" if self.shard.sharded else "aspects.json"
        if checkpoint.read_json(name) is None:
            needs_judge = [p for p in self.prompts if p["task"] == "general" and self.args.aspect_mode == "paper"]
            size = 4 * self.args.feedback_batch_size
            chosen: dict[str, list[str]] = {}
            for chunk in self.shard.take([needs_judge[i : i + size] for i in range(0, len(needs_judge), size)]):
                chosen.update(judge.select_aspects(chunk, self.backends.judge(), self.args, self.judge_stats))
            checkpoint.write_json(name, chosen)
        names = [name]
        if self.shard.sharded:
            names = [f"aspects-{s.tag}.json" for s in self.shard.workers()]
            self._wait_for_files(checkpoint, set(names), f"aspect choices of iteration {self.t}")
        return {pid: aspects for n in names for pid, aspects in checkpoint.read_json(n).items()}

    def run(self) -> IterationSummary:
        prompts_pub = self.publisher.find("prompts", 0)
        candidates, cand_pub = self._sample_stage(
            "candidates", lambda: candidate_jobs(self.prompts), self.args.num_candidates, [prompts_pub]
        )
        refinements, feedback, feedback_pub = self._feedback_stage(candidates, cand_pub)
        pairs, pairs_pub = self._pairs(candidates, refinements, feedback, feedback_pub)
        self.backends.close()
        result = self._train(pairs, pairs_pub)
        shutil.rmtree(self.work, ignore_errors=True)
        return self._summary(candidates, refinements, feedback, pairs, result)

    def _feedback_stage(self, candidates: list[dict], cand_pub: Published) -> tuple[list, list, Published]:
        """Rate the candidates, refine the best of each prompt, rate the refinements; publish all feedback."""
        key = self._key("feedback", [cand_pub])
        found = self.publisher.find("feedback", self.t)
        if reusable(self.publisher, found, key):
            refinements = self._published_refinements(cand_pub)
            return refinements, list(self.publisher.load("feedback", self.t)), found
        started = time.time()
        checkpoint = self._checkpoint("feedback", key)
        self._rate(candidates, checkpoint)
        if self.shard.sharded and self.rule != "reward_only":
            checkpoint.mark_done("rated", {"rows": checkpoint.own_rows()})
            self._wait_for_shards(checkpoint, "rated", f"ratings of the candidates of iteration {self.t}")
        rated = {row["response_id"]: row for row in checkpoint.rows()}
        feedback = [rated[row["response_id"]] for row in candidates if row["response_id"] in rated]
        refinements, refine_pub = self._refine(candidates, feedback, cand_pub)
        self._rate(refinements, checkpoint)
        parents = [p for p in (cand_pub, refine_pub) if p]

        def lineage(rows: list[dict], stats: dict) -> dict:
            summary = judge.summarise(rows)
            return self._lineage(
                "feedback",
                rows,
                parents,
                started,
                counts=summary,
                parse_failure_rate=summary["parse_failure_rate"],
                tokens_generated=stats.get("judge_tokens", 0),
                judge_requests=stats.get("judge_requests", 0),
                endpoint={k: v for k, v in stats.items() if k.startswith(ENDPOINT_PREFIX)} or None,
            )

        self.judge_stats.update(self.backends.judge_counters())
        expected = [row["response_id"] for row in candidates + refinements]
        feedback, published = self._finish("feedback", checkpoint, expected, key, lineage)
        return refinements, feedback, published

    def _published_refinements(self, cand_pub: Published) -> list[dict]:
        """The refinements under published feedback; none for the reward-only baseline, which refines nothing."""
        found = self.publisher.find("refinements", self.t)
        if not reusable(self.publisher, found, self._key("refinements", [cand_pub])):
            return []
        return list(self.publisher.load("refinements", self.t))

    def _refine(self, candidates, feedback, cand_pub) -> tuple[list[dict], Published | None]:
        if self.rule == "reward_only":
            return [], None
        rows, published = self._sample_stage(
            "refinements",
            lambda: refinement_jobs(self.prompts, candidates, feedback),
            self.args.num_refinements,
            [cand_pub],
        )
        return rows, published

    def _pairs(self, candidates, refinements, feedback, feedback_pub) -> tuple[list[dict], Published]:
        key = self._key("pairs", [feedback_pub])
        found = self._wait_published("pairs", lambda: self.publisher.find("pairs", self.t))
        if reusable(self.publisher, found, key):
            return list(self.publisher.load("pairs", self.t)), found
        started = time.time()
        pairs = build_pairs(
            self.rule, self.by_id, candidates + refinements, feedback, self.args.top_k, self.args.pairing_seed, self.t
        )
        lineage = self._lineage(
            "pairs", pairs, [feedback_pub], started, pairing=self.rule, top_k=self.args.top_k, content_key=key
        )
        return pairs, self.publisher.publish_dataset("pairs", self.t, pairs, lineage)

    def _train(self, pairs: list[dict], pairs_pub: Published) -> dict:
        model_index = self.t + 1
        key = self._key("adapter", [pairs_pub])
        found = self._wait_published(f"M{model_index}", lambda: self.publisher.find_adapter(model_index))
        metrics_path = self.publisher.adapter_dir(model_index) / METRICS_FILE
        if reusable(self.publisher, found, key) and (metrics_path.is_file() or not self.shard.merger):
            return json.loads(metrics_path.read_text())["metrics"] if metrics_path.is_file() else {}
        if not pairs:
            raise RunError(
                f"iteration {self.t} produced no training rows with pairing {self.rule!r}: no response was rated "
                "1 on every aspect it was rated on. Sample more (num_candidates, num_refinements), add prompts, "
                "or use a stronger feedback model; the stages published so far are kept."
            )
        from datasets import Dataset

        from .schemas import PAIRS
        from .training import train_adapter

        method = "rs" if self.rule == "rs" else "dpo"
        previous = self.adapter_path
        reference = previous if self.args.reference_model == "previous" else None
        result = train_adapter(
            Dataset.from_list(pairs, features=PAIRS),
            self.recipe,
            self.publisher.adapter_dir(model_index),
            init_adapter=previous,
            reference_adapter=reference,
            method=method,
        )
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}
        self._publish_adapter(model_index, pairs, pairs_pub, metrics, method, key)
        return metrics

    def _publish_adapter(self, model_index, pairs, pairs_pub, metrics, method, key) -> None:
        lineage = self._lineage("adapter", [], [pairs_pub], time.time(), counts={"pairs": len(pairs)}, content_key=key)
        previous = self.policy_adapter
        reference = "M0 (the base model)"
        if previous and self.args.reference_model == "previous":
            reference = f"M{self.t} ({previous.location}@{previous.revision})"
        lineage.update(
            model_name=f"M{model_index}",
            method=method,
            trained_from=f"M{self.t}" if self.t else "M0 (the base model)",
            reference_model=reference,
        )
        t = self.recipe.training
        m = self.recipe.model
        settings = {
            "beta": t.beta,
            "learning_rate": t.learning_rate,
            "lr_scheduler_type": str(t.lr_scheduler_type),
            "max_steps": t.max_steps,
            "num_train_epochs": t.num_train_epochs,
            "per_device_train_batch_size": t.per_device_train_batch_size,
            "gradient_accumulation_steps": t.gradient_accumulation_steps,
            "load_in_4bit": m.load_in_4bit,
            "lora_r": m.lora_r,
            "lora_alpha": m.lora_alpha,
            "lora_dropout": m.lora_dropout,
            "lora_target_modules": m.lora_target_modules,
            "seed": t.seed,
        }
        self.publisher.publish_adapter(model_index, lineage, metrics, settings)

    def _summary(self, candidates, refinements, feedback, pairs, metrics) -> IterationSummary:
        stats = judge.summarise(feedback)
        return IterationSummary(
            iteration=self.t,
            trained=f"M{self.t + 1}",
            prompts=len(self.prompts),
            candidates=len(candidates),
            refinements=len(refinements),
            rated=len(feedback),
            parse_rate=1.0 - stats["parse_failure_rate"],
            positives=sum(bool(row["is_positive"]) for row in feedback),
            prompts_with_positive=len({row["prompt_id"] for row in feedback if row["is_positive"]}),
            pairs=len(pairs),
            train_loss=metrics.get("train_loss"),
            reward_accuracy=metrics.get("rewards/accuracies"),
            tokens_generated=sum(row["num_tokens"] for row in candidates + refinements),
        )


def prepare_prompts(recipe: Recipe, publisher: Publisher) -> list[dict]:
    """Build and validate the prompts (before any model work) and publish them once."""
    key = content_key("prompts", stage_settings(recipe, "prompts", 0), [])
    if reusable(publisher, publisher.find("prompts", 0), key):
        return list(publisher.load("prompts", 0))
    prompts = build_prompts(recipe.rlrf.prompt_sources)
    from transformers import AutoConfig

    from .models import load_tokenizer, resolve_model

    name, revision = recipe.model.model_name_or_path, recipe.model.model_revision
    tokenizer = load_tokenizer(name, revision)

    def count(messages: list[dict]) -> int:
        return len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"])

    context = getattr(AutoConfig.from_pretrained(resolve_model(name), revision=revision), "max_position_embeddings", 0)
    room = context - recipe.rlrf.max_new_tokens if context else None
    built = len(prompts)
    prompts = check_prompt_lengths(
        prompts, count, recipe.rlrf.max_prompt_tokens, room, drop=recipe.rlrf.long_prompts == "drop"
    )
    if not prompts:
        raise RecipeError(f"long_prompts: all {built} prompts are longer than max_prompt_tokens; none is left")
    lineage = {
        "run": recipe.run_name,
        "stage": "prompts",
        "iteration": 0,
        "sources": [asdict(s) for s in recipe.rlrf.prompt_sources],
        "counts": {"rows": len(prompts), "too_long": built - len(prompts), **Counter(row["task"] for row in prompts)},
        "content_key": key,
    }
    publisher.publish_dataset("prompts", 0, prompts, lineage)
    return prompts


def make_publisher(recipe: Recipe) -> Publisher:
    """The Hub the recipe names, the offline Hub when it names none, or plain folders for `hub_endpoint: none`."""
    args = recipe.rlrf
    endpoint = args.hub_endpoint
    if endpoint == "none":
        return FolderPublisher(recipe.output_dir)
    from .backends.retry import RetryPolicy
    from .hub.publisher import HubPublisher

    namespace = args.hub_namespace
    if endpoint == "offline" or (endpoint is None and not namespace):
        store = Path(args.hub_store) if args.hub_store else cache_dir() / "hub"
        endpoint = offline_hub(store)
        namespace = namespace or OFFLINE_NAMESPACE
        recipe.output_dir.mkdir(parents=True, exist_ok=True)
        (recipe.output_dir / OFFLINE_STORE_FILE).write_text(json.dumps({"store": str(store.resolve())}) + "\n")
    return HubPublisher(
        namespace,
        recipe.run_name,
        recipe.output_dir,
        endpoint=endpoint,
        token=os.environ.get("HF_TOKEN"),
        checkpoint_interval=args.checkpoint_push_interval,
        retry=RetryPolicy(max_retries=args.hub_max_retries, base_delay=1.0, max_delay=30.0),
    )


def offline_hub(store: Path) -> str:
    """The URL of a `rlrf-hub hub serve` already running over `store`, or of a server started for this run."""
    from .hub.server import running_server, serve

    url = running_server(store)
    if url:
        print(f"publishing to the offline Hub at {url} (store: {store})", flush=True)
        return url
    _, url = serve(store)
    print(
        f"publishing to an offline Hub started for this run at {url} (store: {store}); to read the results after "
        f"the run, serve the store with `rlrf-hub hub serve --root {store}` and set HF_ENDPOINT to its URL",
        flush=True,
    )
    return url


def run(recipe: Recipe, publisher: Publisher | None = None) -> list[IterationSummary]:
    """Run every iteration of the recipe; finished iterations are read back, not recomputed.

    The run holds `output_dir` for itself (`RunLock`) and, before the first stage, checks that its Hub, models and
    endpoints answer (`preflight`), so that what is expected to go wrong goes wrong before anything is written.
    """
    from .preflight import check_recipe_resources
    from .run_lock import RunLock

    with RunLock(recipe.output_dir, wait=recipe.rlrf.wait_for_lock):
        publisher = publisher or make_publisher(recipe)
        publisher.check()
        check_recipe_resources(recipe)
        return _iterations(recipe, publisher)


def _iterations(recipe: Recipe, publisher: Publisher) -> list[IterationSummary]:
    shard = Shard.parse(recipe.rlrf.shard)
    if shard.sharded and not shard.merger:
        _wait_until(
            lambda: publisher.find("prompts", 0),
            lambda: "worker 0 to publish the prompts",
            recipe.rlrf.shard_wait_timeout,
            shard,
        )
    prompts = prepare_prompts(recipe, publisher)
    summaries = []
    for t in range(recipe.rlrf.num_iterations):
        path = recipe.output_dir / f"iter-{t}" / "summary.json"
        if path.is_file() and publisher.find_adapter(t + 1):
            summary = IterationSummary(**json.loads(path.read_text()))
        else:
            summary = Iteration(recipe, publisher, prompts, t).run()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(asdict(summary), indent=2))
        summaries.append(summary)
        if recipe.rlrf.eval_tasks and shard.merger:
            from .evaluation.iteration import evaluate_iteration

            evaluate_iteration(recipe, publisher, t + 1)
    Path(recipe.output_dir / "summary.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2))
    return summaries


def _drop_other_inputs(folder: Path, key: str) -> None:
    """Keep `folder`'s checkpoint parts only if they were made from the inputs with content key `key`: an edited
    recipe must not resume from the parts of the old one. No other run can be using them (the output_dir lock)."""
    marker = folder / KEY_FILE
    if marker.is_file() and marker.read_text().strip() != key:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(key + "\n")


def _wait_until(ready, status, timeout: float, shard: Shard):
    """`sharding.wait_until`, failing as the loop fails."""
    try:
        return wait_until(ready, status, timeout, shard)
    except ShardTimeoutError as error:
        raise RunError(str(error)) from None


def _sum_stats(all_stats) -> dict:
    """The judge statistics of several workers, added up."""
    total: Counter = Counter()
    for stats in all_stats:
        total.update({k: v for k, v in (stats or {}).items() if isinstance(v, (int, float))})
    return dict(total)
