"""Sampling responses from the policy for a list of jobs, resumable; shared by candidates and refinements."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from tqdm.auto import tqdm

from ..backends import GenerationBackend, GenerationRequest, SamplingParams
from ..ids import response_id
from ..publishing.checkpoints import StageCheckpoint
from ..sharding import Shard


@dataclass
class SamplingJob:
    """Sample responses to `messages` for the prompts row `prompt` (`parent_id`: the refined response)."""

    prompt: dict
    messages: list[dict[str, str]]
    parent_id: str | None = None


def chunk_seed(seed: int, iteration: int, origin: str, first_prompt_id: str) -> int:
    """A seed per chunk derived from its content, so a resumed run samples a chunk as the first run would."""
    key = f"{seed}|{iteration}|{origin}|{first_prompt_id}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big")


def sample_responses(
    jobs: list[SamplingJob],
    backend: GenerationBackend,
    params: SamplingParams,
    num_samples: int,
    iteration: int,
    origin: str,
    checkpoint: StageCheckpoint,
    sequences_per_chunk: int = 64,
    shard: Shard | None = None,
) -> list[dict]:
    """`num_samples` responses per job as RESPONSES rows; jobs whose rows are checkpointed are skipped.

    Chunks of about `sequences_per_chunk` sequences are cut from the whole job list, before skipping anything, so
    a chunk (its jobs, hence its batches, and its seed) is the same whether the run was resumed, and whichever
    worker of a sharded run samples it: `shard` takes every N-th chunk. Returns every checkpointed row.
    """
    shard = shard or Shard()
    done = checkpoint.done("prompt_id")
    per_chunk = max(1, sequences_per_chunk // num_samples)
    chunks = shard.take([jobs[i : i + per_chunk] for i in range(0, len(jobs), per_chunk)])
    todo = [(chunk[0], [job for job in chunk if job.prompt["prompt_id"] not in done]) for chunk in chunks]
    todo = [(first, pending) for first, pending in todo if pending]
    if not todo:
        return checkpoint.rows()
    policy = backend.model_id + (f"+{backend.adapter}" if backend.adapter else "")
    for first, chunk in tqdm(todo, desc=f"{origin}s (iteration {iteration})", unit="chunk"):
        seed = chunk_seed(params.seed, iteration, origin, first.prompt["prompt_id"])
        requests = [GenerationRequest(messages=job.messages, n=num_samples) for job in chunk]
        outputs = backend.generate(requests, replace(params, seed=seed), desc=f"sampling {origin}s")
        rows = [
            _row(job, generation, index, iteration, origin, policy)
            for job, generations in zip(chunk, outputs, strict=True)
            for index, generation in enumerate(generations)
        ]
        checkpoint.append(rows)
    return checkpoint.rows()


def _row(job: SamplingJob, generation, index: int, iteration: int, origin: str, policy: str) -> dict:
    prompt = job.prompt
    return {
        "prompt_id": prompt["prompt_id"],
        "response_id": response_id(prompt["prompt_id"], iteration, origin, index),
        "iteration": iteration,
        "origin": origin,
        "sample_index": index,
        "parent_id": job.parent_id,
        "task": prompt["task"],
        "prompt": prompt["prompt"],
        "messages": job.messages,
        "response": generation.text,
        "num_tokens": generation.num_tokens,
        "finish_reason": generation.finish_reason,
        "policy": policy,
    }
