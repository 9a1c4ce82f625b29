"""Settings: a YAML file plus environment overrides, validated once into frozen dataclasses.

Every problem found is reported at once, one line each, as
``config: <setting> = <value>: <what is accepted>``. Secret values are shown as ``<redacted>``,
and every URL printed has its user info and query values (but ``db``) replaced by ``***``.
The setting is named by its YAML key (``server.port``) or, when the value came from the
environment, by its variable (``MCP_SERVER_PORT``). Settings that are accepted but risky are
listed in ``Settings.warnings`` as ``<setting> = <value>: <why>``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

DEFAULT_CONFIG_PATH = "/etc/mcpops/config.yaml"
REDACTED = "<redacted>"

ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
DEFAULT_ALGORITHMS = ("RS256", "ES256", "PS256", "EdDSA")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

_INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_APP_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_]\w*)*$"
)
_HOST_RE = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)"
    r"(:[0-9]{1,5})?$"
)
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


# --------------------------------------------------------------------------------------------
# The settings object
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    name: str = "mcpops-server"
    host: str = "127.0.0.1"
    port: int = 8000
    transport: str = "streamable-http"
    instance_id: str = "p8000"
    public_hosts: tuple[str, ...] = ()
    stateless: bool = False
    max_body_bytes: int = 1_048_576
    graceful_timeout: float = 20.0
    session_idle_timeout: float = 1800.0
    session_unused_timeout: float = 60.0
    max_sessions: int = 5000
    max_sessions_per_principal: int = 100
    app: str | None = None
    request_state_keys_file: str | None = None
    request_state_keys: tuple[bytes, ...] = field(default=(), repr=False)
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    header_timeout: float = 10.0
    max_connections: int = 4096


@dataclass(frozen=True)
class AuthSettings:
    enabled: bool = True
    server_url: str | None = None
    issuer_url: str | None = None
    resource_server_url: str | None = None
    required_scopes: tuple[str, ...] = ()
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    token_cache_ttl: float = 300.0
    leeway: float = 30.0
    fetch_timeout: float = 2.0
    jwks_max_age: float = 300.0  # ceiling of the JWKS refresh interval (the issuer's max-age below it)


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    max_connections: int = 50
    socket_timeout: float = 5.0
    key_prefix: str = "mcpops:"


@dataclass(frozen=True)
class LogHandler:
    type: str = "console"
    filename: str | None = None


@dataclass(frozen=True)
class LoggingSettings:
    level: str = "INFO"
    format: str = "json"
    handlers: tuple[LogHandler, ...] = (LogHandler(),)


@dataclass(frozen=True)
class CorsSettings:
    allowed_origins: tuple[str, ...] = ()
    allowed_methods: tuple[str, ...] = ("GET", "POST", "DELETE", "OPTIONS")
    expose_headers: tuple[str, ...] = ("Mcp-Session-Id", "WWW-Authenticate")
    max_age: int = 3600


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = True
    path: str = "/metrics"
    port: int | None = None  # accepted for the seed's schema; metrics are served on the instance port


@dataclass(frozen=True)
class RateLimitSettings:
    enabled: bool = True
    requests_per_minute: int = 600
    on_redis_error: str = "allow"
    timeout: float = 0.25  # deadline of one check in Redis, no retries
    breaker_failures: int = 3  # consecutive failed checks that open the breaker
    breaker_cooldown: float = 5.0  # seconds the open breaker answers without Redis before one probe


@dataclass(frozen=True)
class HealthSettings:
    timeout: float = 1.0
    cache_ttl: float = 2.0  # seconds a result is served to every caller before the checks run again


@dataclass(frozen=True)
class TlsSettings:
    cert_file: str | None = None
    key_file: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True)
class DatabaseSettings:
    """Accepted for the seed's schema; the reference toolset does not use a database."""

    url: str | None = field(default=None, repr=False)
    pool_size: int = 20
    max_overflow: int = 10
    echo: bool = False


