"""Benchmarks of a policy: GSM8K, FactScore and Just-Eval (their results on adapter cards: `rlrf_hub.cards`)."""
