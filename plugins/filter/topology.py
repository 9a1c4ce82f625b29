"""Filters that derive the deployment's topology from the inventory.

One place knows how an MCP server instance is named and addressed, so the mcp_server role (which
starts the instances), the nginx role (which routes to them) and the firewall role (which lets the
load balancer reach them) can never disagree.
"""

from __future__ import annotations

import hashlib
import re

DOCUMENTATION = r"""
name: mcp_instances
short_description: The MCP server instances of a list of hosts, with address, port and route id
description:
  - Input is a list of inventory host names (for example C(groups['mcp_servers'])).
  - Each host contributes one entry per port in its C(mcp_server_instances) (default C([8000])).
  - The route id is the host's name reduced to letters and digits (long names shortened with a
    hash), a dash and the port; it is the prefix of every MCP session id the instance mints, which
    nginx uses to route follow-up requests.
options:
  _input:
    description: Inventory host names.
    type: list
    elements: str
    required: true
  hostvars:
    description: The C(hostvars) magic variable.
    type: dict
    required: true
  from_host:
    description:
      - The host that will connect to the instances. Instances on that same host are reached over
        loopback (or their own listen address), others by C(mcp_server_listen_address), then
        C(ansible_host), then the inventory name.
    type: str
"""

# The mcp_server role's default for mcp_server_instances; tests/unit checks the two agree.
DEFAULT_INSTANCES = [8000]
ROUTE_RE = re.compile(r"[^A-Za-z0-9]+")


def route_id(host: str, port: int) -> str:
    base = ROUTE_RE.sub("", host) or "h"
    if len(base) > 24:  # keep ids short but distinct: a prefix and a hash of the whole name
        base = base[:17] + hashlib.sha1(host.encode()).hexdigest()[:6]  # noqa: S324 (not security)
    return f"{base}-{int(port)}"


WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 (we compare, never bind)


def mcp_instances(hosts, hostvars, from_host=None):
    result = []
    for host in hosts:
        hv = hostvars[host]
        ports = hv.get("mcp_server_instances", DEFAULT_INSTANCES)
        listen = str(hv.get("mcp_server_listen_address") or "")
        if host == from_host:
            address = "127.0.0.1" if listen in WILDCARDS else listen
        elif listen not in WILDCARDS and not listen.startswith("127."):
            address = listen
        else:
            address = hv.get("ansible_host") or host
        for port in ports:
            result.append(
                {
                    "host": host,
                    "address": str(address),
                    "port": int(port),
                    "route": route_id(host, port),
                }
            )
    return result


class FilterModule:
    def filters(self):
        return {"mcp_instances": mcp_instances}
