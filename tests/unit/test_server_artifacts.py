"""roles/mcp_server/files/server_artifacts.py: one stdio MCP server from PyPI or npm, locked, hashed,
packed on the controller and installed OFFLINE on a stand-in target.

Real packages from the registries (the controller reaches them, through this machine's own
pip/uv/npm configuration). The installs and the servers run in a network namespace with no
network at all (`unshare -n`) where this machine allows it, else with --no-index and a registry
setting that points nowhere. The controller's Python 3.11 stands in for Debian 12's 3.11.2.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
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
# Published before mcp 2.x, declaring mcp>=1.0.0: with today's mcp it exits at start (it imports
# McpError, which the SDK removed); with this constraint it runs. The servers scenario deploys it.
OLD_PYPI = "mcp-server-time==2025.9.25"
OLD_PYPI_CONSTRAINT = "mcp<2"
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


def install_pypi(answer: dict, dest: Path, check: bool = True) -> tuple[Path, subprocess.CompletedProcess]:
    """What the role does on a host: unpack, write the lock from the controller's answer (the tarball
    holds none), make the venv, pip install offline against that lock."""
    prefix = extract(answer["tarball"], dest)
    (prefix / "lock.txt").write_text(answer["lock"])
    env = no_network_env()
    venv, pip = (at(prefix, argv) for argv in answer["install_argv"])
    venv[0] = sys.executable  # the controller's 3.11 stands in for the target's python3
    subprocess.run([*OFFLINE, *venv], check=True, env=env)
    proc = subprocess.run([*OFFLINE, *pip], capture_output=True, text=True, env=env, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return prefix, proc


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

    # The lock travels in the answer, apart from the artefact: the tarball holds wheels only.
    assert "lock.txt" not in members(pypi["tarball"])
    lock = pypi["lock"]
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
    prefix, _ = install_pypi(pypi, tmp_path / "release")
    session = stdio_session(at(prefix, pypi["command"]), env=no_network_env())
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
    (prefix / "lock.txt").write_text(pypi["lock"])
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
    # npm's cache of the installed tree differs between npm versions: not part of the artefact.
    assert "node_modules/.package-lock.json" not in names
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


# --- dependency constraints per server -----------------------------------------------------------


@pytest.fixture(scope="session")
def old_time(cache) -> dict:
    answer, _ = build("--cache", str(cache), "--pypi", OLD_PYPI, *TARGET_PY)
    return answer


@pytest.fixture(scope="session")
def old_time_constrained(cache) -> dict:
    answer, _ = build(
        "--cache", str(cache), "--pypi", OLD_PYPI, *TARGET_PY, f"--constraint={OLD_PYPI_CONSTRAINT}"
    )
    return answer


def pins(answer: dict) -> dict[str, str]:
    lines = [line.split(" ")[0] for line in answer["lock"].splitlines() if line and not line[0].isspace()]
    return dict(line.split("==") for line in lines)


def test_an_old_server_breaks_with_todays_mcp_and_runs_with_a_constraint(
    old_time, old_time_constrained, tmp_path
):
    """A real server published before mcp 2.x: unconstrained it gets today's mcp and exits before it
    answers initialize; with constraints ["mcp<2"] it answers initialize and tools/list."""
    assert int(pins(old_time)["mcp"].split(".")[0]) >= 2
    prefix, _ = install_pypi(old_time, tmp_path / "unconstrained")
    with pytest.raises(
        pytest.fail.Exception, match=r"the server exited: (?s:.*)(ImportError|AttributeError)"
    ):
        stdio_session(at(prefix, old_time["command"]), env=no_network_env())

    assert old_time_constrained["constraints"] == [OLD_PYPI_CONSTRAINT]
    assert pins(old_time_constrained)["mcp"].startswith("1.")
    prefix, _ = install_pypi(old_time_constrained, tmp_path / "constrained")
    session = stdio_session(at(prefix, old_time_constrained["command"]), env=no_network_env())
    assert session["initialize"]["serverInfo"]["name"] == "mcp-time"
    assert {"get_current_time", "convert_time"} <= set(session["tools"])
    assert old_time_constrained["release"] != old_time["release"]


def test_constraints_are_inputs_of_the_release_id(pypi, cache):
    """A constraint that changes no pin still makes another release (and another cache entry)."""
    answer, _ = build("--cache", str(cache), "--pypi", PYPI, *TARGET_PY, "--constraint=mcp<99")
    assert answer["lock"] == pypi["lock"]
    assert answer["release"] != pypi["release"] and answer["constraints"] == ["mcp<99"]


def test_exclude_newer_resolves_as_of_a_date(cache):
    answer, _ = build("--cache", str(cache), "--pypi", OLD_PYPI, *TARGET_PY, "--exclude-newer", "2025-10-01")
    assert answer["exclude_newer"] == "2025-10-01"
    assert pins(answer)["mcp"] == "1.15.0"  # the newest mcp uploaded before that day


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--pypi", PYPI, *TARGET_PY, "--constraint=mcp"], "--constraint 'mcp'"),
        (["--pypi", PYPI, *TARGET_PY, "--constraint=mcp @ https://example.invalid/m.whl"], "--constraint"),
        (["--pypi", PYPI, *TARGET_PY, "--constraint=mcp<2; python_version>'3'"], "--constraint"),
        (["--pypi", PYPI, *TARGET_PY, "--constraint=mcp<2\n--index-url=http://x"], "control characters"),
        (["--pypi", PYPI, *TARGET_PY, "--exclude-newer", "yesterday"], "--exclude-newer 'yesterday'"),
        (["--pypi", PYPI, *TARGET_PY, "--exclude-newer", "2025-13-01"], "--exclude-newer '2025-13-01'"),
        (["--pypi", PYPI, *TARGET_PY, "--exclude-newer", "2025-10-01T00:00:00"], "RFC 3339"),
        (["--pypi", PYPI, *TARGET_PY, "--override=ms@2.1.3"], "--override is for --npm"),
        (["--npm", NPM, "--node-major", "18", "--constraint=mcp<2"], "--constraint and --exclude-newer"),
        (["--npm", NPM, "--node-major", "18", "--override=ms@^2.1.3"], "--override 'ms@^2.1.3'"),
        (["--npm", NPM, "--node-major", "18", f"--override={NPM}"], "not @modelcontextprotocol"),
    ],
)
def test_bad_constraints_are_refused_before_any_network_use(tmp_path, args, named):
    cache = tmp_path / "cache"
    proc, elapsed = script("--cache", str(cache), *args, env=no_network_env(), offline=True)
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "refused" in proc.stderr
    assert not cache.exists()
    assert elapsed < 5


# --- no package code runs on the controller -------------------------------------------------------


def _sdist(index: Path, name: str, marker: Path) -> None:
    """An sdist whose in-tree build backend writes `marker` the moment it is imported, so any
    attempt to read its metadata by building it shows."""
    src = index / "src" / f"{name}-1.0"
    src.mkdir(parents=True)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
    )
    (src / "backend.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "def get_requires_for_build_wheel(config_settings=None):\n    return []\n"
        "def prepare_metadata_for_build_wheel(d, config_settings=None):\n    raise SystemExit('no')\n"
        "def build_wheel(d, config_settings=None, metadata_directory=None):\n    raise SystemExit('no')\n"
    )
    dist = index / "files" / f"{name}-1.0.tar.gz"
    dist.parent.mkdir(exist_ok=True)
    with tarfile.open(dist, "w:gz") as tar:
        tar.add(src, arcname=f"{name}-1.0")
    _publish(index, name, dist)


def _wheel(index: Path, name: str, requires: str) -> None:
    dist = index / "files" / f"{name}-1.0-py3-none-any.whl"
    dist.parent.mkdir(exist_ok=True)
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(dist, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "")
        zf.writestr(
            f"{info}/METADATA",
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\nRequires-Dist: {requires}\n",
        )
        zf.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{info}/RECORD", "")
    _publish(index, name, dist)


def _publish(index: Path, name: str, dist: Path) -> None:
    page = index / "simple" / name / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(dist.read_bytes()).hexdigest()
    page.write_text(
        f'<html><body><a href="../../files/{dist.name}#sha256={digest}">{dist.name}</a></body></html>'
    )


@pytest.mark.parametrize(("spec", "named"), [("evilpkg==1.0", "evilpkg==1.0"), ("goodpkg==1.0", "evilpkg")])
def test_a_source_only_distribution_is_refused_by_name_and_never_built(tmp_path, spec, named):
    """Directly or as a dependency: resolution reads wheels only, so the sdist's build backend (its
    code) never runs on the controller."""
    index, marker = tmp_path / "index", tmp_path / "MARKER"
    _sdist(index, "evilpkg", marker)
    _wheel(index, "goodpkg", "evilpkg")
    args = ("--cache", str(tmp_path / "cache"), "--pypi", spec, *TARGET_PY)
    proc, _ = script(*args, "--index-url", (index / "simple").as_uri())
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr and "only a source distribution" in proc.stderr
    assert not marker.exists(), "the sdist's build backend ran on the controller"


def test_a_published_source_only_package_is_refused_by_name(tmp_path):
    # docopt 0.6.2 was only ever published as an sdist.
    proc, _ = script("--cache", str(tmp_path / "cache"), "--pypi", "docopt==0.6.2", *TARGET_PY)
    assert proc.returncode == 2, proc.stderr
    assert "docopt==0.6.2: only a source distribution, no wheel for the target" in proc.stderr


class _Registry(http.server.ThreadingHTTPServer):
    """An npm registry on loopback: packuments and tarballs of packages made by the test."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _RegistryHandler)
        self.url = f"http://127.0.0.1:{self.server_port}/"
        self.files: dict[str, bytes] = {}

    def add(self, name: str, version: str, manifest: dict) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            data = json.dumps({"name": name, "version": version, **manifest}).encode()
            info = tarfile.TarInfo("package/package.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tgz = buf.getvalue()
        path = f"/{name}/-/{name}-{version}.tgz"
        self.files[path] = tgz
        dist = {
            "tarball": self.url.rstrip("/") + path,
            "integrity": "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode(),
            "shasum": hashlib.sha1(tgz).hexdigest(),
        }
        doc = {"name": name, "version": version, **manifest, "dist": dist}
        packument = {"name": name, "dist-tags": {"latest": version}, "versions": {version: doc}}
        self.files[f"/{name}"] = json.dumps(packument).encode()


class _RegistryHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.server.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args):
        pass


