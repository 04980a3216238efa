"""The RLRF loop: M0 -> M1 -> ... -> M_T, regenerating data with the current policy each iteration.

Iteration t samples with M_t, rates, refines, pairs, and trains M_(t+1) on its pairs; then M_(t+1) is evaluated.
Each of these is a stage (`rlrf_hub.stages`): the loop skips what is published from the same inputs (the content
key), runs the rest, and each stage publishes what it made. An interrupted stage resumes from its checkpoint. A
sharded run (`--shard i/N`) is N such loops sharing the work; `rlrf_hub.sharding` describes how they meet.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .config import Recipe, publish_settings, run_settings
from .errors import RunError
from .publishing import Publisher, make_publisher
from .stages import ITERATION_STAGES, evaluate, prompts
from .stages.base import IterationContext, Stage, reusable
from .stages.settings import RunSettings
from .summary import IterationSummary, summarise_iteration


def run(recipe: Recipe, publisher: Publisher | None = None) -> list[IterationSummary]:
    """Run every iteration of the recipe; finished iterations are read back, not recomputed.

    The run holds `output_dir` for itself (`RunLock`) and, before the first stage, checks that its Hub, models and
    endpoints answer (`preflight`), so that what is expected to go wrong goes wrong before anything is written.
    """
    from .preflight import check_recipe_resources
    from .run_lock import RunLock

    with RunLock(recipe.output_dir, wait=recipe.rlrf.wait_for_lock):
        publisher = publisher or make_publisher(publish_settings(recipe))
        publisher.check()
        check_recipe_resources(recipe)
        return run_iterations(run_settings(recipe), publisher)


def run_iterations(settings: RunSettings, publisher: Publisher) -> list[IterationSummary]:
    rows = run_stage(prompts, IterationContext(settings, publisher, [], 0))
    summaries = []
    for t in range(settings.num_iterations):
        path = settings.output_dir / f"iter-{t}" / "summary.json"
        if path.is_file() and publisher.find_adapter(t + 1):
            summary = IterationSummary(**json.loads(path.read_text()))
        else:
            summary = run_iteration(settings, publisher, rows, t)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(asdict(summary), indent=2))
        summaries.append(summary)
        run_stage(evaluate, IterationContext(settings, publisher, rows, t))
    Path(settings.output_dir / "summary.json").write_text(json.dumps([asdict(s) for s in summaries], indent=2))
    return summaries


def run_iteration(settings: RunSettings, publisher: Publisher, prompt_rows: list[dict], t: int) -> IterationSummary:
    """One pass of the loop with the policy M_t."""
    adapter = publisher.find_adapter(t) if t > 0 else None
    if t > 0 and adapter is None:
        raise RunError(f"iteration {t} needs the adapter of M{t}, which is not published")
    ctx = IterationContext(settings, publisher, prompt_rows, t, policy_adapter=adapter)
    ctx.published["prompts"] = publisher.find(prompts.NAME, 0)
    for stage in ITERATION_STAGES:
        run_stage(stage, ctx)
    ctx.backends.close()
    ctx.clear_work()
    out = ctx.outputs
    refinements = out.get("refinements") or []
    return summarise_iteration(
        t, prompt_rows, out["candidates"], refinements, out["feedback"], out["pairs"], out["adapter"]
    )


def run_stage(stage: Stage, ctx: IterationContext) -> Any:
    """Read the stage back if it is published from the same inputs, else run it (it publishes what it makes)."""
    if not stage.applies(ctx):
        return None
    inputs = stage.key_inputs(ctx)
    key = None if inputs is None else ctx.key(stage.NAME, stage.PARENTS, inputs)
    found = stage.find(ctx)
    output = None
    if found is not None and (key is None or reusable(ctx.publisher, found, key)):
        output = stage.load(ctx, found)
    if output is None:
        output, found = stage.run(ctx, key)
    ctx.outputs[stage.NAME], ctx.published[stage.NAME] = output, found
    return output
