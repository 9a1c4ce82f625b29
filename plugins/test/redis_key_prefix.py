"""Test redis_key_prefix: is the value a Redis key prefix the server accepts."""

from __future__ import annotations

import re

DOCUMENTATION = r"""
name: redis_key_prefix
author: mcpops.deploy maintainers
version_added: "0.2.0"
short_description: Is the value a Redis key prefix the mcpops server accepts
description:
  - True for a string of 1 to 64 characters from ASCII letters, digits, C(_), C(.), C(:) and C(-)
    (V(mcpops:), V(tenant-a.sessions:)), the server's C(redis.key_prefix).
  - The language is exactly that of the server's own check (C(_PREFIX_RE) in C(mcpops_server.config));
    the collection's unit tests compare the two. As there, a single trailing newline is tolerated.
  - False for anything that is not a string. Never fails.
options:
  _input:
    description: The value to check.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Assert the key prefix
  ansible.builtin.assert:
    that: mcp_server_redis_key_prefix is mcpops.deploy.redis_key_prefix
"""

RETURN = r"""
_value:
  description: V(True) if the server would accept the input as its Redis key prefix, V(False) otherwise.
  type: boolean
"""

# Mirrors mcpops_server.config._PREFIX_RE, quirk included: "$" also matches before a final newline.
# Change both together (tests/unit compares them).
_PREFIX_RE = re.compile(r"^[-A-Za-z0-9_.:]{1,64}$")


def redis_key_prefix(value) -> bool:
    return isinstance(value, str) and _PREFIX_RE.match(value) is not None


class TestModule:
    def tests(self):
        return {"redis_key_prefix": redis_key_prefix}
