"""Later and recurring (issue 21.5): `run_at` on a task, and users' schedules that start tasks on time.

Real servers in both modes. Time is moved the way it passes, not waited for: a schedule's
`next_run_at` is set into the past in the database (as if the minute had come), or a firing
pass is handed the moment it runs at (`ScheduleFirer.fire_due(now=...)`), the same pass the
scheduler's actor and `litestar schedules run-due` run. `run_at` tests use times 2 s ahead.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import get_settings
from app.domain.clock import utcnow
from app.domain.schedules.rules import latest_run, next_run, too_frequent
from app.domain.tasks.fairness import due_by
from tests.accounts import PASSWORD, new_identity, operator_cli, signed_in_headers
from tests.processes import eventually, task_of
from tests.servers import LiveServer, stop_all
from tests.test_pages import csrf, is_fragment, post, sign_up

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"steps": 1, "step_ms": 0}


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        client.headers.update(signed_in_headers(client))
        yield client


def api_of(live_server: LiveServer, identity: dict[str, str]) -> httpx.Client:
    """An API client signed in as the user a browser signed up (the API takes bearer tokens, not the cookie)."""
    client = httpx.Client(base_url=live_server.url, timeout=30)
    login = {"username": identity["username"], "password": PASSWORD}
    client.headers["Authorization"] = "Bearer " + client.post("/api/v1/auth/login", json=login).json()["access_token"]
    return client


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def make_schedule(api: httpx.Client, **fields: Any) -> dict[str, Any]:
    body = {"name": "Every minute", "kind": "demo", "params": QUICK, "cron": "* * * * *", **fields}
    response = api.post("/api/v1/schedules", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def runs_of(api: httpx.Client, schedule_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/api/v1/schedules/{schedule_id}/runs", params={"limit": 100})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def tasks_of(api: httpx.Client) -> list[dict[str, Any]]:
    response = api.get("/api/v1/tasks", params={"limit": 100})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


class Passes:
    """Firing passes as the scheduler runs them, each on a database engine (and connections) of its own."""

    def __init__(self, count: int) -> None:
        from app.domain.database import create_engine, session_factory

        self.engines = [create_engine(get_settings()) for _ in range(count)]
        self.sessions = [session_factory(engine) for engine in self.engines]

    async def fire_together(self, now: datetime) -> list[Any]:
        from app.domain.schedules.firing import ScheduleFirer
        from app.web.cli.running import NoPublisher

        firers = [ScheduleFirer(sessions, get_settings(), NoPublisher()) for sessions in self.sessions]
        done = await asyncio.gather(*(firer.fire_due(now) for firer in firers))
        return [run for runs in done for run in runs]

    async def close(self) -> None:
        for engine in self.engines:
            await engine.dispose()


@pytest.fixture
async def passes() -> AsyncIterator[Passes]:
    made = Passes(2)
    try:
        yield made
    finally:
        await made.close()


async def set_next_run(schedule_id: str, when: datetime) -> None:
    """The clock moved: the schedule's next run is `when` (in the past, for a run that is due)."""
    from sqlalchemy import update

    from app.domain.database import create_engine
    from app.domain.schedules.models import Schedule

    engine = create_engine(get_settings())
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(Schedule).where(Schedule.id == uuid.UUID(schedule_id)).values(next_run_at=when)
            )
    finally:
        await engine.dispose()


# --- run_at ------------------------------------------------------------------------------------


def test_a_task_asked_to_start_later_is_stored_at_once_and_starts_after_its_time(api: httpx.Client) -> None:
    run_at = (utcnow() + timedelta(seconds=2)).replace(microsecond=0)
    response = api.post("/api/v1/tasks", json={"kind": "demo", "params": QUICK, "run_at": iso(run_at)})
    assert response.status_code == 202, response.text
    task = response.json()
    assert (task["status"], parse(task["run_at"])) == ("queued", run_at)
    assert [t["id"] for t in tasks_of(api)] == [task["id"]]  # listed at once
    early = task_of(api, task["id"])
    assert (early["status"], early["started_at"]) == ("queued", None)

    def ended() -> dict[str, Any] | None:
        found = task_of(api, task["id"])
        return found if found["status"] == "succeeded" else None

    done = eventually(ended, timeout=90, what="the task to start at its time and end")
    assert parse(done["started_at"]) >= run_at  # never before its time (on the claiming worker's clock)
    assert parse(done["run_at"]) == run_at


