"""Read the deployment files the way their tools do: the kustomize base rendered by ``kubectl kustomize``,
the KServe manifest and compose file as YAML, the Dockerfile as a list of instructions."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from prediction_service.settings import example_env

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
KSERVE = REPO / "kubernetes" / "kserve" / "inferenceservice.yaml"

NOT_SETTINGS = {
    # Variables the manifests set on purpose that are not Settings fields, and who reads them.
    "POD_NAME": "Kubernetes downward API; only used to build AUDIT_DB_PATH",
    "PROMETHEUS_MULTIPROC_DIR": "prometheus_client multiprocess mode and `serve` (monitoring/metrics.py)",
    "PROTOCOL": "KServe: the inference protocol of a custom predictor (v2 = Open Inference Protocol)",
    "PATH": "the image's virtual environment",
    "PYTHONPATH": "the interpreter: where prediction_service is",
    "PYTHONUNBUFFERED": "the interpreter: logs reach the container runtime at once",
    "PYTHONDONTWRITEBYTECODE": "the interpreter: the root filesystem is read-only",
    "PIP_NO_CACHE_DIR": "pip, build stage only",
    "PIP_DISABLE_PIP_VERSION_CHECK": "pip, build stage only",
}


def settings_variables() -> set[str]:
    """Every environment variable Settings reads, as `config-example` prints them."""
    return {line.split("=", 1)[0] for line in example_env().splitlines() if line and not line.startswith("#")}


def render_base() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize base cannot be rendered here")
    result = subprocess.run([kubectl, "kustomize", str(REPO / "kubernetes")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, f"kubectl kustomize failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def pod_spec(workload: dict) -> dict:
    """The pod spec of a Deployment, or of a KServe predictor (which inlines the PodSpec fields)."""
    if workload["kind"] == "InferenceService":
        return workload["spec"]["predictor"]
    return workload["spec"]["template"]["spec"]


def config_env(docs: list[dict]) -> dict[str, str]:
    return dict(one(docs, "ConfigMap")["data"])


def container_env(container: dict, configmap: dict[str, str] | None = None) -> dict[str, str | None]:
    """Name -> literal value (None when it comes from a secret/field ref), ConfigMap first, then env."""
    env: dict[str, str | None] = dict(configmap or {})
    for item in container.get("env", []):
        env[item["name"]] = item.get("value")
    return env


# ---- Dockerfile ------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for arg in self.all("ENV"):
            for token in shlex.split(arg):
                key, _, value = token.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def runtime(self) -> Stage:
        return self.stages[-1]

    def stage_args(self, stage: Stage) -> dict[str, str]:
        """ARG values visible in a stage: re-declared global ARGs keep the global default."""
        values = {}
        for arg in stage.all("ARG"):
            key, _, default = arg.partition("=")
            values[key] = default or self.global_args.get(key, "")
        return values


def instructions(text: str) -> list[tuple[str, str]]:
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    parsed = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        parsed.append((keyword.upper(), rest.strip()))
    return parsed


def parse_dockerfile(path: Path = DOCKERFILE) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, arg in instructions(path.read_text()):
        if keyword == "FROM":
            parts = arg.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], parts[0])
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name, base))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede the first FROM, found {keyword}"
            key, _, default = arg.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append((keyword, arg))
    return Dockerfile(global_args, stages)


def exec_form(arg: str) -> list[str]:
    value = json.loads(arg)
    assert isinstance(value, list), f"not exec form: {arg}"
    return value


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore leaves ``relative`` (or a folder above it) out of the build context.
    As Docker does: the last pattern that matches decides; ``!`` re-includes."""
    parts = Path(relative).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(c, pattern)
               or (pattern.startswith("**/") and fnmatch.fnmatchcase(Path(c).name, pattern[3:]))
               for c in candidates):
            ignored = not negate
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
