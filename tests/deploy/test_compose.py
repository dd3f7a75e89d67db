"""deploy/compose: the real Docker Compose (built from its Go module) validates and resolves the stack.

No container engine here: `docker compose config` parses, interpolates and validates the file against the compose
specification without one. What it cannot know — that PostLens reads the settings compose hands it and that the
addresses in them lead to services of this file — is checked on its resolved output.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from postlens.settings import Settings, get_settings
from tests.deploy.tools import DEPLOY, DOCKER_CONFIG, installed, output_of, settings_fields

COMPOSE_DIR = DEPLOY / "compose"
PROFILES = ("cpu", "gpu")


def compose_config(profile: str) -> dict[str, Any]:
    installed(DOCKER_CONFIG / "cli-plugins" / "docker-compose")
    out = output_of(
        ["docker", "compose", "--profile", profile, "config", "--format", "json"],
        cwd=COMPOSE_DIR,
        # COMPOSE_PROFILES from .env would add the cpu profile to the gpu one.
        env={"DOCKER_CONFIG": str(DOCKER_CONFIG), "COMPOSE_PROFILES": profile},
    )
    return json.loads(out)


@pytest.fixture(scope="module", params=PROFILES)
def config(request: pytest.FixtureRequest) -> dict[str, Any]:
    return compose_config(request.param)


def env_file() -> dict[str, str]:
    lines = (COMPOSE_DIR / ".env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.lstrip().startswith("#"))


def worker_settings(config: dict[str, Any], service: str = "worker") -> Settings:
    """The settings a PostLens process of ``service`` would run with (its environment, nothing else)."""
    environment = config["services"][service]["environment"]
    fields = {
        key.removeprefix("POSTLENS_").lower(): value
        for key, value in environment.items()
        if key.startswith("POSTLENS_")
    }
    return Settings(_env_file=None, **fields)


def host_names(config: dict[str, Any]) -> set[str]:
    names = set(config["services"])
    for service in config["services"].values():
        for network in (service.get("networks") or {}).values():
            names.update((network or {}).get("aliases", []))
    return names


def triton_service(config: dict[str, Any]) -> str:
    """The name of the profile's one Triton service (GPU image or CPU image)."""
    (name,) = [name for name, s in config["services"].items() if s.get("image", "").startswith("postlens-triton")]
    return name


def test_every_postlens_variable_in_the_env_file_is_a_setting() -> None:
    # Settings ignore unknown variables, so a misspelt name would silently fall back to the default.
    unknown = {key for key in env_file() if key.startswith("POSTLENS_")} - settings_fields()
    assert not unknown, f"not PostLens settings: {sorted(unknown)}"


def test_workers_reach_services_of_this_file(config: dict[str, Any]) -> None:
    settings = worker_settings(config)
    hosts = host_names(config)
    assert settings.kafka_bootstrap.split(":")[0] in hosts
    assert re.match(r"redis://([^:/]+)", settings.redis_url)[1] in hosts
    assert re.match(r"https?://([^:/]+)", settings.es_url)[1] in hosts
    triton_host = settings.triton_url.split(":")[0]
    assert triton_host in hosts, f"no service of this profile answers on {triton_host}"
    retrain = worker_settings(config, "retrain")
    assert re.match(r"https?://([^:/]+)", retrain.triton_http_url)[1] == triton_host
    # The repository retrain exports into is the one Triton serves.
    triton = config["services"][triton_service(config)]
    served = {v["source"] for v in triton["volumes"] if v["target"] == "/models"}
    written = {
        v["source"] for v in config["services"]["retrain"]["volumes"] if v["target"] == str(retrain.model_repository)
    }
    assert served and served == written