def test_a_task_asked_to_start_later_can_be_cancelled_before_it_starts(api: httpx.Client) -> None:
    run_at = utcnow() + timedelta(seconds=2)
    task = api.post("/api/v1/tasks", json={"kind": "demo", "params": QUICK, "run_at": iso(run_at)}).json()
    cancelled = api.post(f"/api/v1/tasks/{task['id']}/cancel")
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    # Past its time, and past the turn sent for it: it stays cancelled and never started.
    eventually(lambda: utcnow() > run_at + timedelta(seconds=2), timeout=10, what="its time to pass")
    after = task_of(api, task["id"])
    assert (after["status"], after["started_at"]) == ("cancelled", None)


def test_a_run_at_now_or_past_starts_at_once(api: httpx.Client) -> None:
    past = iso(utcnow() - timedelta(hours=1))
    task = api.post("/api/v1/tasks", json={"kind": "demo", "params": QUICK, "run_at": past}).json()
    assert task["run_at"] is None
    done = eventually(
        lambda: (t := task_of(api, task["id"]))["status"] == "succeeded" and t, timeout=60, what="the task to end"
    )
    assert done["started_at"] is not None


@pytest.mark.parametrize(
    "run_at",
    [
        "2030-01-01T10:00:00",  # no offset
        "2030-01-01 10:00",
        "tomorrow",
        "",
        "2030-13-01T10:00:00Z",
        "2030-01-01T10:00:00Z\u0000",
        "\u0000",
        "99999-01-01T00:00:00Z",
        "0000-01-01T00:00:00Z",
        "9999-12-31T23:59:59-23:59",
        "2030-01-01T10:00:00+99:00",
        1e308,  # (a number is read as Unix time, as the API's decoder does for every date-time: this one is no time)
        True,
        ["2030-01-01T10:00:00Z"],
        {"at": "2030-01-01T10:00:00Z"},
    ],
)
def test_hostile_run_at_values_are_a_4xx_and_write_nothing(api: httpx.Client, run_at: Any) -> None:
    response = api.post("/api/v1/tasks", json={"kind": "demo", "params": QUICK, "run_at": run_at})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert api.get("/api/v1/tasks").json()["total"] == 0


def test_a_run_at_beyond_366_days_is_refused(api: httpx.Client) -> None:
    far = api.post(
        "/api/v1/tasks", json={"kind": "demo", "params": QUICK, "run_at": iso(utcnow() + timedelta(days=367))}
    )
    assert far.status_code == 422, far.text
    assert [e["field"] for e in far.json()["errors"]] == ["run_at"]
    near = api.post(
        "/api/v1/tasks", json={"kind": "demo", "params": QUICK, "run_at": iso(utcnow() + timedelta(days=365))}
    )
    assert near.status_code == 202, near.text
    assert api.get("/api/v1/tasks").json()["total"] == 1


def test_idempotency_keys_cover_run_at(api: httpx.Client) -> None:
    body = {"kind": "demo", "params": QUICK, "run_at": iso(utcnow() + timedelta(hours=1))}
    first = api.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "later-1"})
    again = api.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "later-1"})
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    other = {**body, "run_at": iso(utcnow() + timedelta(hours=2))}
    assert api.post("/api/v1/tasks", json=other, headers={"Idempotency-Key": "later-1"}).status_code == 409


