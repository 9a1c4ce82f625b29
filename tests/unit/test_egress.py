"""Egress limited by port as well as by address (issue 18, LOW 15).

A server's instances and its stdio children run as the server's user; the table inet mcpops_egress
(roles/mcp_server/templates/egress.nft.j2) lets that user open connections only to Redis's port and
to the server's egress entries. The filter parses the entries, the role renders the table, `nft -c`
checks every rendering, and, where this machine allows it (root, nft, unshare, setpriv), the table is
loaded into a network namespace of its own and real connections are made as the servers' uids.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from role_render import render_role

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("mcp_servers", ROOT / "plugins/filter/mcp_servers.py")
plugin = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plugin)
mcp_servers = plugin.mcp_servers
ServersError = plugin.ServersError

NFT = shutil.which("nft") or ("/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else None)
TIME = {"name": "time", "kind": "stdio", "pypi": "mcp-server-time==2025.9.25", "ports": [8100]}


def egress_of(*entries) -> list[dict]:
    return mcp_servers({"mcp_server_servers": [dict(TIME, egress=list(entries))]})[0]["egress"]


# --- the filter ----------------------------------------------------------------------------------


def test_an_entry_is_a_network_with_its_ports():
    assert egress_of(
        "192.0.2.0/24",
        "192.0.2.7:443",
        "[2001:db8::1]:443",
        "192.0.2.0/24:8000-8100",
        "2001:db8::/32",
        "[2001:db8::/48]:53",
        "198.51.100.9/24",
    ) == [
        {"network": "192.0.2.0/24", "ports": []},
        {"network": "192.0.2.7/32", "ports": [[443, 443]]},
        {"network": "2001:db8::1/128", "ports": [[443, 443]]},
        {"network": "192.0.2.0/24", "ports": [[8000, 8100]]},
        {"network": "2001:db8::/32", "ports": []},
        {"network": "2001:db8::/48", "ports": [[53, 53]]},
        {"network": "198.51.100.0/24", "ports": []},
    ]


@pytest.mark.parametrize(
    "entry",
    [
        "192.0.2.7:0",
        "192.0.2.7:65536",
        "192.0.2.7:",
        "192.0.2.7:8100-8000",
        "192.0.2.7:+443",
        "192.0.2.7: 443",
        "192.0.2.7:443\n",
        "192.0.2.7\n",
        "192.0.2.7:https",
        "[192.0.2.7]:443",
        "[2001:db8::1]443",
        "[2001:db8::1]:",
        "[2001:db8::1",
        "2001:db8::1:443:x",
        "fe80::1%eth0",
        "api.example.com:443",
        "",
        3232235777,
        None,
        ["192.0.2.7"],
    ],
)
def test_anything_else_is_refused_naming_the_item_field_value_and_what_is_accepted(entry):
    with pytest.raises(ServersError) as err:
        egress_of("192.0.2.1", entry)
    message = str(err.value)
    assert message.startswith(f"mcp_server_servers[0] (time).egress[1] = {entry!r}: accepted is ")
    assert "192.0.2.7:443" in message and "[2001:db8::1]:443" in message and "8000-8100" in message


def test_egress_must_be_a_list():
    with pytest.raises(ServersError, match=r"\(time\)\.egress = '192\.0\.2\.7:443': accepted is a list"):
        mcp_servers({"mcp_server_servers": [dict(TIME, egress="192.0.2.7:443")]})


# --- the rendered table ---------------------------------------------------------------------------

# redis1's Redis is reached at 10.0.0.30:6379 (app1), over its unix socket (app2), and by a name that
# stands for redis1 on port 6380 (app3). app3 has no user for "notes" yet (check mode on a fresh host).
RENDER_INVENTORY = """
all:
  children:
    mcp_lb:
      hosts:
        lb1: {ansible_host: 10.0.0.2}
    monitoring:
      hosts:
        ops1: {ansible_host: 10.0.0.40}
    redis:
      hosts:
        redis1: {ansible_host: 10.0.0.30, redis_bind_addresses: [10.0.0.30]}
    mcp_servers:
      vars:
        mcp_server_servers:
          - {name: notes, kind: python, ports: [8000, 8001], default: true}
          - name: my-time
            kind: stdio
            pypi: mcp-server-time==2025.9.25
            ports: [8100]
            egress: ["192.0.2.7:443", "[2001:db8::1]:443", "198.51.100.0/24:8000-8100", "203.0.113.0/24",
                     "10.0.0.53:53"]
        __mcp_server_egress_passwd:
          - "mcp-notes:x:64101:64101::/nonexistent:/usr/sbin/nologin"
          - "mcp-my-time:x:64102:64102::/nonexistent:/usr/sbin/nologin"
      hosts:
        app1: {ansible_host: 10.0.0.11}
        app2: {ansible_host: 10.0.0.12, mcp_server_redis_url: "unix:///run/redis/redis-server.sock?db=0"}
        app3:
          ansible_host: 10.0.0.13
          mcp_server_redis_url: "rediss://redis.internal:6380/0"
          __mcp_server_egress_passwd: ["mcp-my-time:x:64102:64102::/nonexistent:/usr/sbin/nologin"]
