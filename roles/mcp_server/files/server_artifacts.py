#!/usr/bin/env python3
"""Turn ONE stdio MCP server's package spec into a locked, hashed, offline-installable artefact.

Runs on the controller (like wheelhouse.py); managed hosts reach no package registry. Exactly one of:

--pypi 'NAME==VERSION' (one pinned requirement, extras allowed)
    1. `uv pip compile --generate-hashes` FOR THE TARGET (--python-version, --arch, --manylinux):
       lock.txt pins every distribution with its sha256 hashes.
    2. `pip download --no-deps --only-binary=:all:` of exactly those pins for the target's version,
       ABI and manylinux platforms (pip checks the downloads against the lock's hashes).
    3. Deterministic tar of lock.txt and wheels/. The host installs it with `install_argv`
       (`pip install --no-index --require-hashes --only-binary=:all:`): no index, no build, a
       changed wheel is refused.
--npm 'NAME@VERSION' (an exact version; scoped names allowed)
    1. In a scratch directory: a package.json depending on exactly that version and
       `npm install --ignore-scripts --no-audit --no-fund` for the target's os/cpu/libc, giving a
       package-lock.json with an integrity hash for every package.
    2. Refused: native addons (a binding.gyp or a .node file anywhere in node_modules: they need
       build scripts, which never run), and a package whose engines.node excludes the target's
       node (--node-major, or the exact --node-version). Dependencies whose engines exclude the
       target are reported (`engine_mismatches`), and refused with --strict-engines.
    3. Deterministic tar of package.json, package-lock.json and node_modules/ (symlinks of
       node_modules/.bin kept). The host extracts it; no npm there. Run it with `command`.

Common: the release id is `<name>-<version>-<12 hex of a sha256 over the lock and every artefact
byte>`; the tarball is <cache>/servers/<kind>/<release>.tar. When the inputs (every option) are
the same as in an earlier run, that run's answer is printed again with "changed": false and
nothing is resolved or downloaded (--refresh resolves again, e.g. to take newer transitive
dependencies). Indexes and registries are the machine's own uv/pip/npm configuration.

"PREFIX" in `install_argv` and `command` stands for the directory the tarball is extracted into.

Prints one JSON object; see the keys in `answer` below. Exit codes: 0 done, 1 a tool failed,
2 refused (unpinned spec, native addon, engines).
"""

from __future__ import annotations

import argparse
import configparser
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
FORMAT = b"server-artifacts-1\n"
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, as wheelhouse.py
PREFIX = "PREFIX"

PYPI_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)"
    r"(?P<extras>\[[A-Za-z0-9._,\s-]+\])?\s*==\s*(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)$"
)
# Lower case since 2017; older packages (JSONStream) keep their capitals.
NPM_NAME = r"(?:@[A-Za-z0-9~-][A-Za-z0-9._~-]*/)?[A-Za-z0-9~-][A-Za-z0-9._~-]*"
SEMVER = r"\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?"
NPM_PIN = re.compile(rf"^(?P<name>{NPM_NAME})@(?P<version>{SEMVER})$")
NPM_ARCH = {"x86_64": "x64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64", "s390x": "s390x"}


class Refused(Exception):
    """An input or a package this script will not turn into an artefact (exit 2)."""


def run(cmd: list[str], **kw) -> str:
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
    # S603: the argv is built here from validated options and never passes through a shell.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)  # noqa: S603
    if proc.returncode != 0:
        why = proc.stderr[-4000:] or proc.stdout[-4000:]
        sys.stderr.write(f"server_artifacts: command failed ({proc.returncode}): {' '.join(cmd)}\n{why}\n")
        sys.exit(1)
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
# Specs