def test_the_dashboard_form_starts_a_task_later_without_javascript(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as browser:
        api = api_of(live_server, sign_up(browser))
        dashboard = browser.get("/dashboard")
        assert 'name="run_at"' in dashboard.text
        assert 'type="datetime-local"' in dashboard.text
        # 10:00 in Berlin, tomorrow: 08:00 or 09:00 UTC, as its DST says.
        day = (utcnow() + timedelta(days=1)).date()
        fields = {"kind": "demo", "steps": "1", "step_ms": "0", "title": "Later", "timezone": "Europe/Berlin"}
        started = post(browser, "/tasks", {**fields, "run_at": f"{day}T10:00"})
        assert started.status_code == 303, started.text
        [task] = api.get("/api/v1/tasks").json()["items"]
        from zoneinfo import ZoneInfo

        expected = datetime.fromisoformat(f"{day}T10:00").replace(tzinfo=ZoneInfo("Europe/Berlin"))
        assert (task["status"], parse(task["run_at"])) == ("queued", expected.astimezone(UTC))
        page = browser.get(f"/tasks/{task['id']}")
        assert "Starts at" in page.text
        assert expected.astimezone(UTC).strftime("%Y-%m-%d %H:%M") in page.text
        assert "Starts at" in browser.get("/dashboard").text
        wrong = post(browser, "/tasks", {**fields, "run_at": "not a time"})
        assert wrong.status_code == 422
        assert "Must be a date and time" in wrong.text
        zone = post(browser, "/tasks", {**fields, "run_at": f"{day}T10:00", "timezone": "Mars/Olympus"})
        assert zone.status_code == 422
        assert "IANA" in zone.text
        assert api.get("/api/v1/tasks").json()["total"] == 1
        api.close()


# --- schedules: the API ------------------------------------------------------------------------


def test_a_schedule_is_made_read_listed_changed_and_deleted(api: httpx.Client) -> None:
    made = make_schedule(api, name="Nightly", cron="30 2 * * *", timezone="Europe/Berlin", title="Night run")
    assert made["cron_description"] == "At 02:30 every day"
    assert (made["paused"], made["last_run_at"], made["last_status"]) == (False, None, None)
    expected = next_run("30 2 * * *", "Europe/Berlin", utcnow())
    assert parse(made["next_run_at"]) == expected
    assert api.get(f"/api/v1/schedules/{made['id']}").json() == made
    listed = api.get("/api/v1/schedules").json()
    assert (listed["total"], [s["id"] for s in listed["items"]]) == (1, [made["id"]])

    changed = api.patch(f"/api/v1/schedules/{made['id']}", json={"cron": "0 9 * * MON-FRI", "timezone": "UTC"})
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert (body["cron"], body["timezone"], body["title"], body["name"]) == (
        "0 9 * * MON-FRI",
        "UTC",
        "Night run",
        "Nightly",
    )
    assert parse(body["next_run_at"]) == next_run("0 9 * * MON-FRI", "UTC", utcnow())
    retitled = api.patch(f"/api/v1/schedules/{made['id']}", json={"title": None, "params": {"steps": 3}})
    assert (retitled.json()["title"], retitled.json()["params"]["steps"]) == (None, 3)
    assert retitled.json()["next_run_at"] == body["next_run_at"]  # the times did not change

    assert api.delete(f"/api/v1/schedules/{made['id']}").status_code == 204
    assert api.get(f"/api/v1/schedules/{made['id']}").status_code == 404
    assert api.get("/api/v1/schedules").json()["total"] == 0


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cron": "* * * * * *"}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "every day"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),
        ({"cron": "* * * * \u0000"}, "cron"),
        ({"cron": "*" * 200}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"timezone": "Europe/Berlin\u0000"}, "timezone"),
        ({"timezone": ""}, "timezone"),
        ({"kind": "no-such-kind"}, "kind"),
        ({"params": {"steps": 0}}, "params.steps"),
        ({"params": {"nope": 1}}, "params"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "bell\u0007"}, "name"),
        ({"title": "t" * 201}, "title"),
    ],
)
def test_a_schedule_that_breaks_a_rule_is_a_422_naming_the_field(
    api: httpx.Client, change: dict[str, Any], field: str
) -> None:
    body = {"name": "Bad", "kind": "demo", "params": QUICK, "cron": "* * * * *", **change}
    response = api.post("/api/v1/schedules", json=body)
    # A NUL is refused at the door, before any rule (400), as in every field; the rest are the rules' 422.
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"].startswith(field) for e in response.json()["errors"]), response.text
    assert api.get("/api/v1/schedules").json()["total"] == 0
    good = make_schedule(api)
    changed = api.patch(f"/api/v1/schedules/{good['id']}", json=change)
    assert changed.status_code in (400, 422), changed.text
    assert api.get(f"/api/v1/schedules/{good['id']}").json() == good


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "kind": "demo", "cron": "* * * * *", "extra": 1},
        {"name": "x", "kind": "demo"},
        {"name": 1, "kind": "demo", "cron": "* * * * *"},
        {"name": "x", "kind": "demo", "cron": "* * * * *", "paused": "yes"},
        [],
        "schedule",
    ],
)
def test_a_malformed_schedule_body_is_a_400_and_writes_nothing(api: httpx.Client, body: Any) -> None:
    response = api.post("/api/v1/schedules", json=body)
    assert response.status_code == 400, response.text
    assert api.get("/api/v1/schedules").json()["total"] == 0


