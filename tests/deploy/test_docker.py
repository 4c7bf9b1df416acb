"""docker/Dockerfile, .dockerignore and docker/compose.yaml against the repository and the code.
(No image is built here: these read the files; see docs/deployment.md for what that leaves unverified.)"""

from __future__ import annotations

import re
import shlex

import pytest

from prediction_service.api.app import create_app
from prediction_service.cli import build_parser
from prediction_service.settings import ServerSettings, Settings
from tests.deploy.manifests import (COMPOSE, NOT_SETTINGS, REPO, dockerignore_patterns, dockerignored,
                                    exec_form, load_yaml, parse_dockerfile, settings_variables)

CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile()


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE)


def pinned(requirements: str, package: str) -> str:
    [version] = re.findall(rf"^{re.escape(package)}==(\S+)\s*$", requirements, flags=re.M)
    return version


def shell_commands(run: str) -> list[list[str]]:
    """A RUN line's simple commands (split at && ; ||), quotes respected."""
    lexer = shlex.shlex(run, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", ";", "||"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in commands + [current] if c]


def test_shell_commands_split_like_the_shell():
    run = 'pip install a==1 && python -c "import x; print(1)" ; pip install -r r.txt'
    assert shell_commands(run) == [["pip", "install", "a==1"], ["python", "-c", "import x; print(1)"],
                                   ["pip", "install", "-r", "r.txt"]]


def test_multi_stage_on_python_311_slim(dockerfile):
    assert len(dockerfile.stages) >= 2
    assert {stage.base for stage in dockerfile.stages} == {"python:3.11-slim"}
    copies_from_build = [arg for arg in dockerfile.runtime.all("COPY") if arg.startswith("--from=")]
    assert copies_from_build, "the runtime stage takes the built environment from the build stage"
    assert not any("pip install" in run for run in dockerfile.runtime.all("RUN")), "no installs in the runtime stage"


def test_torch_pin_matches_requirements_and_uses_the_cpu_index(dockerfile):
    requirements = (REPO / "requirements.txt").read_text()
    [build] = [s for s in dockerfile.stages if any("pip install" in run for run in s.all("RUN"))]
    args = dockerfile.stage_args(build)
    assert args["TORCH_VERSION"] == pinned(requirements, "torch")
    assert args["TORCH_INDEX_URL"] == CPU_INDEX
    install = " ".join(build.all("RUN"))
    assert '--index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"' in install


def test_pip_installs_only_pinned_files_that_reach_the_build(dockerfile):
    ignore = dockerignore_patterns()
    installed_files, installed_specs = [], []
    for stage in dockerfile.stages:
        copied = {}  # destination in the image -> source in the repository
        for arg in stage.all("COPY"):
            if arg.startswith("--from="):
                continue
            *sources, destination = shlex.split(arg)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert not dockerignored(source, ignore), f"COPY {source}: excluded by .dockerignore"
                copied[destination] = source
        for run in stage.all("RUN"):
            for words in shell_commands(run):
                if words[:2] != ["pip", "install"]:
                    continue
                files = [words[i + 1] for i, word in enumerate(words) if word in ("-r", "--requirement")]
                for file in files:
                    assert file in copied, f"pip install -r {file}: not copied into the stage"
                    text = (REPO / copied[file]).read_text()
                    requirements = [line.split("#")[0].strip() for line in text.splitlines()]
                    assert all("==" in line for line in requirements if line), f"{copied[file]}: unpinned lines"
                    installed_files.append(copied[file])
                specs = [w for w in words[2:] if not w.startswith("-") and w not in files and "://" not in w
                         and not w.startswith("${")]
                assert all("==" in spec for spec in specs), f"unpinned: {specs}"
                installed_specs.extend(specs)
    assert installed_files == ["requirements.txt"] and installed_specs == ['torch==${TORCH_VERSION}']


def test_context_excludes_local_state_and_secrets():
    ignore = dockerignore_patterns()
    for path in [".venv/bin/python", ".git/HEAD", "model_store/x/v1/model.onnx", ".env",
                 "prediction_service/__pycache__/cli.cpython-311.pyc", "tests/conftest.py"]:
        assert dockerignored(path, ignore), path
    for path in ["requirements.txt", "prediction_service/cli.py", "prediction_service/modelzoo/assets/sentiment_vocab.txt"]:
        assert not dockerignored(path, ignore), path
        assert (REPO / path).exists()


def test_runtime_runs_non_root_on_server_port(dockerfile):
    runtime = dockerfile.runtime
    [user] = runtime.all("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root uid (runAsNonRoot can verify it)"
    assert uid == "10001"  # kubernetes/deployment.yaml runAsUser
    env = runtime.env()
    exposed = [port for arg in runtime.all("EXPOSE") for port in arg.split()]
    assert exposed == [env["SERVER_PORT"], env["SERVER_GRPC_PORT"]], "HTTP and OIP gRPC, the ports serve binds"
    assert env["SERVER_GRPC_PORT"] == str(ServerSettings.model_fields["grpc_port"].default)
    assert env["SERVER_HOST"] == "0.0.0.0"
    assert ServerSettings.model_fields["host"].default == "127.0.0.1", "0.0.0.0 belongs in the image, not the code"
    assert env["MODEL_STORE"] == "/models" and runtime.all("VOLUME") == ['["/models"]']


def test_environment_names_are_settings(dockerfile, compose):
    known = settings_variables() | set(NOT_SETTINGS)
    for stage in dockerfile.stages:
        assert set(stage.env()) <= known, set(stage.env()) - known
    for name, service in compose["services"].items():
        if "build" not in service:
            continue  # third-party images (the observability profile's Grafana): their own variables
        assert set(service.get("environment", {})) <= known, (name, set(service.get("environment", {})) - known)


def test_entrypoint_is_serve_and_healthcheck_hits_liveness(dockerfile, tmp_path):
    runtime = dockerfile.runtime
    [entrypoint] = runtime.all("ENTRYPOINT")
    [cmd] = runtime.all("CMD")
    command = exec_form(entrypoint) + exec_form(cmd)
    assert command == ["python", "-m", "prediction_service", "serve"]
    assert build_parser().parse_args(command[3:]).command == "serve"
    [healthcheck] = runtime.all("HEALTHCHECK")
    probe = exec_form(healthcheck.split(" CMD ", 1)[1])
    paths = re.findall(r"/health/\w+", " ".join(probe))
    assert paths == ["/health/live"]
    app = create_app(Settings(model_store=tmp_path))
    assert "/health/live" in app.openapi()["paths"]
    assert "os.environ.get('SERVER_PORT'" in probe[-1], "the check follows SERVER_PORT"


def test_compose_builds_the_demo_registry_then_serves_it(compose):
    services = compose["services"]
    demo, api = services["demo-registry"], services["api"]
    args = build_parser().parse_args(demo["command"])
    assert args.command == "setup-demo" and str(args.store) == "/models"
    assert api["depends_on"]["demo-registry"]["condition"] == "service_completed_successfully"
    assert demo["volumes"] == api["volumes"] == ["model-store:/models"]
    assert demo["build"] == api["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert (COMPOSE.parent / demo["build"]["context"] / demo["build"]["dockerfile"]).resolve().is_file()
    env = api["environment"]
    settings_env = {k: v for k, v in env.items() if k in settings_variables() and "${" not in str(v)}
    published = dict(reversed(entry.rsplit(":", 1)) for entry in api["ports"])  # container port -> host side
    assert list(published) == [env["SERVER_PORT"], env["SERVER_GRPC_PORT"]], "HTTP and OIP gRPC are published"
    assert all(host.startswith("127.0.0.1:") for host in published.values()), "publish on the host's loopback only"
    assert published[env["SERVER_GRPC_PORT"]] == f"127.0.0.1:{env['SERVER_GRPC_PORT']}"  # the usual 8001 on the host
    assert env["API_KEYS"] == "${API_KEYS:-}", "keys come from the host environment, never a literal"
    stop = float(api["stop_grace_period"].rstrip("s"))
    drain, grace = float(env["SERVER_SHUTDOWN_DRAIN_SECONDS"]), float(env["SERVER_SHUTDOWN_GRACE_SECONDS"])
    assert stop > drain + 2 * grace  # see test_kubernetes: drain, in-flight requests, audit flush
    assert api["read_only"] is True and api["tmpfs"] == ["/tmp"]
    assert settings_env["MODEL_STORE"] == "/models"


# ---- compose profiles `triton` and `torchserve` -------------------------------------------------------------

TRITON_RELEASE = (2, 51)
"""The Triton server release the project's clients target (tritonclient, the nvidia-pytriton test server)."""


def triton_release(tag: str) -> tuple[int, int]:
    """NGC container YY.MM-py3 -> Triton 2.N (24.01 is 2.42, one minor per month)."""
    match = re.fullmatch(r"(\d\d)\.(\d\d)-py3", tag)
    assert match, f"pin an exact NGC release (YY.MM-py3), not {tag}"
    return 2, (int(match[1]) - 24) * 12 + int(match[2]) + 41


def properties(path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def url_port(url: str) -> str:
    return re.fullmatch(r"(?:https?://)?[\w.-]+:(\d+)(?:/.*)?", url)[1]


def healthcheck_port(service: dict) -> str:
    check = service["healthcheck"]
    assert check["test"][0] == "CMD" and check["retries"] >= 3, check
    [url] = re.findall(r"http://127\.0\.0\.1:\d+/[\w/.-]*", " ".join(check["test"]))
    return url_port(url)


def host_ports(service: dict) -> list[str]:
    return [entry.rsplit(":", 1)[0] for entry in service.get("ports", [])]


def test_compose_backend_profiles_run_the_real_servers_with_a_switched_api(compose):
    services = compose["services"]
    api = services["api"]
    requirements = (REPO / "requirements.txt").read_text()
    for backend in ("triton", "torchserve"):
        members = {name for name, service in services.items() if backend in service.get("profiles", [])}
        assert members == {"backend-store", backend, f"api-{backend}"}, (backend, members)
        server, switched = services[backend], services[f"api-{backend}"]
        # the API is the default one with the adapter switched: same image, same hardening
        env = switched["environment"]
        assert env["SERVING_ADAPTER_TYPE"] == backend
        assert switched["build"] == api["build"] and switched["image"] == api["image"]
        for key in ("MODEL_STORE", "SERVER_HOST", "SERVER_PORT", "SERVER_GRPC_PORT", "API_KEYS"):
            assert env[key] == api["environment"][key], (backend, key)
        assert switched["read_only"] is True and switched["tmpfs"] == ["/tmp"]
        assert switched["stop_grace_period"] == api["stop_grace_period"]
        assert switched["depends_on"] == {backend: {"condition": "service_healthy"}}
        assert server["depends_on"] == {"backend-store": {"condition": "service_completed_successfully"}}
        # published on the host's loopback only, on ports no other service takes; the backend itself is not
        assert all(port.startswith("127.0.0.1:") for port in switched["ports"]), backend
        others = {port for name, s in services.items() if name != f"api-{backend}" for port in host_ports(s)}
        assert not set(host_ports(switched)) & others, backend
        assert "ports" not in server, f"{backend}: its management API stays on the compose network"
        # the server reads the store the adapter writes: one volume, mounted at the same path
        assert "model-store:/models" in switched["volumes"] and "model-store:/models:ro" in server["volumes"]
        for volume in switched["volumes"] + server["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().exists(), f"{backend}: {source} missing"
            else:
                assert source in compose["volumes"], f"{backend}: undeclared volume {source}"
        if backend == "triton":
            [repository] = [arg.split("=", 1)[1] for arg in server["command"] if arg.startswith("--model-repository=")]
            assert "--model-control-mode=explicit" in server["command"]  # the adapter loads and unloads
            repository_setting, server_port = env["TRITON_MODEL_REPOSITORY"], "8000"  # Triton's default HTTP port
            assert env["TRITON_SERVER_URL"] == f"triton:{server_port}"
            image, _, tag = server["image"].rpartition(":")
            assert image == "nvcr.io/nvidia/tritonserver" and triton_release(tag) == TRITON_RELEASE
            backends = env["TRITON_BACKEND_DIRECTORY"]
            [mount] = [v for v in switched["volumes"] if v.split(":")[1] == backends]
            listed = {p.name for p in (COMPOSE.parent / mount.split(":")[0]).iterdir() if p.is_dir()}
            assert "onnxruntime" in listed  # the native backend: the python one needs onnxruntime inside Triton
        else:
            assert server["command"][0] == "torchserve" and "--foreground" in server["command"]
            config_path = server["command"][server["command"].index("--ts-config") + 1]
            [mount] = [v for v in server["volumes"] if v.split(":")[1] == config_path]
            config = properties(COMPOSE.parent / mount.split(":")[0])
            repository, repository_setting = config["model_store"], env["TORCHSERVE_MODEL_STORE"]
            assert config["enable_model_api"] == "true"  # the adapter registers models
            assert config["allowed_urls"] == f"file://{repository}/.*"
            server_port = url_port(config["inference_address"])
            assert env["TORCHSERVE_INFERENCE_URL"] == f"http://torchserve:{server_port}"
            assert env["TORCHSERVE_MANAGEMENT_URL"] == f"http://torchserve:{url_port(config['management_address'])}"
            assert server["image"] == f"pytorch/torchserve:{pinned(requirements, 'torchserve')}-cpu"
        assert repository == repository_setting and repository.startswith("/models/"), backend
        assert healthcheck_port(server) == server_port, backend
        assert repository in " ".join(services["backend-store"]["entrypoint"]), f"{repository} is never created"
    store = services["backend-store"]
    assert store["build"] == api["build"] and store["volumes"] == ["model-store:/models"]
    assert store["depends_on"] == {"demo-registry": {"condition": "service_completed_successfully"}}
