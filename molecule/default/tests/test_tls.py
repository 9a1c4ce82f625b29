"""TLS of the nginx edge, probed from the controller over the docker network with openssl."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import PUBLIC_NAME
from edge import CA_CERT, curl, docker_network

testinfra_hosts = ["ansible://mcp_lb"]


@pytest.fixture(scope="module")
def address(host) -> str:
    return docker_network(host)[1]


def s_client(address: str, *args: str, name: str = PUBLIC_NAME) -> subprocess.CompletedProcess:
    argv = ["openssl", "s_client", "-connect", f"{address}:443", "-servername", name]
    argv += ["-CAfile", str(CA_CERT), "-verify_hostname", name, "-verify_return_error", *args]
    return subprocess.run(argv, input="", capture_output=True, text=True, errors="replace", timeout=30)


def test_ca_certificate_was_fetched_to_the_controller():
    text = CA_CERT.read_text()
    assert "BEGIN CERTIFICATE" in text, f"{CA_CERT} holds no certificate"


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_modern_protocols_handshake_and_verify(address, version):
    res = s_client(address, f"-tls{version.replace('.', '_')}")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert f"Protocol  : TLSv{version}" in out or f"New, TLSv{version}" in out, out
    assert "Verify return code: 0 (ok)" in out, out


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
def test_old_protocols_are_refused_by_the_server(address, flag):
    # SECLEVEL=0 lets this client offer TLS 1.0/1.1 at all (OpenSSL 3 refuses them on its own at
    # the default level); the refusal must come from the server, as a protocol_version alert.
    res = s_client(address, flag, "-cipher", "DEFAULT@SECLEVEL=0")
    out = res.stdout + res.stderr
    assert res.returncode != 0, out
    assert "alert protocol version" in out, f"expected the server's protocol_version alert:\n{out}"


def test_certificate_is_for_the_configured_name_only(address):
    res = s_client(address, "-tls1_3", name="not-this-name.mcpops.test")
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "hostname mismatch" in out, out


def test_only_ecdhe_aead_suites_on_tls12(address):
    for cipher in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384", "AES128-GCM-SHA256"):
        res = s_client(address, "-tls1_2", "-cipher", cipher)
        assert res.returncode != 0, f"{cipher} was accepted:\n{res.stdout}"
    ok = s_client(address, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_session_tickets_are_off(address):
    res = s_client(address, "-tls1_2")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "TLS session ticket lifetime hint" not in res.stdout, res.stdout


def test_http2_is_offered(address):
    res = s_client(address, "-alpn", "h2,http/1.1")
    assert "ALPN protocol: h2" in res.stdout, res.stdout


def test_plain_http_only_redirects(address):
    status, headers, _ = curl(address, "/mcp?x=1", port=80, scheme="http")
    assert status == 301, headers
    assert headers["location"] == [f"https://{PUBLIC_NAME}/mcp?x=1"], headers
    # The redirect is a response too: the same security headers as on HTTPS.
    assert headers.get("x-content-type-options") == ["nosniff"], headers
    assert headers.get("cache-control") == ["no-store"], headers


TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
# The lab CA publishes no CRL or OCSP responder: a CA that exists only on the controller has no
# one to revoke for. That finding is about the lab CA, not about this configuration.
LAB_CA_ONLY = {"cert_revocation"}


@pytest.mark.skipif(
    TESTSSL is None, reason="testssl.sh is not installed on the controller (apt install testssl.sh)"
)
@pytest.mark.timeout(1200)  # a full testssl.sh run takes a minute or two
def test_scan_finds_nothing_medium_or_worse(address, tmp_path):
    report = tmp_path / "testssl.json"
    argv = [TESTSSL, "--quiet", "--color", "0", "--warnings", "off", "--ip", address]
    argv += ["--add-ca", str(CA_CERT), "--jsonfile", str(report), f"https://{PUBLIC_NAME}/"]
    res = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=900)
    assert report.exists(), res.stdout[-3000:] + res.stderr[-2000:]
    findings = json.loads(report.read_text())
    bad = [
        f"{f['severity']} {f['id']}: {f['finding']}"
        for f in findings
        if f["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and f["id"] not in LAB_CA_ONLY
    ]
    assert findings and not bad, "\n".join(bad)
