#!/usr/bin/env python3
"""Turn ONE stdio MCP server's package spec into a locked, hashed, offline-installable artefact.

Runs on the controller (like wheelhouse.py); managed hosts reach no package registry. No package's
own code runs here, neither while resolving nor while fetching. Exactly one of:

--pypi 'NAME==VERSION' (one pinned requirement, extras allowed)
    1. `uv pip compile --no-build --generate-hashes` FOR THE TARGET (--python-version, --arch,
       --manylinux), with the server's --constraint specifiers and --exclude-newer date: lock.txt pins
       every distribution with its sha256 hashes. --no-build: uv reads metadata from wheels only, so
       a distribution with no wheel for the target (only a source distribution, whose metadata would
       come from running its build backend) is refused by name instead of being built here.
    2. `pip download --no-deps --only-binary=:all:` of exactly those pins for the target's version,
       ABI and manylinux platforms (pip checks the downloads against the lock's hashes).
    3. Deterministic tar of wheels/. The lock is NOT in the tarball: it travels in the answer
       (`lock`) and the host writes it beside the unpacked wheels, so `install_argv`
       (`pip install --no-index --require-hashes --only-binary=:all:`) checks the wheels against a lock
       that did not come with them.
--npm 'NAME@VERSION' (an exact version; scoped names allowed)
    1. In a scratch directory: a package.json depending on exactly that version (plus the server's
       --override pins as package.json "overrides"), resolved with
       `npm install --package-lock-only --ignore-scripts --allow-git=none`: a package-lock.json and
       nothing installed. Every entry must be a registry tarball with an integrity hash; git, URL
       (remote tarball), file:, link: and directory dependencies are refused by name here, before
       anything of theirs is installed. (`--ignore-scripts` alone does not stop the `prepare` of a
       git dependency, which npm runs when it packs one; `--allow-git=none`, npm 11.9 and later,
       stops npm from fetching it at all, and every npm process gets npm_config_ignore_scripts=true
       in its environment, which the nested install that prepares a git dependency inherits.)
    2. `npm ci --ignore-scripts --allow-git=none` of that lock for the target's os/cpu/libc.
    3. Refused: native addons (a binding.gyp or a .node file anywhere in node_modules: they need
       build scripts, which never run), and a package whose engines.node excludes the target's
       node (--node-major, or the exact --node-version). Dependencies whose engines exclude the
       target are reported (`engine_mismatches`), and refused with --strict-engines.
    4. Deterministic tar of package.json, package-lock.json and node_modules/ (symlinks of
       node_modules/.bin kept; npm's own node_modules/.package-lock.json left out). The host
       extracts it; no npm there. Run it with `command`.

Lock files (--lock-dir DIR --server NAME): the lock of server NAME's package version for this target is
DIR/NAME.<version>.<target>.lock.json (target: py<X.Y.Z>-<arch>-manylinux_<M_N>, or node<major>-<arch>), meant
to be kept in the inventory's repository. It records the inputs (spec, constraints, exclude-newer or
overrides, target), the pins and hashes (PyPI: lock.txt; npm: package.json and package-lock.json),
the release id and the tarball's sha256. When it exists, nothing is resolved: the artefact is built
from it (`npm ci` for npm) and must come out with the recorded release and sha256, else the run
fails naming the file, the expected and the actual digest. When it does not, the inputs are
resolved and it is written (changed). A lock whose other inputs (constraints, exclude-newer,
overrides) differ from the current ones is refused, naming what differs; delete it to resolve again.

Common: the release id is `<name>-<version>-<12 hex of a sha256 over the inputs, the lock and every
artefact byte>`, so a change of constraints makes a new release; the tarball is
<cache>/servers/<kind>/<release>.tar. When the inputs (every option) are the same as in an earlier
run, that run's answer is printed again with "changed": false and nothing is resolved or downloaded
(--refresh resolves again, e.g. to take newer transitive dependencies; a lock file still wins). The
tarball's sha256 is recomputed on every such cache hit and compared with the recorded one, and a
rebuild that finds its tarball already in the cache compares the two: a difference is a failure
naming the file and both digests, never a silent rebuild. Indexes and registries are the machine's
own uv/pip/npm configuration.

"PREFIX" in `install_argv` and `command` stands for the directory the tarball is extracted into.

Prints one JSON object; see the keys in `answer` below. Exit codes: 0 done, 1 a tool failed,
2 refused (unpinned spec, bad constraint, no wheel, git/URL/file dependency, native addon, engines,
a lock file of other inputs), 3 a digest differs (cache entry or lock file).
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Part of every release id and input key: bump it when the artefact's layout or rules change.
FORMAT = b"server-artifacts-2\n"
LOCK_FORMAT = "mcpops-server-lock-1"
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, as wheelhouse.py
PREFIX = "PREFIX"
MAX_ITEMS = 64  # constraints or overrides of one server
MAX_LOCK_BYTES = 32 * 1024 * 1024

PYPI_PIN = re.compile(
    r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?P<extras>\[[A-Za-z0-9._,\s-]+\])?\s*==\s*(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)"
)
# One requirement specifier constraining a dependency: a name and one or more version clauses.
_CLAUSE = r"(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9][A-Za-z0-9.*+!_-]*"
PYPI_CONSTRAINT = re.compile(
    rf"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\[[A-Za-z0-9._,-]+\])?\s*{_CLAUSE}(?:\s*,\s*{_CLAUSE})*"
)
# uv --exclude-newer: a date, or an RFC 3339 time with its offset.
EXCLUDE_NEWER = re.compile(r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2}))?")
# Lower case since 2017; older packages (JSONStream) keep their capitals.
NPM_NAME = r"(?:@[A-Za-z0-9~-][A-Za-z0-9._~-]*/)?[A-Za-z0-9~-][A-Za-z0-9._~-]*"
SEMVER = r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
NPM_PIN = re.compile(rf"(?P<name>{NPM_NAME})@(?P<version>{SEMVER})")
NPM_ARCH = {"x86_64": "x64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64", "s390x": "s390x"}
SERVER_NAME = re.compile(r"[a-z][a-z0-9-]{0,23}")
INTEGRITY = re.compile(r"(?:sha512|sha384|sha256|sha1)-[A-Za-z0-9+/]+={0,2}")
# npm flags for every resolution and install: no lifecycle script, no git fetch at all (npm 11.9+).
NPM_SAFE = ["--ignore-scripts", "--allow-git=none", "--no-audit", "--no-fund", "--no-update-notifier"]
# The nested `npm install` that prepares a git dependency inherits the environment, not the flags.
NPM_ENV = {"npm_config_ignore_scripts": "true", "npm_config_allow_git": "none"}


class Refused(Exception):
    """An input or a package this script will not turn into an artefact (exit 2)."""


class DigestMismatch(Exception):
    """A cached artefact or a lock file's artefact whose sha256 is not the recorded one (exit 3)."""