@pytest.fixture
def registry():
    server = _Registry()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _git_package(where: Path, marker: Path) -> Path:
    """A git repository of a package whose prepare script writes `marker` (npm runs prepare when it
    packs a git dependency)."""
    where.mkdir()
    script_js = f"require('fs').writeFileSync({str(marker)!r}, 'ran')"
    manifest = {"name": "gitdep", "version": "1.0.0", "scripts": {"prepare": f'node -e "{script_js}"'}}
    (where / "package.json").write_text(json.dumps(manifest))
    git = ["git", "-C", str(where), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "gitdep"], check=True)
    return where


@needs_npm
@pytest.mark.parametrize("kind", ["git", "file", "directory", "url"])
def test_npm_git_url_and_file_dependencies_are_refused_by_name_before_they_run(registry, tmp_path, kind):
    """A registry package whose dependency is a git repository (with a prepare script), a file: tarball,
    a local directory or a remote tarball: refused, named, and the git dependency's prepare never ran."""
    marker = tmp_path / "MARKER"
    repo = _git_package(tmp_path / "repo", marker)
    local = tmp_path / "localdep"
    local.mkdir()
    (local / "package.json").write_text(json.dumps({"name": "localdep", "version": "1.0.0"}))
    with tarfile.open(tmp_path / "filedep.tgz", "w:gz") as tar:
        data = json.dumps({"name": "filedep", "version": "1.0.0"}).encode()
        info = tarfile.TarInfo("package/package.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    registry.add("remotedep", "1.0.0", {})
    dep, spec = {
        "git": ("gitdep", f"git+{repo.as_uri()}"),
        "file": ("filedep", f"file:{tmp_path / 'filedep.tgz'}"),
        "directory": ("localdep", f"file:{local}"),
        "url": ("remotedep", registry.url + "remotedep/-/remotedep-1.0.0.tgz"),
    }[kind]
    registry.add("wrapper", "1.0.0", {"dependencies": {dep: spec}})
    env = dict(os.environ, npm_config_cache=str(tmp_path / "npm-cache"))
    args = ("--cache", str(tmp_path / "cache"), "--npm", "wrapper@1.0.0", "--node-major", "20")
    proc, _ = script(*args, "--registry", registry.url, env=env)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert dep in proc.stderr and "only registry packages with an integrity hash" in proc.stderr
    assert not marker.exists(), "the git dependency's prepare script ran on the controller"
    assert not list((tmp_path / "cache").glob("servers/npm/*.tar"))


@needs_npm
def test_the_git_fixture_would_show_a_prepare_script_that_runs(tmp_path):
    """The marker is live: npm with scripts allowed runs the git dependency's prepare."""
    marker = tmp_path / "MARKER"
    repo = _git_package(tmp_path / "repo", marker)
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text(
        json.dumps({"name": "p", "version": "0.0.0", "dependencies": {"gitdep": f"git+{repo.as_uri()}"}})
    )
    env = dict(os.environ, npm_config_cache=str(tmp_path / "npm-cache"))
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert marker.read_text() == "ran"


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("^1.2.3", "registry"),
        ("1.x || >=2.5.0", "registry"),
        ("latest", "registry"),
        ("npm:other@^1.0.0", "registry"),
        ("npm:@scope/other@1.0.0", "registry"),
        ("git+https://example.invalid/x.git", "git"),
        ("github:user/repo#abc", "git"),
        ("user/repo", "git"),
        ("https://example.invalid/x.tgz", "URL"),
        ("file:../x", "file"),
        ("link:../x", "file"),
        ("./x", "file"),
        ("x.tgz", "file"),
        ("npm:other@git+https://example.invalid/x.git", "git"),
    ],
)
def test_npm_dependency_spec_kinds(spec, kind):
    assert sa.npm_spec_kind(spec) == kind