def parse_pypi(spec: str) -> tuple[str, str]:
    m = PYPI_PIN.match(spec.strip())
    if not m or "*" in spec:
        raise Refused(
            f"--pypi {spec!r}: expected exactly one pinned requirement, NAME==VERSION (extras allowed, "
            "e.g. 'mcp-server-time==2026.10.19' or 'pkg[extra]==1.2.3'); not a range, a wildcard, "
            "a marker, a URL, a path or several requirements"
        )
    return re.sub(r"[-_.]+", "-", m["name"]).lower(), m["version"]


def parse_npm(spec: str) -> tuple[str, str]:
    m = NPM_PIN.match(spec.strip())
    if not m:
        raise Refused(
            f"--npm {spec!r}: expected one package at an exact version, NAME@X.Y.Z (scoped names "
            "allowed, e.g. '@modelcontextprotocol/server-everything@2026.8.31'); not a range "
            "(^, ~, >=, x), a dist-tag such as latest, a URL, a git or file: spec"
        )
    return m["name"], m["version"]


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
    return hashlib.sha256(path.read_bytes()).hexdigest()


def platforms(arch: str, level: str) -> list[str]:
    major, minor = (int(x) for x in level.split("_"))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}", f"linux_{arch}"]
    return tags


def collect(root: Path, top: str) -> list[tuple[str, Path]]:
    """(arcname, path) of every file and symlink under root/top, sorted; refuses anything else."""
    members = []
    base = root / top
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in [*filenames, *(d for d in dirnames if (Path(dirpath) / d).is_symlink())]:
            path = Path(dirpath) / name
            if not (path.is_symlink() or path.is_file()):
                raise Refused(f"{path.relative_to(root)}: neither a file nor a symlink")
            members.append((str(path.relative_to(root)), path))
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


