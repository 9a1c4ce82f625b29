"""Filter mcp_instances: the MCP server instances of some hosts, named and addressed in one place.

The mcp_server role (which starts the instances), the nginx role (which routes to them) and the
firewall role (which lets the load balancers reach them) all ask this filter, so they cannot disagree
about a port, an address or a route id.
"""

from __future__ import annotations

import hashlib
import re

DOCUMENTATION = r"""
name: mcp_instances
author: mcpops.deploy maintainers
version_added: "0.1.0"
short_description: MCP server instances of hosts, with address, port and route id
description:
  - Input is a list of inventory host names (for example C(groups['mcp_servers'])).
  - Each host contributes one entry per instance. A host whose C(mcp_server_servers) is a non-empty list
    (several servers per endpoint) contributes the C(ports) of every server, servers in the list's order;
    the list is validated by the filter C(mcpops.deploy.mcp_servers) in the preflight, not here.
  - Without that list the host runs the one legacy server C(mcp), the default server, on the ports in
    its C(mcp_server_ports). While a host still sets the deprecated C(mcp_server_instances), that is used
    instead (the mcp_server role follows the same rule); when it defines neither, the default C([8000])
    (the mcp_server role's default).
  - The route id is the host's name reduced to letters and digits (a long name is shortened and made
    distinct with a hash), a dash and the port. Every MCP session id an instance mints starts with its
    route id, which is how nginx sends follow-up requests to the same instance.
  - Whether an instance serves TLS follows the deployment's shape. When the hosts of the groups
    C(mcp_servers), C(mcp_lb) and C(monitoring) together are more than one host, clients of the
    instances (nginx, Prometheus) come from other hosts, and every instance serves TLS with its host's
    certificate from the pki role (verified against the deployment CA). On a one-host deployment
    they stay plain on loopback. A host's own C(mcp_server_tls_enabled) (bool) wins, and a host with
    its own certificate files (C(mcp_server_tls_cert_file)) always serves TLS with them, as the
    mcp_server role configures it. Clients verify them against the deployment CA, nginx by C(tls_name)
    and Prometheus by the host's inventory name, so such a certificate must name both.
  - The groups are read from O(groups) when given, else from the hostvars of O(from_host) (or of the
    first input host), which carry the C(groups) magic variable.
positional: _input, hostvars, from_host
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
        loopback (or their own listen address when it is not a wildcard); instances on other hosts by
        C(mcp_server_listen_address) unless it is a wildcard or loopback, then C(ansible_host), then
        the inventory name.
    type: str
  groups:
    description:
      - The C(groups) magic variable. Only needed when the hostvars passed in lack it (plain dicts in
        tests); Ansible's C(hostvars) carry it.
    type: dict
"""

EXAMPLES = r"""
# Every instance of the app group, addressed as seen from the load balancer running the play
nginx_upstreams: "{{ groups['mcp_servers'] | mcpops.deploy.mcp_instances(hostvars, inventory_hostname) }}"

# nginx: https with proxy_ssl_name when the instances serve TLS
upstream_tls: "{{ nginx_upstreams | map(attribute='tls') | unique }}"   # [true], [false] or a mix

# The servers behind the load balancers, in the order first seen (nginx: one upstream and location each)
server_names: "{{ nginx_upstreams | map(attribute='server') | unique | list }}"

# The ports this host runs
my_ports: >-
  {{ [inventory_hostname] | mcpops.deploy.mcp_instances(hostvars, inventory_hostname)
     | map(attribute='port') | list }}
"""

RETURN = r"""
_value:
  description: One entry per instance, in the order of the hosts and of each host's ports.
  type: list
  elements: dict
  contains:
    host:
      description: Inventory name of the host running the instance.
      type: str
    address:
      description: Address that O(from_host) uses to reach the instance.
      type: str
    port:
      description: TCP port of the instance.
      type: int
    server:
      description:
        - Name of the MCP server the instance serves (the C(name) of its item of C(mcp_server_servers)),
          C(mcp) for a host without that list. nginx routes C(/<server>/mcp) to the instances of a server.
      type: str
      version_added: "0.3.0"
    default:
      description:
        - True when the instance's server is its host's default server (C(default) of the item of
          C(mcp_server_servers)), the one nginx also serves at C(/mcp). Always true for the legacy server
          C(mcp).
      type: bool
      version_added: "0.3.0"
    affinity:
      description:
        - How nginx keeps a client on the instance that holds its state, when its request carries no MCP
          session id yet.
        - C(principal) for a C(stdio) server with C(isolation) C(per_principal) (the default isolation of
          stdio servers), whose children hold each principal's state - nginx hashes such requests by
          the principal of the bearer token, so every call of one principal reaches the same instance.
        - C(session) for every other server (C(python), C(stdio) with C(isolation) C(shared), the legacy
          server C(mcp)) - such requests are spread over the server's instances; a session id still
          picks the instance that owns the session.
      type: str
      choices: [principal, session]
      version_added: "0.4.0"
    route:
      description: Route id, the prefix of the instance's MCP session ids.
      type: str
    tls:
      description:
        - True when the instance serves TLS with its host's certificate (/etc/mcpops/pki/host.crt);
          clients verify it against /etc/mcpops/pki/ca.crt and the name in RV(_value[].tls_name).
        - True when the host has C(mcp_server_tls_cert_file) (the instances serve those files), else the
          host's C(mcp_server_tls_enabled) when set, else true exactly when the hosts of the groups
          C(mcp_servers), C(mcp_lb) and C(monitoring) together are more than one.
      type: bool
    tls_name:
      description:
        - The name every app host's certificate carries and clients verify (nginx's C(proxy_ssl_name)).
        - The host's C(mcp_server_tls_name) when set, else C(mcpops-server.internal).
      type: str
"""

