"""All PostLens configuration, in one place, grouped by concern.

Every field is read from an environment variable with the prefix ``POSTLENS_`` (``kafka_bootstrap`` ←
``POSTLENS_KAFKA_BOOTSTRAP``) or from a ``.env`` file in the working directory. Each concern has a class of its own
(:class:`KafkaSettings`, :class:`CacheSettings`, …); :class:`Settings` combines them all, and parts of the system
take the fields they need from :func:`get_settings`; nothing else reads the environment.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from postlens.schemas import MAX_MODEL_IMAGES

_REPOSITORY = Path(__file__).resolve().parent.parent


class SettingsGroup(BaseSettings):
    """What every group shares: the environment prefix, and POSTLENS_HOME, the root of PostLens' own caches."""

    # Errors never echo their input: a whole-model check would print every setting, secrets included.
    model_config = SettingsConfigDict(
        env_prefix="POSTLENS_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    # Downloads, the local stack's services and data, the virtualenv, retrained checkpoints.
    home: Path = Path("~/.cache/postlens").expanduser()


class KafkaSettings(SettingsGroup):
    """Brokers, topics, consumer groups and client security."""

    # --- Kafka -------------------------------------------------------------------------------------
    kafka_bootstrap: str = "localhost:9092"
    topic_posts: str = "postlens.posts"
    topic_dlq: str = "postlens.posts.dlq"
    topic_labels: str = "postlens.labels"
    topic_labels_rejected: str = "postlens.labels.rejected"  # labels trainer.retrain refused, with the reason
    topic_partitions: int = Field(6, ge=1, description="partitions created for the posts topic")
    consumer_group: str = "postlens-workers"
    topic_replication: int = Field(1, ge=1, description="replication factor of topics PostLens creates")
    # Under the broker's message.max.bytes (1 MiB by default): a larger dead letter keeps its reason, a prefix and the
    # digest of the original instead of the whole message.
    dlq_max_bytes: int = Field(900_000, ge=64 * 1024)
    # Secured clusters: SASL (PLAIN or SCRAM) and/or TLS, verified against kafka_ssl_cafile (None: system CAs).
    # postlens.io.connections turns these into client options.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None

    @model_validator(mode="after")
    def _sasl_credentials_complete(self) -> KafkaSettings:
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(f"{self.kafka_security_protocol} needs kafka_sasl_username and kafka_sasl_password")
        return self


class CacheSettings(SettingsGroup):
    """The Redis image cache."""

    # --- Redis (image cache) -------------------------------------------------------------------------
    redis_url: str = "redis://localhost:6379/0"
    image_cache_ttl_s: int = Field(7 * 24 * 3600, ge=1)
    image_negative_ttl_s: int = Field(60, ge=1, description="how long a failed fetch is remembered")
    redis_timeout_s: float = Field(0.5, gt=0, description="connect/command timeout; a slow cache is skipped")
    # After a Redis failure the worker fetches uncached for this long before trying Redis again.
    redis_retry_after_s: float = Field(5.0, gt=0)


class FetchSettings(SettingsGroup):
    """Image fetching and the limits on what a post may carry."""

    # --- Image fetching ----------------------------------------------------------------------------
    fetch_concurrency: int = Field(32, ge=1)
    # Most of a stream's images come from one CDN host: at 4 connections and ~50 ms a fetch, it alone capped a worker at
    # ~80 posts/s (reports/bench.md).
    fetch_per_host_concurrency: int = Field(16, ge=1)
    fetch_connect_timeout_s: float = Field(3.0, gt=0)
    fetch_read_timeout_s: float = Field(10.0, gt=0)
    # Caps a whole fetch (all hops): a server dripping one byte per read timeout cannot hold a worker.
    fetch_total_timeout_s: float = Field(20.0, gt=0)
    fetch_max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    fetch_max_pixels: int = Field(40_000_000, ge=1)
    # Decoding runs on threads of its own within a budget of pixels decoded at once (postlens.io.decode_pool): about
    # 3-4 bytes a pixel while Pillow decodes and converts, so 40 MP keep decoding near 150-300 MB of a 1 GiB worker.
    fetch_decode_threads: int = Field(2, ge=1)
    fetch_decode_budget_pixels: int = Field(40_000_000, ge=1)
    # An image whose decoding was under way when this many workers died is not decoded again (kind "poison") until
    # its marker in Redis expires; one that was under way once is decoded alone, so only the culprit is blamed twice.
    fetch_poison_strikes: int = Field(2, ge=1)
    fetch_decode_marker_ttl_s: int = Field(24 * 3600, ge=60)
    fetch_max_redirects: int = Field(3, ge=0)
    # Hosts or CIDRs that may be fetched even though they are private/loopback (the demo's image server).
    fetch_allowlist: list[str] = Field(default_factory=list)
    max_images_per_post: int = Field(
        MAX_MODEL_IMAGES, ge=0, le=MAX_MODEL_IMAGES, description="images fed to the model; the rest are recorded"
    )
    max_post_bytes: int = Field(64 * 1024, ge=256, description="larger Kafka messages are dead-lettered")
    max_text_chars: int = Field(5000, ge=1)
    max_post_depth: int = Field(32, ge=2, description="deeper-nested JSON posts are dead-lettered")


class TritonSettings(SettingsGroup):
    """The Triton server the worker asks for predictions."""

    # --- Triton ------------------------------------------------------------------------------------
    triton_url: str = "localhost:8001"  # gRPC
    triton_model: str = "postlens"
    triton_timeout_s: float = Field(30.0, gt=0)
    triton_retries: int = Field(5, ge=0)


class ElasticsearchSettings(SettingsGroup):
    """The Elasticsearch cluster and indices the worker writes."""

    # --- Elasticsearch -----------------------------------------------------------------------------
    es_url: str = "http://localhost:9200"
    es_username: str | None = None
    es_password: SecretStr | None = None
    es_api_key: SecretStr | None = None  # the base64 "id:key" Elasticsearch returns as `encoded`; or username/password
    es_ca_certs: Path | None = None  # CA bundle for an https es_url with a private CA (None: system CAs)
    es_index_entities: str = "postlens-entities"
    es_index_posts: str = "postlens-posts"
    # Index settings of both templates: primaries, and Elasticsearch's auto_expand_replicas range ("0-1": a replica as
    # soon as a second node exists, so a node loss loses no data; a single node stays green).
    es_shards: int = Field(1, ge=1)
    es_replicas: str = Field("0-1", pattern=r"^\d+-(\d+|all)$")
    es_request_timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _one_credential(self) -> ElasticsearchSettings:
        if self.es_api_key and (self.es_username or self.es_password):
            raise ValueError("set either es_api_key or es_username/es_password, not both")
        return self


class WorkerSettings(SettingsGroup):
    """The stream worker: micro-batches, concurrency, commits, backoff."""

    # --- Worker ------------------------------------------------------------------------------------
    batch_size: int = Field(
        32, ge=1, description="posts per micro-batch (one bulk request, one previous-entities read)"
    )
    batch_wait_s: float = Field(0.2, gt=0)
    worker_web_port: int = Field(6066, ge=1, le=65535)
    # How long the consumer group waits for a silent (crashed) worker before giving its partitions to others.
    worker_session_timeout_s: float = Field(30.0, ge=6, description="Kafka's group.min.session.timeout.ms is 6 s")
    # Micro-batches one worker runs at once: the fetch of one overlaps the inference and indexing of others, and
    # batches_in_flight × batch_size posts keep Triton's dynamic batcher fed.
    worker_batches_in_flight: int = Field(4, ge=1)
    # Messages a worker holds beyond its batches in flight; when indexing stalls, Kafka keeps the rest (backpressure).
    # At most (worker_batches_in_flight + 1) × batch_size + worker_buffer_max messages are in a worker's memory.
    worker_buffer_max: int = Field(256, ge=1)
    worker_commit_interval_s: float = Field(1.0, gt=0, description="how often finished offsets are committed")
    # Kafka's max.poll.interval.ms for the worker's consumer (Faust's default, 1000 s): how long the group waits for a
    # member to rejoin a rebalance. Short only in tests of long outages and in bench.chaos (that case in minutes).
    worker_max_poll_interval_s: float = Field(1000.0, gt=0)
    # At shutdown (SIGTERM) the batches in flight get this long to finish and be committed; keep it under the
    # orchestrator's grace period (Kubernetes: terminationGracePeriodSeconds, 30 s by default).
    worker_shutdown_grace_s: float = Field(20.0, ge=0)
    # /healthz fails when messages wait (received and unfinished, or finished and uncommitted) and nothing was
    # received, finished or committed for this long: a wedged or zombie worker is restarted. Longer than an outage
    # worth waiting out in place.
    worker_stall_timeout_s: float = Field(300.0, gt=0)
    retry_backoff_max_s: float = Field(15.0, gt=0, description="cap of the backoff while Triton or ES is unavailable")


class RetrainSettings(SettingsGroup):
    """Retraining from the labels topic (python -m trainer.retrain)."""

    # --- Retraining (python -m trainer.retrain) -------------------------------------------------------
    retrain_group: str = "postlens-retrain"  # consumer group whose committed offsets mark labels already used
    # Share of new labels (chosen by a hash of the id, so a label never moves between slices) held out to compare
    # the base and the candidate, and the share used for early stopping and calibration while fine-tuning.
    retrain_holdout: float = Field(0.15, gt=0, lt=0.5)
    retrain_tune: float = Field(0.10, gt=0, lt=0.5)
    retrain_tolerance: float = Field(0.0, ge=0, le=1, description="promote when candidate F1 ≥ base F1 − this")
    retrain_min_labels: int = Field(20, ge=3, description="fewer valid new labels → no retraining")
    # The reference gate: on the reference set the base was selected on (carried in its checkpoint, + --reference),
    # the candidate may lose at most this entity F1 overall, and at most the margin on any type with at least
    # min_type_spans gold spans there (fewer make one type's F1 too noisy to gate on alone).
    retrain_reference_tolerance: float = Field(0.005, ge=0, le=1)
    retrain_reference_type_margin: float = Field(0.02, ge=0, le=1)
    retrain_reference_min_type_spans: int = Field(20, ge=1)
    # Share of the fine-tuning posts drawn from the base's replay sample of its own training data (against
    # forgetting); 0 fine-tunes on the new labels (and --extra-train) alone.
    retrain_replay_share: float = Field(0.5, ge=0, lt=1)
    # Fine-tuning continues from a trained model at this fraction of its learning rates (--set train.* wins): at the
    # base's own rates, 300 correct tweets cost the default model 0.009 reference F1; at a fifth, 0.002.
    retrain_lr_scale: float = Field(0.2, gt=0, le=1)
    # The label audit (trainer.retrain.audit): a source whose labels contradict the model's confident predictions
    # systematically is quarantined. A type swap: ≥ share of a type's gold spans (and ≥ min_spans) predicted with
    # confidence ≥ confidence as one other type (PER↔LOC mappings). Unlabeled: ≥ share of the model's confident spans
    # (and ≥ min_spans) overlap no labeled entity (an exporter dropping a type). Measured with the default model on
    # 300 tweets (docs/retraining.md): clean labels ≤ 4 % of a type at ≥ 0.7, PER↔LOC-swapped ones 80-86 %.
    retrain_audit_confidence: float = Field(0.7, ge=0, le=1)
    retrain_audit_share: float = Field(0.5, gt=0, le=1)
    retrain_audit_min_spans: int = Field(10, ge=1)
    # python -m trainer.retrain --watch: retrain when this many labels wait, or every interval when at least
    # retrain_min_labels wait; the labels topic is looked at every poll; metrics on the port.
    retrain_watch_labels: int = Field(500, ge=1)
    retrain_watch_interval_s: float = Field(3600.0, gt=0)
    retrain_watch_poll_s: float = Field(30.0, gt=0)
    retrain_metrics_port: int = Field(6067, ge=0, le=65535, description="0: a free port (logged)")
    # Retrained checkpoints; by default under POSTLENS_HOME.
    checkpoints_dir: Path = Field(default_factory=lambda data: data["home"] / "checkpoints")


class LocalStackSettings(SettingsGroup):
    """The local stack of python -m deploy.local, and where exports tell Triton."""

    # --- Local stack (python -m deploy.local) ----------------------------------------------------------
    kafka_version: str = "4.3.1"
    elasticsearch_version: str = "8.19.21"
    maven_repo_url: str = "https://repo1.maven.org/maven2"
    # JDK for Kafka and Elasticsearch (ES 8.19 needs 17+): POSTLENS_JAVA_HOME, else JAVA_HOME, else the `java` on PATH.
    java_home: Path | None = Field(default=None, validation_alias=AliasChoices("POSTLENS_JAVA_HOME", "JAVA_HOME"))
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    es_port: int = 9200
    es_transport_port: int = 9300
    es_heap: str = "1g"
    # Elasticsearch refuses to run as root; deploy.local runs it as this system user (created if missing).
    es_user: str = "postlens"
    redis_port: int = 6379
    service_start_timeout_s: float = Field(180.0, gt=0, description="per service, downloads excluded")
    triton_grpc_port: int = 8001
    triton_http_port: int = 8000
    # Where trainer.export/retrain ask Triton to load a new version; None = the local stack's Triton, and only when
    # the repository written is the one it serves.
    triton_http_url: str | None = None
    triton_metrics_port: int = 8002
    model_repository: Path = _REPOSITORY / "model_repository"
    # Label Studio (python -m deploy.local up --only label-studio), in a virtualenv of its own under home.
    label_studio_version: str = "1.23.2"  # its port: label_studio_port (LabelingSettings)
    label_studio_username: str = "admin@postlens.local"  # the local server's first (admin) user
    # Its first start migrates a new SQLite database: 41 s of CPU, 13.5 min wall clock on a 2-core machine at load 13.
    label_studio_start_timeout_s: float = Field(1200.0, gt=0)
    uv: Path | None = None  # the uv that builds Label Studio's own virtualenv; None: the one on PATH (make sets it)

    def triton_load_url(self, repository: Path) -> str | None:
        """The Triton HTTP endpoint to tell about a new version written to ``repository``, or None for none."""
        if self.triton_http_url is not None:
            return self.triton_http_url.rstrip("/")
        if repository.resolve() == self.model_repository.resolve():
            return f"http://localhost:{self.triton_http_port}"
        return None


class LabelingSettings(SettingsGroup):
    """The Label Studio loop (python -m trainer.label: push, pull, webhook)."""

    # --- Labeling (python -m trainer.label: Label Studio push / pull) -----------------------------------------
    # None: the local stack's Label Studio (http://localhost:label_studio_port) and the token deploy.local gave it.
    label_studio_url: str | None = None
    label_studio_token: SecretStr | None = None  # a Label Studio legacy API token ("Token …" auth)
    label_project: str = "PostLens entities"  # the project push creates or updates (found by this title)
    label_batch: int = Field(100, ge=1, description="posts one push sends")
    # Candidates read from Elasticsearch per push, of which the most uncertain and diverse label_batch are sent.
    label_pool: int = Field(2000, ge=1)
    label_diversity: float = Field(0.5, ge=0, le=1, description="weight of similarity to posts already chosen")
    # Where push and pull remember what they did (posts sent, annotations turned into labels).
    label_state: Path = Field(default_factory=lambda data: data["home"] / "label" / "state.sqlite")
    label_webhook_host: str = "127.0.0.1"
    label_webhook_port: int = Field(6070, ge=1, le=65535)
    label_studio_port: int = 8080  # the local Label Studio's (deploy.local starts it)

    @property
    def label_studio_credentials(self) -> Path:
        """The local Label Studio's admin password and API token, written by deploy.local (mode 0600)."""
        return self.home / "label-studio" / "credentials.json"

    def label_studio_endpoint(self) -> tuple[str, str]:
        """(base URL, API token) of the Label Studio to use: the configured one, else the local stack's."""
        url = (self.label_studio_url or f"http://localhost:{self.label_studio_port}").rstrip("/")
        if self.label_studio_token is not None:
            return url, self.label_studio_token.get_secret_value()
        try:
            return url, json.loads(self.label_studio_credentials.read_text())["token"]
        except (OSError, ValueError, KeyError) as error:
            raise RuntimeError(
                f"no Label Studio token: set POSTLENS_LABEL_STUDIO_TOKEN, or start the local one "
                f"(python -m deploy.local up --only label-studio), which writes {self.label_studio_credentials}"
            ) from error


class BenchmarkSettings(SettingsGroup):
    """Benchmarks (make bench)."""

    # --- Benchmarks (make bench) ---------------------------------------------------------------------
    # Read-only shared data beside the clone (twitter2015/, twitter2017/ in CoNLL layout); never copied in.
    shared_data_dir: Path = _REPOSITORY.parent / "shared" / "data"


class Settings(
    KafkaSettings,
    CacheSettings,
    FetchSettings,
    TritonSettings,
    ElasticsearchSettings,
    WorkerSettings,
    RetrainSettings,
    LabelingSettings,
    LocalStackSettings,
    BenchmarkSettings,
):
    """Every group at once: what the entry points read (the same POSTLENS_ names as each group alone)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