def test_npm_lock_check_names_every_entry_that_is_not_a_registry_tarball():
    """What an npm without --allow-git leaves in a lock: each kind refused by name."""
    good = "sha512-" + "A" * 86 + "=="
    lock = {
        "lockfileVersion": 3,
        "packages": {
            "": {"dependencies": {"a": "1.0.0"}},
            "node_modules/a": {"version": "1.0.0", "integrity": good, "dependencies": {"g": "github:u/g"}},
            "node_modules/g": {"version": "2.0.0", "resolved": "git+ssh://git@example.invalid/u/g.git#0123"},
            "node_modules/l": {"resolved": "../l", "link": True},
            "../l": {"version": "1.0.0"},
            "node_modules/u": {
                "version": "1.0.0",
                "resolved": "https://example.invalid/u.tgz",
                "integrity": good,
            },
            "node_modules/n": {"version": "1.0.0"},
            "node_modules/a/node_modules/b": {"version": "1.0.0", "inBundle": True},
        },
    }
    with pytest.raises(sa.Refused) as err:
        sa.check_npm_lock(lock, "test")
    text = str(err.value)
    for name in (
        "a -> g (git dependency 'github:u/g')",
        "g@2.0.0 (resolved from git",
        "l (a link to ../l)",
        "../l (a local directory",
        "u@1.0.0 (a URL tarball",
        "n@1.0.0 (no integrity hash)",
    ):
        assert name in text, name
    assert (
        "node_modules/a/node_modules/b" not in text and "b@1.0.0" not in text
    )  # bundled: the parent's hash covers it
    clean = {
        "lockfileVersion": 3,
        "packages": {"": {}, "node_modules/a": {"version": "1.0.0", "integrity": good}},
    }
    sa.check_npm_lock(clean, "test")


