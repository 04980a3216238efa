"""The content keys of the smoke recipe's stages, pinned: a published stage is reused only under the same key, so a
change to what goes into a key (a setting added, renamed or dropped) must be deliberate. The values were computed
before the stages moved into `rlrf_hub.stages` and did not change with the move."""

from __future__ import annotations

from pathlib import Path

from conftest import REPO

from rlrf_hub.config import parse_recipe, run_settings
from rlrf_hub.publishing import Published
from rlrf_hub.stages import ITERATION_STAGES, prompts
from rlrf_hub.stages.base import IterationContext

SMOKE_KEYS = {
    "prompts": "aec3301accbc6068569a2a3fc2ab37cf1a67fc56a69c8fd27526718d55486992",
    "candidates/0": "6f564f260f750de739aeb0816c0e2e303631eec371e94e0268d356914b6867e0",
    "refinements/0": "8076d5bbf94b9bcdbd6f891f9acf547e2dec6a286218a891bc960bf26e096573",
    "feedback/0": "d118fc7765667b86b4208ce5e526b5883839a44f2a1cbac9839fe7abcd368c07",
    "pairs/0": "88f3d117f0689ff6461064a1188d9960d3a05bd03578a5d60a09476f3581756f",
    "adapter/0": "68315f421eb57db010f47cf338a44c2abf73da04f26418f7b50f3f58c0e6666e",
    "candidates/1": "78c4b2f2a3feab7295bccf461a23f82fb290deaabfab6cefdd2857a1ec85e047",
    "refinements/1": "3fc710f5f4772ab451d8889a3b688b044b137670b33e207f3d07feec0e0536d4",
    "feedback/1": "4aa91f794ba096b06e42d72a40c921787038e9eeea67383757f5e71742ef05b4",
    "pairs/1": "4e13e1b7ab58c72c83bf50265facfa1c3a5427ea2d1ffff321aacc733e5c05dd",
    "adapter/1": "caceb4d54ea45cfc5381c81647a8dfce86befce6246edce8fc7e5fb7d2b42054",
}


class NoPublisher:
    def adapter_dir(self, model_index: int) -> Path:
        return Path("adapters") / f"M{model_index}"


def _published(name: str, revision: str) -> Published:
    return Published("dataset", name, 0, name, revision)


def test_the_smoke_recipe_keeps_its_content_keys(monkeypatch, data_dir):
    monkeypatch.chdir(REPO)
    settings = run_settings(parse_recipe(["--config", "recipes/smollm2-135m-cpu/smoke.yaml"]))
    ctx = IterationContext(settings, NoPublisher(), [], 0)
    keys = {"prompts": ctx.key(prompts.NAME, prompts.PARENTS, prompts.key_inputs(ctx))}
    for t in (0, 1):
        adapter = _published("adapter", f"M{t}") if t else None
        ctx = IterationContext(settings, NoPublisher(), [], t, policy_adapter=adapter)
        ctx.published = {name: _published(name, "parent") for name in ("prompts", "candidates", "feedback", "pairs")}
        for stage in ITERATION_STAGES:
            keys[f"{stage.NAME}/{t}"] = ctx.key(stage.NAME, stage.PARENTS, stage.key_inputs(ctx))
    assert keys == SMOKE_KEYS
