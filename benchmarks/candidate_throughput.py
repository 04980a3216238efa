"""Generated tokens per second of the sampling stages and the GSM8K evaluation, against raw `model.generate`.

Ways to generate one completion per prompt, measured side by side in one process:

- candidate: the candidate stage (`rlrf_hub.stages.sampling.sample_responses` over `TransformersBackend`: chat
  template, length sorting, per-row seeded sampling, rows checkpointed to parquet);
- candidate_fp32_weights: the candidate stage with the packed decoder keeping the model's fp32 weights instead of
  half-precision copies (`rlrf_hub.backends.projections`); measured with `candidate` where the packed path runs;
- refinement: the refinement stage on the candidates of this run, each given the same short feedback text in
  place of a judge's (`rlrf_hub.stages.refinements.refinement_jobs`, one refinement per prompt);
- feedback: the judge of the feedback stage (`rlrf_hub.feedback.judge.rate_responses`, JSON-schema constrained, no
  verifier) rating the candidates of this run, through the packed decoder;
- feedback_generate: the same judge calls through `model.generate` (`TransformersBackend(packed=False)`);
- gsm8k_eval: the GSM8K evaluation (`rlrf_hub.evaluation.gsm8k.run_gsm8k`, greedy) on as many test problems;
- factscore_support: FactScore's support checks (`FactScorer.verify`: up to 5 passages and one atomic fact per
  prompt, a JSON verdict) on as many of FActScore's human atomic facts, in file order (so grouped by entity, as an
  evaluation asks them), through the packed decoder; factscore_support_generate: the same through `model.generate`.
  Their replies are a few tokens, so their tokens/s is low by nature; their share and ratio are what count;
- raw: `model.generate` on left-padded batches of the same size, prompts in file order, built-in sampling;
- one_at_a_time: `model.generate` on each prompt alone.

The sampling methods use the same temperature and top-p (top-k off); all count generated tokens up to and
including EOS. `--stages` picks the stages; raw and one_at_a_time run on the candidate prompts.

Each method's rate is also put against the compute limit of the machine: the best matmul rate torch reaches (same
device and threads, interleaved with the methods) on matrices shaped like the model's projections at prefill and
decode token counts, in fp32 and, where the packed decoder uses it, with fbgemm's half-precision-weight GEMM (fp32
arithmetic; on AVX-512 CPUs it outruns MKL's fp32 GEMM), divided by the FLOPs the workload needs per generated
token (`workload_flops`: 2 per
parameter and position; attention's score and value products are ignored, so for long contexts the limit is set
a little high). A low share means the time goes to other things than the model's matmuls: Python steps, sampling,
padding, memory-bound small batches.
Peak memory is the highest VmRSS sampled every 20 ms while a method runs (`ru_maxrss` only grows over the
process's life, so it cannot tell methods apart), plus the process's VmHWM at the end; on CUDA also the peak
allocated GPU memory.

    python benchmarks/candidate_throughput.py --model embedded:smollm2-135m-instruct --prompts 32 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from rlrf_hub.backends import GenerationRequest, SamplingParams
from rlrf_hub.backends.projections import half_weights_available
from rlrf_hub.backends.transformers_backend import TransformersBackend, completion_length
from rlrf_hub.evaluation import gsm8k
from rlrf_hub.evaluation.factscore import FactScorer, KnowledgeSource, load_labeled
from rlrf_hub.evaluation.factscore.verify import verify_messages
from rlrf_hub.feedback.judge import FeedbackSettings, aspects_for, rate_responses
from rlrf_hub.feedback.templates import rating_messages
from rlrf_hub.ids import prompt_id
from rlrf_hub.publishing import StageCheckpoint
from rlrf_hub.stages.candidates import candidate_jobs
from rlrf_hub.stages.refinements import refinement_jobs
from rlrf_hub.stages.sampling import SamplingJob, sample_responses

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
DEFAULT_DATA = DATA_DIR / "train.jsonl"
DEFAULT_EVAL_DATA = DATA_DIR / "test.jsonl"
FACTSCORE_DIR = DATA_DIR.parent / "factscore"
DEFAULT_LABELED = FACTSCORE_DIR / "labeled" / "ChatGPT.jsonl"
DEFAULT_KNOWLEDGE = FACTSCORE_DIR / "wikipedia" / "wikipedia_reference_text.json"
STAGES = ("candidate", "refinement", "feedback", "gsm8k_eval", "factscore_support")
RATIOS = (
    ("candidate", "raw"),
    ("candidate", "candidate_fp32_weights"),
    ("candidate", "one_at_a_time"),
    ("feedback", "feedback_generate"),
    ("factscore_support", "factscore_support_generate"),
)
FIXED_FEEDBACK = "The reasoning skips steps. Show every calculation and end with the final number."


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--data", default=DEFAULT_DATA, help="JSONL file whose `question` fields are the prompts")
    parser.add_argument("--eval-data", default=DEFAULT_EVAL_DATA, help="GSM8K test problems for gsm8k_eval")
    parser.add_argument("--labeled", default=DEFAULT_LABELED, help="FActScore labeled JSONL for factscore_support")
    parser.add_argument("--knowledge", default=DEFAULT_KNOWLEDGE, help="knowledge source for factscore_support")
    parser.add_argument("--stages", type=parse_stages, default=STAGES, help=f"comma list of {', '.join(STAGES)}")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per stage (and GSM8K problems)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs of each method; the best is reported")
    parser.add_argument("--skip-one-at-a-time", action="store_true")
    parser.add_argument("--matmul-seconds", type=float, default=0.5, help="time spent on each matmul shape")
    parser.add_argument("--device", default=None, help="defaults to cuda when available")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    return parser


def parse_stages(value: str) -> tuple[str, ...]:
    stages = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = sorted(set(stages) - set(STAGES))
    if unknown or not stages:
        raise argparse.ArgumentTypeError(f"stages are a comma list of {', '.join(STAGES)}, got {value!r}")
    return stages


def load_questions(path: str | Path, limit: int) -> list[str]:
    questions = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                questions.append(json.loads(line)["question"])
            if len(questions) == limit:
                break
    if len(questions) < limit:
        raise ValueError(f"{path} holds {len(questions)} questions, fewer than the {limit} asked for")
    return questions


@dataclass(frozen=True)
class ModelSize:
    """Parameters of a forward pass: `head` the LM head's, `body` all others but the token embedding (a lookup).

    The body's norm weights are no matmul work; next to the projections they are a rounding error.
    """

    body: int
    head: int


def model_size(model: torch.nn.Module) -> ModelSize:
    """Sizes from the parameters themselves; a head tied to the embedding is counted once, as `head`."""
    embedding = model.get_input_embeddings().weight
    output = model.get_output_embeddings()
    head = output.weight if output is not None else None
    skip = {embedding.data_ptr()} | ({head.data_ptr()} if head is not None else set())
    body = sum(p.numel() for p in model.parameters() if p.data_ptr() not in skip)
    config = model.config
    return ModelSize(body=body, head=head.numel() if head is not None else config.vocab_size * config.hidden_size)


def workload_flops(size: ModelSize, prompt_tokens: int, generated_tokens: int, sequences: int) -> int:
    """FLOPs a generation workload needs at least: 2 (multiply and add) per parameter and position it passes.

    Every prompt position goes through the body; the LM head runs once per generated token, the first one on the
    prompt's last position; every generated token but the last of its sequence is fed back through the body.
    Attention's score and value products, padding, and rows that keep decoding after their EOS while the rest of
    their batch finishes are not counted: they are not needed, so they lower a method's share of the limit.
    """
    body_positions = prompt_tokens + generated_tokens - sequences
    return 2 * size.body * body_positions + 2 * size.head * generated_tokens


def matmul_shapes(config, prefill_tokens: int, batch_tokens: int) -> list[tuple[int, int, int]]:
    """(tokens, in, out) of the model's fused QKV-sized and MLP projections at prefill and decode token counts,
    and of the LM head at decode."""
    hidden, intermediate = config.hidden_size, config.intermediate_size
    shapes = [
        (tokens, hidden, width) for tokens in (prefill_tokens, batch_tokens) for width in (3 * hidden, intermediate)
    ]
    return shapes + [(batch_tokens, hidden, config.vocab_size)]


def matmul_kinds(device: torch.device) -> list[str]:
    """The GEMMs the limit is taken over: fp32, and the packed decoder's half-precision weights on CPUs with fbgemm."""
    return ["fp32", "fp16_weights"] if device.type == "cpu" and half_weights_available() else ["fp32"]


