"""Removing a server from mcp_server_servers removes it from the host (tasks/servers_remove.yml).

The role's real tasks run with Ansible's real modules (find, file, user, group) against this
machine, inside a private mount namespace whose /etc, /opt and /var/lib are overlays: every change
lands in the test's directory, and the machine's own files, users and groups are untouched. No
systemd runs here, so the scenario that stops instances runs in check mode (the role's check mode
on a host with removed servers); the others remove for real and run again to prove idempotence.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".cache" / "collections"

INVENTORY = """
all:
  hosts:
    app1:
      mcp_server_servers:
        - {name: kept, kind: python, ports: [8000, 8001]}
"""

PLAYBOOK = """---
- name: Remove the servers that are no longer in the inventory
  hosts: app1
  gather_facts: false
  roles:
    - role: remover
"""

TASKS = f"""---
- name: Run the role's removal
  ansible.builtin.include_tasks: {ROOT}/roles/mcp_server/tasks/servers_remove.yml

- name: Write what the removal named
  ansible.builtin.copy:
    content: "{{{{ {{'servers': __mcp_server_removed, 'ports': __mcp_server_removed_ports}} | to_json }}}}"
    dest: "{{{{ removal_out }}}}/named-{{{{ removal_run }}}}.json"
    mode: "0644"
  check_mode: false
  changed_when: false
"""

# Leftovers of a removed server "gone" and of the configured server "kept", made inside the namespace.
SETUP = """
mkdir -p /etc/mcpops/servers/gone /etc/mcpops/servers/kept '/etc/mcpops/servers/Not A Name'
echo 'API_KEY=leftover' > /etc/mcpops/servers/gone/child.env
mkdir -p /opt/mcpops/servers/gone/releases/r1 /var/lib/mcpops-gone/data /var/lib/mcpops-kept
echo state > /var/lib/mcpops-gone/data/db
useradd --system --no-create-home --shell /usr/sbin/nologin --user-group mcp-gone
useradd --system --no-create-home --shell /usr/sbin/nologin --user-group mcp-kept
"""

# Instance drop-ins: a port of "gone" no server has now (8100), a port "kept" took over from "gone"
# (8000, its instance still runs as mcp-gone), one of "kept" (8001), a port of a server whose
# configuration directory is already gone (8300), and a drop-in of another unit.
DROPINS = """
for spec in 8100:mcp-gone 8000:mcp-gone 8001:mcp-kept 8300:mcp-lost; do
  d=/etc/systemd/system/mcpops-server@${spec%%:*}.service.d
  mkdir -p "$d"
  printf '[Service]\\nUser=%s\\nGroup=%s\\n' "${spec#*:}" "${spec#*:}" > "$d/10-server.conf"
done
mkdir -p /etc/systemd/system/other.service.d
printf '[Service]\\nUser=mcp-gone\\n' > /etc/systemd/system/other.service.d/10-server.conf
"""

PATHS = [
    "/etc/mcpops/servers/gone",
    "/etc/mcpops/servers/kept",
    "/etc/mcpops/servers/Not A Name",
    "/opt/mcpops/servers/gone",
    "/var/lib/mcpops-gone",
    "/var/lib/mcpops-kept",
    "/etc/systemd/system/mcpops-server@8000.service.d/10-server.conf",
    "/etc/systemd/system/mcpops-server@8001.service.d/10-server.conf",
    "/etc/systemd/system/mcpops-server@8100.service.d/10-server.conf",
    "/etc/systemd/system/mcpops-server@8300.service.d/10-server.conf",
    "/etc/systemd/system/other.service.d/10-server.conf",
]

PROBE = (
    "for p in " + " ".join(f"'{p}'" for p in PATHS) + '; do [ -e "$p" ] && echo "path $p"; done\n'
    "for n in mcp-gone mcp-kept; do getent passwd $n >/dev/null && echo user $n;"
    " getent group $n >/dev/null && echo group $n; done; true\n"
)


def _namespace_works(tmp_path: Path) -> str:
    """Why overlays in a private mount namespace cannot be made here ('' when they can)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "needs root and unshare(1)"
    (tmp_path / "u").mkdir(parents=True)
    (tmp_path / "w").mkdir()
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"mount -t overlay overlay -o lowerdir=/etc,upperdir={tmp_path}/u,workdir={tmp_path}/w /etc"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return "" if probe.returncode == 0 else f"overlay mounts are refused here: {probe.stderr.strip()}"


