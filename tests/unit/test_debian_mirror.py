"""scripts/debian_mirror.sh: the Debian mirror for debootstrap comes from the controller's apt sources.

Each test lays out an etc/apt/ tree in a temporary directory and points the script at it with
MCPOPS_APT_ROOT. All URLs are made up (.invalid never resolves).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "debian_mirror.sh"
MIRROR = "http://mirror.example.invalid/debian"
SECURITY = "http://security.example.invalid/debian-security"
VENDOR = "https://vendor.example.invalid/linux/debian"


def apt_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / "etc" / "apt" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def mirror(root: Path, override: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPOPS_")}
    env["MCPOPS_APT_ROOT"] = str(root)
    if override is not None:
        env["MCPOPS_DEBIAN_MIRROR"] = override
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False)


def found(root: Path) -> str:
    proc = mirror(root)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout.strip()


def not_found_line(root: Path) -> str:
    apt = f"{root}/etc/apt"
    return (
        f"setup: no Debian mirror found in {apt}/sources.list or {apt}/sources.list.d/"
        " (set MCPOPS_DEBIAN_MIRROR=<url>)"
    )


DEB822 = f"""\
Types: deb
# a comment inside a stanza, as Debian's own file has
URIs: {MIRROR}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_deb822_main_stanza(tmp_path):
    assert found(apt_tree(tmp_path, {"sources.list.d/debian.sources": DEB822})) == MIRROR


def test_deb822_security_stanza_first_and_several_uris(tmp_path):
    text = f"""\
Types: deb
URIs: {SECURITY}
Suites: bookworm-security
Components: main

Types: deb-src deb
URIs: {SECURITY}
  {MIRROR} http://second.example.invalid/debian
Suites: bookworm
Components: main contrib
"""
    assert found(apt_tree(tmp_path, {"sources.list.d/debian.sources": text})) == MIRROR


def test_deb822_skips_disabled_source_only_and_updates_only_stanzas(tmp_path):
    text = f"""\
Types: deb
URIs: http://disabled.example.invalid/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb-src
URIs: http://sources.example.invalid/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://updates.example.invalid/debian
Suites: bookworm-updates bookworm-backports
Components: main

Types: deb
URIs: {MIRROR}
Suites: trixie
Components: main
"""
    assert found(apt_tree(tmp_path, {"sources.list.d/debian.sources": text})) == MIRROR


def test_debian_sources_wins_over_a_vendor_file_that_sorts_first(tmp_path):
    vendor = f"Types: deb\nURIs: {VENDOR}\nSuites: bookworm\nComponents: main\n"
    files = {"sources.list.d/aaa-vendor.sources": vendor, "sources.list.d/debian.sources": DEB822}
    root = apt_tree(tmp_path, files)
    assert found(root) == MIRROR


def test_deb822_comes_before_one_line_files(tmp_path):
    root = apt_tree(
        tmp_path,
        {
            "sources.list": "deb http://one-line.example.invalid/debian bookworm main\n",
            "sources.list.d/debian.sources": DEB822,
        },
    )
    assert found(root) == MIRROR


def test_one_line_with_signed_by_options(tmp_path):
    text = f"""\
# deb http://commented.example.invalid/debian bookworm main
deb cdrom:[Debian GNU/Linux 12.0.0 _Bookworm_ - Official amd64 DVD Binary-1]/ bookworm contrib main
deb-src {MIRROR} bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {SECURITY} bookworm-security main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {MIRROR} bookworm main contrib
deb http://later.example.invalid/debian bookworm main
"""
    assert found(apt_tree(tmp_path, {"sources.list": text})) == MIRROR


def test_one_line_in_sources_list_d_with_spaced_options_skips_vendor_components(tmp_path):
    text = f"""\
deb [ arch=amd64 signed-by=/etc/apt/keyrings/vendor.asc ] {VENDOR} bookworm stable
deb [ arch=amd64 ] {MIRROR} bookworm main  # a trailing comment
"""
    assert found(apt_tree(tmp_path, {"sources.list.d/local.list": text})) == MIRROR


def test_uris_debootstrap_cannot_use_are_passed_over(tmp_path):
    uris = f"tor+http://onion.example.invalid/debian {MIRROR}"
    text = f"Types: deb\nURIs: {uris}\nSuites: bookworm\nComponents: main\n"
    assert found(apt_tree(tmp_path, {"sources.list.d/debian.sources": text})) == MIRROR


@pytest.mark.parametrize(
    "uri", ["mirror+file:///etc/apt/mirrors/debian.list", "mirror+file:/etc/apt/mirrors/debian.list"]
)
def test_mirror_list_uri_stands_for_its_first_url(tmp_path, uri):
    text = f"Types: deb\nURIs: {uri}\nSuites: bookworm\nComponents: main\n"
    mirrors = f"# the mirrors\n{MIRROR}\tpriority:1\n"
    root = apt_tree(tmp_path, {"sources.list.d/debian.sources": text, "mirrors/debian.list": mirrors})
    assert found(root) == MIRROR


@pytest.mark.parametrize(
    "files",
    [
        {"sources.list.d/debian.sources": DEB822.split("\n\n")[1]},
        {"sources.list": f"deb {SECURITY} bookworm-security main\ndeb-src {MIRROR} bookworm main\n"},
        {"sources.list": "# nothing but comments\n"},
        {},
    ],
    ids=["deb822-security-only", "one-line-security-and-deb-src", "comments-only", "no-apt-dir"],
)
def test_no_mirror_is_one_line_and_a_failure(tmp_path, files):
    root = apt_tree(tmp_path, files)
    proc = mirror(root)
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [not_found_line(root)]


def test_override_wins_with_or_without_sources(tmp_path):
    override = "http://override.example.invalid/debian"
    empty = tmp_path / "empty"
    empty.mkdir()
    configured = apt_tree(tmp_path / "configured", {"sources.list.d/debian.sources": DEB822})
    for root in (empty, configured):
        proc = mirror(root, override=override)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == override


def test_setup_names_no_mirror_of_its_own():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "://" not in setup, "setup.sh must take the mirror from apt's sources, not name one"
    assert "debian_mirror.sh" in setup
