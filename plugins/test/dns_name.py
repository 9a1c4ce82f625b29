"""Test dns_name: is the value a DNS host name (and not an IP address)."""

from __future__ import annotations

import re

from ansible_collections.mcpops.deploy.plugins.plugin_utils.addresses import is_ip_address

DOCUMENTATION = r"""
name: dns_name
author: mcpops.deploy maintainers
version_added: "0.2.0"
short_description: Is the value a DNS host name
description:
  - True for a string of 1 to 253 characters made of dot-separated labels. A label has 1 to 63 ASCII
    letters, digits, C(-) and C(_); it starts with a letter, digit or C(_) and ends with a letter or
    digit (a label of one character may be C(_)). These are the names the nginx role accepts for its
    server and certificate names; C(_) is allowed for internal names.
  - False for an IP address (V(10.0.0.5) is an address, not a name), a trailing dot, an empty label,
    a wildcard (V(*.example.com)), non-ASCII letters (use the C(xn--) form), whitespace, and anything
    that is not a string. Never fails.
options:
  _input:
    description: The value to check.
    type: raw
    required: true
"""

EXAMPLES = r"""
dns_sans: "{{ nginx_tls_extra_names | select('mcpops.deploy.dns_name') | list }}"
ok: "{{ 'mcp.example.com' is mcpops.deploy.dns_name }}"  # => true
address: "{{ '192.0.2.1' is mcpops.deploy.dns_name }}"  # => false
"""

RETURN = r"""
_value:
  description: V(True) if the input is a DNS host name that is not an IP address, V(False) otherwise.
  type: boolean
"""

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_NAME_RE = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*")


def dns_name(value) -> bool:
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None and not is_ip_address(value)


class TestModule:
    def tests(self):
        return {"dns_name": dns_name}
