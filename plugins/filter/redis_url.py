"""Filter redis_url: the URL an app host uses to reach the Redis of an inventory host."""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible_collections.mcpops.deploy.plugins.plugin_utils.topology import redis_tls

DOCUMENTATION = r"""
name: redis_url
author: mcpops.deploy maintainers
version_added: "0.2.0"
short_description: URL an app host uses for the Redis of an inventory host
description:
  - Input is the inventory name of the host that runs Redis (for example C(groups['redis'][0])).
  - The URL follows from that host's vars, as the redis role reads them. C(redis_port) (default
    C(6379)), C(redis_unixsocket_path) (default C(/run/redis/redis-server.sock)) and
    C(redis_bind_addresses) (default C(['127.0.0.1']); a leading C(-), which marks an optional address
    for Redis, is ignored).
  - With C(redis_port) 0 (TCP off) the URL is C(unix://<socket>?db=0).
  - Otherwise it is C(<scheme>://<address>:<port>/0), C(rediss) when that Redis serves TLS only.
    When O(from_host) is the Redis host itself, the
    address is the first bind address, with a wildcard (C(0.0.0.0), C(::), C(*), C(::*)) replaced by
    C(127.0.0.1). From another host it is the first bind address that is neither loopback
    (127.0.0.0/8, C(::1), C(localhost)) nor a wildcard, else the Redis host's C(ansible_host), else
    its inventory name.
  - IPv6 addresses are written in brackets, for example C(redis://[fd00::5]:6379/0).
positional: _input, hostvars, from_host
options:
  _input:
    description: Inventory name of the Redis host.
    type: str
    required: true
  hostvars:
    description: The C(hostvars) magic variable.
    type: dict
    required: true
  from_host:
    description: Inventory name of the host that will connect (usually C(inventory_hostname)).
    type: str
    required: true
  scheme:
    description:
      - URL scheme of a TCP connection; C(rediss) is Redis over TLS. Not used for a unix socket.
      - By default C(rediss) when that Redis serves TLS only (filter C(mcpops.deploy.redis_tls)),
        else C(redis).
    type: str
    choices: [redis, rediss]
"""

EXAMPLES = r"""
# The Redis of the redis group's first host, as seen from the host running the play
mcp_server_redis_url: "{{ groups['redis'][0] | mcpops.deploy.redis_url(hostvars, inventory_hostname) }}"
# => "redis://10.0.0.7:6379/0" from an app host, "redis://127.0.0.1:6379/0" on the Redis host itself

# Over TLS whatever the topology says
redis_tls_url: >-
  {{ groups['redis'][0] | mcpops.deploy.redis_url(hostvars, inventory_hostname, scheme='rediss') }}
"""

RETURN = r"""
_value:
  description:
    - A URL C(redis://host:port/0), C(rediss://host:port/0) or C(unix:///path?db=0).
    - It holds no credentials.
  type: str
"""

DEFAULT_PORT = 6379
DEFAULT_SOCKET = "/run/redis/redis-server.sock"
DEFAULT_BINDS = ["127.0.0.1"]
WILDCARDS = ("0.0.0.0", "::", "*", "::*", "")  # noqa: S104 (compared with, never bound to)
SCHEMES = ("redis", "rediss")


def _binds(value) -> list[str]:
    if value is None:
        value = DEFAULT_BINDS
    elif isinstance(value, str):
        value = [value]
    return [str(b)[1:] if str(b).startswith("-") else str(b) for b in value]


def _is_loopback(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _url_host(address: str) -> str:
    try:
        if ipaddress.ip_address(address).version == 6:
            return f"[{address}]"
    except ValueError:
        pass
    return address


def redis_url(redis_host, hostvars, from_host, scheme=None):
    if scheme is not None and scheme not in SCHEMES:
        raise AnsibleFilterError(f"redis_url: scheme={scheme!r}: accepted are {', '.join(SCHEMES)}")
    if redis_host not in hostvars:
        raise AnsibleFilterError(f"redis_url: {redis_host!r} is not an inventory host")
    hv = hostvars[redis_host]
    try:
        port = int(hv.get("redis_port", DEFAULT_PORT))
    except (TypeError, ValueError):
        port = -1
    if not 0 <= port <= 65535:
        raise AnsibleFilterError(
            f"redis_url: redis_port of {redis_host} = {hv.get('redis_port')!r}: accepted is a port number"
            " up to 65535, or 0 for the unix socket only"
        )
    if scheme is None:
        try:
            scheme = "rediss" if redis_tls(redis_host, hostvars) else "redis"
        except ValueError as exc:
            raise AnsibleFilterError(f"redis_url: {exc}") from exc
    if port == 0:
        return f"unix://{hv.get('redis_unixsocket_path') or DEFAULT_SOCKET}?db=0"
    binds = _binds(hv.get("redis_bind_addresses", DEFAULT_BINDS))
    if redis_host == from_host:
        address = binds[0] if binds else "127.0.0.1"
        if address in WILDCARDS:
            address = "127.0.0.1"
    else:
        outside = [b for b in binds if b not in WILDCARDS and not _is_loopback(b)]
        address = outside[0] if outside else str(hv.get("ansible_host") or redis_host)
    return f"{scheme}://{_url_host(address)}:{port}/0"


class FilterModule:
    def filters(self):
        return {"redis_url": redis_url}