def build_pypi(a: argparse.Namespace, name: str, version: str, work: Path, out_dir: Path) -> dict:
    pyver = a.python_version
    major, minor = pyver.split(".")[:2]
    index = ["--index-url", a.index_url] if a.index_url else []
    req_in = work / "requirements.in"
    req_in.write_text(a.pypi.strip() + "\n")
    lock = work / "lock.txt"
    cmd = [*uv_command(), "pip", "compile", "--quiet", "--no-header", "--no-annotate", "--generate-hashes"]
    cmd += ["--python-version", pyver, "--python-platform", f"{a.arch}-manylinux_{a.manylinux}"]
    run([*cmd, *index, "-o", str(lock), str(req_in)])
    wheels = work / "wheels"
    wheels.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
    cmd += ["--python-version", pyver, "--implementation", "cp", "--abi", f"cp{major}{minor}"]
    cmd += ["--abi", "abi3", "--abi", "none"]
    for plat in platforms(a.arch, a.manylinux):
        cmd += ["--platform", plat]
    run([*cmd, "-d", str(wheels), "-r", str(lock), *index])
    members = [("lock.txt", lock)] + [(f"wheels/{w.name}", w) for w in sorted(wheels.glob("*.whl"))]
    digest = hashlib.sha256(FORMAT + b"pypi\n" + lock.read_bytes())
    member_digest(members, digest)
    release = release_id(name, version, digest)
    tarball = out_dir / f"{release}.tar"
    changed = not tarball.is_file()
    if changed:
        deterministic_tar(members, tarball)
    scripts: dict[str, dict[str, str]] = {}
    for w in sorted(wheels.glob("*.whl")):
        dist, found = wheel_entry_points(w)
        if found:
            scripts[dist] = found
    own = scripts.pop(name, {})
    return {
        "release": release,
        "tarball": str(tarball),
        "changed": changed,
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
        "platform": f"{a.arch}-manylinux_{a.manylinux}",
        "locked": sum(1 for line in lock.read_text().splitlines() if line and not line[0].isspace()),
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


def build_npm(a: argparse.Namespace, name: str, version: str, work: Path, out_dir: Path) -> dict:
    npm = npm_command()
    exact = tuple(int(x) for x in a.node_version.split(".")) if a.node_version else None
    project = work / "project"
    project.mkdir()
    manifest = {"name": "mcpops-stdio-server", "version": "0.0.0", "private": True}
    manifest["dependencies"] = {name: version}
    (project / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    cmd = [*npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--no-update-notifier"]
    cmd += ["--os=linux", f"--cpu={NPM_ARCH.get(a.arch, a.arch)}", "--libc=glibc"]
    cmd += [f"--registry={a.registry}"] if a.registry else []
    run(cmd, cwd=project)
    modules = project / "node_modules"
    native = native_addons(project)
    if native:
        shown = ", ".join(native[:5]) + (" ..." if len(native) > 5 else "")
        raise Refused(
            f"--npm {a.npm!r}: the package tree has native addons ({shown}); they need build scripts, "
            "which never run here (npm install --ignore-scripts) and no compiler is on the hosts"
        )
    pkg_dir = modules / name
    pkg = json.loads((pkg_dir / "package.json").read_text())
    target = a.node_version or f"{a.node_major}.x"
    own_range = (pkg.get("engines") or {}).get("node", "")
    if not node_accepts(own_range, a.node_major, exact):
        raise Refused(
            f"--npm {a.npm!r}: its engines.node is {own_range!r}, which does not accept the target's "
            f"node {target} (--node-major {a.node_major}"
            + (f", --node-version {a.node_version}" if a.node_version else "")
            + "); pick a version of the package that supports it, or a target with a newer node"
        )
    lock = json.loads((project / "package-lock.json").read_text())
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
    members += collect(project, "node_modules")
    digest = hashlib.sha256(FORMAT + b"npm\n" + (project / "package-lock.json").read_bytes())
    member_digest(members, digest)
    release = release_id(name, version, digest)
    tarball = out_dir / f"{release}.tar"
    changed = not tarball.is_file()
    if changed:
        deterministic_tar(members, tarball)
    bins = pkg.get("bin") or {}
    if isinstance(bins, str):
        bins = {name.rsplit("/", 1)[-1]: bins}
    bins = {k: os.path.normpath(v) for k, v in bins.items()}
    commands = {k: ["node", f"{PREFIX}/node_modules/{name}/{v}"] for k, v in bins.items()}
    return {
        "release": release,
        "tarball": str(tarball),
        "changed": changed,
        "install_argv": None,
        "bin": bins,
        "commands": commands,
        "command": next(iter(commands.values())) if len(commands) == 1 else None,
        "node_major": a.node_major,
        "node_version": a.node_version or None,
        "engines": own_range or None,
        "engine_mismatches": mismatches,
        "skipped_install_scripts": scripts,
        "locked": sum(1 for p in lock.get("packages", {}) if p),
    }


# ---------------------------------------------------------------------------------------------


def inputs_key(a: argparse.Namespace) -> str:
    options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()}
    for k in ("cache", "refresh"):
        options.pop(k)
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
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        # Refuse before anything touches the cache or the network.
        kind = "pypi" if a.pypi is not None else "npm"
        name, version = parse_pypi(a.pypi) if kind == "pypi" else parse_npm(a.npm)
        if kind == "npm":
            npm_command()
        root = a.cache / "servers"
        memo = root / "inputs" / f"{inputs_key(a)}.json"
        if memo.is_file() and not a.refresh:
            answer = json.loads(memo.read_text())
            if Path(answer["tarball"]).is_file():
                print(json.dumps(dict(answer, changed=False)))
                return 0
        out_dir = root / kind
        out_dir.mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=root / "tmp") as tmp:
            build = build_pypi if kind == "pypi" else build_npm
            answer = {"kind": kind, "package": name, "version": version}
            answer |= build(a, name, version, Path(tmp), out_dir)
    except Refused as why:
        sys.stderr.write(f"server_artifacts: refused: {why}\n")
        return 2
    answer["sha256"] = sha256(Path(answer["tarball"]))
    memo.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(answer))
    tmp.replace(memo)
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
