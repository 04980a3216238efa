"""The generation benchmark end to end on the tiny model, and its FLOP accounting."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM

from rlrf_hub.backends.projections import half_weights_available

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str):
    """Import a script of benchmarks/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


throughput = load_benchmark("candidate_throughput")


def test_workload_flops_counts_the_body_per_position_and_the_head_per_generated_token():
    size = throughput.ModelSize(body=10, head=3)
    # 2 sequences, 7 prompt tokens, 5 generated: the body sees 7 + 5 - 2 = 10 positions, the head 5.
    assert throughput.workload_flops(size, prompt_tokens=7, generated_tokens=5, sequences=2) == 2 * 10 * 10 + 2 * 3 * 5


@pytest.mark.parametrize("tied", [True, False])
def test_model_size_leaves_out_the_embedding_and_counts_the_head_once(tied):
    config = LlamaConfig(
        vocab_size=10,
        hidden_size=4,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        tie_word_embeddings=tied,
    )
    # q, k, v, o: 4 x 4 each; gate, up, down: 4 x 8 each; two layer norms and the final norm: 4 each.
    assert throughput.model_size(LlamaForCausalLM(config)) == throughput.ModelSize(
        body=4 * 16 + 3 * 32 + 3 * 4, head=40
    )


def test_one_run_reports_every_stage_against_the_compute_limit(tiny_model, tmp_path):
    output = tmp_path / "throughput.json"
    args = ["--model", tiny_model, "--prompts", "2", "--batch-size", "2", "--max-new-tokens", "2", "--repeats", "1"]
    summary = throughput.main([*args, "--skip-one-at-a-time", "--matmul-seconds", "0.01", "--output", str(output)])

    assert json.loads(output.read_text()) == summary
    for name in (
        *throughput.STAGES,
        "candidate_fp32_weights",
        "feedback_generate",
        "factscore_support_generate",
        "raw",
    ):
        assert summary[f"{name}_tokens_per_s"] > 0
        assert 0 < summary[f"{name}_share_of_compute_limit"] < math.inf
        assert summary[f"{name}_peak_rss_mb"] > 0
    assert "one_at_a_time_tokens_per_s" not in summary
    assert summary["candidate_over_candidate_fp32_weights"] > 0
    assert summary["feedback_over_feedback_generate"] > 0
    assert summary["factscore_support_over_factscore_support_generate"] > 0
    assert summary["vm_hwm_mb"] >= max(summary[f"{name}_peak_rss_mb"] for name in throughput.STAGES)
    kinds = {shape.split()[0] for shape in summary["matmul_gflops_by_shape"]}
    assert kinds == ({"fp32", "fp16_weights"} if half_weights_available() else {"fp32"})
    assert summary["matmul_gflops"] == max(summary["matmul_gflops_by_shape"].values())


def test_the_endpoint_benchmark_measures_the_stage_the_server_and_its_fp32_twin(tmp_path):
    endpoint = load_benchmark("feedback_endpoint")
    output = tmp_path / "endpoint.json"
    args = ["--model", "embedded:tiny", "--rows", "2", "--concurrency", "1", "2", "--repeats", "1"]
    results = endpoint.main([*args, "--max-new-tokens", "8", "--output", str(output)])

    assert json.loads(output.read_text()) == results
    for concurrency in ("c1", "c2"):
        measured = results[concurrency]
        assert measured["stage_rows_per_s"] > 0 and measured["load_requests_per_s"] > 0
        assert measured["stage_over_load"] == measured["stage_rows_per_s"] / measured["load_requests_per_s"]
        if half_weights_available():
            speedup = measured["load_requests_per_s"] / measured["load_fp32_weights_requests_per_s"]
            assert measured["load_over_fp32_weights"] == speedup
        else:
            assert "load_over_fp32_weights" not in measured
