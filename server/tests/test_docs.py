"""The docs say what the code has: docs/architecture.md's module map lists every module, and every
table of settings (docs/architecture.md's configuration table, server/README.md's tables) agrees
with the declarations in config.py: the same keys, environment variables and defaults."""

from __future__ import annotations

import re
from pathlib import Path

from mcpops_server import config

REPO = Path(__file__).resolve().parents[2]
ARCH = (REPO / "docs" / "architecture.md").read_text()
SERVER_README = (REPO / "server" / "README.md").read_text()
PACKAGE = REPO / "server" / "mcpops_server"
DECLARED = config.declarations()


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_module_map_lists_exactly_the_modules():
    block = _section(ARCH, "## The server (server/mcpops_server)").split("```")[1]
    mapped = set(re.findall(r"^([a-z_]+\.py)\b", block, re.M))
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    assert mapped == modules, f"not in the map: {modules - mapped}; not in the code: {mapped - modules}"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _per_key(cell: str, count: int) -> list[str]:
    """A cell of a row naming ``count`` settings as ``a / b``, split the same way."""
    parts = [part.strip() for part in cell.split(" / ")] if count > 1 else [cell]
    assert len(parts) == count, f"{cell!r} does not give one value for each of the row's {count} settings"
    return parts


def _setting_rows(text: str) -> list[tuple[str, str | None, str]]:
    """(key, env cell or None when the table has no env column, default cell) for every row of the
    tables in ``text`` whose first column names settings ("YAML key" or "setting"). A row may name
    several settings as ``a / b``, with its env and default cells split the same way."""
    rows = []
    header: list[str] | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = cells
            continue
        if header[0] not in ("YAML key", "setting") or set(cells[0]) <= {"-"}:
            continue
        keys = [key.strip().strip("`") for key in cells[0].split(" / ")]
        assert "default" in header, f"a table of settings without a default column: {header}"
        defaults = _per_key(cells[header.index("default")], len(keys))
        envs = _per_key(cells[header.index("env")], len(keys)) if "env" in header else [None] * len(keys)
        rows.extend(zip(keys, envs, defaults, strict=True))
    return rows


def _disagreements(rows: list[tuple[str, str | None, str]]) -> list[str]:
    found = []
    for key, env, default in rows:
        declared = DECLARED.get(key)
        if declared is None:
            found.append(f"{key}: no such setting in config.py")
            continue
        if env is not None and env != (declared.env or ""):
            found.append(f"{key}: the env cell says {env!r}, config.py {declared.env!r}")
        if default != declared.default_text():
            found.append(f"{key}: the default cell says {default!r}, config.py {declared.default_text()!r}")
    return found


def test_the_configuration_table_has_a_row_for_every_setting_and_no_other():
    keys = [key for key, _env, _default in _setting_rows(_section(ARCH, "### Configuration"))]
    missing = [key for key in DECLARED if key not in keys]
    assert not missing, f"settings without a row in docs/architecture.md's configuration table: {missing}"
    doubled = sorted({key for key in keys if keys.count(key) > 1})
    assert not doubled, f"settings with more than one row: {doubled}"


def test_the_configuration_table_states_each_variable_and_default_as_declared():
    rows = _setting_rows(_section(ARCH, "### Configuration"))
    assert len(rows) == len(DECLARED)
    assert _disagreements(rows) == []


def test_the_server_readme_tables_of_settings_agree_with_the_declarations():
    rows = _setting_rows(SERVER_README)
    # the limits against hostile clients and the bounds of the notes store
    assert {"server.max_sessions", "notes.max_bytes", "notes.search_wait"} <= {key for key, *_ in rows}
    assert _disagreements(rows) == []


def test_the_markdown_table_is_what_the_docs_table_reads():
    rows = _setting_rows(config.markdown_table())
    assert [key for key, *_ in rows] == list(DECLARED)
    assert _disagreements(rows) == []
