"""Rows per second of the feedback stage over HTTP, against the server's own capacity, at several concurrencies.

One `rlrf-hub serve` subprocess holds the judge. For each concurrency (default 1, 4 and 16), measured side by side:

- stage: the judge's `rate_responses` over response rows (Self-Instruct seed tasks and their reference outputs),
  through `EndpointBackend` with that many requests in flight: prompt and schema building, seeding, retries,
  schema validation, reply parsing and row building included;
- load: a plain asyncio loop posting exactly the requests the stage sent (same messages, schemas, sampling
  settings and seeds, recorded from the stage's first run) to `/v1/chat/completions` at the same concurrency,
  doing nothing with the replies: what the server can deliver.

- load_fp32_weights: the same plain loop against a second `rlrf-hub serve` of the same model with
  `--weight-precision float32`, where the first one multiplies by half-precision weight copies (the default on
  CPUs with fbgemm); the ratio load/load_fp32_weights is what those copies buy the server. `--no-fp32-baseline`
  skips it.

Each concurrency is measured `--repeats` times, alternating which of the two goes first, and the best run of each
counts (on a shared machine, slow runs measure the neighbours). The ratio stage/load is the fraction of the
server's capacity the stage uses. Generated tokens are printed for both, to show they did the same work, and the
client's CPU seconds, to show what the stage's own work costs (with few cores the client takes it from the server).

    python benchmarks/feedback_endpoint.py --model embedded:smollm2-135m-instruct --rows 16 --concurrency 1 4 16

`--url URL` measures a TGI-dialect server that is already running (TGI, `rlrf-hub serve`) instead of starting one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path

import httpx2

from rlrf_hub.backends.dialects import tgi_arguments
from rlrf_hub.backends.endpoint import EndpointBackend, sample_seed
from rlrf_hub.backends.projections import half_weights_available
from rlrf_hub.config import RLRFArguments
from rlrf_hub.feedback import judge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompts" / "self_instruct_seed_tasks.jsonl"
ASPECTS = ["Readability", "Completeness", "Factuality"]


class RecordingBackend(EndpointBackend):
    """An endpoint backend that also keeps every (request, params) it was asked to generate."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[list, object]] = []

    def generate(self, requests, params, desc=None):
        self.calls.append((list(requests), params))
        return super().generate(requests, params, desc)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--url", default=None, help="measure this running server instead of starting rlrf-hub serve")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=16, help="responses rated per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-new-tokens", type=int, default=160, help="the judge's feedback_max_new_tokens")
    parser.add_argument("--max-batch-size", type=int, default=16, help="the server's dynamic batch limit")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each method; the best counts")
    parser.add_argument(
        "--no-fp32-baseline",
        action="store_true",
        help="do not start a second server with fp32 weights to measure beside the default one",
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    return parser


def load_rows(path: Path, limit: int) -> tuple[list[dict], dict[str, dict]]:
    responses, prompts = [], {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            task = json.loads(line)
            instance = task["instances"][0]
            prompt = task["prompt"] + (f"\n\n{instance['input']}" if instance.get("input") else "")
            prompt_id = task["id"]
            prompts[prompt_id] = {"prompt_id": prompt_id, "prompt": prompt, "task": "general"}
            responses.append(
                {
                    "prompt_id": prompt_id,
                    "response_id": f"{prompt_id}-0",
                    "origin": "candidate",
                    "task": "general",
                    "prompt": prompt,
                    "response": instance["output"],
                }
            )
            if len(responses) == limit:
                break
    return responses, prompts


def run_stage(url: str, concurrency: int, rows, prompts, args: RLRFArguments) -> tuple[float, float, RecordingBackend]:
    """Wall seconds and client CPU seconds of rating `rows`, and the backend (its stats and recorded calls)."""
    backend = RecordingBackend(url, concurrency=concurrency, timeout=600)
    aspects = {prompt_id: ASPECTS for prompt_id in prompts}
    start, cpu = time.perf_counter(), time.process_time()
    judge.rate_responses(rows, prompts, aspects, backend, args, 0)
    return time.perf_counter() - start, time.process_time() - cpu, backend


def load_bodies(backend: RecordingBackend) -> list[dict]:
    """The JSON bodies the stage sent, request by request, seeds included."""
    bodies = []
    for requests, params in backend.calls:
        for i, request in enumerate(requests):
            for k in range(request.n):
                seed = sample_seed(params.seed, i, k)
                bodies.append(tgi_arguments(request.messages, params, seed, request.json_schema, None))
    return bodies


async def plain_load(url: str, bodies: list[dict], concurrency: int) -> tuple[float, float, int]:
    """Wall seconds, client CPU seconds and generated tokens of posting `bodies`."""
    slots = asyncio.Semaphore(concurrency)
    tokens = 0
    async with httpx2.AsyncClient(timeout=600) as client:

        async def post(body: dict) -> None:
            nonlocal tokens
            async with slots:
                response = await client.post(f"{url}/v1/chat/completions", json=body)
                response.raise_for_status()
                tokens += response.json()["usage"]["completion_tokens"]

        start, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(post(body) for body in bodies))
        return time.perf_counter() - start, time.process_time() - cpu, tokens


def main(argv: list[str] | None = None) -> dict:
    options = make_parser().parse_args(argv)
    from rlrf_hub.serving.launch import spawn_server

    rows, prompts = load_rows(options.data, options.rows)
    args = RLRFArguments(feedback_max_new_tokens=options.max_new_tokens, max_parse_retries=0)
    results: dict = {"model": options.model, "rows": len(rows), "max_new_tokens": options.max_new_tokens}
    if options.url:
        results["url"] = options.url
        measure(options.url, options, rows, prompts, args, results)
    else:
        with contextlib.ExitStack() as servers:
            server = servers.enter_context(spawn_server(options.model, max_batch_size=options.max_batch_size))
            print(f"rlrf-hub serve at {server.url} ({options.model}, batches <= {options.max_batch_size})", flush=True)
            baseline = None
            if not options.no_fp32_baseline and half_weights_available():
                fp32 = spawn_server(options.model, max_batch_size=options.max_batch_size, weight_precision="float32")
                baseline = servers.enter_context(fp32).url
                print(f"rlrf-hub serve --weight-precision float32 at {baseline}", flush=True)
            measure(server.url, options, rows, prompts, args, results, baseline)
    first = results[f"c{options.concurrency[0]}"]["stage_rows_per_s"]
    for concurrency in options.concurrency[1:]:
        speedup = results[f"c{concurrency}"]["stage_rows_per_s"] / first
        print(f"stage speed-up, concurrency {concurrency} over {options.concurrency[0]}: {speedup:.2f}x")
    if options.output:
        options.output.write_text(json.dumps(results, indent=2))
    return results


def measure(
    url: str, options: argparse.Namespace, rows, prompts, args: RLRFArguments, results: dict, baseline: str | None
) -> None:
    """Stage and plain load at each concurrency (and the plain load on the `baseline` server), interleaved; the best
    run of each goes into `results`."""
    for server in filter(None, (url, baseline)):
        run_stage(server, 4, rows[:2], prompts, args)  # compiles the schema's grammar once
    bodies = None
    for concurrency in options.concurrency:
        best = {"stage": 0.0, "load": 0.0, "load_fp32_weights": 0.0}
        for repeat in range(options.repeats):
            # Alternate which goes first: the first run at a new concurrency meets a server not yet warm for it.
            if bodies is not None and repeat % 2:
                load_seconds, load_cpu, load_tokens = asyncio.run(plain_load(url, bodies, concurrency))
            seconds, stage_cpu, backend = run_stage(url, concurrency, rows, prompts, args)
            if bodies is None or not repeat % 2:
                bodies = bodies or load_bodies(backend)
                load_seconds, load_cpu, load_tokens = asyncio.run(plain_load(url, bodies, concurrency))
            best["stage"] = max(best["stage"], len(rows) / seconds)
            best["load"] = max(best["load"], len(bodies) / load_seconds)
            print(
                f"concurrency {concurrency:>2}: stage {len(rows)} rows in {seconds:.1f} s "
                f"({backend.stats['completion_tokens']} tokens, client CPU {stage_cpu:.2f} s), "
                f"load {len(bodies)} requests in {load_seconds:.1f} s "
                f"({load_tokens} tokens, client CPU {load_cpu:.2f} s)",
                flush=True,
            )
            if baseline:
                fp32_seconds, _, fp32_tokens = asyncio.run(plain_load(baseline, bodies, concurrency))
                best["load_fp32_weights"] = max(best["load_fp32_weights"], len(bodies) / fp32_seconds)
                print(f"    fp32 weights: load in {fp32_seconds:.1f} s ({fp32_tokens} tokens)", flush=True)
        ratio = best["stage"] / best["load"]
        results[f"c{concurrency}"] = {
            "stage_rows_per_s": best["stage"],
            "load_requests_per_s": best["load"],
            "stage_over_load": ratio,
        }
        print(
            f"concurrency {concurrency:>2}: stage {best['stage']:.3f} rows/s, server capacity "
            f"{best['load']:.3f} requests/s, ratio {ratio:.3f}",
            flush=True,
        )
        if baseline:
            speedup = best["load"] / best["load_fp32_weights"]
            results[f"c{concurrency}"].update(
                {"load_fp32_weights_requests_per_s": best["load_fp32_weights"], "load_over_fp32_weights": speedup}
            )
            print(
                f"concurrency {concurrency:>2}: server capacity with fp32 weights "
                f"{best['load_fp32_weights']:.3f} requests/s; default / fp32 weights {speedup:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
