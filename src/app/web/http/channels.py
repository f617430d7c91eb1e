"""Live fan-out: Litestar channels, in memory embedded and over Redis pub/sub in services mode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import redis.asyncio
import structlog
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.base import ChannelsBackend
from litestar.channels.backends.memory import MemoryChannelsBackend
from litestar.channels.backends.redis import RedisChannelsPubSubBackend

from app.config import Settings
from app.workers.runtime import channels_key_prefix, pubsub_name

log = structlog.get_logger(__name__)

#: A reader that falls this far behind loses the oldest wake-ups, never events: it re-reads the table.
SUBSCRIBER_BACKLOG = 64
#: What a lost connection to Redis raises.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, OSError)
#: How long to wait before trying a lost Redis again.
RECONNECT_SECONDS = 1.0
#: The message every subscribed channel receives after Redis is back (readers treat any message as a wake-up).
WAKE_UP = b"{}"


class ResilientRedisChannelsBackend(RedisChannelsPubSubBackend):
    """Redis pub/sub that outlives a Redis restart.

    The channels plugin runs one task that reads `stream_events` and one that publishes;
    an exception ends either for good: no more wake-ups for any stream of the process,
    publishes piling up in memory, and a shutdown that waits for them for ever. Here a
    lost connection is waited out instead. A publish that fails is dropped (the event is
    in the table: a lost publish is only late). Subscriptions asked for while Redis is
    away are remembered and made when it is back, and then every subscribed channel gets
    a wake-up, so events committed meanwhile are read at once.
    """

    def __init__(self, *, redis: redis.asyncio.Redis, key_prefix: str) -> None:
        super().__init__(redis=redis, key_prefix=key_prefix)
        self._wanted: set[str] = set()
        self._prefix = pubsub_name(key_prefix, "")  # what Redis' names of this deployment's channels start with
        self._out_of_step = False  # Redis' subscriptions may differ from `_wanted`
        # redis-py's PubSub takes a connection of its own on its first command. Streams that
        # subscribe at the same moment would each take one: their channels would be subscribed
        # on connections nobody reads, so their wake-ups were lost (200 streams opened at once:
        # 71 of them saw a broadcast only at their next heartbeat). One command at a time.
        self._commands = asyncio.Lock()
        #: False from the moment the connection is lost until every channel is subscribed again:
        #: meanwhile messages may be missed (see app.web.http.credentials).
        self.connected = True

    def _names(self, channels: Iterable[str]) -> set[str]:
        """The Redis names of `channels` (`pubsub_name`: after this deployment's prefix)."""
        return {pubsub_name(self._key_prefix, channel) for channel in channels}

    async def subscribe(self, channels: Iterable[str]) -> None:
        channels = set(channels)
        self._wanted |= channels
        try:
            async with self._commands:
                await super().subscribe(self._names(channels))
        except REDIS_DOWN as exc:
            log.warning("channels.subscribe_failed", error=str(exc))
            self._out_of_step = True
            self._has_subscribed.set()  # the stream loop makes it once Redis answers

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        channels = set(channels)
        self._wanted -= channels
        try:
            async with self._commands:
                await super().unsubscribe(self._names(channels))
        except REDIS_DOWN as exc:
            log.warning("channels.unsubscribe_failed", error=str(exc))
            self._out_of_step = True

    async def publish(self, data: bytes, channels: Iterable[str]) -> None:
        targets = self._names(channels)
        try:
            if len(targets) == 1:  # an event's wake-up: a plain PUBLISH, not Litestar's Lua script for several
                await self._redis.publish(targets.pop(), data)
            else:
                await super().publish(data, targets)
        except REDIS_DOWN as exc:
            log.warning("channels.publish_failed", error=str(exc))

    async def stream_events(self) -> AsyncGenerator[tuple[str, Any], None]:
        lost = False
        while True:
            await self._has_subscribed.wait()
            if self._pub_sub.connection is None and not self._wanted:
                self._has_subscribed.clear()  # subscribed and unsubscribed again while Redis was away
                continue
            try:
                if self._out_of_step or self._pub_sub.connection is None:
                    lost = True  # publishes may have been missed while out of step: wake everyone once repaired
                    self.connected = False
                    await self._resubscribe()
                message = await self._pub_sub.get_message(ignore_subscribe_messages=True, timeout=1)
            except REDIS_DOWN as exc:
                if not lost:
                    log.warning("channels.redis_lost", error=str(exc))
                lost = True
                self.connected = False
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            if lost:
                lost = False
                self.connected = True
                log.info("channels.redis_back", channels=len(self._wanted))
                for channel in sorted(self._wanted):
                    yield channel, WAKE_UP
            if (
                message is not None
                and (channel := message["channel"].decode().removeprefix(self._prefix)) in self._wanted
            ):
                yield channel, message["data"]

    async def _resubscribe(self) -> None:
        """Make Redis' subscriptions those wanted (after subscribes or unsubscribes that failed)."""
        self._out_of_step = True
        async with self._commands:
            held = {channel.decode() if isinstance(channel, bytes) else channel for channel in self._pub_sub.channels}
            wanted = self._names(self._wanted)
            if missing := wanted - held:
                await self._pub_sub.subscribe(*missing)
            if extra := held - wanted:
                await self._pub_sub.unsubscribe(*extra)
        self._out_of_step = False


def channels_plugin(settings: Settings) -> ChannelsPlugin:
    backend: ChannelsBackend
    if settings.redis_url:
        backend = ResilientRedisChannelsBackend(
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


def hears_every_message(plugin: ChannelsPlugin) -> bool:
    """False while the backend may be missing messages (Redis lost); in memory it never does."""
    return bool(getattr(plugin._backend, "connected", True))


class ChannelsPublisher:
    """The domain's EventPublisher, for code running on the web app's loop."""

    def __init__(self, plugin: ChannelsPlugin) -> None:
        self._plugin = plugin

    async def publish(self, channel: str, data: bytes) -> None:
        self._plugin.publish(data, [channel])
