"""The PKI contract on every host of the cluster: the deployment CA, the host's certificate and key.

Each host's /etc/mcpops/pki/host.crt verifies against /etc/mcpops/pki/ca.crt, is valid for at most
365 days and not expired, is good for TLS servers and clients, names the host (and, on app hosts,
the instances' shared name); host.key is root:ssl-cert 0640 and belongs to host.crt; the CA's key
is on no host.

The hosts are the cluster scenario's containers; MCPOPS_PKI_HOSTS (comma-separated container names)
and MCPOPS_PKI_APP_HOSTS point the same checks at other containers.
"""

from __future__ import annotations

import datetime
import os

import pytest
import testinfra

CLUSTER = "mcpops-lb,mcpops-app1,mcpops-app2,mcpops-data,mcpops-ops"
HOSTS = os.environ.get("MCPOPS_PKI_HOSTS", CLUSTER).split(",")
APP_HOSTS = os.environ.get("MCPOPS_PKI_APP_HOSTS", "mcpops-app1,mcpops-app2").split(",")
TLS_NAME = os.environ.get("MCPOPS_PKI_TLS_NAME", "mcpops-server.internal")
PKI = "/etc/mcpops/pki"
CA, CERT, KEY = f"{PKI}/ca.crt", f"{PKI}/host.crt", f"{PKI}/host.key"


@pytest.fixture(scope="module", params=HOSTS)
def node(request):
    host = testinfra.get_host(f"docker://{request.param}")
    host.name = request.param
    return host


def x509(node, *args: str) -> str:
    return node.check_output("openssl x509 -in %s -noout " + " ".join(args), CERT)


def test_host_certificate_verifies_against_the_deployment_ca(node):
    res = node.run("openssl verify -x509_strict -CAfile %s %s", CA, CERT)
    assert res.rc == 0 and res.stdout.strip() == f"{CERT}: OK", f"{node.name}: {res.stdout}{res.stderr}"


def test_host_certificate_lasts_at_most_365_days_and_is_valid_now(node):
    fmt = "%b %d %H:%M:%S %Y %Z"
    start = datetime.datetime.strptime(x509(node, "-startdate").split("=", 1)[1].strip(), fmt)
    end = datetime.datetime.strptime(x509(node, "-enddate").split("=", 1)[1].strip(), fmt)
    lasts = end - start
    assert datetime.timedelta(days=1) <= lasts <= datetime.timedelta(days=365), f"{node.name}: {start}-{end}"
    assert node.run("openssl x509 -in %s -noout -checkend 0", CERT).rc == 0, f"{node.name}: expired ({end})"


def test_host_certificate_serves_and_authenticates_clients(node):
    eku = x509(node, "-ext", "extendedKeyUsage")
    for usage in ("TLS Web Server Authentication", "TLS Web Client Authentication"):
        assert usage in eku, f"{node.name}: {eku}"
    constraints = x509(node, "-ext", "basicConstraints")
    assert "CA:FALSE" in constraints, f"{node.name} holds a CA certificate: {constraints}"


def test_host_certificate_names_the_host(node):
    san = x509(node, "-ext", "subjectAltName")
    names = {n.strip() for n in san.splitlines()[-1].split(",")}
    assert f"DNS:{node.name}" in names, f"{node.name} not in {names}"
    assert {"DNS:localhost", "IP Address:127.0.0.1"} <= names, names
    address = node.check_output("hostname -I").split()[0]
    assert f"IP Address:{address}" in names, f"{node.name}'s address {address} not in {names}"
    if node.name in APP_HOSTS:
        assert f"DNS:{TLS_NAME}" in names, f"app host {node.name} lacks the instances' name: {names}"


def test_pki_files_have_the_contract_owners_and_modes(node):
    for path, group, mode in ((CA, "root", 0o644), (CERT, "root", 0o644), (KEY, "ssl-cert", 0o640)):
        f = node.file(path)
        assert f.is_file, f"{node.name}: {path} is missing"
        got = (f.user, f.group, f.mode)
        assert got == ("root", group, mode), f"{node.name}: {path} {f.user}:{f.group} {oct(f.mode)}"


def test_host_key_belongs_to_the_certificate_and_is_not_the_cas(node):
    key_pub = node.check_output("openssl pkey -in %s -pubout", KEY)
    assert key_pub == x509(node, "-pubkey"), f"{node.name}: host.key does not match host.crt"
    ca_pub = node.check_output("openssl x509 -in %s -noout -pubkey", CA)
    assert key_pub != ca_pub, f"{node.name}: host.key is the CA's key"


def test_no_ca_key_on_the_host(node):
    found = node.check_output("find / -xdev -name ca.key -print 2>/dev/null || true")
    assert found.strip() == "", f"{node.name} holds {found}"
