"""Fault drills on the cluster, each under client load through the lb, each reporting what was lost.

- SIGKILL of one instance: no call that nginx could retry fails; the instance is healthy in 5 s.
- `systemctl restart redis-server`: no acknowledged note is lost.
- The log collector down for a minute: test_logs.py::test_collector_outage_loses_and_doubles_nothing
  (1000 numbered lines, each arrives exactly once), under load there too.
- A container restarted, standing in for a reboot: every service comes back enabled, data intact.
- An app host cut off the network: nginx stops sending to it and calls succeed on the other host.
- A broken variable in a converge: the play stops in preflight and the service keeps answering.

The load is steady_load.py (molecule/default/tests) with the SDK's current `Client` (the sessionless
revision: any instance may serve any request, so what is measured is the routing, not sessions
pinned in a dead instance's memory). Each drill prints one line: calls made, calls failed, and what
was lost.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import subprocess
import time
from datetime import datetime

import pytest
from conftest import (
    APP_HOSTS,
    CA_CERT,
    PUBLIC_NAME,
    SteadyLoad,
    address_of,
    assert_active,
    controller_script,
    journal,
    mint_token,
    molecule_inventory,
    run_site,
    wait_until,
)

NFT_ISOLATE = """table inet mcpops_drill {
    chain input { type filter hook input priority -10; policy drop; iif "lo" accept; }
    chain output { type filter hook output priority -10; policy drop; oif "lo" accept; }
}
"""

_HEALTH_PY = r"""
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile="/etc/mcpops/pki/ca.crt")
try:
    with urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[1]}/health", context=ctx, timeout=1) as r:
        print(r.status)
except Exception as exc:
    print(type(exc).__name__)
