"""Backup and restore of the notes store (playbooks/backup.yml, playbooks/restore.yml).

Notes written through the MCP server (the SDK's client, through nginx) are backed up while Redis
serves (its run id does not change), a corrupt backup is refused before anything changes (Redis keeps
its process, its data and its answers), and after the data host's Redis data is wiped a restore brings
the same notes back through the MCP server, with AOF on again (a note written afterwards survives a
restart, and so do the restored ones).

The cluster by default (mcpops-lb, mcpops-data, molecule's inventory). Another deployment, e.g. a
one-host lab: MCPOPS_BACKUP_HOSTS=NAME (one container in every group) or lb=NAME,data=NAME, and
MCPOPS_BACKUP_INVENTORY=its inventory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import testinfra
from conftest import (
    CA_CERT,
    LAB_DIR,
    NETWORK,
    PUBLIC_NAME,
    controller_script,
    journal,
    mint_token,
    run_playbook,
    wait_until,
)

REDIS_UNIT = "redis-server"
DATA_DIR = "/var/lib/redis"


def _roles() -> dict[str, str]:
    raw = os.environ.get("MCPOPS_BACKUP_HOSTS", "").strip()
    if not raw:
        return {"lb": "mcpops-lb", "data": "mcpops-data"}
    if "=" not in raw:
        return {"lb": raw, "data": raw}
    roles = dict(part.strip().split("=", 1) for part in raw.split(",") if part.strip())
    assert set(roles) == {"lb", "data"}, f"MCPOPS_BACKUP_HOSTS={raw!r}: expected NAME or lb=NAME,data=NAME"
    return roles


ROLES = _roles()


def _inventory() -> Path:
    raw = os.environ.get("MCPOPS_BACKUP_INVENTORY") or os.environ.get("MOLECULE_INVENTORY_FILE")
    assert raw and Path(raw).exists(), (
        "run by molecule verify (MOLECULE_INVENTORY_FILE) or set MCPOPS_BACKUP_INVENTORY"
    )
    return Path(raw)


def playbook(name: str, *extra: str) -> subprocess.CompletedProcess:
    """playbooks/<name> on this suite's inventory (conftest.run_playbook)."""
    return run_playbook(name, _inventory(), *extra, timeout=600)


def _output(res: subprocess.CompletedProcess) -> str:
    return res.stdout[-4000:] + res.stderr[-2000:]


def lb_url() -> str:
    """https://<the lb's address>/mcp: its address on the scenario's network, else its first one."""
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", ROLES["lb"]],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    networks = json.loads(out)
    net = networks.get(NETWORK) or next(iter(networks.values()))
    return f"https://{net['IPAddress']}/mcp"


@pytest.fixture(scope="module")
def data():
    return testinfra.get_host(f"docker://{ROLES['data']}")


def redis_admin(host, *args: str) -> str:
    """redis-cli as the admin user on the data host (TLS with the host certificate when Redis serves
    TLS only); the password travels in REDISCLI_AUTH, not argv."""
    cmd = ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "--user", "admin", "--no-auth-warning"]
    if host.run("grep -q '^tls-port ' /etc/redis/redis.conf").rc == 0:
        pki = "/etc/mcpops/pki"
        cmd += ["--tls", "--cacert", f"{pki}/ca.crt", "--cert", f"{pki}/host.crt", "--key", f"{pki}/host.key"]
    password = (LAB_DIR / "secrets" / "redis_admin").read_text().split()[0]
    return host.run(f"REDISCLI_AUTH={shlex.quote(password)} " + shlex.join([*cmd, *args])).stdout


def info(host, field: str) -> str:
    for line in redis_admin(host, "INFO", "everything").splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def mcp(token: str, *calls: tuple[str, dict]) -> dict:
    argv = [lb_url(), "--token", token, "--ca", str(CA_CERT), "--host-header", PUBLIC_NAME]
    for name, arguments in calls:
        argv += ["--call", name, json.dumps(arguments)]
    return controller_script("mcp_probe.py", *argv, timeout=60)


