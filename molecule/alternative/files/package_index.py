#!/usr/bin/env python3
"""A throwaway package index for the `alternative` scenario, served from the controller over HTTPS.

    package_index.py build --wheelhouse TAR --root DIR [--exclude NAME]... [--decoy]
    package_index.py start --root DIR --bind ADDR --port N --cert C --key K --pid F --log F
    package_index.py stop --pid F

build: a PEP 503 "simple" tree (DIR/simple/<project>/index.html linking DIR/files/<wheel> with its
sha256) from the wheels of a wheelhouse tarball (roles/mcp_server/files/wheelhouse.py), leaving out
the given projects (the server itself, which the hosts get from the wheelhouse). With --decoy the
index serves, in place of each left-out project, a decoy wheel of the same name and version whose
package only says DECOY = True: a host that installs it took the index's copy over the wheelhouse's
(dependency confusion).
start: serves DIR over HTTPS in a detached process, writes its pid, returns once it accepts
connections; one access-log line per request (client address, method, path, status) in --log.
stop: ends the process of the pid file. Each prints one JSON object with "changed".
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import html
import http.server
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decoy_wheel(filename: str, dest: Path) -> None:
    """A minimal, valid wheel with the same name, version and tags as filename: <pkg>/__init__.py
    holding DECOY = True. Fixed timestamps, so the bytes are the same on every run."""
    dist, version = filename.split("-")[:2]
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{dist}/__init__.py": b"DECOY = True\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: package_index.py\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    files[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
    with zipfile.ZipFile(dest, "w") as whl:
        for name, data in files.items():
            whl.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def build(a: argparse.Namespace) -> dict:
    root = Path(a.root)
    files, simple = root / "files", root / "simple"
    files.mkdir(parents=True, exist_ok=True)
    exclude = {normalize(n) for n in a.exclude}
    projects: dict[str, list[str]] = {}
    changed = False
    with tarfile.open(a.wheelhouse) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if not (member.isfile() and name.endswith(".whl")):
                continue
            project = normalize(name.split("-")[0])
            if project in exclude:
                if a.decoy:
                    if not (files / name).is_file():
                        decoy_wheel(name, files / name)
                        changed = True
                    projects.setdefault(project, []).append(name)
                continue
            dest = files / name
            if not dest.is_file():
                dest.write_bytes(tar.extractfile(member).read())
                changed = True
            projects.setdefault(project, []).append(name)
    pages = {simple / "index.html": "".join(f'<a href="{p}/">{p}</a>\n' for p in sorted(projects))}
    for project, wheels in projects.items():
        links = "".join(
            f'<a href="../../files/{html.escape(w)}#sha256={sha256(files / w)}">{html.escape(w)}</a>\n'
            for w in sorted(wheels)
        )
        pages[simple / project / "index.html"] = links
    for path, body in pages.items():
        text = f"<!DOCTYPE html>\n<html><body>\n{body}</body></html>\n"
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed = True
    return {"changed": changed, "projects": sorted(projects)}


def running(pid_file: Path) -> int:
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return 0
    return pid


def start(a: argparse.Namespace) -> dict:
    pid_file = Path(a.pid)
    if running(pid_file):
        return {"changed": False, "pid": running(pid_file)}
    argv = [sys.executable, os.path.abspath(__file__), "serve", "--root", a.root, "--bind", a.bind]
    argv += ["--port", str(a.port), "--cert", a.cert, "--key", a.key, "--log", a.log]
    proc = subprocess.Popen(
        argv,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                f"package index: the server exited ({proc.returncode}): {proc.stderr.read().decode()}"
            )
        try:
            socket.create_connection((a.bind, a.port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)  # pacing between polls; the deadline decides
    else:
        proc.kill()
        raise SystemExit(f"package index: nothing listens on {a.bind}:{a.port} after 15 s")
    pid_file.write_text(f"{proc.pid}\n")
    return {"changed": True, "pid": proc.pid}


def stop(a: argparse.Namespace) -> dict:
    pid_file = Path(a.pid)
    pid = running(pid_file)
    if pid:
        os.kill(pid, signal.SIGTERM)
    pid_file.unlink(missing_ok=True)
    return {"changed": bool(pid)}


def serve(a: argparse.Namespace) -> None:
    log = open(a.log, "w", buffering=1)  # noqa: SIM115 (open for the life of the process)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code="-", size="-"):
            log.write(f"{time.time():.3f} {self.client_address[0]} {self.command} {self.path} {code}\n")

        def log_error(self, fmt, *args):
            log.write(f"{time.time():.3f} {self.client_address[0]} ERROR {fmt % args}\n")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server = http.server.ThreadingHTTPServer((a.bind, a.port), functools.partial(Handler, directory=a.root))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--wheelhouse", required=True)
    b.add_argument("--root", required=True)
    b.add_argument("--exclude", action="append", default=[])
    b.add_argument("--decoy", action="store_true", help="serve a decoy in place of each excluded project")
    for name in ("start", "serve"):
        s = sub.add_parser(name)
        s.add_argument("--root", required=True)
        s.add_argument("--bind", required=True)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--cert", required=True)
        s.add_argument("--key", required=True)
        s.add_argument("--log", required=True)
        if name == "start":
            s.add_argument("--pid", required=True)
    st = sub.add_parser("stop")
    st.add_argument("--pid", required=True)
    a = p.parse_args()
    if a.cmd == "serve":
        serve(a)
        return 0
    print(json.dumps({"build": build, "start": start, "stop": stop}[a.cmd](a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