class ToolFailed(Exception):
    """uv, pip or npm exited non-zero (exit 1); the message holds the command and its output."""

    def __init__(self, cmd: list[str], proc: subprocess.CompletedProcess):
        self.output = (proc.stderr or "") + (proc.stdout or "")
        why = proc.stderr[-4000:] or proc.stdout[-4000:]
        super().__init__(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{why}")


def run(cmd: list[str], env: dict[str, str] | None = None, **kw) -> str:
    full = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
    full |= env or {}
    # S603: the argv is built here from validated options and never passes through a shell.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full, **kw)  # noqa: S603
    if proc.returncode != 0:
        raise ToolFailed(cmd, proc)
    return proc.stdout


def uv_command() -> list[str]:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if Path(found).exists():
        return [found]
    return [sys.executable, "-m", "uv"]


def npm_command() -> list[str]:
    found = shutil.which("npm")
    if not found:
        raise Refused("--npm needs npm (and node) on the controller's PATH; none was found")
    return [found]


# ---------------------------------------------------------------------------------------------
# Specs and the server's resolution inputs


def _printable(option: str, value: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise Refused(f"{option} {value!r}: control characters (a newline, a tab) are not accepted")


def parse_pypi(spec: str) -> tuple[str, str]:
    _printable("--pypi", spec)
    m = PYPI_PIN.fullmatch(spec.strip())
    if not m or "*" in spec:
        raise Refused(
            f"--pypi {spec!r}: expected exactly one pinned requirement, NAME==VERSION (extras allowed, "
            "e.g. 'mcp-server-time==2026.10.19' or 'pkg[extra]==1.2.3'); not a range, a wildcard, "
            "a marker, a URL, a path or several requirements"
        )
    return re.sub(r"[-_.]+", "-", m["name"]).lower(), m["version"]


def parse_npm(spec: str) -> tuple[str, str]:
    _printable("--npm", spec)
    m = NPM_PIN.fullmatch(spec.strip())
    if not m:
        raise Refused(
            f"--npm {spec!r}: expected one package at an exact version, NAME@X.Y.Z (scoped names "
            "allowed, e.g. '@modelcontextprotocol/server-everything@2026.8.31'); not a range "
            "(^, ~, >=, x), a dist-tag such as latest, a URL, a git or file: spec"
        )
    return m["name"], m["version"]


def parse_constraints(values: list[str]) -> list[str]:
    if len(values) > MAX_ITEMS:
        raise Refused(f"--constraint: {len(values)} given; accepted is at most {MAX_ITEMS}")
    out = []
    for value in values:
        _printable("--constraint", value)
        if len(value) > 200 or not PYPI_CONSTRAINT.fullmatch(value.strip()):
            raise Refused(
                f"--constraint {value!r}: expected one requirement specifier constraining a dependency, "
                "NAME followed by version clauses (e.g. 'mcp<2', 'pydantic>=2,<3', 'anyio==4.*'); "
                "no marker, URL or path"
            )
        out.append(value.strip())
    return out


def parse_exclude_newer(value: str) -> str:
    if not value:
        return ""
    _printable("--exclude-newer", value)
    ok = EXCLUDE_NEWER.fullmatch(value)
    if ok:
        try:
            dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            ok = None
    if not ok:
        raise Refused(
            f"--exclude-newer {value!r}: expected a date (2025-10-01) or an RFC 3339 time with its "
            "offset (2025-10-01T12:00:00Z); resolution ignores every distribution uploaded after it"
        )
    return value


def parse_overrides(values: list[str], own: str) -> dict[str, str]:
    if len(values) > MAX_ITEMS:
        raise Refused(f"--override: {len(values)} given; accepted is at most {MAX_ITEMS}")
    out: dict[str, str] = {}
    for value in values:
        _printable("--override", value)
        m = NPM_PIN.fullmatch(value.strip())
        if not m or m["name"] == own or m["name"] in out:
            raise Refused(
                f"--override {value!r}: expected NAME@X.Y.Z, one exact version for a dependency of "
                f"{own} (each name once, not {own} itself), written as package.json overrides"
            )
        out[m["name"]] = m["version"]
    return dict(sorted(out.items()))


def resolution_inputs(a: argparse.Namespace, kind: str, name: str) -> dict:
    """What decides the artefact, besides the registries' content: recorded in a lock file (which is
    refused when they differ) and hashed into the release id (a change makes a new release)."""
    if kind == "pypi":
        if a.override:
            raise Refused(
                "--override is for --npm servers (package.json overrides); --pypi takes --constraint"
            )
        return {
            "pypi": a.pypi.strip(),
            "constraints": parse_constraints(a.constraint),
            "exclude_newer": parse_exclude_newer(a.exclude_newer),
            "python_version": a.python_version,
            "platform": f"{a.arch}-manylinux_{a.manylinux}",
        }
    if a.constraint or a.exclude_newer:
        raise Refused(
            "--constraint and --exclude-newer are for --pypi servers (uv's resolution); not for --npm"
        )
    return {
        "npm": a.npm.strip(),
        "overrides": parse_overrides(a.override, name),
        "node_major": a.node_major,
        "node_version": a.node_version or "",
        "arch": a.arch,
    }


# ---------------------------------------------------------------------------------------------
# node semver ranges: enough of npm's grammar to answer "does this range accept that node?"

_PART = re.compile(
    r"^(?:v|=)?\s*(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:-[0-9A-Za-z.-]+)?(?:\+\S*)?$"
)


def _partial(text: str) -> list[int | None]:
    m = _PART.match(text.strip())
    if not m:
        raise ValueError(text)
    return [None if g is None or g in "xX*" else int(g) for g in m.groups()]


def _comparators(simple: str) -> list[tuple[str, tuple[int, int, int]]]:
    """Desugar one comparator set (no ||) into (op, version) pairs, op in <, <=, >, >=."""
    simple = re.sub(r"(<=|>=|<|>|=|~|\^)\s+", r"\1", simple.strip())
    hyphen = re.match(r"^(\S+)\s+-\s+(\S+)$", simple)
    if hyphen:
        lo, hi = _partial(hyphen[1]), _partial(hyphen[2])
        out = [(">=", tuple(x or 0 for x in lo))]
        if hi[0] is None:
            return out
        if hi[1] is None:
            return [*out, ("<", (hi[0] + 1, 0, 0))]
        if hi[2] is None:
            return [*out, ("<", (hi[0], hi[1] + 1, 0))]
        return [*out, ("<=", tuple(hi))]
    out: list[tuple[str, tuple[int, int, int]]] = []
    for token in simple.split():
        op = re.match(r"^(<=|>=|<|>|=|~>?|\^)?(.*)$", token)
        kind, rest = op[1] or "", op[2]
        major, minor, patch = _partial(rest)
        if major is None:  # * or x: anything
            continue
        if kind in ("", "="):
            if minor is None:
                out += [(">=", (major, 0, 0)), ("<", (major + 1, 0, 0))]
            elif patch is None:
                out += [(">=", (major, minor, 0)), ("<", (major, minor + 1, 0))]
            else:
                out += [(">=", (major, minor, patch)), ("<=", (major, minor, patch))]
        elif kind.startswith("~"):
            lo = (major, minor or 0, patch or 0)
            out += [(">=", lo), ("<", (major + 1, 0, 0) if minor is None else (major, minor + 1, 0))]
        elif kind == "^":
            lo = (major, minor or 0, patch or 0)
            if major > 0 or minor is None:
                hi = (major + 1, 0, 0)
            elif minor > 0 or patch is None:
                hi = (0, minor + 1, 0)
            else:
                hi = (0, 0, patch + 1)
            out += [(">=", lo), ("<", hi)]
        else:  # <, <=, >, >= with a partial version
            if kind == ">":
                if minor is None:
                    out.append((">=", (major + 1, 0, 0)))
                elif patch is None:
                    out.append((">=", (major, minor + 1, 0)))
                else:
                    out.append((">", (major, minor, patch)))
            elif kind == ">=":
                out.append((">=", (major, minor or 0, patch or 0)))
            elif kind == "<":
                out.append(("<", (major, minor or 0, patch or 0)))
            elif minor is None:  # <=
                out.append(("<", (major + 1, 0, 0)))
            elif patch is None:
                out.append(("<", (major, minor + 1, 0)))
            else:
                out.append(("<=", (major, minor, patch)))
    return out


def _satisfies(version: tuple[int, int, int], comps) -> bool:
    ops = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return all(ops[op](version, bound) for op, bound in comps)


def node_accepts(spec: str, major: int, exact: tuple[int, int, int] | None = None) -> bool:
    """Whether an engines.node range accepts the target: that exact version when known, else
    some version of that major line (the smallest one in a comparator set is N.0.0, a bound, or
    a bound's successor, so those are the only candidates to try)."""
    spec = (spec or "").strip()
    if not spec:
        return True
    try:
        sets = [_comparators(part) for part in spec.split("||")]
    except (ValueError, TypeError):
        return False  # a range npm would not parse either: do not pretend it accepts
    for comps in sets:
        if exact is not None:
            if _satisfies(exact, comps):
                return True
            continue
        candidates = {(major, 0, 0)}
        for _op, (a, b, c) in comps:
            if a == major:
                candidates |= {(a, b, c), (a, b, c + 1)}
        if any(_satisfies(v, comps) for v in candidates):
            return True
    return False


# ---------------------------------------------------------------------------------------------
# Artefacts


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def platforms(arch: str, level: str) -> list[str]:
    major, minor = (int(x) for x in level.split("_"))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}", f"linux_{arch}"]
    return tags


def collect(root: Path, top: str, skip: frozenset[str] = frozenset()) -> list[tuple[str, Path]]:
    """(arcname, path) of every file and symlink under root/top, sorted; refuses anything else."""
    members = []
    base = root / top
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in [*filenames, *(d for d in dirnames if (Path(dirpath) / d).is_symlink())]:
            path = Path(dirpath) / name
            arcname = str(path.relative_to(root))
            if arcname in skip:
                continue
            if not (path.is_symlink() or path.is_file()):
                raise Refused(f"{arcname}: neither a file nor a symlink")
            members.append((arcname, path))
    return sorted(members)


def member_digest(members: list[tuple[str, Path]], digest) -> None:
    for arcname, path in members:
        if path.is_symlink():
            digest.update(f"L {arcname} {os.readlink(path)}\n".encode())
        else:
            mode = "x" if path.stat().st_mode & 0o111 else "f"
            digest.update(f"{mode} {arcname} {sha256(path)}\n".encode())


def deterministic_tar(members: list[tuple[str, Path]], dest: Path) -> None:
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")  # two runs for one release never share it
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in sorted(members):
            info = tarfile.TarInfo(arcname)
            info.mtime, info.uid, info.gid = int(SOURCE_DATE_EPOCH), 0, 0
            info.uname = info.gname = "root"
            if path.is_symlink():
                target = os.readlink(path)
                resolved = os.path.normpath(os.path.join(os.path.dirname(arcname), target))
                if os.path.isabs(target) or resolved.startswith(".."):
                    raise Refused(f"{arcname}: a symlink out of the artefact ({target})")
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
                tar.addfile(info)
                continue
            data = path.read_bytes()
            info.size = len(data)
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(dest)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name.lstrip("@")).strip("-")


