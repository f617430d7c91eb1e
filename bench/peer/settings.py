"""The peer's settings, read once from the environment that `bench.peer.stack` gives its processes."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class PeerSettings:
    database_url: str  # SQLAlchemy URL, postgresql+asyncpg://...
    broker_url: str  # Celery broker (Redis)
    result_backend: str  # Celery result backend (Redis, another db number)
    events_url: str  # where progress messages are PUBLISHed
    secret_key: str  # signs the JWT access tokens

    @classmethod
    def from_environment(cls) -> PeerSettings:
        return cls(
            database_url=os.environ["PEER_DATABASE_URL"],
            broker_url=os.environ["PEER_BROKER_URL"],
            result_backend=os.environ["PEER_RESULT_BACKEND"],
            events_url=os.environ["PEER_EVENTS_URL"],
            secret_key=os.environ["PEER_SECRET_KEY"],
        )
