"""The stdio bridge: serve a stdio MCP server (a PyPI or npm package, any executable) over our HTTP path.

With ``bridge.command`` set, the instance serves no ``MCPServer`` object of its own. Its low-level
``Server`` (``build_bridge_server``) forwards every request it serves (tools, resources, resource
templates, prompts, completion) to a child process speaking MCP over stdin/stdout, and the child's
answer back unchanged: a JSON-RPC error stays that error, a tool's ``isError`` result stays a result.
Everything in front of the SDK (AuthGate, rate limits, Host/Origin, sessions, the access log, the
metrics, ``ToolObserver``) applies as it does for ``python`` servers.

Children (``ChildPool``): ``bridge.isolation: per_principal`` gives each principal (the token's
``sub``, as AuthGate sets it) its own child, so a stateful server never mixes two users' data;
``shared`` gives everyone one child. A child is started on the first request that needs it (an
``initialize`` included), kept alive, and stopped after ``bridge.idle_timeout`` without calls. At
``bridge.max_children`` a new principal's child replaces the one idle longest; when every child
has a call in flight the request is refused with a JSON-RPC error instead (evicting a busy child
would break a call; refusing an idle one would let a few tokens lock everyone else out for the idle
timeout). A child that exits or misbehaves is replaced on the next request that needs it, not
before 0.25 s doubling per failure in a row (up to ``bridge.restart_backoff_max``); the calls it
had in flight get a JSON-RPC error that says what happened. A child is the pool's from the moment it
is launched: a start cut short (the client went away, a deadline passed, the instance shuts down)
kills and reaps its process group before the request ends, so no process outlives its request
uncounted.

Fairness in a shared child: one principal has at most ``bridge.max_calls_per_principal`` requests
in flight on a child, of the ``bridge.max_calls_per_child`` it takes; its next one is refused with
a JSON-RPC error, and the others' calls go on.

The child side is a small JSON-RPC multiplexer of our own, not the SDK's stdio client, because a
forwarder needs what that client does not give: the child's raw result dicts (the SDK client
validates them into its models, dropping what its version does not know), a bound on a line
(the SDK client reads a line of any size), containment of a child that writes junk (the SDK client
logs it and reads on), progress routed per call with tokens of our own, and the process itself
(pid, process group, restart, stop). Requests from several sessions share a child: each gets an id
of the bridge's (``_Child.next_id``) and a progress token of the bridge's, mapped back when the
child answers. A client's cancellation (the SDK cancels the handler) becomes
``notifications/cancelled`` to the child; so does ``bridge.call_timeout``.

Protocol eras: the child speaks what it negotiated when it started, the HTTP side what the HTTP
client speaks; the bridge translates, and passes on nothing that belongs to the other era. A child
is started with ``initialize`` and then speaks the handshake-era version it negotiated; one that
refuses it naming only 2026-07-28 versions (-32022) is asked ``server/discover`` instead and gets
the bridge's envelope on every request. A client of the sessionless 2026-07-28 revision (the SDK's
current ``Client``) connects with ``server/discover`` (answered here, from the first child's start)
and sends each request in an envelope (``io.modelcontextprotocol/*`` keys in ``_meta``):
``params_for_child`` takes it off for a handshake-era child (an SDK child refuses an enveloped
request on a handshake connection) or replaces it with the bridge's, and ``result_for_client``
adds to the child's result what that revision requires (``resultType``; on the cacheable methods
``ttlMs: 0`` and ``cacheScope: private``) and the serverInfo stamp with the child's version. A
handshake-era client gets the child's result without the reserved ``_meta`` keys; a 2026-07-28
child's ``input_required`` result, which it cannot answer, becomes an error.

Containment: a line on stdout that is not a JSON-RPC 2.0 message object (or JSON too deeply nested
to parse), or more than ``bridge.max_messages_per_second`` lines in a second: one log line
(``bridge_child_protocol_error``, with the server's name and the child's pid), the process group is
killed, the calls in flight get an error. A line longer than ``bridge.max_line_bytes`` is skipped
to its end, never held whole: when its first or last bytes name the id of a call in flight (an
answer too large), only that call fails (``bridge_child_oversized_reply``) and the child serves
on; otherwise it is a protocol error too. A reader that stops for any other reason ends its child
as well: a live child whose answers nobody reads would hold its calls until the call timeout and
never be replaced. The child's stderr goes to our log (``bridge_child_stderr``, each line cut, at
most ``bridge.max_stderr_lines_per_second``), never to a client. Requests from the child to us
(sampling, roots, elicitation) are answered "method not found"; ``ping`` is answered.

The child's environment is PATH, HOME, LANG, LC_*, TZ and TMPDIR of the instance plus
``bridge.env`` and ``bridge.env_file``: never the rest of the instance's (its Redis password, say).
Each child leads a process group of its own, so what it starts is stopped with it: stdin closed,
then SIGTERM, then SIGKILL, ``bridge.stop_timeout`` apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import anyio
import mcp_types as types
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CLIENT_CAPABILITIES_META_KEY,
    CLIENT_INFO_META_KEY,
    PROTOCOL_VERSION_META_KEY,
    SERVER_INFO_META_KEY,
    UNSUPPORTED_PROTOCOL_VERSION,
)
from mcp_types.methods import CACHEABLE_METHODS
from mcp_types.version import LATEST_HANDSHAKE_VERSION, MODERN_PROTOCOL_VERSIONS

from . import __version__, metrics
from .config import BridgeSettings
from .sandbox import Launch, Sandbox, SandboxError

logger = logging.getLogger("mcpops.bridge")

BRIDGE_ERROR = -32000  # JSON-RPC "server error" range: the child failed, timed out, or was refused
METHOD_NOT_FOUND = -32601
SHARED = "shared"  # the pool key of the one child under bridge.isolation: shared
ANONYMOUS = "anonymous"  # the pool key of requests without a principal (auth disabled)

# The requests a bridge forwards; each is served by the child or answered with its error.
FORWARDED = (
    ("tools/list", types.PaginatedRequestParams),
    ("tools/call", types.CallToolRequestParams),
    ("resources/list", types.PaginatedRequestParams),
    ("resources/templates/list", types.PaginatedRequestParams),
    ("resources/read", types.ReadResourceRequestParams),
    ("prompts/list", types.PaginatedRequestParams),
    ("prompts/get", types.GetPromptRequestParams),
    ("completion/complete", types.CompleteRequestParams),
)
# Capabilities passed on from the child's initialize result. Not forwarded (so not advertised):
# list-changed and resource-updated notifications, logging, experimental and extension capabilities.
_CAPABILITIES = ("tools", "resources", "prompts", "completions")

_BACKOFF_START = 0.25
_STDERR_LINE_MAX = 1024  # characters of one logged stderr line
_STDERR_CHUNK = 65536
_PROGRESS_QUEUED_MAX = 256  # progress notifications waiting for a slow client; more are dropped
_CANCEL_REASON = "cancelled by the client, or bridge.call_timeout passed"
_HEAD_BYTES = 4096  # of a line over bridge.max_line_bytes, the first (and last) bytes searched for its id
_REAP_WAIT = 5.0  # seconds a killed child's start waits for the process to be reaped
_KEY_COLON_RE = re.compile(rb"\s*:\s*")
_INT_VALUE_RE = re.compile(rb"(-?[0-9]{1,18})\s*[,}]")
_LAST_ID_RE = re.compile(rb'[{,]\s*"id"\s*:\s*(-?[0-9]{1,18})\s*}\s*\Z')  # the object's last member
_ENV_PASSED = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR")
# The 2026-07-28 per-request envelope: _meta keys under this prefix (protocol version, client info,
# client capabilities, log level) and the multi-round-trip fields. A child that negotiated a
# handshake-era version at initialize refuses a request carrying them (the SDK's runner answers
# "this connection serves the handshake protocol era"), and knows none of them anyway.
_ENVELOPE_META_PREFIX = "io.modelcontextprotocol/"
_MODERN_ONLY_PARAMS = ("inputResponses", "requestState")
BRIDGE_CLIENT_INFO = {"name": "mcpops-bridge", "version": __version__}  # the bridge, as its children's client


def _without_envelope(meta: Any) -> dict[str, Any]:
    if not isinstance(meta, Mapping):
        return {}
    return {k: v for k, v in meta.items() if not str(k).startswith(_ENVELOPE_META_PREFIX)}


def params_for_child(params: Mapping[str, Any] | None, child_version: str | None) -> dict[str, Any] | None:
    """The client's params as the child's era has them. A child that negotiated a handshake-era
    version gets them without the 2026-07-28 envelope (reserved ``_meta`` keys, multi-round-trip
    fields). A child that speaks only the 2026-07-28 revision gets the bridge's envelope instead of
    the client's: its version, the bridge as the client, no client capabilities (the bridge answers
    no requests from a child). Everything else (arguments, cursor, progressToken, other ``_meta``
    keys, a modern client's multi-round-trip fields for a modern child) passes unchanged."""
    modern = child_version in MODERN_PROTOCOL_VERSIONS
    if params is None and not modern:
        return None
    out = dict(params or {})
    if not modern:
        for key in _MODERN_ONLY_PARAMS:
            out.pop(key, None)
    meta = _without_envelope(out.get("_meta"))
    if modern:
        meta[PROTOCOL_VERSION_META_KEY] = child_version
        meta[CLIENT_INFO_META_KEY] = dict(BRIDGE_CLIENT_INFO)
        meta[CLIENT_CAPABILITIES_META_KEY] = {}
    if meta:
        out["_meta"] = meta
    else:
        out.pop("_meta", None)
    return out


def result_for_client(
    method: str, result: Mapping[str, Any], version: str | None, server_info: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The child's result as the HTTP client's era has it.

    A 2026-07-28 client gets the fields that revision requires and a handshake-era child does not
    send: ``resultType: complete`` and, on the cacheable methods, ``ttlMs: 0`` and ``cacheScope:
    private`` (nothing says the child's answer is the same for every caller, nor for how long), and
    ``server_info`` as the ``_meta`` serverInfo stamp (the child's version, as the handshake's
    serverInfo has it). What a 2026-07-28 child sent itself stays.

    A handshake-era client gets the result without the reserved ``_meta`` keys of the 2026-07-28
    revision (the SDK's per-version sieve drops its other fields); a 2026-07-28 child's
    ``input_required`` result, which that client cannot answer, becomes a JSON-RPC error."""
    out = dict(result)
    if version not in MODERN_PROTOCOL_VERSIONS:
        if out.get("resultType") == "input_required":
            raise _error(
                "the server asks the client for input (a 2026-07-28 input_required result), "
                "which a client of the initialize handshake cannot answer"
            )
        if "_meta" in out and isinstance(out["_meta"], Mapping):
            meta = _without_envelope(out["_meta"])
            if meta:
                out["_meta"] = meta
            else:
                del out["_meta"]
        return out
    out.setdefault("resultType", "complete")
    if method in CACHEABLE_METHODS and out["resultType"] == "complete":
        out.setdefault("ttlMs", 0)
        out.setdefault("cacheScope", "private")
    meta = out.get("_meta")
    if server_info is not None and (meta is None or isinstance(meta, Mapping)):
        out["_meta"] = {**(meta or {}), SERVER_INFO_META_KEY: dict(server_info)}
    return out


def child_environment(settings: BridgeSettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The child's environment: a few of the instance's variables, then bridge.env, then the file's."""
    base = os.environ if base is None else base
    env = {k: v for k, v in base.items() if k in _ENV_PASSED or k.startswith("LC_")}
    env.update(settings.env)
    env.update(settings.file_env)
    return env


def _top_level_keys(text: bytes) -> Iterator[tuple[bytes, int]]:
    """The keys of the JSON object ``text`` starts (the start of one), each with where its value
    starts: a scan that skips strings and counts brackets, so keys of nested objects are not seen."""
    depth, i, n = 0, 0, len(text)
    while i < n:
        byte = text[i]
        if byte == 0x22:  # a string: on to its closing quote, past escapes
            end = i + 1
            while end < n and text[end] != 0x22:
                end += 2 if text[end] == 0x5C else 1
            if end >= n:
                return
            colon = _KEY_COLON_RE.match(text, end + 1) if depth == 1 else None
            if colon is not None:
                yield text[i + 1 : end], colon.end()
            i = end + 1
            continue
        if byte in b"{[":
            depth += 1
        elif byte in b"}]":
            depth -= 1
        i += 1


def reply_id(head: bytes, tail: bytes = b"") -> int | None:
    """The integer ``id`` of a JSON-RPC response too long to parse, from the first and last bytes of
    its line: a key of the top-level object, never one inside the result. The Python SDK writes it
    before the result (in ``head``), the TypeScript SDK after it, as the object's last member (in
    ``tail``). None when a ``method`` key comes first (a request or notification of the child's), or
    neither ``id`` nor ``result``/``error`` is among the top-level keys in ``head``."""
    text = head.lstrip()
    if not text.startswith(b"{"):
        return None
    answer = False
    for key, value_at in _top_level_keys(text):
        if key == b"method":
            return None
        if key == b"id":
            value = _INT_VALUE_RE.match(text, value_at)
            return int(value.group(1)) if value else None
        answer = answer or key in (b"result", b"error")
    last = _LAST_ID_RE.search(tail) if answer else None
    return int(last.group(1)) if last else None


def _error(message: str, code: int = BRIDGE_ERROR) -> MCPError:
    return MCPError(code=code, message=message)


class ChildGone(Exception):
    """The child ended (or was ended) while a request waited for it: ``message`` says why."""


class _Call:
    """One request waiting for the child's answer, and its progress on the way."""

    __slots__ = ("queue",)

    def __init__(self) -> None:
        # (kind, payload): ("progress", params) any number of times, then ("result"|"error"|"gone", ...).
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    def progress(self, params: Mapping[str, Any]) -> None:
        if self.queue.qsize() < _PROGRESS_QUEUED_MAX:
            self.queue.put_nowait(("progress", params))

    def end(self, kind: str, payload: Any) -> None:
        self.queue.put_nowait((kind, payload))


class _Child:
    """One child process and the JSON-RPC conversation with it."""

    def __init__(
        self,
        settings: BridgeSettings,
        server_name: str,
        on_exit: Callable[[_Child, str], None],
        key: str = SHARED,
        sandbox: Sandbox | None = None,
    ):
        self.settings = settings
        self.server_name = server_name
        self.key = key  # the pool key: a principal, ANONYMOUS or SHARED
        self.sandbox = sandbox
        self.cgroup: str | None = None  # the child's own cgroup (bridge.sandbox: bubblewrap)
        self.on_exit = on_exit  # told once, when the child ended, why: "exited", "protocol_error", ...
        self.proc: asyncio.subprocess.Process | None = None
        self.pid: int | None = None
        self.calls: dict[int, _Call] = {}
        self.by_token: dict[str, _Call] = {}
        self.by_principal: dict[str, int] = {}  # requests in flight per principal (max_calls_per_principal)
        self.launched = asyncio.Event()  # set once the process exists (or its launch failed)
        self.next_id = 0
        self.started_at = time.monotonic()
        self.last_used = self.started_at
        self.ended: str | None = None  # why the child is gone, once it is
        self.stopping = False  # we stop it: its exit is no failure
        self.init_result: dict[str, Any] = {}
        self.protocol_version: str | None = None  # what the child negotiated at initialize
        self.tasks: list[asyncio.Task[Any]] = []
        self.window = (0, 0)  # (second, stdout lines in it): the flood bound

    @property
    def alive(self) -> bool:
        return self.ended is None and self.proc is not None

    @property
    def busy(self) -> int:
        return len(self.calls)

    def _log_extra(self, event: str, **more: Any) -> dict[str, Any]:
        return {"event": event, "server": self.server_name, "pid": self.pid, **more}

    # ---------------------------------------------------------------- start and stop

    async def start(self) -> None:
        settings = self.settings
        if self.sandbox is not None:
            launch, self.cgroup = self.sandbox.launch(
                self.key, self.key == SHARED, child_environment(settings), settings.cwd
            )
        else:
            launch = Launch(settings.command, child_environment(settings), settings.cwd)
        self.proc = await asyncio.create_subprocess_exec(
            *launch.argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=launch.cwd,
            env=launch.env,
            limit=settings.max_line_bytes,
            start_new_session=True,  # a process group of its own: stopped with what it starts
        )
        self.pid = self.proc.pid
        self.launched.set()
        metrics.bridge_starts(self.server_name).inc()
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._read_stdout()),
            loop.create_task(self._read_stderr()),
            loop.create_task(self._wait_exit()),
        ]
        try:
            if self.ended is not None:  # stopped (the instance shuts down) while it was being launched
                raise ChildGone("the server's process was stopped while starting")
            with anyio.fail_after(settings.startup_timeout):
                await self._handshake()
        except (TimeoutError, ChildGone, MCPError, OSError) as exc:
            why = (
                f"did not answer initialize within {settings.startup_timeout:g} s (bridge.startup_timeout)"
                if isinstance(exc, TimeoutError)
                else f"failed to initialize: {exc}"
            )
            self.kill("startup_failed", f"the server's process {why}")
            await self._reaped()
            raise ChildGone(f"the server's process {why}") from None
        except BaseException:  # cancelled: the client went away, or a deadline around the start passed
            self.kill("cancelled", "the request that started the server's process ended first")
            await self._reaped()
            metrics.bridge_stops(self.server_name, "cancelled").inc()
            logger.info(
                "bridge child %s stopped while starting: its request ended first",
                self.pid,
                extra=self._log_extra("bridge_child_stopped", reason="cancelled"),
            )
            raise
        logger.info(
            "bridge child %d started for %s",
            self.pid,
            self.server_name,
            extra=self._log_extra("bridge_child_started"),
        )

    async def _handshake(self) -> None:
        """initialize (the child then speaks the handshake-era version it negotiated); a child that
        refuses it naming only 2026-07-28 versions (-32022) is asked server/discover instead, and
        gets that revision's envelope on every request. ``init_result`` has the same shape either way."""
        params = {
            "protocolVersion": LATEST_HANDSHAKE_VERSION,
            "capabilities": {},
            "clientInfo": dict(BRIDGE_CLIENT_INFO),
        }
        try:
            self.init_result = await self._request_raw("initialize", params)
        except MCPError as refused:
            data = refused.data if refused.code == UNSUPPORTED_PROTOCOL_VERSION else None
            offered = data.get("supported") if isinstance(data, dict) else None
            modern = [v for v in MODERN_PROTOCOL_VERSIONS if isinstance(offered, list) and v in offered]
            if not modern:
                raise
            self.protocol_version = modern[-1]
            found = await self._request_raw("server/discover", params_for_child(None, self.protocol_version))
            meta = found.get("_meta")
            info = meta.get(SERVER_INFO_META_KEY) if isinstance(meta, dict) else None
            self.init_result = {"protocolVersion": self.protocol_version, "capabilities": {}}
            if isinstance(found.get("capabilities"), dict):
                self.init_result["capabilities"] = found["capabilities"]
            if isinstance(info, dict):
                self.init_result["serverInfo"] = info
            if isinstance(found.get("instructions"), str):
                self.init_result["instructions"] = found["instructions"]
            return
        version = self.init_result.get("protocolVersion")
        self.protocol_version = version if isinstance(version, str) else LATEST_HANDSHAKE_VERSION
        await self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def _reaped(self) -> None:
        """Wait until the killed process is reaped, whatever cancels the caller (bounded): a start cut
        short returns only once its process is gone."""
        if self.proc is not None:
            with anyio.move_on_after(_REAP_WAIT, shield=True):
                await self.proc.wait()

    async def stop(self, reason: str) -> None:
        """Stop the child: stdin closed, then SIGTERM, then SIGKILL, bridge.stop_timeout apart. One
        still being launched is waited for (bounded), then stopped the same way; start() sees it ended."""
        self.stopping = True
        if self.proc is None and self.ended is None:
            with anyio.move_on_after(self.settings.stop_timeout):
                await self.launched.wait()
        proc = self.proc
        if proc is None:
            self._end(reason, f"the server's process was stopped ({reason})")
            return
        grace = self.settings.stop_timeout
        if proc.returncode is None and proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
            with anyio.move_on_after(grace):
                await proc.wait()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.returncode is not None:
                break
            self._signal(sig)
            with anyio.move_on_after(grace if sig == signal.SIGTERM else 5):
                await proc.wait()
        self._signal(signal.SIGKILL)  # whatever else the group still holds
        self._end(reason, f"the server's process was stopped ({reason})")
        metrics.bridge_stops(self.server_name, reason).inc()
        logger.info(
            "bridge child %s stopped (%s)",
            self.pid,
            reason,
            extra=self._log_extra("bridge_child_stopped", reason=reason),
        )

    def _signal(self, sig: int) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)
        if sig == signal.SIGKILL and self.sandbox is not None and self.cgroup is not None:
            self.sandbox.cgroups.kill(self.cgroup)  # type: ignore[union-attr]  # all of the sandbox

    def _over_memory(self) -> bool:
        """Whether the kernel killed in the child's cgroup for memory (bridge.child_memory_max)."""
        if self.sandbox is None or self.cgroup is None or self.sandbox.cgroups is None:
            return False
        return self.sandbox.cgroups.oom_kills(self.cgroup) > 0

    async def _release_cgroup(self) -> None:
        """Remove the child's cgroup once its processes are gone (bounded; in a thread: it polls)."""
        if self.sandbox is not None and self.cgroup is not None:
            with anyio.move_on_after(_REAP_WAIT, shield=True):
                await asyncio.to_thread(self.sandbox.stop, self.cgroup)

    def kill(self, reason: str, message: str) -> None:
        """End the child at once (it misbehaved): its group is killed, its calls get ``message``."""
        self._signal(signal.SIGKILL)
        self._end(reason, message)

    def _end(self, reason: str, message: str) -> None:
        """Mark the child gone (once) and fail every call in flight with ``message``."""
        if self.ended is not None:
            return
        self.ended = reason
        calls, self.calls, self.by_token = self.calls, {}, {}
        for call in calls.values():
            call.end("gone", message)
        for task in self.tasks[:2]:  # the readers; _wait_exit reaps the process
            if task is not asyncio.current_task():
                task.cancel()
        self.on_exit(self, reason)

    async def _wait_exit(self) -> None:
        assert self.proc is not None
        code = await self.proc.wait()
        # stdout may still hold the child's last answers, stderr its last words: let the readers
        # finish them (bounded: what the child started may hold the pipes open)
        await asyncio.wait(self.tasks[:2], timeout=1)
        if self.ended is None:
            reason = "stopped" if self.stopping else "exited"
            message = f"the server's process exited (code {code}) while the call was in flight"
            if not self.stopping and self._over_memory():
                reason = "memory"
                message = (
                    "the server's process was killed for using more than bridge.child_memory_max "
                    f"({self.settings.child_memory_max >> 20} MiB); it is started again on the next call"
                )
            if not self.stopping:
                logger.warning(
                    "bridge child %d of %s exited with %s%s",
                    self.pid,
                    self.server_name,
                    code,
                    " (killed for memory)" if reason == "memory" else "",
                    extra=self._log_extra("bridge_child_exited", exit_code=code, reason=reason),
                )
            self._signal(signal.SIGKILL)  # what the child left running in its group
            self._end(reason, message)
        await self._release_cgroup()

    # ---------------------------------------------------------------- reading

    def _protocol_error(self, what: str) -> None:
        logger.error(
            "bridge child %d of %s broke the protocol: %s; killed, to be restarted",
            self.pid,
            self.server_name,
            what,
            extra=self._log_extra("bridge_child_protocol_error", reason=what),
        )
        self.kill("protocol_error", f"the server's process broke the protocol ({what}) and was restarted")

    def _reader_failed(self, stream: str) -> None:
        """A reader ended by an exception of ours: the child ends with it (nobody would read it)."""
        logger.exception(
            "bridge: the %s reader of child %s of %s failed; the child is killed, to be restarted",
            stream,
            self.pid,
            self.server_name,
            extra=self._log_extra("bridge_child_reader_failed"),
        )
        self.kill("reader_failed", "the bridge could not read the server's process, which was restarted")

    async def _read_stdout(self) -> None:
        try:
            await self._read_messages()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._reader_failed("stdout")

    async def _read_messages(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        proc, stdout = self.proc, self.proc.stdout
        limit = self.settings.max_messages_per_second
        while True:
            oversized: tuple[bytes, bytes, int] | None = None
            try:
                line = await stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as eof:
                line = eof.partial  # the last line, without its end; nothing at the end of the stream
                if not line:
                    break
            except asyncio.LimitOverrunError as over:
                line, oversized = b"", await self._skip_line(stdout, over.consumed)
            second = int(time.monotonic())
            count = self.window[1] + 1 if self.window[0] == second else 1
            self.window = (second, count)
            if count > limit:
                self._protocol_error(f"more than {limit} lines in a second")
                return
            if oversized is not None:
                if not self._oversized(*oversized):
                    return
                continue
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except Exception:  # any parse error (RecursionError included: too deeply nested) is the child's
                message = None
            if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
                self._protocol_error("a line that is not a JSON-RPC 2.0 message")
                return
            try:
                await self._dispatch(message)
            except Exception:
                logger.exception("bridge: could not handle a message of child %s", self.pid)
        # stdout ended: the process is exiting (_wait_exit says how), or it closed its stdout and
        # lives on, never to answer again
        with anyio.move_on_after(self.settings.stop_timeout):
            await proc.wait()
        if proc.returncode is None and self.ended is None:
            self._protocol_error("its stdout closed while it kept running")

    async def _skip_line(self, stdout: asyncio.StreamReader, consumed: int) -> tuple[bytes, bytes, int]:
        """Drop a line longer than bridge.max_line_bytes up to its end (``consumed``: what asyncio has
        of it so far), keeping only its first and last _HEAD_BYTES: (head, tail, the line's size)."""
        head = await stdout.read(min(consumed, _HEAD_BYTES))  # at once: the buffer holds `consumed`
        tail, size, todo = b"", len(head), consumed - len(head)
        while True:
            while todo > 0:
                chunk = await stdout.read(min(todo, _STDERR_CHUNK))
                if not chunk:
                    return head, tail, size
                tail = (tail + chunk)[-_HEAD_BYTES:]
                size, todo = size + len(chunk), todo - len(chunk)
            try:
                rest = await stdout.readuntil(b"\n")
            except asyncio.IncompleteReadError as eof:
                return head, (tail + eof.partial)[-_HEAD_BYTES:], size + len(eof.partial)
            except asyncio.LimitOverrunError as over:
                todo = over.consumed
                continue
            return head, (tail + rest)[-_HEAD_BYTES:], size + len(rest) - 1

    def _oversized(self, head: bytes, tail: bytes, size: int) -> bool:
        """A line over bridge.max_line_bytes, skipped. If its first or last bytes say which request it
        answers, that call alone fails and the child serves on (True); if not, a protocol error (False)."""
        limit = self.settings.max_line_bytes
        msg_id = reply_id(head, tail)
        if msg_id is None:
            self._protocol_error(f"a line longer than {limit} bytes")
            return False
        call = self.calls.pop(msg_id, None)
        logger.warning(
            "bridge child %s of %s answered request %d with %d bytes, over bridge.max_line_bytes; "
            "that call failed, the child serves on",
            self.pid,
            self.server_name,
            msg_id,
            size,
            extra=self._log_extra("bridge_child_oversized_reply", bytes=size),
        )
        if call is not None:
            message = f"the server's answer was larger than bridge.max_line_bytes ({limit} bytes)"
            call.end("error", {"code": BRIDGE_ERROR, "message": message})
        return True

    async def _dispatch(self, message: dict[str, Any]) -> None:
        method = message.get("method")
        if method is None:  # a response
            msg_id = message.get("id")
            call = self.calls.pop(msg_id, None) if isinstance(msg_id, int) else None
            if call is None:
                return  # answered after a cancel or a timeout: nobody waits for it any more
            if isinstance(message.get("error"), dict):
                call.end("error", message["error"])
            else:
                result = message.get("result")
                call.end("result", result if isinstance(result, dict) else {})
            return
        if not isinstance(method, str):
            self._protocol_error("a message whose method is not a string")
            return
        if "id" in message:  # a request from the child to us
            msg_id = message["id"]
            if method == "ping":
                await self._send({"jsonrpc": "2.0", "id": msg_id, "result": {}})
            else:
                error = {
                    "code": METHOD_NOT_FOUND,
                    "message": "the bridge does not forward requests to clients",
                }
                await self._send({"jsonrpc": "2.0", "id": msg_id, "error": error})
            return
        params = message.get("params")
        if method == "notifications/progress" and isinstance(params, dict):
            call = self.by_token.get(str(params.get("progressToken")))
            if call is not None:
                call.progress(params)
        elif method == "notifications/message" and isinstance(params, dict):
            logger.debug("bridge child %s: %s", self.pid, str(params.get("data"))[:_STDERR_LINE_MAX])

    async def _read_stderr(self) -> None:
        try:
            await self._read_stderr_lines()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._reader_failed("stderr")

    async def _read_stderr_lines(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        stderr = self.proc.stderr
        budget = self.settings.max_stderr_lines_per_second
        window, logged, dropped = 0, 0, 0
        pending = b""
        while True:
            chunk = await stderr.read(_STDERR_CHUNK)
            if not chunk:
                lines = [pending] if pending else []
            else:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                if len(pending) > _STDERR_LINE_MAX:  # a line without end: log its start, skip the rest
                    lines.append(pending[:_STDERR_LINE_MAX])
                    pending = b""
            for raw in lines:
                text = raw.decode("utf-8", "replace").rstrip()
                if not text:
                    continue
                second = int(time.monotonic())
                if second != window:
                    if dropped:
                        logger.warning(
                            "bridge child %s: %d stderr line(s) dropped",
                            self.pid,
                            dropped,
                            extra=self._log_extra("bridge_child_stderr_dropped"),
                        )
                    window, logged, dropped = second, 0, 0
                if logged >= budget:
                    dropped += 1
                    continue
                logged += 1
                logger.info(
                    "%s",
                    text[:_STDERR_LINE_MAX],
                    extra=self._log_extra("bridge_child_stderr"),
                )
            if not chunk:
                return

    # ---------------------------------------------------------------- writing

    async def _send(self, message: dict[str, Any]) -> None:
        if self.proc is None or self.proc.stdin is None or self.ended is not None:
            raise ChildGone("the server's process is gone")
        data = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        try:
            self.proc.stdin.write(data)
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ChildGone(f"the server's process stopped reading ({exc.__class__.__name__})") from None

    def _cancel(self, msg_id: int, reason: str) -> None:
        """notifications/cancelled for a request the child was sent (no wait: the write is buffered)."""
        if self.proc is None or self.proc.stdin is None or self.ended is not None:
            return
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": msg_id, "reason": reason},
        }
        with contextlib.suppress(Exception):
            self.proc.stdin.write(json.dumps(note).encode() + b"\n")

    async def _request_raw(self, method: str, params: Any) -> dict[str, Any]:
        """A request without progress: the result dict, or MCPError with the child's error."""
        return await self.request(method, params, None)

    async def request(
        self,
        method: str,
        params: Mapping[str, Any] | None,
        progress: Callable[[Mapping[str, Any]], Awaitable[None]] | None,
        principal: str | None = None,
    ) -> dict[str, Any]:
        """Send a request, pass its progress on, return its result; raise MCPError with the child's
        error, ChildGone if the child ends first. Cancelled (by the client, or by a deadline around
        it), it tells the child with notifications/cancelled. ``principal`` (None: the bridge's own
        requests, or no auth) counts against bridge.max_calls_per_principal, so that one token
        cannot take every slot of a shared child."""
        if self.ended is not None:
            raise ChildGone("the server's process is gone")
        held = self.by_principal.get(principal, 0) if principal is not None else 0
        if held >= self.settings.max_calls_per_principal:
            metrics.bridge_refused(self.server_name, "max_calls_per_principal").inc()
            raise _error(
                f"this caller has {held} requests in flight on the server's process "
                "(bridge.max_calls_per_principal); retry when one is answered"
            )
        if len(self.calls) >= self.settings.max_calls_per_child:
            metrics.bridge_refused(self.server_name, "max_calls_per_child").inc()
            raise _error(
                f"the server's process has {len(self.calls)} requests in flight "
                "(bridge.max_calls_per_child); retry later"
            )
        self.next_id += 1
        msg_id = self.next_id
        call = _Call()
        out_params = params_for_child(params, self.protocol_version)
        meta = out_params.get("_meta") if out_params is not None else None
        if isinstance(meta, dict) and "progressToken" in meta:
            meta = dict(meta)
            if progress is not None:
                token = f"b{msg_id}"
                meta["progressToken"] = token
                self.by_token[token] = call
            else:
                del meta["progressToken"]
            out_params["_meta"] = meta  # type: ignore[index]
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if out_params is not None:
            message["params"] = out_params
        self.calls[msg_id] = call
        if principal is not None:
            self.by_principal[principal] = held + 1
        self.last_used = time.monotonic()
        answered = False
        try:
            await self._send(message)
            while True:
                kind, payload = await call.queue.get()
                if kind == "progress":
                    if progress is not None:
                        await progress(payload)
                    continue
                answered = True
                if kind == "result":
                    return payload
                if kind == "error":
                    code = payload.get("code")
                    raise MCPError(
                        code=code if isinstance(code, int) else BRIDGE_ERROR,
                        message=str(payload.get("message", "error"))[:4096],
                        data=payload.get("data"),
                    )
                raise ChildGone(payload)
        except BaseException:
            if not answered:
                self._cancel(msg_id, _CANCEL_REASON)
            raise
        finally:
            self.calls.pop(msg_id, None)
            for token in [t for t, c in self.by_token.items() if c is call]:
                del self.by_token[token]
            if principal is not None:
                left = self.by_principal.get(principal, 0) - 1
                if left > 0:
                    self.by_principal[principal] = left
                else:
                    self.by_principal.pop(principal, None)
            self.last_used = time.monotonic()


class _Slot:
    """A pool key's place: its child (if any), the lock starting one, the backoff after failures."""

    __slots__ = ("child", "failures", "last_used", "lock", "not_before")

    def __init__(self) -> None:
        self.child: _Child | None = None
        self.lock = asyncio.Lock()
        self.failures = 0
        self.not_before = 0.0
        self.last_used = time.monotonic()

    @property
    def busy(self) -> bool:
        return self.lock.locked() or (self.child is not None and self.child.busy > 0)

    @property
    def idle_since(self) -> float:
        return max(self.last_used, self.child.last_used if self.child is not None else 0.0)


class ChildPool:
    """The children of one instance, by principal (or one, shared); started on demand, reaped when idle."""

    def __init__(self, settings: BridgeSettings, server_name: str, issuer: str | None = None):
        self.settings = settings
        self.server_name = server_name
        # bridge.sandbox bubblewrap: each child in a sandbox of its pool key (sandbox.py)
        self.sandbox: Sandbox | None = (
            Sandbox(
                kind=settings.sandbox,
                command=settings.command,
                state_dir=settings.state_dir,
                read_only=settings.sandbox_read_only or _default_read_only(settings.command),
                issuer=issuer,
                memory_max=settings.child_memory_max,
                tasks_max=settings.child_tasks_max,
            )
            if settings.sandbox == "bubblewrap"
            else None
        )
        self.slots: dict[str, _Slot] = {}
        self.reaper: asyncio.Task[None] | None = None
        self.stopping: set[asyncio.Task[None]] = set()
        self.starting: set[_Child] = set()  # launched (or about to be), not yet in a slot
        self.closed = False
        self.capabilities: dict[str, Any] | None = None  # from the first child's initialize
        self.init_result: dict[str, Any] = {}

    def key(self, principal: str | None) -> str:
        if self.settings.isolation == SHARED:
            return SHARED
        return principal or ANONYMOUS

    @property
    def running(self) -> int:
        return sum(1 for slot in self.slots.values() if slot.child is not None and slot.child.alive)

    async def start(self) -> None:
        self.reaper = asyncio.get_running_loop().create_task(self._reap())

    async def aclose(self) -> None:
        """Shutdown: stop every child (in parallel), those still starting too, bounded by
        bridge.stop_timeout twice plus a little."""
        self.closed = True
        if self.reaper is not None:
            self.reaper.cancel()
        children = [slot.child for slot in self.slots.values() if slot.child is not None and slot.child.alive]
        children += self.starting
        self.slots.clear()
        await asyncio.gather(
            *(child.stop("shutdown") for child in children), *self.stopping, return_exceptions=True
        )

    # ---------------------------------------------------------------- children

    def _backoff(self, failures: int) -> float:
        return min(self.settings.restart_backoff_max, _BACKOFF_START * 2 ** max(failures - 1, 0))

    def _on_exit(self, slot: _Slot, child: _Child, reason: str) -> None:
        if reason in ("stopped", "idle", "evicted", "shutdown", "cancelled"):
            return
        now = time.monotonic()
        if now - child.started_at > max(self.settings.restart_backoff_max, 10.0):
            slot.failures = 0  # it ran well for a while: this is a first failure again
        slot.failures += 1
        slot.not_before = now + self._backoff(slot.failures)
        metrics.bridge_restarts(self.server_name, reason).inc()

    def _make_room(self) -> None:
        """At bridge.max_children: stop the child idle longest, or refuse if all are busy."""
        if len(self.slots) < self.settings.max_children:
            return
        idle = [(key, slot) for key, slot in self.slots.items() if not slot.busy]
        if not idle:
            metrics.bridge_refused(self.server_name, "max_children").inc()
            raise _error(
                f"the server runs its limit of {self.settings.max_children} processes "
                "(bridge.max_children), each with a call in flight; retry later"
            )
        # a slot without a live child first, else the one idle longest
        key, slot = min(
            idle, key=lambda item: (item[1].child is not None and item[1].child.alive, item[1].idle_since)
        )
        del self.slots[key]
        if slot.child is not None and slot.child.alive:
            self._stop_later(slot.child, "evicted")

    def _stop_later(self, child: _Child, reason: str) -> None:
        task = asyncio.get_running_loop().create_task(child.stop(reason))
        self.stopping.add(task)
        task.add_done_callback(self.stopping.discard)

    async def child(self, key: str) -> _Child:
        """The key's child, started if need be (after the backoff of its failures)."""
        if self.closed:
            raise _error("the server is shutting down; retry the call")
        slot = self.slots.get(key)
        if slot is None:
            self._make_room()
            slot = self.slots[key] = _Slot()
        slot.last_used = time.monotonic()
        child = slot.child
        if child is not None and child.alive:
            return child
        async with slot.lock:
            child = slot.child
            if child is not None and child.alive:
                return child
            wait = slot.not_before - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.closed:
                raise _error("the server is shutting down; retry the call")
            child = _Child(
                self.settings, self.server_name, lambda c, why: self._on_exit(slot, c, why), key, self.sandbox
            )
            self.starting.add(child)  # aclose() stops it too from here on
            try:
                await child.start()
            except ChildGone as gone:
                raise _error(str(gone)) from None
            except SandboxError as exc:  # no bwrap, no delegated cgroup: says what to fix
                self._on_exit(slot, child, "startup_failed")
                logger.error(
                    "bridge: cannot sandbox %s: %s",
                    self.settings.command[0],
                    exc,
                    extra={"event": "bridge_child_start_failed", "server": self.server_name},
                )
                raise _error("the server's process could not be started in its sandbox") from None
            except OSError as exc:  # the executable went away, or cannot be run
                self._on_exit(slot, child, "startup_failed")
                logger.error(
                    "bridge: cannot start %s: %s",
                    self.settings.command[0],
                    exc,
                    extra={"event": "bridge_child_start_failed", "server": self.server_name},
                )
                raise _error(
                    f"the server's process could not be started ({exc.__class__.__name__})"
                ) from None
            finally:
                self.starting.discard(child)
                child.launched.set()  # a stop() waiting for the launch waits no more
            if slot is not self.slots.get(key) or self.closed:  # evicted or shut down meanwhile
                if not child.stopping:  # aclose() stops it already
                    self._stop_later(child, "evicted" if not self.closed else "shutdown")
                raise _error("the server's process was stopped while starting; retry the call")
            slot.child = child
            if self.capabilities is None:
                caps = child.init_result.get("capabilities")
                self.capabilities = forwarded_capabilities(caps if isinstance(caps, dict) else {})
                self.init_result = child.init_result
            return child

    async def _reap(self) -> None:
        interval = min(max(self.settings.idle_timeout / 4, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, slot in list(self.slots.items()):
                if slot.busy or now - slot.idle_since < self.settings.idle_timeout:
                    continue
                del self.slots[key]
                if slot.child is not None and slot.child.alive:
                    self._stop_later(slot.child, "idle")

    # ---------------------------------------------------------------- requests

    async def forward(
        self,
        principal: str | None,
        method: str,
        params: Mapping[str, Any] | None,
        progress: Callable[[Mapping[str, Any]], Awaitable[None]] | None,
    ) -> dict[str, Any]:
        """One request to the principal's child, bounded as a whole by bridge.call_timeout."""
        timeout = self.settings.call_timeout
        try:
            with anyio.fail_after(timeout):
                child = await self.child(self.key(principal))
                return await child.request(method, params, progress, principal)
        except TimeoutError:
            raise _error(f"the server did not answer within {timeout:g} s (bridge.call_timeout)") from None
        except ChildGone as gone:
            raise _error(str(gone)) from None


def _default_read_only(command: tuple[str, ...]) -> tuple[str, ...]:
    """Without bridge.sandbox_read_only: the executable's directory, unless /usr (always bound) has it."""
    if not command or not os.path.isabs(command[0]):
        return ()
    folder = os.path.dirname(command[0])
    return () if folder == "/usr" or folder.startswith("/usr/") else (folder,)


def forwarded_capabilities(child: Mapping[str, Any]) -> dict[str, Any]:
    """The child's capabilities, less what the bridge does not forward (list_changed, subscribe, ...)."""
    out: dict[str, Any] = {}
    for name in _CAPABILITIES:
        value = child.get(name)
        if isinstance(value, dict):
            out[name] = {k: v for k, v in value.items() if k not in ("listChanged", "subscribe")}
    return out


def _principal(ctx: Any) -> str | None:
    request = ctx.request
    state = getattr(request, "scope", {}).get("state", {}) if request is not None else {}
    return state.get("principal") if isinstance(state, dict) else None


def build_bridge_server(name: str, pool: ChildPool) -> Server[Any]:
    """A low-level Server whose every request is the child's to answer."""

    def forwarder(method: str) -> Callable[[Any, Any], Awaitable[dict[str, Any]]]:
        async def forward(ctx: Any, params: Any) -> dict[str, Any]:
            # The client's params as sent, unless the handler is called for another request than the
            # one in ctx (ToolObserver lists the tools for its labels from inside a tools/call).
            raw = (
                ctx.params
                if ctx.method == method
                else params.model_dump(by_alias=True, exclude_none=True, mode="json")
            )
            result = await pool.forward(_principal(ctx), method, raw, lambda p: _progress(ctx, p))
            version = getattr(ctx, "protocol_version", None)
            return result_for_client(method, result, version, server_info())

        return forward

    async def _progress(ctx: Any, params: Mapping[str, Any]) -> None:
        value = params.get("progress")
        if isinstance(value, int | float) and not isinstance(value, bool):
            total = params.get("total")
            message = params.get("message")
            await ctx.session.report_progress(
                value,
                total if isinstance(total, int | float) and not isinstance(total, bool) else None,
                message if isinstance(message, str) else None,
            )

    def server_info() -> dict[str, str]:
        """This server's name and the child's version: what the handshake's serverInfo says."""
        info = pool.init_result.get("serverInfo")
        version = info.get("version") if isinstance(info, dict) else None
        return {"name": name, "version": version if isinstance(version, str) else __version__}

    async def discover(ctx: Any, _params: Any) -> types.DiscoverResult:
        await pool.child(pool.key(_principal(ctx)))
        return types.DiscoverResult(
            supported_versions=list(MODERN_PROTOCOL_VERSIONS),
            capabilities=types.ServerCapabilities.model_validate(pool.capabilities or {}),
            instructions=pool.init_result.get("instructions"),
            _meta={SERVER_INFO_META_KEY: server_info()},
        )

    server: Server[Any] = Server(name, version=__version__)
    for method, params_type in FORWARDED:
        server.add_request_handler(method, params_type, forwarder(method))
    server.add_request_handler("server/discover", types.RequestParams, discover)

    async def initialize(ctx: Any, call_next: Any) -> Any:
        """The handshake answers with the child's capabilities (starting the caller's child)."""
        if ctx.method != "initialize":
            return await call_next(ctx)
        out = await call_next(ctx)
        try:
            with anyio.fail_after(pool.settings.startup_timeout + pool.settings.restart_backoff_max):
                child = await pool.child(pool.key(_principal(ctx)))
            init = child.init_result
        except (MCPError, TimeoutError):
            if pool.capabilities is None:
                raise
            init = pool.init_result  # a child of this server answered before: its capabilities hold
        caps = init.get("capabilities")
        out = dict(out)
        out["capabilities"] = forwarded_capabilities(caps if isinstance(caps, dict) else {})
        if isinstance(init.get("instructions"), str):
            out["instructions"] = init["instructions"]
        info = init.get("serverInfo")
        if isinstance(info, dict) and isinstance(info.get("version"), str):
            out["serverInfo"] = {**out.get("serverInfo", {}), "version": info["version"]}
        return out

    server.middleware.append(initialize)
    return server


__all__ = ["ChildPool", "build_bridge_server", "child_environment", "forwarded_capabilities"]