# --- digests: cache hits and lock files -----------------------------------------------------------

SMALL = "six==1.17.0"


def test_a_tampered_cache_entry_fails_loudly_and_is_not_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    answer, _ = build("--cache", str(cache), "--pypi", SMALL, *TARGET_PY)
    tarball = Path(answer["tarball"])
    tarball.write_bytes(tarball.read_bytes() + b"\0")
    tampered = sa.sha256(tarball)
    proc, _ = script("--cache", str(cache), "--pypi", SMALL, *TARGET_PY)
    assert proc.returncode == 3, proc.stderr
    assert str(tarball) in proc.stderr and tampered in proc.stderr and answer["sha256"] in proc.stderr
    assert sa.sha256(tarball) == tampered, "a cache hit must not silently rebuild"
    # Without the cache entry, a rebuild that finds the tarball compares it with what it built.
    for memo in (cache / "servers" / "inputs").glob("*.json"):
        memo.unlink()
    proc, _ = script("--cache", str(cache), "--pypi", SMALL, *TARGET_PY)
    assert proc.returncode == 3, proc.stderr
    assert str(tarball) in proc.stderr and tampered in proc.stderr and answer["sha256"] in proc.stderr


def _lock_args(cache: Path, locks: Path, *extra: str) -> list[str]:
    args = ["--cache", str(cache), "--pypi", OLD_PYPI, *TARGET_PY, f"--constraint={OLD_PYPI_CONSTRAINT}"]
    return [*args, "--lock-dir", str(locks), "--server", "time", *extra]


