"""Principal affinity through a real nginx: the role's nginx.conf, its njs script and real tokens.

A stdio server with isolation per_principal keeps a child per principal on each instance, so every
call of one principal must reach the same instance, whether or not the client keeps a session. The
role's rendering for an inventory with such a server on two app "hosts" (two loopback ports) and,
for the move test, on three, runs in nginx (Debian's binary and njs module, as root, in the
foreground, on loopback ports only) in front of small HTTP backends started here that answer with
their own port. Tokens are real ES256 JWTs of the runtime's lab issuer (mcpops_server.devissuer).
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mcpops_server import devissuer
from test_nginx_conf import ROOT, _nginx, localize, nginx_workdir, njs_module, render

pytestmark = pytest.mark.skipif(
    _nginx() is None or njs_module() is None,
    reason="no nginx with njs (apt-get install nginx libnginx-mod-http-js, or MCPOPS_NGINX_BIN)",
)

_spec = importlib.util.spec_from_file_location("mcp_instances", ROOT / "plugins/filter/mcp_instances.py")
instances_plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(instances_plugin)

ISSUER = "https://login.example.com"
AUD = "https://mcp.example.com/files/mcp"
# Two load balancers rendered in one run: lb2 routes to the app hosts of group two (app1, app2),
# lb3 to those of group three (the same two and app3). One stdio server "files", per_principal by
# default, one port per app host; plain HTTP to the instances (mcp_server_tls_enabled: false).
INVENTORY = """
all:
  vars:
    nginx_server_name: mcp.example.com
    nginx_tls_source: private_ca
    nginx_limit_req_rate: 100000r/s
    nginx_limit_conn: 1000
    # room for headers over the script's own 8 KiB bound (nginx's default line limit is 8k)
    nginx_extra_config: "large_client_header_buffers 4 16k;"
  children:
    mcp_lb:
      hosts:
        lb2: {nginx_app_group: two, nginx_http_port: %(h2)d, nginx_https_port: %(s2)d}
        lb3: {nginx_app_group: three, nginx_http_port: %(h3)d, nginx_https_port: %(s3)d}
    three:
      children:
        two:
          hosts:
%(two)s
      hosts:
%(three)s
"""
APP = """            %(name)s:
              ansible_host: 127.0.0.1
              mcp_server_tls_enabled: false
              mcp_server_servers:
                - {name: files, kind: stdio, executable: /usr/local/bin/files, ports: [%(port)d]}
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Backend:
    """An HTTP server on a loopback port that answers every request with that port, and records the
    path and the Mcp-Session-Id of what it got."""

    def __init__(self, port: int):
        self.port = port
        self.seen: list[tuple[str, str | None]] = []
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as nginx's upstream connections are

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(min(length, 1 << 20))
                backend.seen.append((self.path, self.headers.get("Mcp-Session-Id")))
                body = json.dumps({"port": backend.port}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class Nginx:
    """nginx in the foreground with a prefix of its own, started and stopped by the test."""

    def __init__(self, work: Path, conf_text: str, port: int):
        crt, key = nginx_workdir(work)
        conf = localize(conf_text, work, crt, key, user="root" if os.geteuid() == 0 else "")
        # loopback only: the rendering listens on every IPv4 and IPv6 address
        conf = re.sub(r"\n\t\tlisten \[::\]:[^\n]*", "", conf)
        conf = re.sub(r"\n\t\tlisten (\d+)", r"\n\t\tlisten 127.0.0.1:\1", conf)
        assert "listen [::]" not in conf and f"listen 127.0.0.1:{port} ssl" in conf
        self.work, self.port = work, port
        self.error_log = work / "logs" / "error.log"
        self.conf = work / "nginx.conf"
        self.conf.write_text(conf)
        self.proc = subprocess.Popen(
            [_nginx(), "-p", str(work), "-e", str(self.error_log), "-c", str(self.conf), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.proc.stderr.read()} {self._log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(
                        f"nginx did not listen on {port} within 15 s: {self._log()}"
                    ) from None
                time.sleep(0.05)

    def _log(self) -> str:
        return self.error_log.read_text() if self.error_log.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stderr.close()


class Client:
    """One kept-alive HTTPS connection to an nginx; call() returns (status, backend port or None)."""

    def __init__(self, port: int):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # the test's own throw-away certificate
        self.port, self.ctx = port, ctx
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)

    def call(self, authorization: str | None = None, session: str | None = None) -> tuple[int, int | None]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if authorization is not None:
            headers["Authorization"] = authorization
        if session is not None:
            headers["Mcp-Session-Id"] = session
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        try:
            self.conn.request("POST", "/files/mcp", body=body, headers=headers)
            resp = self.conn.getresponse()
        except (http.client.HTTPException, OSError):
            self.conn.close()  # nginx closed it (after a 400, say): once more on a new connection
            self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)
            self.conn.request("POST", "/files/mcp", body=body, headers=headers)
            resp = self.conn.getresponse()
        data = resp.read()
        if resp.getheader("Connection", "").lower() == "close":
            self.conn.close()
        if resp.status != 200:
            return resp.status, None
        return resp.status, json.loads(data)["port"]

    def close(self):
        self.conn.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Three backends, nginx for two app hosts (lb2) and for three (lb3), and a token issuer."""
    tmp = tmp_path_factory.mktemp("affinity")
    h2, s2, h3, s3, p1, p2, p3 = _free_ports(7)
    ports = {"app1": p1, "app2": p2, "app3": p3}
    inventory = tmp / "inventory.yml"
    inventory.write_text(
        INVENTORY
        % {
            "h2": h2,
            "s2": s2,
            "h3": h3,
            "s3": s3,
            "two": APP % {"name": "app1", "port": p1} + APP % {"name": "app2", "port": p2},
            "three": APP % {"name": "app3", "port": p3},
        }
    )
    rendered = render(tmp / "render", inventory)
    issuer = tmp / "issuer"
    devissuer.init(str(issuer), ISSUER)
    backends, servers = [], []
    try:
        for port in ports.values():
            backends.append(Backend(port))
        two = Nginx(tmp / "nginx2", rendered["lb2/all.conf"], s2)
        servers.append(two)
        three = Nginx(tmp / "nginx3", rendered["lb3/all.conf"], s3)
        servers.append(three)
        yield {
            "two": Client(s2),
            "three": Client(s3),
            "ports": ports,
            "backends": backends,
            "nginx": servers,
            "conf": rendered["lb2/all.conf"],
            # a signed token of principal (ISSUER, sub); extra claims win (a sub that is no string)
            "token": lambda sub, extra=None: devissuer.token(str(issuer), aud=AUD, sub=sub, extra=extra),
        }
    finally:
        for server in servers:
            server.stop()
        for backend in backends:
            backend.stop()


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_the_rendering_hashes_files_by_principal(lab):
    # what the requests below go through: the map's default is the upstream hashed by principal
    conf = lab["conf"]
    assert "default mcpops_files_principal;" in conf
    assert "hash $mcpops_principal consistent;" in conf
    assert "js_set $mcpops_principal mcpops_principal.principal;" in conf


def test_fifty_sessionless_calls_of_one_principal_reach_one_instance(lab):
    two = lab["two"]
    # a fresh token for every call (new jti, iat, exp), as a client that refreshes its token has
    got = {two.call(bearer(lab["token"]("alice"))) for _ in range(50)}
    assert len(got) == 1, f"one principal reached several instances: {got}"
    status, port = got.pop()
    assert status == 200 and port in (lab["ports"]["app1"], lab["ports"]["app2"])
    # the instance got the MCP request at /mcp, with no session
    backend = next(b for b in lab["backends"] if b.port == port)
    assert ("/mcp", None) in backend.seen


def test_many_principals_spread_over_both_instances(lab):
    two = lab["two"]
    counts: dict[int, int] = {}
    for n in range(300):
        status, port = two.call(bearer(lab["token"](f"user-{n}")))
        assert status == 200
        counts[port] = counts.get(port, 0) + 1
    assert set(counts) == {lab["ports"]["app1"], lab["ports"]["app2"]}
    assert min(counts.values()) >= 300 * 0.2, f"principals spread unevenly: {counts}"


def test_a_session_id_still_reaches_the_instance_that_owns_the_session(lab):
    two, ports = lab["two"], lab["ports"]
    _, alice = two.call(bearer(lab["token"]("alice")))
    # a session minted by the other instance (its route id is the prefix of the session id)
    other = next(name for name in ("app1", "app2") if ports[name] != alice)
    session = f"{instances_plugin.route_id(other, ports[other])}.{os.urandom(16).hex()}"
    for _ in range(5):
        assert two.call(bearer(lab["token"]("alice")), session=session) == (200, ports[other])
    backend = next(b for b in lab["backends"] if b.port == ports[other])
    assert ("/mcp", session) in backend.seen
    # a session id that names no instance: the principal's instance (an instance answers it 404)
    assert two.call(bearer(lab["token"]("alice")), session="nobody-1." + "0" * 32) == (200, alice)


def test_a_third_instance_takes_about_a_third_of_the_principals_and_only_those_move(lab):
    subs = [f"move-{n}" for n in range(300)]
    before = {s: lab["two"].call(bearer(lab["token"](s)))[1] for s in subs}
    after = {s: lab["three"].call(bearer(lab["token"](s)))[1] for s in subs}
    moved = [s for s in subs if before[s] != after[s]]
    assert 0.15 * 300 <= len(moved) <= 0.55 * 300, f"{len(moved)} of 300 principals moved"
    # consistent hashing: a principal moves to the new instance or stays where it was
    assert {after[s] for s in moved} == {lab["ports"]["app3"]}


def test_unusable_tokens_fall_back_to_the_client_address_and_still_get_an_answer(lab):
    two, token = lab["two"], lab["token"]
    status, by_address = two.call()  # no token at all: the client address picks the instance
    assert status == 200
    # a principal whose own instance is the other one, to tell the two apart
    sub = next(f"far-{n}" for n in range(200) if two.call(bearer(token(f"far-{n}")))[1] != by_address)
    header, payload, signature = token(sub).split(".")
    oversized = bearer(token(sub, {"pad": "x" * 9000}))
    assert 8192 < len(oversized) < 16000
    unusable = [
        "Bearer",
        "Bearer not-a-jwt",
        "Basic dXNlcjpwYXNz",
        f"Bearer {header}.!!!.{signature}",
        f"Bearer {header}.bm90IGpzb24.{signature}",  # "not json"
        f"Bearer {header}.WzEsMl0.{signature}",  # [1,2]: not an object
        f"Bearer {header}.bnVsbA.{signature}",  # null
        f"Bearer {header}.{payload}",  # two parts
        bearer(token(sub, {"sub": 5})),  # a sub that is not a string
        bearer(token(sub, {"sub": ""})),
        oversized,  # over the script's 8 KiB bound: not even parsed
    ]
    for authorization in unusable:
        assert two.call(authorization) == (200, by_address), authorization[:60]
    # over nginx's own header limit: an answer all the same (400), and nginx keeps serving
    assert two.call(bearer("x" * 20000))[0] == 400
    assert two.call(bearer(token(sub)))[1] != by_address
    # the script never threw (njs would log an exception and leave the key empty)
    for server in lab["nginx"]:
        log = server.error_log.read_text()
        assert "js exception" not in log and "[error]" not in log.replace(
            "client sent too long header", ""
        ), log
