"""The collection as users get it: built, installed offline, roles resolved by FQCN from the copy.

Ansible Galaxy is unreachable here, so the install is `--offline`; the dependencies
(community.general, community.crypto, ansible.posix) come from the `ansible` package.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
CONTAINER = "mcpops-collection-test"
DOCKER_CONNECTION = "community.docker.docker"

# The only top-level entries a built collection may hold (galaxy.yml's manifest allow-list).
ALLOWED_TOP = {
    "MANIFEST.json",
    "FILES.json",
    "README.md",
    "CHANGELOG.md",
    "LICENSE",
    "requirements.yml",
    "pyproject.toml",
    "meta",
    "roles",
    "plugins",
    "playbooks",
    "docs",
    "inventories",
    "changelogs",
    "server",
}
# Development-only trees: none of their files may be shipped.
NEVER_SHIPPED = ["molecule", "tests", "bench", "scripts", ".ci", "server/tests", "inventories/local"]
# Build and tool leftovers, wherever they are in the tree.
JUNK = re.compile(
    r"(^|/)__pycache__(/|$)"
    r"|\.py[co]$"
    r"|\.egg-info(/|$)"
    r"|(^|/)(build|dist)(/|$)"
    r"|\.tar\.gz$"
    r"|\.whl$"
    r"|(^|/)\."  # hidden files and directories: .pytest_cache, .lab, editor state
)
# Leftovers planted in the checkout before the build; none of them may reach the tarball.
LEFTOVERS = [
    "build/lib/mcpops_server/leftover.py",  # what `pip install .` leaves at the root
    "dist/mcpops_server-0.0.0-py3-none-any.whl",
    "mcpops-deploy-0.0.0.tar.gz",  # an earlier build of the collection
    "server/mcpops_server.egg-info/PKG-INFO",  # usually there already, from `pip install -e`
    "server/build/lib/mcpops_server/leftover.py",
    "server/.pytest_cache/v/cache/nodeids",
    "plugins/filter/__pycache__/leftover.cpython-311.pyc",
    "plugins/filter/leftover.pyc",
    "docs/.lab/state.json",  # a lab-style state directory inside a shipped tree
    "playbooks/.site.yml.swp",
    "docs/old-release.tar.gz",
]


class Leftovers:
    """Plants LEFTOVERS in the checkout and removes exactly what it created, nothing that was there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.created: list[Path] = []  # the topmost path each plant created (a file or a new directory)
        self.written: list[Path] = []  # every file this run wrote
        self.kept: list[Path] = []  # leftovers that were there before the run: never touched

    def plant(self) -> None:
        for rel in LEFTOVERS:
            path = self.root / rel
            if path.exists():
                self.kept.append(path)
                continue
            top = path
            while not top.parent.exists():
                top = top.parent
            path.parent.mkdir(parents=True, exist_ok=True)
            # A .py leftover is valid Python, so a linter running meanwhile has nothing to report.
            note = "Leftover planted by tests/collection; it must never be shipped."
            path.write_text(f'"""{note}"""\n' if path.suffix == ".py" else note + "\n")
            self.created.append(top)
            self.written.append(path)

    def remove(self) -> None:
        while self.created:
            top = self.created.pop()
            if top.is_dir() and not top.is_symlink():
                shutil.rmtree(top, ignore_errors=True)
            else:
                top.unlink(missing_ok=True)


