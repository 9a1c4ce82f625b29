"""Session ids that name the instance owning the session, and limits on how many a client holds.

Ids are ``<instance_id>.<32 hex>``. Several instances sit behind one nginx. The first request of a
session carries no id, so it can land on any instance; nginx then routes every later request by
the prefix of its ``Mcp-Session-Id`` header (a ``map``) to the instance that minted it.

Limits, so that no client can starve the others of sessions:

- ``server.max_sessions``: sessions open on the instance (the SDK's ``max_sessions``); a new
  session beyond it gets 503.
- ``server.max_sessions_per_principal``: sessions one principal (token ``sub``, else the client
  address) holds; its next ``initialize`` gets 429 with a JSON-RPC error, others are unaffected.
- ``server.session_unused_timeout``: a session that has seen nothing but ``initialize`` (and
  ``notifications/initialized``) ends this long after its last request, instead of after
  ``server.session_idle_timeout``. ``ToolObserver`` marks a session used (``mark_used``).

The SDK offers no hook for any of this but ``max_sessions``: ``sdk.InstanceSessionManager`` overrides
its internals and calls what is here.
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from . import metrics
from .asgi import JSON, send_response

logger = logging.getLogger("mcpops.sessions")


def new_session_id(instance_id: str) -> str:
    return f"{instance_id}.{secrets.token_hex(16)}"


class PrincipalSessionLimit(Exception):
    """The principal already holds its share of sessions."""


class SessionsPerPrincipal:
    """Who holds which session, counted per principal against ``server.max_sessions_per_principal``."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self._principal_of: dict[str, str] = {}  # session id -> principal
        self._sessions_of: dict[str, int] = {}  # principal -> sessions open

    def check(self, principal: str | None) -> None:
        """Raise PrincipalSessionLimit when the principal may not open another session."""
        limit = self.limit
        if principal is not None and limit is not None and self._sessions_of.get(principal, 0) >= limit:
            metrics.sessions_rejected("principal_limit").inc()
            logger.warning(
                "refused a new session: the client already holds %d (max_sessions_per_principal)", limit
            )
            raise PrincipalSessionLimit

    def opened(self, session_id: str, principal: str | None) -> None:
        if principal is not None:
            self._principal_of[session_id] = principal
            self._sessions_of[principal] = self._sessions_of.get(principal, 0) + 1

    def closed(self, session_id: str) -> None:
        principal = self._principal_of.pop(session_id, None)
        if principal is not None:
            left = self._sessions_of.get(principal, 0) - 1
            if left > 0:
                self._sessions_of[principal] = left
            else:
                self._sessions_of.pop(principal, None)


async def refuse_session(send: Any, limit: int) -> None:
    """The 429 a principal over its limit gets for ``initialize``."""
    message = f"Too many open sessions for this client (limit {limit}): end one (DELETE) or retry later"
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}).encode()
    await send_response(send, 429, body, JSON)