# The mcp_server role's default for mcp_server_ports; tests/unit checks that the two agree.
DEFAULT_PORTS = [8000]
ROUTE_RE = re.compile(r"[^A-Za-z0-9]+")
WILDCARDS = ("0.0.0.0", "::", "")  # noqa: S104 (compared with, never bound to)
# The groups whose hosts are clients or servers of the instances: more than one host among them
# means some connection crosses hosts, so every instance serves TLS.
TLS_GROUPS = ("mcp_servers", "mcp_lb", "monitoring")
DEFAULT_TLS_NAME = "mcpops-server.internal"
# The server of a host without mcp_server_servers (the mcp_servers filter names it the same).
LEGACY_SERVER = "mcp"


def route_id(host: str, port: int) -> str:
    base = ROUTE_RE.sub("", host) or "h"
    if len(base) > 24:  # short but distinct: a prefix and a hash of the whole name
        base = base[:17] + hashlib.sha1(host.encode()).hexdigest()[:6]  # noqa: S324 (not security)
    return f"{base}-{int(port)}"


def host_ports(hv) -> list:
    """A host's ports: the deprecated mcp_server_instances while set, else mcp_server_ports, else the
    default (the same rule as the mcp_server role's __mcp_server_ports)."""
    if "mcp_server_instances" in hv:
        return hv["mcp_server_instances"]
    if "mcp_server_ports" in hv:
        return hv["mcp_server_ports"]
    return DEFAULT_PORTS


def host_servers(hv) -> list[tuple[str, bool, list, str]]:
    """A host's servers as (name, default, ports, affinity): the items of a non-empty mcp_server_servers
    list in its order, else the one legacy server "mcp" (the default) on host_ports(). The items are
    taken as given; the mcp_servers filter validates them in the preflight."""
    servers = hv.get("mcp_server_servers") if "mcp_server_servers" in hv else None
    if isinstance(servers, list) and servers:
        return [
            (
                str(item["name"]),
                _as_bool(item.get("default", False)),
                list(item.get("ports") or []),
                affinity(item),
            )
            for item in servers
        ]
    return [(LEGACY_SERVER, True, list(host_ports(hv)), "session")]


def affinity(item) -> str:
    """The server's affinity: principal when its children hold per-principal state (kind stdio with
    isolation per_principal; the defaults are the mcp_servers filter's), else session."""
    kind = item.get("kind", "python")
    isolation = item.get("isolation", "per_principal")
    return "principal" if kind == "stdio" and isolation == "per_principal" else "session"


def _as_bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on", "y", "t")
    return bool(value)


def _groups(hosts, hostvars, from_host, groups):
    """The groups magic variable: given, else from the hostvars of from_host or the first host."""
    if groups is not None:
        return groups
    for name in (from_host, *hosts[:1]):
        if name is not None and name in hostvars:
            hv = hostvars[name]
            if "groups" in hv:
                return hv["groups"]
    return {}


def deployment_spans_hosts(groups) -> bool:
    """True when the hosts of TLS_GROUPS together are more than one host."""
    members = set()
    for name in TLS_GROUPS:
        members.update(groups.get(name) or [])
    return len(members) > 1


def mcp_instances(hosts, hostvars, from_host=None, groups=None):
    hosts = list(hosts)
    spans_hosts = deployment_spans_hosts(_groups(hosts, hostvars, from_host, groups))
    result = []
    for host in hosts:
        hv = hostvars[host]
        if hv.get("mcp_server_tls_cert_file"):
            tls = True  # the mcp_server role serves the user's files whatever else is set
        elif "mcp_server_tls_enabled" in hv:
            tls = _as_bool(hv["mcp_server_tls_enabled"])
        else:
            tls = spans_hosts
        tls_name = str(hv.get("mcp_server_tls_name") or DEFAULT_TLS_NAME)
        listen = str(hv.get("mcp_server_listen_address") or "")
        if host == from_host:
            address = "127.0.0.1" if listen in WILDCARDS else listen
        elif listen not in WILDCARDS and not listen.startswith("127."):
            address = listen
        else:
            address = hv.get("ansible_host") or host
        for server, default, ports, server_affinity in host_servers(hv):
            for port in ports:
                result.append(
                    {
                        "host": host,
                        "address": str(address),
                        "port": int(port),
                        "route": route_id(host, port),
                        "tls": tls,
                        "tls_name": tls_name,
                        "server": server,
                        "default": default,
                        "affinity": server_affinity,
                    }
                )
    return result


class FilterModule:
    def filters(self):
        return {"mcp_instances": mcp_instances}
