"""Filter mcp_servers: the MCP servers an app host runs, checked and completed in one place.

Issue 12 (several servers per endpoint): every role that cares which servers exist (the mcp_server
role that installs and starts them, nginx that routes /<server>/mcp, the firewall, the monitoring
targets, the health gates) reads this filter's answer, so they cannot disagree about a name, a port,
a path or a user.
"""

from __future__ import annotations

import re

DOCUMENTATION = r"""
name: mcp_servers
author: mcpops.deploy maintainers
version_added: "0.3.0"
short_description: The MCP servers of an app host, validated and completed
description:
  - Input is the C(mcp_server_servers) list of one app host (its hostvars entry). Each server has a
    C(name), a C(kind) and its instance C(ports). C(kind=python) is an SDK 2.x C(MCPServer) object
    loaded into the mcpops runtime (C(app), empty for the reference toolset); C(kind=stdio) is a stdio
    server run by the runtime's bridge, given by exactly one of C(pypi) (one pinned requirement
    C(name==version)), C(npm) (C(package@version), an exact version) or C(executable) (an absolute path
    already on the host), plus its C(command) arguments.
  - Optional per server - C(default) (also served at C(/mcp); at most one server), C(scopes) (required
    scopes; default the host's C(mcp_server_auth_required_scopes)), C(isolation) (C(per_principal) or
    C(shared), stdio only), C(env) (plain environment), C(secrets) (environment values that are
    never written to a world-readable file), C(memory_max) (the C(MemoryMax=) of each of its instances, its
    children included; default the host's C(mcp_server_memory_max) for a python server; a stdio server
    needs at least 256M plus C(bridge.max_children) (1 when shared) times C(bridge.child_memory_max),
    which is its default), C(bridge) (for stdio servers, its own C(bridge.*) settings, e.g.
    C(max_children), checked against the runtime's ranges), C(egress) (IP networks the server may connect to
    besides Redis, each alone for every port or with one port or range, C(192.0.2.7:443),
    C([2001:db8::1]:443), C(192.0.2.0/24:8000-8100); returned as C({network, ports}), C(ports) a list
    of C([low, high]), empty for every port).
  - Dependency constraints, inputs of the server's release id (a change makes a new release) -
    C(constraints) (pypi only; at most 64 requirement specifiers that constrain its dependencies,
    e.g. C(mcp<2), passed to uv as a constraints file), C(exclude_newer) (pypi only; a date or an
    RFC 3339 time with its offset; resolve as if nothing newer were published), C(overrides) (npm
    only; package name to one exact version, written as package.json C(overrides)).
  - Without C(mcp_server_servers), the host runs one server named C(mcp) from the pre-0.3 variables
    (C(mcp_server_app), C(mcp_server_ports)), the default at C(/mcp), exactly as before.
  - Every error names the item and field, the value, and what is accepted (secrets are never shown).
    No string may hold a control character (newline and tab included).
  - The answer holds the names of a server's secrets (C(secret_names)), never their values - tasks that
    loop over servers show their items at -v and on failure.
  - Each server gets C(path) (C(/<name>/mcp)), C(user) (its own system user, C(mcp-<name>)) and
    C(package) (C(name) and C(version) of the pinned package, for stdio servers from a registry).
positional: _input
options:
  _input:
    description: The hostvars of one app host (C(hostvars[host])), or a dict with the same keys.
    type: dict
    required: true
"""

EXAMPLES = r"""
# The servers of this host
servers: "{{ hostvars[inventory_hostname] | mcpops.deploy.mcp_servers }}"

# In the inventory (group_vars/mcp_servers.yml)
mcp_server_servers:
  - {name: notes, kind: python, ports: [8000, 8001], default: true}
  - name: time
    kind: stdio
    pypi: mcp-server-time==2025.9.25
    command: [mcp-server-time, --local-timezone, UTC]
    ports: [8100]
  - name: everything
    kind: stdio
    npm: "@modelcontextprotocol/server-everything@2026.8.31"
    ports: [8200]
    isolation: shared
    secrets: {API_KEY: "{{ vault_everything_api_key }}"}
    egress: [192.0.2.0/24]
"""

RETURN = r"""
_value:
  description:
    - One dict per server, in the inventory's order, with every field present - name, kind, default,
      ports, path, user, scopes, app, pypi, npm, executable, command, package, isolation, env,
      secret_names (sorted; the values stay in mcp_server_servers), egress, memory_max, bridge,
      constraints, exclude_newer (empty when not given), overrides.
  type: list
  elements: dict
"""

