"""Keep a renamed role variable working for a while, with a deprecation warning."""

from __future__ import annotations

from ansible.utils.display import Display

DOCUMENTATION = r"""
name: deprecated_name
short_description: Pass a value through, warning that the variable holding it was renamed
description:
  - Roles use it in their C(vars/main.yml) to keep an old variable name working after a rename.
  - 'The value is returned unchanged; Ansible prints one C([DEPRECATION WARNING]) naming the old and
    the new variable (identical warnings are shown once per run).'
author: mcpops.deploy maintainers
options:
  _input:
    description: The value of the old variable.
    type: raw
    required: true
  old:
    description: The old variable name.
    type: str
    required: true
  new:
    description: The variable to set instead.
    type: str
    required: true
  version:
    description: The collection version that removes the old name.
    type: str
    default: "1.0.0"
"""

EXAMPLES = r"""
# roles/mcp_server/vars/main.yml
__mcp_server_ports: >-
  {{ mcp_server_instances | mcpops.deploy.deprecated_name('mcp_server_instances', 'mcp_server_ports')
     if mcp_server_instances is defined else mcp_server_ports }}
"""

RETURN = r"""
_value:
  description: The input, unchanged.
  type: raw
"""


def deprecated_name(value, old: str, new: str, version: str = "1.0.0"):
    Display().deprecated(
        f"The variable {old} is renamed {new}; set {new} instead (while {old} is set, its value is used).",
        version=version,
        collection_name="mcpops.deploy",
    )
    return value


class FilterModule:
    def filters(self):
        return {"deprecated_name": deprecated_name}