def test_a_lock_file_rebuilds_the_same_artefact_on_an_empty_cache(old_time_constrained, tmp_path):
    locks = tmp_path / "inventory" / "locks"
    first, _ = build(*_lock_args(tmp_path / "cache1", locks))
    lock_file = locks / "time.2025.9.25.py3.11.2-x86_64-manylinux_2_28.lock.json"
    assert first["lock_file"] == str(lock_file) and first["lock_written"] and first["changed"]
    stored = json.loads(lock_file.read_text())
    assert stored["inputs"]["constraints"] == [OLD_PYPI_CONSTRAINT]
    assert (stored["release"], stored["sha256"]) == (first["release"], first["sha256"])
    assert "\n".join(stored["requirements"]) + "\n" == first["lock"]
    assert first["release"] == old_time_constrained["release"]  # same inputs, same resolution
    before = lock_file.read_bytes()

    again, _ = build(*_lock_args(tmp_path / "cache1", locks))
    assert again == dict(first, changed=False, lock_written=False)
    other, _ = build(*_lock_args(tmp_path / "cache2", locks))
    assert (other["release"], other["sha256"]) == (first["release"], first["sha256"])
    assert other["changed"] and not other["lock_written"] and lock_file.read_bytes() == before


def test_a_lock_file_of_other_inputs_is_refused_naming_what_differs(old_time_constrained, tmp_path):
    locks = tmp_path / "locks"
    build(*_lock_args(tmp_path / "cache", locks))
    args = ["--cache", str(tmp_path / "cache"), "--pypi", OLD_PYPI, *TARGET_PY, "--constraint=mcp<1.20"]
    proc, _ = script(*args, "--lock-dir", str(locks), "--server", "time", env=no_network_env(), offline=True)
    assert proc.returncode == 2, proc.stderr
    assert "constraints: the lock has ['mcp<2'], the server asks ['mcp<1.20']" in proc.stderr
    assert "delete the file" in proc.stderr


