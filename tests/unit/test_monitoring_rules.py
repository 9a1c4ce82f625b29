"""The monitoring role's alert rules and their unit tests, rendered with the role's defaults.

`promtool test rules` runs every alert against series that must fire it and series that must not
(roles/monitoring/templates/tests/). Skipped when promtool (Debian's prometheus package) is not on
PATH; the role runs the same tests on the monitoring host at every converge.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "monitoring"
EXPORTERS = ROOT / "roles" / "exporters"


def _env() -> jinja2.Environment:
    # Ansible's template settings (trim_blocks) and the few filters these templates use.
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["comment"] = lambda text: "\n".join("# " + line for line in str(text).splitlines())
    env.filters["basename"] = os.path.basename
    env.filters["bool"] = bool
    return env


def _render(template: str, overrides: dict | None = None) -> str:
    values = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values.update(yaml.safe_load((ROLE / "vars" / "main.yml").read_text()) or {})
    values.update(overrides or {})
    values["ansible_managed"] = "Ansible managed (unit test)"
    env = _env()
    return env.from_string((ROLE / "templates" / template).read_text()).render(**values)


def _write(tmp_path: Path, overrides: dict | None = None) -> Path:
    (tmp_path / "mcpops-rules.yml").write_text(_render("mcpops-rules.yml.j2", overrides))
    test_file = tmp_path / "mcpops-rules.test.yml"
    test_file.write_text(_render("tests/mcpops-rules.test.yml.j2", overrides))
    return test_file


def test_rendered_rules_are_yaml_with_every_alert(tmp_path):
    _write(tmp_path)
    rules = yaml.safe_load((tmp_path / "mcpops-rules.yml").read_text())
    names = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    assert names == [
        "Watchdog",
        "InstanceDown",
        "MCPHigh5xxRatio",
        "MCPToolLatencyHigh",
        "MCPAuthFailureSpike",
        "MCPRateLimiterFailingOpen",
        "RedisDown",
        "CertificateExpiringSoon",
        "DiskFillingUp",
        "LogShippingQueueGrowing",
    ]
    tests = yaml.safe_load((tmp_path / "mcpops-rules.test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == set(names), f"alerts without a test that fires them: {set(names) - tested}"


def test_exporter_ports_agree():
    ours = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["__monitoring_exporter_ports"]
    theirs = yaml.safe_load((EXPORTERS / "vars" / "main.yml").read_text())["__exporters_ports"]
    assert ours == theirs == {"node": 9100, "nginx": 9113, "redis": 9121}


def test_grafana_dashboard_is_json_with_the_server_panels():
    dashboard = json.loads((ROLE / "files" / "grafana" / "mcpops-server.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in (
        "mcp_http_requests_total",
        "mcp_tool_calls_total",
        "mcp_tool_duration_seconds_bucket",
        "mcp_auth_attempts_total",
        "mcp_ratelimit_rejected_total",
        "mcp_ratelimit_short_circuited_total",
        "mcp_sessions_active",
    ):
        assert metric in exprs, f"no panel shows {metric}"


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool (Debian package prometheus) is not on PATH"
)


@needs_promtool
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "monitoring_alert_instance_down_minutes": 1,
            "monitoring_alert_5xx_ratio": 0.9,
            "monitoring_alert_tool_p99_seconds": 0.3,
            "monitoring_alert_auth_failures_per_second": 0.05,
            "monitoring_alert_cert_expiry_days": 30,
            "monitoring_alert_disk_full_hours": 24,
            "monitoring_alert_log_queue_size": 7,
        },
    ],
    ids=["defaults", "other-thresholds"],
)
def test_promtool_checks_and_tests_the_rules(tmp_path, overrides):
    test_file = _write(tmp_path, overrides)
    check = subprocess.run(
        [PROMTOOL, "check", "rules", str(tmp_path / "mcpops-rules.yml")], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_test_catches_a_broken_threshold(tmp_path):
    """The tests can fail: rules rendered with one threshold, tests with another, must not pass."""
    (tmp_path / "mcpops-rules.yml").write_text(
        _render("mcpops-rules.yml.j2", {"monitoring_alert_5xx_ratio": 0.9})
    )
    test_file = tmp_path / "mcpops-rules.test.yml"
    test_file.write_text(_render("tests/mcpops-rules.test.yml.j2", {"monitoring_alert_5xx_ratio": 0.05}))
    run = subprocess.run([PROMTOOL, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert run.returncode != 0, run.stdout
    assert "MCPHigh5xxRatio" in run.stdout + run.stderr
