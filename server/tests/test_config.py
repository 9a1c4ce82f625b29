"""check-config: one line per problem, naming the setting, the value and what is accepted."""

from __future__ import annotations

import base64
import json
import subprocess

import pytest
from mcpops_server.config import ConfigError, NotesSettings, load_settings
from mcpops_testlib import PYTHON, PYTHONPATH, ServerProc, wait_for

GOOD_ENV = {
    "AUTH_ISSUER_URL": "https://issuer.example",
    "RESOURCE_SERVER_URL": "https://mcp.example.com/mcp",
}


def problems(env=None, yaml_text=None, tmp_path=None):
    path = None
    if yaml_text is not None:
        path = tmp_path / "c.yaml"
        path.write_text(yaml_text)
        path = str(path)
    else:
        path = "/nonexistent/default.yaml"
    try:
        load_settings(
            path if yaml_text is not None else None, {**GOOD_ENV, **(env or {}), "MCPOPS_CONFIG": ""}
        )
    except ConfigError as exc:
        return exc.lines()
    return []


ENV_CASES = [
    ({"MCP_SERVER_PORT": "abc"}, "config: MCP_SERVER_PORT = abc: an integer from 1 to 65535"),
    ({"MCP_SERVER_PORT": "70000"}, "config: MCP_SERVER_PORT = 70000: an integer from 1 to 65535"),
    ({"MCP_SERVER_NAME": " "}, "config: MCP_SERVER_NAME = ' ': a non-empty string".replace("' '", " ")),
    ({"MCP_TRANSPORT": "stdio"}, "config: MCP_TRANSPORT = stdio: one of streamable-http"),
    ({"MCP_INSTANCE_ID": "a.b"}, "config: MCP_INSTANCE_ID = a.b: 1 to 40 characters from A-Z a-z 0-9 _ -"),
    ({"MCP_PUBLIC_HOSTS": "ok.example,bad host"}, "config: MCP_PUBLIC_HOSTS = bad host: host names"),
    ({"MCP_STATELESS": "maybe"}, "config: MCP_STATELESS = maybe: true or false"),
    ({"MCP_MAX_BODY_BYTES": "10"}, "config: MCP_MAX_BODY_BYTES = 10: an integer from 1024 to"),
    ({"MCP_GRACEFUL_TIMEOUT": "0"}, "config: MCP_GRACEFUL_TIMEOUT = 0: a number of seconds > 0"),
    ({"MCP_SESSION_IDLE_TIMEOUT": "-1"}, "config: MCP_SESSION_IDLE_TIMEOUT = -1: a number of seconds > 0"),
    ({"MCP_SESSION_UNUSED_TIMEOUT": "0"}, "config: MCP_SESSION_UNUSED_TIMEOUT = 0: a number of seconds > 0"),
    ({"MCP_MAX_SESSIONS": "0"}, "config: MCP_MAX_SESSIONS = 0: an integer from 1 to 1000000"),
    (
        {"MCP_MAX_SESSIONS_PER_PRINCIPAL": "x"},
        "config: MCP_MAX_SESSIONS_PER_PRINCIPAL = x: an integer from 1",
    ),
    ({"MCP_APP": "not a spec"}, "config: MCP_APP = not a spec: package.module:attribute naming an MCPServer"),
    (
        {"MCP_REQUEST_STATE_KEYS_FILE": "/nonexistent"},
        "config: MCP_REQUEST_STATE_KEYS_FILE = /nonexistent: the path",
    ),
    ({"MCP_TRUSTED_PROXIES": "10.0.0.0/8,nope"}, "config: MCP_TRUSTED_PROXIES = nope: IP addresses or CIDR"),
    ({"AUTH_ENABLED": "perhaps"}, "config: AUTH_ENABLED = perhaps: true or false"),
    ({"AUTH_SERVER_URL": "ftp://x"}, "config: AUTH_SERVER_URL = ftp://x: an absolute http(s) URL"),
    ({"AUTH_ISSUER_URL": "issuer"}, "config: AUTH_ISSUER_URL = issuer: an absolute http(s) URL"),
    ({"RESOURCE_SERVER_URL": ""}, 'config: RESOURCE_SERVER_URL = "": the URL of this MCP endpoint'),
    ({"AUTH_ISSUER_URL": ""}, 'config: AUTH_ISSUER_URL = "": the authorization server\'s issuer URL'),
    ({"REQUIRED_SCOPES": 'a,b"c'}, 'config: REQUIRED_SCOPES = b"c: scope tokens'),
    ({"AUTH_JWKS_URL": "jwks"}, "config: AUTH_JWKS_URL = jwks: an absolute http(s) URL"),
    (
        {"AUTH_JWKS_FILE": "/nonexistent.json"},
        "config: AUTH_JWKS_FILE = /nonexistent.json: the path of an existing",
    ),
    ({"AUTH_ALGORITHMS": "none"}, 'config: AUTH_ALGORITHMS = ["none"]: a non-empty list from RS256'),
    ({"AUTH_ALGORITHMS": "HS256,ES256"}, "(never none or HS*)"),
    ({"AUTH_TOKEN_CACHE_TTL": "x"}, "config: AUTH_TOKEN_CACHE_TTL = x: a number of seconds >= 0"),
    ({"AUTH_LEEWAY": "3600"}, "config: AUTH_LEEWAY = 3600: a number of seconds >= 0 and <= 300"),
    ({"AUTH_FETCH_TIMEOUT": "0"}, "config: AUTH_FETCH_TIMEOUT = 0: a number of seconds > 0"),
    ({"AUTH_JWKS_MAX_AGE": "0.5"}, "config: AUTH_JWKS_MAX_AGE = 0.5: a number of seconds >= 1 and <= 86400"),
    ({"REDIS_URL": "http://x"}, "config: REDIS_URL = http://x: redis://[user@]host:port/db"),
    (
        {"REDIS_URL": "redis://u:hunter2@h:6379/0"},
        "config: REDIS_URL = redis://***@h:6379/0: a URL without",
    ),
    ({"REDIS_PASSWORD_FILE": "/nonexistent"}, "config: REDIS_PASSWORD_FILE = /nonexistent: the path"),
    ({"REDIS_MAX_CONNECTIONS": "0"}, "config: REDIS_MAX_CONNECTIONS = 0: an integer from 1 to 10000"),
    ({"REDIS_SOCKET_TIMEOUT": "no"}, "config: REDIS_SOCKET_TIMEOUT = no: a number of seconds > 0"),
    ({"REDIS_KEY_PREFIX": "a b"}, "config: REDIS_KEY_PREFIX = a b: 1 to 64 characters"),
    ({"LOG_LEVEL": "LOUD"}, "config: LOG_LEVEL = LOUD: one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ({"LOG_FORMAT": "xml"}, "config: LOG_FORMAT = xml: one of json, text"),
    ({"ALLOWED_ORIGINS": "*"}, "config: ALLOWED_ORIGINS = *: origins like https://app.example.com"),
    (
        {"ALLOWED_ORIGINS": "https://a.example/path"},
        "config: ALLOWED_ORIGINS = https://a.example/path: origins",
    ),
    (
        {"ALLOWED_ORIGINS": "https://u:pw@app.example"},
        "config: ALLOWED_ORIGINS = https://***@app.example: origins like",
    ),
    ({"CORS_MAX_AGE": "-5"}, "config: CORS_MAX_AGE = -5: an integer from 0 to"),
    ({"METRICS_ENABLED": "2"}, "config: METRICS_ENABLED = 2: true or false"),
    ({"METRICS_PATH": "metrics"}, "config: METRICS_PATH = metrics: an absolute path other than /mcp"),
    ({"METRICS_PORT": "x"}, "config: METRICS_PORT = x: an integer from 1 to 65535"),
    ({"RATE_LIMIT_ENABLED": "x"}, "config: RATE_LIMIT_ENABLED = x: true or false"),
    ({"RATE_LIMIT_PER_MINUTE": "0"}, "config: RATE_LIMIT_PER_MINUTE = 0: an integer from 1 to"),
    ({"RATE_LIMIT_ON_REDIS_ERROR": "shrug"}, "config: RATE_LIMIT_ON_REDIS_ERROR = shrug: one of allow, deny"),
    ({"RATE_LIMIT_TIMEOUT": "0"}, "config: RATE_LIMIT_TIMEOUT = 0: a number of seconds > 0 and <= 10"),
    ({"RATE_LIMIT_BREAKER_FAILURES": "0"}, "config: RATE_LIMIT_BREAKER_FAILURES = 0: an integer from 1 to"),
    (
        {"RATE_LIMIT_BREAKER_COOLDOWN": "x"},
        "config: RATE_LIMIT_BREAKER_COOLDOWN = x: a number of seconds > 0",
    ),
    ({"HEALTH_TIMEOUT": "100"}, "config: HEALTH_TIMEOUT = 100: a number of seconds > 0 and <= 30"),
    ({"HEALTH_CACHE_TTL": "-1"}, "config: HEALTH_CACHE_TTL = -1: a number of seconds >= 0 and <= 60"),
    ({"TLS_CERT_FILE": "/nonexistent.pem"}, "config: TLS_CERT_FILE = /nonexistent.pem: the path"),
    ({"DB_POOL_SIZE": "0"}, "config: DB_POOL_SIZE = 0: an integer from 1 to 1000"),
]


@pytest.mark.parametrize(
    ("env", "expected"),
    ENV_CASES,
    ids=[next(iter(e)) + "=" + v for e, _ in ENV_CASES for v in [next(iter(e.values()))]],
)
def test_env_problem(env, expected):
    lines = problems(env)
    assert any(line.startswith(expected) or expected in line for line in lines), lines


YAML_CASES = [
    ("server: [1, 2]\n", "config: server = [1, 2]: a mapping of settings"),
    ("servre:\n  port: 1\n", "config: servre = ...: a known section: server, auth"),
    ("server:\n  prot: 1\n", "config: server.prot = ...: a known key:"),
    ("server:\n  port: true\n", "config: server.port = true: an integer from 1 to 65535"),
    ("server: {port: 8000\n", "config: --config = "),
    ("- a\n- b\n", "a YAML mapping with sections"),
    (
        "logging:\n  handlers:\n    - type: syslog\n",
        'config: logging.handlers = {"type": "syslog"}: {type: console}',
    ),
    ("tls:\n  cert_file: {cert}\n", 'config: tls.key_file = "": set together with tls.cert_file'),
    ("auth:\n  jwks_file: {notjwks}\n", "config: auth.jwks_file = "),
    (
        "auth:\n  jwks_file: {jwks}\n  jwks_url: https://x.example/jwks\n",
        "either auth.jwks_file or auth.jwks_url",
    ),
    ("server:\n  request_state_keys_file: {shortkey}\n", "one base64-encoded key (at least 32 bytes) a line"),
    ("redis:\n  password_file: {empty}\n", "config: redis.password_file = "),
    ("database:\n  url: postgresql://u:pw@h/db\n  pool_size: 0\n", "config: database.pool_size = 0"),
]


@pytest.mark.parametrize(("text", "expected"), YAML_CASES)
def test_yaml_problem(tmp_path, text, expected):
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    notjwks = tmp_path / "notjwks.json"
    notjwks.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}]}))
    shortkey = tmp_path / "keys"
    shortkey.write_text(base64.b64encode(b"short").decode() + "\n")
    empty = tmp_path / "empty"
    empty.write_text("")
    for name, value in {
        "cert": cert,
        "notjwks": notjwks,
        "jwks": jwks,
        "shortkey": shortkey,
        "empty": empty,
    }.items():
        text = text.replace("{" + name + "}", str(value))
    lines = problems(yaml_text=text, tmp_path=tmp_path)
    assert any(expected in line for line in lines), lines


