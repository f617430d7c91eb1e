"""The fair claim against a greedy user's queue: does one user's deep queue slow everyone's claims?

A Postgres database of its own (migrated with `litestar database upgrade`) holds 21 users with
2,000 finished tasks each; 20 of them have one queued task each, and the greedy one runs
3 tasks and has QUEUED_SHALLOW, then QUEUED_DEEP queued tasks (statistics taken after each
burst). At each depth, two statements pick the fairest startable task and mark it running, each run CLAIMS
times in a transaction that is rolled back (the queue stays as it is):

- baseline: the claim as it was until 2026-12-05: every startable queued task, joined with its
  owner's running count and sorted by (running, age);
- project: `app.domain.tasks.fairness.claim_statement`, which walks the owners of queued tasks
  and each owner's oldest tasks.

Figures: the median time of one claim from the client (a round trip on a local socket
included), and the ratio of the deep queue's to the shallow queue's: what a greedy user's
queue costs every claim of every user.

With short queues the project's claim costs more than the baseline's: its prepared
statement is planned again at every execution (`pg_prepared_statements`: 12 custom plans of
12; Postgres judges its generic plan dearer), about 0.65 ms of its 1.3 ms. With
`plan_cache_mode = force_generic_plan` on the connection the same claim took 0.61 ms (baseline
0.38 ms) and 1.13 ms with the deep queue (baseline 9.39 ms). Sent by the runner before each
claim (`SET LOCAL`), it halved the pipeline instead (200 -> 100 tasks/s, Postgres 2 -> 5 ms and
the worker 3 -> 6 ms per task, two runs): the generic plan is made at a connection's first claim,
here on an empty table, and kept. Not kept; which plan that is, and whether a plan made with
some rows is safe to keep, is the next step.

Run alone: `uv run python -m bench.claim_cost`.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import create_async_engine

from bench import REDIS_URL, Section, run_alone, table
from bench.service_stack import database, environment, run_cli, seed

OWNERS = 20
HISTORY = 2_000
QUEUED_SHALLOW = 10
QUEUED_DEEP = 10_000
CLAIMS = 200
PER_USER = 4
RUNNING_GREEDY = 3

_ADD = """
INSERT INTO task (id, user_id, kind, title, status, params, attempts, progress_current, progress_total,
                  cancel_requested, created_at, enqueued_at, first_attempt)
SELECT gen_random_uuid(), $1, 'demo', $3, $3, '{}', 0, 0, 0, false,
       now() - interval '1 hour' + g * interval '1 ms', now() - interval '1 hour', 1
