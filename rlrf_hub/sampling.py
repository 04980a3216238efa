"""Sampling responses from the policy for a list of jobs, resumable; shared by candidates and refinements."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from tqdm.auto import tqdm

from .backends import GenerationBackend, GenerationRequest, SamplingParams
from .checkpoint import StageCheckpoint
from .ids import response_id


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
) -> list[dict]:
    """`num_samples` responses per job as RESPONSES rows; jobs whose rows are checkpointed are skipped."""
    done = checkpoint.done("prompt_id")
    todo = [job for job in jobs if job.prompt["prompt_id"] not in done]
    per_chunk = max(1, sequences_per_chunk // num_samples)
    chunks = [todo[i : i + per_chunk] for i in range(0, len(todo), per_chunk)]
    policy = backend.model_id + (f"+{backend.adapter}" if backend.adapter else "")
    for chunk in tqdm(chunks, desc=f"{origin}s (iteration {iteration})", unit="chunk", disable=not chunks):
        seed = chunk_seed(params.seed, iteration, origin, chunk[0].prompt["prompt_id"])
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