@dataclass(frozen=True)
class NotesSettings:
    """Bounds of the reference toolset's notes store (what one caller may make the server hold)."""

    shared: bool = False  # one store for every caller; else each principal (token sub) has its own
    max_bytes: int = 16_384  # UTF-8 bytes of a note's body
    max_title_length: int = 200  # characters of a title
    max_query_length: int = 200  # characters of a search query
    max_tag_length: int = 64  # characters of one tag
    max_tags: int = 16  # tags on one note
    max_per_principal: int = 1000  # notes one principal may keep (the whole store when shared)
    max_result_bytes: int = 262_144  # UTF-8 bytes of the notes one search returns (at least one note)
    max_concurrent_searches: int = 4  # searches running at once in one instance
    search_wait: float = 1.0  # seconds a search waits for a free slot before answering "busy"


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = ServerSettings()
    auth: AuthSettings = AuthSettings()
    redis: RedisSettings = RedisSettings()
    logging: LoggingSettings = LoggingSettings()
    cors: CorsSettings = CorsSettings()
    metrics: MetricsSettings = MetricsSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    health: HealthSettings = HealthSettings()
    tls: TlsSettings = TlsSettings()
    database: DatabaseSettings = DatabaseSettings()
    notes: NotesSettings = NotesSettings()
    config_path: str | None = None
    warnings: tuple[str, ...] = ()  # accepted but risky: "<setting> = <value>: <why>"


# --------------------------------------------------------------------------------------------
# Problems
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    setting: str
    value: Any
    accepted: str
    secret: bool = False

    def line(self) -> str:
        shown = REDACTED if self.secret else _shown(self.value)
        return f"config: {self.setting} = {shown}: {self.accepted}"


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return redact_url(value) if "://" in value else value if value != "" else '""'
    return json.dumps(value, default=str)


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(p.line() for p in problems))

    def lines(self) -> list[str]:
        return [p.line() for p in self.problems]


# --------------------------------------------------------------------------------------------
# Raw value conversion
# --------------------------------------------------------------------------------------------

_MISSING = object()


class _Bad(Exception):
    def __init__(self, accepted: str):
        self.accepted = accepted


def _as_bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(v, str) and v.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise _Bad("true or false")


def _as_int(lo: int, hi: int) -> Callable[[Any], int]:
    def conv(v: Any) -> int:
        if isinstance(v, bool):
            raise _Bad(f"an integer from {lo} to {hi}")
        try:
            n = int(v) if isinstance(v, int) else int(str(v).strip(), 10)
        except (TypeError, ValueError):
            raise _Bad(f"an integer from {lo} to {hi}") from None
        if not lo <= n <= hi:
            raise _Bad(f"an integer from {lo} to {hi}")
        return n

    return conv


def _as_float(lo: float, hi: float, *, lo_open: bool = False) -> Callable[[Any], float]:
    desc = f"a number of seconds {'>' if lo_open else '>='} {lo:g} and <= {hi:g}"

    def conv(v: Any) -> float:
        if isinstance(v, bool):
            raise _Bad(desc)
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise _Bad(desc) from None
        if x != x or x > hi or x < lo or (lo_open and x == lo):
            raise _Bad(desc)
        return x

    return conv


def _as_str(v: Any) -> str:
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        s = str(v).strip()
        if s:
            return s
    raise _Bad("a non-empty string")


def _as_opt_str(v: Any) -> str | None:
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    return _as_str(v)