def test_too_frequent_expressions_are_refused_when_a_minimum_is_set() -> None:
    now = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    assert too_frequent("0,1 * * * *", "UTC", timedelta(minutes=5), now)
    assert not too_frequent("*/5 * * * *", "UTC", timedelta(minutes=5), now)
    assert not too_frequent("* * * * *", "UTC", timedelta(minutes=1), now)  # the default allows each minute


def test_dst_is_followed_in_the_schedule_s_time_zone() -> None:
    # Berlin skips 02:00-03:00 on 2026-03-29: a 02:30 run comes right after the change (cron's rule), once.
    spring = next_run("30 2 * * *", "Europe/Berlin", datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert spring == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    after = next_run("30 2 * * *", "Europe/Berlin", spring)
    assert after == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)
    # New York, 09:00 local: 14:00 UTC in winter, 13:00 UTC in summer.
    assert next_run("0 9 * * *", "America/New_York", datetime(2026, 1, 10, tzinfo=UTC)) == datetime(
        2026, 1, 10, 14, 0, tzinfo=UTC
    )
    assert next_run("0 9 * * *", "America/New_York", datetime(2026, 7, 10, tzinfo=UTC)) == datetime(
        2026, 7, 10, 13, 0, tzinfo=UTC
    )


def test_others_schedules_are_404_and_token_scopes_hold(api: httpx.Client, live_server: LiveServer) -> None:
    mine = make_schedule(api)
    sid = mine["id"]
    with httpx.Client(base_url=live_server.url, timeout=30) as other:
        other.headers.update(signed_in_headers(other))
        assert other.get(f"/api/v1/schedules/{sid}").status_code == 404
        assert other.patch(f"/api/v1/schedules/{sid}", json={"name": "mine now"}).status_code == 404
        assert other.post(f"/api/v1/schedules/{sid}/pause").status_code == 404
        assert other.post(f"/api/v1/schedules/{sid}/resume").status_code == 404
        assert other.get(f"/api/v1/schedules/{sid}/runs").status_code == 404
        assert other.delete(f"/api/v1/schedules/{sid}").status_code == 404
        assert other.get("/api/v1/schedules").json()["total"] == 0
    assert api.get(f"/api/v1/schedules/{sid}").json() == mine
    reader = api.post("/api/v1/users/me/tokens", json={"name": "reader", "scopes": ["read"]}).json()["token"]
    writer = api.post("/api/v1/users/me/tokens", json={"name": "writer", "scopes": ["write"]}).json()["token"]
    with httpx.Client(base_url=live_server.url, timeout=30) as script:
        script.headers["Authorization"] = f"Bearer {reader}"
        assert script.get("/api/v1/schedules").status_code == 200
        assert script.get(f"/api/v1/schedules/{sid}/runs").status_code == 200
        assert script.post(f"/api/v1/schedules/{sid}/pause").status_code == 403
        body = {"name": "x", "kind": "demo", "cron": "* * * * *"}
        assert script.post("/api/v1/schedules", json=body).status_code == 403
        script.headers["Authorization"] = f"Bearer {writer}"
        assert script.post("/api/v1/schedules", json=body).status_code == 201
        assert script.post(f"/api/v1/schedules/{sid}/pause").status_code == 200


def test_fifty_parallel_creations_stop_at_the_cap(api: httpx.Client) -> None:
    cap = get_settings().max_schedules_per_user
    assert cap < 50

    def create(i: int) -> int:
        body = {"name": f"s{i}", "kind": "demo", "params": QUICK, "cron": "0 3 * * *"}
        return api.post("/api/v1/schedules", json=body).status_code

    with ThreadPoolExecutor(50) as pool:
        codes = list(pool.map(create, range(50)))
    assert sorted(set(codes)) == [201, 429]
    assert codes.count(201) == cap
    assert api.get("/api/v1/schedules").json()["total"] == cap


# --- schedules: firing -------------------------------------------------------------------------


async def test_pause_stops_firing_and_resume_starts_from_now(api: httpx.Client, passes: Passes) -> None:
    made = make_schedule(api)
    paused = api.post(f"/api/v1/schedules/{made['id']}/pause")
    assert paused.status_code == 200, paused.text
    assert (paused.json()["paused"], paused.json()["next_run_at"]) == (True, None)
    assert api.post(f"/api/v1/schedules/{made['id']}/pause").json() == paused.json()  # again: nothing changes
    assert await passes.fire_together(utcnow() + timedelta(hours=2)) == []
    assert runs_of(api, made["id"]) == []
    assert tasks_of(api) == []
    resumed = api.post(f"/api/v1/schedules/{made['id']}/resume").json()
    assert resumed["paused"] is False
    # From now: the first minute after the resume, not a catch-up of the times missed while paused.
    assert utcnow() - timedelta(seconds=5) < parse(resumed["next_run_at"]) <= utcnow() + timedelta(seconds=61)


