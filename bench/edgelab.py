"""Controller side of the edge benchmarks: the lab host, tokens, the load agent, results.

The lab is one Debian 12 systemd container holding every group (bench/lab.sh up), converged with
playbooks/site.yml and the inventory bench/lab (inventories/local's settings, the rate limit raised).
Its name comes from --lab, else MCPOPS_BENCH_LAB, else mcpops-bench-lab. Tokens are minted here with
the lab issuer's key ($MCPOPS_LAB_DIR/issuer, never copied to a host) and handed to
bench/edge_agent.py, which runs inside the lab host with the release's Python.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
AGENT = HERE / "edge_agent.py"
LAB_DIR = Path(os.environ.get("MCPOPS_LAB_DIR", REPO / ".lab"))
PUBLIC_NAME = "mcp.mcpops.test"
RESOURCE_URL = f"https://{PUBLIC_NAME}/mcp"
ISSUER_URL = "https://issuer.mcpops.test"  # the lab's mcp_server_auth_server_url (inventories/local)
HOST_PYTHON = "/opt/mcpops/current/venv/bin/python"
HOST_CA = "/etc/mcpops/pki/ca.crt"
AGENT_ON_HOST = "/tmp/mcpops-bench-agent.py"


def add_lab_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--lab",
        default=os.environ.get("MCPOPS_BENCH_LAB", "mcpops-bench-lab"),
        help="lab container (default: $MCPOPS_BENCH_LAB, else mcpops-bench-lab; bench/lab.sh up makes it)",
    )


def docker(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], check=check, capture_output=True, text=True, **kw)


def check_lab(name: str) -> dict[str, Any]:
    """Fail with a clear message unless the lab host runs nginx and its instances; describe it."""
    running = docker("container", "inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip()
    if running != "true":
        raise SystemExit(
            f"lab container {name!r} is not running: start and converge it with `bench/lab.sh up {name}` "
            "(or pass --lab / MCPOPS_BENCH_LAB)"
        )
    units = docker(
        "exec",
        name,
        "systemctl",
        "list-units",
        "--plain",
        "--no-legend",
        "--state=active",
        "mcpops-server@*",
        "nginx.service",
    ).stdout
    ports = sorted(
        int(u.split("@", 1)[1].split(".", 1)[0]) for u in units.split() if u.startswith("mcpops-server@")
    )
    if "nginx.service" not in units or not ports:
        raise SystemExit(
            f"lab {name}: nginx and the mcpops-server instances must be active; systemctl says:\n{units}"
        )
    release = docker("exec", name, "readlink", "-f", "/opt/mcpops/current", check=False).stdout.strip()
    nginx = docker("exec", name, "nginx", "-v", check=False).stderr.strip()
    image = docker("container", "inspect", "-f", "{{.Config.Image}}", name).stdout.strip()
    return {"container": name, "image": image, "instance_ports": ports, "release": release, "nginx": nginx}


def mint_tokens(n: int, prefix: str, ttl: int = 3600) -> list[str]:
    """n lab tokens for the public resource, one principal (sub) each."""
    from mcpops_server.devissuer import token

    issuer = LAB_DIR / "issuer"
    if not (issuer / "private_key.pem").exists():
        raise SystemExit(
            f"no lab issuer in {issuer}: set MCPOPS_LAB_DIR to the lab directory the lab was converged with"
        )
    return [
        token(str(issuer), aud=RESOURCE_URL, scope="mcp:tools", sub=f"{prefix}{i}", ttl=ttl, iss=ISSUER_URL)
        for i in range(n)
    ]


def lab_edge() -> dict[str, str]:
    """nginx as seen from inside the lab host: 443 on loopback, the public name, the deployment CA."""
    return {"url": "https://127.0.0.1/mcp", "host": PUBLIC_NAME, "ca": HOST_CA}


def run_agent(job: dict[str, Any], lab: str | None) -> dict[str, Any]:
    """Run bench/edge_agent.py with `job` on stdin: inside the lab host (lab given) with the release's
    Python, or here with this Python (lab None). Its progress goes to our stderr as it comes."""
    if lab:
        docker("cp", str(AGENT), f"{lab}:{AGENT_ON_HOST}")
        cmd = ["docker", "exec", "-i", lab, HOST_PYTHON, AGENT_ON_HOST]
    else:
        cmd = [sys.executable, str(AGENT)]
    try:
        proc = subprocess.run(cmd, input=json.dumps(job), stdout=subprocess.PIPE, text=True, check=False)
    finally:
        if lab:
            docker("exec", lab, "rm", "-f", AGENT_ON_HOST, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"load agent failed (exit {proc.returncode}); its messages are above")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    import math

    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *a], capture_output=True, text=True, check=False
        ).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def context(load_start: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "controller": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_at_start": [round(x, 2) for x in load_start],
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "git": git_state(),
    }


def load_note(result: dict[str, Any]) -> str:
    start, end = result["load_average_at_start"][0], result["load_average_at_end"][0]
    return f"load average {start} -> {end} ({os.cpu_count()} cpus)"


def write_result(out: str, result: dict[str, Any]) -> None:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def need_docker() -> None:
    if not shutil.which("docker"):
        raise SystemExit("docker is needed (the lab host is a container)")