"""

EGRESS_TASK = """
- name: Render the egress policy
  ansible.builtin.template:
    src: "{{ render_templates }}/egress.nft.j2"
    dest: "{{ render_out }}/{{ inventory_hostname }}/egress.nft"
    mode: "0644"
"""
DROPIN_TASK = """
- name: Render the instances' drop-ins
  ansible.builtin.template:
    src: "{{ render_templates }}/mcpops-server-dropin.conf.j2"
    dest: "{{ render_out }}/{{ inventory_hostname }}/{{ item.1 }}.conf"
    mode: "0644"
  loop: "{{ __mcp_server_servers | subelements('ports') }}"
  loop_control:
    label: "{{ item.1 }}"
"""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("egress")
    (tmp / "inventory.yml").write_text(RENDER_INVENTORY)
    return render_role(tmp / "run", "mcp_server", tmp / "inventory.yml", "mcp_servers", EGRESS_TASK)


def rules(text: str, chain: str) -> list[str]:
    """The rules of one chain, without comments and blank lines."""
    body = re.search(rf"\n\tchain {chain} {{\n(.*?)\n\t}}", text, re.S)
    assert body, f"no chain {chain} in:\n{text}"
    return [r.strip() for r in body.group(1).splitlines() if r.strip() and not r.strip().startswith("#")]


def test_each_server_user_may_reach_its_redis_port_and_its_egress_ports_only(rendered):
    text = rendered["app1/egress.nft"]
    assert rules(text, "output") == [
        "type filter hook output priority filter; policy accept;",
        "ct state established,related accept",
        "meta skuid 64101 jump server_notes",
        "meta skuid 64102 jump server_my_time",
    ]
    assert rules(text, "server_notes") == ["ip daddr 10.0.0.30 tcp dport 6379 accept", "counter reject"]
    assert rules(text, "server_my_time") == [
        "ip daddr 10.0.0.30 tcp dport 6379 accept",
        "ip daddr 192.0.2.7/32 meta l4proto { tcp, udp } th dport { 443 } accept",
        "ip6 daddr 2001:db8::1/128 meta l4proto { tcp, udp } th dport { 443 } accept",
        "ip daddr 198.51.100.0/24 meta l4proto { tcp, udp } th dport { 8000-8100 } accept",
        "ip daddr 203.0.113.0/24 accept",
        "ip daddr 10.0.0.53/32 meta l4proto { tcp, udp } th dport { 53 } accept",
        "counter reject",
    ]
    # Replaced as a whole, never the whole ruleset.
    assert text.index("table inet mcpops_egress {}\ndelete table inet mcpops_egress\n") < text.index("chain")
    assert not [line for line in text.splitlines() if "flush" in line and not line.lstrip().startswith("#")]


def test_a_unix_socket_redis_needs_no_rule_and_a_named_one_stands_for_the_redis_host(rendered):
    assert rules(rendered["app2/egress.nft"], "server_notes") == ["counter reject"]
    assert "Redis: over its unix socket" in rendered["app2/egress.nft"]
    app3 = rendered["app3/egress.nft"]
    assert rules(app3, "server_my_time")[0] == "ip daddr 10.0.0.30 tcp dport 6380 accept"


def test_a_user_that_does_not_exist_yet_gets_no_rule(rendered):
    app3 = rendered["app3/egress.nft"]
    assert "# mcp-notes: no such user yet" in app3 and "server_notes" not in app3
    assert rules(app3, "output")[2:] == ["meta skuid 64102 jump server_my_time"]


def test_the_drop_ins_allow_the_networks_without_their_ports(tmp_path):
    (tmp_path / "inventory.yml").write_text(RENDER_INVENTORY)
    rendered = render_role(tmp_path / "run", "mcp_server", tmp_path / "inventory.yml", "app1", DROPIN_TASK)
    allowed = re.findall(r"^IPAddressAllow=(.*)$", rendered["app1/8100.conf"], re.M)
    for network in ("192.0.2.7/32", "2001:db8::1/128", "198.51.100.0/24", "203.0.113.0/24", "10.0.0.53/32"):
        assert network in allowed
    assert not [a for a in allowed if a.count(":") == 1 or "[" in a or "-" in a]
    assert "192.0.2.7/32" not in re.findall(r"^IPAddressAllow=(.*)$", rendered["app1/8000.conf"], re.M)


needs_nft = pytest.mark.skipif(NFT is None, reason="nft not installed (Debian package nftables)")


def nft_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [NFT, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_nft
def test_nft_accepts_every_rendering_and_refuses_a_broken_one(rendered, tmp_path):
    probe = tmp_path / "empty.nft"
    probe.write_text("table inet mcpops_egress_probe {}\n")
    if nft_check(probe).returncode != 0:
        pytest.skip("nft -c cannot run here (it needs CAP_NET_ADMIN)")
    for host in ("app1", "app2", "app3"):
        path = tmp_path / f"{host}.nft"
        path.write_text(rendered[f"{host}/egress.nft"])
        result = nft_check(path)
        assert result.returncode == 0, f"{host}: {result.stderr}"
    # The same check refuses what the template must never produce (so validate: has teeth).
    broken = tmp_path / "broken.nft"
    broken.write_text(rendered["app1/egress.nft"].replace("th dport { 443 }", "th dport { 443-80 }"))
    assert nft_check(broken).returncode != 0


# --- real connections in a network namespace -----------------------------------------------------

# Redis on this host (127.0.0.1:6379); "time" may also reach 127.0.0.3:8443. Targets that must stay
# closed to the servers: node_exporter (9100), another server's instance port (8000), another port
# of an allowed address (127.0.0.3:8444).
NETNS_INVENTORY = """
all:
  children:
    redis:
      hosts:
        app1: {}
    mcp_servers:
      hosts:
        app1:
          mcp_server_servers:
            - {name: notes, kind: python, ports: [8000]}
            - name: time
              kind: stdio
              pypi: mcp-server-time==2025.9.25
              ports: [8100]
              egress: ["127.0.0.3:8443"]
          __mcp_server_egress_passwd:
            - "mcp-notes:x:64201:64201::/nonexistent:/usr/sbin/nologin"
            - "mcp-time:x:64202:64202::/nonexistent:/usr/sbin/nologin"
