"""The deployment files agree with the state layer: Kubernetes takes the database URL from a Secret (its
pods span nodes), compose's `postgres` profile runs a pinned, healthy PostgreSQL on loopback that its API
points at."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[2]


def test_kubernetes_base_reads_the_state_database_url_from_a_secret():
    deployment = yaml.safe_load((REPO / "kubernetes" / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {entry["name"]: entry for entry in container["env"]}
    ref = env["STATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "prediction-service-state", "key": "STATE_DATABASE_URL"}  # required: no SQLite fallback
    hpa = yaml.safe_load((REPO / "kubernetes" / "hpa.yaml").read_text())
    assert hpa["spec"]["minReplicas"] >= 2  # several pods, several nodes: why the URL is required
    docs = (REPO / "docs" / "deployment.md").read_text()
    assert "prediction-service-state" in docs and "state copy" in docs


def test_compose_postgres_profile_is_pinned_healthy_on_loopback_and_used_by_its_api():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    members = {name for name, service in services.items() if "postgres" in service.get("profiles", [])}
    assert members == {"postgres", "api-postgres"}
    postgres, api = services["postgres"], services["api-postgres"]
    image, _, tag = postgres["image"].rpartition(":")
    assert image == "postgres" and tag[0].isdigit() and "." in tag  # a pinned release, not "latest"
    assert postgres["ports"] == ["127.0.0.1:5432:5432"]
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert api["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert all(port.startswith("127.0.0.1:") for port in api["ports"])
    url = make_url(api["environment"]["STATE_DATABASE_URL"].replace("${POSTGRES_PASSWORD:-prediction-demo}", "pw"))
    environment = postgres["environment"]
    assert (url.get_backend_name(), url.host, url.username, url.database) == \
        ("postgresql", "postgres", environment["POSTGRES_USER"], environment["POSTGRES_DB"])
    assert postgres["volumes"][0].split(":")[0] in compose["volumes"]
