"""How the CLI prints: rich tables and progress bars on a terminal, plain lines for scripts elsewhere."""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

#: Without a terminal, tables are as wide as their rows: a script reads one row a line.
PIPE_WIDTH = 10_000


def console_for_output() -> Console:
    """Rich output on a terminal; in a pipe or a log, plain lines (no colours, no wrapping) for scripts to read."""
    console = Console(highlight=False, markup=False, emoji=False)
    if console.is_terminal:
        return console
    return Console(highlight=False, markup=False, emoji=False, width=PIPE_WIDTH)


def table(
    console: Console, columns: Sequence[str], rows: Iterable[Sequence[str]], numeric: Set[str] = frozenset()
) -> Table:
    """A table with a header; `numeric` columns are right-aligned. Without a terminal: no lines, one row a line."""
    table = Table(box=box.SIMPLE_HEAD if console.is_terminal else None, pad_edge=False, show_edge=False)
    for column in columns:
        table.add_column(column, justify="right" if column in numeric else "left", no_wrap=column == "ID")
    for row in rows:
        table.add_row(*row)
    return table


class Steps:
    """A rich progress bar on a terminal; without one (a pipe, a log), plain lines instead.

    `note` lines are printed either way (above the bar on a terminal); `trace` lines only
    without a terminal, where they say what the bar would have shown.
    """

    def __init__(self, console: Console, description: str, total: int | None) -> None:
        self.console = console
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not console.is_terminal,
        )
        self._bar = self._progress.add_task(description, total=total)

    def __enter__(self) -> Steps:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def advance(self, count: int) -> None:
        self._progress.advance(self._bar, count)

    def show(self, description: str, completed: int, total: int | None) -> None:
        """Set the bar; a total of None is a bar without an end (progress unknown)."""
        self._progress.update(self._bar, description=description, completed=completed, total=total)

    def note(self, line: str) -> None:
        self.console.print(line)

    def trace(self, line: str) -> None:
        if self._progress.disable:
            self.console.print(line)
