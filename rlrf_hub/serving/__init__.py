"""`rlrf-hub serve`: text-generation-inference's HTTP API over a transformers model, with dynamic batching,
grammar-constrained decoding (llguidance) and per-request LoRA adapters. Start one from Python with
`rlrf_hub.serving.launch.start_server` (in this process) or `spawn_server` (a subprocess)."""
