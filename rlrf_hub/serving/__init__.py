"""`rlrf-hub serve`: text-generation-inference's HTTP API over a transformers model, with dynamic batching,
grammar-constrained decoding (llguidance) and per-request LoRA adapters."""

from .launch import ServerHandle, spawn_server, start_server

__all__ = ["ServerHandle", "spawn_server", "start_server"]