def test_workers_scale_up_to_the_partitions_of_the_posts_topic(config: dict[str, Any]) -> None:
    worker = config["services"]["worker"]
    settings = worker_settings(config)
    assert "container_name" not in worker and not worker.get("ports"), "a fixed name or host port blocks --scale"
    assert settings.topic_partitions >= 4
    # Auto-created topics (a producer before the first worker) get as many partitions as the workers would create.
    assert int(config["services"]["kafka"]["environment"]["KAFKA_NUM_PARTITIONS"]) == settings.topic_partitions


def test_prometheus_scrapes_every_worker_replica_on_its_metrics_port(config: dict[str, Any]) -> None:
    scrape = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())["scrape_configs"]
    (worker_job,) = [job for job in scrape if job["job_name"] == "postlens-worker"]
    (discovery,) = worker_job["dns_sd_configs"]
    assert discovery["names"] == ["worker"] and discovery["type"] == "A"  # one address per replica
    assert discovery["port"] == worker_settings(config).worker_web_port


def test_long_running_services_have_health_checks_that_dependents_wait_for(config: dict[str, Any]) -> None:
    services = config["services"]
    one_shots = {name for name, service in services.items() if service.get("restart", "no") == "no"}
    for name, service in services.items():
        if name not in one_shots and name not in {"kafka-exporter", "retrain"}:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy" and dependency in services:
                assert services[dependency].get("healthcheck"), f"{name} waits for {dependency}, which has none"


def test_health_checks_run_the_same_under_podman(config: dict[str, Any]) -> None:
    # podman's Docker-compatible API joins a CMD check's arguments and splits them again at spaces: an argument with
    # a space (a `python -c` program) runs as several. CMD-SHELL keeps its one command line.
    for name, service in config["services"].items():
        kind, *arguments = service.get("healthcheck", {}).get("test") or ["NONE"]
        if kind == "CMD":
            assert not [arg for arg in arguments if re.search(r"\s", arg)], f"{name}: use CMD-SHELL for {arguments}"


