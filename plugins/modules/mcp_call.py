#!/usr/bin/python
"""A real MCP exchange with one server endpoint, from the managed host: initialize, tools/list and,
optionally, one tools/call. The rolling upgrade uses it to decide that an upgraded host may return to
the load balancers' rotation; anyone can use it as a smoke test."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mcp_call
short_description: Make a real MCP call (initialize, tools/list, optionally tools/call) to one endpoint
description:
  - Speaks MCP's streamable HTTP transport (protocol revision 2025-06-18) with the Python standard
    library only, so it runs on any managed host. Reads JSON and event-stream answers alike.
  - Fails unless initialize and tools/list succeed and, when I(tool) is given, the call returns a
    result that is not an error. The session it opened is closed again (HTTP DELETE) when the server
    issued one.
  - The bearer token is never returned or logged (no_log).
  - In check mode the exchange runs too, without the tools/call (a call may change data).
version_added: 0.3.0
author: mcpops.deploy maintainers
options:
  url:
    description: The MCP endpoint, e.g. C(https://127.0.0.1:8000/mcp).
    type: str
    required: true
  token:
    description: Bearer token sent with every request; empty sends none.
    type: str
    default: ""
  host_header:
    description: Host header to send (the public name the server accepts) when the URL names an address.
    type: str
    default: ""
  ca_path:
    description: CA certificate file that verifies an https URL; empty uses the host's CA store.
    type: path
    default: ""
  server_name:
    description: Name the server's certificate must carry (TLS SNI and check); empty is the URL's host.
    type: str
    default: ""
  validate_certs:
    description: Verify the server's certificate (chain and name); off only for one the host cannot verify.
    type: bool
    default: true
  tool:
    description: Name of a tool to call after tools/list; empty calls none.
    type: str
    default: ""
  arguments:
    description: Arguments of the tools/call.
    type: dict
    default: {}
  timeout:
    description: Seconds each HTTP exchange may take.
    type: float
    default: 10
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Call the instance on port 8000 the way a client would
  mcpops.deploy.mcp_call:
    url: https://127.0.0.1:8000/mcp
    ca_path: /etc/mcpops/pki/ca.crt
    host_header: mcp.example.com
    token: "{{ vault_probe_token }}"
    tool: echo
    arguments: {text: upgrade probe}
"""

RETURN = r"""
server_info:
  description: The serverInfo the server answered initialize with (name, version).
  type: dict
  returned: success
protocol_version:
  description: The protocol revision the server agreed to.
  type: str
  returned: success
session:
  description: Whether the server issued a session (Mcp-Session-Id).
  type: bool
  returned: success
tools:
  description: Names of the tools tools/list returned.
  type: list
  elements: str
  returned: success
call_result:
  description: The text of the tools/call result's content (first 500 characters); empty without a call.
  type: str
  returned: success
elapsed:
  description: Seconds the whole exchange took.
  type: float
  returned: always
"""

import contextlib
import http.client
import json
import socket
import ssl
import time
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule

PROTOCOL_VERSION = "2025-06-18"
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class CallError(Exception):
    pass


class _TLSConnection(http.client.HTTPSConnection):
    """HTTPS to an address, verifying the certificate for another name (SNI and name check)."""

    def __init__(self, host, port, server_name, context, timeout):
        super().__init__(host, port, context=context, timeout=timeout)
        self._server_name = server_name

    def connect(self):
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)


def parse_answer(content_type: str, body: bytes, want_id: int) -> dict:
    """The JSON-RPC message answering want_id, from a JSON body or an event stream."""
    messages = []
    if content_type.startswith("text/event-stream"):
        for event in body.decode("utf-8", "replace").replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:"))
            if data:
                messages.append(json.loads(data))
    else:
        decoded = json.loads(body.decode("utf-8"))
        messages.extend(decoded if isinstance(decoded, list) else [decoded])
    for message in messages:
        if isinstance(message, dict) and message.get("id") == want_id:
            return message
    raise CallError(f"no answer with id {want_id} among {len(messages)} message(s)")


