"""Test mcp_app_path: is the value a "package.module:attribute" import path the server accepts."""

from __future__ import annotations

import re

DOCUMENTATION = r"""
name: mcp_app_path
author: mcpops.deploy maintainers
version_added: "0.2.0"
short_description: Is the value an MCP app import path (package.module:attribute)
description:
  - True for a string the mcpops server accepts as C(server.app), the object it serves, written
    C(package.module:attribute) (V(example_app.server:mcp)).
  - The module part and the attribute part are each one or more dot-separated Python identifiers
    (a letter or C(_), then letters, digits or C(_)), joined by one C(:).
  - The language is exactly that of the server's own check (C(_APP_RE) in C(mcpops_server.config));
    the collection's unit tests compare the two. As there, the module part and the first name of the
    attribute are ASCII only, while the later names of a dotted attribute may also use Unicode letters
    and digits, and a single trailing newline is tolerated.
  - False for anything that is not a string. Never fails.
options:
  _input:
    description: The value to check.
    type: raw
    required: true
"""

EXAMPLES = r"""
- name: Assert the app import path
  ansible.builtin.assert:
    that: mcp_server_app == '' or mcp_server_app is mcpops.deploy.mcp_app_path
"""

RETURN = r"""
_value:
  description: V(True) if the server would accept the input as its app import path, V(False) otherwise.
  type: boolean
"""

_ID = r"[A-Za-z_][A-Za-z0-9_]*"
# Mirrors mcpops_server.config._APP_RE, quirks included: the later attribute names use \w (Unicode
# aware) and "$" also matches before a final newline. Change both together (tests/unit compares them).
_APP_RE = re.compile(rf"^{_ID}(?:\.{_ID})*:{_ID}(?:\.[A-Za-z_]\w*)*$")


def mcp_app_path(value) -> bool:
    return isinstance(value, str) and _APP_RE.match(value) is not None


class TestModule:
    def tests(self):
        return {"mcp_app_path": mcp_app_path}
