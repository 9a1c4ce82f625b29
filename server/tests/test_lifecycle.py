"""TLS from uvicorn, sd_notify READY/STOPPING, graceful shutdown with a call in flight."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import time
import warnings

import anyio
import pytest
from conftest import mcp_session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mcp.shared.exceptions import MCPError
from mcpops_testlib import ServerProc


def _self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(30)
    yield path, sock
    sock.close()


def test_tls_sd_notify_and_graceful_shutdown(tmp_path, redis_srv, notify_socket):
    cert, key = _self_signed(tmp_path)
    sock_path, sock = notify_socket
    s = ServerProc(
        "lifecycle",
        tmp_path / "srv",
        {
            "REDIS_URL": redis_srv.url,
            "REDIS_KEY_PREFIX": "t-life:",
            "AUTH_ENABLED": "false",
            "TLS_CERT_FILE": str(cert),
            "TLS_KEY_FILE": str(key),
            "TEST_CA_FILE": str(cert),
            "MCP_GRACEFUL_TIMEOUT": "8",
            "NOTIFY_SOCKET": str(sock_path),
        },
    )
    s.start(wait=False)
    try:
        # READY=1 arrives once the socket is bound: a connection right after it succeeds first time.
        try:
            msg = sock.recv(4096).decode()
        except TimeoutError:
            s.fail("no READY=1 from sd_notify")
        assert "READY=1" in msg
        socket.create_connection(("127.0.0.1", s.port), timeout=2).close()

        # TLS 1.2 minimum, the seed's ciphers
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.check_hostname = False
        old.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            old.maximum_version = ssl.TLSVersion.TLSv1_1
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", s.port)) as raw:
            old.wrap_socket(raw)
        good = ssl.create_default_context(cafile=str(cert))
        good.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            socket.create_connection(("127.0.0.1", s.port)) as raw,
            good.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.2"
            assert tls.cipher()[0].startswith("ECDHE-")

        # A call in flight when SIGTERM arrives still completes; then the process exits.
        verify = ssl.create_default_context(cafile=str(cert))

        async def go():
            signalled = []
            stopped_at = []

            async def on_progress(progress, total, message):
                if not signalled:
                    signalled.append(time.monotonic())
                    s.proc.terminate()

            async with mcp_session(s.mcp_url, verify=verify) as c:
                await c.list_tools()  # the client validates results against the listed output schema
                res = await c.call_tool(
                    "slow_count", {"n": 6, "interval_ms": 200}, progress_callback=on_progress
                )
                stopped_at.append(time.monotonic())
            return res, signalled, stopped_at

        res, signalled, stopped_at = anyio.run(go)
        assert not res.is_error and res.content[0].text == "counted to 6"
        assert stopped_at[0] - signalled[0] >= 0.8  # the call ran on after the signal
        msg = sock.recv(4096).decode()
        assert "STOPPING=1" in msg
        t0 = time.monotonic()
        rc = s.proc.wait(15)
        assert time.monotonic() - t0 < 10
        assert rc in (0, -15), rc
        log = s.log_text()
        assert "shutting down: draining" in log
        assert "Traceback" not in log
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
        s.proc = None


def test_a_call_outliving_the_graceful_timeout_ends_with_a_jsonrpc_error(tmp_path, redis_srv):
    """SIGTERM during a call longer than server.graceful_timeout: the client gets a JSON-RPC error on
    the call's own stream (not a cut connection), and the process still exits in time."""
    s = ServerProc(
        "outlive",
        tmp_path / "outlive",
        {
            "REDIS_URL": redis_srv.url,
            "REDIS_KEY_PREFIX": "t-outlive:",
            "AUTH_ENABLED": "false",
            "MCP_GRACEFUL_TIMEOUT": "3",
        },
    )
    s.start()
    try:

        async def go() -> tuple[BaseException | None, float, float]:
            signalled: list[float] = []

            async def on_progress(progress, total, message):
                if not signalled:
                    signalled.append(time.monotonic())
                    s.proc.terminate()

            caught: BaseException | None = None
            async with mcp_session(s.mcp_url) as c:
                await c.list_tools()
                args = {"n": 60, "interval_ms": 200}  # 12 s, far beyond the 3 s graceful timeout
                try:
                    await c.call_tool("slow_count", args, progress_callback=on_progress)
                except BaseException as exc:
                    caught = exc
            return caught, signalled[0], time.monotonic()

        caught, signalled_at, ended_at = anyio.run(go)
        assert isinstance(caught, MCPError), f"the call ended with {caught!r}, not a JSON-RPC error"
        assert caught.error.code == -32000 and "shutting down" in caught.error.message, caught.error
        took = ended_at - signalled_at
        assert 1.0 < took < 6, f"the error came {took:.1f} s after SIGTERM (graceful timeout 3 s)"
        rc = s.proc.wait(15)
        assert rc in (0, -15), rc
        assert "ended 1 call(s) still running" in s.log_text()
    finally:
        if s.proc is not None and s.proc.poll() is None:
            s.proc.kill()
        s.proc = None
