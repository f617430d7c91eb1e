"""`litestar audit list`: the audit log, newest first, with the API's filters (GET /api/v1/admin/audit)."""

from __future__ import annotations

import click
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.audit.listing import audit_query, list_audit
from app.domain.audit.schemas import AuditEntryOut
from app.domain.pagination import MAX_LIMIT
from app.web.cli.output import console_for_output, table
from app.web.cli.running import run_in_engine


@click.group(name="audit", help="Read the audit log of admin and security actions.")
def audit() -> None:
    """Read the audit log of admin and security actions."""


def _detail(entry: AuditEntryOut) -> str:
    return " ".join(f"{key}={value}" for key, value in entry.detail.items()) or "-"


@audit.command(
    name="list",
    help=(
        "List audit log rows, newest first: when, action, actor, target, address, request id and detail. Filters "
        "work as the API's (GET /api/v1/admin/audit); each option narrows the list."
    ),
)
@click.option(
    "--action",
    multiple=True,
    metavar="ACTION",
    help="Only this action (e.g. auth.login_failed), or a group ending in a dot (auth.); repeatable.",
)
@click.option(
    "--actor",
    metavar="NAME_OR_ID",
    default=None,
    help="Only what this actor did: a username, cli:<operator> or a user id.",
)
@click.option(
    "--target-type",
    metavar="TYPE",
    default=None,
    help="Only rows about this kind of target (user, token, session, task).",
)
@click.option("--target-id", metavar="ID", default=None, help="Only rows about the target with this id.")
@click.option("--request-id", metavar="ID", default=None, help="Only rows recorded by the request with this id.")
@click.option(
    "--search", metavar="TEXT", default=None, help="Only rows whose actor or target name or id contains TEXT."
)
@click.option(
    "--since",
    metavar="WHEN",
    default=None,
    help="Only rows recorded at or after WHEN (ISO 8601 date or date-time; without an offset: UTC).",
)
@click.option(
    "--until",
    metavar="WHEN",
    default=None,
    help="Only rows recorded before WHEN (ISO 8601 date or date-time; without an offset: UTC).",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=10 * MAX_LIMIT),
    default=50,
    show_default=True,
    help="Show at most this many rows.",
)
def list_(
    action: tuple[str, ...],
    actor: str | None,
    target_type: str | None,
    target_id: str | None,
    request_id: str | None,
    search: str | None,
    since: str | None,
    until: str | None,
    limit: int,
) -> None:
    console = console_for_output()

    async def work(sessions: async_sessionmaker[AsyncSession], _settings: Settings) -> list[AuditEntryOut]:
        query = audit_query(
            actions=action,
            actor=actor,
            target_type=target_type,
            target_id=target_id,
            request_id=request_id,
            text=search,
            since=since,
            until=until,
        )
        engine: AsyncEngine = sessions.kw["bind"]
        return (await list_audit(engine, query, limit=limit)).items

    found = run_in_engine(work)
    if not found:
        console.print("No audit log rows.")
        return
    rows = [
        [
            entry.at.strftime("%Y-%m-%d %H:%M:%S"),
            entry.action,
            entry.actor_name or "anonymous",
            " ".join(part for part in (entry.target_type, entry.target_name, entry.target_id) if part) or "-",
            entry.ip or "-",
            entry.request_id or "-",
            _detail(entry),
        ]
        for entry in found
    ]
    columns = ["WHEN (UTC)", "ACTION", "ACTOR", "TARGET", "ADDRESS", "REQUEST", "DETAIL"]
    console.print(table(console, columns, rows))