# Matched with fullmatch: a pattern ending in `$` would accept a trailing newline.
NAME = re.compile(r"[a-z]([a-z0-9-]{0,22}[a-z0-9])?")
RESERVED = frozenset({"health", "metrics", "well-known", "static", "api"})
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
PYPI_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9._,-]+\])?==([A-Za-z0-9.+!_-]+)")
NPM_PIN = re.compile(
    r"((?:@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*)@([0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?)"
)
APP_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
KINDS = ("python", "stdio")
ISOLATION = ("per_principal", "shared")
FIELDS = frozenset(
    {
        "name",
        "kind",
        "ports",
        "default",
        "scopes",
        "app",
        "pypi",
        "npm",
        "executable",
        "command",
        "isolation",
        "env",
        "secrets",
        "egress",
        "memory_max",
        "bridge",
        "constraints",
        "exclude_newer",
        "overrides",
    }
)
MEMORY = re.compile(r"([0-9]+)([KMGT]?)|infinity")
SIZE = re.compile(r"([0-9]+)([KMGT]?)")
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
# Control characters (newline and tab included) end a line of child.env, of a unit file or of a log,
# so no string of a server may hold one; nor the line breaks the runtime's reader of child.env also
# splits at (str.splitlines: the C1 controls, U+2028 and U+2029).
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
NO_CONTROL = "without control characters (newline, tab, ...)"
# The bridge.* settings a server may set for itself, with the ranges the runtime's check-config
# accepts (server/mcpops_server/config.py, BridgeSettings), copied so that a bad value is refused
# before a host changes; tests/unit/test_mcp_servers_filter.py compares them with config.py.
# (kind, lowest, highest): int and size (bytes) include both ends; seconds excludes `lowest` when
# the kind is "seconds>"; choice lists the words.
BRIDGE = {
    "max_children": ("int", 1, 10_000),
    "max_calls_per_child": ("int", 1, 10_000),
    "max_calls_per_principal": ("int", 1, 10_000),
    "idle_timeout": ("seconds>", 0, 86400 * 7),
    "call_timeout": ("seconds>", 0, 86400),
    "startup_timeout": ("seconds>", 0, 600),
    "restart_backoff_max": ("seconds", 0, 3600),
    "stop_timeout": ("seconds>", 0, 300),
    "max_line_bytes": ("int", 1024, 1 << 28),
    "max_messages_per_second": ("int", 1, 1_000_000),
    "max_stderr_lines_per_second": ("int", 0, 100_000),
    "child_memory_max": ("size", 16 << 20, 1 << 40),
    "child_tasks_max": ("int", 8, 100_000),
    "sandbox": ("choice", "bubblewrap", "none"),
}
BRIDGE_KEYS = frozenset(BRIDGE)
# The runtime's defaults for the memory a stdio server needs: its instance, plus each child.
INSTANCE_MEMORY = 256 << 20
DEFAULT_MAX_CHILDREN = 16
DEFAULT_CHILD_MEMORY = 256 << 20
LEGACY_NAME = "mcp"


class ServersError(ValueError):
    """A problem with mcp_server_servers; the message names the field, the value and what is accepted."""


def _bad(where: str, value: object, accepted: str) -> ServersError:
    return ServersError(f"mcp_server_servers{where} = {value!r}: accepted is {accepted}")


def _text(where: str, value: object, accepted: str, secret: bool = False) -> str:
    """A string (or number) as text, refused when it holds a control character."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _bad(where, "<hidden>" if secret else value, accepted)
    text = str(value)
    if CONTROL.search(text):
        raise _bad(where, "<hidden>" if secret else value, f"{accepted}, {NO_CONTROL}")
    return text


def _bytes(value: object, pattern: re.Pattern) -> int | None:
    """A size in bytes: an int, or digits with a suffix of `pattern`; None when it is neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    m = pattern.fullmatch(value) if isinstance(value, str) else None
    return int(m.group(1)) * UNITS[m.group(2)] if m else None


def _size_text(number: int) -> str:
    """Bytes the way systemd and the runtime read them: the largest suffix that divides evenly."""
    for suffix in ("T", "G", "M", "K"):
        if number and number % UNITS[suffix] == 0:
            return f"{number // UNITS[suffix]}{suffix}"
    return str(number)