def _remove(tmp_path: Path, setup: str, runs: list[tuple[str, list[str]]]) -> tuple[dict, str]:
    """Run `setup`, then the playbook once per (name, extra args) of `runs`, in one namespace; the
    recap and the names each run found, by run name, and what exists afterwards."""
    why = _namespace_works(tmp_path / "probe")
    if why:
        pytest.skip(why)
    assert (COLLECTIONS / "ansible_collections" / "mcpops" / "deploy").exists(), "run scripts/setup.sh first"
    role = tmp_path / "roles" / "remover"
    (role / "tasks").mkdir(parents=True)
    (role / "tasks" / "main.yml").write_text(TASKS)
    for part in ("defaults", "vars"):
        (role / part).mkdir()
        (role / part / "main.yml").symlink_to(ROOT / "roles" / "mcp_server" / part / "main.yml")
    (tmp_path / "inventory.yml").write_text(INVENTORY)
    (tmp_path / "play.yml").write_text(PLAYBOOK)
    out = tmp_path / "out"
    out.mkdir()
    playbook = Path(sys.executable).parent / "ansible-playbook"
    script = ["set -e"]
    for part in ("etc", "opt", "var/lib"):
        upper, work = tmp_path / "ovl" / part / "u", tmp_path / "ovl" / part / "w"
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        script.append(f"mount -t overlay overlay -o lowerdir=/{part},upperdir={upper},workdir={work} /{part}")
    script.append(setup)
    for name, args in runs:
        script.append(
            f"{playbook} -i {tmp_path}/inventory.yml {tmp_path}/play.yml -e ansible_connection=local"
            f" -e 'ansible_python_interpreter={{{{ ansible_playbook_python }}}}' -e removal_out={out}"
            f" -e removal_run={name} {' '.join(args)} > {out}/{name}.log 2>&1"
            f" || {{ cat {out}/{name}.log; exit 1; }}"
        )
    script.append(PROBE)
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"),
        "ANSIBLE_NOCOLOR": "1",
    }
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", "\n".join(script)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs_seen = {}
    for name, _ in runs:
        log = (out / f"{name}.log").read_text()
        recap = re.search(r"app1\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", log)
        assert recap, log
        runs_seen[name] = {
            "changed": int(recap.group(1)),
            **json.loads((out / f"named-{name}.json").read_text()),
        }
    return runs_seen, proc.stdout


def test_a_removed_server_leaves_nothing_and_a_second_run_changes_nothing(tmp_path):
    runs, after = _remove(tmp_path, SETUP, [("first", []), ("second", [])])
    assert runs["first"]["servers"] == ["gone"] and runs["first"]["changed"] > 0
    assert runs["second"] == {"changed": 0, "servers": [], "ports": []}
    assert after.splitlines() == [
        "path /etc/mcpops/servers/kept",
        "path /etc/mcpops/servers/Not A Name",
        "path /var/lib/mcpops-kept",
        "user mcp-kept",
        "group mcp-kept",
    ]


def test_keep_removed_data_keeps_the_state_directory_only(tmp_path):
    runs, after = _remove(
        tmp_path, SETUP, [("first", ["-e", "mcp_server_keep_removed_data=true"]), ("second", [])]
    )
    assert runs["first"]["servers"] == ["gone"]
    assert "path /var/lib/mcpops-gone" in after.splitlines()
    assert not [line for line in after.splitlines() if "gone" in line and "/var/lib/" not in line]


def test_check_mode_names_the_removed_servers_instances_and_changes_nothing(tmp_path):
    runs, after = _remove(tmp_path, SETUP + DROPINS, [("check", ["--check"])])
    # 8000 is kept's now, but its instance still runs as mcp-gone: stopped, its drop-in rewritten
    # later; 8001 is kept's own; other.service is not an instance.
    assert runs["check"]["servers"] == ["gone"]
    assert runs["check"]["ports"] == [8000, 8100, 8300]
    assert runs["check"]["changed"] > 0
    assert after.splitlines() == [f"path {p}" for p in PATHS] + [
        "user mcp-gone",
        "group mcp-gone",
        "user mcp-kept",
        "group mcp-kept",
    ]


def test_a_fresh_host_in_check_mode_has_nothing_to_remove(tmp_path):
    runs, after = _remove(tmp_path, "", [("check", ["--check"])])
    assert runs["check"] == {"changed": 0, "servers": [], "ports": []}
    assert after == ""


def test_the_removal_runs_only_with_several_servers_and_before_their_drop_ins_are_written():
    configure = (ROOT / "roles/mcp_server/tasks/configure.yml").read_text()
    include = re.search(
        r"ansible\.builtin\.include_tasks: servers_remove\.yml\n\s+when: __mcp_server_multi \| bool\n",
        configure,
    )
    assert include, "configure.yml includes servers_remove.yml only when mcp_server_servers is used"
    assert include.start() < configure.index("include_tasks: servers_units.yml")