def _as_list(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        return tuple(s.strip() for s in v.split(",") if s.strip())
    if isinstance(v, list | tuple) and all(isinstance(x, str | int | float) for x in v):
        return tuple(str(x).strip() for x in v if str(x).strip())
    raise _Bad("a list of strings (comma-separated in the environment)")


def _choice(*options: str, upper: bool = False, lower: bool = False) -> Callable[[Any], str]:
    def conv(v: Any) -> str:
        s = str(v).strip() if isinstance(v, str) else v
        if isinstance(s, str):
            s = s.upper() if upper else s.lower() if lower else s
        if s not in options:
            raise _Bad("one of " + ", ".join(options))
        return s

    return conv


def _http_url(v: Any) -> str:
    s = _as_str(v)
    try:
        parts = urlsplit(s)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query
        ok = ok and not parts.fragment and parts.username is None and parts.password is None
    except ValueError:
        ok = False
    if not ok:
        raise _Bad("an absolute http(s) URL without credentials, query or fragment")
    return s


def _opt_http_url(v: Any) -> str | None:
    return None if v is None or v == "" else _http_url(v)


def _readable_file(v: Any) -> str | None:
    s = _as_opt_str(v)
    if s is None:
        return None
    p = Path(s)
    if not p.is_file() or not os.access(p, os.R_OK):
        raise _Bad("the path of an existing, readable file")
    return s


# --------------------------------------------------------------------------------------------
# Schema: (section, key) -> converter, environment variable, secret
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    conv: Callable[[Any], Any]
    env: str | None = None
    secret: bool = False


_SCHEMA: dict[str, dict[str, _Key]] = {
    "server": {
        "name": _Key(_as_str, "MCP_SERVER_NAME"),
        "host": _Key(_as_str, "MCP_SERVER_HOST"),
        "port": _Key(_as_int(1, 65535), "MCP_SERVER_PORT"),
        "transport": _Key(_choice("streamable-http"), "MCP_TRANSPORT"),
        "instance_id": _Key(_as_opt_str, "MCP_INSTANCE_ID"),
        "public_hosts": _Key(_as_list, "MCP_PUBLIC_HOSTS"),
        "stateless": _Key(_as_bool, "MCP_STATELESS"),
        "max_body_bytes": _Key(_as_int(1024, 1 << 30), "MCP_MAX_BODY_BYTES"),
        "graceful_timeout": _Key(_as_float(0, 3600, lo_open=True), "MCP_GRACEFUL_TIMEOUT"),
        "session_idle_timeout": _Key(_as_float(0, 86400, lo_open=True), "MCP_SESSION_IDLE_TIMEOUT"),
        "header_timeout": _Key(_as_float(0, 300, lo_open=True), "MCP_HEADER_TIMEOUT"),
        "max_connections": _Key(_as_int(16, 1_000_000), "MCP_MAX_CONNECTIONS"),
        "session_unused_timeout": _Key(_as_float(0, 86400, lo_open=True), "MCP_SESSION_UNUSED_TIMEOUT"),
        "max_sessions": _Key(_as_int(1, 1_000_000), "MCP_MAX_SESSIONS"),
        "max_sessions_per_principal": _Key(_as_int(1, 1_000_000), "MCP_MAX_SESSIONS_PER_PRINCIPAL"),
        "app": _Key(_as_opt_str, "MCP_APP"),
        "request_state_keys_file": _Key(_readable_file, "MCP_REQUEST_STATE_KEYS_FILE"),
        "trusted_proxies": _Key(_as_list, "MCP_TRUSTED_PROXIES"),
    },
    "auth": {
        "enabled": _Key(_as_bool, "AUTH_ENABLED"),
        "server_url": _Key(_opt_http_url, "AUTH_SERVER_URL"),
        "issuer_url": _Key(_opt_http_url, "AUTH_ISSUER_URL"),
        "resource_server_url": _Key(_opt_http_url, "RESOURCE_SERVER_URL"),
        "required_scopes": _Key(_as_list, "REQUIRED_SCOPES"),
        "jwks_url": _Key(_opt_http_url, "AUTH_JWKS_URL"),
        "jwks_file": _Key(_readable_file, "AUTH_JWKS_FILE"),
        "algorithms": _Key(_as_list, "AUTH_ALGORITHMS"),
        "token_cache_ttl": _Key(_as_float(0, 86400), "AUTH_TOKEN_CACHE_TTL"),
        "leeway": _Key(_as_float(0, 300), "AUTH_LEEWAY"),
        "fetch_timeout": _Key(_as_float(0, 60, lo_open=True), "AUTH_FETCH_TIMEOUT"),
        "jwks_max_age": _Key(_as_float(1, 86400), "AUTH_JWKS_MAX_AGE"),
    },
    "redis": {
        "url": _Key(_as_str, "REDIS_URL"),
        "username": _Key(_as_opt_str, "REDIS_USERNAME"),
        "password": _Key(_as_opt_str, "REDIS_PASSWORD", secret=True),
        "password_file": _Key(_readable_file, "REDIS_PASSWORD_FILE"),
        "max_connections": _Key(_as_int(1, 10000), "REDIS_MAX_CONNECTIONS"),
        "socket_timeout": _Key(_as_float(0, 300, lo_open=True), "REDIS_SOCKET_TIMEOUT"),
        "key_prefix": _Key(_as_str, "REDIS_KEY_PREFIX"),
    },
    "logging": {
        "level": _Key(_choice(*LOG_LEVELS, upper=True), "LOG_LEVEL"),
        "format": _Key(_choice("json", "text", lower=True), "LOG_FORMAT"),
        "handlers": _Key(lambda v: v),
    },
    "cors": {
        "allowed_origins": _Key(_as_list, "ALLOWED_ORIGINS"),
        "allowed_methods": _Key(_as_list, "CORS_ALLOWED_METHODS"),
        "expose_headers": _Key(_as_list, "CORS_EXPOSE_HEADERS"),
        "max_age": _Key(_as_int(0, 86400 * 7), "CORS_MAX_AGE"),
    },
    "metrics": {
        "enabled": _Key(_as_bool, "METRICS_ENABLED"),
        "path": _Key(_as_str, "METRICS_PATH"),
        "port": _Key(lambda v: None if v in (None, "") else _as_int(1, 65535)(v), "METRICS_PORT"),
    },
    "ratelimit": {
        "enabled": _Key(_as_bool, "RATE_LIMIT_ENABLED"),
        "requests_per_minute": _Key(_as_int(1, 10_000_000), "RATE_LIMIT_PER_MINUTE"),
        "on_redis_error": _Key(_choice("allow", "deny", lower=True), "RATE_LIMIT_ON_REDIS_ERROR"),
        "timeout": _Key(_as_float(0, 10, lo_open=True), "RATE_LIMIT_TIMEOUT"),
        "breaker_failures": _Key(_as_int(1, 1000), "RATE_LIMIT_BREAKER_FAILURES"),
        "breaker_cooldown": _Key(_as_float(0, 600, lo_open=True), "RATE_LIMIT_BREAKER_COOLDOWN"),
    },
    "health": {
        "timeout": _Key(_as_float(0, 30, lo_open=True), "HEALTH_TIMEOUT"),
        "cache_ttl": _Key(_as_float(0, 60), "HEALTH_CACHE_TTL"),
    },
    "tls": {
        "cert_file": _Key(_readable_file, "TLS_CERT_FILE"),
        "key_file": _Key(_readable_file, "TLS_KEY_FILE"),
    },
    "database": {
        "url": _Key(_as_opt_str, "DATABASE_URL", secret=True),
        "pool_size": _Key(_as_int(1, 1000), "DB_POOL_SIZE"),
        "max_overflow": _Key(_as_int(0, 1000), "DB_MAX_OVERFLOW"),
        "echo": _Key(_as_bool),
    },
    "notes": {
        "shared": _Key(_as_bool, "NOTES_SHARED"),
        "max_bytes": _Key(_as_int(1, 1 << 20), "NOTES_MAX_BYTES"),
        "max_title_length": _Key(_as_int(1, 10_000), "NOTES_MAX_TITLE_LENGTH"),
        "max_query_length": _Key(_as_int(1, 10_000), "NOTES_MAX_QUERY_LENGTH"),
        "max_tag_length": _Key(_as_int(1, 1000), "NOTES_MAX_TAG_LENGTH"),
        "max_tags": _Key(_as_int(0, 1000), "NOTES_MAX_TAGS"),
        "max_per_principal": _Key(_as_int(1, 1_000_000), "NOTES_MAX_PER_PRINCIPAL"),
        "max_result_bytes": _Key(_as_int(1024, 16 << 20), "NOTES_MAX_RESULT_BYTES"),
        "max_concurrent_searches": _Key(_as_int(1, 1000), "NOTES_MAX_CONCURRENT_SEARCHES"),
        "search_wait": _Key(_as_float(0, 60), "NOTES_SEARCH_WAIT"),
    },
}

_SECTION_TYPES: dict[str, type] = {
    "server": ServerSettings,
    "auth": AuthSettings,
    "redis": RedisSettings,
    "logging": LoggingSettings,
    "cors": CorsSettings,
    "metrics": MetricsSettings,
    "ratelimit": RateLimitSettings,
    "health": HealthSettings,
    "tls": TlsSettings,
    "database": DatabaseSettings,
    "notes": NotesSettings,
}

ENV_VARS: dict[str, str] = {
    k.env: f"{section}.{name}" for section, keys in _SCHEMA.items() for name, k in keys.items() if k.env
}


def default_config_path(env: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """The config path and whether it was chosen explicitly (then it must exist)."""
    env = os.environ if env is None else env
    if env.get("MCPOPS_CONFIG"):
        return env["MCPOPS_CONFIG"], True
    return DEFAULT_CONFIG_PATH, False


def load_settings(
    path: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read, merge and validate. Raises ConfigError listing every problem."""
    env = dict(os.environ if env is None else env)
    explicit = path is not None
    if path is None:
        path, explicit = default_config_path(env)
    problems: list[Problem] = []

    data: dict[str, Any] = {}
    p = Path(path)
    if p.exists():
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem("--config", path, f"a readable YAML file ({exc.__class__.__name__})"))
            loaded = None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            problems.append(Problem("--config", path, f"valid YAML{where}"))
            loaded = None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            problems.append(Problem("--config", path, "a YAML mapping with sections " + ", ".join(_SCHEMA)))
            loaded = {}
        data = loaded
    elif explicit:
        problems.append(Problem("--config", path, "the path of an existing, readable YAML file"))

    # raw[(section, key)] = (value, setting-name, secret)
    raw: dict[tuple[str, str], tuple[Any, str]] = {}
    for section, body in data.items():
        if section not in _SCHEMA:
            problems.append(Problem(str(section), "...", "a known section: " + ", ".join(_SCHEMA)))
            continue
        if body is None:
            continue
        if not isinstance(body, dict):
            problems.append(Problem(section, body, "a mapping of settings"))
            continue
        for key, value in body.items():
            if key not in _SCHEMA[section]:
                problems.append(
                    Problem(f"{section}.{key}", "...", "a known key: " + ", ".join(sorted(_SCHEMA[section])))
                )
                continue
            raw[(section, key)] = (value, f"{section}.{key}")
    for section, keys in _SCHEMA.items():
        for key, spec in keys.items():
            if spec.env and spec.env in env:
                raw[(section, key)] = (env[spec.env], spec.env)
    for dotted, value in (overrides or {}).items():
        section, key = dotted.split(".", 1)
        raw[(section, key)] = (value, dotted)

    values: dict[str, dict[str, Any]] = {s: {} for s in _SCHEMA}
    names: dict[tuple[str, str], str] = {}
    for (section, key), (value, name) in raw.items():
        spec = _SCHEMA[section][key]
        names[(section, key)] = name
        try:
            values[section][key] = spec.conv(value)
        except _Bad as bad:
            problems.append(Problem(name, value, bad.accepted, secret=spec.secret))

    def name_of(section: str, key: str) -> str:
        return names.get((section, key), f"{section}.{key}")

    def bad(section: str, key: str, accepted: str, value: Any = _MISSING, secret: bool = False) -> None:
        if value is _MISSING:
            value = values[section].get(key, raw.get((section, key), (None,))[0])
        problems.append(
            Problem(name_of(section, key), value, accepted, secret=secret or _SCHEMA[section][key].secret)
        )

    warnings: list[str] = []

    def warn(section: str, key: str, value: Any, why: str) -> None:
        warnings.append(f"{name_of(section, key)} = {_shown(value)}: {why}")

    _check_cross(values, bad, problems, warn)

    if problems:
        raise ConfigError(problems)

    sections: dict[str, Any] = {}
    for section, cls in _SECTION_TYPES.items():
        sections[section] = cls(**values[section])
    return Settings(**sections, config_path=str(p) if p.exists() else None, warnings=tuple(warnings))


def _check_cross(
    values: dict[str, dict[str, Any]],
    bad: Callable[..., None],
    problems: list[Problem],
    warn: Callable[[str, str, Any, str], None],
) -> None:
    srv, auth, rds, log, cors, met = (
        values["server"],
        values["auth"],
        values["redis"],
        values["logging"],
        values["cors"],
        values["metrics"],
    )

    # server
    port = srv.get("port", ServerSettings.port)
    iid = srv.get("instance_id")
    if iid is None:
        srv["instance_id"] = f"p{port}"
    elif not _INSTANCE_ID_RE.match(iid):
        bad("server", "instance_id", "1 to 40 characters from A-Z a-z 0-9 _ -")
    hosts = srv.get("public_hosts", ())
    for h in hosts:
        if not _HOST_RE.match(h):
            bad("server", "public_hosts", "host names (optionally host:port), e.g. mcp.example.com", h)
    if "public_hosts" in srv:
        srv["public_hosts"] = tuple(h.lower() for h in hosts)
    app = srv.get("app")
    if app is not None and not _APP_RE.match(app):
        bad("server", "app", "package.module:attribute naming an MCPServer object")
    nets = srv.get("trusted_proxies")
    if nets is not None:
        norm = []
        for n in nets:
            try:
                net = ipaddress.ip_network(n, strict=False)
            except ValueError:
                bad("server", "trusted_proxies", "IP addresses or CIDR networks, e.g. 10.0.0.0/8", n)
                continue
            if net.prefixlen == 0:
                bad("server", "trusted_proxies", _EVERY_ADDRESS, n)
            elif net.prefixlen < (8 if net.version == 4 else 32):
                warn("server", "trusted_proxies", n, _BROAD_PROXIES)
            norm.append(str(net))
        srv["trusted_proxies"] = tuple(norm)
    keys_file = srv.get("request_state_keys_file")
    if keys_file:
        keys, why = _read_key_ring(keys_file)
        if why:
            bad("server", "request_state_keys_file", why)
        srv["request_state_keys"] = keys

    # auth
    enabled = auth.get("enabled", True)
    if enabled:
        for key in ("server_url", "issuer_url", "jwks_url", "resource_server_url"):
            url = auth.get(key)
            if url and not _safe_transport(url):
                warn("auth", key, url, _PLAIN_HTTP)
    algs = auth.get("algorithms")
    if algs is not None and (not algs or any(a not in ALLOWED_ALGORITHMS for a in algs)):
        bad(
            "auth",
            "algorithms",
            "a non-empty list from " + ", ".join(ALLOWED_ALGORITHMS) + " (never none or HS*)",
            list(algs),
        )
    if "required_scopes" in auth:
        for s in auth["required_scopes"]:
            if not re.match(r"^[\x21\x23-\x5b\x5d-\x7e]+$", s):
                bad("auth", "required_scopes", "scope tokens without spaces, quotes or backslashes", s)
    if auth.get("issuer_url") is None and auth.get("server_url") is not None:
        auth["issuer_url"] = auth["server_url"]
    if auth.get("server_url") is None and auth.get("issuer_url") is not None:
        auth["server_url"] = auth["issuer_url"]
    if enabled:
        if not auth.get("resource_server_url") and not _raw_failed(problems, "resource_server_url"):
            bad(
                "auth",
                "resource_server_url",
                "the URL of this MCP endpoint that tokens carry as aud, e.g. https://mcp.example.com/mcp "
                "(required while auth.enabled is true)",
                "",
            )
        if not auth.get("issuer_url") and not _raw_failed(problems, "issuer_url", "server_url"):
            bad(
                "auth",
                "issuer_url",
                "the authorization server's issuer URL (AUTH_ISSUER_URL or AUTH_SERVER_URL; "
                "required while auth.enabled is true)",
                "",
            )
        if auth.get("jwks_url") and auth.get("jwks_file"):
            bad("auth", "jwks_file", "either auth.jwks_file or auth.jwks_url, not both")
        jf = auth.get("jwks_file")
        if jf:
            why = _check_jwks_file(jf)
            if why:
                bad("auth", "jwks_file", why)

    # redis
    url = rds.get("url")
    if url is not None:
        why = _check_redis_url(url)
        if why:
            bad("redis", "url", why)
    if rds.get("password") and rds.get("password_file"):
        bad("redis", "password_file", "either REDIS_PASSWORD or redis.password_file, not both")
    pf = rds.get("password_file")
    if pf:
        try:
            pw = Path(pf).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            pw = ""
        if not pw:
            bad("redis", "password_file", "a file holding the Redis password on its first line")
        rds["password"] = pw or None
    kp = rds.get("key_prefix")
    if kp is not None and not _PREFIX_RE.match(kp):
        bad("redis", "key_prefix", "1 to 64 characters from A-Z a-z 0-9 _ . : -")

    # logging
    if "handlers" in log:
        handlers = []
        hv = log["handlers"]
        if not isinstance(hv, list) or not hv:
            bad("logging", "handlers", "a non-empty list of {type: console} or {type: file, filename: PATH}")
        else:
            for h in hv:
                if isinstance(h, dict) and h.get("type") == "console" and set(h) <= {"type"}:
                    handlers.append(LogHandler("console"))
                elif (
                    isinstance(h, dict)
                    and h.get("type") == "file"
                    and isinstance(h.get("filename"), str)
                    and set(h) <= {"type", "filename", "level"}
                    and os.path.isabs(h["filename"])
                ):
                    handlers.append(LogHandler("file", h["filename"]))
                else:
                    bad(
                        "logging",
                        "handlers",
                        "{type: console} or {type: file, filename: /absolute/path}",
                        h,
                    )
        log["handlers"] = tuple(handlers)

    # cors
    for o in cors.get("allowed_origins", ()):
        parts = urlsplit(o)
        if (
            o == "*"
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("",)
            or parts.query
            or "@" in parts.netloc
        ):
            bad(
                "cors",
                "allowed_origins",
                "origins like https://app.example.com (scheme://host[:port], no '*')",
                o,
            )
    if "allowed_methods" in cors:
        cors["allowed_methods"] = tuple(m.upper() for m in cors["allowed_methods"])
        for m in cors["allowed_methods"]:
            if m not in ("GET", "POST", "DELETE", "OPTIONS", "HEAD"):
                bad("cors", "allowed_methods", "GET, POST, DELETE, OPTIONS, HEAD", m)

    # metrics
    mp = met.get("path")
    if mp is not None and (not mp.startswith("/") or mp in ("/mcp", "/health") or " " in mp):
        bad("metrics", "path", "an absolute path other than /mcp and /health, e.g. /metrics")

    # tls
    tls = values["tls"]
    if bool(tls.get("cert_file")) != bool(tls.get("key_file")):
        missing = "key_file" if tls.get("cert_file") else "cert_file"
        bad(
            "tls",
            missing,
            "set together with tls." + ("cert_file" if missing == "key_file" else "key_file"),
            "",
        )


def _raw_failed(problems: list[Problem], *keys: str) -> set[tuple[str, str]]:
    """Keys that already have a conversion problem (so a 'missing' problem would be noise)."""
    out = set()
    for p in problems:
        for k in keys:
            if p.setting.endswith("." + k) or p.setting == _SCHEMA["auth"][k].env:
                out.add(("auth", k))
    return out


def _read_key_ring(path: str) -> tuple[tuple[bytes, ...], str | None]:
    why = "a file with one base64-encoded key (at least 32 bytes) a line, newest first"
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError):
        return (), why
    keys = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            k = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            return (), why
        if len(k) < 32:
            return (), why
        keys.append(k)
    if not keys or len(set(keys)) != len(keys):
        return (), why + " (no duplicates)"
    return tuple(keys), None


def _check_jwks_file(path: str) -> str | None:
    why = 'a JSON Web Key Set file ({"keys": [...]} with public keys only)'
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return why
    keys = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not keys:
        return why
    for k in keys:
        if not isinstance(k, dict) or "kty" not in k:
            return why
        if k.get("kty") == "oct" or any(p in k for p in ("d", "p", "q", "k")):
            return why
    return None


def _check_redis_url(url: str) -> str | None:
    accepted = "redis://[user@]host:port/db, rediss://[user@]host:port/db or unix:///path?db=N"
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
        _ = parts.port
    except ValueError:
        return accepted
    if has_password:
        return "a URL without a password (set REDIS_PASSWORD or redis.password_file)"
    if parts.query or parts.fragment:
        for item in parts.query.split("&"):
            key, _eq, value = item.partition("=")
            if key != "db" or not value.isdigit() or parts.fragment:
                return (
                    accepted + " (no query parameters but db: options and secrets have settings of their own)"
                )
    if parts.scheme in ("redis", "rediss"):
        if not parts.hostname:
            return accepted
        db = parts.path.lstrip("/")
        if db and not db.isdigit():
            return accepted
        return None
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            return accepted
        return None
    return accepted


def redact_url(url: str) -> str:
    """``url`` fit to print: user info and query values (but ``db``) as ``***``, even when unparsable."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    tail, hash_sign, fragment = tail.partition("#")
    path, qmark, query = tail.partition("?")
    if qmark:
        items = []
        for item in query.split("&"):
            key, eq, _value = item.partition("=")
            items.append(item if key == "db" or not eq else f"{key}=***")
        query = "&".join(items)
    return f"{scheme}://{netloc}{path}{qmark}{query}{hash_sign}{'***' if fragment else ''}"


def _safe_transport(url: str) -> bool:
    """https, or plain http to this host only."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_EVERY_ADDRESS = (
    "networks narrower than /0; trusting every address lets any client choose its address "
    "(X-Forwarded-For) and so get past the rate limit: list the proxies themselves"
)
_BROAD_PROXIES = (
    "a very large network (IPv4 shorter than /8, IPv6 shorter than /32): any client inside it can "
    "claim an address in X-Forwarded-For and get past the per-address rate limit; list the proxies themselves"
)
_PLAIN_HTTP = (
    "plain http to a host other than this one: tokens and signing keys travel unprotected and can be "
    "read or replaced on the way; use https"
)


def describe(settings: Settings) -> dict[str, Any]:
    """A log-safe summary (no secrets) for the start-up line."""
    s = settings
    return {
        "name": s.server.name,
        "instance_id": s.server.instance_id,
        "listen": f"{s.server.host}:{s.server.port}",
        "stateless": s.server.stateless,
        "app": s.server.app or "reference",
        "auth": s.auth.enabled,
        "redis": redact_url(s.redis.url),
        "ratelimit_per_minute": s.ratelimit.requests_per_minute if s.ratelimit.enabled else None,
        "tls": s.tls.enabled,
        "request_state_keys": len(s.server.request_state_keys),
    }