def _bridge_setting(name: str, key: str, value: object) -> object:
    """One bridge.* setting checked against the runtime's range (BRIDGE), in the type it reads."""
    kind, *spec = BRIDGE[key]
    if kind == "choice":
        accepted = "one of " + ", ".join(spec)
        ok = value in spec
    elif kind == "size":
        lowest, highest = spec
        accepted = f"a size from {_size_text(lowest)} to {_size_text(highest)}"
        accepted += ": bytes, or digits with K, M, G or T (256M)"
        number = _bytes(value, SIZE)
        ok = number is not None and lowest <= number <= highest
        value = number if ok and isinstance(value, str) and value.isdigit() else value
    elif kind == "int":
        lowest, highest = spec
        accepted = f"an integer from {lowest} to {highest}"
        number = int(value) if isinstance(value, str) and value.isascii() and value.isdigit() else value
        ok = isinstance(number, int) and not isinstance(number, bool) and lowest <= number <= highest
        value = number if ok else value
    else:
        lowest, highest = spec
        above = kind == "seconds>"
        accepted = f"a number of seconds {'>' if above else '>='} {lowest:g} and <= {highest:g}"
        number = value
        if isinstance(value, str) and re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
            number = float(value)
        ok = isinstance(number, (int, float)) and not isinstance(number, bool)
        ok = ok and lowest <= number <= highest and not (above and number == lowest)
        value = number if ok else value
    if not ok:
        raise ServersError(f"{name} = {value!r}: accepted is {accepted}")
    return value


def _port(where: str, value: object) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or not 1024 <= int(value) <= 65535:
        raise _bad(where, value, "a port from 1024 to 65535")
    return int(value)


EGRESS = (
    "an IP address or network, alone (every port) or with one port or port range: 192.0.2.0/24, "
    "2001:db8::/32, 192.0.2.7:443, [2001:db8::1]:443, 192.0.2.0/24:8000-8100"
)
EGRESS_PORTS = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


def _network(where: str, value: object) -> dict:
    """One egress entry as {"network", "ports"}: the drop-in's IPAddressAllow= takes the network,
    the egress table (templates/egress.nft.j2) the ports, [[low, high], ...] or [] for every port."""
    import ipaddress

    if not isinstance(value, str):
        raise _bad(where, value, EGRESS)
    address, ports, bracketed = value, None, value.startswith("[")
    if bracketed:
        # [IPv6]:port, as in a URL; the brackets alone are accepted too.
        close = value.find("]")
        rest = value[close + 1 :] if close > 0 else "?"
        if rest and not rest.startswith(":"):
            raise _bad(where, value, EGRESS)
        address, ports = value[1:close], (rest[1:] if rest else None)
    elif value.count(":") == 1:
        # One colon is IPv4 with a port; an IPv6 address has two or more (and needs brackets for a port).
        address, ports = value.split(":")
    try:
        if "%" in address:
            raise ValueError("zone ids name an interface, not a network")
        network = ipaddress.ip_network(address, strict=False)
    except ValueError:
        raise _bad(where, value, EGRESS) from None
    if bracketed and network.version != 6:
        raise _bad(where, value, EGRESS + " (brackets only around IPv6)")
    if ports is None:
        return {"network": str(network), "ports": []}
    m = EGRESS_PORTS.fullmatch(ports)
    low, high = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
    if not 1 <= low <= high <= 65535:
        raise _bad(where, value, EGRESS + " (ports 1 to 65535, the lower first)")
    return {"network": str(network), "ports": [[low, high]]}


def _environment(where: str, value: object, secret: bool) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(where, "<hidden>" if secret else value, "a mapping of NAME: value")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise _bad(
                f"{where}.{key!r}" if isinstance(key, str) and CONTROL.search(key) else f"{where}.{key}",
                key,
                "an environment variable name (A-Z, 0-9, _; not starting with a digit)",
            )
        out[key] = _text(f"{where}.{key}", val, "a string (quote numbers and booleans)", secret=secret)
    return out


