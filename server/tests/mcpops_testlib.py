"""Real parts for the tests: redis-server, an OAuth issuer over HTTP, mcpops-server subprocesses."""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx2
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REDIS_BIN = "/usr/bin/redis-server"
PYTHON = sys.executable
FIXTURES = Path(__file__).parent / "fixtures"
# Subprocesses run the server code beside these tests (not whatever checkout the venv was installed from),
# and the fixtures' example apps.
SERVER_SRC = Path(__file__).resolve().parent.parent
PYTHONPATH = os.pathsep.join((str(SERVER_SRC), str(FIXTURES)))
SERVER_DIR = SERVER_SRC  # the name some tests use


# A raw JSON-RPC initialize, for tests that speak HTTP below the SDK's client
# (session headers, status codes); the 2025-06-18 protocol still uses Mcp-Session-Id.
INIT_REQUEST = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "0"},
    },
}
ACCEPT_BOTH = "application/json, text/event-stream"


def post_body(url: str, body: bytes, token: str, **headers: str) -> httpx2.Response:
    """POST raw bytes to /mcp as a client would send JSON-RPC, with a bearer token."""
    return httpx2.post(
        url,
        content=body,
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": ACCEPT_BOTH,
            "Content-Type": "application/json",
            **headers,
        },
    )


def jsonrpc_answer(resp: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC response in a POST's answer, whether a JSON body or an SSE stream."""
    if resp.headers.get("content-type", "").startswith("application/json"):
        return resp.json()
    for line in resp.text.splitlines():
        if line.startswith("data:"):
            msg = json.loads(line[5:])
            if "id" in msg and ("result" in msg or "error" in msg):
                return msg
    raise AssertionError(f"no JSON-RPC response in: {resp.status_code} {resp.text[:500]}")


class RawSession:
    """One MCP session in plain HTTP requests, for tests about statuses, bytes and session counts."""

    def __init__(self, url: str, token: str | None = None, client: httpx2.Client | None = None):
        self.url = url
        self.client = client or httpx2.Client(timeout=30)
        self.headers = {"Accept": ACCEPT_BOTH}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.session_id: str | None = None
        self._next_id = 1

    def open(self, *, announce: bool = True, **headers: str) -> httpx2.Response:
        """Send initialize; on success keep the session id and (by default) send notifications/initialized."""
        r = self.client.post(self.url, json=INIT_REQUEST, headers={**self.headers, **headers})
        if r.status_code == 200:
            self.session_id = r.headers.get("mcp-session-id")
            if self.session_id:
                self.headers["Mcp-Session-Id"] = self.session_id
            self.headers["Mcp-Protocol-Version"] = INIT_REQUEST["params"]["protocolVersion"]
            if announce:
                n = self.client.post(
                    self.url,
                    json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                    headers=self.headers,
                )
                assert n.status_code == 202, (n.status_code, n.text)
        return r

    def post(self, method: str, params: dict[str, Any] | None = None) -> httpx2.Response:
        self._next_id += 1
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": self._next_id, "method": method}
        if params is not None:
            body["params"] = params
        return self.client.post(self.url, json=body, headers=self.headers)

    def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        r = self.post(method, params)
        assert r.status_code == 200, (r.status_code, r.text[:500])
        return jsonrpc_answer(r)

    def close(self) -> int:
        """End the session (DELETE); returns the status."""
        return self.client.delete(self.url, headers=self.headers).status_code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; return its value. Raises AssertionError at the deadline."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            v = predicate()
            if v:
                return v
        except Exception as exc:
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last_exc!r})")


# --------------------------------------------------------------------------------------- redis


class ThrowawayCA:
    """A throwaway certificate authority; certificates it issues are written as PEM files in ``workdir``."""

    def __init__(self, workdir: Path, name: str):
        self.workdir = workdir
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_file = workdir / f"{name}.crt"
        self.cert_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem: str, *names: str) -> tuple[Path, Path]:
        """A leaf certificate for ``names`` (DNS names or IP addresses), EKU serverAuth and clientAuth
        (as the deployment's host certificates); returns (cert file, key file)."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt_names: list[x509.GeneralName] = []
        for name in names:
            try:
                alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt_names.append(x509.DNSName(name))
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else stem)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = self.workdir / f"{stem}.crt", self.workdir / f"{stem}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_file.chmod(0o600)
        return cert_file, key_file


@dataclass(frozen=True)
class RedisTLS:
    """What a TLS-only redis-server is started with: its certificate, the CA its clients' certificates
    must come from (``tls-auth-clients yes``), and a client certificate the tests' own pings use."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert_file: Path
    client_key_file: Path