def checkout_files(under: str) -> set[str]:
    """Files under ROOT/under, as paths relative to ROOT, leaving out build and tool leftovers."""
    found = set()
    for path in (ROOT / under).rglob("*"):
        rel = path.relative_to(ROOT).as_posix()
        if path.is_file() and not JUNK.search(rel):
            found.add(rel)
    return found


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def isolated_env(collections_dir: Path) -> dict[str, str]:
    """An environment that sees only the installed copy, never the working tree's link."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_dir)
    env["ANSIBLE_INJECT_FACT_VARS"] = "false"
    env["ANSIBLE_HOST_KEY_CHECKING"] = "false"
    return env


@pytest.fixture(scope="module")
def leftovers() -> Iterator[Leftovers]:
    planted = Leftovers(ROOT)
    try:
        planted.plant()
        yield planted
    finally:
        planted.remove()


@pytest.fixture(scope="module")
def tarball(leftovers, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build")
    try:
        run(
            [str(BIN / "ansible-galaxy"), "collection", "build", "--output-path", str(out), str(ROOT)],
            cwd=out,
        )
    finally:
        leftovers.remove()  # as soon as the build has read the tree; the fixture's teardown is the backstop
    (built,) = out.glob("mcpops-deploy-*.tar.gz")
    return built


@pytest.fixture(scope="module")
def tarball_names(tarball) -> set[str]:
    with tarfile.open(tarball) as tar:
        return {m.name for m in tar.getmembers() if m.isfile()}


@pytest.fixture(scope="module")
def installed(tarball, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("collections")
    run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--offline", str(tarball), "-p", str(dest)],
        cwd=dest,
        env=isolated_env(dest),
    )
    return dest


def test_tarball_holds_only_allowed_top_level_entries(tarball_names):
    stray = sorted(n for n in tarball_names if n.split("/", 1)[0] not in ALLOWED_TOP)
    assert not stray, f"outside the allow-list: {stray[:10]}"


def test_tarball_holds_no_leftovers(tarball_names):
    junk = sorted(n for n in tarball_names if JUNK.search(n))
    assert not junk, f"build or tool leftovers shipped: {junk[:10]}"
    planted = sorted(set(LEFTOVERS) & tarball_names)
    assert not planted, f"planted leftovers shipped: {planted}"


def test_tarball_holds_no_development_only_files(tarball_names):
    for dropped in NEVER_SHIPPED:
        leaked = sorted(n for n in tarball_names if n.startswith(dropped + "/"))
        assert not leaked, f"{dropped}/ must not be shipped: {leaked[:5]}"
    other_inventories = sorted(
        n for n in tarball_names if n.startswith("inventories/") and not n.startswith("inventories/example/")
    )
    assert not other_inventories, f"only inventories/example is shipped: {other_inventories[:5]}"


def test_tarball_ships_what_users_need(tarball_names):
    assert ROLES, "no roles found"
    needed = {
        "MANIFEST.json",
        "FILES.json",
        "README.md",
        "CHANGELOG.md",
        "requirements.yml",
        "meta/runtime.yml",
        "playbooks/site.yml",
        "inventories/example/hosts.yml",
        "changelogs/changelog.yaml",
        # the mcp_server role builds the server wheel on the controller from the installed copy
        "pyproject.toml",
        "server/README.md",
    }
    if (ROOT / "LICENSE").is_file():
        needed.add("LICENSE")
    for role in ROLES:
        for rel in ("tasks/main.yml", "meta/argument_specs.yml", "meta/main.yml", "README.md"):
            needed.add(f"roles/{role}/{rel}")
    needed |= {n for n in checkout_files("plugins") if n.endswith(".py")}
    needed |= {n for n in checkout_files("server/mcpops_server") if n.endswith(".py")}
    missing = sorted(needed - tarball_names)
    assert not missing, f"missing from the tarball: {missing}"


def test_every_role_file_is_shipped(tarball_names):
    """Roles are shipped by a pattern, so a role added later (roles/common) needs no galaxy.yml edit;
    only the roles' development labs (roles/<role>/tests: throwaway containers and CAs) stay out."""
    files = checkout_files("roles")
    labs = {n for n in files if re.match(r"roles/[^/]+/tests/", n)}
    missing = sorted(files - labs - tarball_names)
    assert not missing, f"role files missing from the tarball: {missing[:10]}"
    assert labs, "no role has a lab under roles/<role>/tests: this check checks nothing"
    shipped = sorted(labs & tarball_names)
    assert not shipped, f"development labs shipped: {shipped[:10]}"


def test_leftovers_are_removed_and_prior_files_kept(tarball, leftovers):
    assert leftovers.written, "no leftover was planted"
    remaining = [str(p.relative_to(ROOT)) for p in leftovers.written if p.exists()]
    assert not remaining, f"planted leftovers still in the checkout: {remaining}"
    lost = [str(p.relative_to(ROOT)) for p in leftovers.kept if not p.exists()]
    assert not lost, f"files that were there before the test are gone: {lost}"


def test_installed_offline_into_an_empty_directory(installed):
    manifest = installed / "ansible_collections" / "mcpops" / "deploy" / "MANIFEST.json"
    assert manifest.is_file()
    listing = run(
        [str(BIN / "ansible-galaxy"), "collection", "list", "mcpops.deploy", "-p", str(installed)],
        cwd=installed,
        env=isolated_env(installed),
    ).stdout
    assert "mcpops.deploy" in listing


def test_roles_and_playbook_resolve_by_fqcn_from_the_installed_copy(installed, tmp_path):
    plays = [
        "- name: Every role by its FQCN",
        "  hosts: all",
        "  gather_facts: false",
        "  roles:",
        *[f"    - mcpops.deploy.{role}" for role in ROLES],
        "- name: The site playbook by its FQCN",
        "  ansible.builtin.import_playbook: mcpops.deploy.site",
    ]
    playbook = tmp_path / "fqcn.yml"
    playbook.write_text("---\n" + "\n".join(plays) + "\n")
    inventory = tmp_path / "hosts.yml"
    groups = "".join(f"    {g}: {{hosts: {{h1: {{}}}}}}\n" for g in ("mcp_servers", "mcp_lb", "redis"))
    inventory.write_text("all:\n  children:\n" + groups)
    assert ROLES, "no roles found"
    out = run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), "--syntax-check", str(playbook)],
        cwd=tmp_path,
        env=isolated_env(installed),
    )
    assert "ERROR" not in out.stderr


@pytest.fixture
def container():
    run([str(ROOT / "scripts" / "lab-host"), CONTAINER], cwd=ROOT)
    yield CONTAINER
    subprocess.run(["docker", "rm", "-f", CONTAINER], capture_output=True, check=False)


def test_a_role_from_the_installed_copy_converges_a_real_host(installed, tmp_path, container):
    """One real run: the redis role from the tarball, against a systemd container."""
    password = "collection-test-admin-0123456789"
    playbook = tmp_path / "redis.yml"
    playbook.write_text(
        "---\n"
        "- name: Redis from the installed collection\n"
        "  hosts: all\n"
        "  roles:\n"
        "    - role: mcpops.deploy.redis\n"
        "      vars:\n"
        "        redis_app_password: collection-test-app-0123456789\n"
        f"        redis_admin_password: {password}\n"
    )
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(f"all:\n  hosts:\n    {container}:\n      ansible_connection: {DOCKER_CONNECTION}\n")
    out = run(
        [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook), "-v"],
        cwd=tmp_path,
        env=isolated_env(installed),
    ).stdout
    assert "failed=0" in out
    cli = ["redis-cli", "--user", "admin", "ping"]
    ping = subprocess.run(
        ["docker", "exec", "-e", f"REDISCLI_AUTH={password}", container, *cli],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ping.stdout.strip() == "PONG", ping.stdout + ping.stderr
