"""Embedded mode: the web app starts the in-process workers and schedules, and stops them first.

A plugin listed after the channels plugin, so that its lifespan is entered after the
channels started and left before they stop: jobs still running at shutdown can publish.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.channels import ChannelsPlugin
from litestar.config.app import AppConfig
from litestar.plugins import InitPlugin

from app.web.http.channels import ChannelsPublisher
from app.workers.embedded import EmbeddedWorkers


class EmbeddedWorkersPlugin(InitPlugin):
    def __init__(self, workers: EmbeddedWorkers, channels: ChannelsPlugin) -> None:
        self.workers = workers
        self.channels = channels

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.lifespan.append(self._lifespan)
        return app_config

    @asynccontextmanager
    async def _lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        await self.workers.start(ChannelsPublisher(self.channels))
        try:
            yield
        finally:
            await self.workers.stop()
