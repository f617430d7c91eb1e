"""Every model of every domain, imported in one place so that metadata (and alembic) sees them all."""

from advanced_alchemy.base import orm_registry

from app.domain.notifications.models import Event

metadata = orm_registry.metadata

__all__ = ["Event", "metadata"]
