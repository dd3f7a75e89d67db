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
    triton = next(s for s in config["services"].values() if s.get("image") == "postlens-triton:local")
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


def test_redis_is_a_bounded_evicting_cache(config: dict[str, Any]) -> None:
    command = config["services"]["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
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
