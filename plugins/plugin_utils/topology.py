"""Who talks to whom across hosts: the rules that decide where traffic must be TLS.

A connection between two different hosts is TLS, verified against the deployment's CA; a
connection that stays on one host is plain on loopback. These helpers answer that question from
the inventory (a host's vars and the `groups` magic variable seen through hostvars), so the role
that serves and the role that connects cannot disagree.
"""

from __future__ import annotations

REDIS_TLS_MODES = ("auto", "required", "disabled")


def _groups(hostvars, host) -> dict:
    groups = hostvars[host].get("groups") or {}
    return groups if isinstance(groups, dict) or hasattr(groups, "get") else {}


def redis_tls(redis_host, hostvars) -> bool:
    """Whether the Redis of ``redis_host`` serves TLS only.

    ``redis_tls`` in its vars: ``required`` (always), ``disabled`` (never) or ``auto`` (default):
    TLS when an app host (group ``mcp_servers``) other than the Redis host itself is a client.
    """
    hv = hostvars[redis_host]
    mode = str(hv.get("redis_tls", "auto"))
    if mode not in REDIS_TLS_MODES:
        raise ValueError(f"redis_tls of {redis_host} = {mode!r}: accepted are {', '.join(REDIS_TLS_MODES)}")
    if mode != "auto":
        return mode == "required"
    clients = _groups(hostvars, redis_host).get("mcp_servers") or []
    return any(str(h) != str(redis_host) for h in clients)
