"""The bridge's sandbox per principal (sandbox.py) with the real bubblewrap on this machine.

The cgroups here are a directory tree of the test's (this machine's own cgroups are not the test's to
change); what the kernel does with them (a child over its memory bound killed alone, the v1 and v2
hand-over by systemd) is proved on real systemd hosts by the molecule scenario `servers`
(molecule/servers/tests/test_isolation.py). Everything else, the namespaces and the mounts, is real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mcpops_server.sandbox import Cgroups, Sandbox, SandboxError, principal_digest

BWRAP = shutil.which("bwrap")
# The system's Python (under /usr, bound into every sandbox), else this interpreter with its prefix bound.
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else os.path.realpath(sys.executable)
PYTHON_PREFIX = [] if PYTHON.startswith("/usr/") else [sys.base_prefix]
needs_bwrap = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed (make setup installs it)")

PROBE = r"""
import json, os, sys
out = {"home": os.environ.get("HOME"), "tmpdir": os.environ.get("TMPDIR"), "cwd": os.getcwd(),
       "env": sorted(os.environ), "proc": os.path.exists("/proc"), "pid": os.getpid(),
       "root": sorted(os.listdir("/"))}
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            out[path] = f.read()
    except OSError as exc:
        out[path] = exc.__class__.__name__
with open(os.path.join(os.environ["HOME"], "mine.txt"), "a") as f:
    f.write("written\n")