def test_a_tampered_lock_file_fails_loudly(old_time_constrained, tmp_path):
    locks = tmp_path / "locks"
    build(*_lock_args(tmp_path / "cache", locks))
    lock_file = next(locks.glob("*.lock.json"))
    stored = json.loads(lock_file.read_text())

    # A changed package hash: the download no longer matches it.
    edited = dict(stored, requirements=list(stored["requirements"]))
    i = next(i for i, line in enumerate(edited["requirements"]) if line.startswith("mcp-server-time=="))
    edited["requirements"][i + 1] = "    --hash=sha256:" + "0" * 64
    lock_file.write_text(json.dumps(edited))
    proc, _ = script(*_lock_args(tmp_path / "empty1", locks))
    assert proc.returncode == 3, proc.stderr
    assert str(lock_file) in proc.stderr and "does not match the lock's hashes" in proc.stderr
    assert "0" * 64 in proc.stderr

    # A changed artefact digest: the build comes out with another one.
    lock_file.write_text(json.dumps(dict(stored, sha256="f" * 64)))
    proc, _ = script(*_lock_args(tmp_path / "empty2", locks))
    assert proc.returncode == 3, proc.stderr
    assert str(lock_file) in proc.stderr and "f" * 64 in proc.stderr and stored["sha256"] in proc.stderr
    assert not list((tmp_path / "empty2").glob("servers/pypi/*.tar"))

    # A pip option smuggled into the lock is refused before anything runs.
    lock_file.write_text(json.dumps(dict(stored, requirements=["--index-url http://example.invalid/"])))
    proc, _ = script(*_lock_args(tmp_path / "empty3", locks), env=no_network_env(), offline=True)
    assert proc.returncode == 2 and "neither NAME==VERSION nor --hash" in proc.stderr


@needs_npm
def test_npm_overrides_and_a_lock_file_reproduce_the_tree(tmp_path):
    """mkdirp 0.5.6 asks for minimist ^1.2.6: the override pins 1.2.6; the lock file gives the same
    artefact on an empty cache, and a changed integrity fails loudly."""
    locks = tmp_path / "locks"
    args = ["--npm", "mkdirp@0.5.6", "--node-major", "20", "--override=minimist@1.2.6"]
    args += ["--lock-dir", str(locks), "--server", "mk"]
    first, _ = build("--cache", str(tmp_path / "cache1"), *args)
    assert first["overrides"] == {"minimist": "1.2.6"} and first["lock_written"]
    lock = json.loads(read_member(first["tarball"], "package-lock.json"))
    assert lock["packages"]["node_modules/minimist"]["version"] == "1.2.6"
    plain, _ = build("--cache", str(tmp_path / "cache1"), "--npm", "mkdirp@0.5.6", "--node-major", "20")
    assert plain["release"] != first["release"]

    other, _ = build("--cache", str(tmp_path / "cache2"), *args)
    assert (other["release"], other["sha256"]) == (first["release"], first["sha256"])

    lock_file = locks / "mk.0.5.6.node20-x86_64.lock.json"
    stored = json.loads(lock_file.read_text())
    # A package.json edited in the lock (a script of its own) is refused before npm runs.
    scripted = dict(stored, **{"package.json": dict(stored["package.json"], scripts={"preinstall": "id"})})
    lock_file.write_text(json.dumps(scripted))
    proc, _ = script("--cache", str(tmp_path / "cache3"), *args, env=no_network_env(), offline=True)
    assert proc.returncode == 2 and f"{lock_file}: its package.json is not the one" in proc.stderr
    entry = stored["package-lock.json"]["packages"]["node_modules/minimist"]
    entry["integrity"] = "sha512-" + base64.b64encode(b"\0" * 64).decode()
    lock_file.write_text(json.dumps(stored))
    env = dict(os.environ, npm_config_cache=str(tmp_path / "npm-cache"))
    proc, _ = script("--cache", str(tmp_path / "cache3"), *args, env=env)
    assert proc.returncode == 3, proc.stderr
    assert str(lock_file) in proc.stderr and "integrity" in proc.stderr