def matmul_gflops(shape: tuple[int, int, int], device: torch.device, seconds: float, kind: str = "fp32") -> float:
    """GFLOP/s of repeated `tokens x in` by `in x out` products of one kind, over at least `seconds` (two calls or
    more): "fp32" is `torch.matmul`, "fp16_weights" fbgemm's GEMM on half-precision weights (fp32 arithmetic)."""
    tokens, width_in, width_out = shape
    a = torch.randn(tokens, width_in, device=device)
    if kind == "fp16_weights":
        packed = torch.ops.quantized.linear_prepack_fp16(torch.randn(width_out, width_in), None)
        product = partial(torch.ops.quantized.linear_dynamic_fp16, a, packed)
    else:
        b, out = torch.randn(width_in, width_out, device=device), torch.empty(tokens, width_out, device=device)
        product = partial(torch.matmul, a, b, out=out)
    product()
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        product()
        calls += 1
        _sync()
    return 2 * tokens * width_in * width_out * calls / (time.perf_counter() - start) / 1e9


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo ("cpu" where there is none): rates differ by machine, so say which."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else "cpu"


def _status_mb(field: str) -> float:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    raise KeyError(f"/proc/self/status has no {field}")


class PeakRSS:
    """The highest VmRSS seen while the `with` block runs, sampled from a thread every `interval` seconds."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak_mb = max(self.peak_mb, _status_mb("VmRSS"))
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _status_mb("VmRSS"))


def _sync() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(run: Callable[[], int]) -> tuple[int, float]:
    _sync()
    start = time.perf_counter()
    tokens = run()
    _sync()
    return tokens, time.perf_counter() - start


def raw_generate(backend: TransformersBackend, prompts: list[list[int]], params: SamplingParams) -> int:
    """`model.generate` on one left-padded batch with its own sampling; returns the generated token count."""
    input_ids, attention_mask = backend.left_pad(prompts)
    with torch.inference_mode():
        output = backend.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=params.max_new_tokens,
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            eos_token_id=backend.eos_token_ids,
            pad_token_id=backend.pad_token_id,
        )
    eos = set(backend.eos_token_ids)
    return sum(completion_length(row, eos)[0] for row in output[:, input_ids.shape[1] :].tolist())


@dataclass
class Method:
    """A measured way of generating: `run` returns its generated token count; its prompts are fixed."""

    run: Callable[[], int]
    prompt_tokens: int
    sequences: int


@dataclass
class Run:
    tokens: int
    seconds: float
    flops: int
    peak_rss_mb: float
    peak_gpu_mb: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def stage_tokens(backend: TransformersBackend, jobs: list[SamplingJob], params: SamplingParams, origin: str) -> int:
    """Generated tokens of one pass of a sampling stage, checkpointed to a throwaway folder as the loop does."""
    return sum(row["num_tokens"] for row in sample_stage(backend, jobs, params, origin))


def sample_stage(backend: TransformersBackend, jobs: list[SamplingJob], params: SamplingParams, origin: str) -> list:
    with tempfile.TemporaryDirectory() as work:
        checkpoint = StageCheckpoint(Path(work), f"{origin}s")
        return sample_responses(jobs, backend, params, 1, 0, origin, checkpoint, len(jobs))


def fixed_feedback(candidates: list[dict]) -> list[dict]:
    """A parsed feedback row with the same critique for every candidate, standing in for the judge's."""
    return [
        {
            "prompt_id": row["prompt_id"],
            "response_id": row["response_id"],
            "origin": row["origin"],
            "parse_status": "strict",
            "ratings": [0],
            "mean_rating": 0.0,
            "critique": FIXED_FEEDBACK,
            "reward": None,
        }
        for row in candidates
    ]