print(json.dumps(out))
"""


def fake_cgroups(tmp_path: Path) -> Cgroups:
    """A cgroup v1 layout as a hybrid host delegates it (memory and pids of the instance's unit)."""
    unit = "/system.slice/mcpops-server@8200.service"
    for controller in ("memory", "pids"):
        base = tmp_path / "cgroup" / controller / unit.lstrip("/")
        base.mkdir(parents=True)
        (base / "cgroup.procs").write_text("")
    proc_self = tmp_path / "proc-self-cgroup"
    proc_self.write_text(f"8:pids:{unit}\n4:memory:{unit}\n1:name=systemd:{unit}\n0::{unit}\n")
    return Cgroups(root=tmp_path / "cgroup", proc_self=str(proc_self))


def sandbox(tmp_path: Path, **kw) -> Sandbox:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (tmp_path / "release").mkdir(exist_ok=True)
    defaults = dict(
        kind="bubblewrap",
        command=[PYTHON, "-I", "-c", PROBE],
        state_dir=str(state),
        read_only=[str(tmp_path / "release"), *PYTHON_PREFIX],
        issuer="https://issuer.test",
        memory_max=64 << 20,
        tasks_max=32,
        cgroups=fake_cgroups(tmp_path),
    )
    defaults.update(kw)
    return Sandbox(**defaults)


def run(box: Sandbox, key: str, *paths: str, shared: bool = False) -> tuple[dict, str]:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "SECRET_OF_THE_INSTANCE": "nope"}
    env.pop("SECRET_OF_THE_INSTANCE")  # the bridge's child_environment() never passes it; neither here
    launch, cgroup = box.launch(key, shared, env, None)
    argv = list(launch.argv)
    argv.extend(paths)  # the probe's arguments follow the command
    done = subprocess.run(argv, env=launch.env, cwd=launch.cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"sandboxed child failed ({done.returncode}): {done.stderr[-2000:]}"
    return json.loads(done.stdout), cgroup


def test_digest_names_issuer_and_principal():
    a = principal_digest("https://a.test", "sub:alice")
    assert len(a) == 32 and int(a, 16) >= 0
    assert a == principal_digest("https://a.test", "sub:alice")
    assert a != principal_digest("https://b.test", "sub:alice"), (
        "the same subject of another issuer is another principal"
    )
    assert a != principal_digest("https://a.test", "sub:bob")


@needs_bwrap
def test_each_principal_has_its_own_copy_of_the_state_directory(tmp_path):
    box = sandbox(tmp_path)
    state = Path(box.state_dir)
    secret = tmp_path / "instance-config.yaml"  # a file of the instance, outside everything bound
    secret.write_text("redis password")
    alice, _ = run(box, "sub:alice", str(secret), str(state / "principals"))
    assert alice["home"] == str(state) and alice["cwd"] == str(state), alice
    assert alice["tmpdir"] == "/tmp", alice
    assert alice[str(secret)] == "FileNotFoundError", "the child read a file of the instance"
    assert alice["proc"] is False, "the child has a /proc: it could read its siblings' entries"
    # Alice's file lands in her own directory on the host, kept for her next child.
    mine = state / "principals" / principal_digest("https://issuer.test", "sub:alice") / "mine.txt"
    assert mine.read_text() == "written\n"
    again, _ = run(box, "sub:alice", str(state / "mine.txt"))
    assert again[str(state / "mine.txt")] == "written\n", "a new child of the same principal lost its state"
    # Bob sees his own (empty at first) copy at the same path; Alice's file is not there.
    bob, _ = run(box, "sub:bob", str(state / "mine.txt"), str(mine))
    assert bob[str(state / "mine.txt")] == "FileNotFoundError", "bob's child read alice's state"
    assert bob[str(mine)] == "FileNotFoundError", "bob's child reached alice's copy by its host path"
    for path in (
        state / "principals",
        state / "principals" / principal_digest("https://issuer.test", "sub:bob"),
    ):
        assert oct(path.stat().st_mode & 0o777) == "0o700", path


@needs_bwrap
def test_shared_is_one_sandbox_for_everyone(tmp_path):
    box = sandbox(tmp_path)
    run(box, "shared", shared=True)
    again, _ = run(box, "shared", str(Path(box.state_dir) / "mine.txt"), shared=True)
    assert again[str(Path(box.state_dir) / "mine.txt")] == "written\n", (
        "the second child lost the first one's file"
    )
    assert (Path(box.state_dir) / "shared" / "mine.txt").exists()


@needs_bwrap
def test_the_root_holds_only_what_a_program_needs(tmp_path):
    box = sandbox(tmp_path)
    seen, _ = run(box, "sub:carol", "/etc/shadow", "/etc/hostname")
    assert seen["/etc/shadow"] == "FileNotFoundError" and seen["/etc/hostname"] == "FileNotFoundError", seen
    assert "proc" not in seen["root"] and "sys" not in seen["root"] and "home" not in seen["root"], seen[
        "root"
    ]
    assert seen["pid"] < 10, f"the child is not in a pid namespace of its own (pid {seen['pid']})"


@needs_bwrap
def test_the_child_joins_its_cgroups_with_its_bounds(tmp_path):
    box = sandbox(tmp_path)
    _, name = run(box, "sub:dave")
    _, second = run(box, "sub:dave")
    assert second != name, "a second child of the same principal reused the first one's cgroup"
    for controller in ("memory", "pids"):
        paths = [p for p in box.cgroups.paths(name) if f"/{controller}/" in str(p)]
        assert len(paths) == 1, box.cgroups.paths(name)
        procs = (paths[0] / "cgroup.procs").read_text().split()
        assert procs and all(p.isdigit() for p in procs), f"the child did not join {paths[0]}: {procs}"
    memory = next(p for p in box.cgroups.paths(name) if "/memory/" in str(p))
    pids = next(p for p in box.cgroups.paths(name) if "/pids/" in str(p))
    assert (memory / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (pids / "pids.max").read_text() == "32"


def test_cgroup_v2_layout_moves_the_instance_into_a_leaf_first(tmp_path):
    """On the unified hierarchy a cgroup with children may hold no process: the instance moves first."""
    unit = tmp_path / "cgroup" / "system.slice" / "mcpops-server@8200.service"
    unit.mkdir(parents=True)
    (tmp_path / "cgroup" / "cgroup.controllers").write_text("cpu memory pids\n")
    (unit / "cgroup.controllers").write_text("memory pids\n")
    (unit / "cgroup.procs").write_text(f"{os.getpid()}\n")
    (unit / "cgroup.subtree_control").write_text("")
    proc_self = tmp_path / "self"
    proc_self.write_text("0::/system.slice/mcpops-server@8200.service\n")
    groups = Cgroups(root=tmp_path / "cgroup", proc_self=str(proc_self))
    groups.prepare()
    assert groups.mode == "v2"
    assert (unit / "instance" / "cgroup.procs").read_text() == str(os.getpid())
    assert (unit / "cgroup.subtree_control").read_text() == "+memory +pids"
    procs = groups.create("child-x-1", 100 << 20, 50)
    assert procs == (unit / "child-x-1" / "cgroup.procs",)
    assert (unit / "child-x-1" / "memory.max").read_text() == str(100 << 20)
    assert (unit / "child-x-1" / "memory.oom.group").read_text() == "1"
    assert (unit / "child-x-1" / "pids.max").read_text() == "50"


def test_no_delegated_cgroup_is_a_clear_error(tmp_path):
    proc_self = tmp_path / "self"
    proc_self.write_text("0::/user.slice\n")
    box = sandbox(tmp_path, cgroups=Cgroups(root=tmp_path / "nothing", proc_self=str(proc_self)))
    with pytest.raises(SandboxError, match="Delegate=yes"):
        box.prepare()


def test_without_bwrap_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    box = sandbox(tmp_path, bwrap=None)
    if os.access("/usr/bin/bwrap", os.X_OK):
        pytest.skip("/usr/bin/bwrap exists; the fallback finds it")
    with pytest.raises(SandboxError, match="bubblewrap"):
        box.prepare()


def test_sandbox_none_runs_the_command_as_it_is(tmp_path):
    box = Sandbox(kind="none", command=["/bin/true"], state_dir=None)
    launch, cgroup = box.launch("sub:x", False, {"PATH": "/usr/bin"}, "/")
    assert launch.argv == ("/bin/true",) and cgroup is None and launch.cwd == "/"
