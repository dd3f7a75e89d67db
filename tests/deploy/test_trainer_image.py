"""The trainer image (deploy/docker/trainer.Dockerfile, `make images` builds it) runs `trainer.export` and
`trainer.retrain --dry-run` from its non-editable install, as its own user, on volumes it owns.

The containers run on the host's network against the local Kafka; the labels topic and consumer group are this
test's own. Needs root and podman (marker `images`).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from postlens.settings import Settings
from tests.deploy.containers import IMAGE_UID, built_image, run_once
from tests.deploy.tools import REPO
from trainer.retrain.report import EXIT_TOO_FEW_LABELS
from trainer.synth import generate

pytestmark = [pytest.mark.images, pytest.mark.integration, pytest.mark.slow]

RUN_TIMEOUT_S = 900.0
SYNTHETIC_POSTS = 46  # their train split is published: 32 labels, more than --min-labels 20


def owned_by_the_image(path: Path) -> Path:
    """``path`` and everything in it handed to the images' user, as a volume of theirs would be."""
    for entry in [path, *path.rglob("*")]:
        shutil.chown(entry, IMAGE_UID, IMAGE_UID)
    return path


@pytest.fixture(scope="module")
def volumes(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seed checkpoint and an empty model repository, as the trainer's volumes."""
    root = tmp_path_factory.mktemp("trainer-image")
    (root / "models").mkdir()
    shutil.copytree(tiny_checkpoint, root / "seed")
    return {name: owned_by_the_image(root / name) for name in ("models", "seed")}


def mounts(volumes: dict[str, Path]) -> list[str]:
    return [f"{volumes['models']}:/models", f"{volumes['seed']}:/seed:ro"]


@pytest.fixture(scope="module")
def exported(volumes: dict[str, Path]) -> Path:
    """Version 1 of the entry model, exported from /seed by the image's trainer.export (the repository's root)."""
    image = built_image("trainer")
    export = ["python", "-m", "trainer.export", "--model", "/seed", "--repo", "/models", "--no-load"]
    result = run_once(image, export, volumes=mounts(volumes), timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, f"export failed in the image:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
    return volumes["models"]


def test_the_trainer_image_exports_from_its_installed_copy(exported: Path) -> None:
    where = run_once(built_image("trainer"), ["python", "-c", "import trainer; print(trainer.__file__)"], timeout=120)
    assert where.stdout.startswith("/opt/venv/lib/python3.11/site-packages/trainer/"), where.stdout + where.stderr
    version = exported / "postlens" / "1"
    assert (version / "model.py").read_text() == (REPO / "model_repository/postlens/model.py").read_text()
    assert (exported / "postlens" / "config.pbtxt").is_file()
    assert {path.stat().st_uid for path in [version, *version.rglob("*")]} == {IMAGE_UID}


@pytest.fixture
async def labels_topic(settings: Settings, kafka_admin: AIOKafkaAdminClient, tmp_path: Path) -> AsyncIterator[str]:
    """A topic of this test's own holding the train split of a synthetic set as labels (their images under
    ``tmp_path/labels``)."""
    topic = f"test-trainer-image-{uuid.uuid4().hex[:8]}.labels"
    generate(tmp_path / "labels", SYNTHETIC_POSTS, seed=24)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for line in (tmp_path / "labels" / "train.jsonl").read_text().splitlines():
            await producer.send_and_wait(topic, line.encode())
    finally:
        await producer.stop()
    yield topic
    existing = set(await kafka_admin.list_topics())
    await kafka_admin.delete_topics([name for name in (topic, f"{topic}.rejected") if name in existing])


async def test_the_trainer_image_retrains_dry_from_the_labels_topic(
    exported: Path, volumes: dict[str, Path], labels_topic: str, settings: Settings, tmp_path: Path
) -> None:
    labels = owned_by_the_image(tmp_path / "labels")
    env = {
        "POSTLENS_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "POSTLENS_TOPIC_LABELS": labels_topic,
        "POSTLENS_TOPIC_LABELS_REJECTED": f"{labels_topic}.rejected",
        "POSTLENS_RETRAIN_GROUP": labels_topic.removesuffix(".labels"),
    }
    retrain = [
        "python", "-m", "trainer.retrain", "--dry-run", "--repo", "/models", "--image-root", "/labels",
        "--valid", "/labels/test.jsonl", "--min-labels", "20", "--tolerance", "1",
        "--set", "train.epochs=1", "--set", "train.threads=1",
    ]  # fmt: skip
    result = run_once(
        built_image("trainer"), retrain, env=env, volumes=[*mounts(volumes), f"{labels}:/labels:ro"],
        timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != EXIT_TOO_FEW_LABELS, f"the labels were not read:\n{output[-3000:]}"
    assert result.returncode == 0, output[-3000:]
    assert "retrain: dry_run" in result.stdout and "labels: read 32," in result.stdout, result.stdout
    # Fine-tuned from the checkpoint behind version 1 (its card names /seed), nothing exported.
    assert sorted(p.name for p in (exported / "postlens").iterdir() if p.name.isdigit()) == ["1"]
