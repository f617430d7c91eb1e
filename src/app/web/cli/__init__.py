"""Operator commands on the `litestar` CLI.

`litestar users create|promote|deactivate` (users.py), `litestar tasks
list|stats|retry|purge|watch|logs` (tasks.py, watch.py, task_logs.py), `litestar audit list`
(audit.py) and `litestar schedules list|pause|resume|run-due` (schedules.py). Output is for people on a terminal (rich
tables, progress bars) and for scripts elsewhere: without a terminal, tables are plain
columns one row a line and progress is a line per step (output.py).
"""

from __future__ import annotations

import click
from litestar.plugins import CLIPluginProtocol

from app.web.cli.audit import audit
from app.web.cli.schedules import schedules
from app.web.cli.task_logs import logs
from app.web.cli.tasks import tasks
from app.web.cli.users import users
from app.web.cli.watch import watch

tasks.add_command(watch)
tasks.add_command(logs)


class OperatorCLIPlugin(CLIPluginProtocol):
    def on_cli_init(self, cli: click.Group) -> None:
        cli.add_command(users)
        cli.add_command(tasks)
        cli.add_command(audit)
        cli.add_command(schedules)


__all__ = ["OperatorCLIPlugin", "audit", "schedules", "tasks", "users"]
