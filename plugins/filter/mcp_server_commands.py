"""Filter mcp_server_commands: the command line and release of each stdio server of a host.

The mcp_server role builds every stdio server's packages on the controller (server_artifacts.py) and
asks this filter which argv each server's bridge runs: the entry point named in the inventory's
`command`, inside that server's release directory.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: mcp_server_commands
author: mcpops.deploy maintainers
version_added: "0.3.0"
short_description: The argv and release directory of each stdio MCP server
description:
  - Input is the list of servers from M(mcpops.deploy.mcp_servers) (filter); the first argument the
    registered results of running C(server_artifacts.py) once per stdio server from PyPI or npm (each
    result's C(item) is the server, its C(stdout) the script's JSON).
  - C(command) of a pypi or npm server is C([<entry point>, *args]) - a console script of the PyPI
    package or a bin entry of the npm package; empty means the package's only one, no arguments. For
    an C(executable) server, the argv is the executable followed by C(command).
  - The argv names the release directory (C(<base>/<name>/releases/<release>)), not a C(current) link,
    so a running instance keeps what it loaded until it is restarted.
  - An unknown entry point, or an empty command for a package with several, fails naming the server,
    the field, the value and the entry points there are.
positional: _input, results, base
options:
  _input:
    description: The servers (output of the mcp_servers filter).
    type: list
    elements: dict
    required: true
  results:
    description: Registered loop results of server_artifacts.py.
    type: list
    elements: dict
    required: true
  base:
    description: Directory holding one directory per server.
    type: str
    default: /opt/mcpops/servers
"""

EXAMPLES = r"""
commands: "{{ servers | mcpops.deploy.mcp_server_commands(artefacts.results) }}"
# => {"time": {"argv": ["/opt/mcpops/servers/time/releases/<release>/venv/bin/mcp-server-time",
#                        "--local-timezone", "UTC"], "release": "<release>", "dir": "/opt/.../<release>"}}
"""

RETURN = r"""
_value:
  description:
    - Server name to C(argv) (list), C(release) (release id, empty for executable servers) and C(dir).
  type: dict
"""


class ServersError(ValueError):
    """A stdio server's command that its package cannot run."""


def _bad(where: str, value: object, accepted: str) -> ServersError:
    return ServersError(f"mcp_server_servers{where} = {value!r}: accepted is {accepted}")


def _entry_points(build: dict) -> dict[str, list[str]]:
    """Entry point or bin name -> argv with PREFIX, from server_artifacts.py's answer."""
    if build.get("kind") == "npm" or "commands" in build:
        return {k: list(v) for k, v in (build.get("commands") or {}).items()}
    return {k: [f"PREFIX/venv/bin/{k}"] for k in (build.get("entry_points") or {})}


def mcp_server_commands(servers, results, base: str = "/opt/mcpops/servers") -> dict:
    """Each stdio server's release and argv, from the controller's artefacts.

    ``results`` are the registered results of running server_artifacts.py once per packaged server
    (``item`` the server, ``stdout`` the script's JSON). The argv names the release directory
    (``<base>/<name>/releases/<release>``), so an instance keeps running what it loaded until it is
    restarted. ``command`` of a pypi/npm server is ``[entry point, *args]`` (empty: the package's only
    entry point); of an executable server, the arguments after the executable.
    """
    import json

    builds = {}
    for r in results or []:
        item = r.get("item") or {}
        if item.get("name") and r.get("stdout"):
            builds[item["name"]] = json.loads(r["stdout"])
    out = {}
    for s in servers:
        if s.get("kind") != "stdio":
            continue
        at = f" ({s['name']})"
        if s.get("executable"):
            out[s["name"]] = {"argv": [s["executable"], *s["command"]], "release": "", "dir": ""}
            continue
        build = builds.get(s["name"])
        if build is None:
            raise ServersError(f"mcp_server_servers{at}: no artefact was built for it on the controller")
        eps = _entry_points(build)
        release_dir = f"{base}/{s['name']}/releases/{build['release']}"
        what = "console scripts" if s.get("pypi") else "bin entries"
        if s["command"]:
            name, args = s["command"][0], s["command"][1:]
            if name not in eps:
                raise _bad(
                    f"{at}.command[0]",
                    name,
                    f"one of the {what} of {s.get('pypi') or s.get('npm')}: "
                    + (", ".join(sorted(eps)) or "none"),
                )
        elif len(eps) == 1:
            (name,), args = eps, []
        else:
            raise _bad(
                f"{at}.command",
                [],
                f"[<entry point>, args...] naming one of the {what} of {s.get('pypi') or s.get('npm')}: "
                + (", ".join(sorted(eps)) or "none (it has no command to run)"),
            )
        argv = [a.replace("PREFIX", release_dir, 1) if a.startswith("PREFIX/") else a for a in eps[name]]
        out[s["name"]] = {"argv": argv + list(args), "release": build["release"], "dir": release_dir}
    return out


def _commands_filter(servers, results, base="/opt/mcpops/servers"):
    try:
        return mcp_server_commands(servers, results, base)
    except ServersError as exc:
        from ansible.errors import AnsibleFilterError

        raise AnsibleFilterError(str(exc)) from None


class FilterModule:
    def filters(self):
        return {"mcp_server_commands": _commands_filter}
