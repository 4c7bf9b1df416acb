"""The kustomize base (rendered by kubectl) and the KServe InferenceService against the code they deploy."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest

from prediction_service import __version__
from prediction_service.api.app import create_app
from prediction_service.cli import build_parser
from prediction_service.monitoring.metrics import MULTIPROC_ENV
from prediction_service.settings import ServerSettings, Settings
from tests.deploy.manifests import (KSERVE, NOT_SETTINGS, config_env, container_env, load_yaml, one, pod_spec,
                                    render_base, settings_variables)

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return render_base()


@pytest.fixture(scope="module")
def kserve() -> dict:
    return load_yaml(KSERVE)


@pytest.fixture(scope="module")
def get_routes(tmp_path_factory) -> set[str]:
    """GET paths of the real app, from its OpenAPI schema (routers are nested, the schema lists them all)."""
    app = create_app(Settings(model_store=tmp_path_factory.mktemp("routes-store")))
    return {path for path, methods in app.openapi()["paths"].items() if "get" in methods}


def workloads(base: list[dict], kserve: dict) -> list[tuple[dict, dict[str, str | None]]]:
    """(container, its environment) for the base Deployment and the KServe predictor."""
    deployment = one(base, "Deployment")
    [container] = pod_spec(deployment)["containers"]
    [predictor] = pod_spec(kserve)["containers"]
    return [(container, container_env(container, config_env(base))), (predictor, container_env(predictor))]


def test_base_renders_the_expected_objects(base):
    kinds = sorted(doc["kind"] for doc in base)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PersistentVolumeClaim",
                            "PodDisruptionBudget", "Service"])


def test_every_variable_set_is_a_setting_or_a_known_exception(base, kserve):
    known = settings_variables()
    for container, env in workloads(base, kserve):
        unknown = sorted(set(env) - known - set(NOT_SETTINGS))
        assert not unknown, f"{container['name']}: not Settings variables (typo?): {unknown}"
    assert MULTIPROC_ENV == "PROMETHEUS_MULTIPROC_DIR"  # the exception list names what the code reads


def test_configured_values_pass_settings_validation(base, kserve, monkeypatch, tmp_path):
    for container, env in workloads(base, kserve):
        with monkeypatch.context() as patch:
            for name, value in env.items():
                if value is not None and name in settings_variables():
                    patch.setenv(name, value.replace("$(POD_NAME)", "pod-0"))
            patch.setenv("MODEL_STORE", str(tmp_path))
            settings = Settings()  # raises on a value the service would refuse at start-up
            assert settings.server.host == "0.0.0.0", container["name"]
            assert settings.server.workers == int(env["SERVER_WORKERS"])


def test_variable_references_are_defined_before_use(base, kserve):
    for container, _ in workloads(base, kserve):
        defined = set()
        for item in container.get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", item.get("value", "")):
                assert ref in defined, f"{item['name']} uses $({ref}) before it is defined (Kubernetes leaves it as text)"
            defined.add(item["name"])


def test_probes_and_scrape_paths_are_real_routes(base, kserve, get_routes):
    for container, _ in workloads(base, kserve):
        paths = {probe: container[probe]["httpGet"]["path"] for probe in PROBES}
        assert paths == {"startupProbe": "/health/live", "livenessProbe": "/health/live",
                         "readinessProbe": "/health/ready"}
        assert set(paths.values()) <= get_routes
    template = one(base, "Deployment")["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/path"] in get_routes
    assert kserve["metadata"]["annotations"]["prometheus.io/path"] in get_routes


def test_ports_agree_with_server_port(base, kserve):
    for container, env in workloads(base, kserve):
        port = int(env["SERVER_PORT"])
        assert [p["containerPort"] for p in container["ports"]] == [port, int(env["SERVER_GRPC_PORT"])]
        for probe in PROBES:  # probes stay on HTTP: the first port, by number or by its name
            probe_port = container[probe]["httpGet"]["port"]
            assert probe_port in (port, "http") and container["ports"][0]["name"] == "http"
    port = int(config_env(base)["SERVER_PORT"])
    assert port == 8080  # KServe's convention, and the image's EXPOSE (tests/deploy/test_docker.py)
    service = one(base, "Service")
    [container, _], _ = workloads(base, kserve)
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [p["name"] for p in container["ports"]]
    annotations = one(base, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port
    assert int(kserve["metadata"]["annotations"]["prometheus.io/port"]) == port


def test_grpc_port_is_exposed_wherever_http_is(base, kserve):
    """OIP gRPC listens on SERVER_GRPC_PORT in every worker: the pod declares it as a port named grpc, the
    Service publishes it as gRPC (cleartext HTTP/2), and KServe is told the predictor speaks the v2 protocol."""
    assert ServerSettings.model_fields["grpc_port"].default == 8001  # the manifests agree with the code's default
    for container, env in workloads(base, kserve):
        grpc_port = int(env["SERVER_GRPC_PORT"])
        assert grpc_port == 8001 != int(env["SERVER_PORT"])
        ports = {p["name"]: p for p in container["ports"]}
        assert ports["grpc"] == {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"}
        assert all("grpc" not in str(container[probe]["httpGet"]["port"]) for probe in PROBES)
    service_ports = {p["name"]: p for p in one(base, "Service")["spec"]["ports"]}
    assert service_ports["grpc"] == {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP",
                                     "appProtocol": "kubernetes.io/h2c"}
    assert service_ports["http"]["targetPort"] == "http"
    [predictor] = pod_spec(kserve)["containers"]
    # KServe reads a custom predictor's protocol from its PROTOCOL variable; RawDeployment publishes the
    # first port as 80 and later ports as themselves, so http must stay first.
    assert container_env(predictor)["PROTOCOL"] == "v2"
    assert [p["name"] for p in predictor["ports"]] == ["http", "grpc"]


def test_termination_grace_covers_drain_grace_and_audit_flush(base, kserve):
    """On SIGTERM the service serves for DRAIN, lets in-flight requests finish (up to GRACE), then flushes the
    audit log, also bounded by GRACE (api/app.py lifespan). Kubernetes SIGKILLs at the grace period."""
    for (container, env), workload in zip(workloads(base, kserve), (one(base, "Deployment"), kserve)):
        drain = float(env["SERVER_SHUTDOWN_DRAIN_SECONDS"])
        grace = float(env["SERVER_SHUTDOWN_GRACE_SECONDS"])
        period = pod_spec(workload)["terminationGracePeriodSeconds"]
        assert period > drain + grace
        assert period > drain + 2 * grace, "leave room for the audit flush after the in-flight requests"
        assert "lifecycle" not in container, "the drain is in-process; a preStop sleep would add to it"
        readiness = container["readinessProbe"]
        assert drain >= readiness["periodSeconds"] * readiness["failureThreshold"], \
            "readiness-based balancers must see the 503 before the server stops accepting"


def test_api_keys_come_from_a_secret_never_a_literal(base, kserve):
    assert not [doc for doc in base if doc["kind"] == "Secret"], "the base must not ship a Secret"
    assert "API_KEYS" not in config_env(base)
    for container, _ in workloads(base, kserve):
        [item] = [e for e in container["env"] if e["name"] == "API_KEYS"]
        assert "value" not in item
        ref = item["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "prediction-service-api-keys", "key": "API_KEYS"}
        assert not ref.get("optional", False), "fail closed: no Secret, no pod"


def test_non_root_read_only_and_every_written_path_is_a_volume(base, kserve):
    for (container, env), workload in zip(workloads(base, kserve), (one(base, "Deployment"), kserve)):
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == 10001  # the image's USER (tests/deploy/test_docker.py)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert set(mounts.values()) <= set(volumes)
        written = [env["MODEL_STORE"], env[MULTIPROC_ENV], "/tmp", env["AUDIT_DB_PATH"]]
        for path in written:
            assert any(PurePosixPath(path).is_relative_to(m) for m in mounts), f"{path} is on the read-only root"
        assert "emptyDir" in volumes[mounts[env[MULTIPROC_ENV]]]
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert "persistentVolumeClaim" in volumes[mounts[env["MODEL_STORE"]]]


def test_audit_database_is_per_pod_on_the_shared_volume(base, kserve):
    for container, env in workloads(base, kserve):
        assert "$(POD_NAME)" in env["AUDIT_DB_PATH"], "SQLite WAL must not be written from several hosts"
        assert PurePosixPath(env["AUDIT_DB_PATH"]).is_relative_to(env["MODEL_STORE"])


def test_objects_reference_each_other(base):
    deployment = one(base, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert one(base, "Service")["spec"]["selector"].items() <= labels.items()
    assert one(base, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    target = one(base, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    spec = pod_spec(deployment)
    [container] = spec["containers"]
    assert [e["configMapRef"]["name"] for e in container["envFrom"]] == [one(base, "ConfigMap")["metadata"]["name"]]
    pvc = one(base, "PersistentVolumeClaim")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "replicas on several nodes share the registry"
    assert one(base, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= \
        one(base, "PodDisruptionBudget")["spec"]["minAvailable"] + 1, "a drain must be able to evict one pod"
    assert spec["enableServiceLinks"] is False


def test_container_args_are_a_real_command(base, kserve):
    for container, _ in workloads(base, kserve):
        args = build_parser().parse_args(container["args"])
        assert args.command == "serve" and args.port is None and args.host is None and args.workers is None


def test_images_carry_the_package_version(base, kserve):
    [container] = pod_spec(one(base, "Deployment"))["containers"]
    [predictor] = pod_spec(kserve)["containers"]
    assert container["image"] == predictor["image"] == f"prediction-service:{__version__}"


def test_kserve_custom_predictor_shape(kserve):
    assert kserve["apiVersion"] == "serving.kserve.io/v1beta1" and kserve["kind"] == "InferenceService"
    predictor = kserve["spec"]["predictor"]
    [container] = predictor["containers"]
    assert container["name"] == "kserve-container"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                                  {"name": "grpc", "containerPort": 8001, "protocol": "TCP"}]
    assert predictor["minReplicas"] <= predictor["maxReplicas"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in predictor["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["prediction-service-models"]  # the base's PVC (kubernetes/pvc.yaml)


def test_servicemonitor_matches_the_service(base):
    from tests.deploy.manifests import REPO

    monitor = load_yaml(REPO / "kubernetes" / "servicemonitor.yaml")
    service = one(base, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/metrics"