def judge_tokens(
    backend: TransformersBackend, candidates: list[dict], prompts: dict[str, dict], max_new_tokens: int
) -> int:
    stats: dict = {}
    rate_responses(candidates, prompts, {}, backend, judge_settings(max_new_tokens), 0, stats)
    return stats["judge_tokens"]


def judge_settings(max_new_tokens: int) -> FeedbackSettings:
    return FeedbackSettings(verifier_tasks=(), feedback_max_new_tokens=max_new_tokens, max_parse_retries=0)


def feedback_methods(
    backend: TransformersBackend, prompts: list[dict], candidates: list[dict], max_new_tokens: int
) -> dict[str, Method]:
    """The judge over the packed decoder and over `model.generate`, on the same candidates."""
    by_id = {prompt["prompt_id"]: prompt for prompt in prompts}
    names = aspects_for("math", judge_settings(max_new_tokens).aspect_mode, 3)
    messages = [rating_messages(by_id[row["prompt_id"]]["prompt"], row["response"], names, None) for row in candidates]
    prompt_tokens = count_prompt_tokens(backend, messages)
    return {
        name: Method(partial(judge_tokens, judge, candidates, by_id, max_new_tokens), prompt_tokens, len(candidates))
        for name, judge in (("feedback", backend), ("feedback_generate", same_model(backend, packed=False)))
    }


