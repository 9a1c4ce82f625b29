"""The bridge's settings (config.py, section bridge): forms, bounds, problems, secrets never shown;
and the pieces of bridge.py that need no process."""

from __future__ import annotations

import json
import subprocess

import pytest
from mcpops_server.bridge import child_environment, forwarded_capabilities, reply_id
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
        "(names [A-Za-z_][A-Za-z0-9_]*, values strings or numbers without control characters; "
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


@pytest.mark.parametrize("bad", ["\n", "\r", "\t", "\x1b", "\x85", "\u2028", "\x00"])
def test_a_value_with_a_control_character_is_refused_naming_its_variable(tmp_path, bad):
    """A newline in a secret would cut it, or add variables of its own, where the child's
    environment file is read: refused, naming the variable, never showing the value."""
    secret = f"hunter2{bad}EXTRA=injected"
    lines = problems({"BRIDGE_COMMAND": "python3", "BRIDGE_ENV": json.dumps({"TOKEN": secret})})
    assert len(lines) == 1 and lines[0].startswith("config: BRIDGE_ENV = <redacted>: a mapping"), lines
    assert lines[0].endswith(": the value of TOKEN has a control character (a newline, say)")
    assert "hunter2" not in lines[0] and "injected" not in lines[0]
    yaml_text = f"bridge:\n  command: [python3]\n  env: {{TOKEN: {json.dumps(secret)}}}\n"
    lines = problems(yaml_text=yaml_text, tmp_path=tmp_path)
    assert len(lines) == 1 and lines[0].startswith("config: bridge.env = <redacted>: a mapping"), lines
    assert "TOKEN" in lines[0] and "hunter2" not in lines[0]

    if bad == "\n":
        return  # in the file it is the line end: a line of its own, a variable of its own
    env_file = tmp_path / "child.env"
    env_file.write_bytes(f"# the vault's\r\nMODE=x\r\nTOKEN={secret}\r\n".encode())  # CRLF ends: fine
    lines = problems({"BRIDGE_COMMAND": "python3", "BRIDGE_ENV_FILE": str(env_file)})
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"config: BRIDGE_ENV_FILE = {env_file}: a UTF-8 file")
    assert lines[0].endswith("the value of TOKEN (line 3) has a control character (\\r, tab, ...)")
    assert "hunter2" not in lines[0] and "injected" not in lines[0]
    env_file.write_bytes(b"MODE=x\r\nTOKEN=fine\r\n")
    settings = load({"BRIDGE_COMMAND": "python3", "BRIDGE_ENV_FILE": str(env_file)})
    assert dict(settings.bridge.file_env) == {"MODE": "x", "TOKEN": "fine"}


def test_a_variable_name_with_a_trailing_newline_is_refused():
    lines = problems({"BRIDGE_COMMAND": "python3", "BRIDGE_ENV": json.dumps({"TOKEN\n": "x"})})
    assert len(lines) == 1 and lines[0].startswith("config: BRIDGE_ENV = <redacted>: a mapping"), lines


def test_calls_per_principal_within_calls_per_child(tmp_path):
    assert load().bridge.max_calls_per_principal == 16
    assert load({"BRIDGE_MAX_CALLS_PER_PRINCIPAL": "64"}).bridge.max_calls_per_principal == 64
    # not set: the default, lowered with max_calls_per_child
    assert load({"BRIDGE_MAX_CALLS_PER_CHILD": "8"}).bridge.max_calls_per_principal == 8
    assert problems({"BRIDGE_MAX_CALLS_PER_PRINCIPAL": "65"}) == [
        "config: BRIDGE_MAX_CALLS_PER_PRINCIPAL = 65: an integer from 1 to bridge.max_calls_per_child (64)"
    ]
    assert problems({"BRIDGE_MAX_CALLS_PER_PRINCIPAL": "0"}) == [
        "config: BRIDGE_MAX_CALLS_PER_PRINCIPAL = 0: an integer from 1 to 10000"
    ]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bridge:\n  command: [python3]\n  max_calls_per_child: 4\n  max_calls_per_principal: 5\n")
    done = subprocess.run(
        [PYTHON, "-m", "mcpops_server.cli", "check-config", "--config", str(cfg)],
        env={**BASE, "PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    expected = (
        "config: bridge.max_calls_per_principal = 5: an integer from 1 to bridge.max_calls_per_child (4)"
    )
    assert expected in done.stderr


def test_the_id_of_an_oversized_answer_is_read_from_its_first_bytes():
    """Which call a line too long to parse answers: the top-level id only, never one in the result,
    and nothing for a request or notification of the child's, or a cut number."""
    big = b"x" * 5000
    assert reply_id(b'{"jsonrpc":"2.0","id":42,"result":{"content":"' + big) == 42
    assert reply_id(b' { "jsonrpc" : "2.0" , "id" : 7 , "result"') == 7
    assert reply_id(b'{"jsonrpc":"2.0","result":{"id":3,"text":"' + big) is None  # nested: not ours
    assert reply_id(b'{"result":{"a":"\\"id\\":9"},"id":5,') == 5  # quotes in strings skipped
    assert reply_id(b'{"jsonrpc":"2.0","method":"sampling/createMessage","id":3,') is None
    assert reply_id(b'{"jsonrpc":"2.0","params":{"data":"' + big) is None
    assert reply_id(b'{"jsonrpc":"2.0","id":12') is None  # cut where the head ends: maybe 123
    assert reply_id(b'{"jsonrpc":"2.0","id":"s-1","result":') is None  # not one of the bridge's ids
    assert reply_id(b"[1,2,3]") is None
    # the TypeScript SDK's order: the result first, the id its last member
    ts_head, ts_tail = b'{"result":{"content":[{"text":"' + big, big + b'"}]},"jsonrpc":"2.0","id":17}\n'
    assert reply_id(ts_head, ts_tail) == 17
    assert reply_id(ts_head, big + b'"}],"id":4}}\n') is None  # the last id is the result's
    assert reply_id(ts_head, big + b'x\\"id":4}\n') is None  # inside a string
    notification = b'{"params":{"data":"' + big
    assert reply_id(notification, big + b'"},"method":"x","jsonrpc":"2.0","id":3}') is None  # no result


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
