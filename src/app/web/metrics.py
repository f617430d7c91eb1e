"""Application metrics, exposed with Litestar's HTTP metrics at /metrics."""

from prometheus_client import Gauge

SSE_CONNECTIONS = Gauge("app_sse_connections", "Open server-sent event streams in this process")