def same_model(backend: TransformersBackend, **options) -> TransformersBackend:
    """The same model and batch size, decoding as `options` say (`packed=False`: through `model.generate`;
    `weight_precision="float32"`: the packed decoder on the model's own weights)."""
    return TransformersBackend(
        backend.model, backend.tokenizer, backend.model_id, batch_size=backend.batch_size, **options
    )


def eval_tokens(backend: TransformersBackend, items: list[gsm8k.GSM8KItem], params: SamplingParams) -> int:
    rows, _ = gsm8k.run_gsm8k(backend, items, None, params).tables["items"]
    return sum(row["num_tokens"] for row in rows)


def support_claims(labeled: str | Path, knowledge: KnowledgeSource, limit: int) -> list[tuple[str, str]]:
    """The first `limit` human atomic facts, as `(topic, fact)`, of entities the knowledge source has."""
    rows = [row for row in load_labeled(labeled) if knowledge.passages(row.topic)]
    return [(row.topic, fact.text) for row in rows for fact in row.facts][:limit]


def support_tokens(scorer: FactScorer, claims: list[tuple[str, str]]) -> int:
    before = scorer.judge.total_tokens
    scorer.verify(claims)
    return scorer.judge.total_tokens - before


def support_methods(args: argparse.Namespace, backend: TransformersBackend) -> dict[str, Method]:
    """FactScore's support checks over the packed decoder and over `model.generate`, on the same facts."""
    knowledge = KnowledgeSource.load(args.knowledge)
    claims = support_claims(args.labeled, knowledge, args.prompts)
    scorers = {
        "factscore_support": FactScorer(backend, knowledge),
        "factscore_support_generate": FactScorer(same_model(backend, packed=False), knowledge),
    }
    passages = scorers["factscore_support"].settings.num_passages
    messages = [
        verify_messages(topic, fact, knowledge.retrieve(topic, f"{topic} {fact}", passages)) for topic, fact in claims
    ]
    prompt_tokens = count_prompt_tokens(backend, messages)
    return {
        name: Method(partial(support_tokens, scorer, claims), prompt_tokens, len(claims))
        for name, scorer in scorers.items()
    }


def sampling_method(
    backend: TransformersBackend, jobs: list[SamplingJob], params: SamplingParams, origin: str
) -> Method:
    messages = [job.messages for job in jobs]
    return Method(
        partial(stage_tokens, backend, jobs, params, origin), count_prompt_tokens(backend, messages), len(jobs)
    )


def count_prompt_tokens(backend: TransformersBackend, messages: list[list[dict[str, str]]]) -> int:
    return sum(len(ids) for ids in backend.encode_prompts(messages))


