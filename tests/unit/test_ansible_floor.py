"""One ansible-core floor: every place that states the lowest supported version states the same one.

The places: meta/runtime.yml (requires_ansible, what ansible-galaxy checks on install), each
role's meta/main.yml (min_ansible_version), the README's sentence for users, and the dev extra in
pyproject.toml (what the project's own tests run on).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
ROLE_METAS = sorted(ROOT.glob("roles/*/meta/main.yml"))
README_SENTENCE = re.compile(r"ansible-core (\d+\.\d+(?:\.\d+)?) or newer on the controller")


def lower_bound(spec: SpecifierSet, where: str) -> Version:
    """The one `>=` bound of a specifier set, which must be the set's only lower bound."""
    lower = [s for s in spec if s.operator in (">=", ">", "==", "~=")]
    assert len(lower) == 1 and lower[0].operator == ">=", f"{where}: expected one '>=' bound, got '{spec}'"
    return Version(lower[0].version)


def floor_of_runtime() -> Version:
    runtime = yaml.safe_load((ROOT / "meta/runtime.yml").read_text())
    return lower_bound(SpecifierSet(runtime["requires_ansible"]), "meta/runtime.yml requires_ansible")


def floor_of_role(meta: Path) -> Version:
    info = yaml.safe_load(meta.read_text())["galaxy_info"]
    value = info.get("min_ansible_version")
    assert isinstance(value, str), f"{meta.relative_to(ROOT)}: min_ansible_version must be a quoted string"
    return Version(value)


def floor_of_readme() -> Version:
    # the sentence may be wrapped over two lines
    text = " ".join((ROOT / "README.md").read_text().split())
    found = README_SENTENCE.findall(text)
    assert len(found) == 1, f"README.md: expected one 'ansible-core X.Y or newer' sentence, got {found}"
    return Version(found[0])


def floor_of_dev_extra() -> Version:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["optional-dependencies"]["dev"]]
    cores = [r for r in reqs if r.name == "ansible-core"]
    assert len(cores) == 1, "pyproject.toml: the dev extra must name ansible-core once"
    return lower_bound(cores[0].specifier, "pyproject.toml dev extra ansible-core")


def test_every_role_states_a_floor():
    assert ROLE_METAS, "no roles/*/meta/main.yml found"


@pytest.mark.parametrize("meta", ROLE_METAS, ids=lambda p: p.parts[-3])
def test_role_floor_matches_the_collection(meta):
    # Version("2.17") == Version("2.17.0"), so a role's "2.17" agrees with runtime.yml's 2.17.0
    assert floor_of_role(meta) == floor_of_runtime()


def test_readme_floor_matches_the_collection():
    assert floor_of_readme() == floor_of_runtime()


def test_dev_extra_floor_matches_the_collection():
    assert floor_of_dev_extra() == floor_of_runtime()


def test_the_floor_is_2_17():
    # Raising the floor is a decision: change every place above together, and this line.
    assert floor_of_runtime() == Version("2.17")
