"""cluster/prometheus: the alert rules pass their promtool unit tests, and both files are valid for Prometheus.

``promtool`` comes with the Prometheus that ``scripts/services.sh`` installs (Debian's ``prometheus`` package).
Without it the tests skip loudly, and fail under ``CI=true``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = ROOT / "cluster" / "prometheus"


def promtool() -> str:
    services = ROOT / ".services"
    found = shutil.which("promtool") or next((str(p) for p in services.glob("**/bin/promtool")), None)
    if found is None:
        message = "!!! promtool NOT FOUND: run `scripts/services.sh start prometheus` (it installs Prometheus) !!!"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=PROMETHEUS_DIR, capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_their_unit_tests() -> None:
    done = run("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_a_broken_rule_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: with one threshold changed, the firing case no longer fires."""
    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    (tmp_path / "alerts.yml").write_text(rules.replace("> 300", "> 3000"))
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path / "alerts_test.yml")
    done = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "HeadwaterSourceBehind" in done.stdout + done.stderr


def test_the_scrape_config_and_rules_are_valid() -> None:
    done = run("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_test_and_a_runbook() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = [r["alert"] for g in rules["groups"] for r in g["rules"]]
    tested = {t["alertname"] for case in yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
              for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert set(alerts) <= tested, f"alerts without a firing test: {sorted(set(alerts) - tested)}"
    operations = (ROOT / "docs" / "operations.md").read_text()
    headings = {re.sub(r"[^a-z0-9]", "", line.lower()) for line in operations.splitlines() if line.startswith("#")}
    for alert in alerts:
        assert alert.lower() in headings, f"docs/operations.md has no runbook heading for {alert}"


def test_the_scrape_config_keeps_the_job_label_of_headwater_series() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    headwater = next(job for job in config["scrape_configs"] if job["job_name"] == "headwater")
    assert headwater["honor_labels"] is True  # else Prometheus renames our `job` label to `exported_job`
    assert any("targets/" in f for sd in headwater["file_sd_configs"] for f in sd["files"])


def test_the_scrape_config_has_a_job_for_rays_metrics_where_the_serve_series_are() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    ray = next(job for job in config["scrape_configs"] if job["job_name"] == "ray")
    assert any(f.startswith("ray/") for sd in ray["file_sd_configs"] for f in sd["files"])
