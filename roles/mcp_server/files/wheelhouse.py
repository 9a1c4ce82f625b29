#!/usr/bin/env python3
"""Build the wheelhouse of one release on the controller, for one target Python version.

Managed hosts need no package index: everything they install comes from here.

1. Build the server wheel (and the user's project directories) with `pip wheel --no-deps`, from a
   clean copy of each project and with SOURCE_DATE_EPOCH fixed, so the same source gives the same
   bytes; user wheel files are taken as they are.
2. Resolve the complete requirement set FOR THE TARGET with `uv pip compile --python-version
   <target full version> --python-platform <arch>-manylinux_<level>`. (pip download evaluates
   environment markers against the controller's interpreter and would silently drop, e.g.,
   `async-timeout; python_full_version < "3.11.3"` for a 3.11.2 target.)
3. The release id is the server version plus a hash of the lock and the local wheels. When a
   wheelhouse for that id exists, nothing else happens (changed=false).
0. Before all that: when the inputs (every option, and the bytes of every file of each local
   project and wheel) are the same as in an earlier run, that run's answer is printed again and
   nothing is built or resolved (a re-run of the playbook costs a hash of the source tree, not a
   wheel build). Unpinned requirement strings are therefore resolved again only when an input
   changes; pin them (or change them) to move.
4. Otherwise `pip download --no-deps --only-binary=:all:` the locked wheels for the target's
   version, ABI and platforms, and pack lock + wheels into a deterministic tar.

Prints one JSON object: release, tarball, changed, python_version, packages.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

# Part of every release id: bump it when the wheelhouse's layout or selection rules change, so
# cached wheelhouses built by older rules are never reused.
FORMAT = b"wheelhouse-3\n"
SOURCE_DATE_EPOCH = "315532800"  # 1980-01-01, the earliest date a zip file can carry
IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".cache",
    ".lab",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "node_modules",
    "molecule",
    "tests",
    ".molecule",
    "*.tar.gz",
)


def run(cmd: list[str], **kw) -> str:
    env = dict(os.environ, SOURCE_DATE_EPOCH=SOURCE_DATE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
    # S603: the argv is built here from the role's own options and never passes through a shell.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, **kw)  # noqa: S603
    if proc.returncode != 0:
        why = proc.stderr[-4000:]
        sys.stderr.write(f"wheelhouse: command failed ({proc.returncode}): {' '.join(cmd)}\n{why}\n")
        sys.exit(1)
    return proc.stdout


def uv_command() -> list[str]:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if Path(found).exists():
        return [found]
    return [sys.executable, "-m", "uv"]


def build_project(src: Path, out: Path, scratch: Path) -> None:
    copy = scratch / f"src-{len(list(scratch.iterdir()))}"
    shutil.copytree(src, copy, ignore=IGNORE, symlinks=False)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "-w", str(out), str(copy)])


def wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return re.sub(r"[-_.]+", "-", name).lower(), version


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def platforms(arch: str, level: str) -> list[str]:
    major, minor = (int(x) for x in level.split("_"))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}", f"linux_{arch}"]
    return tags


def deterministic_tar(members: list[tuple[str, Path]], dest: Path) -> None:
    tmp = dest.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for arcname, path in sorted(members):
            data = path.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size, info.mtime, info.mode = len(data), int(SOURCE_DATE_EPOCH), 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    tmp.replace(dest)


def tree_digest(root: Path, digest) -> None:
    """Feed every file under root that build_project would copy (same IGNORE) into digest."""
    for dirpath, dirnames, filenames in os.walk(root):
        ignored = IGNORE(dirpath, dirnames + filenames)
        dirnames[:] = sorted(d for d in dirnames if d not in ignored)
        for name in sorted(f for f in filenames if f not in ignored):
            path = Path(dirpath) / name
            if path.is_file():
                digest.update(f"{path.relative_to(root)}\0".encode())
                digest.update(hashlib.sha256(path.read_bytes()).digest())


def inputs_key(a: argparse.Namespace) -> str:
    digest = hashlib.sha256(FORMAT)
    # Paths by what they point at: the role passes "<role_path>/../..", a person the checkout.
    options = {k: str(v.resolve()) if isinstance(v, Path) else v for k, v in vars(a).items()}
    options["package"] = [
        str(Path(os.path.expanduser(p)).resolve()) if p.startswith(("/", ".", "~")) else p for p in a.package
    ]
    digest.update(json.dumps(options, sort_keys=True).encode())
    for item in [str(a.source), *a.package]:
        path = Path(os.path.expanduser(item))
        if path.is_dir():
            tree_digest(path.resolve(), digest)
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:24]


def trust_extra_cas(ca_files: list[str], work: Path) -> None:
    """Make uv and pip trust the package index's extra CAs besides the usual roots: one bundle of
    both, named by SSL_CERT_FILE (uv) and PIP_CERT (pip)."""
    base = os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().openssl_cafile
    parts = [Path(base).read_text()] if base and Path(base).is_file() else []
    parts += [Path(os.path.expanduser(f)).read_text() for f in ca_files]
    bundle = work / "ca-bundle.pem"
    bundle.write_text("\n".join(parts))
    os.environ["SSL_CERT_FILE"] = os.environ["PIP_CERT"] = str(bundle)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cache", required=True, type=Path)
    p.add_argument("--python-version", required=True)
    p.add_argument("--arch", default="x86_64")
    p.add_argument("--manylinux", default="2_28")
    p.add_argument("--source", required=True, type=Path)
    p.add_argument("--package", action="append", default=[])
    p.add_argument("--index-url", default="")
    p.add_argument("--local-only", action="store_true", help="hosts get third-party wheels from the index")
    p.add_argument(
        "--ca-file", action="append", default=[], help="extra CA certificate trusted for the index"
    )
    a = p.parse_args()

    pyver = a.python_version
    major, minor = pyver.split(".")[:2]
    out_dir = a.cache / "releases" / f"py{pyver}"
    out_dir.mkdir(parents=True, exist_ok=True)
    memo = a.cache / "inputs" / f"{inputs_key(a)}.json"
    if memo.is_file():
        answer = json.loads(memo.read_text())
        if Path(answer["tarball"]).is_file():
            print(json.dumps(dict(answer, changed=False)))
            return 0
    (a.cache / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=a.cache / "tmp") as tmp:
        work = Path(tmp)
        local, wheels, scratch = work / "local", work / "wheels", work / "scratch"
        for d in (local, wheels, scratch):
            d.mkdir()
        if a.ca_file:
            trust_extra_cas(a.ca_file, work)
        requirements: list[str] = []
        for item in [str(a.source), *a.package]:
            path = Path(os.path.expanduser(item))
            if item.startswith(("/", ".", "~")) or path.exists():
                if path.is_dir():
                    build_project(path.resolve(), local, scratch)
                elif path.is_file() and path.suffix == ".whl":
                    shutil.copy2(path, local / path.name)
                else:
                    sys.stderr.write(f"wheelhouse: {item}: neither a project directory nor a .whl file\n")
                    return 2
            else:
                requirements.append(item)
        local_wheels = sorted(local.glob("*.whl"))
        server = [w for w in local_wheels if wheel_name_version(w)[0] == "mcpops-server"]
        if not server:
            sys.stderr.write(f"wheelhouse: {a.source} did not give an mcpops-server wheel\n")
            return 2
        local_versions = dict(map(wheel_name_version, local_wheels))
        pins = [f"{n}=={v}" for n, v in local_versions.items()]
        # Local packages are referenced by file, so the resolver can never take a same-named
        # package from the index instead (dependency confusion; "example-app" exists on PyPI).
        direct = [f"{wheel_name_version(w)[0]} @ {w.resolve().as_uri()}" for w in local_wheels]
        req_in = work / "requirements.in"
        req_in.write_text("\n".join(direct + requirements) + "\n")
        lock = work / "lock.txt"
        index = ["--index-url", a.index_url] if a.index_url else []
        compile_args = ["pip", "compile", "--quiet", "--no-header", "--no-annotate"]
        compile_args += ["--python-version", pyver]
        compile_args += ["--python-platform", f"{a.arch}-manylinux_{a.manylinux}", "--find-links", str(local)]
        run([*uv_command(), *compile_args, *index, "-o", str(lock), str(req_in)])
        # The hosts' lock names local packages by version (found in the wheelhouse); only the
        # third-party lines are downloaded. When the hosts also reach an index (--local-only), a
        # version is not enough: pip would take a same-named, same-versioned wheel from the index
        # just as well (dependency confusion), so they are named by their file in the wheelhouse
        # (relative: the role installs from the wheelhouse directory).
        local_files = {wheel_name_version(w)[0]: w.name for w in local_wheels}
        host_lines, download_lines = [], []
        for line in lock.read_text().splitlines():
            name = re.sub(r"[-_.]+", "-", re.split(r"[\s=@;<>!~\[]", line.strip(), maxsplit=1)[0]).lower()
            if not name or line.lstrip().startswith("#"):
                continue
            if name in local_versions and a.local_only:
                host_lines.append(f"./wheels/{local_files[name]}")
            elif name in local_versions:
                host_lines.append(f"{name}=={local_versions[name]}")
            else:
                host_lines.append(line.strip())
                download_lines.append(line.strip())
        lock.write_text("\n".join(host_lines) + "\n")
        download = work / "download.txt"
        download.write_text("\n".join(download_lines) + "\n")
        digest = hashlib.sha256(FORMAT + lock.read_bytes())
        for w in local_wheels:
            digest.update(f"{w.name} {sha256(w)}\n".encode())
        digest.update(b"local-only" if a.local_only else b"full")
        release = f"{wheel_name_version(server[0])[1]}-{digest.hexdigest()[:12]}"
        tarball = out_dir / f"{release}.tar"
        changed = not tarball.exists()
        if changed:
            for w in local_wheels:
                shutil.copy2(w, wheels / w.name)
            if not a.local_only and download_lines:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q"]
                cmd += ["--python-version", pyver, "--implementation", "cp", "--abi", f"cp{major}{minor}"]
                cmd += ["--abi", "abi3", "--abi", "none"]
                for plat in platforms(a.arch, a.manylinux):
                    cmd += ["--platform", plat]
                cmd += ["-d", str(wheels), "-r", str(download), *index]
                run(cmd)
            members = [("lock.txt", lock)] + [(f"wheels/{w.name}", w) for w in sorted(wheels.glob("*.whl"))]
            deterministic_tar(members, tarball)
    answer = {
        "release": release,
        "tarball": str(tarball),
        "changed": changed,
        "python_version": pyver,
        "packages": pins + requirements,
    }
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.with_suffix(".tmp").write_text(json.dumps(answer))
    memo.with_suffix(".tmp").replace(memo)
    print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
