"""The Procfile and docker-compose.yml run the same processes as ``cicb up``; deploy/ holds a
valid Prometheus configuration, alert rules that pass their unit tests, and a Grafana
dashboard that queries cicb's own metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipeline.endpoints import RedisEndpoint
from pipeline.processes import (
    BEAT_COMMAND,
    CONSOLE_COMMAND,
    FLOWER_COMMAND,
    RECEIVER_COMMAND,
    WORKER_COMMAND,
)
from pipeline.settings import Settings
from tests.support import (
    ROOT,
    SAMPLES,
    TOKEN,
    Process,
    Target,
    cicb_env,
    deploy_metric_names,
    free_port,
    require,
    wait_until,
)

pytestmark = pytest.mark.integration


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_procfile_has_the_processes_of_cicb_up() -> None:
    procs = procfile()
    assert procs["web"] == RECEIVER_COMMAND
    assert procs["worker"] == WORKER_COMMAND
    assert procs["beat"] == BEAT_COMMAND
    assert procs["flower"].startswith(FLOWER_COMMAND)
    assert procs["console"] == CONSOLE_COMMAND


def test_honcho_start_runs_the_procfile(broker_url: str, target: Target, tmp_path: Path) -> None:
    receiver_port, flower_port = free_port(), free_port()
    env = cicb_env(
        broker_url,
        CICB_NOTIFY_URLS=target.url,
        CICB_RECEIVER_PORT=str(receiver_port),
        CICB_FLOWER_PORT=str(flower_port),
        CICB_CONSOLE_PORT=str(free_port()),
        CICB_CONSOLE_TOKEN="console-test-token",
        PATH=f"{Path(sys.executable).parent}:{cicb_env(broker_url)['PATH']}",
    )
    honcho = Process([sys.executable, "-m", "honcho", "start"], env, tmp_path / "honcho.log")
    honcho.start()
    try:
        url = f"http://127.0.0.1:{receiver_port}"
        wait_until(
            lambda: httpx.get(f"{url}/readyz").status_code == 200, timeout_s=60, what="receiver"
        )
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck").is_success,
            timeout_s=60,
            what="flower",
        )
        body = (SAMPLES / "transcode_workflow.json").read_bytes()
        response = httpx.post(f"{url}/callbacks", params={"token": TOKEN}, content=body)
        assert response.status_code == 200
        [event] = target.wait_for(1, timeout_s=60)
        assert event["workflow"]["run_id"] == "ic90edd59f84f11ec9d4f525400a3c59f"
    finally:
        honcho.stop()


def test_docker_compose_file_is_valid() -> None:
    require(
        shutil.which("docker-compose") is not None,
        "docker-compose not installed (apt-get install docker-compose, as .ci/run does)",
    )
    done = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        env={"CICB_RECEIVER_TOKEN": TOKEN, "CICB_CONSOLE_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cicb.json"
PROVISIONING = DEPLOY / "grafana" / "provisioning"

# The metrics cicb serves (README.md, Operations), with their labels; histograms by the
# series a scrape shows.
_HISTOGRAMS = {
    "cicb_receiver_enqueue_seconds": set(),
    "cicb_task_duration_seconds": {"task"},
    "cicb_callback_latency_seconds": {"route"},
    "cicb_delivery_delay_seconds": {"tag"},
    "cicb_notification_seconds": {"kind"},
}
METRICS: dict[str, set[str]] = {
    "up": set(),
    "cicb_receiver_responses_total": {"status"},
    "cicb_queue_messages": {"queue"},
    "cicb_ingest_oldest_age_seconds": set(),
    "cicb_inflight_messages": set(),
    "cicb_inflight_lost_messages": set(),
    "cicb_archive_entries": set(),
    "cicb_tasks_total": {"task", "route", "outcome", "error"},
    "cicb_callbacks_total": {"route", "outcome"},
    "cicb_notifications_total": {"kind", "result"},
    "cicb_notification_status_total": {"kind", "code"},
    "cicb_copied_objects_total": {"result"},
    "cicb_copied_bytes_total": set(),
    "cicb_resubmissions_total": {"result"},
    "cicb_reconciled_callbacks_total": {"kind"},
    "cicb_reconcile_errors_total": set(),
    "cicb_tasks_scheduled": set(),
    **{f"{name}_bucket": labels | {"le"} for name, labels in _HISTOGRAMS.items()},
    **{f"{name}_sum": labels for name, labels in _HISTOGRAMS.items()},
    **{f"{name}_count": labels for name, labels in _HISTOGRAMS.items()},
}
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    require(
        shutil.which("promtool"),
        "promtool not installed (apt-get install prometheus, as .ci/run does)",
    )
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def compose_config(path: Path = ROOT / "docker-compose.yml") -> dict[str, Any]:
    require(
        shutil.which("docker-compose") is not None,
        "docker-compose not installed (apt-get install docker-compose, as .ci/run does)",
    )
    done = subprocess.run(
        ["docker-compose", "-f", str(path), "config"],
        env={
            "CICB_RECEIVER_TOKEN": TOKEN,
            "CICB_CONSOLE_TOKEN": TOKEN,
            "RABBITMQ_ERLANG_COOKIE": "cookie",
            "PATH": "/usr/bin:/bin",
        },
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """A service's bind mounts: where each file of the repository appears in the container."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("/"):
            found[str(Path(source).relative_to(ROOT))] = target
    return found


