"""Benchmarks of a policy (GSM8K, FactScore, Just-Eval) and their place on the adapter's model card."""