class Exchange:
    def __init__(self, params: dict):
        parts = urlsplit(params["url"])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CallError(f"url = {params['url']}: accepted is an http:// or https:// URL")
        self.path = parts.path or "/"
        if parts.query:
            self.path += "?" + parts.query
        port = parts.port or (443 if parts.scheme == "https" else 80)
        timeout = float(params["timeout"])
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=params["ca_path"] or None)
            if not params["validate_certs"]:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            name = params["server_name"] or parts.hostname
            self.conn = _TLSConnection(parts.hostname, port, name, context, timeout)
        else:
            self.conn = http.client.HTTPConnection(parts.hostname, port, timeout=timeout)
        self.headers = {"Accept": "application/json, text/event-stream"}
        if params["token"]:
            self.headers["Authorization"] = "Bearer " + params["token"]
        if params["host_header"]:
            self.headers["Host"] = params["host_header"]
        self.session = ""
        self.next_id = 1

    def _send(self, method: str, body: bytes | None, extra: dict) -> tuple[int, dict, bytes]:
        headers = dict(self.headers, **extra)
        if self.session:
            headers["Mcp-Session-Id"] = self.session
        try:
            self.conn.request(method, self.path, body=body, headers=headers)
            response = self.conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
            self.conn.close()
            raise CallError(f"{method} {self.path}: {type(exc).__name__}: {exc}") from None
        if len(data) > MAX_ANSWER_BYTES:
            raise CallError(f"{method} {self.path}: answer larger than {MAX_ANSWER_BYTES} bytes")
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    def request(self, method: str, params: dict | None = None) -> dict:
        want = self.next_id
        self.next_id += 1
        payload = {"jsonrpc": "2.0", "id": want, "method": method, "params": params or {}}
        extra = {"Content-Type": "application/json"}
        if method != "initialize":
            extra["MCP-Protocol-Version"] = PROTOCOL_VERSION
        status, headers, body = self._send("POST", json.dumps(payload).encode(), extra)
        if status != 200:
            detail = body[:300].decode("utf-8", "replace")
            challenge = headers.get("www-authenticate", "")
            hint = f" (WWW-Authenticate: {challenge})" if challenge else ""
            raise CallError(f"{method}: HTTP {status}{hint}: {detail}")
        if method == "initialize":
            self.session = headers.get("mcp-session-id", "")
        try:
            answer = parse_answer(headers.get("content-type", ""), body, want)
        except (ValueError, CallError) as exc:
            raise CallError(f"{method}: unreadable answer: {exc}") from None
        if "error" in answer:
            raise CallError(f"{method}: JSON-RPC error {json.dumps(answer['error'])[:300]}")
        return answer.get("result") or {}

    def notify(self, method: str) -> None:
        payload = {"jsonrpc": "2.0", "method": method}
        extra = {"Content-Type": "application/json", "MCP-Protocol-Version": PROTOCOL_VERSION}
        status, _headers, body = self._send("POST", json.dumps(payload).encode(), extra)
        if status not in (200, 202):
            raise CallError(f"{method}: HTTP {status}: {body[:300].decode('utf-8', 'replace')}")

    def close(self) -> None:
        if self.session:
            # A failed DELETE changes nothing: the session expires on its own.
            with contextlib.suppress(CallError):
                self._send("DELETE", None, {"MCP-Protocol-Version": PROTOCOL_VERSION})
        self.conn.close()


def run(params: dict, check_mode: bool) -> dict:
    exchange = Exchange(params)
    try:
        init = exchange.request(
            "initialize",
            {
                "protocolVersion": PROTOCOL_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "mcpops.deploy.mcp_call", "version": "1"},
            },
        )
        exchange.notify("notifications/initialized")
        listed = exchange.request("tools/list")
        tools = [t.get("name", "") for t in listed.get("tools") or [] if isinstance(t, dict)]
        text = ""
        if params["tool"] and not check_mode:
            if params["tool"] not in tools:
                raise CallError(f"tool = {params['tool']}: not offered by the server (it lists {tools})")
            call = {"name": params["tool"], "arguments": params["arguments"]}
            result = exchange.request("tools/call", call)
            text = " ".join(c.get("text", "") for c in result.get("content") or [] if isinstance(c, dict))[
                :500
            ]
            if result.get("isError"):
                raise CallError(f"tools/call {params['tool']}: the tool answered with an error: {text}")
        return {
            "server_info": init.get("serverInfo") or {},
            "protocol_version": init.get("protocolVersion", ""),
            "session": bool(exchange.session),
            "tools": tools,
            "call_result": text,
        }
    finally:
        exchange.close()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "url": {"type": "str", "required": True},
            "token": {"type": "str", "default": "", "no_log": True},
            "host_header": {"type": "str", "default": ""},
            "ca_path": {"type": "path", "default": ""},
            "server_name": {"type": "str", "default": ""},
            "validate_certs": {"type": "bool", "default": True},
            "tool": {"type": "str", "default": ""},
            "arguments": {"type": "dict", "default": {}},
            "timeout": {"type": "float", "default": 10},
        },
        supports_check_mode=True,
    )
    started = time.monotonic()
    try:
        result = run(module.params, module.check_mode)
    except CallError as exc:
        module.fail_json(msg=f"mcp_call {module.params['url']}: {exc}", elapsed=time.monotonic() - started)
    module.exit_json(changed=False, elapsed=round(time.monotonic() - started, 3), **result)


if __name__ == "__main__":
    main()