def test_prometheus_config_is_valid_and_reads_the_alert_rules() -> None:
    done = promtool("check", "config", "deploy/prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    # promtool resolves rule_files beside the config, as Prometheus does in its container.
    assert "SUCCESS: 1 rule files found" in done.stdout, done.stdout
    assert f"Checking {Path('deploy') / 'alerts.yml'}" in done.stdout, done.stdout
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout, done.stdout
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["cicb-receiver"]["static_configs"] == [{"targets": ["receiver:8080"]}]
    assert jobs["flower"]["static_configs"] == [{"targets": ["flower:5555"]}]
    [dns] = jobs["cicb-worker"]["dns_sd_configs"]
    assert (dns["names"], dns["type"], dns["port"]) == (["worker"], "A", 8082)


def test_alert_rules_are_valid_and_say_what_fired() -> None:
    done = promtool("check", "rules", "deploy/alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    rules = alert_rules()
    assert len(rules) >= 7
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]


def test_alert_rules_pass_their_unit_tests() -> None:
    done = promtool("test", "rules", "deploy/alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout
    # Every alert is shown firing and shown silent.
    tests = yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never silent"


def test_dashboard_panels_query_the_provisioned_prometheus() -> None:
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39
    panels = dashboard["panels"]
    assert len(panels) >= 15
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == source["uid"], panel["title"]
        # Panels sit inside Grafana's 24 columns and do not overlap.
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells


def test_deploy_queries_only_cicb_metrics() -> None:
    names = deploy_metric_names()
    assert names, "no metric name found in the alerts and the dashboard"
    assert names <= set(METRICS), f"not cicb metrics: {sorted(names - set(METRICS))}"
    expressions = [rule["expr"] for rule in alert_rules()] + dashboard_expressions()
    for expr in expressions:
        used = [name for name in names if re.search(rf"\b{name}\b", expr)]
        assert used, f"no cicb metric in {expr!r}"
        # Label names in selectors, and in by (...), are the metrics' own.
        for name, matchers in re.findall(r"\b(\w+)\{([^}]*)\}", expr):
            labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert labels <= METRICS[name] | TARGET_LABELS, f"{expr!r}: {labels}"
        known = set().union(*(METRICS[name] for name in used)) | TARGET_LABELS | {"le"}
        for grouping in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {label.strip() for label in grouping.split(",")}
            assert labels <= known, f"{expr!r}: by ({grouping})"


def test_docker_compose_runs_prometheus_and_grafana_on_the_deploy_files() -> None:
    services = compose_config()["services"]
    assert {"redis", "receiver", "worker", "beat", "flower", "prometheus", "grafana"} <= set(
        services
    )
    prometheus, grafana = services["prometheus"], services["grafana"]
    assert prometheus["image"].startswith("prom/prometheus")
    assert grafana["image"].startswith("grafana/grafana")
    # The config and its rules side by side, where rule_files finds them.
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert mounts(prometheus) == {
        "deploy/prometheus.yml": "/etc/prometheus/prometheus.yml",
        **{f"deploy/{name}": f"/etc/prometheus/{name}" for name in config["rule_files"]},
    }
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "cicb.yml").read_text())
    [dashboards] = provider["providers"]
    assert dashboards["type"] == "file"
    assert mounts(grafana) == {
        "deploy/grafana/provisioning": "/etc/grafana/provisioning",
        "deploy/grafana/dashboards": dashboards["options"]["path"],
    }
    # The datasource's URL is the prometheus service.
    [source] = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090"
    for service, port in ((prometheus, 9090), (grafana, 3000)):
        assert service["ports"] == [f"127.0.0.1:{port}:{port}/tcp"]
    # Workers serve their metrics where the cicb-worker job scrapes them.
    [dns] = next(j for j in config["scrape_configs"] if j["job_name"] == "cicb-worker")[
        "dns_sd_configs"
    ]
    worker_env = services["worker"]["environment"]
    assert worker_env["CICB_WORKER_METRICS_PORT"] == str(dns["port"])
    assert worker_env["CICB_WORKER_METRICS_HOST"] == "0.0.0.0"