async def test_two_concurrent_passes_fire_each_due_time_exactly_once(api: httpx.Client, passes: Passes) -> None:
    made = make_schedule(api)
    others = [make_schedule(api, name=f"other {i}", cron="*/2 * * * *") for i in range(2)]
    start = parse(made["next_run_at"]) + timedelta(hours=1)
    rounds = 6
    for i in range(rounds):
        await passes.fire_together(start + timedelta(minutes=i))
    runs = runs_of(api, made["id"])
    times = [parse(run["scheduled_for"]) for run in runs]
    assert len(times) == len(set(times))  # never twice for one time
    for i in range(rounds):
        assert times.count(start + timedelta(minutes=i)) == 1
    started = [run["task_id"] for run in runs if run["status"] == "started"]
    assert len(started) == len(runs)
    for other in others:
        other_times = [parse(run["scheduled_for"]) for run in runs_of(api, other["id"])]
        assert len(other_times) == len(set(other_times))
        assert all(t.minute % 2 == 0 for t in other_times)
        started += [run["task_id"] for run in runs_of(api, other["id"])]
    # One task per run, each made by the submission's path, nothing else.
    tasks = tasks_of(api)
    assert sorted(t["id"] for t in tasks) == sorted(started)
    assert all(t["description"].startswith("Started by schedule") for t in tasks)
    now = api.get(f"/api/v1/schedules/{made['id']}").json()
    assert parse(now["last_run_at"]) == start + timedelta(minutes=rounds - 1)
    assert parse(now["next_run_at"]) == start + timedelta(minutes=rounds)
    assert (now["last_status"], now["last_task_id"] in started) == ("started", True)


async def test_missed_times_are_coalesced_into_one_run_for_the_latest(api: httpx.Client, passes: Passes) -> None:
    made = make_schedule(api, cron="*/5 * * * *")
    await set_next_run(made["id"], utcnow() - timedelta(hours=3))  # down for three hours: 36 times missed
    now = utcnow()
    fired = await passes.fire_together(now)
    assert len([f for f in fired if f.schedule_id == uuid.UUID(made["id"])]) <= 1
    [run] = runs_of(api, made["id"])  # one run, not 36
    # For the latest missed time (embedded, the live server's own pass may have been the one to fire it). A
    # pass fires what is due within CLOCK_SKEW of its clock (due_by): a pass at 12:49:59.5 fires 12:50.
    fired_at = due_by(parse(run["created_at"]))
    assert parse(run["scheduled_for"]) == latest_run("*/5 * * * *", "UTC", fired_at)
    assert now - timedelta(minutes=5) < parse(run["scheduled_for"]) <= due_by(now)
    after = api.get(f"/api/v1/schedules/{made['id']}").json()
    assert parse(after["next_run_at"]) == next_run("*/5 * * * *", "UTC", fired_at)
    assert len(tasks_of(api)) == 1


async def test_a_run_over_the_task_cap_is_skipped_with_its_reason_shown(api: httpx.Client, passes: Passes) -> None:
    cap = get_settings().max_active_tasks
    later = iso(utcnow() + timedelta(days=1))
    for _ in range(cap):  # unfinished tasks, waiting for tomorrow: the user is at the cap
        assert api.post("/api/v1/tasks", json={"kind": "demo", "params": QUICK, "run_at": later}).status_code == 202
    made = make_schedule(api)
    moment = parse(made["next_run_at"])
    await passes.fire_together(moment)
    [run] = runs_of(api, made["id"])
    assert (run["status"], run["task_id"]) == ("skipped", None)
    assert f"the limit is {cap}" in run["reason"]
    after = api.get(f"/api/v1/schedules/{made['id']}").json()
    assert (after["last_status"], after["last_task_id"]) == ("skipped", None)
    assert f"the limit is {cap}" in after["last_error"]
    assert parse(after["next_run_at"]) == moment + timedelta(minutes=1)  # it moved on
    assert api.get("/api/v1/tasks").json()["total"] == cap