def stage_methods(
    args: argparse.Namespace, backend: TransformersBackend, prompts: list[dict], params: SamplingParams
) -> dict[str, Method]:
    """The stages of `args.stages`; refinements and feedback work on one untimed pass of the candidate stage."""
    methods = {}
    jobs = candidate_jobs(prompts)
    if "candidate" in args.stages:
        methods["candidate"] = sampling_method(backend, jobs, params, "candidate")
        if backend.weight_precision not in (None, "float32"):
            exact = same_model(backend, weight_precision="float32")
            methods["candidate_fp32_weights"] = sampling_method(exact, jobs, params, "candidate")
    if {"refinement", "feedback"} & set(args.stages):
        candidates = sample_stage(backend, jobs, params, "candidate")
    if "refinement" in args.stages:
        refine = refinement_jobs(prompts, candidates, fixed_feedback(candidates))
        methods["refinement"] = sampling_method(backend, refine, params, "refinement")
    if "feedback" in args.stages:
        methods |= feedback_methods(backend, prompts, candidates, args.max_new_tokens)
    if "gsm8k_eval" in args.stages:
        items, _ = gsm8k.load_gsm8k(args.eval_data, "test", args.prompts)
        greedy = replace(gsm8k.POLICY_PARAMS, max_new_tokens=args.max_new_tokens)
        messages = [gsm8k.gsm8k_messages(item.question) for item in items]
        methods["gsm8k_eval"] = Method(
            partial(eval_tokens, backend, items, greedy), count_prompt_tokens(backend, messages), len(items)
        )
    if "factscore_support" in args.stages:
        methods |= support_methods(args, backend)
    return methods


def generate_methods(
    args: argparse.Namespace, backend: TransformersBackend, prompt_ids: list[list[int]], params: SamplingParams
) -> dict[str, Method]:
    """raw and one_at_a_time on the candidate prompts."""
    tokens, size = sum(len(ids) for ids in prompt_ids), args.batch_size

    def run_raw() -> int:
        return sum(raw_generate(backend, prompt_ids[i : i + size], params) for i in range(0, len(prompt_ids), size))

    def run_one_at_a_time() -> int:
        return sum(raw_generate(backend, [ids], params) for ids in prompt_ids)

    methods = {"raw": Method(run_raw, tokens, len(prompt_ids))}
    if not args.skip_one_at_a_time:
        methods["one_at_a_time"] = Method(run_one_at_a_time, tokens, len(prompt_ids))
    return methods


def run_once(method: Method, size: ModelSize) -> Run:
    cuda = torch.cuda.is_initialized()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        tokens, seconds = timed(method.run)
    flops = workload_flops(size, method.prompt_tokens, tokens, method.sequences)
    gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return Run(tokens, seconds, flops, rss.peak_mb, gpu_mb)


def measure(args: argparse.Namespace, backend: TransformersBackend) -> tuple[dict[str, list[Run]], dict[str, float]]:
    """Every method's runs and the best GFLOP/s of each matmul shape, interleaved over the repeats."""
    questions = load_questions(args.data, args.prompts)
    messages = [[{"role": "user", "content": question}] for question in questions]
    prompt_ids = backend.encode_prompts(messages)
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    requests = [GenerationRequest(messages=m) for m in messages]
    warmup = SamplingParams(max_new_tokens=4, temperature=args.temperature, top_p=args.top_p)
    backend.generate(requests[:2], warmup)
    raw_generate(backend, prompt_ids[:2], warmup)

    prompts = [
        {"prompt_id": prompt_id(q), "prompt": q, "task": "math", "reference": None, "source": "gsm8k"}
        for q in questions
    ]
    methods = stage_methods(args, backend, prompts, params) | generate_methods(args, backend, prompt_ids, params)
    batch = min(args.batch_size, len(prompt_ids))
    prefill = batch * round(sum(len(ids) for ids in prompt_ids) / len(prompt_ids))
    kinds = matmul_kinds(backend.model.device)
    shapes = [(kind, shape) for kind in kinds for shape in matmul_shapes(backend.model.config, prefill, batch)]
    gflops = dict.fromkeys(shapes, 0.0)
    torch.manual_seed(args.seed)
    size = model_size(backend.model)
    runs: dict[str, list[Run]] = {name: [] for name in methods}
    for _ in range(args.repeats):
        for name, method in methods.items():
            run = run_once(method, size)
            runs[name].append(run)
            print(
                f"{name:>14}: {run.tokens} tokens in {run.seconds:.1f} s = {run.tokens_per_s:.1f} tokens/s, "
                f"peak RSS {run.peak_rss_mb:.0f} MB",
                flush=True,
            )
        for kind, shape in shapes:
            rate = matmul_gflops(shape, backend.model.device, args.matmul_seconds, kind)
            gflops[kind, shape] = max(gflops[kind, shape], rate)
    return runs, {f"{kind} {'x'.join(map(str, shape))}": rate for (kind, shape), rate in gflops.items()}


