"""Helpers of the edge tests (test_tls.py, test_nginx.py, test_firewall.py): the host's address on
its docker network, HTTPS requests from the controller verified against the lab CA, and an
outside client container on the same network.

Network probes only ever target the scenario's own containers on their docker network.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from conftest import GROUPS, LAB_DIR, PUBLIC_NAME, REPO, container_name

CA_CERT = LAB_DIR / "ca" / "ca.crt"
CLIENT_IMAGE = os.environ.get("MCPOPS_CLIENT_IMAGE", "mcpops/debian12:latest")


def inventory(host) -> Path:
    """The inventory to re-run playbooks with: molecule's when it says so, else one like it (this
    container in every group, the lab's group_vars)."""
    path = os.environ.get("MOLECULE_INVENTORY_FILE") or os.environ.get("MCPOPS_TEST_INVENTORY")
    if path and Path(path).exists():
        return Path(path)
    d = Path(tempfile.mkdtemp(prefix="mcpops-edge-inv-"))
    groups = {g: {"hosts": {container_name(host): None}} for g in GROUPS}
    inv = {"all": {"children": groups, "vars": {"ansible_connection": "community.docker.docker"}}}
    (d / "hosts.yml").write_text(json.dumps(inv))
    (d / "group_vars").symlink_to(REPO / "inventories" / "local" / "group_vars")
    return d / "hosts.yml"


def docker_network(host) -> tuple[str, str]:
    """(network name, IPv4 address) of the host's container on its first user-defined network."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", container_name(host)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    nets = json.loads(out)
    for name, net in nets.items():
        if name not in ("bridge", "host", "none") and net.get("IPAddress"):
            return name, net["IPAddress"]
    name, net = next(iter(nets.items()))
    return name, net["IPAddress"]


def curl(
    address: str, path: str, *extra: str, port: int = 443, scheme: str = "https"
) -> tuple[int, dict, str]:
    """GET through nginx from the controller: (status, lower-cased headers, body).

    HTTPS connects to the container's address but verifies the certificate for the public name
    against the lab CA (--resolve), as a client with DNS would.
    """
    url = f"{scheme}://{PUBLIC_NAME}:{port}{path}" if scheme == "https" else f"http://{address}:{port}{path}"
    argv = ["curl", "-sS", "--max-time", "10", "-D", "-", "--cacert", str(CA_CERT)]
    argv += ["--resolve", f"{PUBLIC_NAME}:{port}:{address}", *extra, url]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"curl {url} failed (rc={res.returncode}): {res.stderr}"
    head, _, body = res.stdout.replace("\r\n", "\n").partition("\n\n")
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers: dict = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status, headers, body


def outside(network: str, script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a shell script in a throwaway client container on the host's docker network."""
    return subprocess.run(
        ["docker", "run", "--rm", "--network", network, CLIENT_IMAGE, "bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