def release_id(name: str, version: str, digest) -> str:
    return f"{safe_name(name)}-{version}-{digest.hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------
# PyPI


def wheel_entry_points(wheel: Path) -> tuple[str, dict[str, str]]:
    """(normalised distribution name, its console_scripts) read from a wheel's dist-info."""
    dist = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/entry_points\.txt", n)]
        if not names:
            return dist, {}
        parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
        parser.optionxform = str  # script names are case-sensitive
        parser.read_string(zf.read(names[0]).decode())
    if not parser.has_section("console_scripts"):
        return dist, {}
    return dist, {k.strip(): v.strip() for k, v in parser.items("console_scripts")}


def no_wheel_refusal(a: argparse.Namespace, output: str) -> Refused | None:
    """uv's "has no usable wheels" (with --no-build) as a refusal naming the distributions."""
    found = []
    for m in re.finditer(r"([A-Za-z0-9][A-Za-z0-9._-]*)(==[^\s,]+)? (?:has|have) no usable wheels", output):
        found.append(m[1] + (m[2] or ""))
    for m in re.finditer(r"Wheels are required for `([^`]+)`", output):
        if not any(f.split("==")[0] == m[1] for f in found):
            found.append(m[1])
    if not found:
        return None
    shown = ", ".join(dict.fromkeys(found))
    return Refused(
        f"--pypi {a.pypi!r}: {shown}: only a source distribution, no wheel for the target (Python "
        f"{a.python_version}, {a.arch}-manylinux_{a.manylinux}); building it would run its code on the "
        "controller, which is refused. Pick versions that publish wheels (a --constraint can exclude "
        "the sdist-only ones)"
    )