FROM generate_series(1, $2) AS g
"""


def _statements() -> dict[str, Any]:
    from app.domain.tasks.fairness import claim_statement
    from app.domain.tasks.models import QUEUED, RUNNING, Task

    tasks = cast(Table, Task.__table__)
    candidate, running = tasks.alias(), tasks.alias()
    by_owner = (
        select(running.c.user_id, func.count().label("n"))
        .where(running.c.status == RUNNING)
        .group_by(running.c.user_id)
        .subquery()
    )
    mine = func.coalesce(by_owner.c.n, 0)
    every = (
        select(candidate.c.id)
        .select_from(candidate.outerjoin(by_owner, by_owner.c.user_id == candidate.c.user_id))
        .where(
            candidate.c.status == QUEUED,
            candidate.c.enqueued_at <= bindparam("due_by", type_=tasks.c.enqueued_at.type),
            mine < PER_USER,
        )
        .order_by(mine, candidate.c.created_at, candidate.c.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=candidate)
        .scalar_subquery()
    )
    baseline = (
        update(tasks)
        .where(tasks.c.id == every, tasks.c.status == QUEUED)
        .values(status=RUNNING, started_at=bindparam("now", type_=tasks.c.started_at.type))
        .returning(tasks.c.id)
    )
    return {"baseline": baseline, "project": claim_statement(PER_USER, (), postgres=True)}


async def _median_claim_ms(url: str, statement: Any) -> float:
    from app.domain.clock import utcnow
    from app.domain.tasks.fairness import due_by

    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
    samples = []
    try:
        for _ in range(CLAIMS):
            async with engine.connect() as connection:
                now = utcnow()
                parameters = {"now": now, "due_by": due_by(now), "worker_id": "bench", "passed_over": []}
                began = time.perf_counter()
                row = (await connection.execute(statement, parameters)).first()
                samples.append((time.perf_counter() - began) * 1000)
                if row is None:
                    raise RuntimeError("the claim found nothing to start")
                await connection.rollback()
    finally:
        await engine.dispose()
    return statistics.median(samples[len(samples) // 10 :])  # the first claims prepare the statement


async def _add(url: str, owner: uuid.UUID, count: int, status: str) -> None:
    """`count` tasks of `owner` in `status` (queued ones: due an hour ago), then fresh statistics."""
    import asyncpg

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(_ADD, owner, count, status)
        await connection.execute("ANALYZE task")
    finally:
        await connection.close()


def run() -> Section:
    name = f"bench_claim_{uuid.uuid4().hex[:8]}"
    medians: dict[tuple[str, int], float] = {}
    with database(name) as url, tempfile.TemporaryDirectory() as var_dir:
        run_cli(environment(name, url, REDIS_URL, var_dir, {}), "database", "upgrade", "--no-prompt")
        greedy, *others = seed(url, [f"claim{index}" for index in range(OWNERS + 1)], HISTORY)
        for owner in others:
            asyncio.run(_add(url, owner, 1, "queued"))
        asyncio.run(_add(url, greedy, RUNNING_GREEDY, "running"))
        statements = _statements()
        queued = 0
        for depth in (QUEUED_SHALLOW, QUEUED_DEEP):
            asyncio.run(_add(url, greedy, depth - queued, "queued"))
            queued = depth
            for label, statement in statements.items():
                medians[label, depth] = asyncio.run(_median_claim_ms(url, statement))
    growth = {label: medians[label, QUEUED_DEEP] / medians[label, QUEUED_SHALLOW] for label in statements}
    rows = [
        [
            "baseline: every startable queued task, sorted"
            if label == "baseline"
            else "project: the owners, then each owner's oldest",
            f"{medians[label, QUEUED_SHALLOW]:.2f}",
            f"{medians[label, QUEUED_DEEP]:.2f}",
            f"{growth[label]:.1f}x",
        ]
        for label in statements
    ]
    body = "\n".join(
        [
            __doc__.split("\n", 2)[2].rsplit("\nRun alone", 1)[0].strip(),
            "",
            table(
                [
                    "Claim",
                    f"median ms, greedy user {QUEUED_SHALLOW:,} queued",
                    f"median ms, greedy user {QUEUED_DEEP:,} queued",
                    "deep / shallow",
                ],
                rows,
                "lrrr",
            ),
            "",
            table(
                ["Ratio", "Value"],
                [
                    [
                        f"baseline / project with {QUEUED_DEEP:,} queued",
                        f"{medians['baseline', QUEUED_DEEP] / medians['project', QUEUED_DEEP]:.1f}x",
                    ],
                    ["what the deep queue costs a claim, project", f"{growth['project']:.1f}x"],
                ],
                "lr",
            ),
        ]
    )
    return Section(
        title="The fair claim against one greedy user's queue",
        body=body,
        figures={
            "baseline_shallow_ms": medians["baseline", QUEUED_SHALLOW],
            "baseline_deep_ms": medians["baseline", QUEUED_DEEP],
            "project_shallow_ms": medians["project", QUEUED_SHALLOW],
            "project_deep_ms": medians["project", QUEUED_DEEP],
            "project_growth": growth["project"],
            "baseline_growth": growth["baseline"],
        },
    )


if __name__ == "__main__":
    run_alone(run)
