"""Filter redis_tls: whether the Redis of an inventory host serves TLS only."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.mcpops.deploy.plugins.plugin_utils.topology import redis_tls as _redis_tls

DOCUMENTATION = r"""
name: redis_tls
author: mcpops.deploy maintainers
version_added: "0.3.0"
short_description: Whether the Redis of an inventory host serves TLS only
description:
  - Input is the inventory name of the host that runs Redis (for example C(groups['redis'][0])).
  - That host's C(redis_tls) decides; C(required) is always TLS, C(disabled) never.
  - C(auto) (the default) is TLS when a host of the group C(mcp_servers) other than the Redis host
    is a client, so traffic between hosts is encrypted while a one-host install stays plain on loopback.
  - The redis role (which serves) and the filter C(mcpops.deploy.redis_url) (which clients use) both
    follow this answer.
positional: _input, hostvars
options:
  _input:
    description: Inventory name of the Redis host.
    type: str
    required: true
  hostvars:
    description: The C(hostvars) magic variable.
    type: dict
    required: true
"""

EXAMPLES = r"""
redis_serves_tls: "{{ groups['redis'][0] | mcpops.deploy.redis_tls(hostvars) }}"
"""

RETURN = r"""
_value:
  description: True when Redis accepts TLS connections only.
  type: bool
"""


def redis_tls(redis_host, hostvars):
    if redis_host not in hostvars:
        raise AnsibleFilterError(f"redis_tls: {redis_host!r} is not an inventory host")
    try:
        return _redis_tls(redis_host, hostvars)
    except ValueError as exc:
        raise AnsibleFilterError(f"redis_tls: {exc}") from exc


class FilterModule:
    def filters(self):
        return {"redis_tls": redis_tls}
