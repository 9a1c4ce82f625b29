"""Secret values never reach a task's result or a --diff (issue 18).

Ansible shows a task's result at -v, its loop items with it (loop_control.label does not hide them),
the whole result of a failing task, and a file's old and new text under --diff. So: the servers'
secret values stay out of the filter's answer (test_mcp_servers_filter.py) and out of every
template; and every task that reads a secret (a server's, the Redis password, the key ring, a TLS
key) is no_log, and diff: false when it writes a file.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "roles"

# Everything in a task that is not its module or the module's arguments.
KEYWORDS = {
    "name", "when", "loop", "loop_control", "vars", "register", "no_log", "diff", "tags", "become",
    "become_user", "changed_when", "failed_when", "check_mode", "delegate_to", "run_once", "throttle",
    "until", "retries", "delay", "notify", "listen", "ignore_errors", "environment", "any_errors_fatal",
    "args", "block", "rescue", "always", "delegate_facts", "local_action", "timeout",
}  # fmt: skip

RAW_SERVERS = re.compile(r"(?<![\w])mcp_server_servers(?![\w])")
# The host's secret variables; their length alone (a check that one is set) is no secret.
SECRET_VARIABLES = re.compile(
    r"\b(mcp_server_redis_password|mcp_server_request_state_keys)\b(?!\s*\|\s*length)"
)
SECRET_FILES = re.compile(r"(secrets\.env|child\.env|request_state_keys|tls\.key|tls_key_file)\b(?!_)")


def _tasks(node):
    """Every task of a task list, blocks' tasks included."""
    for task in node or []:
        if not isinstance(task, dict):
            continue
        if "block" in task:
            for part in ("block", "rescue", "always"):
                yield from _tasks(task.get(part))
        else:
            yield task


def _role_tasks():
    for path in sorted(ROLES.glob("*/tasks/*.yml")) + sorted(ROLES.glob("*/handlers/*.yml")):
        for task in _tasks(yaml.safe_load(path.read_text())):
            yield path.relative_to(ROOT), task


def _module(task) -> str:
    return next((key for key in task if key not in KEYWORDS and not key.startswith("with_")), "")


def _reads(task, role: Path) -> str:
    """What a task reads: its module's arguments, its loop and vars, and the template it renders."""
    module = _module(task)
    parts = {key: task[key] for key in task if key not in ("name", "when", "no_log", "diff", "changed_when")}
    text = yaml.safe_dump(parts)
    if module.endswith("template") and isinstance(task[module], dict):
        src = str(task[module].get("src", ""))
        if src == "{{ mcp_server_config_template }}":
            src = "config.yaml.j2"
        template = ROOT / role / "templates" / src
        if template.is_file():  # its Jinja code, not its comments and text
            text += "\n".join(re.findall(r"\{\{.*?\}\}|\{%.*?%\}", template.read_text(), re.DOTALL))
    return text


def _role_of(path: Path) -> Path:
    return Path(*path.parts[:2])


def test_every_task_that_reads_a_secret_is_no_log_and_writes_without_a_diff():
    readers = []
    for path, task in _role_tasks():
        module = _module(task)
        if module.endswith(("assert", "include_tasks", "include_role", "import_tasks")):
            continue  # assert messages name secrets as <redacted>; includes are checked in their files
        text = _reads(task, _role_of(path))
        raw_secrets = bool(RAW_SERVERS.search(text)) and "secrets" in text
        loops_raw = any(
            RAW_SERVERS.search(str(task.get(k, ""))) for k in task if k == "loop" or k.startswith("with_")
        )
        dest = str(task.get(module, {}).get("dest", "")) if isinstance(task.get(module), dict) else ""
        writes = dest + str(task.get("loop", ""))
        if not (raw_secrets or loops_raw or SECRET_VARIABLES.search(text) or SECRET_FILES.search(writes)):
            continue
        readers.append(f"{path}: {task.get('name')}")
        assert task.get("no_log") is True, f"{path}: task {task.get('name')!r} reads a secret without no_log"
        if module.endswith(("copy", "template", "lineinfile", "blockinfile")):
            assert task.get("diff") is False, (
                f"{path}: task {task.get('name')!r} writes a secret without diff: false"
            )
    # The test finds what it is about: the child secrets, secrets.env, the key ring and the TLS key.
    assert {r.split(": ", 1)[1] for r in readers} >= {
        "Write each stdio server's child secrets",
        "Write the secrets environment file",
        "Write the request-state key ring shared by the instances",
        "Copy the TLS certificate and key",
    }, readers


def test_one_task_reads_the_servers_secret_values_from_the_inventory():
    readers = [
        f"{path}: {task.get('name')}"
        for path, task in _role_tasks()
        if RAW_SERVERS.search(_reads(task, _role_of(path))) and "secrets" in _reads(task, _role_of(path))
    ]
    assert readers == [
        "roles/mcp_server/tasks/servers_configure.yml: Write each stdio server's child secrets"
    ]


def test_no_template_or_variable_file_reads_a_servers_secrets():
    """Templates and role variables see __mcp_server_servers (names of secrets only) or nothing."""
    files = [f for f in sorted(ROLES.glob("*/templates/**/*")) if f.is_file()] + sorted(
        ROLES.glob("*/vars/*.yml")
    )
    files += sorted(ROLES.glob("*/defaults/*.yml"))
    offenders = [
        str(f.relative_to(ROOT))
        for f in files
        if re.search(r"\.secrets\b|\['secrets'\]|attribute='secrets'", f.read_text())
    ]
    assert offenders == []