"""


def healthy(host, port: int) -> bool:
    return host.run(shlex.join(["python3", "-c", _HEALTH_PY, str(port)])).stdout.strip() == "200"


def report(capsys, drill: str, load: dict, lost: str) -> None:
    with capsys.disabled():
        print(f"\nfault drill, {drill}: {load['calls']} calls, {load['failed']} failed; lost: {lost}")


def test_sigkill_of_an_instance_fails_no_retryable_call_and_it_is_healthy_within_5s(hosts, tmp_path, capsys):
    app = hosts["mcpops-app1"]
    unit = "mcpops-server@8000.service"
    restarts = int(app.check_output(f"systemctl show -p NRestarts --value {unit}"))
    load = SteadyLoad(tmp_path, workers=4, streams=0, client="current", rate=10)
    try:
        load.wait_for_calls(20)
        killed_at = time.time()
        began = time.monotonic()
        assert app.run(f"systemctl kill --signal=SIGKILL {unit}").rc == 0
        wait_until(lambda: not healthy(app, 8000), 5, 0.05, f"{unit} to go down")
        wait_until(
            lambda: healthy(app, 8000), 5, 0.1, f"{unit} healthy within 5 s", lambda: journal(app, unit, 30)
        )
        back_after = time.monotonic() - began
        load.wait_for_calls(60)
    finally:
        out = load.stop()
    # Only a call that was inside the killed process can fail (its request had been sent: nginx
    # does not replay a POST); anything that arrived later was sent to the other instances.
    in_flight = [e for e in out["errors"] if killed_at - 1 <= e["started"] <= killed_at + 0.5]
    lost = f"{len(in_flight)} calls in flight in the killed process; healthy again after {back_after:.1f} s"
    report(capsys, "SIGKILL of one instance", out, lost)
    assert int(app.check_output(f"systemctl show -p NRestarts --value {unit}")) == restarts + 1
    assert back_after <= 5
    assert len(in_flight) == out["failed"] and out["failed"] <= 4, (
        f"calls failed beyond the kill: {out['errors']}"
    )
    assert out["calls"] >= 80


def test_redis_restart_loses_no_acknowledged_note(hosts, tmp_path, capsys):
    data = hosts["mcpops-data"]
    load = SteadyLoad(tmp_path, workers=2, streams=0, client="current", tool="notes", rate=5)
    try:
        load.wait_for_calls(10)
        assert data.run("systemctl restart redis-server").rc == 0, journal(data, "redis-server")
        assert_active(data, "redis-server")
        # The instances find Redis again (their /health checks it) ...
        for name in APP_HOSTS:
            wait_until(lambda h=hosts[name]: healthy(h, 8000), 30, 0.25, f"{name} healthy after the restart")
        # ... and notes are written again.
        load.wait_for_calls(20)
    finally:
        out = load.stop()
    report(
        capsys,
        "systemctl restart redis-server",
        out,
        f"{out['notes_missing']} of {out['notes_acked']} acknowledged notes (refused ones were never acked)",
    )
    assert out["notes_acked"] >= 20
    assert out["notes_missing"] == 0, f"acknowledged notes lost: {out['notes_missing_ids']} {out['errors']}"


def _note_through_lb(tool: str, args: dict, sub: str) -> dict:
    out = controller_script(
        "mcp_probe.py",
        f"https://{address_of('mcpops-lb')}/mcp",
        "--token",
        mint_token(sub=sub),
        "--ca",
        str(CA_CERT),
        "--host-header",
        PUBLIC_NAME,
        "--call",
        tool,
        json.dumps(args),
    )
    assert out["ok"] and out["calls"], out
    return out["calls"][0]


def test_a_restarted_container_comes_back_enabled_with_its_data(hosts, tmp_path, capsys):
    data = hosts["mcpops-data"]
    sub = f"reboot-{int(time.time())}"
    note = _note_through_lb("notes_add", {"title": "before the reboot", "body": sub}, sub)
    assert not note["is_error"], note
    note_id = note["structured"]["id"]
    address = address_of("mcpops-data")
    load = SteadyLoad(tmp_path, workers=2, streams=0, client="current", rate=5)
    try:
        load.wait_for_calls(10)
        subprocess.run(["docker", "restart", "-t", "30", "mcpops-data"], check=True, timeout=120)
        assert address_of("mcpops-data") == address, "the container came back with another address"
        wait_until(
            lambda: data.run("systemctl is-system-running").stdout.strip() in ("running", "degraded"),
            90,
            0.5,
            "mcpops-data to finish booting",
        )
        failed_units = data.run("systemctl --failed --no-legend --plain").stdout.strip()
        assert not failed_units, f"units failed after the reboot: {failed_units}"
        for unit in (
            "nftables",
            "redis-server",
            "rsyslog",
            "prometheus-node-exporter",
            "prometheus-redis-exporter",
        ):
            assert_active(data, unit)
        assert data.service("mcpops-cert-expiry.timer").is_enabled
        for name in APP_HOSTS:
            wait_until(lambda h=hosts[name]: healthy(h, 8000), 60, 0.5, f"{name} healthy with Redis back")
        load.wait_for_calls(20)
    finally:
        out = load.stop()
    got = wait_until(
        lambda: (lambda c: c if not c["is_error"] else None)(
            _note_through_lb("notes_get", {"note_id": note_id}, sub)
        ),
        30,
        1,
        "the note written before the reboot",
    )
    report(
        capsys, "container restart (reboot) of mcpops-data", out, "no note (the one written before is back)"
    )
    assert got["structured"]["body"] == sub
    # The redis ruleset came back with the host: only the app hosts reach Redis.
    assert "6379" in data.check_output("nft list ruleset")


def _access_lines(lb, since: float, until: float = float("inf")) -> list[dict]:
    """The lb's /mcp access-log entries written between since and until (wall clock, 1 s steps)."""
    lines = []
    for raw in lb.run("tail -n 5000 /var/log/nginx/access.log").stdout.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        stamp = datetime.fromisoformat(entry["time"]).timestamp()
        if since - 1 <= stamp < until and entry.get("uri", "").startswith("/mcp"):
            lines.append(entry)
    return lines


def _failed_at(entry: dict, address: str) -> bool:
    """Whether nginx tried `address` for this request and that attempt failed."""
    upstreams = [u.strip() for u in entry.get("upstream", "").split(",")]
    statuses = [u.strip() for u in entry.get("upstream_status", "").split(",")]
    return any(
        u.startswith(address + ":") and st != "200" for u, st in zip(upstreams, statuses, strict=False)
    )


