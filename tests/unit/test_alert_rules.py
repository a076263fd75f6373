"""The alert rules and the dashboard: promtool's own unit tests of every rule pass, every rule
has one, and every expression of either reads a metric the service exposes.

``promtool`` comes with Debian's ``prometheus`` package (``scripts/ensure-prometheus.sh``, run
by ``make test``)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.metrics import ProvisionerMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "provisioner-dashboard.json"
# The alerts the README lists and a platform team expects, by what they are about.
EXPECTED_ALERTS = {
    "ProvisionerTokenRejected",
    "ProvisionerRateLimitNearlySpent",
    "ProvisionerCommandsDeadLettered",
    "ProvisionerParkingQueueGrowing",
    "ProvisionerQueueNearBound",
    "ProvisionerWatchesPastDeadline",
    "ProvisionerNoProgress",
    "ProvisionerReplicaNotReady",
}
_METRIC = re.compile(r"\bprovisioner_[a-z0-9_]+")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run scripts/ensure-prometheus.sh (make prometheus)")
    return found


def exposed_samples() -> set[str]:
    """Every sample name the service's /metrics can show (histograms with their suffixes)."""
    metrics = ProvisionerMetrics()
    metrics.watch_readiness(lambda: {"consuming": True})
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.add(family.name if family.type != "counter" else f"{family.name}_total")
        names.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
    return names


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_fails_a_rule_that_no_longer_fires(tmp_path: Path) -> None:
    # The judge must be able to say no: a rule tightened past its test's series fails it.
    (tmp_path / "alerts.yml").write_text(
        RULES.read_text().replace("provisioner_ratelimit_remaining < 500", "x < 0")
    )
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "ProvisionerRateLimitNearlySpent" in result.stdout + result.stderr


def test_the_rules_are_the_expected_alerts_and_each_has_a_unit_test() -> None:
    names = {rule["alert"] for rule in rules()}
    assert names == EXPECTED_ALERTS
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == names, "every alert has a test in which it fires"
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_rule_expression_reads_a_metric_the_service_exposes() -> None:
    exposed = exposed_samples()
    for rule in rules():
        used = set(_METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= exposed, f"{rule['alert']}: {sorted(used - exposed)} are not exposed"


def test_every_dashboard_expression_reads_a_metric_the_service_exposes() -> None:
    exposed = exposed_samples()
    expressions = dashboard_expressions()
    assert expressions
    for expression in expressions:
        used = set(_METRIC.findall(expression))
        assert used, expression
        assert used <= exposed, f"{expression}: {sorted(used - exposed)} are not exposed"


def test_the_dashboard_shows_the_figures_of_every_alert() -> None:
    shown = {name for e in dashboard_expressions() for name in _METRIC.findall(e)}
    for rule in rules():
        assert set(_METRIC.findall(rule["expr"])) <= shown, rule["alert"]


def test_the_metric_check_notices_a_name_the_service_does_not_expose() -> None:
    assert "provisioner_commands_total" in exposed_samples()
    assert "provisioner_api_call_seconds_bucket" in exposed_samples()
    assert "provisioner_no_such_thing_total" not in exposed_samples()