def _one(i: int, raw: object, host_scopes: list[str], host_bridge: dict | None = None) -> dict:
    if not isinstance(raw, dict):
        raise _bad(f"[{i}]", raw, "a mapping with name, kind and ports")
    name = raw.get("name")
    at = f"[{i}]" if not isinstance(name, str) or CONTROL.search(name) else f"[{i}] ({name})"
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise _bad(f"{at}", unknown, "only the fields " + ", ".join(sorted(FIELDS)))
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in RESERVED:
        raise _bad(
            f"{at}.name",
            name,
            "1 to 24 lower-case letters, digits and dashes, starting with a letter, not ending with a dash, "
            "and none of " + ", ".join(sorted(RESERVED)),
        )
    kind = raw.get("kind", "python")
    if kind not in KINDS:
        raise _bad(
            f"{at}.kind", kind, "python (an SDK MCPServer object) or stdio (a command the bridge runs)"
        )
    ports = raw.get("ports")
    if not isinstance(ports, list) or not ports:
        raise _bad(f"{at}.ports", ports, "a non-empty list of ports")
    ports = [_port(f"{at}.ports[{j}]", p) for j, p in enumerate(ports)]
    default = raw.get("default", False)
    if not isinstance(default, bool):
        raise _bad(f"{at}.default", default, "true or false")
    scopes = raw.get("scopes", host_scopes)
    if not isinstance(scopes, list) or not all(
        isinstance(s, str) and s and " " not in s and not CONTROL.search(s) for s in scopes
    ):
        raise _bad(f"{at}.scopes", scopes, f"a list of scope names without spaces, {NO_CONTROL}")
    sources = {k: raw.get(k) for k in ("pypi", "npm", "executable") if raw.get(k) not in (None, "")}
    command = raw.get("command", [])
    if not isinstance(command, list):
        raise _bad(f"{at}.command", command, "a list of arguments")
    command = [_text(f"{at}.command[{j}]", c, "an argument (a string)") for j, c in enumerate(command)]
    app = raw.get("app") or ""
    package = {}
    if kind == "python":
        if sources:
            raise _bad(
                f"{at}", sorted(sources), "no pypi, npm or executable for kind python (that is kind stdio)"
            )
        if app and (not isinstance(app, str) or not APP_PATH.fullmatch(app)):
            raise _bad(
                f"{at}.app",
                app,
                "module.path:attribute of an MCPServer object, or empty for the reference toolset",
            )
        if command:
            raise _bad(f"{at}.command", command, "no command for kind python (it is loaded from app)")
        if "isolation" in raw:
            raise _bad(
                f"{at}.isolation", raw["isolation"], "no isolation for kind python (stdio servers only)"
            )
    else:
        if app:
            raise _bad(f"{at}.app", app, "no app for kind stdio (give pypi, npm or executable)")
        if len(sources) != 1:
            raise _bad(
                f"{at}", sorted(sources) or "none", "exactly one of pypi, npm, executable for kind stdio"
            )
        ((source, spec),) = sources.items()
        if source == "pypi":
            m = PYPI_PIN.fullmatch(str(spec))
            if not m:
                raise _bad(
                    f"{at}.pypi", spec, "one pinned requirement, name==version (mcp-server-time==2025.9.25)"
                )
            package = {"name": m.group(1), "version": m.group(3)}
        elif source == "npm":
            m = NPM_PIN.fullmatch(str(spec))
            if not m:
                raise _bad(
                    f"{at}.npm",
                    spec,
                    "package@version with an exact version (@modelcontextprotocol/server-everything@1.2.3)",
                )
            package = {"name": m.group(1), "version": m.group(2)}
        elif not _text(f"{at}.executable", spec, "an absolute path").startswith("/"):
            raise _bad(f"{at}.executable", spec, "an absolute path of an executable already on the host")
    isolation = raw.get("isolation", "per_principal")
    if isolation not in ISOLATION:
        raise _bad(
            f"{at}.isolation", isolation, "per_principal (a child per token subject) or shared (one pool)"
        )
    memory_max = raw.get("memory_max", "")
    memory_max = "" if memory_max is None else memory_max
    if memory_max != "" and (
        isinstance(memory_max, bool)
        or not isinstance(memory_max, (str, int))
        or not MEMORY.fullmatch(str(memory_max))
    ):
        raise _bad(
            f"{at}.memory_max",
            memory_max,
            "a systemd size (768M, 2G) or infinity, the bound of its instances and children",
        )
    bridge = raw.get("bridge") or {}
    if bridge and kind != "stdio":
        raise _bad(f"{at}.bridge", bridge, "no bridge settings for kind python (stdio servers only)")
    if not isinstance(bridge, dict) or not set(bridge) <= BRIDGE_KEYS:
        raise _bad(f"{at}.bridge", bridge, "a mapping of bridge settings: " + ", ".join(sorted(BRIDGE_KEYS)))
    bridge = {
        key: _bridge_setting(f"mcp_server_servers{at}.bridge.{key}", key, value)
        for key, value in bridge.items()
    }
    if kind == "stdio":
        memory_max = _stdio_memory(at, memory_max, isolation, {**(host_bridge or {}), **bridge})
    egress = raw.get("egress", [])
    if not isinstance(egress, list):
        raise _bad(f"{at}.egress", egress, "a list of entries, each " + EGRESS)
    return {
        "name": name,
        "kind": kind,
        "default": default,
        "ports": ports,
        "path": f"/{name}/mcp",
        "user": f"mcp-{name}",
        "scopes": list(scopes),
        "app": app,
        "pypi": str(sources.get("pypi", "")),
        "npm": str(sources.get("npm", "")),
        "executable": str(sources.get("executable", "")),
        "command": command,
        "package": package,
        "isolation": isolation if kind == "stdio" else "",
        "env": _environment(f"{at}.env", raw.get("env"), secret=False),
        # Names only: every task that loops over servers may print its item (-v, a failure), so
        # the values stay in mcp_server_servers, read by the one no_log task that writes child.env.
        "secret_names": sorted(_environment(f"{at}.secrets", raw.get("secrets"), secret=True)),
        "egress": [_network(f"{at}.egress[{j}]", e) for j, e in enumerate(egress)],
        "memory_max": str(memory_max),
        "bridge": bridge,
        **_resolution(at, next(iter(sources), ""), raw, package),
    }


