"""Test ip_address: is the value one IPv4 or IPv6 address (no prefix length)."""

from __future__ import annotations

from ansible_collections.mcpops.deploy.plugins.plugin_utils.addresses import is_ip_address

DOCUMENTATION = r"""
name: ip_address
author: mcpops.deploy maintainers
version_added: "0.2.0"
short_description: Is the value an IPv4 or IPv6 address
description:
  - True for a string that is one IPv4 address in dotted decimal (V(10.0.0.5)) or one IPv6 address
    in any of its textual forms (V(2001:db8::1), V(::ffff:10.0.0.5)).
  - False for a network or prefix length (V(10.0.0.0/24)), an IPv6 zone id (V(fe80::1%eth0)), IPv4
    parts with leading zeros, surrounding whitespace, and anything that is not a string. Never fails.
options:
  _input:
    description: The value to check.
    type: raw
    required: true
"""

EXAMPLES = r"""
literal_names: "{{ nginx_tls_extra_names | select('mcpops.deploy.ip_address') | list }}"
is_v6: "{{ '2001:db8::1' is mcpops.deploy.ip_address }}"  # => true
not_a_network: "{{ '10.0.0.0/8' is mcpops.deploy.ip_address }}"  # => false
"""

RETURN = r"""
_value:
  description: V(True) if the input is an IP address, V(False) otherwise.
  type: boolean
"""


def ip_address(value) -> bool:
    return is_ip_address(value)


class TestModule:
    def tests(self):
        return {"ip_address": ip_address}
