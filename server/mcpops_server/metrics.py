"""Prometheus metrics: the seed's names, HTTP requests by status and latency, process metrics.

The default registry already carries the process and platform collectors
(``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ...).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # the *_created series double the output and nobody graphs them

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# --- the seed's metrics ---
auth_attempts_total = Counter(
    "mcp_auth_attempts_total", "Total authentication attempts", ["endpoint", "result"], registry=REGISTRY
)
auth_duration_seconds = Histogram(
    "mcp_auth_duration_seconds",
    "Authentication duration in seconds",
    ["endpoint"],
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5),
)
tool_calls_total = Counter(
    "mcp_tool_calls_total", "Total tool invocations", ["endpoint", "tool_name", "result"]
)
tool_duration_seconds = Histogram(
    "mcp_tool_duration_seconds",
    "Tool execution duration in seconds",
    ["endpoint", "tool_name"],
    buckets=_LATENCY_BUCKETS,
)
active_connections = Gauge("mcp_active_connections", "Number of active connections", ["endpoint"])

# --- HTTP ---
http_requests_total = Counter(
    "mcp_http_requests_total", "HTTP requests by route, method and status", ["path", "method", "status"]
)
http_request_duration_seconds = Histogram(
    "mcp_http_request_duration_seconds",
    "HTTP request latency (until the response is complete) in seconds",
    ["path", "method"],
    buckets=_LATENCY_BUCKETS,
)

# --- rate limiting, sessions, dependencies ---
ratelimit_rejected_total = Counter("mcp_ratelimit_rejected_total", "Requests refused with 429")
ratelimit_redis_errors_total = Counter(
    "mcp_ratelimit_redis_errors_total", "Rate limit checks that could not reach Redis", ["action"]
)
ratelimit_breaker_open = Gauge(
    "mcp_ratelimit_breaker_open", "1 while the rate limiter's circuit breaker keeps requests off Redis"
)
ratelimit_short_circuited_total = Counter(
    "mcp_ratelimit_short_circuited_total",
    "Requests decided by ratelimit.on_redis_error without asking Redis (breaker open)",
    ["action"],
)
jwks_fetches_total = Counter("mcp_jwks_fetches_total", "JWKS (and metadata) fetches", ["result"])
sessions_active = Gauge("mcp_sessions_active", "Open stateful MCP sessions on this instance")
sessions_rejected_total = Counter(
    "mcp_sessions_rejected_total", "New sessions refused (per-principal or instance limit)", ["reason"]
)
health_status = Gauge("mcp_health_check_ok", "Last result of each health check (1 ok, 0 failing)", ["check"])

# --- the stdio bridge (bridge.py); labelled by server name, never by principal ---
bridge_children = Gauge("mcpops_bridge_children", "Child processes running", ["server"])
bridge_child_starts_total = Counter("mcpops_bridge_child_starts_total", "Child processes started", ["server"])
bridge_child_restarts_total = Counter(
    "mcpops_bridge_child_restarts_total",
    "Child processes that ended by failure and are restarted on demand "
    "(reason: exited, protocol_error, startup_failed)",
    ["server", "reason"],
)
bridge_child_stops_total = Counter(
    "mcpops_bridge_child_stops_total",
    "Child processes stopped (reason: idle, evicted, shutdown)",
    ["server", "reason"],
)
bridge_refused_total = Counter(
    "mcpops_bridge_refused_total",
    "Requests refused by the bridge (reason: max_children, max_calls_per_child)",
    ["server", "reason"],
)

ENDPOINT = "/mcp"


class MemoisedLabels:
    """``metric.labels(...)``, each labelled child kept once made: resolving the labels costs more than
    the increment itself."""

    def __init__(self, metric: Any):
        self.metric = metric
        self.children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = self.metric.labels(*values)
        return child


# label order as declared above
http_requests = MemoisedLabels(http_requests_total)  # (path, method, status)
http_duration = MemoisedLabels(http_request_duration_seconds)  # (path, method)
tool_calls = MemoisedLabels(tool_calls_total)  # (endpoint, tool_name, result)
tool_duration = MemoisedLabels(tool_duration_seconds)  # (endpoint, tool_name)
auth_attempts = MemoisedLabels(auth_attempts_total)  # (endpoint, result)
sessions_rejected = MemoisedLabels(sessions_rejected_total)  # (reason,)
bridge_starts = MemoisedLabels(bridge_child_starts_total)  # (server,)
bridge_restarts = MemoisedLabels(bridge_child_restarts_total)  # (server, reason)
bridge_stops = MemoisedLabels(bridge_child_stops_total)  # (server, reason)
bridge_refused = MemoisedLabels(bridge_refused_total)  # (server, reason)
auth_duration = auth_duration_seconds.labels(ENDPOINT)
mcp_connections = active_connections.labels(ENDPOINT)  # a function: the gateway's count of /mcp requests


def render() -> tuple[bytes, str]:
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
