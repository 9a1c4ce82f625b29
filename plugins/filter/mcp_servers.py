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
    children included; default the host's C(mcp_server_memory_max)), C(bridge) (for stdio servers, its own
    C(bridge.*) settings, e.g. C(max_children)), C(egress) (IP networks the server may connect to
    besides loopback and Redis).
  - Without C(mcp_server_servers), the host runs one server named C(mcp) from the pre-0.3 variables
    (C(mcp_server_app), C(mcp_server_ports)), the default at C(/mcp), exactly as before.
  - Every error names the item and field, the value, and what is accepted (secrets are never shown).
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
      ports, path, user, scopes, app, pypi, npm, executable, command, package, isolation, env, secrets,
      egress, memory_max, bridge.
  type: list
  elements: dict
"""

NAME = re.compile(r"^[a-z][a-z0-9-]{0,22}[a-z0-9]$|^[a-z]$")
RESERVED = frozenset({"health", "metrics", "well-known", "static", "api"})
ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
PYPI_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9._,-]+\])?==([A-Za-z0-9.+!_-]+)$")
NPM_PIN = re.compile(
    r"^((?:@[a-z0-9][a-z0-9._-]*/)?[a-z0-9][a-z0-9._-]*)@(\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?)$"
)
APP_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
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
    }
)
MEMORY = re.compile(r"^([0-9]+[KMGT]?|infinity)$")
# bridge.* settings a server may set for itself (the runtime's check-config checks their ranges).
BRIDGE_KEYS = frozenset(
    {
        "max_children",
        "max_calls_per_child",
        "idle_timeout",
        "call_timeout",
        "startup_timeout",
        "restart_backoff_max",
        "stop_timeout",
        "max_line_bytes",
        "max_messages_per_second",
        "max_stderr_lines_per_second",
    }
)
LEGACY_NAME = "mcp"


class ServersError(ValueError):
    """A problem with mcp_server_servers; the message names the field, the value and what is accepted."""


def _bad(where: str, value: object, accepted: str) -> ServersError:
    return ServersError(f"mcp_server_servers{where} = {value!r}: accepted is {accepted}")


def _port(where: str, value: object) -> int:
    if isinstance(value, bool) or not str(value).isdigit() or not 1024 <= int(value) <= 65535:
        raise _bad(where, value, "a port from 1024 to 65535")
    return int(value)


def _network(where: str, value: object) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_network(str(value), strict=False))
    except ValueError:
        raise _bad(where, value, "an IP address or network (192.0.2.0/24, 2001:db8::/32)") from None


def _environment(where: str, value: object, secret: bool) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(where, "<hidden>" if secret else value, "a mapping of NAME: value")
    out = {}
    for key, val in value.items():
        if not isinstance(key, str) or not ENV_NAME.match(key):
            raise _bad(
                f"{where}.{key}", key, "an environment variable name (A-Z, 0-9, _; not starting with a digit)"
            )
        if not isinstance(val, (str, int, float)) or isinstance(val, bool):
            shown = "<hidden>" if secret else val
            raise _bad(f"{where}.{key}", shown, "a string (quote numbers and booleans)")
        out[key] = str(val)
    return out


def _one(i: int, raw: object, host_scopes: list[str]) -> dict:
    if not isinstance(raw, dict):
        raise _bad(f"[{i}]", raw, "a mapping with name, kind and ports")
    name = raw.get("name")
    at = f"[{i}]" if not isinstance(name, str) else f"[{i}] ({name})"
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise _bad(f"{at}", unknown, "only the fields " + ", ".join(sorted(FIELDS)))
    if not isinstance(name, str) or not NAME.match(name) or name in RESERVED:
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
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s and " " not in s for s in scopes):
        raise _bad(f"{at}.scopes", scopes, "a list of scope names without spaces")
    sources = {k: raw.get(k) for k in ("pypi", "npm", "executable") if raw.get(k) not in (None, "")}
    command = raw.get("command", [])
    if not isinstance(command, list) or not all(isinstance(c, (str, int)) for c in command):
        raise _bad(f"{at}.command", command, "a list of arguments")
    command = [str(c) for c in command]
    app = raw.get("app") or ""
    package = {}
    if kind == "python":
        if sources:
            raise _bad(
                f"{at}", sorted(sources), "no pypi, npm or executable for kind python (that is kind stdio)"
            )
        if app and (not isinstance(app, str) or not APP_PATH.match(app)):
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
            m = PYPI_PIN.match(str(spec))
            if not m:
                raise _bad(
                    f"{at}.pypi", spec, "one pinned requirement, name==version (mcp-server-time==2025.9.25)"
                )
            package = {"name": m.group(1), "version": m.group(3)}
        elif source == "npm":
            m = NPM_PIN.match(str(spec))
            if not m:
                raise _bad(
                    f"{at}.npm",
                    spec,
                    "package@version with an exact version (@modelcontextprotocol/server-everything@1.2.3)",
                )
            package = {"name": m.group(1), "version": m.group(2)}
        elif not str(spec).startswith("/") or "\0" in str(spec):
            raise _bad(f"{at}.executable", spec, "an absolute path of an executable already on the host")
    isolation = raw.get("isolation", "per_principal")
    if isolation not in ISOLATION:
        raise _bad(
            f"{at}.isolation", isolation, "per_principal (a child per token subject) or shared (one pool)"
        )
    memory_max = raw.get("memory_max", "")
    if memory_max not in ("", None) and not MEMORY.match(str(memory_max)):
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
    for key, value in bridge.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise _bad(f"{at}.bridge.{key}", value, "a positive number")
    egress = raw.get("egress", [])
    if not isinstance(egress, list):
        raise _bad(f"{at}.egress", egress, "a list of IP addresses or networks")
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
        "secrets": _environment(f"{at}.secrets", raw.get("secrets"), secret=True),
        "egress": [_network(f"{at}.egress[{j}]", e) for j, e in enumerate(egress)],
        "memory_max": str(memory_max or ""),
        "bridge": dict(bridge),
    }


def _get(hostvars, key: str):
    """One variable of a host, templated on access (Ansible's HostVarsVars), or None."""
    try:
        return hostvars[key]
    except KeyError:
        return None


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
    servers = [_one(i, item, scopes) for i, item in enumerate(raw)]
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
