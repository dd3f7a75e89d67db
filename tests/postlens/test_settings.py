"""Settings: derived paths follow POSTLENS_HOME, the JDK follows JAVA_HOME, and exports tell the right Triton."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import AliasChoices, ValidationError

from postlens.schemas import text_refusal
from postlens.settings import KafkaSettings, RetrainSettings, Settings, SettingsGroup

# Every environment name the settings read, as they were when Settings was one class: the contract deployments
# (compose .env, Helm values, CI) rely on. Grouping the settings by concern must not rename any of them.
ENVIRONMENT_NAMES = frozenset(
    {
        "POSTLENS_KAFKA_BOOTSTRAP",
        "POSTLENS_TOPIC_POSTS",
        "POSTLENS_TOPIC_DLQ",
        "POSTLENS_TOPIC_LABELS",
        "POSTLENS_TOPIC_LABELS_REJECTED",
        "POSTLENS_TOPIC_PARTITIONS",
        "POSTLENS_CONSUMER_GROUP",
        "POSTLENS_TOPIC_REPLICATION",
        "POSTLENS_DLQ_MAX_BYTES",
        "POSTLENS_KAFKA_SECURITY_PROTOCOL",
        "POSTLENS_KAFKA_SASL_MECHANISM",
        "POSTLENS_KAFKA_SASL_USERNAME",
        "POSTLENS_KAFKA_SASL_PASSWORD",
        "POSTLENS_KAFKA_SSL_CAFILE",
        "POSTLENS_REDIS_URL",
        "POSTLENS_IMAGE_CACHE_TTL_S",
        "POSTLENS_IMAGE_NEGATIVE_TTL_S",
        "POSTLENS_REDIS_TIMEOUT_S",
        "POSTLENS_REDIS_RETRY_AFTER_S",
        "POSTLENS_FETCH_CONCURRENCY",
        "POSTLENS_FETCH_PER_HOST_CONCURRENCY",
        "POSTLENS_FETCH_CONNECT_TIMEOUT_S",
        "POSTLENS_FETCH_READ_TIMEOUT_S",
        "POSTLENS_FETCH_TOTAL_TIMEOUT_S",
        "POSTLENS_FETCH_MAX_BYTES",
        "POSTLENS_FETCH_MAX_PIXELS",
        "POSTLENS_FETCH_MAX_REDIRECTS",
        "POSTLENS_FETCH_ALLOWLIST",
        "POSTLENS_MAX_IMAGES_PER_POST",
        "POSTLENS_MAX_POST_BYTES",
        "POSTLENS_MAX_TEXT_CHARS",
        "POSTLENS_MAX_POST_DEPTH",
        "POSTLENS_TRITON_URL",
        "POSTLENS_TRITON_MODEL",
        "POSTLENS_TRITON_TIMEOUT_S",
        "POSTLENS_TRITON_RETRIES",
        "POSTLENS_ES_URL",
        "POSTLENS_ES_USERNAME",
        "POSTLENS_ES_PASSWORD",
        "POSTLENS_ES_API_KEY",
        "POSTLENS_ES_CA_CERTS",
        "POSTLENS_ES_INDEX_ENTITIES",
        "POSTLENS_ES_INDEX_POSTS",
        "POSTLENS_ES_REQUEST_TIMEOUT_S",
        "POSTLENS_BATCH_SIZE",
        "POSTLENS_BATCH_WAIT_S",
        "POSTLENS_WORKER_WEB_PORT",
        "POSTLENS_WORKER_SESSION_TIMEOUT_S",
        "POSTLENS_WORKER_BATCHES_IN_FLIGHT",
        "POSTLENS_WORKER_BUFFER_MAX",
        "POSTLENS_WORKER_COMMIT_INTERVAL_S",
        "POSTLENS_RETRY_BACKOFF_MAX_S",
        "POSTLENS_RETRAIN_GROUP",
        "POSTLENS_RETRAIN_HOLDOUT",
        "POSTLENS_RETRAIN_TUNE",
        "POSTLENS_RETRAIN_TOLERANCE",
        "POSTLENS_RETRAIN_MIN_LABELS",
        "POSTLENS_CHECKPOINTS_DIR",
        "POSTLENS_HOME",
        "POSTLENS_KAFKA_VERSION",
        "POSTLENS_ELASTICSEARCH_VERSION",
        "POSTLENS_MAVEN_REPO_URL",
        "POSTLENS_JAVA_HOME",
        "JAVA_HOME",
        "POSTLENS_KAFKA_PORT",
        "POSTLENS_KAFKA_CONTROLLER_PORT",
        "POSTLENS_KAFKA_HEAP",
        "POSTLENS_ES_PORT",
        "POSTLENS_ES_TRANSPORT_PORT",
        "POSTLENS_ES_HEAP",
        "POSTLENS_ES_USER",
        "POSTLENS_REDIS_PORT",
        "POSTLENS_SERVICE_START_TIMEOUT_S",
        "POSTLENS_TRITON_GRPC_PORT",
        "POSTLENS_TRITON_HTTP_PORT",
        "POSTLENS_TRITON_HTTP_URL",
        "POSTLENS_TRITON_METRICS_PORT",
        "POSTLENS_MODEL_REPOSITORY",
        "POSTLENS_SHARED_DATA_DIR",
    }
)


def environment_names(settings_class: type[SettingsGroup]) -> set[str]:
    prefix = settings_class.model_config.get("env_prefix", "")
    names = set()
    for name, field in settings_class.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names.add(f"{prefix}{name}".upper())
        else:
            assert isinstance(alias, AliasChoices), f"{name}: an alias of another kind"
            names.update(str(choice) for choice in alias.choices)
    return names


def test_grouping_kept_every_environment_name() -> None:
    """Every name read before is read still (settings added since are new names, never renames)."""
    assert ENVIRONMENT_NAMES <= environment_names(Settings), ENVIRONMENT_NAMES - environment_names(Settings)


def test_each_group_alone_reads_the_same_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTLENS_KAFKA_BOOTSTRAP", "broker:9093")
    monkeypatch.setenv("POSTLENS_HOME", str(tmp_path))
    assert KafkaSettings().kafka_bootstrap == Settings().kafka_bootstrap == "broker:9093"
    assert RetrainSettings().checkpoints_dir == Settings().checkpoints_dir == tmp_path / "checkpoints"
    with pytest.raises(ValidationError):  # a group keeps its own checks
        KafkaSettings(kafka_security_protocol="SASL_SSL")


def test_retrained_checkpoints_live_under_postlens_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTLENS_HOME", str(tmp_path))
    assert Settings().checkpoints_dir == tmp_path / "checkpoints"
    monkeypatch.setenv("POSTLENS_CHECKPOINTS_DIR", str(tmp_path / "elsewhere"))
    assert Settings().checkpoints_dir == tmp_path / "elsewhere"


def test_the_jdk_is_the_one_java_home_names_unless_postlens_overrides_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POSTLENS_JAVA_HOME", raising=False)
    monkeypatch.setenv("JAVA_HOME", "/opt/jdk-17")
    assert Settings().java_home == Path("/opt/jdk-17")
    monkeypatch.setenv("POSTLENS_JAVA_HOME", "/opt/jdk-21")
    assert Settings().java_home == Path("/opt/jdk-21")


def test_an_export_tells_the_local_triton_only_about_the_repository_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POSTLENS_TRITON_HTTP_URL", raising=False)
    settings = Settings(model_repository=tmp_path / "served", triton_http_port=8123)
    assert settings.triton_load_url(tmp_path / "served") == "http://localhost:8123"
    assert settings.triton_load_url(tmp_path / "scratch") is None
    remote = Settings(model_repository=tmp_path / "served", triton_http_url="http://triton.internal:8000/")
    assert remote.triton_load_url(tmp_path / "scratch") == "http://triton.internal:8000"


@pytest.mark.parametrize(
    ("text", "kind"), [("", "empty_text"), (" \n\t", "empty_text"), ("x" * 11, "oversize"), ("Jordan", None)]
)
def test_one_text_rule_for_every_door(text: str, kind: str | None) -> None:
    refusal = text_refusal(text, max_chars=10)
    assert (refusal[0] if refusal else None) == kind