def titles_found(token: str, marker: str) -> set[str] | None:
    """The titles of the caller's notes that contain marker, or None when the call failed (Redis
    restarting, the app's pool reconnecting)."""
    out = mcp(token, ("notes_search", {"query": marker, "limit": 50}))
    if not out["ok"] or out["calls"][0]["is_error"]:
        return None
    found = out["calls"][0]["structured"] or json.loads(out["calls"][0]["text"])
    return {note["title"] for note in found["notes"]}


def wait_for_titles(token: str, marker: str, expected: set[str], what: str) -> None:
    got: list[set[str] | None] = []

    def probe() -> bool:
        got.append(titles_found(token, marker))
        return got[-1] == expected

    wait_until(probe, timeout=60, interval=1, what=f"{what}: {sorted(expected)} (last seen {got[-1:]})")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class Backup:
    root: Path
    folder: Path
    name: str
    token: str
    marker: str
    titles: set[str]
    run_id_before: str
    run_id_after: str


@pytest.fixture(scope="module")
def backup(tmp_path_factory, data) -> Backup:
    """Three notes written through the MCP server, then playbooks/backup.yml with keep 2 into a
    folder that already holds two older (fake) backups."""
    marker = "bk" + uuid.uuid4().hex[:10]
    token = mint_token(sub=f"backup-{marker}")
    titles = {f"{marker} note {i}" for i in range(3)}
    out = mcp(
        token, *(("notes_add", {"title": t, "body": f"kept by the backup {marker}"}) for t in sorted(titles))
    )
    assert out["ok"] and not any(c["is_error"] for c in out["calls"]), (
        f"writing notes through the lb failed: {out}"
    )
    wait_for_titles(token, marker, titles, "the notes before the backup")

    root = tmp_path_factory.mktemp("redis-backups")
    folder = root / ROLES["data"]
    folder.mkdir()
    for stamp in ("20000101T000000Z", "20000102T000000Z"):
        (folder / f"redis-{ROLES['data']}-{stamp}.rdb").write_bytes(b"old")
        (folder / f"redis-{ROLES['data']}-{stamp}.rdb.sha256").write_text("0" * 64 + "\n")

    run_id_before = info(data, "run_id")
    assert run_id_before, f"Redis does not answer the admin user; journal:\n{journal(data, REDIS_UNIT)}"
    res = playbook("backup.yml", "-e", f"redis_backup_dir={root}", "-e", "redis_backup_keep=2")
    assert res.returncode == 0, _output(res)
    new = sorted(p.name for p in folder.glob("*.rdb") if not p.name.startswith(f"redis-{ROLES['data']}-2000"))
    assert len(new) == 1, f"expected one new backup in {folder}: {sorted(p.name for p in folder.iterdir())}"
    return Backup(root, folder, new[0], token, marker, titles, run_id_before, info(data, "run_id"))


def test_backup_is_taken_while_redis_serves_and_stored_with_its_sha256(backup):
    assert backup.run_id_after == backup.run_id_before, "Redis restarted during the backup"
    rdb = backup.folder / backup.name
    assert rdb.read_bytes().startswith(b"REDIS"), f"{rdb} is not an RDB file"
    line = (backup.folder / (backup.name + ".sha256")).read_text()
    assert line == f"{sha256(rdb)}  {backup.name}\n", f"sha256 file: {line!r}"
    assert (rdb.stat().st_mode & 0o777) == 0o600, oct(rdb.stat().st_mode)
    # Retention (keep 2): the new backup and the newest older one stay, the oldest pair is gone.
    data = ROLES["data"]
    kept = sorted(p.name for p in backup.folder.iterdir())
    assert kept == sorted(
        [
            backup.name,
            backup.name + ".sha256",
            f"redis-{data}-20000102T000000Z.rdb",
            f"redis-{data}-20000102T000000Z.rdb.sha256",
        ]
    ), kept


