"""`demo`: the seed's long-running job. One progress update per step; `fail_at_step` makes that step raise.

It logs a line per step (per LOGGED_STEPS-th of the steps, and the last, when there are more
than LOGGED_STEPS), and an error line for the step that fails.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec

from app.domain.tasks.kinds.base import Kind, TaskContext

#: At most about this many step lines per run: a line every `ceil(steps / LOGGED_STEPS)` steps.
LOGGED_STEPS = 100


class DemoParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    steps: Annotated[int, msgspec.Meta(ge=1, le=10_000, title="Steps", description="How many steps")] = 100
    step_ms: Annotated[
        int, msgspec.Meta(ge=0, le=60_000, title="Step duration (ms)", description="Milliseconds per step")
    ] = 100
    fail_at_step: (
        Annotated[int, msgspec.Meta(ge=1, title="Fail at step", description="This step raises (to try failures)")]
        | None
    ) = None


class StepFailed(RuntimeError):
    pass


async def run(params: DemoParams, context: TaskContext) -> dict[str, Any]:
    every = -(-params.steps // LOGGED_STEPS)
    for step in range(1, params.steps + 1):
        if params.fail_at_step == step:
            await context.log(f"Step {step} of {params.steps} failed (fail_at_step={step})", "error")
            raise StepFailed(f"Step {step} failed (fail_at_step={step})")
        if params.step_ms:
            await asyncio.sleep(params.step_ms / 1000)
        if step % every == 0 or step == params.steps:
            await context.log(f"Step {step} of {params.steps} done")
        await context.progress(step, params.steps, f"Processing step {step} of {params.steps}")
    return {"steps": params.steps}


KIND = Kind(
    name="demo",
    title="Demo job",
    description="Counts through a number of steps, reporting progress at each one.",
    params=DemoParams,
    run=run,
    time_limit_seconds=2 * 3600,
)