def check_pypi_lock(text: str, where: str) -> None:
    """A lock read from a file holds pins and hashes only: no pip option, URL or path that would
    send pip elsewhere on the controller or on the host."""
    for n, line in enumerate(text.splitlines(), 1):
        body = line.strip().rstrip("\\").strip()
        if not body or body.startswith("#") or re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", body):
            continue
        if PYPI_PIN.fullmatch(body.split(";")[0].strip()) and "://" not in body and " @ " not in body:
            continue
        raise Refused(f"{where}: line {n} {line!r} is neither NAME==VERSION nor --hash=sha256:<64 hex>")


def build_pypi(a: argparse.Namespace, inputs: dict, stored: dict | None, work: Path) -> dict:
    """lock.txt (resolved, or from the lock file) and the wheels it pins, in work/."""
    pyver = a.python_version
    major, minor = pyver.split(".")[:2]
    index = ["--index-url", a.index_url] if a.index_url else []
    lock = work / "lock.txt"
    if stored is not None:
        lock.write_text("\n".join(stored["requirements"]) + "\n")
    else:
        req_in = work / "requirements.in"
        req_in.write_text(inputs["pypi"] + "\n")
        cmd = [
            *uv_command(),
            "pip",
            "compile",
            "--quiet",
            "--no-header",
            "--no-annotate",
            "--generate-hashes",
        ]
        cmd += ["--no-build", "--python-version", pyver, "--python-platform", inputs["platform"]]
        if inputs["constraints"]:
            constraints = work / "constraints.txt"
            constraints.write_text("\n".join(inputs["constraints"]) + "\n")
            cmd += ["--constraint", str(constraints)]
        if inputs["exclude_newer"]:
            cmd += ["--exclude-newer", inputs["exclude_newer"]]
        try:
            run([*cmd, *index, "-o", str(lock), str(req_in)])
        except ToolFailed as failed:
            raise no_wheel_refusal(a, failed.output) or failed from None
    wheels = work / "wheels"
    wheels.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    cmd += ["--python-version", pyver, "--implementation", "cp", "--abi", f"cp{major}{minor}"]
    cmd += ["--abi", "abi3", "--abi", "none"]
    for plat in platforms(a.arch, a.manylinux):
        cmd += ["--platform", plat]
    try:
        run([*cmd, "-d", str(wheels), "-r", str(lock), *index])
    except ToolFailed as failed:
        if stored is None or "DO NOT MATCH THE HASHES" not in failed.output:
            raise
        lines = [x.strip() for x in failed.output.splitlines() if "Expected sha256" in x or " Got " in x]
        raise DigestMismatch(
            f"{a.lock_path}: a download does not match the lock's hashes ({'; '.join(lines)}): "
            "a package changed under the same pins, or the lock was edited"
        ) from None
    scripts: dict[str, dict[str, str]] = {}
    for w in sorted(wheels.glob("*.whl")):
        dist, found = wheel_entry_points(w)
        if found:
            scripts[dist] = found
    own = scripts.pop(inputs["name"], {})
    text = lock.read_text()
    return {
        "lock_bytes": text.encode(),
        "members": [(f"wheels/{w.name}", w) for w in sorted(wheels.glob("*.whl"))],
        "record": {"requirements": text.splitlines()},
        "answer": {
            "lock": text,
            "install_argv": [
                ["python3", "-m", "venv", f"{PREFIX}/venv"],
                [
                    f"{PREFIX}/venv/bin/pip",
                    "install",
                    "--no-index",
                    "--require-hashes",
                    "--only-binary=:all:",
                    "--find-links",
                    f"{PREFIX}/wheels",
                    "-r",
                    f"{PREFIX}/lock.txt",
                ],
            ],
            "entry_points": own,
            "dependency_entry_points": scripts,
            "command": [f"{PREFIX}/venv/bin/{next(iter(own))}"] if len(own) == 1 else None,
            "python_version": pyver,
            "platform": inputs["platform"],
            "constraints": inputs["constraints"],
            "exclude_newer": inputs["exclude_newer"] or None,
            "locked": sum(1 for line in text.splitlines() if line and not line[0].isspace()),
        },
    }