def test_a_corrupt_backup_is_refused_and_redis_keeps_serving(backup, data, tmp_path):
    """One flipped byte: refused by its sha256; with a sha256 file that matches it, refused by
    redis-check-rdb. Either way before Redis is stopped: same process, same data files."""
    folder = tmp_path / ROLES["data"]
    folder.mkdir()
    raw = bytearray((backup.folder / backup.name).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    mismatch = f"redis-{ROLES['data']}-20990101T000000Z.rdb"
    (folder / mismatch).write_bytes(raw)
    shutil.copy(backup.folder / (backup.name + ".sha256"), folder / (mismatch + ".sha256"))
    broken = f"redis-{ROLES['data']}-20990102T000000Z.rdb"
    (folder / broken).write_bytes(raw)
    (folder / (broken + ".sha256")).write_text(f"{sha256(folder / broken)}  {broken}\n")

    pid = data.check_output(f"systemctl show -p MainPID --value {REDIS_UNIT}")
    # The AOF directory and its manifest keep their inodes (a restore would put new ones in place);
    # sizes and times are left out: the app's writes and Redis' own saves go on meanwhile.
    files = f"cd {DATA_DIR} && stat -c '%n %i' appendonlydir appendonlydir/*.manifest; ls -d replaced-*"
    before = data.run(files).stdout
    for name, why in ((mismatch, "checksum mismatch"), (broken, "redis-check-rdb failed")):
        res = playbook(
            "restore.yml", "-e", f"redis_backup_dir={tmp_path}", "-e", f"redis_restore_backup={name}"
        )
        assert res.returncode != 0, f"restore of the corrupt {name} succeeded:\n{_output(res)}"
        said = " ".join(res.stdout.split())  # the callback wraps long messages
        assert why in said and "Redis was not touched" in said, _output(res)
        assert "Stop Redis" not in res.stdout, _output(res)
    assert data.check_output(f"systemctl show -p MainPID --value {REDIS_UNIT}") == pid, "Redis was restarted"
    assert info(data, "run_id") == backup.run_id_before, "Redis is another process"
    assert data.run(files).stdout == before
    assert titles_found(backup.token, backup.marker) == backup.titles


def test_restore_brings_the_notes_back_after_the_data_is_wiped(backup, data):
    # Wipe: without its files Redis starts empty, and the notes are gone for the MCP server too.
    data.run_expect(
        [0], f"systemctl stop {REDIS_UNIT} && rm -rf {DATA_DIR}/* && systemctl start {REDIS_UNIT}"
    )
    wait_until(lambda: info(data, "loading") == "0", timeout=30, what="Redis answering after the wipe")
    wait_for_titles(backup.token, backup.marker, set(), "the notes gone after the wipe")

    res = playbook("restore.yml", "-e", f"redis_backup_dir={backup.root}")  # the newest backup
    assert res.returncode == 0, _output(res)
    assert f"restored {backup.name}" in " ".join(res.stdout.split()), _output(res)
    wait_for_titles(backup.token, backup.marker, backup.titles, "the restored notes through the MCP server")

    # Redis runs with the role's configuration: AOF on again, in the data directory.
    assert redis_admin(data, "CONFIG", "GET", "appendonly").split() == ["appendonly", "yes"]
    assert info(data, "aof_enabled") == "1", journal(data, REDIS_UNIT)
    assert data.file(f"{DATA_DIR}/appendonlydir/appendonly.aof.manifest").user == "redis"
    # The AOF holds the restored data and what is written next: both survive a restart.
    after = f"{backup.marker} after the restore"
    out = mcp(backup.token, ("notes_add", {"title": after, "body": "written to the new AOF"}))
    assert out["ok"] and not out["calls"][0]["is_error"], out
    data.run_expect([0], f"systemctl restart {REDIS_UNIT}")
    wait_for_titles(backup.token, backup.marker, backup.titles | {after}, "the notes after a restart")
