"""roles/mcp_server/files/server_artifacts.py: one stdio MCP server from PyPI or npm, locked, hashed,
packed on the controller and installed OFFLINE on a stand-in target.

Real packages from the registries (the controller reaches them, through this machine's own
pip/uv/npm configuration). The installs and the servers run in a network namespace with no
network at all (`unshare -n`) where this machine allows it, else with --no-index and a registry
setting that points nowhere. The controller's Python 3.11 stands in for Debian 12's 3.11.2.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import queue
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles" / "mcp_server" / "files" / "server_artifacts.py"
PYPI = "mcp-server-time==2026.10.19"
NPM = "@modelcontextprotocol/server-everything@2026.8.31"
TARGET_PY = ["--python-version", "3.11.2", "--arch", "x86_64", "--manylinux", "2_28"]
# Loopback port 9 (discard): any index or registry use under this setting fails at once.
NOWHERE = "http://127.0.0.1:9/"

spec = importlib.util.spec_from_file_location("server_artifacts", SCRIPT)
sa = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sa)

needs_npm = pytest.mark.skipif(
    not (shutil.which("npm") and shutil.which("node")), reason="npm and node are not on PATH"
)


def _can_unshare() -> bool:
    if not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True, check=False).returncode == 0


OFFLINE = ["unshare", "-n"] if _can_unshare() else []


def no_network_env() -> dict[str, str]:
    """The environment of a host: no pip configuration, and every index or registry unreachable."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("PIP_", "UV_", "NPM_CONFIG_"))}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": NOWHERE, "UV_INDEX_URL": NOWHERE}
    env |= {"UV_DEFAULT_INDEX": NOWHERE, "npm_config_registry": NOWHERE, "UV_OFFLINE": "1"}
    return env


def script(*args: str, env: dict[str, str] | None = None, offline: bool = False):
    cmd = [*(OFFLINE if offline else []), sys.executable, str(SCRIPT), *args]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=300)
    return proc, time.monotonic() - t0


def build(*args: str) -> tuple[dict, float]:
    proc, elapsed = script(*args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout), elapsed


def extract(tarball: str, dest: Path) -> Path:
    dest.mkdir(parents=True)
    # The role extracts with tar (unarchive); so does this test.
    subprocess.run(["tar", "-xf", tarball, "-C", str(dest)], check=True)
    return dest


def at(prefix: Path, argv: list[str]) -> list[str]:
    return [a.replace("PREFIX", str(prefix)) for a in argv]


def stdio_session(argv: list[str], env: dict[str, str] | None = None, timeout: float = 20.0) -> dict:
    """initialize + notifications/initialized + tools/list over raw JSON-RPC lines on stdio."""
    proc = subprocess.Popen(
        [*OFFLINE, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()

    def send(msg: dict) -> None:
        proc.stdin.write(json.dumps(msg) + "\n")
        proc.stdin.flush()

    def answer(msg_id: int) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no answer to request {msg_id} within {timeout} s")
            if line is None:
                pytest.fail(f"the server exited: {proc.stderr.read()[-2000:]}")
            msg = json.loads(line)
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg
                return msg["result"]

    try:
        send(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-06-18",
                    "capabilities": {},
                    "clientInfo": {"name": "test_server_artifacts", "version": "0"},
                },
            }
        )
        init = answer(1)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
        tools = answer(2)
        return {"initialize": init, "tools": [t["name"] for t in tools["tools"]]}
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server-artifacts-cache")


@pytest.fixture(scope="session")
def pypi(cache) -> dict:
    answer, _ = build("--cache", str(cache), "--pypi", PYPI, *TARGET_PY)
    return answer


@pytest.fixture(scope="session")
def npm(cache) -> dict:
    if not (shutil.which("npm") and shutil.which("node")):
        pytest.skip("npm and node are not on PATH")
    # Debian 12's node is 18: the artefact is built for it and run here on the controller's node.
    answer, _ = build("--cache", str(cache), "--npm", NPM, "--node-major", "18")
    return answer


def members(tarball: str) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(tarball) as tar:
        return {m.name: m for m in tar.getmembers()}


def read_member(tarball: str, name: str) -> bytes:
    with tarfile.open(tarball) as tar:
        return tar.extractfile(name).read()


