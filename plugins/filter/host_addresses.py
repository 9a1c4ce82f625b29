"""Filter host_addresses: the addresses the firewall allows for each of some inventory hosts."""

from __future__ import annotations

import ipaddress

from ansible_collections.mcpops.deploy.plugins.plugin_utils.addresses import is_ip_network

DOCUMENTATION = r"""
name: host_addresses
author: mcpops.deploy maintainers
version_added: "0.2.0"
short_description: Addresses of inventory hosts, for firewall rules
description:
  - Input is a list of inventory host names (nested lists are flattened); duplicates are dropped, the
    first occurrence keeps its place. A name that is not in the inventory gets no address.
  - For each host the addresses come from the first of these that applies.
  - C(firewall_address) in the host's vars, a string or a list of strings (addresses or CIDR networks);
    empty strings and nulls in it are ignored.
  - The host's gathered facts, when C(ansible_facts.all_ipv4_addresses) is defined; all its IPv4
    addresses and the IPv6 addresses of C(ansible_facts.all_ipv6_addresses) that are not link-local
    (fe80::/10).
  - The host's C(ansible_host) when that is an IPv4 or IPv6 address or CIDR network (not a DNS name).
  - Otherwise no address; the firewall role's preflight reports such hosts as unresolved.
positional: _input, hostvars
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
"""

EXAMPLES = r"""
# Addresses of the load balancers and monitoring hosts
allowed: >-
  {{ (groups['lb'] + groups['monitoring']) | mcpops.deploy.host_addresses(hostvars) }}
# => {"lb1": ["10.0.0.2", "2001:db8::2"], "prom": ["10.0.9.0/24"], "lb2": []}

# Hosts with no known address
unresolved: >-
  {{ groups['lb'] | mcpops.deploy.host_addresses(hostvars) | dict2items
     | selectattr('value', 'equalto', []) | map(attribute='key') | list }}
"""

RETURN = r"""
_value:
  description: A mapping of each input host to its list of address strings (empty when none is known).
  type: dict
"""


def _flatten(value) -> list:
    """Nested lists as one flat list, without None and empty strings."""
    if isinstance(value, (list, tuple)):
        out = []
        for item in value:
            out.extend(_flatten(item))
        return out
    return [] if value is None or value == "" else [value]


def _is_link_local_v6(value: str) -> bool:
    try:
        address = ipaddress.IPv6Address(value.split("%", 1)[0])
    except ValueError:
        return False
    return address.is_link_local


def _addresses(hv) -> list:
    if "firewall_address" in hv:
        return [str(a) for a in _flatten(hv["firewall_address"])]
    facts = hv.get("ansible_facts") or {}
    if "all_ipv4_addresses" in facts:
        v4 = [str(a) for a in _flatten(facts["all_ipv4_addresses"])]
        v6 = [str(a) for a in _flatten(facts.get("all_ipv6_addresses") or [])]
        return v4 + [a for a in v6 if not _is_link_local_v6(a)]
    ansible_host = hv.get("ansible_host")
    if is_ip_network(ansible_host):
        return [str(ansible_host)]
    return []


def host_addresses(hosts, hostvars) -> dict:
    result = {}
    for host in _flatten(hosts):
        if host in result:
            continue
        result[host] = _addresses(hostvars[host]) if host in hostvars else []
    return result


class FilterModule:
    def filters(self):
        return {"host_addresses": host_addresses}
