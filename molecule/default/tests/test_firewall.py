"""The nftables firewall: its own table, what an outside client can reach, persistence across a
restart of nftables.service, and the rollback timer."""

from __future__ import annotations

import json

import pytest
from conftest import PUBLIC_NAME, assert_active, instances, journal, wait_until
from edge import docker_network, outside

TABLE = "inet mcpops"
LIVE = "/etc/nftables.d/mcpops.nft"
PREVIOUS = "/var/lib/mcpops-firewall/previous.nft"
ROLLBACK = "/var/lib/mcpops-firewall/rollback.sh"


def table(host) -> str:
    """The loaded table without counters and meter contents (nft -s: stateless)."""
    res = host.run(f"nft -s list table {TABLE}")
    return res.stdout if res.rc == 0 else ""


def rules(host) -> dict:
    data = json.loads(host.check_output(f"nft -j -s list table {TABLE}"))
    chains = {x["chain"]["name"]: x["chain"] for x in data["nftables"] if "chain" in x}
    return chains


def test_nftables_service_is_enabled_and_active(host):
    assert_active(host, "nftables.service")


def test_own_table_with_default_drop(host):
    chains = rules(host)
    assert chains["input"]["policy"] == "drop" and chains["input"]["hook"] == "input"
    assert chains["forward"]["policy"] == "drop" and chains["forward"]["hook"] == "forward"
    listing = table(host)
    first_rules = [line.strip() for line in listing.split("policy drop;", 1)[1].splitlines() if line.strip()][
        :3
    ]
    assert first_rules[0] == "ct state established,related accept", first_rules
    assert first_rules[1] == "ct state invalid drop", first_rules
    assert "limit rate over 10/minute" in listing, "SSH has no per-source rate limit"


def test_rules_it_does_not_own_survive(host):
    # Docker keeps its embedded-DNS NAT rules in the container's "ip nat" table; a "flush ruleset"
    # anywhere in the role (or in nftables.service's stop) would have removed them.
    conf = host.file("/etc/nftables.conf").content_string
    assert not [x for x in conf.splitlines() if "flush" in x and not x.lstrip().startswith("#")], conf
    assert host.run("nft list table ip nat").rc == 0, host.run("nft list tables").stdout


def test_outside_client_reaches_https_only(host):
    network, address = docker_network(host)
    ports = instances(host)
    script = f"""
probe() {{ curl -s -o /dev/null -w '%{{http_code}}' --connect-timeout 4 "$@"; echo " $?"; }}
echo "https $(probe -k --resolve {PUBLIC_NAME}:443:{address} https://{PUBLIC_NAME}/health)"
echo "metrics_via_nginx $(probe -k --resolve {PUBLIC_NAME}:443:{address} https://{PUBLIC_NAME}/metrics)"
for p in {" ".join(str(p) for p in ports)} 6379; do echo "port$p $(probe http://{address}:$p/metrics)"; done
"""
    res = outside(network, script)
    assert res.returncode == 0, res.stderr
    got = {line.split()[0]: line.split()[1:] for line in res.stdout.splitlines() if line.strip()}
    assert got["https"] == ["200", "0"], res.stdout
    assert got["metrics_via_nginx"] == ["403", "0"], res.stdout
    for p in [*ports, 6379]:
        # curl exit 28: the connection attempt timed out (dropped). A refused connection (exit 7)
        # would mean the packet reached the host's TCP stack, i.e. the firewall let it through.
        assert got[f"port{p}"] == ["000", "28"], f"port {p}: {got[f'port{p}']}\n{res.stdout}"


def test_ruleset_is_back_after_restarting_nftables(host):
    before = table(host)
    assert before, "the table is not loaded"
    host.run_expect([0], "systemctl restart nftables.service")
    try:
        wait_until(lambda: table(host) == before, timeout=15, what="the table after a restart")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{journal(host, 'nftables.service')}") from None
    assert host.run("nft list table ip nat").rc == 0, "restarting nftables removed Docker's table"


@pytest.fixture
def restore_table(host):
    before = table(host)
    host.run_expect([0], f"cp -p {LIVE} /root/mcpops-test-live.nft")
    yield before
    # Whatever the test did, leave the converged ruleset (file and table) in place.
    host.run("systemctl stop mcpops-firewall-rollback.timer")
    host.run_expect(
        [0], f"cp -p /root/mcpops-test-live.nft {LIVE} && nft -f {LIVE} && rm /root/mcpops-test-live.nft"
    )


def test_unconfirmed_change_is_rolled_back_by_the_timer(host, restore_table):
    before = restore_table
    # What the role does before a change: keep the file in effect, arm the timer, load the new table.
    host.run_expect([0], f"cp -p {LIVE} {PREVIOUS}")
    host.run_expect(
        [0],
        "systemd-run --unit=mcpops-firewall-rollback --on-active=3s --timer-property=AccuracySec=1s "
        f"--collect /bin/sh {ROLLBACK}",
    )
    host.run_expect([0], f"sed -i 's/policy drop;/policy accept;/' {LIVE} && nft -f {LIVE}")
    assert rules(host)["input"]["policy"] == "accept"
    # Nobody confirms the change: the timer restores the previous table and its file.
    wait_until(lambda: table(host) == before, timeout=20, what="the rollback")
    assert host.check_output(f"cmp {LIVE} {PREVIOUS} && echo same") == "same"
    assert "previous ruleset restored" in host.run("journalctl -t mcpops-firewall -n 5 --no-pager").stdout