def _stdio_memory(at: str, memory_max: object, isolation: str, bridge: dict) -> str:
    """A stdio server's MemoryMax=: its instance plus every child it may start, each bounded by
    bridge.child_memory_max; computed when not given, refused when given smaller."""
    children = 1 if isolation == "shared" else int(bridge.get("max_children", DEFAULT_MAX_CHILDREN))
    child = _bytes(bridge.get("child_memory_max", DEFAULT_CHILD_MEMORY), SIZE)
    needed = INSTANCE_MEMORY + children * child
    if memory_max == "":
        return _size_text(needed)
    if memory_max == "infinity" or _bytes(memory_max, MEMORY) >= needed:
        return str(memory_max)
    count = "bridge.max_children" if isolation != "shared" else "1 (isolation shared)"
    raise _bad(
        f"{at}.memory_max",
        memory_max,
        f"at least {_size_text(needed)}, the instance's {_size_text(INSTANCE_MEMORY)} plus {count} "
        f"({children}) x bridge.child_memory_max ({_size_text(child)}), or infinity (or lower those two)",
    )


# Dependency constraints of a pypi or npm server (files/server_artifacts.py takes them as
# --constraint, --exclude-newer and --override; they are inputs of the release id and of its lock).
CONSTRAINT_CLAUSE = r"(?:===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9][A-Za-z0-9.*+!_-]*"
CONSTRAINT = re.compile(
    rf"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\[[A-Za-z0-9._,-]+\])?\s*{CONSTRAINT_CLAUSE}"
    rf"(?:\s*,\s*{CONSTRAINT_CLAUSE})*"
)
EXCLUDE_NEWER = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2}))?"
)
NPM_NAME = re.compile(r"(?:@[A-Za-z0-9~-][A-Za-z0-9._~-]*/)?[A-Za-z0-9~-][A-Za-z0-9._~-]*")
NPM_VERSION = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?")
MAX_PINS = 64


def _exclude_newer(where: str, value: object) -> str:
    """A date or an RFC 3339 time with its offset; YAML's own dates and times are taken too."""
    import datetime as dt

    if value == "":
        return ""
    accepted = "a date (2025-10-01) or an RFC 3339 time with its offset (2025-10-01T12:00:00Z)"
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)  # YAML: no offset is UTC
        return aware.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if not isinstance(value, str) or not EXCLUDE_NEWER.fullmatch(value):
        raise _bad(where, value, accepted)
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(where, value, accepted) from None
    return value


