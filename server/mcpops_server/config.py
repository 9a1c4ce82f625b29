"""Settings: a YAML file plus environment overrides, validated once into frozen dataclasses.

Each setting is declared once, as a field of its section's dataclass made by ``setting(...)``: its
default, environment variable, converter (type and bounds), whether it is a secret, and one line of
doc. The schema ``load_settings`` reads, the environment map and the configuration table of
docs/architecture.md (``python -m mcpops_server.config --markdown``) all come from those fields.

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
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import ssl
import sys
from collections.abc import Callable, Iterable, Mapping
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
CORS_METHODS = ("GET", "POST", "DELETE", "OPTIONS", "HEAD")

_INSTANCE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
_APP_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_]\w*)*$"
)
_HOST_RE = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)"
    r"(:[0-9]{1,5})?$"
)
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_SCOPE_RE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")


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
        super().__init__("\n".join(problem.line() for problem in problems))

    def lines(self) -> list[str]:
        return [problem.line() for problem in self.problems]


# --------------------------------------------------------------------------------------------
# Converters: a raw value (YAML or environment string) to the setting's type, or _Bad
# --------------------------------------------------------------------------------------------

_MISSING = object()


class _Bad(Exception):
    def __init__(self, accepted: str):
        self.accepted = accepted


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = value.strip().lower() if isinstance(value, str) else None
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise _Bad("true or false")


def _as_int(lowest: int, highest: int) -> Callable[[Any], int]:
    accepted = f"an integer from {lowest} to {highest}"

    def convert(value: Any) -> int:
        if isinstance(value, bool):
            raise _Bad(accepted)
        try:
            number = value if isinstance(value, int) else int(str(value).strip(), 10)
        except (TypeError, ValueError):
            raise _Bad(accepted) from None
        if not lowest <= number <= highest:
            raise _Bad(accepted)
        return number

    return convert


def _as_seconds(lowest: float, highest: float, *, above: bool = False) -> Callable[[Any], float]:
    """A number of seconds from ``lowest`` (excluded when ``above``) to ``highest``."""
    accepted = f"a number of seconds {'>' if above else '>='} {lowest:g} and <= {highest:g}"

    def convert(value: Any) -> float:
        if isinstance(value, bool):
            raise _Bad(accepted)
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _Bad(accepted) from None
        if number != number or not lowest <= number <= highest or (above and number == lowest):
            raise _Bad(accepted)
        return number

    return convert


def _as_str(value: Any) -> str:
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        text = str(value).strip()
        if text:
            return text
    raise _Bad("a non-empty string")


def _as_optional_str(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _as_str(value)


def _as_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    if isinstance(value, list | tuple) and all(isinstance(item, str | int | float) for item in value):
        return tuple(str(item).strip() for item in value if str(item).strip())
    raise _Bad("a list of strings (comma-separated in the environment)")


def _one_of(*options: str, upper: bool = False, lower: bool = False) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        word = value.strip() if isinstance(value, str) else value
        if isinstance(word, str):
            word = word.upper() if upper else word.lower() if lower else word
        if word not in options:
            raise _Bad("one of " + ", ".join(options))
        return word

    return convert


def _as_http_url(value: Any) -> str:
    url = _as_str(value)
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query
        ok = ok and not parts.fragment and parts.username is None and parts.password is None
    except ValueError:
        ok = False
    if not ok:
        raise _Bad("an absolute http(s) URL without credentials, query or fragment")
    return url


def _as_optional_http_url(value: Any) -> str | None:
    return None if value is None or value == "" else _as_http_url(value)


def _as_optional_port(value: Any) -> int | None:
    return None if value in (None, "") else _as_int(1, 65535)(value)


def _as_readable_file(value: Any) -> str | None:
    path = _as_optional_str(value)
    if path is None:
        return None
    if not Path(path).is_file() or not os.access(path, os.R_OK):
        raise _Bad("the path of an existing, readable file")
    return path


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")  # \Z, not $: "$" lets a trailing newline in
# C0 and C1 control characters, DEL, the Unicode line and paragraph separators: in a child's variable a
# newline would cut a secret where the environment file is read, or add variables of its own
_ENV_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_MAX_ARGV = 256  # arguments of bridge.command
_MAX_ENV = 256  # variables of bridge.env and bridge.env_file together


def _as_argv(value: Any) -> tuple[str, ...]:
    """A command as an argument vector: a YAML list, or in the environment a JSON array (or words)."""
    accepted = (
        f"a list of 1 to {_MAX_ARGV} non-empty strings without NUL, the executable first "
        '(in the environment a JSON array, e.g. ["node", "/srv/x/index.js"], or words split on spaces)'
    )
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise _Bad(accepted) from None
        else:
            value = text.split()
    if not isinstance(value, list | tuple) or not 0 < len(value) <= _MAX_ARGV:
        raise _Bad(accepted)
    argv = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _Bad(accepted)
        text = str(item)
        if "\x00" in text or not text:
            raise _Bad(accepted)
        argv.append(text)
    if not argv[0].strip():
        raise _Bad(accepted)
    return tuple(argv)


def _as_env_map(value: Any) -> tuple[tuple[str, str], ...]:
    """Variables for a child process: a YAML mapping (a JSON object in the environment), kept as pairs."""
    accepted = (
        f"a mapping of at most {_MAX_ENV} variables NAME: value (names [A-Za-z_][A-Za-z0-9_]*, "
        "values strings or numbers without control characters; a JSON object in the environment)"
    )
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Bad(accepted) from None
    if not isinstance(value, dict) or len(value) > _MAX_ENV:
        raise _Bad(accepted)
    pairs = []
    for name, item in value.items():
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            raise _Bad(accepted)
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise _Bad(accepted)
        if _ENV_CONTROL_RE.search(str(item)):  # the name is safe to show, the value never is
            raise _Bad(f"{accepted}: the value of {name} has a control character (a newline, say)")
        pairs.append((name, str(item)))
    return tuple(pairs)


_SIZE_RE = re.compile(r"([0-9]{1,16})([KMGT]?)\Z")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _as_bytes(lowest: int, highest: int) -> Callable[[Any], int]:
    """A size in bytes: an integer, or digits with K, M, G or T (1024-based), as systemd writes them."""
    accepted = f"a size from {lowest >> 20}M to {highest >> 40}T (bytes, or digits with K, M, G or T)"

    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise _Bad(accepted)
        match = _SIZE_RE.match(str(value).strip())
        if match is None:
            raise _Bad(accepted)
        number = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
        if not lowest <= number <= highest:
            raise _Bad(accepted)
        return number

    return convert


def _as_absolute_path(value: Any) -> str | None:
    """One absolute path (it may not exist yet: systemd's StateDirectory= makes it when the unit starts)."""
    if value is None or value == "":
        return None
    paths = _as_absolute_paths([value] if isinstance(value, str) else value)
    if len(paths) != 1:
        raise _Bad("an absolute path without '..' or control characters")
    return paths[0]


def _as_absolute_paths(value: Any) -> tuple[str, ...]:
    """Absolute paths without control characters (a list, comma-separated in the environment)."""
    paths = _as_list(value)
    for path in paths:
        if not os.path.isabs(path) or _ENV_CONTROL_RE.search(path) or ".." in path.split("/"):
            raise _Bad("a list of absolute paths without '..' or control characters")
    return paths


def _as_directory(value: Any) -> str | None:
    path = _as_optional_str(value)
    if path is None:
        return None
    if not os.path.isabs(path) or not Path(path).is_dir() or not os.access(path, os.X_OK):
        raise _Bad("the absolute path of an existing directory the server may enter")
    return path


def _as_given(value: Any) -> Any:
    """Taken as it is; the section's check reads it (logging.handlers)."""
    return value


# --------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------

_DECLARATION = "mcpops.setting"


@dataclass(frozen=True)
class Declaration:
    """One setting, as declared beside its field."""

    default: Any
    env: str | None  # the environment variable that overrides the YAML key, if any
    convert: Callable[[Any], Any]  # raw value -> typed value, raising _Bad with what is accepted
    doc: str  # one line: what the setting does
    secret: bool = False  # never printed, not even in problems
    documented_default: str | None = None  # the default as the docs state it, when computed at load

    def default_text(self) -> str:
        """The default as the configuration table shows it."""
        return self.documented_default if self.documented_default is not None else _doc_text(self.default)


def setting(
    default: Any,
    env: str | None,
    convert: Callable[[Any], Any],
    doc: str,
    *,
    secret: bool = False,
    documented_default: str | None = None,
) -> Any:
    """A dataclass field that is also the declaration of a setting (see ``Declaration``)."""
    declaration = Declaration(default, env, convert, doc, secret, documented_default)
    return field(default=default, repr=not secret, metadata={_DECLARATION: declaration})


def _doc_text(value: Any) -> str:
    """A value written as in YAML flow style, for the docs: none, false, 20, [a, b], {type: console}."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_doc_text(item) for item in value) + "]"
    if dataclasses.is_dataclass(value):
        items = dataclasses.asdict(value).items()  # type: ignore[arg-type]
        return "{" + ", ".join(f"{key}: {_doc_text(item)}" for key, item in items if item is not None) + "}"
    return str(value)


# --------------------------------------------------------------------------------------------
# The settings object
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSettings:
    """One instance of the server: where it listens, its sessions, its limits."""

    name: str = setting("mcpops-server", "MCP_SERVER_NAME", _as_str, "the server name clients see in MCP")
    host: str = setting("127.0.0.1", "MCP_SERVER_HOST", _as_str, "address to listen on")
    port: int = setting(8000, "MCP_SERVER_PORT", _as_int(1, 65535), "port to listen on; one per instance")
    transport: str = setting(
        "streamable-http", "MCP_TRANSPORT", _one_of("streamable-http"), "the only value accepted"
    )
    instance_id: str = setting(
        "p8000",
        "MCP_INSTANCE_ID",
        _as_optional_str,
        "`[A-Za-z0-9_-]{1,40}`; starts every session id this instance mints (nginx affinity)",
        documented_default="`p<port>`",
    )
    public_hosts: tuple[str, ...] = setting(
        (), "MCP_PUBLIC_HOSTS", _as_list, "host names clients use (Host header allow-list, plus loopback)"
    )
    stateless: bool = setting(False, "MCP_STATELESS", _as_bool, "no sessions: every request stands alone")
    max_body_bytes: int = setting(
        1_048_576, "MCP_MAX_BODY_BYTES", _as_int(1024, 1 << 30), "largest request body; beyond it 413"
    )
    graceful_timeout: float = setting(
        20.0,
        "MCP_GRACEFUL_TIMEOUT",
        _as_seconds(0, 3600, above=True),
        "seconds calls in flight may take to finish at shutdown",
    )
    session_idle_timeout: float = setting(
        1800.0,
        "MCP_SESSION_IDLE_TIMEOUT",
        _as_seconds(0, 86400, above=True),
        "seconds without a request before a session is dropped",
    )
    session_unused_timeout: float = setting(
        60.0,
        "MCP_SESSION_UNUSED_TIMEOUT",
        _as_seconds(0, 86400, above=True),
        "seconds a session that saw only the handshake lives",
    )
    max_sessions: int = setting(
        5000, "MCP_MAX_SESSIONS", _as_int(1, 1_000_000), "sessions open at once; a new one beyond gets 503"
    )
    max_sessions_per_principal: int = setting(
        100,
        "MCP_MAX_SESSIONS_PER_PRINCIPAL",
        _as_int(1, 1_000_000),
        "open sessions per principal (token `sub`, else client address); a new one beyond gets 429",
    )
    app: str | None = setting(
        None,
        "MCP_APP",
        _as_optional_str,
        "`package.module:attribute` naming the MCPServer to serve",
        documented_default="(reference toolset)",
    )
    request_state_keys_file: str | None = setting(
        None,
        "MCP_REQUEST_STATE_KEYS_FILE",
        _as_readable_file,
        "key ring for request state: one base64 key (>= 32 bytes) a line, newest first",
    )
    request_state_keys: tuple[bytes, ...] = field(default=(), repr=False)  # read from the file above
    trusted_proxies: tuple[str, ...] = setting(
        ("127.0.0.1/32", "::1/128"),
        "MCP_TRUSTED_PROXIES",
        _as_list,
        "peers whose X-Forwarded-For is believed; /0 refused, very broad networks warned about",
    )
    header_timeout: float = setting(
        10.0,
        "MCP_HEADER_TIMEOUT",
        _as_seconds(0, 300, above=True),
        "seconds a connection may take to send a request's line and headers",
    )
    max_connections: int = setting(
        4096, "MCP_MAX_CONNECTIONS", _as_int(16, 1_000_000), "connections at once; uvicorn answers 503 beyond"
    )


@dataclass(frozen=True)
class AuthSettings:
    """OAuth 2.1 resource server: which tokens are accepted and where the keys come from."""

    enabled: bool = setting(
        True, "AUTH_ENABLED", _as_bool, "false only explicitly; then warned at every start"
    )
    server_url: str | None = setting(
        None,
        "AUTH_SERVER_URL",
        _as_optional_http_url,
        "authorization server advertised in the RFC 9728 metadata",
        documented_default="= issuer_url",
    )
    issuer_url: str | None = setting(
        None,
        "AUTH_ISSUER_URL",
        _as_optional_http_url,
        "the exact `iss` of accepted tokens",
        documented_default="= server_url",
    )
    resource_server_url: str | None = setting(
        None,
        "RESOURCE_SERVER_URL",
        _as_optional_http_url,
        "the `aud` tokens must carry (RFC 8707), e.g. https://mcp.example.com/mcp",
    )
    required_scopes: tuple[str, ...] = setting(
        (), "REQUIRED_SCOPES", _as_list, "scopes every token must have"
    )
    jwks_url: str | None = setting(
        None,
        "AUTH_JWKS_URL",
        _as_optional_http_url,
        "the issuer's key set, when discovery (RFC 8414, then OIDC) should not find it",
        documented_default="discovered",
    )
    jwks_file: str | None = setting(
        None, "AUTH_JWKS_FILE", _as_readable_file, "pinned public keys, no network (not with jwks_url)"
    )
    algorithms: tuple[str, ...] = setting(
        DEFAULT_ALGORITHMS, "AUTH_ALGORITHMS", _as_list, "signature algorithms accepted; never none or HS*"
    )
    token_cache_ttl: float = setting(
        300.0,
        "AUTH_TOKEN_CACHE_TTL",
        _as_seconds(0, 86400),
        "seconds a verified token is remembered (never past its exp)",
    )
    leeway: float = setting(
        30.0, "AUTH_LEEWAY", _as_seconds(0, 300), "seconds of clock skew allowed on exp, nbf and iat"
    )
    fetch_timeout: float = setting(
        2.0, "AUTH_FETCH_TIMEOUT", _as_seconds(0, 60, above=True), "seconds for a key fetch with discovery"
    )
    jwks_max_age: float = setting(
        300.0,
        "AUTH_JWKS_MAX_AGE",
        _as_seconds(1, 86400),
        "most seconds between key refreshes (the issuer's max-age, if lower, wins)",
    )


@dataclass(frozen=True)
class RedisSettings:
    """The Redis that holds notes, rate-limit counters and schema versions."""

    url: str = setting(
        "redis://127.0.0.1:6379/0",
        "REDIS_URL",
        _as_str,
        "`redis://[user@]host:port/db`, `rediss://` or `unix:///path?db=N`; no password, no other query",
    )
    username: str | None = setting(None, "REDIS_USERNAME", _as_optional_str, "ACL user name")
    password: str | None = setting(
        None, "REDIS_PASSWORD", _as_optional_str, "secret: never printed; never in redis.url", secret=True
    )
    password_file: str | None = setting(
        None, "REDIS_PASSWORD_FILE", _as_readable_file, "file with the password; not with REDIS_PASSWORD"
    )
    max_connections: int = setting(
        50, "REDIS_MAX_CONNECTIONS", _as_int(1, 10000), "connections in the pool of one instance"
    )
    socket_timeout: float = setting(
        1.0,
        "REDIS_SOCKET_TIMEOUT",
        _as_seconds(0, 300, above=True),
        "seconds to wait for a connection and for each reply; not retried",
    )
    key_prefix: str = setting(
        "mcpops:", "REDIS_KEY_PREFIX", _as_str, "starts every key and channel the server touches (for ACLs)"
    )
    tls_ca_file: str | None = setting(
        None,
        "REDIS_TLS_CA_FILE",
        _as_readable_file,
        "CA certificates (PEM) that verify the Redis server of a `rediss://` url; else the system's",
    )
    tls_cert_file: str | None = setting(
        None,
        "REDIS_TLS_CERT_FILE",
        _as_readable_file,
        "client certificate (PEM) for Redis' tls-auth-clients; `rediss://` only, with redis.tls_key_file",
    )
    tls_key_file: str | None = setting(
        None,
        "REDIS_TLS_KEY_FILE",
        _as_readable_file,
        "its private key (PEM, unencrypted); `rediss://` only, with redis.tls_cert_file",
    )

    @property
    def tls(self) -> bool:
        """Redis is reached over TLS (a ``rediss://`` url): server verified, host name checked."""
        return urlsplit(self.url).scheme == "rediss"


@dataclass(frozen=True)
class LogHandler:
    type: str = "console"
    filename: str | None = None


@dataclass(frozen=True)
class LoggingSettings:
    """Where the log goes and how it looks."""

    level: str = setting("INFO", "LOG_LEVEL", _one_of(*LOG_LEVELS, upper=True), ", ".join(LOG_LEVELS))
    format: str = setting("json", "LOG_FORMAT", _one_of("json", "text", lower=True), "json or text")
    handlers: tuple[LogHandler, ...] = setting(
        (LogHandler(),), None, _as_given, "`{type: console}` or `{type: file, filename: /abs/path}` items"
    )


@dataclass(frozen=True)
class CorsSettings:
    """Cross-origin requests from browsers."""

    allowed_origins: tuple[str, ...] = setting(
        (), "ALLOWED_ORIGINS", _as_list, "origins like https://app.example.com; no `*`"
    )
    allowed_methods: tuple[str, ...] = setting(
        ("GET", "POST", "DELETE", "OPTIONS"), "CORS_ALLOWED_METHODS", _as_list, "methods allowed cross-origin"
    )
    expose_headers: tuple[str, ...] = setting(
        ("Mcp-Session-Id", "WWW-Authenticate"),
        "CORS_EXPOSE_HEADERS",
        _as_list,
        "response headers a browser script may read",
    )
    max_age: int = setting(3600, "CORS_MAX_AGE", _as_int(0, 86400 * 7), "seconds a browser keeps a preflight")


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics, served on the instance port."""

    enabled: bool = setting(True, "METRICS_ENABLED", _as_bool, "serve metrics at metrics.path")
    path: str = setting("/metrics", "METRICS_PATH", _as_str, "absolute path, other than /mcp and /health")
    port: int | None = setting(
        None, "METRICS_PORT", _as_optional_port, "accepted for the seed's schema and ignored"
    )


@dataclass(frozen=True)
class RateLimitSettings:
    """Requests per principal per minute, counted in Redis across instances."""

    enabled: bool = setting(True, "RATE_LIMIT_ENABLED", _as_bool, "limit requests per principal")
    requests_per_minute: int = setting(
        600, "RATE_LIMIT_PER_MINUTE", _as_int(1, 10_000_000), "per principal, across all instances"
    )
    on_redis_error: str = setting(
        "allow",
        "RATE_LIMIT_ON_REDIS_ERROR",
        _one_of("allow", "deny", lower=True),
        "allow, or deny (503), while Redis fails or the breaker is open",
    )
    timeout: float = setting(
        0.25,
        "RATE_LIMIT_TIMEOUT",
        _as_seconds(0, 10, above=True),
        "seconds one check in Redis may take (own pool, no retries)",
    )
    breaker_failures: int = setting(
        3, "RATE_LIMIT_BREAKER_FAILURES", _as_int(1, 1000), "failed checks in a row that open the breaker"
    )
    breaker_cooldown: float = setting(
        5.0,
        "RATE_LIMIT_BREAKER_COOLDOWN",
        _as_seconds(0, 600, above=True),
        "seconds the open breaker decides without Redis before one probe",
    )


@dataclass(frozen=True)
class HealthSettings:
    """The /health endpoint."""

    timeout: float = setting(1.0, "HEALTH_TIMEOUT", _as_seconds(0, 30, above=True), "seconds per check")
    cache_ttl: float = setting(
        2.0,
        "HEALTH_CACHE_TTL",
        _as_seconds(0, 60),
        "seconds one result is served to every caller before the checks run again",
    )


@dataclass(frozen=True)
class TlsSettings:
    """TLS served by uvicorn itself, for hosts without nginx in front."""

    cert_file: str | None = setting(
        None, "TLS_CERT_FILE", _as_readable_file, "certificate chain (PEM); set with tls.key_file"
    )
    key_file: str | None = setting(
        None, "TLS_KEY_FILE", _as_readable_file, "private key (PEM); set with tls.cert_file"
    )

    @property
    def enabled(self) -> bool:
        return bool(self.cert_file)


@dataclass(frozen=True)
class DatabaseSettings:
    """Accepted for the seed's schema; the reference toolset does not use a database."""

    url: str | None = setting(
        None, "DATABASE_URL", _as_optional_str, "unused by the reference toolset; a secret", secret=True
    )
    pool_size: int = setting(20, "DB_POOL_SIZE", _as_int(1, 1000), "unused by the reference toolset")
    max_overflow: int = setting(10, "DB_MAX_OVERFLOW", _as_int(0, 1000), "unused by the reference toolset")
    echo: bool = setting(False, None, _as_bool, "unused by the reference toolset")


@dataclass(frozen=True)
class NotesSettings:
    """Bounds of the reference toolset's notes store (what one caller may make the server hold)."""

    shared: bool = setting(
        False, "NOTES_SHARED", _as_bool, "one store for all callers; else one per principal (token `sub`)"
    )
    max_bytes: int = setting(16_384, "NOTES_MAX_BYTES", _as_int(1, 1 << 20), "UTF-8 bytes of a note's body")
    max_title_length: int = setting(
        200, "NOTES_MAX_TITLE_LENGTH", _as_int(1, 10_000), "characters of a note's title"
    )
    max_query_length: int = setting(
        200, "NOTES_MAX_QUERY_LENGTH", _as_int(1, 10_000), "characters of a search query"
    )
    max_tag_length: int = setting(64, "NOTES_MAX_TAG_LENGTH", _as_int(1, 1000), "characters of one tag")
    max_tags: int = setting(16, "NOTES_MAX_TAGS", _as_int(0, 1000), "tags on one note")
    max_per_principal: int = setting(
        1000,
        "NOTES_MAX_PER_PRINCIPAL",
        _as_int(1, 1_000_000),
        "notes one principal keeps (the whole store when notes.shared)",
    )
    max_result_bytes: int = setting(
        262_144,
        "NOTES_MAX_RESULT_BYTES",
        _as_int(1024, 16 << 20),
        "UTF-8 bytes of the notes one search returns (at least one note)",
    )
    max_concurrent_searches: int = setting(
        4, "NOTES_MAX_CONCURRENT_SEARCHES", _as_int(1, 1000), "searches running at once in one instance"
    )
    search_wait: float = setting(
        1.0,
        "NOTES_SEARCH_WAIT",
        _as_seconds(0, 60),
        'seconds a search waits for a free slot before the tool answers "busy"',
    )


@dataclass(frozen=True)
class BridgeSettings:
    """A stdio MCP server run as child processes, instead of an MCPServer object (bridge.py)."""

    command: tuple[str, ...] = setting(
        (),
        "BRIDGE_COMMAND",
        _as_argv,
        "argv of a stdio MCP server to run and forward to (not with server.app); empty: no bridge",
    )
    env: tuple[tuple[str, str], ...] = setting(
        (),
        "BRIDGE_ENV",
        _as_env_map,
        "variables for the child beside PATH, HOME, LANG, LC_*, TZ, TMPDIR; values never printed",
        secret=True,
        documented_default="{}",
    )
    env_file: str | None = setting(
        None,
        "BRIDGE_ENV_FILE",
        _as_readable_file,
        "file of NAME=value lines for the child (secrets); overrides bridge.env",
    )
    file_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)  # read from env_file
    cwd: str | None = setting(
        None, "BRIDGE_CWD", _as_directory, "working directory of the child", documented_default="the server's"
    )
    isolation: str = setting(
        "per_principal",
        "BRIDGE_ISOLATION",
        _one_of("per_principal", "shared", lower=True),
        "per_principal: a child per token subject; shared: one child for everyone",
    )
    max_children: int = setting(
        16,
        "BRIDGE_MAX_CHILDREN",
        _as_int(1, 10_000),
        "children of an instance (per_principal); a new one stops the idle-most, refused if all are busy",
    )
    max_calls_per_child: int = setting(
        64,
        "BRIDGE_MAX_CALLS_PER_CHILD",
        _as_int(1, 10_000),
        "requests in flight on one child; one more is refused with a JSON-RPC error",
    )
    max_calls_per_principal: int = setting(
        16,
        "BRIDGE_MAX_CALLS_PER_PRINCIPAL",
        _as_int(1, 10_000),
        "requests of one principal in flight on one child (at most max_calls_per_child); one more is refused",
    )
    idle_timeout: float = setting(
        600.0,
        "BRIDGE_IDLE_TIMEOUT",
        _as_seconds(0, 86400 * 7, above=True),
        "seconds a child without calls lives on",
    )
    call_timeout: float = setting(
        120.0,
        "BRIDGE_CALL_TIMEOUT",
        _as_seconds(0, 86400, above=True),
        "seconds one forwarded request may take; then a JSON-RPC error and notifications/cancelled",
    )
    startup_timeout: float = setting(
        10.0,
        "BRIDGE_STARTUP_TIMEOUT",
        _as_seconds(0, 600, above=True),
        "seconds a new child has to answer initialize",
    )
    restart_backoff_max: float = setting(
        30.0,
        "BRIDGE_RESTART_BACKOFF_MAX",
        _as_seconds(0, 3600),
        "longest wait before a crashed child is started again (0.25 s doubling per crash in a row)",
    )
    stop_timeout: float = setting(
        2.0,
        "BRIDGE_STOP_TIMEOUT",
        _as_seconds(0, 300, above=True),
        "seconds a stopping child gets after its stdin closes, and again after SIGTERM, before SIGKILL",
    )
    max_line_bytes: int = setting(
        4_194_304,
        "BRIDGE_MAX_LINE_BYTES",
        _as_int(1024, 1 << 28),
        "bytes of a line on the child's stdout; a longer answer fails its call, another restarts the child",
    )
    max_messages_per_second: int = setting(
        1000,
        "BRIDGE_MAX_MESSAGES_PER_SECOND",
        _as_int(1, 1_000_000),
        "lines the child may write to stdout in a second; more restarts the child",
    )
    max_stderr_lines_per_second: int = setting(
        20,
        "BRIDGE_MAX_STDERR_LINES_PER_SECOND",
        _as_int(0, 100_000),
        "lines of the child's stderr logged a second (cut to 1024 characters); the rest counted, dropped",
    )

    sandbox: str = setting(
        "none",
        "BRIDGE_SANDBOX",
        _one_of("none", "bubblewrap", lower=True),
        "bubblewrap: each child in namespaces and a cgroup of its own, with its own copy of bridge.state_dir "
        "(sandbox.py); none: a plain child process",
    )
    state_dir: str | None = setting(
        None,
        "BRIDGE_STATE_DIR",
        _as_absolute_path,
        "the server's state directory; under bubblewrap each pool key sees its own copy there, kept in "
        "principals/<digest> (shared/ when shared)",
    )
    sandbox_read_only: tuple[str, ...] = setting(
        (),
        "BRIDGE_SANDBOX_READ_ONLY",
        _as_absolute_paths,
        "paths bound read-only into the sandbox besides /usr and a few files of /etc (the release)",
        documented_default="[]",
    )
    child_memory_max: int = setting(
        256 << 20,
        "BRIDGE_CHILD_MEMORY_MAX",
        _as_bytes(16 << 20, 1 << 40),
        "memory of a child and what it starts (its cgroup; bubblewrap only); over it, that child is killed",
        documented_default="256M",
    )
    child_tasks_max: int = setting(
        128,
        "BRIDGE_CHILD_TASKS_MAX",
        _as_int(8, 100_000),
        "processes and threads of one child (its cgroup's pids.max; bubblewrap only)",
    )

    @property
    def enabled(self) -> bool:
        return bool(self.command)


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
    bridge: BridgeSettings = BridgeSettings()
    config_path: str | None = None
    warnings: tuple[str, ...] = ()  # accepted but risky: "<setting> = <value>: <why>"


# --------------------------------------------------------------------------------------------
# Derived from the declarations
# --------------------------------------------------------------------------------------------

# section name -> its dataclass, in the order of Settings
_SECTIONS: dict[str, type] = {
    each.name: type(each.default)
    for each in dataclasses.fields(Settings)
    if dataclasses.is_dataclass(each.default)
}

# section -> key -> declaration: what load_settings accepts
_SCHEMA: dict[str, dict[str, Declaration]] = {
    section: {
        each.name: each.metadata[_DECLARATION]
        for each in dataclasses.fields(cls)
        if _DECLARATION in each.metadata
    }
    for section, cls in _SECTIONS.items()
}

ENV_VARS: dict[str, str] = {
    declared.env: f"{section}.{key}"
    for section, keys in _SCHEMA.items()
    for key, declared in keys.items()
    if declared.env
}


def declarations() -> dict[str, Declaration]:
    """Every setting by its YAML key (``server.port``), in declaration order."""
    return {
        f"{section}.{key}": declared for section, keys in _SCHEMA.items() for key, declared in keys.items()
    }


def markdown_table() -> str:
    """The configuration table of docs/architecture.md, one row per declared setting."""
    rows = ["| YAML key | env | default | notes |", "| --- | --- | --- | --- |"]
    for key, declared in declarations().items():
        rows.append(f"| {key} | {declared.env or ''} | {declared.default_text()} | {declared.doc} |")
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


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
    load = _Load()
    data = _read_yaml(path, explicit, load.problems)
    load.gather(data, env, overrides or {})
    load.convert()
    for check in _CHECKS:
        check(load)
    if load.problems:
        raise ConfigError(load.problems)
    sections = {section: cls(**load.values[section]) for section, cls in _SECTIONS.items()}
    config_path = str(path) if Path(path).exists() else None
    return Settings(**sections, config_path=config_path, warnings=tuple(load.warnings))


def _read_yaml(path: str, explicit: bool, problems: list[Problem]) -> dict[Any, Any]:
    """The file's mapping; {} when it is absent (and may be) or unreadable (with a problem)."""
    if not Path(path).exists():
        if explicit:
            problems.append(Problem("--config", path, "the path of an existing, readable YAML file"))
        return {}
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(Problem("--config", path, f"a readable YAML file ({exc.__class__.__name__})"))
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problems.append(Problem("--config", path, f"valid YAML{where}"))
        return {}
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        problems.append(Problem("--config", path, "a YAML mapping with sections " + ", ".join(_SCHEMA)))
        return {}
    return loaded


class _Load:
    """One run of load_settings: the raw values and the name each came by, the converted values by
    section, and the problems and warnings found so far."""

    def __init__(self) -> None:
        self.raw: dict[tuple[str, str], tuple[Any, str]] = {}  # (section, key) -> (value, its name)
        self.values: dict[str, dict[str, Any]] = {section: {} for section in _SCHEMA}
        self.problems: list[Problem] = []
        self.warnings: list[str] = []

    def gather(self, data: Mapping[Any, Any], env: Mapping[str, str], overrides: Mapping[str, Any]) -> None:
        """The raw values: the file's, replaced by the environment's, replaced by ``overrides``."""
        for section, body in data.items():
            if section not in _SCHEMA:
                self.problems.append(Problem(str(section), "...", "a known section: " + ", ".join(_SCHEMA)))
            elif isinstance(body, dict):
                self._gather_section(section, body)
            elif body is not None:
                self.problems.append(Problem(section, body, "a mapping of settings"))
        for section, keys in _SCHEMA.items():
            for key, declared in keys.items():
                if declared.env and declared.env in env:
                    self.raw[(section, key)] = (env[declared.env], declared.env)
        for dotted, value in overrides.items():
            section, key = dotted.split(".", 1)
            self.raw[(section, key)] = (value, dotted)

    def _gather_section(self, section: str, body: Mapping[Any, Any]) -> None:
        for key, value in body.items():
            if key in _SCHEMA[section]:
                self.raw[(section, key)] = (value, f"{section}.{key}")
            else:
                known = ", ".join(sorted(_SCHEMA[section]))
                self.problems.append(Problem(f"{section}.{key}", "...", "a known key: " + known))

    def convert(self) -> None:
        for (section, key), (value, name) in self.raw.items():
            declared = _SCHEMA[section][key]
            try:
                self.values[section][key] = declared.convert(value)
            except _Bad as bad:
                self.problems.append(Problem(name, value, bad.accepted, secret=declared.secret))

    def name_of(self, section: str, key: str) -> str:
        """The setting as the user gave it: its environment variable or its YAML key."""
        return self.raw.get((section, key), (None, f"{section}.{key}"))[1]

    def unconvertible(self, section: str, key: str) -> bool:
        """Given, but already reported as a bad value (so 'missing' would be noise)."""
        return (section, key) in self.raw and key not in self.values[section]

    def bad(self, section: str, key: str, accepted: str, value: Any = _MISSING) -> None:
        if value is _MISSING:
            value = self.values[section].get(key, self.raw.get((section, key), (None,))[0])
        secret = _SCHEMA[section][key].secret
        self.problems.append(Problem(self.name_of(section, key), value, accepted, secret=secret))

    def warn(self, section: str, key: str, value: Any, why: str) -> None:
        self.warnings.append(f"{self.name_of(section, key)} = {_shown(value)}: {why}")


# --------------------------------------------------------------------------------------------
# Checks across a section's values, and values derived from others; one function per section
# --------------------------------------------------------------------------------------------


def _check_server(load: _Load) -> None:
    server = load.values["server"]
    instance_id = server.get("instance_id")
    if instance_id is None:
        server["instance_id"] = f"p{server.get('port', ServerSettings.port)}"
    elif not _INSTANCE_ID_RE.match(instance_id):
        load.bad("server", "instance_id", "1 to 40 characters from A-Z a-z 0-9 _ -")
    if "public_hosts" in server:
        for host in server["public_hosts"]:
            if not _HOST_RE.match(host):
                load.bad(
                    "server", "public_hosts", "host names (optionally host:port), e.g. mcp.example.com", host
                )
        server["public_hosts"] = tuple(host.lower() for host in server["public_hosts"])
    app = server.get("app")
    if app is not None and not _APP_RE.match(app):
        load.bad("server", "app", "package.module:attribute naming an MCPServer object")
    if "trusted_proxies" in server:
        server["trusted_proxies"] = _trusted_networks(load, server["trusted_proxies"])
    keys_file = server.get("request_state_keys_file")
    if keys_file:
        server["request_state_keys"], why = _read_key_ring(keys_file)
        if why:
            load.bad("server", "request_state_keys_file", why)


def _trusted_networks(load: _Load, proxies: Iterable[str]) -> tuple[str, ...]:
    networks = []
    for proxy in proxies:
        try:
            network = ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            load.bad("server", "trusted_proxies", "IP addresses or CIDR networks, e.g. 10.0.0.0/8", proxy)
            continue
        if network.prefixlen == 0:
            load.bad("server", "trusted_proxies", _EVERY_ADDRESS, proxy)
        elif network.prefixlen < (8 if network.version == 4 else 32):
            load.warn("server", "trusted_proxies", proxy, _BROAD_PROXIES)
        networks.append(str(network))
    return tuple(networks)


def _check_auth(load: _Load) -> None:
    auth = load.values["auth"]
    enabled = auth.get("enabled", True)
    if enabled:
        for key in ("server_url", "issuer_url", "jwks_url", "resource_server_url"):
            url = auth.get(key)
            if url and not _safe_transport(url):
                load.warn("auth", key, url, _PLAIN_HTTP)
    algorithms = auth.get("algorithms")
    if algorithms is not None and (
        not algorithms or any(name not in ALLOWED_ALGORITHMS for name in algorithms)
    ):
        allowed = ", ".join(ALLOWED_ALGORITHMS)
        load.bad(
            "auth", "algorithms", f"a non-empty list from {allowed} (never none or HS*)", list(algorithms)
        )
    for scope in auth.get("required_scopes", ()):
        if not _SCOPE_RE.match(scope):
            load.bad("auth", "required_scopes", "scope tokens without spaces, quotes or backslashes", scope)
    # server_url and issuer_url default to each other
    if auth.get("issuer_url") is None and auth.get("server_url") is not None:
        auth["issuer_url"] = auth["server_url"]
    if auth.get("server_url") is None and auth.get("issuer_url") is not None:
        auth["server_url"] = auth["issuer_url"]
    if enabled:
        _check_auth_enabled(load, auth)


def _check_auth_enabled(load: _Load, auth: dict[str, Any]) -> None:
    """What auth needs while it is on: the audience, an issuer, one source of keys."""
    if not auth.get("resource_server_url") and not load.unconvertible("auth", "resource_server_url"):
        load.bad("auth", "resource_server_url", _NO_AUDIENCE, "")
    unreadable_issuer = load.unconvertible("auth", "issuer_url") or load.unconvertible("auth", "server_url")
    if not auth.get("issuer_url") and not unreadable_issuer:
        load.bad("auth", "issuer_url", _NO_ISSUER, "")
    if auth.get("jwks_url") and auth.get("jwks_file"):
        load.bad("auth", "jwks_file", "either auth.jwks_file or auth.jwks_url, not both")
    jwks_file = auth.get("jwks_file")
    if jwks_file and (why := _check_jwks_file(jwks_file)):
        load.bad("auth", "jwks_file", why)


def _check_redis(load: _Load) -> None:
    redis = load.values["redis"]
    url = redis.get("url")
    if url is not None and (why := _check_redis_url(url)):
        load.bad("redis", "url", why)
    if redis.get("password") and redis.get("password_file"):
        load.bad("redis", "password_file", "either REDIS_PASSWORD or redis.password_file, not both")
    password_file = redis.get("password_file")
    if password_file:
        password = _read_password(password_file)
        if not password:
            load.bad("redis", "password_file", "a file holding the Redis password on its first line")
        redis["password"] = password or None
    prefix = redis.get("key_prefix")
    if prefix is not None and not _PREFIX_RE.match(prefix):
        load.bad("redis", "key_prefix", "1 to 64 characters from A-Z a-z 0-9 _ . : -")
    _check_redis_tls(load, redis)


def _check_redis_tls(load: _Load, redis: dict[str, Any]) -> None:
    """tls_* only with a rediss:// url; the client certificate and its key together and matching;
    the CA file holds certificates."""
    url = redis.get("url", RedisSettings.url)
    if _scheme(url) == "redis" and not load.unconvertible("redis", "url") and not _loopback(url):
        load.warn("redis", "url", url, _PLAIN_REDIS)
    given = [key for key in _REDIS_TLS_KEYS if redis.get(key)]
    if given and _scheme(url) != "rediss" and not load.unconvertible("redis", "url"):
        for key in given:
            load.bad(
                "redis",
                key,
                f"only with a rediss:// URL in {load.name_of('redis', 'url')} (it is {redact_url(url)})",
            )
        return
    cert, key = redis.get("tls_cert_file"), redis.get("tls_key_file")
    if bool(cert) != bool(key):
        given_key, missing = ("tls_cert_file", "tls_key_file") if cert else ("tls_key_file", "tls_cert_file")
        if not load.unconvertible("redis", missing):
            load.bad("redis", missing, f"set together with {load.name_of('redis', given_key)}", "")
    elif cert and key and not _key_pair_loads(cert, key):
        cert_name = load.name_of("redis", "tls_cert_file")
        load.bad(
            "redis", "tls_key_file", f"an unencrypted PEM private key matching the certificate in {cert_name}"
        )
    ca_file = redis.get("tls_ca_file")
    if ca_file and (why := _check_ca_file(ca_file)):
        load.bad("redis", "tls_ca_file", why)


def _check_logging(load: _Load) -> None:
    logging_section = load.values["logging"]
    if "handlers" not in logging_section:
        return
    given, handlers = logging_section["handlers"], []
    if not isinstance(given, list) or not given:
        load.bad("logging", "handlers", "a non-empty list of {type: console} or {type: file, filename: PATH}")
    else:
        for entry in given:
            handler = _log_handler(entry)
            if handler is None:
                accepted = "{type: console} or {type: file, filename: /absolute/path}"
                load.bad("logging", "handlers", accepted, entry)
            else:
                handlers.append(handler)
    logging_section["handlers"] = tuple(handlers)


def _log_handler(entry: Any) -> LogHandler | None:
    if not isinstance(entry, dict):
        return None
    if entry.get("type") == "console" and set(entry) <= {"type"}:
        return LogHandler("console")
    filename = entry.get("filename")
    keys_ok = set(entry) <= {"type", "filename", "level"}
    if entry.get("type") == "file" and keys_ok and isinstance(filename, str) and os.path.isabs(filename):
        return LogHandler("file", filename)
    return None


def _check_cors(load: _Load) -> None:
    cors = load.values["cors"]
    for origin in cors.get("allowed_origins", ()):
        if not _is_origin(origin):
            load.bad(
                "cors",
                "allowed_origins",
                "origins like https://app.example.com (scheme://host[:port], no '*')",
                origin,
            )
    if "allowed_methods" in cors:
        cors["allowed_methods"] = tuple(method.upper() for method in cors["allowed_methods"])
        for method in cors["allowed_methods"]:
            if method not in CORS_METHODS:
                load.bad("cors", "allowed_methods", ", ".join(CORS_METHODS), method)


def _is_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    return (
        origin != "*"
        and parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path == ""
        and not parts.query
        and "@" not in parts.netloc
    )


def _check_metrics(load: _Load) -> None:
    path = load.values["metrics"].get("path")
    if path is not None and (not path.startswith("/") or path in ("/mcp", "/health") or " " in path):
        load.bad("metrics", "path", "an absolute path other than /mcp and /health, e.g. /metrics")


def _check_tls(load: _Load) -> None:
    tls = load.values["tls"]
    if bool(tls.get("cert_file")) != bool(tls.get("key_file")):
        given, missing = ("cert_file", "key_file") if tls.get("cert_file") else ("key_file", "cert_file")
        load.bad("tls", missing, f"set together with tls.{given}", "")


def _check_bridge(load: _Load) -> None:
    bridge = load.values["bridge"]
    per_child = bridge.get("max_calls_per_child", BridgeSettings.max_calls_per_child)
    per_principal = bridge.get("max_calls_per_principal")
    if per_principal is None:  # not set: the default, within a lowered max_calls_per_child
        bridge["max_calls_per_principal"] = min(BridgeSettings.max_calls_per_principal, per_child)
    elif per_principal > per_child:
        load.bad(
            "bridge",
            "max_calls_per_principal",
            f"an integer from 1 to {load.name_of('bridge', 'max_calls_per_child')} ({per_child})",
        )
    command = bridge.get("command")
    if not command:
        return
    if load.values["server"].get("app"):
        both = f"either {load.name_of('server', 'app')} or {load.name_of('bridge', 'command')}, not both"
        load.bad("bridge", "command", both)
    executable = command[0]
    if os.path.isabs(executable):
        found = executable if os.path.isfile(executable) and os.access(executable, os.X_OK) else None
    else:
        found = shutil.which(executable)
    if found is None:
        load.bad(
            "bridge",
            "command",
            f"a command whose executable ({executable}) is an executable file, by absolute path or on PATH",
        )
    if bridge.get("sandbox") == "bubblewrap" and not bridge.get("state_dir"):
        load.bad(
            "bridge",
            "state_dir",
            f"a directory, required while {load.name_of('bridge', 'sandbox')} is bubblewrap",
        )
    env_file = bridge.get("env_file")
    if env_file:
        pairs, why = _read_env_file(env_file)
        if why:
            load.bad("bridge", "env_file", why)
        bridge["file_env"] = pairs
    names = {name for name, _ in bridge.get("env", ())} | {name for name, _ in bridge.get("file_env", ())}
    if len(names) > _MAX_ENV:
        load.bad("bridge", "env_file", f"at most {_MAX_ENV} variables with bridge.env")


def _read_env_file(path: str) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """NAME=value lines (blank lines and # comments skipped; no quoting, no expansion)."""
    why = f"a UTF-8 file of at most {_MAX_ENV} NAME=value lines (NAME: [A-Za-z_][A-Za-z0-9_]*), at most 1 MiB"
    try:
        if Path(path).stat().st_size > 1 << 20:
            return (), why
        # bytes, split on \n alone: text mode and splitlines() would also end a line (and start a
        # variable) at a lone \r, \f or U+2028 inside a value
        lines = Path(path).read_bytes().decode("utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return (), why
    pairs = []
    for number, raw in enumerate(lines, 1):
        line = raw.removesuffix("\r")  # a CRLF line end
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, eq, value = line.partition("=")
        name = name.strip()
        if not eq or not _ENV_NAME_RE.match(name):
            return (), why
        if _ENV_CONTROL_RE.search(value):  # the name and line are safe to show, the value never is
            return (), f"{why}; the value of {name} (line {number}) has a control character (\\r, tab, ...)"
        pairs.append((name, value))
    if len(pairs) > _MAX_ENV:
        return (), why
    return tuple(pairs), None


_CHECKS: tuple[Callable[[_Load], None], ...] = (
    _check_server,
    _check_auth,
    _check_redis,
    _check_logging,
    _check_cors,
    _check_metrics,
    _check_tls,
    _check_bridge,
)


# --------------------------------------------------------------------------------------------
# Files and URLs the checks read
# --------------------------------------------------------------------------------------------


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
            key = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            return (), why
        if len(key) < 32:
            return (), why
        keys.append(key)
    if not keys or len(set(keys)) != len(keys):
        return (), why + " (no duplicates)"
    return tuple(keys), None


def _read_password(path: str) -> str:
    """The file's text without surrounding white space; "" when it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def _check_jwks_file(path: str) -> str | None:
    why = 'a JSON Web Key Set file ({"keys": [...]} with public keys only)'
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return why
    keys = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(keys, list) or not keys:
        return why
    for key in keys:
        if not isinstance(key, dict) or "kty" not in key:
            return why
        if key.get("kty") == "oct" or any(private in key for private in ("d", "p", "q", "k")):
            return why
    return None


_REDIS_TLS_KEYS = ("tls_ca_file", "tls_cert_file", "tls_key_file")


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:
        return ""


def _check_ca_file(path: str) -> str | None:
    try:
        ssl.create_default_context(cafile=path)
    except (OSError, ssl.SSLError, ValueError):
        return "a file of PEM CA certificates"
    return None


def _key_pair_loads(cert: str, key: str) -> bool:
    """``cert`` is a PEM certificate (chain) and ``key`` its private key, not encrypted."""
    try:
        ssl.create_default_context().load_cert_chain(cert, key, password=_no_passphrase)
    except (OSError, ssl.SSLError, ValueError):
        return False
    return True


def _no_passphrase() -> str:
    raise ValueError("the key is encrypted: the server has no passphrase to give")


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
        database = parts.path.lstrip("/")
        return accepted if not parts.hostname or (database and not database.isdigit()) else None
    if parts.scheme == "unix":
        return None if parts.path.startswith("/") else accepted
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
    return urlsplit(url).scheme == "https" or _loopback(url)


def _loopback(url: str) -> bool:
    """The url's host is this host: localhost or a loopback address."""
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
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
_PLAIN_REDIS = (
    "plain TCP to a host other than this one: notes, rate-limit counts and the Redis password travel "
    "unprotected; use rediss:// with redis.tls_ca_file"
)
_NO_AUDIENCE = (
    "the URL of this MCP endpoint that tokens carry as aud, e.g. https://mcp.example.com/mcp "
    "(required while auth.enabled is true)"
)
_NO_ISSUER = (
    "the authorization server's issuer URL (AUTH_ISSUER_URL or AUTH_SERVER_URL; "
    "required while auth.enabled is true)"
)


def describe(settings: Settings) -> dict[str, Any]:
    """A log-safe summary (no secrets) for the start-up line."""
    server = settings.server
    return {
        "name": server.name,
        "instance_id": server.instance_id,
        "listen": f"{server.host}:{server.port}",
        "stateless": server.stateless,
        "app": server.app or ("bridge" if settings.bridge.enabled else "reference"),
        "auth": settings.auth.enabled,
        "redis": redact_url(settings.redis.url),
        "redis_tls": ("mutual" if settings.redis.tls_cert_file else "verified")
        if settings.redis.tls
        else False,
        "ratelimit_per_minute": settings.ratelimit.requests_per_minute
        if settings.ratelimit.enabled
        else None,
        "tls": settings.tls.enabled,
        "request_state_keys": len(server.request_state_keys),
        "bridge": {
            "executable": os.path.basename(settings.bridge.command[0]),
            "isolation": settings.bridge.isolation,
        }
        if settings.bridge.enabled
        else None,
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m mcpops_server.config --markdown")
    sys.stdout.write(markdown_table())