def test_valid_configuration_and_precedence(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(base64.b64encode(b"k" * 32).decode() + "\n" + base64.b64encode(b"j" * 40).decode() + "\n")
    (tmp_path / "c.yaml").write_text(
        "server:\n  name: from-file\n  port: 9000\n  public_hosts: [MCP.example.com]\n"
        f"  request_state_keys_file: {keys}\n"
        "auth:\n  server_url: https://auth.example\n  resource_server_url: https://mcp.example.com/mcp\n"
        "  required_scopes: [user, read]\n  token_cache_ttl: 300\n"
        "redis:\n  url: redis://localhost:6379/0\n  max_connections: 50\n  socket_timeout: 5\n"
        "logging:\n  level: INFO\n  format: json\n  handlers:\n    - type: console\n"
        "cors:\n  allowed_origins: [https://claude.ai]\n  allowed_methods: [GET, POST]\n"
        "  expose_headers: [Mcp-Session-Id, WWW-Authenticate]\n  max_age: 3600\n"
        "metrics:\n  enabled: true\n  port: 9090\n  path: /metrics\n"
        "database:\n  url: postgresql://user:pass@localhost:5432/mcp\n  pool_size: 20\n  max_overflow: 10\n"
        "  echo: false\n"
    )
    s = load_settings(str(tmp_path / "c.yaml"), {"MCP_SERVER_PORT": "8123", "REQUIRED_SCOPES": "mcp,admin"})
    assert s.server.name == "from-file"
    assert s.server.port == 8123 and s.server.instance_id == "p8123"
    assert s.server.public_hosts == ("mcp.example.com",)
    assert s.server.request_state_keys == (b"k" * 32, b"j" * 40)
    assert s.auth.issuer_url == "https://auth.example"  # defaults to server_url
    assert s.auth.required_scopes == ("mcp", "admin")
    assert "user:pass" not in repr(s) and "kkkk" not in repr(s)
    with pytest.raises(Exception):  # noqa: B017
        s.server.port = 1  # frozen


def _cli(args, env, tmp_path):
    base = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": PYTHONPATH,
        "MCPOPS_CONFIG": str(tmp_path / "missing-ok.yaml"),
    }
    (tmp_path / "missing-ok.yaml").write_text("{}\n")
    return subprocess.run(
        [PYTHON, "-m", "mcpops_server.cli", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_check_config_exit_codes_and_redaction(tmp_path):
    ok = _cli(["check-config"], {**GOOD_ENV}, tmp_path)
    assert ok.returncode == 0, ok.stderr
    bad_env = {
        **GOOD_ENV,
        "MCP_SERVER_PORT": "x",
        "REDIS_URL": "redis://app:s3cr3t-pw@redis:6379/0",
        "REDIS_PASSWORD": "hunter2",
        "LOG_FORMAT": "xml",
    }
    bad = _cli(["check-config"], bad_env, tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 3, lines
    assert all(line.startswith("config: ") for line in lines)
    assert "s3cr3t" not in bad.stderr and "hunter2" not in bad.stderr
    assert "Traceback" not in bad.stderr
    # serve refuses with the same lines and exit code
    serve = _cli(["serve"], bad_env, tmp_path)
    assert serve.returncode == 2
    assert serve.stderr.strip().splitlines() == lines
    # an explicit --config that does not exist
    missing = _cli(["check-config", "--config", str(tmp_path / "nope.yaml")], GOOD_ENV, tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("config: --config = ")


def test_check_config_imports_the_app(tmp_path):
    r = _cli(["check-config"], {**GOOD_ENV, "MCP_APP": "no_such_package.mod:app"}, tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith(
        "config: server.app = no_such_package.mod:app: cannot import no_such_package.mod"
    )


def test_auth_disabled_warns(tmp_path):
    r = _cli(["check-config"], {"AUTH_ENABLED": "false"}, tmp_path)
    assert r.returncode == 0 and "auth.enabled is false" in r.stderr


# --- secrets in URLs, risky settings -------------------------------------------------------------


def _one_config_line(r, starts: str, secret: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), lines
    assert secret not in r.stderr and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_redis_url_takes_no_query_parameters_but_db(tmp_path):
    r = _cli(
        ["check-config"], {**GOOD_ENV, "REDIS_URL": "redis://127.0.0.1:6379/0?password=hunter2"}, tmp_path
    )
    line = _one_config_line(r, "config: REDIS_URL = redis://127.0.0.1:6379/0?password=***: ", "hunter2")
    assert "query" in line
    r = _cli(["check-config"], {**GOOD_ENV, "REDIS_URL": "rediss://h:6380/0?ssl_cert_reqs=none"}, tmp_path)
    _one_config_line(r, "config: REDIS_URL = rediss://h:6380/0?ssl_cert_reqs=***: ", "none")
    for fine in ("unix:///run/redis/redis.sock?db=2", "redis://app@127.0.0.1:6379?db=3"):
        ok = _cli(["check-config"], {**GOOD_ENV, "REDIS_URL": fine}, tmp_path)
        assert ok.returncode == 0 and ok.stderr == "", (fine, ok.stderr)


def test_a_redis_url_the_parser_cannot_read_gives_one_redacted_line(tmp_path):
    r = _cli(["check-config"], {**GOOD_ENV, "REDIS_URL": "redis://u:secret@host:abc/0"}, tmp_path)
    _one_config_line(r, "config: REDIS_URL = redis://***@host:abc/0: redis://", "secret")
    serve = _cli(["serve"], {**GOOD_ENV, "REDIS_URL": "redis://u:secret@host:abc/0"}, tmp_path)
    assert serve.returncode == 2 and serve.stderr == r.stderr


def test_credentials_in_auth_urls_are_refused(tmp_path):
    env = {**GOOD_ENV, "AUTH_JWKS_URL": "https://u:pw-123@idp.example/jwks"}
    line = _one_config_line(
        _cli(["check-config"], env, tmp_path),
        "config: AUTH_JWKS_URL = https://***@idp.example/jwks: ",
        "pw-123",
    )
    assert "credentials" in line
    env = {**GOOD_ENV, "AUTH_ISSUER_URL": "https://client@idp.example"}
    _one_config_line(
        _cli(["check-config"], env, tmp_path),
        "config: AUTH_ISSUER_URL = https://***@idp.example: ",
        "client@",
    )


WARNING_CASES = [
    ({"AUTH_ISSUER_URL": "http://idp.example"}, "warning: AUTH_ISSUER_URL = http://idp.example: "),
    ({"AUTH_JWKS_URL": "http://10.1.2.3/jwks.json"}, "warning: AUTH_JWKS_URL = http://10.1.2.3/jwks.json: "),
    (
        {"RESOURCE_SERVER_URL": "http://mcp.example.com/mcp"},
        "warning: RESOURCE_SERVER_URL = http://mcp.example.com/mcp: ",
    ),
    (
        {"REDIS_URL": "redis://redis.example:6379/0"},
        "warning: REDIS_URL = redis://redis.example:6379/0: plain",
    ),
    ({"REDIS_URL": "redis://10.0.0.5:6379/0"}, "warning: REDIS_URL = redis://10.0.0.5:6379/0: plain TCP"),
    ({"MCP_TRUSTED_PROXIES": "10.0.0.0/7"}, "warning: MCP_TRUSTED_PROXIES = 10.0.0.0/7: "),
    ({"MCP_TRUSTED_PROXIES": "127.0.0.1,2001:db8::/16"}, "warning: MCP_TRUSTED_PROXIES = 2001:db8::/16: "),
]


@pytest.mark.parametrize(("env", "expected"), WARNING_CASES, ids=[next(iter(e)) for e, _ in WARNING_CASES])
def test_risky_settings_are_warned_about(env, expected):
    s = load_settings(None, {**GOOD_ENV, **env, "MCPOPS_CONFIG": ""})
    assert len(s.warnings) == 1 and s.warnings[0].startswith(expected.removeprefix("warning: ")), s.warnings


def test_safe_settings_draw_no_warning():
    env = {
        "AUTH_ISSUER_URL": "http://127.0.0.1:9000",
        "AUTH_JWKS_URL": "http://localhost:9000/jwks.json",
        "RESOURCE_SERVER_URL": "http://[::1]:8000/mcp",
        "MCP_TRUSTED_PROXIES": "127.0.0.1/32,10.0.0.0/8,fd00::/32",
    }
    assert load_settings(None, {**env, "MCPOPS_CONFIG": ""}).warnings == ()
    for url in (
        "redis://localhost:6379/0",
        "redis://[::1]:6379/0",
        "rediss://10.0.0.5:6379/0",
        "unix:///r.sock",
    ):
        assert load_settings(None, {**env, "REDIS_URL": url, "MCPOPS_CONFIG": ""}).warnings == (), url


def test_check_config_prints_warnings_and_refuses_trust_in_every_address(tmp_path):
    env = {**GOOD_ENV, "AUTH_ISSUER_URL": "http://idp.example", "MCP_TRUSTED_PROXIES": "10.0.0.0/4"}
    r = _cli(["check-config"], env, tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning: ")]
    assert [w.split(" = ")[0] for w in warnings] == [
        "warning: MCP_TRUSTED_PROXIES",
        "warning: AUTH_ISSUER_URL",
    ]
    for everyone in ("0.0.0.0/0", "::/0", "10.0.0.0/8,::/0"):
        r = _cli(["check-config"], {**GOOD_ENV, "MCP_TRUSTED_PROXIES": everyone}, tmp_path)
        _one_config_line(r, f"config: MCP_TRUSTED_PROXIES = {everyone.split(',')[-1]}: ", "Traceback")


def test_the_start_up_line_redacts_urls_and_carries_the_warnings(tmp_path, redis_srv):
    user_url = redis_srv.url.replace("redis://", "redis://app-user@")
    s = ServerProc(
        "startup",
        tmp_path / "startup",
        {"REDIS_URL": user_url, "AUTH_ENABLED": "false", "MCP_TRUSTED_PROXIES": "10.0.0.0/6"},
    )
    s.start()
    try:
        ready = wait_for(
            lambda: [x for x in s.log_lines() if x.get("event") == "ready"], 10, "the start-up line"
        )[0]
        assert ready["settings"]["redis"] == redis_srv.url.replace("redis://", "redis://***@")
        assert "app-user" not in s.log_text()
        warned = [
            x for x in s.log_lines() if x["level"] == "WARNING" and "MCP_TRUSTED_PROXIES" in x["message"]
        ]
        assert warned and warned[0]["message"].startswith("MCP_TRUSTED_PROXIES = 10.0.0.0/6: "), warned
    finally:
        s.stop()


def test_notes_bounds_are_settings(tmp_path):
    d = load_settings(None, {**GOOD_ENV, "MCPOPS_CONFIG": ""}).notes
    assert (d.shared, d.max_bytes, d.max_tag_length, d.max_tags, d.max_per_principal) == (
        False,
        16384,
        64,
        16,
        1000,
    )
    assert d.max_concurrent_searches == 4 and d.search_wait == 1.0
    (tmp_path / "c.yaml").write_text("notes:\n  shared: true\n  max_bytes: 4096\n  max_tags: 3\n")
    s = load_settings(str(tmp_path / "c.yaml"), {**GOOD_ENV, "NOTES_MAX_TAGS": "5"}).notes
    assert (s.shared, s.max_bytes, s.max_tags) == (True, 4096, 5)  # the environment wins
    lines = problems(
        {
            "NOTES_MAX_BYTES": "0",
            "NOTES_MAX_TAG_LENGTH": "many",
            "NOTES_MAX_CONCURRENT_SEARCHES": "0",
            "NOTES_SHARED": "sometimes",
        }
    )
    assert sorted(lines) == [
        "config: NOTES_MAX_BYTES = 0: an integer from 1 to 1048576",
        "config: NOTES_MAX_CONCURRENT_SEARCHES = 0: an integer from 1 to 1000",
        "config: NOTES_MAX_TAG_LENGTH = many: an integer from 1 to 1000",
        "config: NOTES_SHARED = sometimes: true or false",
    ]
    assert problems(yaml_text="notes:\n  max_tgas: 3\n", tmp_path=tmp_path) == [
        "config: notes.max_tgas = ...: a known key: " + ", ".join(sorted(NotesSettings.__dataclass_fields__))
    ]