@pytest.mark.timeout(300)
def test_an_isolated_app_host_is_left_out_and_calls_succeed_on_the_other(hosts, tmp_path, capsys):
    lb, cut = hosts["mcpops-lb"], hosts["mcpops-app2"]
    cut_address = address_of("mcpops-app2")
    fail_timeout = int(
        lb.check_output("grep -o 'fail_timeout=[0-9]*' /etc/nginx/nginx.conf | head -n1").split("=")[1]
    )
    workers = int(lb.check_output("pgrep -c -f 'nginx: worker process$'"))
    load = SteadyLoad(tmp_path, workers=4, streams=0, client="current", rate=5, slow=1.5)
    try:
        load.wait_for_calls(20)
        isolated_at = time.time()
        assert cut.run(f"nft -f - <<'EOF'\n{NFT_ISOLATE}EOF").rc == 0
        try:
            # Two of nginx's passive health-check intervals with the host unreachable.
            load.wait_for_calls(4 * 5 * 2 * fail_timeout - 40, timeout=4 * fail_timeout + 30)
        finally:
            assert cut.run("nft delete table inet mcpops_drill").rc == 0
        restored_at = time.time()
        isolated_for = restored_at - isolated_at
        # Requests answered while the host was cut off whose attempt at it failed (nginx went on).
        tried = [e for e in _access_lines(lb, isolated_at, restored_at - 1) if _failed_at(e, cut_address)]
        # The host rejoins: nginx sends to it again once it answers.
        rejoined = wait_until(
            lambda: [
                e
                for e in _access_lines(lb, time.time() - 2)
                if e.get("upstream", "").split(",")[0].startswith(cut_address) and e.get("status") == 200
            ],
            3 * fail_timeout,
            0.5,
            "a call served by mcpops-app2 again",
        )
        load.wait_for_calls(10)
    finally:
        out = load.stop()
    # Passive checks: each worker tries each of the cut host's two instances once per fail_timeout.
    bound = workers * 2 * (math.ceil(isolated_for / fail_timeout) + 1)
    report(
        capsys,
        f"mcpops-app2 cut off for {isolated_for:.0f} s",
        out,
        f"{out['failed']} calls in flight to it; {len(tried)} requests tried it (bound {bound})",
    )
    # Calls already sent to the cut-off host (in flight, or sent on a kept-alive connection before
    # nginx's first failed connect marked it down) are lost, as with SIGKILL; nothing sent later.
    at_the_cut = [e for e in out["errors"] if isolated_at - 1 <= e["started"] <= isolated_at + 3]
    assert out["failed"] == len(at_the_cut) and out["failed"] <= 4, out["errors"]
    assert len(tried) <= bound, f"nginx kept sending to the cut-off host: {len(tried)} > {bound}"
    assert len(out["slow"]) <= bound, out["slow"]
    assert rejoined


# One bad value is caught by the roles' preflight (naming the variable), one only by the new
# release's own check of the rendered config.yaml (naming the setting): either way nothing changes.
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("mcp_server_memory_max=lots", "mcp_server_memory_max = lots"),
        ("mcp_server_ratelimit_per_minute=-5", "ratelimit.requests_per_minute = -5"),
    ],
)
def test_a_broken_variable_stops_the_converge_before_any_change_and_the_service_answers(
    hosts, tmp_path, capsys, override, named
):
    lb, app = hosts["mcpops-lb"], hosts["mcpops-app1"]

    def fingerprint() -> str:
        files = [lb.file("/etc/nginx/nginx.conf"), app.file("/etc/mcpops/config.yaml")]
        return hashlib.sha256(b"".join(f.content for f in files)).hexdigest()

    before = fingerprint()
    pid = app.check_output("systemctl show -p MainPID --value mcpops-server@8000.service")
    load = SteadyLoad(tmp_path, workers=2, streams=0, client="current", rate=5)
    try:
        load.wait_for_calls(10)
        res = run_site(molecule_inventory(), "-e", override, timeout=600)
        load.wait_for_calls(10)
    finally:
        out = load.stop()
    output = res.stdout + res.stderr
    report(capsys, f"converge with {override}", out, "no call, no configuration")
    assert res.returncode != 0, f"the converge accepted {override}"
    assert named in output, f"the failure does not name {named!r}:\n{output[-3000:]}"
    assert fingerprint() == before, "a configuration file changed although the play failed"
    assert app.check_output("systemctl show -p MainPID --value mcpops-server@8000.service") == pid
    assert out["failed"] == 0 and out["calls"] >= 20, out["errors"]
