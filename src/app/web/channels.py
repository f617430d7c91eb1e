"""Live fan-out: Litestar channels, in memory embedded and over Redis pub/sub in services mode."""

from __future__ import annotations

import redis.asyncio
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.base import ChannelsBackend
from litestar.channels.backends.memory import MemoryChannelsBackend
from litestar.channels.backends.redis import RedisChannelsPubSubBackend

from app.config import Settings
from app.workers.runtime import channels_key_prefix

#: A reader that falls this far behind loses the oldest wake-ups, never events: it re-reads the table.
SUBSCRIBER_BACKLOG = 64


def channels_plugin(settings: Settings) -> ChannelsPlugin:
    backend: ChannelsBackend
    if settings.redis_url:
        backend = RedisChannelsPubSubBackend(
            redis=redis.asyncio.Redis.from_url(settings.redis_url),
            key_prefix=channels_key_prefix(settings.redis_namespace),
        )
    else:
        backend = MemoryChannelsBackend()
    return ChannelsPlugin(
        backend=backend,
        arbitrary_channels_allowed=True,
        subscriber_max_backlog=SUBSCRIBER_BACKLOG,
        subscriber_backlog_strategy="dropleft",
    )


class ChannelsPublisher:
    """The domain's EventPublisher, for code running on the web app's loop."""

    def __init__(self, plugin: ChannelsPlugin) -> None:
        self._plugin = plugin

    async def publish(self, channel: str, data: bytes) -> None:
        self._plugin.publish(data, [channel])
