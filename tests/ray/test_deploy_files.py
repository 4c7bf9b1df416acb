"""deploy/ray/*.yaml against Serve's own config schema and the code they import, the market-hours /
off-hours switch, and the KubeRay RayService rendered by kubectl (kept out of the base kustomization)."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from prediction_service.cli import build_parser
from prediction_service.deploy.profiles import CONFIG_DIR, Profile, TradingSchedule
from prediction_service.deploy.ray_serve import DEPLOYMENT, PredictionReplica, RayAppArgs, build_app
from tests.deploy.manifests import REPO, settings_variables

CONFIGS = ["default.yaml", "market-hours.yaml", "off-hours.yaml"]
SEED = {  # replicas per profile
    "default.yaml": (2, 20), "market-hours.yaml": (5, 30), "off-hours.yaml": (2, 10)}


def serve_config(name: str) -> ServeDeploySchema:
    return ServeDeploySchema.model_validate(yaml.safe_load((CONFIG_DIR / name).read_text()))


def only_app(config: ServeDeploySchema):
    (app,) = config.applications
    (deployment,) = app.deployments
    return app, deployment


@pytest.mark.parametrize("name", CONFIGS)
def test_serve_configs_follow_the_seed_and_the_code(name):
    app, deployment = only_app(serve_config(name))
    assert app.import_path == "prediction_service.deploy.ray_serve:build_app"
    assert deployment.name == DEPLOYMENT
    build_app(RayAppArgs.model_validate(app.args))  # the args are what the builder takes
    autoscaling = deployment.autoscaling_config
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == SEED[name]
    assert deployment.ray_actor_options.num_cpus == 2 and deployment.ray_actor_options.memory == 2 * 1024**3
    env = app.runtime_env["env_vars"]
    assert set(env) <= settings_variables(), "runtime_env sets a variable Settings does not read"
    assert (env["BATCH_MAX_BATCH_SIZE"], env["BATCH_MAX_QUEUE_DELAY_MS"]) == ("32", "10")


GPU_LINE = "# num_gpus: 0.5"


@pytest.mark.parametrize("name", CONFIGS)
def test_the_gpu_option_of_each_config_is_valid_and_changes_only_the_reservation(name):
    """The "0.5 GPU where present" setting is one commented line per config: uncommented, Serve accepts it
    and it reserves half a GPU per replica, nothing else changes."""
    text = (CONFIG_DIR / name).read_text()
    assert text.count(GPU_LINE) == 1
    gpu = ServeDeploySchema.model_validate(yaml.safe_load(text.replace(GPU_LINE, GPU_LINE.lstrip("# "))))
    app, deployment = only_app(gpu)
    assert deployment.ray_actor_options.num_gpus == 0.5
    build_app(RayAppArgs.model_validate(app.args))
    cpu = serve_config(name).model_dump(exclude_unset=True)
    with_gpu = gpu.model_dump(exclude_unset=True)
    assert with_gpu["applications"][0]["deployments"][0]["ray_actor_options"].pop("num_gpus") == 0.5
    assert with_gpu == cpu


def test_ray_run_reserves_a_gpu_fraction_only_when_asked():
    from prediction_service.commands.ray import deployment_options

    def options(*flags: str) -> dict:
        return deployment_options(build_parser().parse_args(["ray", "run", *flags]))

    assert options() == {"num_replicas": 2, "ray_actor_options": {"num_cpus": 1.0}}
    gpu = options("--replicas", "3", "--replica-cpus", "2", "--replica-gpus", "0.5")
    assert gpu == {"num_replicas": 3, "ray_actor_options": {"num_cpus": 2.0, "num_gpus": 0.5}}
    replica = PredictionReplica.options(**gpu)  # Serve validates the options here
    assert replica.ray_actor_options["num_gpus"] == 0.5 and replica.num_replicas == 3
    with pytest.raises(SystemExit, match="replica-gpus"):
        options("--replica-gpus", "-1")


def test_profiles_differ_only_in_autoscaling():
    market, off = (serve_config(f).model_dump(exclude_unset=True) for f in ("market-hours.yaml", "off-hours.yaml"))
    market_deployment, off_deployment = (c["applications"][0]["deployments"][0] for c in (market, off))
    assert market_deployment.pop("autoscaling_config") != off_deployment.pop("autoscaling_config")
    assert market == off, "anything but autoscaling_config would restart replicas on every switch"
    market_autoscaling = only_app(serve_config("market-hours.yaml"))[1].autoscaling_config
    off_autoscaling = only_app(serve_config("off-hours.yaml"))[1].autoscaling_config
    assert market_autoscaling["upscale_delay_s"] < off_autoscaling["upscale_delay_s"]
    assert market_autoscaling["downscale_delay_s"] > off_autoscaling["downscale_delay_s"]


@pytest.mark.parametrize("moment, profile", [
    ("2026-11-30T14:59:00+00:00", Profile.MARKET_HOURS),   # Monday 09:59 New York (EST)
    ("2026-11-30T13:59:00+00:00", Profile.OFF_HOURS),      # 08:59: before the 30 min lead
    ("2026-11-30T21:29:00+00:00", Profile.MARKET_HOURS),   # 16:29: within the lag after the close
    ("2026-11-30T21:30:00+00:00", Profile.OFF_HOURS),
    ("2026-07-06T13:00:00+00:00", Profile.MARKET_HOURS),   # summer time: 09:00 EDT
    ("2026-11-28T15:00:00+00:00", Profile.OFF_HOURS),      # Saturday
])
def test_the_schedule_picks_the_profile(moment, profile):
    assert TradingSchedule().profile_at(datetime.fromisoformat(moment)) is profile
    assert profile.config_path().exists()


def test_profile_command_names_the_file(capsys):
    args = build_parser().parse_args(["ray", "profile", "--at", "2026-11-30T15:00:00+00:00"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(CONFIG_DIR / "market-hours.yaml")
    with pytest.raises(ValueError, match="aware"):
        TradingSchedule().profile_at(datetime(2026, 11, 30, 15))


@pytest.fixture(scope="module")
def rayservice() -> dict:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: kubernetes/ray cannot be rendered here")
    result = subprocess.run([kubectl, "kustomize", str(REPO / "kubernetes" / "ray")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (doc,) = [d for d in yaml.safe_load_all(result.stdout) if d]
    return doc


def test_rayservice_serves_the_default_config(rayservice):
    assert (rayservice["apiVersion"], rayservice["kind"]) == ("ray.io/v1", "RayService")
    spec = rayservice["spec"]
    embedded = ServeDeploySchema.model_validate(yaml.safe_load(spec["serveConfigV2"]))
    assert embedded.model_dump(exclude_unset=True) == serve_config("default.yaml").model_dump(exclude_unset=True)
    cluster = spec["rayClusterConfig"]
    assert cluster["rayVersion"] == "2.60.0" == __import__("ray").__version__
    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["containers"]
        assert container["image"].startswith("prediction-service-ray:")
        assert {"name": "models", "mountPath": "/models"} in container["volumeMounts"]
        assert {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]} == {
            "models": "prediction-service-models"}
        assert pod["securityContext"]["runAsNonRoot"] is True
    (workers,) = cluster["workerGroupSpecs"]
    _, deployment = only_app(embedded)
    per_pod = float(workers["rayStartParams"]["num-cpus"]) // deployment.ray_actor_options.num_cpus
    assert per_pod * workers["maxReplicas"] >= deployment.autoscaling_config["max_replicas"]


def test_rayservice_stays_out_of_the_base():
    base = yaml.safe_load((REPO / "kubernetes" / "kustomization.yaml").read_text())
    assert not any("ray" in resource for resource in base["resources"])