class RedisServer:
    def __init__(self, workdir: Path, tls: RedisTLS | None = None, bind: tuple[str, ...] = ("127.0.0.1",)):
        self.port = free_port()
        self.workdir = workdir
        self.tls = tls
        self.bind = bind
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as raw:
            s: socket.socket = raw
            if self.tls is not None:
                context = ssl.create_default_context(cafile=str(self.tls.ca_file))
                context.load_cert_chain(self.tls.client_cert_file, self.tls.client_key_file)
                s = context.wrap_socket(raw, server_hostname="127.0.0.1")
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls is None:
            listen: tuple[str, ...] = ("--port", str(self.port))
        else:
            listen = (
                *("--port", "0", "--tls-port", str(self.port)),
                *("--tls-cert-file", str(self.tls.cert_file), "--tls-key-file", str(self.tls.key_file)),
                *("--tls-ca-cert-file", str(self.tls.ca_file), "--tls-auth-clients", "yes"),
            )
        self.proc = subprocess.Popen(
            [
                *(REDIS_BIN, *listen, "--bind", *self.bind),
                *("--save", "", "--appendonly", "no", "--dir", str(self.workdir)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._ping, 10, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """Redis hangs (SIGSTOP): connections are accepted by the kernel, nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)


# --------------------------------------------------------------------------------------- issuer


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Issuer:
    """An authorization server stand-in: RFC 8414 metadata + JWKS over HTTP, signing keys in memory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rogue_key = ec.generate_private_key(ec.SECP256R1())  # never published
        self.extra_keys: list[tuple[str, Any]] = []  # (kid, EC private key) published after a rotation
        self.oidc_only = False  # serve only OpenID Connect discovery (path-appended form)
        self.withdrawn: set[str] = set()  # kids no longer published (a rotated-out or revoked key)
        self.jwks_cache_control: str | None = None  # Cache-Control header of the JWKS response
        self.jwks_hits = 0
        self.meta_hits = 0
        self._server: ThreadingHTTPServer | None = None

    def jwks(self) -> dict[str, Any]:
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec_key.public_key()))
        ec_jwk.update(kid="ec1", use="sig", alg="ES256")
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa_key.public_key()))
        rsa_jwk.update(kid="rsa1", use="sig")
        keys = [ec_jwk, rsa_jwk]
        for kid, k in self.extra_keys:
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key()))
            jwk.update(kid=kid, use="sig")
            keys.append(jwk)
        return {"keys": [k for k in keys if k["kid"] not in self.withdrawn]}

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "authorization_endpoint": self.url + "/authorize",
            "token_endpoint": self.url + "/token",
            "jwks_uri": self.url + "/jwks.json",
            "response_types_supported": ["code"],
        }

    def start(self) -> None:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                meta_path = (
                    "/.well-known/openid-configuration"
                    if issuer.oidc_only
                    else "/.well-known/oauth-authorization-server"
                )
                extra: list[tuple[str, str]] = []
                if self.path == meta_path:
                    issuer.meta_hits += 1
                    body = json.dumps(issuer.metadata()).encode()
                elif self.path == "/jwks.json":
                    issuer.jwks_hits += 1
                    body = json.dumps(issuer.jwks()).encode()
                    if issuer.jwks_cache_control:
                        extra.append(("cache-control", issuer.jwks_cache_control))
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for name, value in extra:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def write_jwks(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()))
        return path

    def claims(self, audience: str, **over: Any) -> dict[str, Any]:
        now = int(time.time())
        c = {
            "iss": self.url,
            "sub": "user-" + uuid.uuid4().hex[:8],
            "aud": audience,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "scope": "mcp",
            "client_id": "test-client",
        }
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def token(
        self, audience: str, /, *, alg: str = "ES256", kid: str | None = None, key: Any = None, **over: Any
    ) -> str:
        if key is None:
            key = self.rsa_key if alg.startswith(("RS", "PS")) else self.ec_key
        if kid is None:
            kid = "rsa1" if alg.startswith(("RS", "PS")) else "ec1"
        return jwt.encode(self.claims(audience, **over), key, algorithm=alg, headers={"kid": kid})

    def token_alg_none(self, aud: str) -> str:
        header = _b64u(json.dumps({"alg": "none", "typ": "JWT", "kid": "ec1"}).encode())
        return f"{header}.{_b64u(json.dumps(self.claims(aud)).encode())}."

    def token_hs256_with_public_key(self, aud: str) -> str:
        """The classic key-confusion attack: HMAC keyed with the RSA public key's PEM."""
        pem = self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa1"}).encode())
        payload = _b64u(json.dumps(self.claims(aud)).encode())
        sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64u(sig)}"


# --------------------------------------------------------------------------------------- server


class ServerProc:
    """One mcpops-server instance in a subprocess, its log in a file."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str], port: int | None = None):
        self.name = name
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{name}.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": PYTHONPATH,
            "MCP_SERVER_PORT": str(self.port),
            "MCPOPS_CONFIG": str(workdir / "empty.yaml"),
            "LOG_LEVEL": "INFO",
            **env,
        }
        (workdir / "empty.yaml").write_text("{}\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.scheme = "https" if env.get("TLS_CERT_FILE") else "http"

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return self.base + "/mcp"

    def start(self, wait: bool = True) -> ServerProc:
        env = dict(self.env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "mcpops_server.cli", "serve"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        if wait:
            self.wait_ready()
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def fail(self, why: str) -> None:
        raise AssertionError(f"{self.name}: {why}\n----- server output -----\n{self.log_text()[-6000:]}")

    def wait_ready(self, timeout: float = 30) -> None:
        verify = self.env.get("TEST_CA_FILE", True)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self.fail(f"exited with {self.proc.returncode} during start-up")
            try:
                httpx2.get(self.base + "/health", timeout=1, verify=verify)
            except httpx2.TransportError:
                return False
            return True

        try:
            wait_for(up, timeout, f"{self.name} to listen")
        except AssertionError as exc:
            if "server output" in str(exc):
                raise
            self.fail(str(exc))

    def stop(self, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                self.fail("did not stop within the graceful timeout")
        rc = self.proc.returncode
        self.proc = None
        self._log.close()
        return rc

    def metric(self, text: str, name: str, **labels: str) -> float:
        """Read one sample from Prometheus text (0 when absent)."""
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            if _canon(key) == want:
                return float(value)
        return 0.0


@contextlib.contextmanager
def running(*procs: ServerProc) -> Iterator[None]:
    """Start the instances together (start-up is mostly imports: overlap it), stop them all after."""
    try:
        for p in procs:
            p.start(wait=False)
        for p in procs:
            p.wait_ready()
        yield
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.stop()


def _canon(key: str) -> str:
    if "{" not in key:
        return key
    name, _, rest = key.partition("{")
    parts = sorted(p for p in rest.rstrip("}").split(",") if p)
    return name + "{" + ",".join(parts) + "}"
