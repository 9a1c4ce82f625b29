"""A sandbox per principal for the bridge's children: bubblewrap namespaces in a cgroup of their own.

With ``bridge.sandbox: bubblewrap`` every child of the bridge (bridge.py) starts as

    /bin/sh -c <join the child's cgroups> -- bwrap <namespaces and mounts> -- <bridge.command>

so that, per pool key (a principal under ``per_principal``, everyone under ``shared``):

- Files. The child sees a fresh root: /usr read-only (with Debian's merged-usr links /bin, /lib,
  /lib64, /sbin), the few files of /etc a program needs to run and reach the network (certificates,
  resolver, passwd/group, time zone; never /etc/mcpops), the server's release directories read-only
  (``bridge.sandbox_read_only``), a private /tmp (tmpfs), a minimal /dev, and NO /proc. At
  ``bridge.state_dir`` it sees its own copy of the server's state directory:
  ``<state_dir>/principals/<digest>`` (``<state_dir>/shared`` when shared), kept across restarts,
  where ``<digest>`` is 32 hex of BLAKE2b over the issuer and the principal. HOME and the working
  directory are that path, TMPDIR is /tmp. Everything else on the host (the instance's
  configuration, Redis password, key ring, TLS keys, other servers' files, the other principals'
  copies) is not in its mount namespace at all.
- Processes. A pid namespace of its own and no /proc: it can neither see nor signal nor ptrace
  another child or the instance, although they share a uid. (A fresh /proc cannot be mounted under
  the instance's ``ProtectProc=invisible`` nor in containers that mask parts of /proc; without one,
  nothing of another process is reachable by path.) A user and an IPC namespace of its
  own; the network, the host name and the cgroup view are the instance's (no /sys is mounted; its
  IPAddressAllow= and the egress table apply).
- Resources. A cgroup of its own below the instance's (systemd ``Delegate=yes``), with
  ``bridge.child_memory_max`` and ``bridge.child_tasks_max``: a child over its memory bound is killed
  by the kernel inside its own cgroup, alone; the instance and the other principals' children go on
  (the unit has ``OOMPolicy=continue``). On the unified hierarchy (cgroup v2, Debian's default) the
  instance first moves itself into the leaf ``instance`` (a cgroup with children holds no processes)
  and enables the memory and pids controllers for its children; on a hybrid host (cgroup v1
  controllers, the lab's containers) the unit's ``ExecStartPre=+`` hands the instance its own memory
  and pids cgroups, where it makes the same children. A child is stopped by killing its whole cgroup.

What this does not cover: the children of one server share the server's uid, so the kernel's
per-uid limits (RLIMIT_NPROC) and the egress table (by uid) are per server, not per principal; the
network namespace is shared (a child can connect where the instance can).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("mcpops.bridge")

CGROUP_ROOT = Path("/sys/fs/cgroup")
INSTANCE_LEAF = "instance"  # cgroup v2: the leaf the instance's own process moves into
SHARED_DIR = "shared"
PRINCIPALS_DIR = "principals"

# Files of /etc a child may read (bound read-only when they exist): TLS roots, name resolution, user
# and group names, time zone, the dynamic linker's cache. Never /etc/mcpops or other secrets.
ETC_READ_ONLY = (
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/mime.types",
    "/etc/os-release",
)
# Debian's merged /usr: these are links into /usr on the host, and in the sandbox too.
USR_LINKS = (("usr/bin", "/bin"), ("usr/sbin", "/sbin"), ("usr/lib", "/lib"), ("usr/lib64", "/lib64"))

# Joins the cgroups given before "--" (writing its own pid to each cgroup.procs), then runs the rest.
# A shell, not preexec_fn: the instance has threads, and a child must be in its cgroup before it runs.
_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1"; shift; done; shift; exec "$@"'


class SandboxError(Exception):
    """The sandbox cannot be set up (no bwrap, no delegated cgroup, ...): says what and how to fix it."""


def principal_digest(issuer: str | None, key: str) -> str:
    """The name of a principal's own state directory: 32 hex of BLAKE2b over issuer and principal."""
    return hashlib.blake2b(f"{issuer or ''}\n{key}".encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Launch:
    """How to start one child: argv (for exec), its environment and working directory."""

    argv: tuple[str, ...]
    env: dict[str, str]
    cwd: str | None


def _own_cgroups(proc_self_cgroup: str) -> tuple[str | None, dict[str, str]]:
    """(the unified path, {v1 controller: path}) from /proc/self/cgroup."""
    unified: str | None = None
    legacy: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            unified = path
        for controller in controllers.split(","):
            if controller in ("memory", "pids"):
                legacy[controller] = path
    return unified, legacy


class Cgroups:
    """The instance's delegated cgroups and one child cgroup per child, on cgroup v2 or v1."""

    def __init__(self, root: Path = CGROUP_ROOT, proc_self: str = "/proc/self/cgroup"):
        self.root = root
        self.proc_self = proc_self
        self.mode: str | None = None  # "v2" or "v1"
        self.bases: dict[str, Path] = {}  # "unified" or "memory"/"pids" -> the instance's own cgroup

    def prepare(self) -> None:
        """Find the instance's delegated cgroups; on v2 move into a leaf and enable the controllers."""
        try:
            text = Path(self.proc_self).read_text()
        except OSError as exc:
            raise SandboxError(f"cannot read {self.proc_self}: {exc}") from None
        unified, legacy = _own_cgroups(text)
        v2_root = self.root if (self.root / "cgroup.controllers").exists() else None
        if v2_root is not None and unified is not None:
            self._prepare_v2(v2_root / unified.lstrip("/"))
            return
        if set(legacy) == {"memory", "pids"}:
            bases = {name: self.root / name / path.lstrip("/") for name, path in legacy.items()}
            for name, base in bases.items():
                if not os.access(base, os.W_OK) or not os.access(base / "cgroup.procs", os.W_OK):
                    raise SandboxError(
                        f"the instance's {name} cgroup {base} is not delegated to it (cgroup v1: the unit's "
                        "ExecStartPre=+ must give it to the service user; see the mcp_server role's drop-in)"
                    )
            self.mode, self.bases = "v1", bases
            return
        raise SandboxError(
            "no cgroup with the memory and pids controllers for the children: the unit needs Delegate=yes "
            "(cgroup v2) or the memory and pids controllers delegated by its ExecStartPre=+ (cgroup v1)"
        )

    def _prepare_v2(self, base: Path) -> None:
        if base.name == INSTANCE_LEAF:  # prepared before (a second pool in one process: the tests)
            base = base.parent
        if not os.access(base, os.W_OK) or not os.access(base / "cgroup.subtree_control", os.W_OK):
            raise SandboxError(
                f"the instance's cgroup {base} is not delegated to it (the unit needs Delegate=yes)"
            )
        available = set((base / "cgroup.controllers").read_text().split())
        missing = {"memory", "pids"} - available
        if missing:
            raise SandboxError(
                f"the controllers {', '.join(sorted(missing))} are not available in {base} "
                "(Delegate=yes, or Delegate=memory pids, on the unit)"
            )
        leaf = base / INSTANCE_LEAF
        leaf.mkdir(exist_ok=True)
        # Every process of the instance (the bridge and anything left in the unit's cgroup) into the leaf.
        for pid in (base / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):  # a process that ended meanwhile
                (leaf / "cgroup.procs").write_text(pid)
        (base / "cgroup.subtree_control").write_text("+memory +pids")
        self.mode, self.bases = "v2", {"unified": base}

    def create(self, name: str, memory_max: int, tasks_max: int) -> tuple[Path, ...]:
        """A fresh cgroup ``name`` for one child with its bounds; returns the cgroup.procs files to join."""
        made: list[Path] = []
        for kind, base in self.bases.items():
            path = base / name
            self._remove(path)  # a leftover of an earlier child of the same name
            path.mkdir()
            made.append(path)
            if kind == "unified":
                (path / "memory.max").write_text(str(memory_max))
                with contextlib.suppress(OSError):  # no swap accounting on this host
                    (path / "memory.swap.max").write_text("0")
                (path / "memory.oom.group").write_text("1")  # the whole child goes, not a part of it
                (path / "pids.max").write_text(str(tasks_max))
            elif kind == "memory":
                (path / "memory.limit_in_bytes").write_text(str(memory_max))
            elif kind == "pids":
                (path / "pids.max").write_text(str(tasks_max))
        return tuple(path / "cgroup.procs" for path in made)

    def paths(self, name: str) -> tuple[Path, ...]:
        return tuple(base / name for base in self.bases.values())

    def kill(self, name: str) -> None:
        """SIGKILL to everything in the child's cgroups (cgroup.kill where the kernel has it)."""
        for path in self.paths(name):
            kill_file = path / "cgroup.kill"
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    kill_file.write_text("1")
                continue
            for pid in _pids(path):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def oom_kills(self, name: str) -> int:
        """Kills for memory in this child's cgroup (v2 memory.events, v1 memory.oom_control)."""
        for path in self.paths(name):
            for file in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError):
                    for line in (path / file).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return 0

    def remove(self, name: str, deadline: float = 2.0) -> None:
        """Remove the child's cgroups once empty (killing what is left), within ``deadline`` seconds."""
        for path in self.paths(name):
            self._remove(path, deadline)

    def _remove(self, path: Path, deadline: float = 2.0) -> None:
        if not path.exists():
            return
        end = time.monotonic() + deadline
        while True:
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                pids = _pids(path)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                if time.monotonic() > end:
                    logger.warning("bridge: cgroup %s still busy (%s); left in place", path, pids)
                    return
                time.sleep(0.02)