async def test_two_run_due_processes_at_once_start_one_task_per_due_time(
    api: httpx.Client, live_server: LiveServer
) -> None:
    """Two `litestar schedules run-due` at once (the concurrent passes above do it many times in one process)."""
    # Yearly, and due now because its next run was set into the past: nothing else makes it due meanwhile.
    made = make_schedule(api, cron="0 0 1 1 *")
    litestar = str(Path(sys.executable).parent / "litestar")
    await set_next_run(made["id"], utcnow() - timedelta(minutes=1))
    runs = [
        subprocess.Popen(
            [litestar, "schedules", "run-due"],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [await asyncio.to_thread(run.communicate, None, 120) for run in runs]
    assert all(run.returncode == 0 for run in runs), outputs
    # One of them started it (embedded, the live server's own minute pass may have come first: then none).
    assert sum("started task" in out for out, _ in outputs) <= 1, outputs
    assert len(runs_of(api, made["id"])) == 1
    assert len(tasks_of(api)) == 1


# --- the page, the CLI, the account ------------------------------------------------------------


def test_the_schedules_page_works_with_plain_form_posts(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as browser:
        api = api_of(live_server, sign_up(browser))
        assert '<a href="/schedules">Schedules</a>' in browser.get("/dashboard").text
        empty = browser.get("/schedules")
        assert empty.status_code == 200
        assert "No schedules yet" in empty.text
        fields = {"name": "Morning", "kind": "demo", "params": '{"steps": 2}', "cron": "0 7 * * *", "timezone": "UTC"}
        saved = post(browser, "/schedules", fields, follow_redirects=False)
        assert saved.status_code == 303, saved.text
        listing = browser.get("/schedules")
        assert "Morning" in listing.text
        assert "At 07:00 every day" in listing.text
        [schedule] = api.get("/api/v1/schedules").json()["items"]
        next_at = parse(schedule["next_run_at"]).strftime("%Y-%m-%d %H:%M UTC")
        assert "Next run: <time" in listing.text
        assert next_at in listing.text

        bad = post(browser, "/schedules", {**fields, "cron": "61 * * * *", "params": "{not json"})
        assert bad.status_code == 422
        assert "Must be a JSON object" in bad.text
        worse = post(browser, "/schedules", {**fields, "cron": "61 * * * *"})
        assert worse.status_code == 422
        assert "Is not a valid cron expression" in worse.text
        assert api.get("/api/v1/schedules").json()["total"] == 1

        sid = schedule["id"]
        page = browser.get(f"/schedules/{sid}")
        assert page.status_code == 200
        assert "No runs yet" in page.text
        edited = post(browser, f"/schedules/{sid}", {**fields, "cron": "15 8 * * *"}, follow_redirects=False)
        assert edited.status_code == 303, edited.text
        assert api.get(f"/api/v1/schedules/{sid}").json()["cron"] == "15 8 * * *"
        paused = post(browser, f"/schedules/{sid}/pause", {"back": "detail"}, follow_redirects=False)
        assert (paused.status_code, paused.headers["location"]) == (303, f"/schedules/{sid}")
        assert api.get(f"/api/v1/schedules/{sid}").json()["paused"] is True
        assert "none while paused" in browser.get(f"/schedules/{sid}").text
        resumed = post(browser, f"/schedules/{sid}/resume", {"back": "list"}, follow_redirects=False)
        assert (resumed.status_code, resumed.headers["location"]) == (303, "/schedules")
        # With htmx: the list comes back as a fragment.
        token = csrf(browser, "/schedules")
        swapped = browser.post(
            f"/schedules/{sid}/pause", data={"_csrf_token": token, "back": "list"}, headers={"HX-Request": "true"}
        )
        assert swapped.status_code == 200
        assert is_fragment(swapped)
        assert "paused" in swapped.text
        without_csrf = browser.post(f"/schedules/{sid}/delete", data={})
        assert without_csrf.status_code == 403
        deleted = post(browser, f"/schedules/{sid}/delete", {}, follow_redirects=False)
        assert deleted.status_code == 303
        assert browser.get(f"/schedules/{sid}").status_code == 404
        assert api.get("/api/v1/schedules").json()["total"] == 0
        api.close()


def test_operators_list_pause_and_resume_schedules_from_the_cli(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=30) as client:
        identity = new_identity()
        assert client.post("/api/v1/auth/register", json=identity).status_code == 201
        login = {"username": identity["username"], "password": PASSWORD}
        client.headers["Authorization"] = (
            "Bearer " + client.post("/api/v1/auth/login", json=login).json()["access_token"]
        )
        made = make_schedule(client, name="Reports")
        listed = operator_cli("schedules", "list", "--user", identity["username"])
        assert listed.returncode == 0, listed.stderr
        assert made["id"] in listed.stdout
        assert "Reports" in listed.stdout
        assert "active" in listed.stdout
        paused = operator_cli("schedules", "pause", made["id"])
        assert paused.returncode == 0
        assert "is paused" in paused.stdout
        assert client.get(f"/api/v1/schedules/{made['id']}").json()["paused"] is True
        resumed = operator_cli("schedules", "resume", made["id"])
        assert resumed.returncode == 0
        assert "is active" in resumed.stdout
        assert client.get(f"/api/v1/schedules/{made['id']}").json()["next_run_at"] is not None
        missing = operator_cli("schedules", "pause", str(uuid.uuid4()))
        assert missing.returncode == 1
        assert "No such schedule" in missing.stderr
        nobody = operator_cli("schedules", "list", "--user", "nobody-at-all")
        assert nobody.returncode == 1
        for command in ("list", "pause", "resume", "run-due"):
            helped = operator_cli("schedules", command, "--help")
            assert helped.returncode == 0
            assert "Show this message" in helped.stdout


def test_the_export_holds_schedules_and_deleting_the_account_deletes_them(api: httpx.Client) -> None:
    made = make_schedule(api, name="Mine")
    exported = api.get("/api/v1/users/me/export")
    assert exported.status_code == 200, exported.text
    assert [s["id"] for s in exported.json()["schedules"]] == [made["id"]]
    deleted = api.post("/api/v1/users/me/delete", json={"current_password": PASSWORD})
    assert deleted.status_code == 204, deleted.text

    async def count() -> int:
        from sqlalchemy import func, select

        from app.domain.database import create_engine
        from app.domain.schedules.models import Schedule

        engine = create_engine(get_settings())
        try:
            async with engine.connect() as connection:
                return int((await connection.execute(select(func.count()).select_from(Schedule))).scalar_one())
        finally:
            await engine.dispose()

    assert asyncio.run(count()) == 0


@pytest.mark.services
def test_two_scheduler_processes_start_one_task_per_due_minute(api: httpx.Client, live_server: LiveServer) -> None:
    """Two real `periodiq app.workers` processes beside the live server's workers: a due minute starts one task.

    The schedule is due before they start (its next run set a minute back, as if the minute had
    come): periodiq sends every actor whose cron minute it is as it starts, then at each minute,
    so the first tick comes at once instead of at the next real minute (up to 60 s of waiting).
    Both send `schedules.fire` for the same minute; one claims it, and the firing pass starts one
    task. Should the run cross a minute, the next tick may fire again: one run, and one task,
    per minute.
    """
    from tests.processes import spawn

    made = make_schedule(api)
    due = parse(made["next_run_at"]) - timedelta(minutes=1)
    asyncio.run(set_next_run(made["id"], due))
    schedulers = [
        spawn(f"scheduler-{i}", [str(Path(sys.executable).parent / "periodiq"), "app.workers"], ROOT) for i in range(2)
    ]
    try:

        def fired() -> list[dict[str, Any]] | None:
            for scheduler in schedulers:
                assert scheduler.popen.poll() is None, scheduler.output()[-3000:]
            runs = runs_of(api, made["id"])
            return runs or None

        [run, *_] = eventually(fired, timeout=60, what="the due schedule to fire", interval=0.2)
        assert (parse(run["scheduled_for"]) >= due, run["status"]) == (True, "started"), run
        task = eventually(
            lambda: (t := task_of(api, run["task_id"]))["status"] == "succeeded" and t,
            timeout=60,
            what="its task to run",
        )
        print(f"its task started {(parse(task['started_at']) - parse(task['created_at'])).total_seconds():.3f} s in")
        time.sleep(1)  # the other scheduler's send, had it been sent, would have started a second task by now
        runs = runs_of(api, made["id"])
        minutes = [r["scheduled_for"] for r in runs]
        assert len(set(minutes)) == len(minutes), runs  # one run per minute
        assert sorted(t["id"] for t in tasks_of(api)) == sorted(r["task_id"] for r in runs)  # one task per run
    finally:
        stop_all(schedulers)
