#!/usr/bin/python
"""Read, in one round trip, what the mcp_server role needs to decide what to install and restart."""

from __future__ import annotations

DOCUMENTATION = r"""
module: mcp_server_state
short_description: Report the releases and instances of mcpops-server, and which are outdated
description:
  - Read-only; never changes the host. Used by the C(mcp_server) role so that one remote call replaces a
    series of stat, find and systemctl probes.
  - Releases. Whether the release about to be deployed is complete, which release C(current) points at,
    and the other releases, newest first.
  - Instances. A fingerprint of the deployment (the release and the content of every file the
    instances read); the configured ports whose stamp (written when the instance last came up healthy)
    differs from the fingerprint, or whose unit is not active; and the ports that run or have a stamp
    but are no longer configured.
version_added: 0.2.0
author: mcpops.deploy maintainers
options:
  release:
    description: The release about to be deployed (a directory name under I(releases_dir)).
    type: str
    required: true
  releases_dir:
    description: Directory holding one subdirectory per release.
    type: path
    default: /opt/mcpops/releases
  current_link:
    description: Symbolic link to the release in use.
    type: path
    default: /opt/mcpops/current
  ports:
    description: Configured instance ports; empty skips everything about instances.
    type: list
    elements: int
    default: []
  inputs:
    description: Files every instance reads; a missing file counts as C(absent).
    type: list
    elements: path
    default: []
  port_inputs:
    description:
      - Files only some instances read, by port (a server's own configuration and unit drop-in when a
        host runs several servers). An instance's fingerprint covers I(inputs) and its own files.
    type: dict
    default: {}
    version_added: 0.3.0
  state_dir:
    description: Directory of the per-instance stamps, one file per port.
    type: path
    default: /opt/mcpops/state
  unit_prefix:
    description: Unit name of an instance without the port and C(.service).
    type: str
    default: mcpops-server@
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Read the state of the releases and instances
  mcpops.deploy.mcp_server_state:
    release: 0.1.0-34bdc5fef863
    ports: [8000, 8001]
    inputs: [/etc/mcpops/config.yaml, /etc/mcpops/secrets.env]
  register: state
"""

RETURN = r"""
release_complete:
  description: Whether the release's directory holds C(.complete) (written last by a successful install).
  type: bool
  returned: always
current_release:
  description: Name of the release C(current) points at; empty when there is none.
  type: str
  returned: always
other_releases:
  description: The other release directories, newest first.
  type: list
  elements: str
  returned: always
fingerprint:
  description: sha256 over the release and the sha256 of each input file.
  type: str
  returned: always
fingerprints:
  description: The fingerprint of each configured port (keys are ports as strings); its stamp must equal it.
  type: dict
  returned: always
outdated:
  description: Configured ports whose instance must be (re)started.
  type: list
  elements: int
  returned: always
removed:
  description: Ports with a loaded unit or a stamp that are not configured.
  type: list
  elements: int
  returned: always
active:
  description: systemd's active state of each configured instance, by port.
  type: dict
  returned: always
"""

import hashlib
import json
import os
import re

from ansible.module_utils.basic import AnsibleModule


def file_digest(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except FileNotFoundError:
        return "absent"


def read_stamp(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def releases(module):
    p = module.params
    base = p["releases_dir"]
    current = ""
    if os.path.islink(p["current_link"]):
        current = os.path.basename(os.readlink(p["current_link"]).rstrip("/"))
    others = []
    if os.path.isdir(base):
        entries = [e for e in os.scandir(base) if e.is_dir(follow_symlinks=False) and e.name != p["release"]]
        others = [e.name for e in sorted(entries, key=lambda e: e.stat().st_mtime, reverse=True)]
    complete = os.path.isfile(os.path.join(base, p["release"], ".complete"))
    return {"release_complete": complete, "current_release": current, "other_releases": others}


def instances(module):
    p = module.params
    ports = [int(x) for x in p["ports"]]
    if not ports:
        return {"fingerprint": "", "fingerprints": {}, "outdated": [], "removed": [], "active": {}}
    fp = hashlib.sha256(p["release"].encode())
    for path in p["inputs"]:
        fp.update(f"\n{path} {file_digest(path)}".encode())
    fingerprint = fp.hexdigest()
    own = {int(k): v for k, v in (p["port_inputs"] or {}).items()}
    fingerprints = {}
    for port in ports:
        if own.get(port):
            pfp = fp.copy()
            for path in own[port]:
                pfp.update(f"\n{path} {file_digest(path)}".encode())
            fingerprints[port] = pfp.hexdigest()
        else:
            fingerprints[port] = fingerprint
    prefix = p["unit_prefix"]
    units = [f"{prefix}{port}.service" for port in ports]
    rc, out, err = module.run_command(["systemctl", "is-active", *units])
    states = out.split()
    if len(states) != len(ports):
        module.fail_json(msg=f"systemctl is-active {' '.join(units)} answered {out!r} {err!r}")
    active = dict(zip(ports, states, strict=True))
    outdated = [
        port
        for port in ports
        if active[port] != "active"
        or read_stamp(os.path.join(p["state_dir"], str(port))) != fingerprints[port]
    ]
    seen = set()
    rc, out, err = module.run_command(
        ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--output=json", f"{prefix}*.service"]
    )
    if rc == 0 and out.strip():
        pattern = re.compile("^" + re.escape(prefix) + r"([0-9]+)\.service$")
        for unit in json.loads(out):
            m = pattern.match(unit.get("unit", ""))
            if m:
                seen.add(int(m.group(1)))
    if os.path.isdir(p["state_dir"]):
        seen.update(int(n) for n in os.listdir(p["state_dir"]) if n.isdigit())
    removed = sorted(seen - set(ports))
    return {
        "fingerprint": fingerprint,
        "fingerprints": {str(k): v for k, v in fingerprints.items()},
        "outdated": outdated,
        "removed": removed,
        "active": {str(k): v for k, v in active.items()},
    }


def main():
    module = AnsibleModule(
        argument_spec={
            "release": {"type": "str", "required": True},
            "releases_dir": {"type": "path", "default": "/opt/mcpops/releases"},
            "current_link": {"type": "path", "default": "/opt/mcpops/current"},
            "ports": {"type": "list", "elements": "int", "default": []},
            "inputs": {"type": "list", "elements": "path", "default": []},
            "port_inputs": {"type": "dict", "default": {}},
            "state_dir": {"type": "path", "default": "/opt/mcpops/state"},
            "unit_prefix": {"type": "str", "default": "mcpops-server@"},
        },
        supports_check_mode=True,
    )
    result = {"changed": False}
    result.update(releases(module))
    result.update(instances(module))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