def report(runs: dict[str, list[Run]], gflops: float) -> dict[str, float]:
    """Each method's best run (on a shared machine, slow runs measure the neighbours) against the compute limit.

    The peak memory is the highest over all runs of the method.
    """
    summary: dict[str, float] = {}
    for name, method_runs in runs.items():
        best = max(method_runs, key=lambda run: run.tokens_per_s)
        limit = gflops * 1e9 * best.tokens / best.flops
        summary[f"{name}_tokens_per_s"] = best.tokens_per_s
        summary[f"{name}_compute_limit_tokens_per_s"] = limit
        summary[f"{name}_share_of_compute_limit"] = best.tokens_per_s / limit
        summary[f"{name}_peak_rss_mb"] = max(run.peak_rss_mb for run in method_runs)
        if best.peak_gpu_mb is not None:
            summary[f"{name}_peak_gpu_mb"] = max(run.peak_gpu_mb or 0.0 for run in method_runs)
    for stage, baseline in RATIOS:
        if stage in runs and baseline in runs:
            summary[f"{stage}_over_{baseline}"] = (
                summary[f"{stage}_tokens_per_s"] / summary[f"{baseline}_tokens_per_s"]
            )
    return summary


def print_table(summary: dict[str, Any], names: list[str]) -> None:
    columns = {"tokens/s": "tokens_per_s", "limit tok/s": "compute_limit_tokens_per_s"}
    print("\n" + " ".join([f"{'method':>14}", *(f"{title:>12}" for title in columns), f"{'share':>8}", "peak RSS MB"]))
    for name in names:
        values = [f"{summary[f'{name}_{key}']:>12.1f}" for key in columns.values()]
        share, rss = summary[f"{name}_share_of_compute_limit"], summary[f"{name}_peak_rss_mb"]
        print(" ".join([f"{name:>14}", *values, f"{share:>8.2%}", f"{rss:>11.0f}"]))
    for stage, baseline in RATIOS:
        if f"{stage}_over_{baseline}" in summary:
            print(f"{stage} / {baseline}: {summary[f'{stage}_over_{baseline}']:.3f}")
    print(
        f"matmul {summary['matmul_gflops']:.1f} GFLOP/s on {summary['threads']} threads of {summary['device']} "
        f"({summary['cpu_capability']}); process VmHWM {summary['vm_hwm_mb']:.0f} MB"
    )
    for shape, rate in summary["matmul_gflops_by_shape"].items():
        print(f"  {shape}: {rate:.1f} GFLOP/s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = make_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backend = TransformersBackend.from_pretrained(args.model, batch_size=args.batch_size, device=args.device)
    runs, by_shape = measure(args, backend)
    summary: dict[str, Any] = report(runs, max(by_shape.values()))
    summary.update({"matmul_gflops": max(by_shape.values()), "matmul_gflops_by_shape": by_shape})
    summary.update({"threads": torch.get_num_threads(), "vm_hwm_mb": _status_mb("VmHWM")})
    device = backend.model.device
    summary["model_dtype"] = str(backend.model.dtype).removeprefix("torch.")
    summary["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    summary["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    summary.update({"model": args.model, "prompts": args.prompts, "batch_size": args.batch_size})
    summary.update({"max_new_tokens": args.max_new_tokens, "stages": list(args.stages)})
    print_table(summary, list(runs))
    if args.output:
        args.output.write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
