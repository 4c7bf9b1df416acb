"""The shipped observability: alert rules (promtool), the Grafana dashboard and its provisioning, the
compose ``observability`` profile, the Kubernetes PrometheusRule, and a real Prometheus scraping a real
running service: every dashboard query returns data from it (no panel refers to a metric the service
does not export)."""

from __future__ import annotations

import json
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from prediction_service.monitoring.drift import DriftGauges
from prediction_service.monitoring.metrics import ServiceMetrics
from tests.support.server import free_port, launch

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "monitoring" / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
GRAFANA = REPO / "monitoring" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "prediction-service.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yaml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "prediction-service.yaml"
COMPOSE = REPO / "docker" / "compose.yaml"
PROMETHEUS_RULE = REPO / "kubernetes" / "prometheusrule.yaml"
OPERATIONS = REPO / "docs" / "operations.md"
JOB = "prediction-service"
MODEL = "tiny-regressor"
PREDICT = f"/v1/models/{MODEL}/predict"

# Panels whose series only exist once the event they count has happened (a full queue, a passed deadline,
# a rate-limited key, a refusal): under a healthy load they are empty, so the live test checks that their
# query runs and that every metric it names is one the scraped service declares.
EVENT_ONLY_PANELS = {
    "Shed (429), deadline expired (504) and rate limited (429) per second",
    "Refusals by status (429 / 503 / 504) per second",
    "Shadow copies shed/s (shadow queue full)",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian: apt-get install prometheus)")
    return path


def rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dash: dict) -> list[tuple[str, str]]:
    """(where, expr) for every panel target, template variable query and annotation query."""
    queries = [(f"panel {panel['title']!r}", target["expr"])
               for panel in dash["panels"] for target in panel.get("targets", [])]
    for variable in dash["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]["query"])
        assert match, variable
        queries.append((f"variable {variable['name']}", match.group(1)))
    queries += [(f"annotation {a['name']!r}", a["expr"]) for a in dash["annotations"]["list"]]
    return queries


def substitute(expr: str, instance: str) -> str:
    return (expr.replace("${model}", MODEL).replace("$model", MODEL).replace("$instance", instance)
            .replace("$__rate_interval", "15s"))


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(prediction_[a-z_]+)\b", expr)) | ({"up"} if re.search(r"\bup\{", expr) else set())


def exported_names() -> set[str]:
    """Every sample name the service's registry can produce (histogram series with their suffixes)."""
    registry = CollectorRegistry()
    ServiceMetrics(registry)
    DriftGauges(registry)
    names = set()
    for family in registry.collect():
        if family.type == "histogram":
            names |= {family.name + suffix for suffix in HISTOGRAM_SUFFIXES}
        elif family.type == "counter":
            names.add(family.name + "_total")
        else:
            names.add(family.name)
    return names


# ---- alert rules ------------------------------------------------------------------------------------------


def test_rules_pass_promtool_check():
    promtool = tool("promtool")
    result = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_rule_unit_tests_fire_and_stay_silent():
    promtool = tool("promtool")
    result = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=PROMETHEUS_DIR, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    fired, silent = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else silent).add(check["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert fired == names, names ^ fired
    assert silent == names, names ^ silent


def test_unit_tests_detect_a_broken_threshold(tmp_path):
    """The unit tests are not vacuous: loosen one threshold and they fail."""
    promtool = tool("promtool")
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    text = RULES.read_text()
    assert "> 0.05" in text
    (tmp_path / RULES.name).write_text(text.replace("> 0.05", "> 0.5"))
    result = subprocess.run([promtool, "test", "rules", RULE_TESTS.name], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0
    assert "PredictionLatencySLOBreached" in result.stdout + result.stderr


def test_rules_use_only_exported_metrics_and_have_runbooks():
    exported = exported_names() | {"up"}
    operations = OPERATIONS.read_text()
    assert "## Alerts" in operations
    alerts_section = operations.split("## Alerts", 1)[1].split("\n## ", 1)[0]
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names and names <= exported, (rule["alert"], names - exported)
        assert rule["labels"]["severity"] in {"page", "warning", "info"}
        assert rule["annotations"]["runbook"] == "docs/operations.md#alerts"
        assert f"`{rule['alert']}`" in alerts_section, f"{rule['alert']}: no runbook line in docs/operations.md"


def test_prometheus_config_passes_promtool(tmp_path):
    promtool = tool("promtool")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]  # where compose mounts alerts.yml
    [job] = config["scrape_configs"]
    assert job["job_name"] == JOB and job["metrics_path"] == "/metrics"
    config["rule_files"] = [str(RULES)]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_prometheus_rule_is_the_rules_file(tmp_path):
    rule = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the base with the rule cannot be rendered here")
    base = tmp_path / "kubernetes"
    shutil.copytree(REPO / "kubernetes", base)
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    kustomization["resources"].append("prometheusrule.yaml")  # what the kustomization's comment tells
    (base / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    result = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [rendered] = [doc for doc in yaml.safe_load_all(result.stdout) if doc and doc["kind"] == "PrometheusRule"]
    assert rendered["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
    assert rendered["spec"]["groups"] == rule["spec"]["groups"]


# ---- Grafana ----------------------------------------------------------------------------------------------


def test_dashboard_structure():
    dash = dashboard()
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    [source] = datasource
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    expected = {"type": "prometheus", "uid": source["uid"]}
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert set(variables) == {"model", "instance"}
    for variable in variables.values():
        assert variable["datasource"] == expected and variable["includeAll"] and variable["multi"]
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [panel for panel in dash["panels"] if panel["type"] != "row"]
    assert len(graphs) >= 15
    used_variables = set()
    for panel in graphs:
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"] == expected, panel["title"]
            assert f'job="{JOB}"' in target["expr"], panel["title"]
            used_variables |= set(re.findall(r"\$\{?(\w+)", target["expr"])) - {"__rate_interval"}
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
    assert used_variables == set(variables)
    for annotation in dash["annotations"]["list"]:
        assert annotation["datasource"] == expected and annotation["expr"]


def test_dashboard_uses_only_exported_metrics():
    exported = exported_names() | {"up"}
    for where, expr in dashboard_queries(dashboard()):
        names = metric_names(expr)
        assert names and names <= exported, (where, names - exported)


def test_dashboard_provider_points_at_the_mounted_dashboards():
    [provider] = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert provider["type"] == "file"
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    mounts = dict(reversed(volume.split(":")[:2]) for volume in grafana["volumes"])  # container -> host
    host = mounts[provider["options"]["path"]]
    assert (COMPOSE.parent / host / DASHBOARD.name).resolve() == DASHBOARD
    assert (COMPOSE.parent / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"


# ---- compose ----------------------------------------------------------------------------------------------


def test_compose_observability_profile():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"demo-registry", "api"}, "the default demo is unchanged"
    observability = {name for name, s in services.items() if "observability" in s.get("profiles", [])}
    assert observability == {"prometheus", "grafana"}
    for name in observability:
        service = services[name]
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin an exact version, not {image}"
        assert service["ports"] and all(port.startswith("127.0.0.1:") for port in service["ports"]), name
        check = service["healthcheck"]["test"]
        assert check[0] == "CMD" and check[-1].startswith("http://127.0.0.1:"), name
        assert check[-1].split(":")[2].split("/")[0] == service["ports"][0].rsplit(":", 1)[1], name
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().exists(), f"{name}: {source} missing"
            else:
                assert source in yaml.safe_load(COMPOSE.read_text())["volumes"], f"{name}: undeclared {source}"
        for value in service.get("environment", {}).values():
            assert "PASSWORD" not in str(value) or str(value).startswith("${"), "secrets come from the host"
    # Prometheus finds every API service of whichever profiles run (DNS names on the compose network)
    scrape = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"][0]
    apis = {name: s["environment"]["SERVER_PORT"] for name, s in services.items()
            if s.get("command") is None and "SERVER_PORT" in s.get("environment", {})}
    assert {"api", "api-triton", "api-torchserve"} <= set(apis)
    [dns] = scrape["dns_sd_configs"]
    assert dns["type"] == "A" and set(dns["names"]) == set(apis)
    assert {str(dns["port"])} == set(apis.values())
    [relabel] = scrape["relabel_configs"]
    assert relabel["target_label"] == "instance" and relabel["replacement"] == f"$1:{dns['port']}"
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


# ---- a real Prometheus scraping a real service -----------------------------------------------------------


def start_prometheus(work: Path, target: str) -> tuple[subprocess.Popen, str]:
    prometheus = tool("prometheus")
    port = free_port()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "rule_files": [str(RULES)],
              "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics",
                                  "static_configs": [{"targets": [target]}]}]}
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(work / "prometheus.log", "wb")
    process = subprocess.Popen(
        [prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return process, f"http://127.0.0.1:{port}"


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def query(http: httpx.Client, prometheus: str, expr: str) -> list[dict]:
    body = http.get(f"{prometheus}/api/v1/query", params={"query": expr}).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def wait_for(condition, what: str, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def run_experiment(api: httpx.Client, sent: dict[str, int], requests: int = 60) -> str:
    """An A/B experiment on tiny-regressor: champion 2.0.0 (production since the promotion), challenger
    1.0.0, auto_apply. Outcomes are what the champion predicts (plus noise), so the challenger's error is
    about 100 times the champion's: a rollback at the first analysis. Returns the experiment id."""
    spec = {"model_name": MODEL, "champion_version": "2.0.0", "challenger_version": "1.0.0", "traffic_split": 0.5,
            "task": "regression", "auto_apply": True, "min_samples_per_arm": 5,
            "thresholds": {"msprt_tau": 10.0}}  # the mixture prior's width at the size of this effect
    created = api.post("/v1/experiments", json=spec)
    assert created.status_code == 201, created.text
    rng = random.Random(5)
    arms = {"champion": 0, "challenger": 0}
    for _ in range(requests):
        response = api.post(PREDICT, json={"instance": [rng.uniform(0, 1) for _ in range(4)]})
        assert response.status_code == 200, response.text
        body = response.json()
        sent["200"] += 1
        arms[body["arm"]] += 1
        predicted = body["predictions"][0]  # TinyRegressor(2.0) predicts twice what TinyRegressor(1.0) does
        actual = (predicted if body["arm"] == "champion" else 2 * predicted) + rng.gauss(0, 0.5)
        outcome = api.post(f"/v1/predictions/{body['request_id']}/outcome", json={"actual": actual})
        assert outcome.status_code == 201, outcome.text
    assert min(arms.values()) >= 5, arms
    sent["experiment"] = requests
    return created.json()["id"]


def start_shadow(api: httpx.Client) -> None:
    """A shadow experiment on tiny-regressor once the split has ended: production (2.0.0) answers every request
    and a copy runs on 1.0.0."""
    spec = {"model_name": MODEL, "champion_version": "2.0.0", "challenger_version": "1.0.0", "kind": "shadow",
            "task": "regression"}
    created = api.post("/v1/experiments", json=spec)
    assert created.status_code == 201, created.text


def send_shadowed(api: httpx.Client, sent: dict[str, int], requests: int) -> None:
    for i in range(requests):
        response = api.post(PREDICT, json={"instance": [0.1 * i, 0.2, 0.3, 0.4]})
        assert response.status_code == 200 and response.json()["version"] == "2.0.0", response.text
        sent["200"] += 1
        sent["shadow"] = sent.get("shadow", 0) + 1


@pytest.fixture(scope="module")
def scraped(tiny_store_template, tmp_path_factory) -> Iterator[tuple[httpx.Client, str, str, dict[str, int]]]:
    """A running service under a small bounded load with an A/B experiment that rolls back by itself, and a
    Prometheus that has scraped it. Shared by the tests below: they only read from it."""
    tmp_path = tmp_path_factory.mktemp("scraped")
    tiny_store = tmp_path / "store"
    shutil.copytree(tiny_store_template, tiny_store, symlinks=True)
    # The experiment's decision is applied by the test's analyze call, after Prometheus has scraped the
    # experiment's counters at zero (the schedule could apply it before).
    # Drift: the first 20 requests of a version are its reference, figures every second (the drift panel).
    server = launch(tiny_store, env={"EXPERIMENT_AUTO_APPLY_INTERVAL_SECONDS": "0", "DRIFT_REFERENCE_REQUESTS": "20",
                                     "DRIFT_MIN_WINDOW_ROWS": "10", "DRIFT_INTERVAL_SECONDS": "1"})
    work = tmp_path / "prometheus"
    work.mkdir()
    process = None
    try:
        target = f"127.0.0.1:{server.port}"
        process, prometheus = start_prometheus(work, target)
        sent = {"200": 0, "4xx": 0, "unknown": 0}
        selector = f'prediction_requests_total{{job="{JOB}", model="{MODEL}", status="200"}}'
        with httpx.Client(base_url=server.url, timeout=10.0) as api, httpx.Client(timeout=10.0) as http:
            def ready():
                try:
                    return http.get(f"{prometheus}/-/ready").status_code == 200
                except httpx.HTTPError:
                    assert process.poll() is None, (work / "prometheus.log").read_text()[-3000:]
                    return False

            def seen(samples: int) -> bool:  # Prometheus has scraped every success sent so far
                result = query(http, prometheus, f"sum(last_over_time({selector}[1m]))")
                counts = query(http, prometheus, f"count_over_time({selector}[1m])")
                return bool(result and float(result[0]["value"][1]) == sent["200"]
                            and counts and max(float(c["value"][1]) for c in counts) >= samples)

            def load(requests: int) -> None:
                for i in range(requests):
                    if i % 10 == 9:  # wrong number of features: a domain error for tiny-regressor
                        response = api.post(PREDICT, json={"instance": [0.1, 0.2]})
                        assert 400 <= response.status_code < 500
                        sent["4xx"] += 1
                    elif i % 50 == 24:
                        response = api.post("/v1/models/no-such-model/predict", json={"instance": [0.1]})
                        assert response.status_code == 404
                        sent["unknown"] += 1
                    else:
                        response = api.post(PREDICT, json={"instance": [0.1, 0.2, 0.3, 0.4]})
                        assert response.status_code == 200, response.text
                        sent["200"] += 1

            wait_for(ready, "Prometheus to start")
            wait_for(lambda: query(http, prometheus, f'up{{job="{JOB}"}} == 1'), "a first scrape of the service")
            # Each version's series first appears with a few requests, then the bulk follows in a later
            # scrape, so rates see it grow (a series' first sample counts no increase).
            # A promotion between the halves: the version panel and the version-change annotation see it.
            for half in range(2):
                if half:
                    promoted = api.post(f"/v1/registry/models/{MODEL}/versions/2.0.0/promote",
                                        json={"stage": "production"})
                    assert promoted.status_code == 200, promoted.text
                load(20)
                wait_for(lambda: seen(1), "Prometheus to scrape the first requests")
                load(130)
                wait_for(lambda: seen(1), "Prometheus to scrape the load")
            wait_for(lambda: seen(3), "Prometheus to scrape the whole load")

            def total(expr: str) -> float | None:
                result = query(http, prometheus, f"sum({expr})")
                return float(result[0]["value"][1]) if result else None

            wait_for(lambda: total(f'prediction_input_drift_window_rows{{job="{JOB}"}}'),
                     "Prometheus to scrape the drift figures")
            experiment = run_experiment(api, sent)
            wait_for(lambda: total(f'prediction_experiment_outcomes_total{{job="{JOB}"}}') == sent["experiment"]
                     and total(f'prediction_experiment_applied_total{{job="{JOB}"}}') == 0,
                     "Prometheus to scrape the experiment's counters")
            analysis = api.get(f"/v1/experiments/{experiment}/analyze")
            assert analysis.status_code == 200, analysis.text
            assert analysis.json()["decision"] == "rollback" and analysis.json()["applied"], analysis.json()["reasons"]
            wait_for(lambda: total(f'prediction_experiment_applied_total{{job="{JOB}", decision="rollback"}}') == 1
                     and seen(1), "Prometheus to scrape the rollback")
            sent["experiment_id"] = experiment
            start_shadow(api)
            for requests in (5, 25):  # the series appears, then grows in a later scrape (rates see it)
                send_shadowed(api, sent, requests)
                wait_for(lambda: total(f'prediction_shadow_runs_total{{job="{JOB}"}}') == sent["shadow"]
                         and seen(1), "Prometheus to scrape the shadow copies")
            yield http, prometheus, target, sent
    finally:
        if process is not None:
            stop(process)
        server.stop()


def test_every_dashboard_query_returns_data_from_a_real_prometheus(scraped):
    http, prometheus, instance, _ = scraped
    metadata = http.get(f"{prometheus}/api/v1/targets/metadata", params={"match_target": f'{{job="{JOB}"}}'})
    declared = {entry["metric"] for entry in metadata.json()["data"]}  # HELP/TYPE of the scraped exposition
    empty = []
    for where, expr in dashboard_queries(dashboard()):
        result = query(http, prometheus, substitute(expr, instance))
        for name in metric_names(expr) - {"up"}:
            base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
            assert name in declared or base in declared or name.removesuffix("_total") in declared, (where, name)
        if not result and where.removeprefix("panel ").strip("'") not in EVENT_ONLY_PANELS:
            empty.append(where)
    assert not empty, f"queries without data: {empty}"


def test_service_figures_reach_prometheus(scraped):
    http, prometheus, instance, sent = scraped
    by_status = {s["metric"]["status"]: float(s["value"][1]) for s in query(
        http, prometheus, f'sum by (status) (prediction_requests_total{{job="{JOB}", model="{MODEL}"}})')}
    assert by_status["200"] == sent["200"]
    assert sum(v for status, v in by_status.items() if status.startswith("4")) == sent["4xx"]
    [errors] = query(http, prometheus, f'sum(prediction_errors_total{{job="{JOB}", model="{MODEL}"}})')
    assert float(errors["value"][1]) == sent["4xx"]
    [unknown] = query(http, prometheus, f'sum(prediction_requests_total{{job="{JOB}", model="_unresolved"}})')
    assert float(unknown["value"][1]) == sent["unknown"]  # unknown names stay out of label values
    versions = query(http, prometheus, f'sum by (version) (prediction_requests_total{{job="{JOB}", model="{MODEL}", status="200"}})')
    assert {v["metric"]["version"] for v in versions} == {"1.0.0", "2.0.0"}  # before and after the promotion
    [up] = query(http, prometheus, f'up{{job="{JOB}", instance="{instance}"}}')
    assert up["value"][1] == "1"
    [loaded] = query(http, prometheus, f'prediction_models_loaded{{job="{JOB}"}}')
    assert float(loaded["value"][1]) >= 1
    experiment = f'job="{JOB}", model="{MODEL}", experiment="{sent["experiment_id"]}"'
    for name in ("prediction_experiment_predictions_total", "prediction_experiment_outcomes_total"):
        arms = {s["metric"]["arm"]: float(s["value"][1]) for s in query(
            http, prometheus, f"sum by (arm) ({name}{{{experiment}}})")}
        assert set(arms) == {"champion", "challenger"} and sum(arms.values()) == sent["experiment"], (name, arms)
    decisions = {s["metric"]["decision"]: s["value"][1] for s in query(
        http, prometheus, f"prediction_experiment_decision{{{experiment}}}")}
    assert decisions == {"continue": "0", "promote": "0", "rollback": "1"}
    [p_value] = query(http, prometheus, f'prediction_experiment_p_value{{{experiment}, metric="abs_error"}}')
    assert float(p_value["value"][1]) < 0.05
    assert query(http, prometheus, f'prediction_ready{{job="{JOB}"}} == 1')
    assert query(http, prometheus, f'prediction_backend_healthy{{job="{JOB}", backend="simple"}} == 1')


def test_alert_rules_evaluate_cleanly_against_the_real_series(scraped):
    http, prometheus, _, _ = scraped

    def evaluated():
        groups = http.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        found = [rule for group in groups for rule in group["rules"]]
        return found if found and all(rule.get("lastEvaluation", "").startswith("20") and
                                      rule["health"] != "unknown" for rule in found) else None

    found = wait_for(evaluated, "the alert rules to be evaluated")
    assert {rule["name"] for rule in found} == {rule["alert"] for rule in rules()}
    assert all(rule["health"] == "ok" for rule in found), [(r["name"], r.get("lastError")) for r in found]
    state = {rule["name"]: rule["state"] for rule in found}
    for name in ("PredictionServiceDown", "PredictionNoModelsLoaded", "PredictionNotReady",
                 "PredictionBackendUnavailable"):
        assert state[name] == "inactive", (name, state[name])

    def applied_alert():
        groups = http.get(f"{prometheus}/api/v1/rules").json()["data"]["groups"]
        [rule] = [r for g in groups for r in g["rules"] if r["name"] == "PredictionExperimentAutoApplied"]
        return rule if rule["state"] == "firing" else None

    rule = wait_for(applied_alert, "the experiment's rollback to fire PredictionExperimentAutoApplied")
    [alert] = rule["alerts"]
    assert alert["labels"]["decision"] == "rollback" and alert["labels"]["model"] == MODEL


async def test_stats_report_host_cpu_and_memory(client):
    """The system resources: /v1/stats carries the host's CPU and memory beside the process figures."""
    stats = (await client.get("/v1/stats")).json()
    host = stats["host"]
    assert host["cpu_count"] >= 1 and 0 <= host["cpu_percent"] <= 100 * host["cpu_count"]
    assert 0 < host["memory_available_bytes"] <= host["memory_total_bytes"]
    assert 0 <= host["memory_percent"] <= 100
    assert stats["process_resident_memory_bytes"] < host["memory_total_bytes"]
