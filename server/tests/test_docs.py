"""docs/architecture.md says what the code has: every module in its module map, every setting in
its configuration table (with the same environment variable), and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

from mcpops_server import config

REPO = Path(__file__).resolve().parents[2]
ARCH = (REPO / "docs" / "architecture.md").read_text()
PACKAGE = REPO / "server" / "mcpops_server"


def _section(title: str) -> str:
    start = ARCH.index(title)
    end = ARCH.find("\n## ", start + 1)
    return ARCH[start : end if end > 0 else None]


def test_the_module_map_lists_exactly_the_modules():
    block = _section("## The server (server/mcpops_server)").split("```")[1]
    mapped = set(re.findall(r"^([a-z_]+\.py)\b", block, re.M))
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert mapped == modules, f"not in the map: {modules - mapped}; not in the code: {mapped - modules}"


def _table_rows() -> dict[str, str]:
    """'section.key' -> the env cell, for every row of the configuration table."""
    rows: dict[str, str] = {}
    table = _section("### Configuration")
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or not re.match(r"^[a-z_]+\.", cells[0]):
            continue
        keys = [k.strip() for k in cells[0].split("/")]
        envs = [e.strip() for e in cells[1].split("/")] if "/" in cells[1] else [cells[1]] * len(keys)
        for key, env in zip(keys, envs, strict=False):
            rows[key] = env
    return rows


def test_every_setting_is_in_the_configuration_table_with_its_environment_variable():
    rows = _table_rows()
    missing, wrong_env = [], []
    for section, keys in config._SCHEMA.items():
        for name, spec in keys.items():
            key = f"{section}.{name}"
            if key in rows:
                if spec.env and spec.env not in rows[key]:
                    wrong_env.append(f"{key}: table says {rows[key]!r}, code {spec.env}")
            elif f"{section}.*" in rows or (name == "password" and section == "redis"):
                continue  # documented as a group (database.*) or as the secret row (REDIS_PASSWORD)
            else:
                missing.append(key)
    assert not missing, f"settings not in docs/architecture.md's configuration table: {missing}"
    assert not wrong_env, wrong_env


def test_the_configuration_table_names_no_setting_that_is_gone():
    known = {f"{s}.{k}" for s, keys in config._SCHEMA.items() for k in keys}
    gone = [k for k in _table_rows() if not k.endswith(".*") and k not in known]
    assert not gone, f"in the table but not in config.py: {gone}"
