"""What sending a message raises while the broker is out of reach."""

from __future__ import annotations

import dramatiq
import redis

#: Redis' own errors (the Redis broker does not wrap them) or Dramatiq's (RabbitMQ).
BROKER_DOWN = (dramatiq.errors.BrokerConnectionError, redis.RedisError)
