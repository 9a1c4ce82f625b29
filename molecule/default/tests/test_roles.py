"""The shape every role shares: preflight once per host and run, and the same tags everywhere."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, run_playbook

ROLES = ("firewall", "pki", "redis", "mcp_server", "nginx")


@pytest.mark.timeout(600)
def test_preflight_runs_once_per_role_and_tags_pick_one_step(site_inventory):
    """site.yml with one role's configure tag: every role's preflight runs exactly once for the host
    (in the preflight play; the roles skip their own), and of the roles' steps only redis'
    configure runs, changing nothing on a converged host."""
    site = REPO / "playbooks" / "site.yml"
    res = run_playbook(site, site_inventory, "--tags", "redis_configure", timeout=540)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    for role in ROLES:
        done = re.findall(rf"TASK \[mcpops\.deploy\.{role} : Remember that the inputs were checked\]", out)
        assert len(done) == 1, f"{role}: preflight ran {len(done)} times:\n{out[-3000:]}"
    roles_part = out.split("PLAY [Host firewall]", 1)[-1]
    tasks = re.findall(r"TASK \[([^\]]+)\]", roles_part)
    assert "mcpops.deploy.redis : Render redis.conf" in tasks, f"no redis configure task ran:\n{tasks}"
    for name in ("mcpops.deploy.redis : Enable and start redis-server", "Install the redis-server package"):
        assert name not in tasks, f"--tags redis_configure ran {name!r}"
    allowed = ("Validating arguments", "Check the inputs before anything changes")
    others = [t for t in tasks if not t.startswith("mcpops.deploy.redis ")]
    others = [t for t in others if not any(a in t for a in allowed)]
    assert not others, f"--tags redis_configure also ran {others}"
    recap = re.search(r"PLAY RECAP \*+\n(.*)", out, re.S)
    assert recap and re.search(r"changed=0\b", recap.group(1)), out[-2000:]
