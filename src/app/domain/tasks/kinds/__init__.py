"""The registry of task kinds: one module per kind; adding a kind means adding its module here."""

from __future__ import annotations

from typing import Any

from app.domain.tasks.kinds import demo, export
from app.domain.tasks.kinds.base import Kind

KINDS: dict[str, Kind[Any]] = {kind.name: kind for kind in (demo.KIND, export.KIND)}


def get_kind(name: str) -> Kind[Any] | None:
    return KINDS.get(name)


__all__ = ["KINDS", "Kind", "get_kind"]
