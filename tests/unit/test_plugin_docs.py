"""ansible-doc shows the documentation of every filter and test plugin of the collection.

Every ansible-doc command starts at once in one module fixture (each takes about half a second of
CPU): one per plugin (JSON, which carries the short description), and per plugin type one text
rendering of all its plugins and one --list. The tests then check the outputs plugin by plugin.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COLLECTIONS = ROOT / ".cache" / "collections"
ANSIBLE_DOC = str(Path(sys.executable).parent / "ansible-doc")
KINDS = ("filter", "test")
PLUGINS = [
    (kind, p.stem)
    for kind in KINDS
    for p in sorted((ROOT / "plugins" / kind).glob("*.py"))
    if p.stem != "__init__"
]
DOC_NAMES = ("DOCUMENTATION", "EXAMPLES", "RETURN")


def module_doc(kind: str, name: str) -> dict:
    """The DOCUMENTATION, EXAMPLES and RETURN strings of a plugin file, read without importing it."""
    tree = ast.parse((ROOT / "plugins" / kind / f"{name}.py").read_text())
    found = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and targets[0].id in DOC_NAMES:
            found[targets[0].id] = ast.literal_eval(node.value)
    return found


@pytest.fixture(scope="module")
def docs() -> dict:
    assert (COLLECTIONS / "ansible_collections" / "mcpops" / "deploy").exists(), "run scripts/setup.sh first"
    env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "ANSIBLE_NOCOLOR": "1"}
    commands = {}
    for kind, name in PLUGINS:
        commands[kind, name, "json"] = [ANSIBLE_DOC, "-t", kind, "--json", f"mcpops.deploy.{name}"]
    for kind in KINDS:
        names = [f"mcpops.deploy.{name}" for k, name in PLUGINS if k == kind]
        commands[kind, None, "text"] = [ANSIBLE_DOC, "-t", kind, *names]
        commands[kind, None, "list"] = [ANSIBLE_DOC, "-t", kind, "--list", "mcpops.deploy"]
    procs = {
        key: subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for key, cmd in commands.items()
    }
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[key] = (proc.returncode, out, err, " ".join(commands[key]))
    return results


def ok(result) -> str:
    rc, out, err, cmd = result
    assert rc == 0, f"{cmd} exited {rc}:\n{out}\n{err}"
    return out


def test_there_are_plugins_to_check():
    names = {name for _, name in PLUGINS}
    assert {"mcp_instances", "host_addresses", "redis_url"} <= names
    assert {"ip_address", "ip_network", "dns_name", "mcp_app_path", "redis_key_prefix"} <= names


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_each_plugin_file_has_its_own_documentation(kind, name):
    found = module_doc(kind, name)
    assert set(found) == set(DOC_NAMES)
    doc = yaml.safe_load(found["DOCUMENTATION"])
    assert doc["name"] == name, "the documented name is the file name"
    assert doc["short_description"] and doc["description"] and doc["author"]
    assert "_input" in doc["options"]
    assert yaml.safe_load(found["EXAMPLES"]) is not None
    assert "_value" in yaml.safe_load(found["RETURN"])


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_ansible_doc_shows_the_plugin(docs, kind, name):
    short = yaml.safe_load(module_doc(kind, name)["DOCUMENTATION"])["short_description"]
    shown = json.loads(ok(docs[kind, name, "json"]))[f"mcpops.deploy.{name}"]
    assert shown["doc"]["name"] == name
    assert shown["doc"]["short_description"] == short
    assert shown["doc"]["filename"].endswith(f"plugins/{kind}/{name}.py")
    assert shown["examples"].strip() and "_value" in shown["return"]


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_ansible_doc_renders_the_plugin_as_text(docs, kind, name):
    text = ok(docs[kind, None, "text"])
    header = f"> {kind.upper()} mcpops.deploy.{name} ("
    assert header in text
    section = text.split(header, 1)[1].split(f"> {kind.upper()} ", 1)[0]
    assert section.splitlines()[0].endswith(f"plugins/{kind}/{name}.py)")
    assert f"NAME: {name}" in section
    assert "EXAMPLES:" in section and "RETURN VALUES:" in section


@pytest.mark.parametrize("kind", KINDS)
def test_ansible_doc_lists_the_collections_plugins(docs, kind):
    text = ok(docs[kind, None, "list"])
    listed = {line.split()[0] for line in text.splitlines() if line.strip()}
    assert listed == {f"mcpops.deploy.{name}" for k, name in PLUGINS if k == kind}
