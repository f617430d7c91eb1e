"""Reproducible benchmarks. `make bench` (`python -m bench`) runs them all and writes docs/benchmarks.md.

A benchmark is a module in this package with a `run() -> Section` function, listed in
`bench.__main__.BENCHMARKS`. It measures a baseline and the project's choice in the same
run, on the same machine, and reports their ratio: absolute figures move with the
machine and its load, ratios much less. No benchmark asserts a threshold. Run alone
(`python -m bench.NAME`), a module prints its section: see `run_alone`.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

#: The Redis database the benchmarks may flush; the tests use 15 and the service 0.
REDIS_URL = "redis://127.0.0.1:6379/14"


@dataclass(frozen=True)
class Section:
    """What a benchmark hands back: a title, its markdown body and its raw figures."""

    title: str
    body: str
    figures: dict[str, float] = field(default_factory=dict)


def percentiles(samples: Sequence[float], points: Sequence[int]) -> dict[int, float]:
    """The given percentiles (1-99) of the samples, interpolated between the nearest ranks."""
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return {point: cuts[point - 1] for point in points}


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """A markdown table; `align` holds one of l/r per column (left by default)."""
    marks = {"l": "---", "r": "---:"}
    separator = [marks[align[i]] if i < len(align) else "---" for i in range(len(header))]
    lines = [header, separator, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def run_alone(run: Callable[[], Section], commands: Mapping[str, Callable[..., None]] | None = None) -> None:
    """A benchmark module's `__main__`: run it and print its section as markdown.

    `commands` are the module's helper processes, which it starts as `python -m
    bench.NAME COMMAND ARGS...`: when the first argument names one, it is called with the
    other arguments (strings) instead.
    """
    argv = sys.argv[1:]
    if argv and commands and argv[0] in commands:
        commands[argv[0]](*argv[1:])
        return
    section = run()
    print(f"## {section.title}\n\n{section.body}")
