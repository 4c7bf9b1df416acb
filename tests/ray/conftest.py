"""One real two-node Ray cluster on this machine for the whole tests/ray run (``ray.cluster_utils.Cluster``:
a head node and a worker node, 1 CPU each, small object stores, no dashboard), with Serve's HTTP proxy on
a free loopback port. Each test deploys its own application on it and deletes it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import httpx
import pytest

from tests.support.server import REPO, free_port

ray = pytest.importorskip("ray", reason="ray[serve] is not installed (requirements-ray.txt)")
from ray import serve  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from prediction_service.deploy.ray_serve import DEPLOYMENT  # noqa: E402

APP = "prediction"
OBJECT_STORE = 80 * 1024 * 1024  # the smallest Ray accepts: the tests move no large objects
CLUSTER_ENV = {
    "PYTHONPATH": str(REPO),  # the replicas import prediction_service
    # The one proxy (on the head) would otherwise send every request of a light load to the head's replica.
    "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
}


@dataclass
class RayServe:
    cluster: Cluster
    url: str
    node_ids: list[str]

    def deployment_status(self):
        return serve.status().applications[APP].deployments[DEPLOYMENT]

    def running_replicas(self) -> int:
        return self.deployment_status().replica_states.get("RUNNING", 0)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Until Serve says the application runs and /health/ready answers 200 through the proxy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            app = serve.status().applications.get(APP)
            if app is not None and app.status == "RUNNING":
                try:
                    if httpx.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        raise AssertionError(f"application not ready in {timeout} s: {serve.status()}")


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[RayServe]:
    previous = {name: os.environ.get(name) for name in CLUSTER_ENV}
    os.environ.update(CLUSTER_ENV)  # inherited by the raylets, hence by the proxy and the replicas
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="warning", log_to_driver=False)
        port = free_port()
        # One proxy (on the head): both nodes share 127.0.0.1, so a proxy per node could not share the port.
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
        assert len(nodes) == 2
        yield RayServe(cluster, f"http://127.0.0.1:{port}", nodes)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            for name, value in previous.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@contextmanager
def deployed(ray_serve: RayServe, app, timeout: float = 120.0) -> Iterator[RayServe]:
    """``app`` (``application(...)``) deployed as APP at '/' and ready; deleted on exit."""
    serve.run(app, name=APP, route_prefix="/", blocking=False)
    try:
        ray_serve.wait_ready(timeout)
        yield ray_serve
    finally:
        serve.delete(APP)


@pytest.fixture
def deploy(ray_serve):
    """Deploy an application for one test: ``deploy(application(...))``; deleted after the test."""
    with ExitStack() as stack:
        yield lambda app: stack.enter_context(deployed(ray_serve, app))
