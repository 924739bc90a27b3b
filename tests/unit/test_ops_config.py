"""The ops config checks out: Prometheus rules pass promtool, every metric they use exists."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import backuphub.metrics  # noqa: F401  (registers the project's metrics)

ROOT = Path(__file__).parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "backuphub-dashboard.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    message = "promtool not found (Debian: apt-get install -y prometheus)"
    if os.environ.get("CI") or os.environ.get("BACKUPHUB_REQUIRE_SERVICES") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def test_promtool_accepts_the_rules():
    result = subprocess.run(
        [_promtool(), "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def _exported_names() -> set[str]:
    names = set()
    for collector in list(REGISTRY._collector_to_names):
        for metric in collector.describe() if hasattr(collector, "describe") else []:
            names.add(metric.name)
    return names


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


@pytest.mark.parametrize("path", [RULES, DASHBOARD], ids=["rules", "dashboard"])
def test_every_metric_used_is_exported(path: Path):
    used = set(re.findall(r"backuphub_[a-z_]+", path.read_text()))
    exported = {_base(name) for name in _exported_names()}

    unknown = sorted(name for name in used if _base(name) not in exported)
    assert not unknown, f"{path.name} uses metrics nobody exports: {unknown}"


def test_the_dashboard_is_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())

    assert dashboard["uid"] and dashboard["panels"]
    assert all(panel["targets"] for panel in dashboard["panels"])
