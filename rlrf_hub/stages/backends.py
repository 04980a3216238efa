"""The policy, judge and reward model the stages use, built from the run's settings; the stages never name a
backend class.

`policy_backend` / `feedback_backend` choose: `in_process` (transformers in this process), `endpoint` (servers
already running at `policy_endpoint` / `feedback_endpoint`) or `serve` (this process starts `rlrf-hub serve` on a
free port for the model, and stops it when the backend is closed or garbage collected).
"""

from __future__ import annotations

import gc

from ..backends import GenerationBackend
from ..backends.factory import EndpointSettings, endpoint_backend
from .settings import RunSettings

ENDPOINT_PREFIX = "endpoint_"


def policy_backend(settings: RunSettings, adapter: str | None) -> GenerationBackend:
    """The policy M_t: the base model plus the adapter of iteration t (none for M0).

    Through an endpoint, the adapter is not merged: the server samples from it by name (`adapter_id`).
    """
    p, batch = settings.policy, settings.sampling.generation_batch_size
    if p.backend == "endpoint":
        return endpoint_backend(settings.endpoints, list(p.endpoint), p.model, p.revision, adapter)
    if p.backend == "serve":
        adapters = (adapter,) if adapter else ()
        return served_backend(settings.endpoints, p.model, p.revision, adapter, adapters, batch)
    from ..backends.transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(p.model, revision=p.revision, adapter=adapter, batch_size=batch)


def judge_backend(settings: RunSettings) -> GenerationBackend:
    """The frozen feedback model."""
    f, kind = settings.feedback, settings.judge.backend
    if kind == "endpoint":
        return endpoint_backend(
            settings.endpoints, list(settings.judge.endpoint), f.feedback_model, f.feedback_revision, None
        )
    if kind == "serve":
        return served_backend(
            settings.endpoints, f.feedback_model, f.feedback_revision, None, (), f.feedback_batch_size
        )
    from ..backends.transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(
        f.feedback_model, revision=f.feedback_revision, batch_size=f.feedback_batch_size
    )


def served_backend(
    endpoints: EndpointSettings,
    model_id: str,
    revision: str | None,
    adapter: str | None,
    adapters: tuple[str, ...],
    max_batch_size: int,
) -> GenerationBackend:
    """Start `rlrf-hub serve` for `model_id` (and `adapters`) on a free port, and an endpoint backend on it."""
    from ..serving.launch import spawn_server

    server = spawn_server(model_id, revision=revision, adapters=adapters, max_batch_size=max_batch_size)
    try:
        return endpoint_backend(endpoints, server.url, model_id, revision, adapter, server=server)
    except BaseException:
        server.close()
        raise


class Backends:
    """Loads the policy, the judge and the reward model only when a stage needs them."""

    def __init__(self, settings: RunSettings, policy_adapter: str | None):
        self.settings = settings
        self.policy_adapter = policy_adapter
        self._policy = self._judge = self._reward = None

    def policy(self) -> GenerationBackend:
        if self._policy is None:
            self._policy = policy_backend(self.settings, self.policy_adapter)
        return self._policy

    def judge(self) -> GenerationBackend:
        if self._judge is None:
            self._judge = judge_backend(self.settings)
        return self._judge

    def reward(self):
        r = self.settings.reward
        if r.reward_model and self._reward is None:
            from ..reward import RewardScorer

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
