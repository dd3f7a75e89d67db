"""deploy/helm/postlens: lints, renders, validates against the Kubernetes schemas and KEDA's CRDs, and hangs together.

No cluster here: helm renders offline, kubernetes-validate carries the Kubernetes OpenAPI schemas of each release, and
the KEDA resources are checked against the CRDs of the KEDA release pinned in the Makefile. What no schema knows —
that the autoscaler watches the group the workers are in, that names, keys, ports and labels point at something — is
checked on the rendered objects.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_images import DOCKERFILES, final_user_uid
from tests.deploy.tools import (
    DEPLOY,
    HELM,
    KEDA,
    KUBERNETES_VALIDATE,
    TOOLS_PYTHON,
    installed,
    output_of,
    run,
    settings_fields,
)

CHART = DEPLOY / "helm" / "postlens"
# The oldest release the chart admits (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
# Everything switched on: the chart creates the Secret, Kafka SASL over TLS with a private CA, ES API key with a CA.
SECURED = [
    "secrets.existingSecret=",
    "kafka.securityProtocol=SASL_SSL",
    "kafka.saslMechanism=SCRAM-SHA-256",
    "secrets.kafkaSaslUsername=postlens",
    "secrets.kafkaSaslPassword=s3cret",
    "kafka.customCa=true",
    "secrets.kafkaCaCert=-----BEGIN CERTIFICATE-----",
    "secrets.esApiKey=aWQ6a2V5",
    "elasticsearch.customCa=true",
    "secrets.esCaCert=-----BEGIN CERTIFICATE-----",
    "metrics.serviceMonitor.enabled=true",
]
VARIANTS = {
    "defaults": [],
    "secured": SECURED,
    "plaintext-no-autoscaling": [
        "kafka.securityProtocol=PLAINTEXT",
        "autoscaling.enabled=false",
        "triton.gpus=0",
        "retrain.enabled=false",
        "modelRepository.existingClaim=models",
    ],
}


def helm(*args: str | Path) -> str:
    return output_of([installed(HELM), *args, "--kube-version", KUBERNETES_VERSIONS[-1]])


def helm_refusal(*args: str | Path) -> str:
    """What helm says when it refuses to render; fails the test if it renders."""
    result = run([installed(HELM), *args, "--kube-version", KUBERNETES_VERSIONS[-1]])
    assert result.returncode != 0, f"helm rendered {args}"
    return result.stderr


def render(settings: list[str]) -> str:
    return helm("template", "pl", str(CHART), *[arg for item in settings for arg in ("--set", item)])


def objects(manifest: str) -> list[dict[str, Any]]:
    return [obj for obj in yaml.safe_load_all(manifest) if obj]


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    return request.param, VARIANTS[request.param]


@pytest.fixture(scope="module")
def manifest(variant: tuple[str, list[str]]) -> str:
    return render(variant[1])


@pytest.fixture(scope="module")
def rendered(manifest: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects(manifest)}


def of_kind(rendered: dict[tuple[str, str], dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for (k, _), obj in rendered.items() if k == kind]


def one(rendered: dict[tuple[str, str], dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    (found,) = [obj for (k, name), obj in rendered.items() if k == kind and name.endswith(suffix)]
    return found


def pod_specs(rendered: dict[tuple[str, str], dict[str, Any]]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, pod template metadata, pod spec) of every Deployment, CronJob, Job and Pod (the test hook)."""
    pods = [(obj["metadata"]["name"], obj["spec"]["template"]) for obj in of_kind(rendered, "Deployment")]
    pods += [
        (obj["metadata"]["name"], obj["spec"]["jobTemplate"]["spec"]["template"])
        for obj in of_kind(rendered, "CronJob")
    ]
    pods += [(obj["metadata"]["name"], obj["spec"]["template"]) for obj in of_kind(rendered, "Job")]
    pods += [(obj["metadata"]["name"], obj) for obj in of_kind(rendered, "Pod")]
    return [(name, template["metadata"], template["spec"]) for name, template in pods]