# --- refusals, before any network use ------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "mcp-server-time",
        "mcp-server-time>=2026.1",
        "mcp-server-time~=2026.10",
        "mcp-server-time==2026.*",
        "mcp-server-time==2026.10.19 tzdata==2026.6",
        "mcp-server-time==2026.10.19; python_version >= '3.11'",
        "mcp-server-time @ https://example.invalid/x.whl",
        "./some/project",
    ],
)
def test_unpinned_pypi_spec_is_refused_before_any_network_use(tmp_path, spec):
    cache = tmp_path / "cache"
    proc, elapsed = script(
        "--cache", str(cache), "--pypi", spec, *TARGET_PY, env=no_network_env(), offline=True
    )
    assert proc.returncode == 2, proc.stderr
    assert "--pypi" in proc.stderr and repr(spec) in proc.stderr and "NAME==VERSION" in proc.stderr
    assert proc.stdout == ""
    assert not cache.exists(), "a refused spec must leave the cache alone"
    assert elapsed < 5


@pytest.mark.parametrize(
    "spec",
    [
        "@modelcontextprotocol/server-everything",
        "@modelcontextprotocol/server-everything@latest",
        "@modelcontextprotocol/server-everything@^2026.8.31",
        "@modelcontextprotocol/server-everything@2026.8",
        "@modelcontextprotocol/server-everything@>=2026.8.31",
        "git+https://example.invalid/x.git",
        "file:../x",
    ],
)
def test_unpinned_npm_spec_is_refused_before_any_network_use(tmp_path, spec):
    cache = tmp_path / "cache"
    args = ("--cache", str(cache), "--npm", spec, "--node-major", "18")
    proc, elapsed = script(*args, env=no_network_env(), offline=True)
    assert proc.returncode == 2, proc.stderr
    assert "--npm" in proc.stderr and repr(spec) in proc.stderr and "NAME@X.Y.Z" in proc.stderr
    assert not cache.exists()
    assert elapsed < 5


def test_missing_target_versions_are_usage_errors(tmp_path):
    proc, _ = script("--cache", str(tmp_path), "--pypi", PYPI)
    assert proc.returncode == 2 and "--python-version" in proc.stderr
    proc, _ = script("--cache", str(tmp_path), "--npm", NPM)
    assert proc.returncode == 2 and "--node-major" in proc.stderr


# --- PyPI ----------------------------------------------------------------------------------------


def test_pypi_answer_and_lock_with_hashes(pypi):
    assert pypi["kind"] == "pypi" and pypi["package"] == "mcp-server-time"
    assert pypi["version"] == "2026.10.19" and pypi["changed"] is True
    assert (
        pypi["release"].startswith("mcp-server-time-2026.10.19-")
        and len(pypi["release"].rsplit("-")[-1]) == 12
    )
    assert Path(pypi["tarball"]).name == pypi["release"] + ".tar"
    assert pypi["sha256"] == sa.sha256(Path(pypi["tarball"]))
    assert pypi["entry_points"] == {"mcp-server-time": "mcp_server_time:main"}
    assert pypi["command"] == ["PREFIX/venv/bin/mcp-server-time"]
    assert pypi["install_argv"][0] == ["python3", "-m", "venv", "PREFIX/venv"]
    pip = pypi["install_argv"][1]
    assert pip[:2] == ["PREFIX/venv/bin/pip", "install"]
    assert {"--no-index", "--require-hashes"} <= set(pip)
    assert pip[pip.index("-r") + 1] == "PREFIX/lock.txt"

    lock = read_member(pypi["tarball"], "lock.txt").decode()
    pins = [line.split(" ")[0] for line in lock.splitlines() if line and not line[0].isspace()]
    assert "mcp-server-time==2026.10.19" in pins and len(pins) == pypi["locked"]
    # Every pin carries at least one sha256; the wheels are exactly the pins, one each.
    blocks = lock.split("\n")
    for pin in pins:
        start = next(i for i, line in enumerate(blocks) if line.startswith(pin + " "))
        assert "--hash=sha256:" in blocks[start + 1], pin
    wheels = [n for n in members(pypi["tarball"]) if n.startswith("wheels/")]
    assert len(wheels) == len(pins)
    assert all(n.endswith(".whl") for n in wheels)
    # Resolved for 3.11.2 and manylinux_2_28: no wheel for another ABI or a newer glibc.
    for name in wheels:
        tags = name.rsplit("-", 3)[1:]
        assert tags[0] in ("py3", "py2.py3", "cp311"), name
        assert "manylinux_2_3" not in tags[2], name