def _resolution(at: str, source: str, raw: dict, package: dict) -> dict:
    """constraints and exclude_newer (pypi: uv's --constraint and --exclude-newer) and overrides (npm:
    package.json overrides), refused for any other kind of server."""
    fields = {"constraints": "pypi", "exclude_newer": "pypi", "overrides": "npm"}
    given = {k: raw[k] for k in fields if raw.get(k) not in (None, "", [], {})}
    for field, only in fields.items():
        if field in given and source != only:
            raise _bad(f"{at}.{field}", given[field], f"nothing: {field} is for servers from {only} only")
    constraints = given.get("constraints", [])
    if not isinstance(constraints, list) or len(constraints) > MAX_PINS:
        raise _bad(f"{at}.constraints", constraints, f"a list of at most {MAX_PINS} requirement specifiers")
    for j, item in enumerate(constraints):
        text = item if isinstance(item, str) and len(item) <= 200 and not CONTROL.search(item) else ""
        if not CONSTRAINT.fullmatch(text):
            raise _bad(
                f"{at}.constraints[{j}]",
                item,
                "a requirement specifier constraining a dependency, a name and version clauses (mcp<2, "
                f"pydantic>=2,<3), without marker or URL, {NO_CONTROL}",
            )
    exclude_newer = _exclude_newer(f"{at}.exclude_newer", given.get("exclude_newer", ""))
    overrides = given.get("overrides", {})
    if not isinstance(overrides, dict) or len(overrides) > MAX_PINS:
        raise _bad(f"{at}.overrides", overrides, f"a mapping of at most {MAX_PINS} package: exact version")
    for key, version in overrides.items():
        if not isinstance(key, str) or not NPM_NAME.fullmatch(key) or key == package.get("name"):
            raise _bad(
                f"{at}.overrides",
                key,
                f"npm package names (scoped allowed), not the server's own package, {NO_CONTROL}",
            )
        if not isinstance(version, str) or not NPM_VERSION.fullmatch(version):
            raise _bad(f"{at}.overrides.{key}", version, "one exact version, X.Y.Z (quoted), no range or tag")
    return {
        "constraints": list(constraints),
        "exclude_newer": exclude_newer,
        "overrides": dict(sorted(overrides.items())),
    }


def _get(hostvars, key: str):
    """One variable of a host, templated on access (Ansible's HostVarsVars), or None."""
    try:
        return hostvars[key]
    except KeyError:
        return None


def _host_bridge(extra_config: object) -> dict:
    """The bridge.* settings every server gets from mcp_server_extra_config (a server's own win),
    checked like a server's: they size the memory of the servers that do not set their own."""
    bridge = extra_config.get("bridge") if isinstance(extra_config, dict) else None
    if not isinstance(bridge, dict):
        return {}
    return {
        key: _bridge_setting(f"mcp_server_extra_config.bridge.{key}", key, value)
        for key, value in bridge.items()
        if key in BRIDGE
    }


def mcp_servers(hostvars) -> list[dict]:
    scopes = list(_get(hostvars, "mcp_server_auth_required_scopes") or [])
    raw = _get(hostvars, "mcp_server_servers")
    if raw in (None, "", []):
        ports = _get(hostvars, "mcp_server_instances") or _get(hostvars, "mcp_server_ports") or [8000]
        legacy = {"name": LEGACY_NAME, "kind": "python", "ports": list(ports), "default": True}
        if _get(hostvars, "mcp_server_app"):
            legacy["app"] = _get(hostvars, "mcp_server_app")
        return [_one(0, legacy, scopes)]
    if not isinstance(raw, list):
        raise ServersError(f"mcp_server_servers = {raw!r}: accepted is a list of servers")
    host_bridge = _host_bridge(_get(hostvars, "mcp_server_extra_config"))
    servers = [_one(i, item, scopes, host_bridge) for i, item in enumerate(raw)]
    seen_names: set[str] = set()
    seen_ports: dict[int, str] = {}
    for i, s in enumerate(servers):
        if s["name"] in seen_names:
            raise _bad(f"[{i}] ({s['name']}).name", s["name"], "a name used by one server only")
        seen_names.add(s["name"])
        for port in s["ports"]:
            if port in seen_ports:
                raise _bad(
                    f" ({s['name']}).ports", port, f"a port no other server uses ({seen_ports[port]} has it)"
                )
            seen_ports[port] = s["name"]
    defaults = [s["name"] for s in servers if s["default"]]
    if len(defaults) > 1:
        raise _bad("", defaults, "at most one server with default: true (the one also served at /mcp)")
    return servers


def _filter(hostvars):
    try:
        return mcp_servers(hostvars)
    except ServersError as exc:
        from ansible.errors import AnsibleFilterError

        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {"mcp_servers": _filter}
