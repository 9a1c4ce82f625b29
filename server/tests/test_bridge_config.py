"""The bridge's settings (config.py, section bridge): forms, bounds, problems, secrets never shown;
and the pieces of bridge.py that need no process."""

from __future__ import annotations

import json
import subprocess

import pytest
from mcpops_server.bridge import child_environment, forwarded_capabilities
from mcpops_server.config import ConfigError, load_settings
from mcpops_testlib import PYTHON, PYTHONPATH

BASE = {
    "AUTH_ISSUER_URL": "https://issuer.example",
    "RESOURCE_SERVER_URL": "https://mcp.example.com/mcp",
    "MCPOPS_CONFIG": "",
}


def load(env=None, yaml_text=None, tmp_path=None):
    path = None
    if yaml_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
        path = str(path)
    return load_settings(path, {**BASE, **(env or {})})


def problems(env=None, yaml_text=None, tmp_path=None):
    try:
        load(env, yaml_text, tmp_path)
    except ConfigError as exc:
        return exc.lines()
    return []


def test_the_command_in_yaml_and_in_the_environment(tmp_path):
    s = load(yaml_text="bridge:\n  command: [python3, -m, some.server, --flag]\n", tmp_path=tmp_path)
    assert s.bridge.enabled and s.bridge.command == ("python3", "-m", "some.server", "--flag")
    assert s.bridge.isolation == "per_principal"  # the default
    assert load({"BRIDGE_COMMAND": '["python3", "-V"]'}).bridge.command == ("python3", "-V")
    assert load({"BRIDGE_COMMAND": "python3 -V"}).bridge.command == ("python3", "-V")
    assert not load().bridge.enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"BRIDGE_COMMAND": "[1, {}]"},
            "config: BRIDGE_COMMAND = [1, {}]: a list of 1 to 256 non-empty strings",
        ),
        ({"BRIDGE_COMMAND": "[not json"}, "config: BRIDGE_COMMAND = [not json: a list of 1 to 256"),
        (
            {"BRIDGE_COMMAND": "no-such-executable-here --x"},
            'config: BRIDGE_COMMAND = ["no-such-executable-here", "--x"]: a command whose executable '
            "(no-such-executable-here) is an executable file, by absolute path or on PATH",
        ),
        (
            {"BRIDGE_COMMAND": "python3", "MCP_APP": "pkg.mod:app"},
            'config: BRIDGE_COMMAND = ["python3"]: either MCP_APP or BRIDGE_COMMAND, not both',
        ),
        (
            {"BRIDGE_ISOLATION": "per_user"},
            "config: BRIDGE_ISOLATION = per_user: one of per_principal, shared",
        ),
        ({"BRIDGE_MAX_CHILDREN": "0"}, "config: BRIDGE_MAX_CHILDREN = 0: an integer from 1 to 10000"),
        ({"BRIDGE_MAX_LINE_BYTES": "10"}, "config: BRIDGE_MAX_LINE_BYTES = 10: an integer from 1024 to"),
        ({"BRIDGE_CALL_TIMEOUT": "0"}, "config: BRIDGE_CALL_TIMEOUT = 0: a number of seconds > 0"),
        ({"BRIDGE_IDLE_TIMEOUT": "x"}, "config: BRIDGE_IDLE_TIMEOUT = x: a number of seconds > 0"),
        (
            {"BRIDGE_CWD": "relative/dir"},
            "config: BRIDGE_CWD = relative/dir: the absolute path of an existing",
        ),
    ],
)
def test_problems_name_the_setting_the_value_and_what_is_accepted(env, expected):
    lines = problems(env)
    assert any(line.startswith(expected) for line in lines), lines


def test_environment_values_are_never_shown(tmp_path):
    secret = "hunter2-very-secret"
    lines = problems({"BRIDGE_ENV": json.dumps({"1BAD": secret})})
    assert lines == [
        "config: BRIDGE_ENV = <redacted>: a mapping of at most 256 variables NAME: value "
        "(names [A-Za-z_][A-Za-z0-9_]*, values strings or numbers without NUL; "
        "a JSON object in the environment)"
    ]
    lines = problems(yaml_text=f"bridge:\n  env: {{TOKEN: [{secret}]}}\n", tmp_path=tmp_path)
    assert lines and secret not in "".join(lines)
    s = load({"BRIDGE_COMMAND": "python3", "BRIDGE_ENV": json.dumps({"TOKEN": secret, "PORT": 80})})
    assert dict(s.bridge.env) == {"TOKEN": secret, "PORT": "80"}
    assert secret not in repr(s)


def test_the_env_file_is_read_and_wins_over_bridge_env(tmp_path):
    env_file = tmp_path / "child.env"
    env_file.write_text("# secrets from the vault\nTOKEN=from-the-file\n\nURL=https://x.example/?a=b=c\n")
    s = load(
        {
            "BRIDGE_COMMAND": "python3",
            "BRIDGE_ENV": '{"TOKEN": "from-env", "MODE": "x"}',
            "BRIDGE_ENV_FILE": str(env_file),
        }
    )
    assert dict(s.bridge.file_env) == {"TOKEN": "from-the-file", "URL": "https://x.example/?a=b=c"}
    assert "from-the-file" not in repr(s)
    env = child_environment(
        s.bridge, {"PATH": "/usr/bin", "LC_ALL": "C.UTF-8", "REDIS_PASSWORD": "no", "HOME": "/h"}
    )
    assert env == {
        "PATH": "/usr/bin",
        "LC_ALL": "C.UTF-8",
        "HOME": "/h",
        "TOKEN": "from-the-file",
        "MODE": "x",
        "URL": "https://x.example/?a=b=c",
    }
    env_file.write_text("TOKEN=ok\nnot a line\n")
    lines = problems({"BRIDGE_COMMAND": "python3", "BRIDGE_ENV_FILE": str(env_file)})
    assert lines and lines[0].startswith(f"config: BRIDGE_ENV_FILE = {env_file}: a UTF-8 file of at most 256")
    assert "TOKEN=ok" not in "".join(lines)


def test_check_config_refuses_a_command_that_cannot_run(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"bridge:\n  command: [{tmp_path}/missing, --x]\n")
    done = subprocess.run(
        [PYTHON, "-m", "mcpops_server.cli", "check-config", "--config", str(cfg)],
        env={**BASE, "PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert (
        f'config: bridge.command = ["{tmp_path}/missing", "--x"]: a command whose executable' in done.stderr
    )


def test_forwarded_capabilities_keep_what_the_bridge_forwards():
    child = {
        "tools": {"listChanged": True},
        "resources": {"subscribe": True, "listChanged": True},
        "prompts": {},
        "completions": {},
        "logging": {},
        "experimental": {"x": {}},
    }
    assert forwarded_capabilities(child) == {"tools": {}, "resources": {}, "prompts": {}, "completions": {}}
    assert forwarded_capabilities({"tools": "nonsense"}) == {}