def settings_of(rendered: dict[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    return one(rendered, "ConfigMap", "-settings")["data"]


@pytest.mark.parametrize("name", list(VARIANTS))
def test_helm_lint(name: str) -> None:
    sets = [arg for item in VARIANTS[name] for arg in ("--set", item)]
    helm("lint", "--strict", str(CHART), *sets)


@pytest.mark.parametrize("kubernetes", KUBERNETES_VERSIONS)
def test_objects_validate_against_the_kubernetes_schemas(manifest: str, kubernetes: str, tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest)
    report = output_of([installed(KUBERNETES_VALIDATE), "--strict", "-k", kubernetes, path])
    # Custom resources are not in these schemas: KEDA's are checked below, ServiceMonitors by their references.
    core = [
        obj for obj in objects(manifest) if obj["apiVersion"].split("/")[0] not in {"keda.sh", "monitoring.coreos.com"}
    ]
    assert report.count(" passed for resource ") == len(core)


def test_keda_objects_validate_against_the_keda_crds(manifest: str, tmp_path: Path) -> None:
    path = tmp_path / "manifest.yaml"
    path.write_text(manifest)
    crds = sorted(installed(KEDA).glob("keda.sh_*.yaml"))
    report = output_of([installed(TOOLS_PYTHON), Path(__file__).with_name("crd_validate.py"), *crds, "--", path])
    keda = [obj for obj in objects(manifest) if obj["apiVersion"].startswith("keda.sh/")]
    assert report.count("checked ") == len(keda)


def test_settings_are_postlens_settings(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    unknown = set(settings_of(rendered)) - settings_fields()
    assert not unknown, f"not PostLens settings (silently ignored): {sorted(unknown)}"
    secret_keys = {
        ref["secretKeyRef"]["key"]
        for _, _, spec in pod_specs(rendered)
        for container in spec["containers"]
        for env in container.get("env", [])
        for ref in [env.get("valueFrom", {})]
        if "secretKeyRef" in ref
    }
    assert secret_keys and secret_keys <= settings_fields()


def test_autoscaler_watches_the_workers_group_topic_and_brokers(
    variant: tuple[str, list[str]], rendered: dict[tuple[str, str], dict[str, Any]]
) -> None:
    if "autoscaling.enabled=false" in variant[1]:
        assert not of_kind(rendered, "ScaledObject")
        assert one(rendered, "Deployment", "-worker")["spec"]["replicas"] >= 1
        return
    settings = settings_of(rendered)
    scaled = one(rendered, "ScaledObject", "-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["bootstrapServers"] == settings["POSTLENS_KAFKA_BOOTSTRAP"]
    assert trigger["metadata"]["consumerGroup"] == settings["POSTLENS_CONSUMER_GROUP"]
    assert trigger["metadata"]["topic"] == settings["POSTLENS_TOPIC_POSTS"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    assert scaled["spec"]["maxReplicaCount"] <= int(settings["POSTLENS_TOPIC_PARTITIONS"])
    assert 0 < int(trigger["metadata"]["activationLagThreshold"]) < int(trigger["metadata"]["lagThreshold"])
    assert "replicas" not in one(rendered, "Deployment", "-worker")["spec"], "KEDA owns the replica count"
    # KEDA ignores metadata it does not know: every name must be one its Kafka scaler reads from the trigger's
    # metadata (its typed metadata: a field tagged `keda:"name=…,order=triggerMetadata…"`).
    scaler_source = installed(KEDA / "kafka_scaler.go").read_text()
    for name in trigger["metadata"]:
        declared = re.search(rf'keda:"name={re.escape(name)},order=[^",]*\btriggerMetadata\b', scaler_source)
        assert declared, f"KEDA's kafka scaler reads no trigger metadata {name}"
    # The trigger authenticates the way the workers do.
    uses_sasl = settings["POSTLENS_KAFKA_SECURITY_PROTOCOL"].startswith("SASL_")
    assert ("sasl" in trigger["metadata"]) == uses_sasl
    assert (trigger["metadata"].get("tls") == "enable") == settings["POSTLENS_KAFKA_SECURITY_PROTOCOL"].endswith("SSL")
    if uses_sasl:
        mechanism = settings["POSTLENS_KAFKA_SASL_MECHANISM"]
        assert trigger["metadata"]["sasl"] == mechanism.lower().replace("-sha-", "_sha").replace("-", "_")


def test_the_autoscaler_follows_the_worker_settings() -> None:
    rendered = {
        (o["kind"], o["metadata"]["name"]): o
        for o in objects(
            render(
                [
                    "kafka.consumerGroup=team-a",
                    "kafka.topics.posts=team-a.posts",
                    "kafka.bootstrap=broker-1:9093\\,broker-2:9093",
                    "kafka.partitions=3",
                ]
            )
        )
    }
    metadata = one(rendered, "ScaledObject", "-worker")["spec"]["triggers"][0]["metadata"]
    assert (metadata["consumerGroup"], metadata["topic"], metadata["bootstrapServers"]) == (
        "team-a",
        "team-a.posts",
        "broker-1:9093,broker-2:9093",
    )
    assert one(rendered, "ScaledObject", "-worker")["spec"]["maxReplicaCount"] == 3


def test_more_workers_than_partitions_is_refused() -> None:
    refusal = helm_refusal("template", "pl", CHART, "--set", "kafka.partitions=4", "--set", "autoscaling.maxReplicas=8")
    assert "exceeds kafka.partitions" in refusal


def test_sasl_without_credentials_is_refused_when_the_chart_makes_the_secret() -> None:
    refusal = helm_refusal(
        "template", "pl", CHART, "--set", "secrets.existingSecret=", "--set", "kafka.securityProtocol=SASL_SSL"
    )
    assert "secrets.kafkaSaslUsername is required" in refusal


def test_references_resolve(variant: tuple[str, list[str]], rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    names = {kind: {name for (k, name) in rendered if k == kind} for kind, _ in rendered}
    secrets = {
        obj["metadata"]["name"]: set(obj.get("stringData", {})) | set(obj.get("data", {}))
        for obj in of_kind(rendered, "Secret")
    }
    overrides = dict(item.split("=", 1) for item in variant[1])
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    # Objects the chart expects to exist already, by name.
    existing_secret = overrides.get("secrets.existingSecret", defaults["secrets"]["existingSecret"]) or None
    external_claims = {overrides.get("modelRepository.existingClaim")} - {None}
    for name, metadata, spec in pod_specs(rendered):
        volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in names.get("PersistentVolumeClaim", set()) | external_claims, (name, claim)
            if "secret" in volume:
                secret = volume["secret"]["secretName"]
                assert secret in secrets or secret == existing_secret, (name, secret)
                for item in volume["secret"].get("items", []):
                    assert secret == existing_secret or item["key"] in secrets[secret], (name, item)
        for container in spec.get("initContainers", []) + spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in names["ConfigMap"], (name, source)
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets or ref["name"] == existing_secret, (name, ref)
            ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, (name, probe)
            scrape_port = metadata.get("annotations", {}).get("prometheus.io/port")
            if scrape_port and container in spec["containers"]:
                assert int(scrape_port) in ports.values(), (name, scrape_port)
    pod_labels = {name: metadata["labels"] for name, metadata, _ in pod_specs(rendered)}
    for service in of_kind(rendered, "Service"):
        selector = service["spec"]["selector"]
        (target,) = [name for name, labels in pod_labels.items() if selector.items() <= labels.items()]
        (deployment,) = [d for d in of_kind(rendered, "Deployment") if d["metadata"]["name"] == target]
        container_ports = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, (service["metadata"]["name"], port)
    for budget in of_kind(rendered, "PodDisruptionBudget"):
        selected = [
            name
            for name, labels in pod_labels.items()
            if budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        assert len(selected) == 1, budget["metadata"]["name"]
    for deployment in of_kind(rendered, "Deployment"):
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
    for scaled in of_kind(rendered, "ScaledObject"):
        assert scaled["spec"]["scaleTargetRef"]["name"] in names["Deployment"]
        for trigger in scaled["spec"]["triggers"]:
            if "authenticationRef" in trigger:
                assert trigger["authenticationRef"]["name"] in names["TriggerAuthentication"]
    for auth in of_kind(rendered, "TriggerAuthentication"):
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["name"] == existing_secret or ref["key"] in secrets[ref["name"]], ref


def test_workers_and_triton_agree_on_addresses_and_the_model(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    settings = settings_of(rendered)
    triton_service = one(rendered, "Service", "-triton")
    service_ports = {port["name"]: port["port"] for port in triton_service["spec"]["ports"]}
    assert settings["POSTLENS_TRITON_URL"] == f"{triton_service['metadata']['name']}:{service_ports['grpc']}"
    assert (
        settings["POSTLENS_TRITON_HTTP_URL"] == f"http://{triton_service['metadata']['name']}:{service_ports['http']}"
    )
    triton = one(rendered, "Deployment", "-triton")["spec"]["template"]["spec"]["containers"][0]
    # Ready only once the model the workers call is loaded.
    assert triton["readinessProbe"]["httpGet"]["path"] == f"/v2/models/{settings['POSTLENS_TRITON_MODEL']}/ready"
    worker = one(rendered, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in worker["ports"]} == {int(settings["POSTLENS_WORKER_WEB_PORT"])}
    mounts = {m["mountPath"] for m in worker.get("volumeMounts", [])}
    for key in ("POSTLENS_KAFKA_SSL_CAFILE", "POSTLENS_ES_CA_CERTS"):
        if key in settings:
            assert str(Path(settings[key]).parent) in mounts, key


def test_pods_run_unprivileged_with_resources(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    for name, _, spec in pod_specs(rendered):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, (name, container["name"])
        for container in spec["containers"]:
            assert container["resources"]["requests"] and container["resources"]["limits"], (name, container["name"])


def test_gpu_requests_follow_the_values() -> None:
    def triton_limits(settings: list[str]) -> dict[str, Any]:
        rendered = {(o["kind"], o["metadata"]["name"]): o for o in objects(render(settings))}
        return one(rendered, "Deployment", "-triton")["spec"]["template"]["spec"]["containers"][0]["resources"][
            "limits"
        ]

    assert triton_limits(["triton.gpus=2"])["nvidia.com/gpu"] == 2
    assert "nvidia.com/gpu" not in triton_limits(["triton.gpus=0"])


def test_every_value_block_is_documented() -> None:
    text = (CHART / "values.yaml").read_text()
    blocks = re.findall(r"(?m)((?:^#[^\n]*\n)*)^([a-zA-Z]\w*):", text)
    assert {key for _, key in blocks} == set(yaml.safe_load(text))
    assert not [key for comment, key in blocks if not comment], "top-level values without a comment above them"


def rendered_with(settings: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects(render(settings))}


def triton_args(rendered: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    return one(rendered, "Deployment", "-triton")["spec"]["template"]["spec"]["containers"][0]["args"]


def claims_of(spec: dict[str, Any]) -> set[str]:
    return {v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}


def test_one_uid_reads_and_writes_the_volumes(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    # Triton, bootstrap and retrain share the model volume: one owner, no chown and no fsGroup (RWX storage commonly
    # ignores it), and the uid the images create, so the images' own mount points belong to it too.
    image_uids = {final_user_uid(image) for image in DOCKERFILES}
    users = set()
    for name, _, spec in pod_specs(rendered):
        security = spec["securityContext"]
        assert "fsGroup" not in security, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert "runAsUser" not in container["securityContext"], (name, container["name"])
        if claims_of(spec):
            users.add((security["runAsUser"], security["runAsGroup"]))
    assert len(users) == 1, users
    assert {uid for uid, _ in users} == image_uids


def test_triton_rollouts_never_need_a_spare_gpu(rendered: dict[tuple[str, str], dict[str, Any]]) -> None:
    strategy = one(rendered, "Deployment", "-triton")["spec"]["strategy"]
    assert strategy["type"] == "Recreate" or strategy["rollingUpdate"]["maxSurge"] == 0


def allowed_disruptions(budget: dict[str, Any], healthy: int) -> int:
    """What the eviction API lets go of ``healthy`` pods, all expected."""
    spec = budget["spec"]
    return healthy - spec["minAvailable"] if "minAvailable" in spec else spec["maxUnavailable"]


@pytest.mark.parametrize("replicas", [1, 3])
def test_a_drain_never_evicts_the_only_replica_and_several_go_one_at_a_time(replicas: int) -> None:
    for settings, suffix in (
        ([f"triton.replicas={replicas}"], "-triton"),
        ([f"autoscaling.minReplicas={replicas}"], "-worker"),
        (["autoscaling.enabled=false", f"worker.replicas={replicas}"], "-worker"),
    ):
        budget = one(rendered_with(settings), "PodDisruptionBudget", suffix)
        assert allowed_disruptions(budget, replicas) == min(replicas - 1, 1), (settings, budget["spec"])


@pytest.mark.parametrize("gpus", [0, 1])
def test_the_first_bring_up_exports_the_seed_checkpoint_into_the_volume_triton_serves(gpus: int) -> None:
    rendered = rendered_with([f"triton.gpus={gpus}", "bootstrap.checkpointUrl=https://artifacts.example/seed.tgz"])
    job = one(rendered, "Job", "-bootstrap")
    assert set(job["metadata"]["annotations"]["helm.sh/hook"].split(",")) == {"post-install", "post-upgrade"}
    spec = job["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["command"] == ["postlens-bootstrap-model"]
    assert (
        container["image"]
        == one(rendered, "CronJob", "-retrain")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
            "image"
        ]
    ), "the trainer image (trainer.export)"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    triton = one(rendered, "Deployment", "-triton")["spec"]["template"]["spec"]
    triton_models = next(v for v in triton["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    served_at = {m["mountPath"] for m in triton["containers"][0]["volumeMounts"] if m["name"] == "models"}
    repository = settings_of(rendered)["POSTLENS_MODEL_REPOSITORY"]
    written = [name for name, path in mounts.items() if path == repository]
    assert written and volumes[written[0]]["persistentVolumeClaim"]["claimName"] == triton_models
    assert served_at == {repository} and "--model-repository=" + repository in triton_args(rendered)
    # The seed lives in the checkpoints volume retraining fine-tunes from.
    retrain = one(rendered, "CronJob", "-retrain")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    seed_mount = next(name for name, path in mounts.items() if env["SEED_CHECKPOINT"].startswith(path + "/"))
    assert claims_of({"volumes": [volumes[seed_mount]]}) <= claims_of(retrain)
    assert env["SEED_URL"] == "https://artifacts.example/seed.tgz"
    assert ("--device gpu" in (env.get("EXPORT_ARGS") or "")) == (gpus > 0)


def test_every_replica_loads_new_versions_itself_and_the_model_control_api_is_off() -> None:
    args = triton_args(rendered_with(["triton.replicas=3"]))
    assert "--model-control-mode=poll" in args and not [a for a in args if a.startswith("--load-model")]
    assert any(a.startswith("--repository-poll-secs=") for a in args)


def test_the_gpu_profile_loads_the_gpu_config_variant_and_the_cpu_path_is_unchanged() -> None:
    gpu = triton_args(rendered_with(["triton.gpus=1"]))
    cpu = triton_args(rendered_with(["triton.gpus=0"]))
    assert "--model-config-name=gpu" in gpu
    assert not [a for a in cpu if a.startswith("--model-config-name")], "CPU replicas load config.pbtxt"
    assert [a for a in gpu if not a.startswith("--model-config-name")] == cpu


def policy_rules(rendered: dict[tuple[str, str], dict[str, Any]], suffix: str, direction: str) -> list[dict[str, Any]]:
    return one(rendered, "NetworkPolicy", suffix)["spec"].get(direction, [])


def test_workers_reach_only_kafka_elasticsearch_redis_triton_and_public_images() -> None:
    rendered = rendered_with([])
    values = yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]
    settings = settings_of(rendered)
    triton_labels = one(rendered, "Deployment", "-triton")["spec"]["template"]["metadata"]["labels"]
    worker_policy = one(rendered, "NetworkPolicy", "-worker")["spec"]
    worker_labels = one(rendered, "Deployment", "-worker")["spec"]["template"]["metadata"]["labels"]
    assert worker_policy["podSelector"]["matchLabels"].items() <= worker_labels.items()
    assert "Egress" in worker_policy["policyTypes"]
    reached = {}
    for rule in worker_policy["egress"]:
        ports = {port["port"] for port in rule["ports"]}
        for peer in rule["to"]:
            if peer == values["kafka"][0]:
                reached["kafka"] = ports
            elif peer == values["elasticsearch"][0]:
                reached["elasticsearch"] = ports
            elif peer == values["redis"][0]:
                reached["redis"] = ports
            elif peer.get("podSelector", {}).get("matchLabels", {}).get("k8s-app") == "kube-dns":
                reached["dns"] = ports
            elif "podSelector" in peer and peer["podSelector"]["matchLabels"].items() <= triton_labels.items():
                reached["triton"] = ports
            elif "ipBlock" in peer:
                assert peer["ipBlock"]["cidr"] == "0.0.0.0/0"
                assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} <= set(peer["ipBlock"]["except"])
                reached["images"] = ports
            else:
                pytest.fail(f"workers may reach an unexpected peer {peer}")
    assert set(reached) == {"kafka", "elasticsearch", "redis", "dns", "triton", "images"}
    assert {int(hp.rsplit(":", 1)[1]) for hp in settings["POSTLENS_KAFKA_BOOTSTRAP"].split(",")} <= reached["kafka"]
    assert {int(settings["POSTLENS_ES_URL"].rsplit(":", 1)[1])} == reached["elasticsearch"]
    assert {int(settings["POSTLENS_REDIS_URL"].rsplit(":", 1)[1].split("/")[0])} == reached["redis"]
    assert {int(settings["POSTLENS_TRITON_URL"].rsplit(":", 1)[1])} == reached["triton"]
    assert reached["images"] == {80, 443}


def test_only_the_retrain_job_reaches_tritons_http_port_and_workers_its_grpc_port() -> None:
    rendered = rendered_with([])
    pods = {name: metadata["labels"] for name, metadata, _ in pod_specs(rendered)}
    container = one(rendered, "Deployment", "-triton")["spec"]["template"]["spec"]["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    allowed: dict[int, set[str]] = {}
    for rule in policy_rules(rendered, "-triton", "ingress"):
        for port in rule["ports"]:
            for peer in rule["from"]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    selected = {
                        name
                        for name, labels in pods.items()
                        if peer["podSelector"]["matchLabels"].items() <= labels.items()
                    }
                    allowed.setdefault(port["port"], set()).update(selected or {"nothing"})
    assert allowed[ports["http"]] == {name for name in pods if name.endswith("-retrain")}
    assert allowed[ports["grpc"]] == {name for name in pods if name.endswith(("-worker", "-test-publish-and-find"))}


def test_values_are_checked_against_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]) == set(yaml.safe_load((CHART / "values.yaml").read_text()))
    assert "tritn" in helm_refusal("template", "pl", CHART, "--set", "tritn.gpus=1")  # a typo is not ignored
    assert "/triton/gpus" in helm_refusal("template", "pl", CHART, "--set", "triton.gpus=-1")
    assert "securityProtocol" in helm_refusal("template", "pl", CHART, "--set", "kafka.securityProtocol=TLS")


def test_helm_test_publishes_a_post_and_looks_for_it_in_the_posts_index() -> None:
    rendered = rendered_with([])
    (pod,) = of_kind(rendered, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    assert (
        container["image"]
        == one(rendered, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert {source["configMapRef"]["name"] for source in container["envFrom"]} == {
        one(rendered, "ConfigMap", "-settings")["metadata"]["name"]
    }
    script = container["command"][-1]
    compile(script, "helm-test", "exec")  # the script is valid Python
    assert '"stream", "publish"' in script and "settings.es_index_posts" in script and "id=post_id" in script


def test_an_optional_service_monitor_scrapes_workers_and_triton() -> None:
    assert not of_kind(rendered_with([]), "ServiceMonitor")
    rendered = rendered_with(["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=kps"])
    services = of_kind(rendered, "Service")
    for component in ("-worker", "-triton"):
        monitor = one(rendered, "ServiceMonitor", component)
        assert monitor["metadata"]["labels"]["release"] == "kps"
        (service,) = [
            s for s in services if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}


def test_indices_keep_a_copy_of_every_shard_on_another_node() -> None:
    from postlens.settings import Settings
    from stream.stages.index_templates import index_templates

    data = settings_of(rendered_with([]))
    # The index settings the chart hands the workers (their Kafka credentials are in the Secret, not here).
    es = {k.removeprefix("POSTLENS_").lower(): v for k, v in data.items() if k.startswith("POSTLENS_ES_")}
    settings = Settings(_env_file=None, **es)
    for template in index_templates(settings).values():
        index = template["template"]["settings"]
        assert index["number_of_shards"] >= 2
        assert int(index["auto_expand_replicas"].split("-")[0]) >= 1, "a node loss would lose data"


def test_scale_down_follows_the_hpa_stabilization_window() -> None:
    scaled = one(rendered_with(["autoscaling.scaleDownStabilizationSeconds=120"]), "ScaledObject", "-worker")
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == 120
    # cooldownPeriod only governs the step to zero replicas: the values must not claim more.
    comment = re.search(r"(?ms)^  pollingInterval:.*?^  cooldownPeriod:", (CHART / "values.yaml").read_text())[0]
    assert "zero" in comment and "stabilization" in comment