# ---------------------------------------------------------------------------------------------
# npm


def native_addons(project: Path) -> list[str]:
    """Paths (relative to project) of every binding.gyp and .node file under node_modules."""
    return sorted(
        str(p.relative_to(project))
        for p in (project / "node_modules").rglob("*")
        if (p.name == "binding.gyp" or p.suffix == ".node") and not p.is_dir()
    )


def npm_spec_kind(spec: str) -> str:
    """What a dependency spec of a package.json points at, as npm-package-arg reads it: "registry"
    (a version, range or dist-tag, or an npm: alias of one), else git, URL or file."""
    s = str(spec).strip()
    if s.startswith("npm:"):
        target = s[4:]
        at = target.rfind("@")
        return npm_spec_kind(target[at + 1 :]) if at > 0 else "registry"
    if re.match(r"(?:git\+|git:|git@|github:|gitlab:|bitbucket:|gist:)", s):
        return "git"
    if re.match(r"https?://", s, re.IGNORECASE):
        return "URL"
    if re.match(r"(?:file:|link:|\.|~/|/|\\|[A-Za-z]:)", s) or re.search(r"\.(?:tgz|tar\.gz|tar)$", s, re.I):
        return "file"
    if "/" in s or ":" in s:
        return "git"  # user/repo[#ref], GitHub's shorthand; no range or tag has a slash
    return "registry"


def check_npm_lock(lock: dict, where: str) -> None:
    """Every package of the tree is a registry tarball with an integrity hash: refuse, by name, git,
    URL, file:, link: and directory dependencies (found both in the lock's entries and in the
    dependency specs each entry declares)."""
    problems: list[str] = []
    packages = lock.get("packages")
    if not isinstance(packages, dict) or lock.get("lockfileVersion") not in (2, 3):
        raise Refused(f"{where}: not a package-lock.json of lockfileVersion 2 or 3")
    for path, entry in sorted(packages.items()):
        if not isinstance(entry, dict):
            raise Refused(f"{where}: packages[{path!r}] is not an object")
        pkg = path.rsplit("node_modules/", 1)[-1] if path else "(the project)"
        label = f"{pkg}@{entry.get('version', '?')}"
        resolved = str(entry.get("resolved") or "")
        if path and not path.startswith("node_modules/"):
            problems.append(f"{path} (a local directory in the tree)")
        elif entry.get("link"):
            problems.append(f"{pkg} (a link to {resolved or 'a local directory'})")
        elif path and not entry.get("inBundle"):  # a bundled package comes inside its parent's tarball
            if resolved and npm_spec_kind(resolved) != "URL":
                problems.append(f"{label} (resolved from {npm_spec_kind(resolved)} {resolved})")
            elif resolved and "/-/" not in resolved:
                problems.append(f"{label} (a URL tarball, {resolved}, not a registry's)")
            if not INTEGRITY.fullmatch(str(entry.get("integrity") or "")):
                problems.append(f"{label} (no integrity hash)")
        for field in ("dependencies", "optionalDependencies", "peerDependencies"):
            for dep, spec in sorted((entry.get(field) or {}).items()):
                kind = npm_spec_kind(spec)
                if kind != "registry":
                    problems.append(f"{pkg} -> {dep} ({kind} dependency {spec!r})")
    if problems:
        shown = "; ".join(dict.fromkeys(problems))
        raise Refused(
            f"{where}: only registry packages with an integrity hash are accepted, and the tree has: "
            f"{shown}. Git, URL (remote tarball), file:, link: and directory dependencies are refused "
            "(a git dependency's prepare script would run on the controller)"
        )


