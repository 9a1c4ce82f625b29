"""Test ip_network: is the value an IPv4 or IPv6 address or CIDR network."""

from __future__ import annotations

from ansible_collections.mcpops.deploy.plugins.plugin_utils.addresses import is_ip_network

DOCUMENTATION = r"""
name: ip_network
author: mcpops.deploy maintainers
version_added: "0.2.0"
short_description: Is the value an IP address or a CIDR network
description:
  - True for a string that is an IPv4 or IPv6 address (V(10.0.0.5), V(2001:db8::1)) or such an address
    followed by C(/) and a decimal prefix length that fits it (V(10.0.0.0/24), V(2001:db8::/32)).
  - The address of a network may have host bits set (V(10.0.0.5/24) is accepted), as in firewall rules.
  - False for a netmask instead of a prefix length (V(10.0.0.0/255.255.255.0)), an IPv6 zone id, IPv4
    parts with leading zeros, surrounding whitespace, and anything that is not a string. Never fails.
options:
  _input:
    description: The value to check.
    type: raw
    required: true
"""

EXAMPLES = r"""
bad_sources: "{{ firewall_extra_sources | reject('mcpops.deploy.ip_network') | list }}"
host_bits_ok: "{{ '10.0.0.5/24' is mcpops.deploy.ip_network }}"  # => true
not_a_name: "{{ 'db.example.com' is mcpops.deploy.ip_network }}"  # => false
"""

RETURN = r"""
_value:
  description: V(True) if the input is an IP address or CIDR network, V(False) otherwise.
  type: boolean
"""


def ip_network(value) -> bool:
    return is_ip_network(value)


class TestModule:
    def tests(self):
        return {"ip_network": ip_network}