"""
TIME_UID, NOTES_UID, OTHER_UID = 64202, 64201, 64203

NETNS_PROBE = ROOT / "tests" / "unit" / "data" / "egress" / "netns_probe.py"


def _netns_possible() -> str:
    if NFT is None:
        return "nft not installed"
    if os.geteuid() != 0:
        return "needs root (a network namespace and other uids)"
    for tool in ("unshare", "setpriv", "ip"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30, check=False)
    return "" if probe.returncode == 0 else "unshare --net is not allowed here"


NETNS_MISSING = _netns_possible()


@pytest.mark.skipif(bool(NETNS_MISSING), reason=NETNS_MISSING)
def test_a_server_user_reaches_its_redis_and_egress_ports_and_nothing_else(tmp_path):
    (tmp_path / "inventory.yml").write_text(NETNS_INVENTORY)
    out = render_role(tmp_path / "run", "mcp_server", tmp_path / "inventory.yml", "app1", EGRESS_TASK)
    ruleset = tmp_path / "egress.nft"
    ruleset.write_text(out["app1/egress.nft"])
    proc = subprocess.run(
        [
            "unshare",
            "--net",
            sys.executable,
            str(NETNS_PROBE),
            NFT,
            str(ruleset),
            *map(str, (TIME_UID, NOTES_UID, OTHER_UID)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = json.loads(proc.stdout)
    refused = "ConnectionRefusedError"
    assert got[str(TIME_UID)] == {
        "127.0.0.1:6379": "open",
        "127.0.0.1:9100": refused,
        "127.0.0.1:8000": refused,
        "127.0.0.3:8443": "open",
        "127.0.0.3:8444": refused,
    }
    assert got[str(NOTES_UID)] == {
        "127.0.0.1:6379": "open",
        "127.0.0.1:9100": refused,
        "127.0.0.1:8000": refused,
        "127.0.0.3:8443": refused,
        "127.0.0.3:8444": refused,
    }
    # Another user is not looked at; replies of time's own instance port reach their client.
    assert set(got[str(OTHER_UID)].values()) == {"open"}
    assert got["reply"] == "PING"
    counters = [int(n) for n in re.findall(r"counter packets (\d+) bytes \d+ reject", got["table"])]
    assert len(counters) == 2 and all(n >= 3 for n in counters), got["table"]


# --- the firewall role leaves the table alone ----------------------------------------------------


def test_no_role_flushes_the_whole_ruleset():
    """The firewall role replaces only its own table (its ExecStop= deletes only that table too), so a
    firewall run or a restart of nftables.service through it never removes inet mcpops_egress."""
    offenders = []
    for path in sorted((ROOT / "roles").rglob("*")):
        if path.is_file() and path.suffix in (".yml", ".j2", ".sh", ".nft", ".conf"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if re.search(r"\bflush\s+ruleset\b", code):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []
    override = (ROOT / "roles/firewall/templates/nftables.override.conf.j2").read_text()
    assert re.search(r"^ExecStop=-.+ delete table inet \{\{ firewall_table \}\}$", override, re.M)


def test_the_unit_loads_the_file_at_boot_and_after_nftables():
    unit = (ROOT / "roles/mcp_server/templates/mcpops-egress.service.j2").read_text()
    for line in (
        "ExecStart=/usr/sbin/nft -f /etc/mcpops/egress.nft",
        "ExecReload=/usr/sbin/nft -f /etc/mcpops/egress.nft",
        "RemainAfterExit=yes",
        "After=nftables.service",
        "PartOf=nftables.service",
        "ReloadPropagatedFrom=nftables.service",
        "WantedBy=multi-user.target",
    ):
        assert re.search(rf"^{re.escape(line)}$", unit, re.M), line
    assert "ExecStop" not in unit.replace("There is no ExecStop", "")