def test_redis_is_a_bounded_evicting_cache(config: dict[str, Any]) -> None:
    command = config["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=False))
    assert options["--maxmemory"] and options["--maxmemory"] != "0"
    assert options["--maxmemory-policy"] != "noeviction"


def test_triton_profiles() -> None:
    gpu = compose_config("gpu")["services"]
    cpu = compose_config("cpu")["services"]
    assert "triton" in gpu and "triton-cpu" not in gpu
    assert "triton-cpu" in cpu and "triton" not in cpu
    (device,) = gpu["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "deploy" not in cpu["triton-cpu"]


def test_images_run_the_versions_the_local_stack_runs(config: dict[str, Any]) -> None:
    defaults = get_settings()
    images = {name: service.get("image", "") for name, service in config["services"].items()}
    assert images["kafka"].endswith(f":{defaults.kafka_version}")
    assert images["elasticsearch"].endswith(f":{defaults.elasticsearch_version}")
    assert images["kibana"].endswith(f":{defaults.elasticsearch_version}")
    for name, image in images.items():
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"


def test_kibana_objects_and_grafana_dashboards_are_mounted_from_deploy(config: dict[str, Any]) -> None:
    services = config["services"]
    (saved_objects,) = services["kibana-objects"]["volumes"]
    assert saved_objects["source"] == str(DEPLOY / "kibana" / "postlens.ndjson")
    assert saved_objects["target"] in " ".join(services["kibana-objects"]["command"])
    mounts = {volume["target"]: volume["source"] for volume in services["grafana"]["volumes"]}
    provider = yaml.safe_load((COMPOSE_DIR / "grafana" / "provisioning.yaml").read_text())["providers"][0]
    assert mounts[provider["options"]["path"]] == str(DEPLOY / "grafana")
    datasource = yaml.safe_load((COMPOSE_DIR / "grafana" / "datasources.yaml").read_text())["datasources"][0]
    for dashboard in (DEPLOY / "grafana").glob("*.json"):
        variables = {v["name"]: v for v in json.loads(dashboard.read_text())["templating"]["list"]}
        assert variables["datasource"]["current"]["value"] == datasource["uid"], dashboard.name


IMAGE_DOCKERFILES = {
    "postlens-worker:local": "worker",
    "postlens-trainer:local": "trainer",
    "postlens-triton:local": "triton",
    "postlens-triton-cpu:local": "triton-cpu",
}


def test_named_volumes_mount_where_the_image_made_a_directory_its_user_owns(config: dict[str, Any]) -> None:
    # A fresh named volume takes the owner of the image's directory at its mount point; a path the image lacks is
    # created root-owned, and the unprivileged process cannot write to it.
    from tests.deploy.test_images import created_directories, final_user_uid

    uids = set()
    for name, service in config["services"].items():
        image = IMAGE_DOCKERFILES.get(service.get("image", ""))
        volumes = [v for v in service.get("volumes", []) if v["type"] == "volume"]
        if image is None or not volumes:
            continue
        created = created_directories(image)
        for volume in volumes:
            assert volume["target"] in created, f"{name}: {volume['target']} does not exist in the {image} image"
        uids.add(final_user_uid(image))
    assert len(uids) == 1, "every image writing to the shared volumes runs as one uid"


def test_unauthenticated_interfaces_are_published_on_this_host_only(config: dict[str, Any]) -> None:
    # Elasticsearch runs without security here, so Kibana has no login; Prometheus has none either.
    for name in ("kibana", "prometheus"):
        for port in config["services"][name].get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} published on every interface: {port}"
    for name in ("elasticsearch", "redis", "kafka"):
        assert not config["services"][name].get("ports"), f"{name} must not be published"


def test_the_first_model_is_bootstrapped_before_triton_starts(config: dict[str, Any]) -> None:
    services = config["services"]
    triton = services[triton_service(config)]
    (bootstrap_name,) = [
        name
        for name, condition in triton["depends_on"].items()
        if condition["condition"] == "service_completed_successfully"
    ]
    bootstrap = services[bootstrap_name]
    assert bootstrap["command"] == ["postlens-bootstrap-model"] and bootstrap["restart"] == "no"
    repository = str(worker_settings(config, bootstrap_name).model_repository)
    written = {v["source"] for v in bootstrap["volumes"] if v["target"] == repository}
    served = {v["source"] for v in triton["volumes"] if v["target"] == "/models"}
    assert written and written == served
    # The seed sits in the checkpoints volume retraining fine-tunes from.
    seed = bootstrap["environment"]["SEED_CHECKPOINT"]
    (checkpoints,) = [v for v in bootstrap["volumes"] if seed.startswith(v["target"] + "/")]
    retrain = {v["source"]: v["target"] for v in services["retrain"]["volumes"]}
    assert retrain.get(checkpoints["source"]) == checkpoints["target"]


def test_the_gpu_profile_loads_the_gpu_config_variant_and_the_cpu_path_is_unchanged() -> None:
    from tests.deploy.test_images import DOCKERFILES, parse

    gpu = compose_config("gpu")["services"]
    cpu = compose_config("cpu")["services"]
    assert "--model-config-name=gpu" in gpu["triton"]["command"]
    assert "--device gpu" in gpu[next(iter(gpu["triton"]["depends_on"]))]["environment"]["EXPORT_ARGS"]
    # CPU: the image's own command (config.pbtxt), and a bootstrap exporting without a device.
    assert not cpu["triton-cpu"].get("command")
    image_cmd = [rest for keyword, rest in parse(DOCKERFILES["triton"])[1][-1].instructions if keyword == "CMD"][-1]
    assert "--model-config-name" not in image_cmd
    assert [a for a in gpu["triton"]["command"] if a != "--model-config-name=gpu"] == json.loads(image_cmd)
    assert "EXPORT_ARGS" not in cpu[next(iter(cpu["triton-cpu"]["depends_on"]))]["environment"]