def test_render_dashboard_draws_the_panels_from_a_real_prometheus(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    require(binary, "prometheus not installed (apt-get install prometheus, as .ci/run does)")
    # A Prometheus that scrapes itself as a worker: `up` has data, cicb's metrics have none.
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - {{job_name: cicb-worker, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}\n"
    )
    args = [f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}"]
    args.append(f"--web.listen-address=127.0.0.1:{port}")
    prometheus = Process([str(binary), *args], {"PATH": "/usr/bin:/bin"}, tmp_path / "log")
    prometheus.start()
    output = tmp_path / "dashboard.png"
    render = [sys.executable, str(DEPLOY / "render_dashboard.py"), "--prometheus", url]
    render += ["--minutes", "1", "--scrape-interval", "1", "--output", str(output)]
    try:
        up = {"query": "up[10s]"}
        wait_until(
            lambda: len(httpx.get(f"{url}/api/v1/query", params=up).json()["data"]["result"]),
            timeout_s=30,
            what="Prometheus scraping",
        )
        done = subprocess.run(render, capture_output=True, text=True, timeout=120)
    finally:
        prometheus.stop()
    assert done.returncode == 0, done.stderr
    png = output.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    # The dashboard's grid: 20 in wide at 100 dpi; 0.35 in a row, and 0.5 in for the title.
    panels = json.loads(DASHBOARD.read_text())["panels"]
    rows = max(panel["gridPos"]["y"] + panel["gridPos"]["h"] for panel in panels)
    size = (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big"))
    assert size == (2000, round((rows * 0.35 + 0.5) * 100))


def test_the_sentinel_example_runs_cicb_on_three_redis_nodes_and_their_sentinels() -> None:
    services = compose_config(DEPLOY / "sentinel" / "docker-compose.yml")["services"]
    redis_nodes = sorted(name for name in services if name.startswith("redis-"))
    sentinels = sorted(name for name in services if name.startswith("sentinel-"))
    assert redis_nodes == ["redis-1", "redis-2", "redis-3"]
    assert len(sentinels) == 3
    # One primary, two replicas of it; each Sentinel watches it, a quorum of two.
    replicas = [n for n in redis_nodes if "--replicaof" in services[n]["command"]]
    assert replicas == ["redis-2", "redis-3"]
    for name in sentinels:
        assert "sentinel monitor mymaster redis-1 6379 2" in " ".join(services[name]["command"])
    cicb = {"receiver", "worker", "beat", "flower", "console"}
    assert cicb <= set(services)
    for name in cicb:
        env = services[name]["environment"]
        endpoint = RedisEndpoint.parse(env["CICB_BROKER_URL"], master=env["CICB_SENTINEL_MASTER"])
        assert sorted(h for h, _ in endpoint.sentinels) == sentinels
        assert env["CICB_MIN_REPLICAS"] == "1"
        # The settings cicb reads from this environment are valid (it would stop at start).
        Settings.from_env(env)


def test_the_rabbitmq_example_runs_cicb_on_three_clustered_nodes_with_quorum_queues() -> None:
    services = compose_config(DEPLOY / "rabbitmq" / "docker-compose.yml")["services"]
    nodes = sorted(name for name in services if name.startswith("rabbitmq-"))
    assert nodes == ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
    # One Erlang cookie, and each node knows the other two.
    assert {services[n]["environment"]["RABBITMQ_ERLANG_COOKIE"] for n in nodes} == {"cookie"}
    for name in nodes:
        assert services[name]["hostname"] == name
        args = services[name]["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
        assert all(f"rabbit@{n}" in args for n in nodes)
    cicb = {"receiver", "worker", "beat", "console"}
    assert cicb <= set(services)
    for name in cicb:
        env = services[name]["environment"]
        hosts = [url.split("@")[1].split(":")[0] for url in env["CICB_BROKER_URL"].split(";")]
        assert hosts == nodes
        settings = Settings.from_env(env)
        assert settings.queue_type == "quorum" and settings.redis_url == "redis://redis:6379/0"