def test_pypi_tarball_is_deterministic(pypi):
    info = members(pypi["tarball"])
    assert {m.mtime for m in info.values()} == {int(sa.SOURCE_DATE_EPOCH)}
    assert {(m.uid, m.gid, m.uname) for m in info.values()} == {(0, 0, "root")}
    assert list(info) == sorted(info)


def test_pypi_installs_offline_with_hashes_and_answers_over_stdio(pypi, tmp_path):
    prefix = extract(pypi["tarball"], tmp_path / "release")
    env = no_network_env()
    venv, pip = (at(prefix, argv) for argv in pypi["install_argv"])
    venv[0] = sys.executable  # the controller's 3.11 stands in for the target's python3
    subprocess.run([*OFFLINE, *venv], check=True, env=env)
    proc = subprocess.run([*OFFLINE, *pip], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    session = stdio_session(at(prefix, pypi["command"]), env=env)
    assert session["initialize"]["serverInfo"]["name"] == "mcp-time"
    assert {"get_current_time", "convert_time"} <= set(session["tools"])


def test_pypi_tampered_wheel_is_refused_by_require_hashes(pypi, tmp_path):
    prefix = extract(pypi["tarball"], tmp_path / "release")
    wheel = next((prefix / "wheels").glob("mcp_server_time-*.whl"))
    # A well-formed wheel of the same name whose code differs: only the hash can tell.
    buf = io.BytesIO()
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("server.py"):
                data += b"\nimport os  # tampered\n"
            dst.writestr(item, data)
    wheel.write_bytes(buf.getvalue())
    env = no_network_env()
    venv, pip = (at(prefix, argv) for argv in pypi["install_argv"])
    venv[0] = sys.executable
    subprocess.run([*OFFLINE, *venv], check=True, env=env)
    proc = subprocess.run([*OFFLINE, *pip], capture_output=True, text=True, env=env, check=False)
    assert proc.returncode != 0
    assert "DO NOT MATCH THE HASHES" in proc.stderr and "mcp-server-time" in proc.stderr.lower()
    assert not list((prefix / "venv").glob("lib/python*/site-packages/mcp_server_time"))


def test_pypi_rerun_is_unchanged_fast_and_offline(pypi, cache):
    args = ("--cache", str(cache), "--pypi", PYPI, *TARGET_PY)
    proc, elapsed = script(*args, env=no_network_env(), offline=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == dict(pypi, changed=False)
    assert elapsed < 2


def test_pypi_other_target_is_another_input(pypi, cache):
    """A different target is not answered from the first one's cache entry."""
    args = ("--cache", str(cache), "--pypi", PYPI, "--python-version", "3.13.5")
    proc, _ = script(*args, env=no_network_env(), offline=True)
    assert proc.returncode != 0 and proc.stdout == ""  # it had to resolve, with no network


# --- npm -----------------------------------------------------------------------------------------


@needs_npm
def test_npm_answer_and_lock_with_integrity(npm):
    assert npm["kind"] == "npm" and npm["package"] == "@modelcontextprotocol/server-everything"
    assert npm["version"] == "2026.8.31" and npm["changed"] is True
    assert npm["release"].startswith("modelcontextprotocol-server-everything-2026.8.31-")
    assert npm["sha256"] == sa.sha256(Path(npm["tarball"]))
    assert npm["bin"] == {"mcp-server-everything": "dist/index.js"}
    assert npm["command"] == [
        "node",
        "PREFIX/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
    ]
    names = members(npm["tarball"])
    assert {"package.json", "package-lock.json"} <= set(names)
    manifest = json.loads(read_member(npm["tarball"], "package.json"))
    assert manifest["dependencies"] == {"@modelcontextprotocol/server-everything": "2026.8.31"}
    lock = json.loads(read_member(npm["tarball"], "package-lock.json"))
    packages = {p: e for p, e in lock["packages"].items() if p}
    assert len(packages) == npm["locked"] > 10
    assert packages["node_modules/@modelcontextprotocol/server-everything"]["version"] == "2026.8.31"
    for path, entry in packages.items():
        assert entry.get("integrity", "").startswith("sha512-"), path
        assert f"{path}/package.json" in names, path
    assert not any(n.endswith((".node", "/binding.gyp")) for n in names)
    # The .bin links stay links, inside the tree.
    link = names["node_modules/.bin/mcp-server-everything"]
    assert link.issym() and not link.linkname.startswith("/")


@needs_npm
def test_npm_tree_extracts_and_runs_offline_with_node(npm, tmp_path):
    prefix = extract(npm["tarball"], tmp_path / "release")
    env = no_network_env()
    session = stdio_session(at(prefix, npm["command"]), env=env)
    assert session["initialize"]["serverInfo"]["name"]
    assert "echo" in session["tools"]


@needs_npm
def test_npm_rerun_is_unchanged_fast_and_offline(npm, cache):
    args = ("--cache", str(cache), "--npm", NPM, "--node-major", "18")
    proc, elapsed = script(*args, env=no_network_env(), offline=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == dict(npm, changed=False)
    assert elapsed < 2


@needs_npm
def test_npm_dependency_engines_are_reported_and_refused_when_strict(npm, cache):
    """server-everything itself names no engines; a dependency of its SDK asks for node >= 20,
    which Debian 12's node 18 is not: reported, and refused with --strict-engines."""
    assert npm["engines"] is None
    strict = {m["package"] for m in npm["engine_mismatches"]}
    args = ("--cache", str(cache), "--npm", NPM, "--node-major", "18", "--strict-engines")
    proc, _ = script(*args)
    if not strict:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 2
    assert "--strict-engines" in proc.stderr and all(name in proc.stderr for name in strict)


@needs_npm
def test_npm_stdio_path_needs_no_dependency_that_excludes_the_target_node(npm, tmp_path):
    """The controller runs node 20, the Debian 12 target node 18: with every dependency whose
    engines exclude node 18 removed, the server still answers over stdio, so it never loads them."""
    prefix = extract(npm["tarball"], tmp_path / "release")
    for m in npm["engine_mismatches"]:
        shutil.rmtree(prefix / "node_modules" / m["package"])
    session = stdio_session(at(prefix, npm["command"]), env=no_network_env())
    assert "echo" in session["tools"]


@needs_npm
def test_npm_package_whose_engines_exclude_the_target_is_refused(cache):
    # @hono/node-server 2.x (a dependency of the MCP SDK) asks for node >= 20.
    args = ("--cache", str(cache), "--npm", "@hono/node-server@2.1.9", "--node-major", "18")
    proc, _ = script(*args)
    assert proc.returncode == 2, proc.stderr
    assert "engines.node is '>=20'" in proc.stderr and "node 18.x" in proc.stderr
    ok, _ = build("--cache", str(cache), "--npm", "@hono/node-server@2.1.9", "--node-major", "20")
    assert ok["engines"] == ">=20" and ok["command"] is None and ok["bin"] == {}


# --- pure parts ----------------------------------------------------------------------------------


def test_native_addons_are_found_anywhere_in_node_modules(tmp_path):
    (tmp_path / "node_modules" / "a" / "build" / "Release").mkdir(parents=True)
    (tmp_path / "node_modules" / "a" / "build" / "Release" / "a.node").write_bytes(b"\x7fELF")
    (tmp_path / "node_modules" / "b" / "node_modules" / "c").mkdir(parents=True)
    (tmp_path / "node_modules" / "b" / "node_modules" / "c" / "binding.gyp").write_text("{}")
    (tmp_path / "node_modules" / "d.node").mkdir()  # a directory of that name is no addon
    assert sa.native_addons(tmp_path) == [
        "node_modules/a/build/Release/a.node",
        "node_modules/b/node_modules/c/binding.gyp",
    ]


@pytest.mark.parametrize(
    ("rng", "major", "accepted"),
    [
        ("", 18, True),
        ("*", 18, True),
        (">=18", 18, True),
        (">=20", 18, False),
        (">= 18.0.0", 18, True),
        (">=18.19", 18, True),  # some 18.x does
        ("^18.0.0 || >=20", 18, True),
        ("^16.13.0 || >=18.0.0", 18, True),
        ("^20.0.0 || >=22", 18, False),
        (">=16 <18", 18, False),
        ("16 - 18", 18, True),
        ("14 - 16", 18, False),
        ("18.x", 18, True),
        ("~16.20", 18, False),
        (">17", 18, True),
        ("<=18", 18, True),
        ("<18", 18, False),
        ("20 || 22", 20, True),
        ("not a range", 18, False),
    ],
)
def test_node_range_accepts_a_major(rng, major, accepted):
    assert sa.node_accepts(rng, major) is accepted


def test_node_range_against_an_exact_version():
    assert sa.node_accepts(">=18.19", 18, (18, 20, 4))
    assert not sa.node_accepts(">=18.21", 18, (18, 20, 4))
    assert not sa.node_accepts("^20.17.0 || >=22.9.0", 20, (20, 11, 0))