def _pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


class Sandbox:
    """Builds each child's launch: plain (``bridge.sandbox: none``) or bubblewrap in its cgroups."""

    def __init__(
        self,
        *,
        kind: str,
        command: Iterable[str],
        state_dir: str | None,
        read_only: Iterable[str] = (),
        issuer: str | None = None,
        memory_max: int = 256 << 20,
        tasks_max: int = 128,
        bwrap: str | None = None,
        cgroups: Cgroups | None = None,
    ):
        self.kind = kind
        self.command = tuple(command)
        self.state_dir = state_dir
        self.read_only = tuple(read_only)
        self.issuer = issuer
        self.memory_max = memory_max
        self.tasks_max = tasks_max
        self.bwrap = bwrap
        self.cgroups = cgroups
        self.ready = False
        self.serial = itertools.count(1)  # a child replacing another never meets its cgroup

    @property
    def enabled(self) -> bool:
        return self.kind == "bubblewrap"

    def prepare(self) -> None:
        """Once, before the first child: find bwrap and the delegated cgroups (SandboxError if not)."""
        if not self.enabled or self.ready:
            return
        if self.state_dir is None:
            raise SandboxError("bridge.sandbox is bubblewrap but bridge.state_dir is not set")
        self.bwrap = (
            self.bwrap
            or shutil.which("bwrap")
            or ("/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)
        )
        if self.bwrap is None:
            raise SandboxError("bridge.sandbox is bubblewrap but bwrap is not installed (Debian: bubblewrap)")
        if self.cgroups is None:
            self.cgroups = Cgroups()
        self.cgroups.prepare()
        Path(self.state_dir, PRINCIPALS_DIR).mkdir(mode=0o700, exist_ok=True)
        self.ready = True

    def home(self, key: str, shared: bool) -> Path:
        assert self.state_dir is not None
        if shared:
            return Path(self.state_dir, SHARED_DIR)
        return Path(self.state_dir, PRINCIPALS_DIR, principal_digest(self.issuer, key))

    def cgroup_name(self, key: str, shared: bool, serial: int) -> str:
        """The child's cgroup: per key and start (a child replacing another gets a fresh one)."""
        tag = SHARED_DIR if shared else principal_digest(self.issuer, key)[:16]
        return f"child-{tag}-{serial}"

    def launch(
        self, key: str, shared: bool, env: Mapping[str, str], cwd: str | None
    ) -> tuple[Launch, str | None]:
        """The child's launch and its cgroup name (None without the sandbox)."""
        if not self.enabled:
            return Launch(self.command, dict(env), cwd), None
        self.prepare()
        assert self.state_dir is not None and self.bwrap is not None and self.cgroups is not None
        home = self.home(key, shared)
        home.mkdir(mode=0o700, exist_ok=True)
        name = self.cgroup_name(key, shared, next(self.serial))
        procs = self.cgroups.create(name, self.memory_max, self.tasks_max)
        child_env = dict(env)
        child_env.update({"HOME": self.state_dir, "TMPDIR": "/tmp", "PWD": self.state_dir})  # noqa: S108
        argv = [
            "/bin/sh",
            "-c",
            _JOIN,
            "mcpops-child",
            *(str(p) for p in procs),
            "--",
            *self.bwrap_argv(home),
        ]
        return Launch(tuple(argv), child_env, None), name

    def bwrap_argv(self, home: Path) -> list[str]:
        assert self.state_dir is not None and self.bwrap is not None
        argv = [
            self.bwrap,
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--die-with-parent",
            "--new-session",
            "--cap-drop",
            "ALL",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for target, link in USR_LINKS:
            if os.path.islink(link) or os.path.isdir("/" + target):
                argv += ["--symlink", target, link]
        for path in ETC_READ_ONLY:
            argv += ["--ro-bind-try", path, path]
        for path in self.read_only:
            argv += ["--ro-bind", path, path]
        argv += [
            "--dev",
            "/dev",
            "--size",
            str(self.memory_max),
            "--tmpfs",
            "/tmp",  # noqa: S108
            "--bind",
            str(home),
            self.state_dir,
            "--chdir",
            self.state_dir,
            "--",
            *self.command,
        ]
        return argv

    def stop(self, name: str | None) -> None:
        """Kill what is left of a child and remove its cgroups."""
        if name is None or self.cgroups is None:
            return
        self.cgroups.kill(name)
        self.cgroups.remove(name)


__all__ = ["Cgroups", "Launch", "Sandbox", "SandboxError", "principal_digest"]