def write_json(path: Path, data: dict) -> bytes:
    """package.json / package-lock.json as this script writes them, so that a lock file stored as
    JSON gives back the same bytes (and release id) on any controller."""
    text = (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()
    path.write_bytes(text)
    return text


def resolve_npm_tree(npm: list[str], project: Path, flags: list[str], where: str) -> dict:
    """package-lock.json of project/package.json, resolved with nothing installed and no package's
    code run (see the module's docstring), checked by check_npm_lock."""
    try:
        run([*npm, "install", "--package-lock-only", *NPM_SAFE, *flags], env=NPM_ENV, cwd=project)
    except ToolFailed as failed:
        if "EALLOWGIT" not in failed.output:
            raise
        fetch = re.findall(r'Refusing to fetch "([^"]+)"', failed.output)
        raise Refused(
            f"{where}: the tree has a git dependency ({', '.join(fetch) or 'npm: EALLOWGIT'}); only registry "
            "packages with an integrity hash are accepted (a git dependency's prepare script would run "
            "on the controller), so it was never fetched"
        ) from None
    lock = json.loads((project / "package-lock.json").read_text(encoding="utf-8"))
    check_npm_lock(lock, where)
    return lock


def build_npm(a: argparse.Namespace, inputs: dict, stored: dict | None, work: Path) -> dict:
    npm = npm_command()
    name = inputs["name"]
    exact = tuple(int(x) for x in a.node_version.split(".")) if a.node_version else None
    project = work / "project"
    project.mkdir()
    flags = ["--os=linux", f"--cpu={NPM_ARCH.get(a.arch, a.arch)}", "--libc=glibc"]
    flags += [f"--registry={a.registry}"] if a.registry else []
    manifest = {"name": "mcpops-stdio-server", "version": "0.0.0", "private": True}
    manifest["dependencies"] = {name: inputs["version"]}
    if inputs["overrides"]:
        manifest["overrides"] = inputs["overrides"]
    write_json(project / "package.json", manifest)
    if stored is not None:
        # The manifest follows from the inputs: one edited in the lock file (a script, another
        # dependency) is refused rather than installed.
        if stored["package.json"] != manifest:
            raise Refused(
                f"{a.lock_path}: its package.json is not the one of the server's inputs ({manifest}); "
                "delete the file to resolve again"
            )
        lock = stored["package-lock.json"]
        if not isinstance(lock, dict):
            raise Refused(f"{a.lock_path}: package-lock.json is not an object")
        check_npm_lock(lock, f"{a.lock_path} (package-lock.json)")
    else:
        lock = resolve_npm_tree(npm, project, flags, f"--npm {a.npm!r}")
    lock_bytes = write_json(project / "package-lock.json", lock)
    try:
        run([*npm, "ci", *NPM_SAFE, *flags], env=NPM_ENV, cwd=project)
    except ToolFailed as failed:
        if stored is None or "EINTEGRITY" not in failed.output:
            raise
        lines = [x for x in failed.output.splitlines() if "integrity" in x.lower()][:3]
        raise DigestMismatch(
            f"{a.lock_path}: a download does not match the lock's integrity ({'; '.join(lines)}): "
            "a package changed under the same version, or the lock was edited"
        ) from None
    modules = project / "node_modules"
    native = native_addons(project)
    if native:
        shown = ", ".join(native[:5]) + (" ..." if len(native) > 5 else "")
        raise Refused(
            f"--npm {a.npm!r}: the package tree has native addons ({shown}); they need build scripts, "
            "which never run here (npm ci --ignore-scripts) and no compiler is on the hosts"
        )
    pkg = json.loads((modules / name / "package.json").read_text())
    target = a.node_version or f"{a.node_major}.x"
    own_range = (pkg.get("engines") or {}).get("node", "")
    if not node_accepts(own_range, a.node_major, exact):
        raise Refused(
            f"--npm {a.npm!r}: its engines.node is {own_range!r}, which does not accept the target's "
            f"node {target} (--node-major {a.node_major}"
            + (f", --node-version {a.node_version}" if a.node_version else "")
            + "); pick a version of the package that supports it, or a target with a newer node"
        )
    mismatches = []
    for path, entry in sorted((lock.get("packages") or {}).items()):
        rng = (entry.get("engines") or {}).get("node", "") if isinstance(entry.get("engines"), dict) else ""
        if path and rng and not node_accepts(rng, a.node_major, exact):
            dep = path.rsplit("node_modules/", 1)[-1]
            mismatches.append({"package": dep, "version": entry.get("version"), "node": rng})
    if mismatches and a.strict_engines:
        shown = ", ".join(f"{m['package']}@{m['version']} ({m['node']})" for m in mismatches)
        raise Refused(f"--npm {a.npm!r}: dependencies exclude node {target}: {shown} (--strict-engines)")
    for m in mismatches:
        sys.stderr.write(
            f"server_artifacts: warning: {m['package']}@{m['version']} asks for node {m['node']}, "
            f"the target has {target}\n"
        )
    scripts = sorted(
        p[len("node_modules/") :] for p, e in lock.get("packages", {}).items() if e.get("hasInstallScript")
    )
    members = [
        ("package.json", project / "package.json"),
        ("package-lock.json", project / "package-lock.json"),
    ]
    # npm's cache of the installed tree: written by whichever npm ran `ci`, read by no node program.
    members += collect(project, "node_modules", skip=frozenset({"node_modules/.package-lock.json"}))
    bins = pkg.get("bin") or {}
    if isinstance(bins, str):
        bins = {name.rsplit("/", 1)[-1]: bins}
    bins = {k: os.path.normpath(v) for k, v in bins.items()}
    commands = {k: ["node", f"{PREFIX}/node_modules/{name}/{v}"] for k, v in bins.items()}
    return {
        "lock_bytes": lock_bytes,
        "members": members,
        "record": {"package.json": manifest, "package-lock.json": lock},
        "answer": {
            "install_argv": None,
            "bin": bins,
            "commands": commands,
            "command": next(iter(commands.values())) if len(commands) == 1 else None,
            "node_major": a.node_major,
            "node_version": a.node_version or None,
            "overrides": inputs["overrides"],
            "engines": own_range or None,
            "engine_mismatches": mismatches,
            "skipped_install_scripts": scripts,
            "locked": sum(1 for p in lock.get("packages", {}) if p),
        },
    }


# ---------------------------------------------------------------------------------------------
# Lock files


def lock_file_path(a: argparse.Namespace, kind: str) -> Path:
    if kind == "pypi":
        target = f"py{a.python_version}-{a.arch}-manylinux_{a.manylinux}"
    else:
        target = f"node{a.node_version or a.node_major}-{a.arch}"
    # The package's version is part of the name: a version change (and the rollback) each has its own
    # lock, kept side by side; the other inputs (constraints, ...) must match the one of that version.
    spec = a.pypi if kind == "pypi" else a.npm
    version = spec.rsplit("==" if kind == "pypi" else "@", 1)[-1].strip()
    return a.lock_dir / f"{a.server}.{version}.{target}.lock.json"


def read_lock(path: Path, kind: str, inputs: dict) -> dict:
    """A lock file of these inputs, else Refused naming what differs."""
    if path.stat().st_size > MAX_LOCK_BYTES:
        raise Refused(f"{path}: larger than {MAX_LOCK_BYTES} bytes; not a lock file of this script")
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise Refused(f"{path}: not JSON ({exc}); delete it to resolve again") from None
    need = ("requirements",) if kind == "pypi" else ("package.json", "package-lock.json")
    if (
        not isinstance(stored, dict)
        or stored.get("format") != LOCK_FORMAT
        or stored.get("kind") != kind
        or not isinstance(stored.get("inputs"), dict)
        or not all(k in stored for k in ("release", "sha256", *need))
    ):
        raise Refused(f"{path}: not a {kind} lock file of format {LOCK_FORMAT}; delete it to resolve again")
    recorded = stored["inputs"]
    differ = [
        f"{k}: the lock has {recorded.get(k)!r}, the server asks {inputs.get(k)!r}"
        for k in sorted(set(recorded) | set(inputs))
        if recorded.get(k) != inputs.get(k)
    ]
    if differ:
        raise Refused(
            f"{path}: locked for other inputs ({'; '.join(differ)}); delete the file to resolve the "
            "server's current inputs again (and commit the new one)"
        )
    if kind == "pypi":
        reqs = stored["requirements"]
        if not isinstance(reqs, list) or not all(isinstance(x, str) for x in reqs):
            raise Refused(f"{path}: requirements is not a list of lines")
        check_pypi_lock("\n".join(reqs), str(path))
    return stored


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------


def inputs_key(a: argparse.Namespace) -> str:
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    for k in ("cache", "refresh", "no_write_lock", "lock_path"):
        options.pop(k, None)
    return hashlib.sha256(FORMAT + json.dumps(options, sort_keys=True).encode()).hexdigest()[:24]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pypi", help="one pinned requirement, NAME==VERSION")
    what.add_argument("--npm", help="one package at an exact version, NAME@X.Y.Z")
    p.add_argument("--cache", required=True, type=Path)
    p.add_argument("--python-version", help="the target's full Python version (--pypi), e.g. 3.11.2")
    p.add_argument("--arch", default="x86_64")
    p.add_argument("--manylinux", default="2_28")
    p.add_argument("--node-major", type=int, help="the target's node major version (--npm), e.g. 18")
    p.add_argument("--node-version", default="", help="the target's exact node version, e.g. 18.20.4")
    p.add_argument(
        "--strict-engines", action="store_true", help="refuse dependencies whose engines exclude it"
    )
    p.add_argument(
        "--constraint", action="append", default=[], help="(--pypi) constrain a dependency, e.g. 'mcp<2'"
    )
    p.add_argument("--exclude-newer", default="", help="(--pypi) resolve as of a date or RFC 3339 time")
    p.add_argument(
        "--override", action="append", default=[], help="(--npm) NAME@X.Y.Z, a package.json override"
    )
    p.add_argument("--lock-dir", type=Path, help="keep the server's lock file here (with --server)")
    p.add_argument("--server", default="", help="the server's name, naming its lock file")
    p.add_argument("--no-write-lock", action="store_true", help="never write a lock file (check mode)")
    p.add_argument("--index-url", default="", help="(--pypi) instead of uv's and pip's configured index")
    p.add_argument("--registry", default="", help="(--npm) instead of npm's configured registry")
    p.add_argument("--refresh", action="store_true", help="resolve again even when the inputs are known")
    a = p.parse_args(argv)
    if a.pypi is not None and not re.fullmatch(r"\d+\.\d+\.\d+", a.python_version or ""):
        p.error(f"--pypi needs --python-version X.Y.Z, the target's full version (got {a.python_version!r})")
    if a.npm is not None:
        if a.node_major is None:
            p.error("--npm needs --node-major, the target's node major version (18 on Debian 12, 20 on 13)")
        if a.node_version and not re.fullmatch(rf"{a.node_major}\.\d+\.\d+", a.node_version):
            p.error(f"--node-version {a.node_version!r}: expected {a.node_major}.Y.Z (within --node-major)")
    if not re.fullmatch(r"\d+_\d+", a.manylinux):
        p.error(f"--manylinux {a.manylinux!r}: expected MAJOR_MINOR, e.g. 2_28")
    if not re.fullmatch(r"[A-Za-z0-9_]+", a.arch):
        p.error(f"--arch {a.arch!r}: expected an architecture name, e.g. x86_64")
    if a.lock_dir is not None:
        if not a.lock_dir.is_absolute():
            p.error(f"--lock-dir {str(a.lock_dir)!r}: expected an absolute path, e.g. <inventory>/locks")
        if not SERVER_NAME.fullmatch(a.server):
            p.error(f"--lock-dir needs --server, the server's name (a-z, 0-9, -); got {a.server!r}")
    return a


def verify(path: Path, expected: str, what: str) -> None:
    got = sha256(path)
    if got != expected:
        raise DigestMismatch(
            f"{path}: sha256 {got}, but {what} records {expected}. The file changed after it was "
            "built; nothing was rebuilt. Find out why, then delete it (and its cache entry) to build again"
        )


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        # Refuse before anything touches the cache or the network.
        kind = "pypi" if a.pypi is not None else "npm"
        name, version = parse_pypi(a.pypi) if kind == "pypi" else parse_npm(a.npm)
        inputs = resolution_inputs(a, kind, name)
        if kind == "npm":
            npm_command()
        a.lock_path = lock_file_path(a, kind) if a.lock_dir is not None else None
        stored = read_lock(a.lock_path, kind, inputs) if a.lock_path and a.lock_path.is_file() else None
        root = a.cache / "servers"
        memo = root / "inputs" / f"{inputs_key(a)}.json"
        if memo.is_file() and not a.refresh:
            answer = json.loads(memo.read_text())
            if Path(answer["tarball"]).is_file():
                verify(Path(answer["tarball"]), answer["sha256"], f"the cache entry {memo}")
                locked = stored is not None and (stored["release"], stored["sha256"]) == (
                    answer["release"],
                    answer["sha256"],
                )
                if a.lock_path is None or locked or (stored is None and a.no_write_lock):
                    print(json.dumps(dict(answer, changed=False, lock_written=False)))
                    return 0
        out_dir = root / kind
        out_dir.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root / "tmp") as tmp:
            work = Path(tmp)
            build = build_pypi if kind == "pypi" else build_npm
            made = build(a, dict(inputs, name=name, version=version), stored, work)
            canon = json.dumps(inputs, sort_keys=True).encode()
            digest = hashlib.sha256(FORMAT + kind.encode() + b"\n" + canon + b"\n" + made["lock_bytes"])
            member_digest(made["members"], digest)
            release = release_id(name, version, digest)
            fresh = work / f"{release}.tar"
            deterministic_tar(made["members"], fresh)
            got = sha256(fresh)
            if stored is not None and (stored["release"], stored["sha256"]) != (release, got):
                raise DigestMismatch(
                    f"{a.lock_path}: the artefact built from this lock is release {release} with sha256 "
                    f"{got}, but the lock records release {stored['release']} with sha256 "
                    f"{stored['sha256']}. A package changed under the same pins, or the lock was edited"
                )
            tarball = out_dir / f"{release}.tar"
            changed = not tarball.is_file()
            if changed:
                fresh.replace(tarball)
            else:
                verify(tarball, got, "a fresh build of the same release")
            lock_written = False
            if a.lock_path is not None and stored is None and not a.no_write_lock:
                record = {"format": LOCK_FORMAT, "server": a.server, "kind": kind, "inputs": inputs}
                record |= {"release": release, "sha256": got} | made["record"]
                write_atomically(a.lock_path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")
                lock_written = changed = True
            answer = {"kind": kind, "package": name, "version": version, "release": release}
            answer |= {"tarball": str(tarball), "sha256": got, "changed": changed}
            answer |= {"lock_file": str(a.lock_path) if a.lock_path else None, "lock_written": lock_written}
            answer |= made["answer"]
    except Refused as why:
        sys.stderr.write(f"server_artifacts: refused: {why}\n")
        return 2
    except DigestMismatch as why:
        sys.stderr.write(f"server_artifacts: digest mismatch: {why}\n")
        return 3
    except ToolFailed as why:
        sys.stderr.write(f"server_artifacts: {why}\n")
        return 1
    memo.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(memo, json.dumps(answer))
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
