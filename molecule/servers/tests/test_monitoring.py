"""Prometheus scrapes every instance of every server, each target labelled with its server (issue 12:
"the monitoring targets ... derive from the same list of servers"; metrics carry the server's name)."""

from __future__ import annotations

import contextlib
import json
import shlex
from urllib.parse import urlsplit

from conftest import SERVERS, journal, unit, wait_until

OWNER = {port: name for name, s in SERVERS.items() for port in s["ports"]}


def targets(srv) -> list[dict]:
    res = srv.run(
        shlex.join(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9090/api/v1/targets?state=active"])
    )
    assert res.rc == 0, f"Prometheus: {res.stderr}\n{journal(srv, 'prometheus')}"
    return json.loads(res.stdout)["data"]["activeTargets"]


def instance_targets(srv) -> list[dict]:
    return [t for t in targets(srv) if urlsplit(t["scrapeUrl"]).port in OWNER]


def test_a_target_per_instance_labelled_with_its_server_all_up(srv):
    def all_up():
        found = instance_targets(srv)
        return found if len(found) == len(OWNER) and all(t["health"] == "up" for t in found) else None

    try:
        found = wait_until(all_up, 60, 1.0, "a target per instance, every one up")
    except AssertionError:
        seen = [
            (t["scrapeUrl"], t["labels"].get("server"), t["health"], t["lastError"])
            for t in instance_targets(srv)
        ]
        raise AssertionError(f"instance targets: {seen}; expected ports {sorted(OWNER)}") from None
    by_port = {urlsplit(t["scrapeUrl"]).port: t for t in found}
    assert sorted(by_port) == sorted(OWNER), sorted(by_port)
    for port, t in by_port.items():
        assert t["labels"].get("server") == OWNER[port], f"port {port}: labels {t['labels']}"


def test_every_log_line_of_an_instance_names_its_server(srv):
    """The JSON lines of each server's first instance carry "server": <name> (they share one journal)."""
    for name, s in SERVERS.items():
        port = s["ports"][0]
        out = srv.run(f"journalctl -u {unit(port)} -o cat --no-pager -n 200").stdout
        lines = []
        for raw in out.splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                if isinstance(record, dict):
                    lines.append(record)
        assert lines, f"{unit(port)}: no JSON log line\n{out[-2000:]}"
        wrong = [r for r in lines if r.get("server") != name]
        assert not wrong, f"{unit(port)}: lines without server={name}: {wrong[:3]}"
