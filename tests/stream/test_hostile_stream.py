"""A real worker over a stream mixing real tweets (../shared/data) with hostile messages — generated payloads
(tests/support/hostile_posts.py), a catalogue of known traps, and posts whose images are hostile files
(tests/support/hostile_images.py): every message ends indexed or dead-lettered with a reason, the tweets published
after the hostile ones included, and the agent never crashes."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from elasticsearch import AsyncElasticsearch
from hypothesis.errors import NonInteractiveExampleWarning

from postlens.settings import Settings
from stream.stages.ingest import InvalidPost, parse_post
from tests.stream.pipeline_run import PipelineRun
from tests.stream.test_pipeline import wait_for
from tests.support.hostile_images import encoded_images, hostile_image
from tests.support.hostile_posts import payloads
from tests.support.image_server import ImageServer
from trainer.data.conll import read_conll

pytestmark = pytest.mark.integration
GENERATED = 60
HOSTILE_IMAGE_POSTS = 30
TWEETS_BEFORE, TWEETS_AFTER = 40, 40

TRAPS: list[bytes | None] = [
    None,
    b"",
    b'{"id": "deep", "text": "t", "meta": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    b'{"id": "nan", "text": "t", "meta": {"x": NaN}}',
    b'{"id": "inf", "text": "t", "meta": {"x": 1e400}}',
    b'{"id": "surrogate", "text": "a \\ud800 b"}',
    b'{"id": "surrogate-meta", "text": "t", "author": "\\udfff"}',
    json.dumps({"id": "\U0001f600" * 200, "text": "long id"}).encode(),
    json.dumps({"id": ["a"], "text": "t"}).encode(),
    json.dumps({"id": "t-dict", "text": {"a": 1}}).encode(),
    json.dumps({"id": "empty", "text": "   "}).encode(),
    json.dumps({"id": "big", "text": "x" * 70_000}).encode(),
    json.dumps(
        {"id": "many-images", "text": "t", "images": [f"http://127.0.0.1:1/{n}.png" for n in range(2000)]}
    ).encode(),
    json.dumps(
        {
            "id": "bad-urls",
            "text": "Paris and Rome",
            "images": [
                "http://[::1",
                "file:///etc/passwd",
                "http://169.254.169.254/latest",
                "javascript:alert(1)",
                "http://" + "a" * 3000 + ".com/x.png",
                "",
                "ftp://x/y.png",
                "http://%zz/x",
            ],
        }
    ).encode(),
    json.dumps({"id": "images-types", "text": "t", "images": [1, None, {"a": 1}]}).encode(),
    json.dumps({"id": "date", "text": "t", "created_at": "yesterday-ish"}).encode(),
    json.dumps({"id": "extra", "text": "t", "_id": "x", "_source": {}, "meta": {"": {".": [1, {"": None}]}}}).encode(),
    json.dumps({"id": "\x00\n\t/?#%", "text": "control characters in the id"}).encode(),
    json.dumps(["not", "an", "object"]).encode(),
    '{"id": "utf16", "text": "t"}'.encode("utf-16"),
    b"\xef\xbb\xbf" + json.dumps({"id": "bom", "text": "t"}).encode(),
    b"\xff\xfe\x00garbage",
]


def tweets(count: int, skip: int, prefix: str) -> list[tuple[str, bytes]]:
    examples, _ = read_conll(Settings().shared_data_dir / "twitter2017" / "valid.txt")
    return [
        (f"{prefix}-{ex.id}", json.dumps({"id": f"{prefix}-{ex.id}", "text": ex.text}).encode())
        for ex in examples[skip : skip + count]
    ]


@pytest.fixture
def hostile_files(tmp_path: Path) -> Iterator[tuple[ImageServer, list[str]]]:
    rng, corpus = random.Random(11), encoded_images()
    names = []
    for n in range(HOSTILE_IMAGE_POSTS * 2):
        names.append(f"h{n}.img")
        (tmp_path / names[-1]).write_bytes(hostile_image(rng, corpus))
    with ImageServer(files_dir=tmp_path) as server:
        yield server, [server.url(f"/files/{name}") for name in names]


async def test_every_message_ends_indexed_or_dead_lettered(
    pipeline: PipelineRun,
    es: AsyncElasticsearch,
    kafka_admin: AIOKafkaAdminClient,
    hostile_files: tuple[ImageServer, list[str]],
) -> None:
    _server, urls = hostile_files
    with warnings.catch_warnings():  # draws outside a @given test are what this test wants
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        generated = [payloads.example() for _ in range(GENERATED)]
    image_posts = [
        json.dumps(
            {"id": f"img-{n}", "text": "Obama meets Merkel in Berlin", "images": urls[2 * n : 2 * n + 2]}
        ).encode()
        for n in range(HOSTILE_IMAGE_POSTS)
    ]
    hostile = [*TRAPS, *generated, *image_posts]
    rng = random.Random(5)
    rng.shuffle(hostile)
    messages = [
        *tweets(TWEETS_BEFORE, 0, "before"),
        *((f"hostile-{n}", value) for n, value in enumerate(hostile)),
        *tweets(TWEETS_AFTER, TWEETS_BEFORE, "after"),
    ]
    await pipeline.create_topics()
    await pipeline.publish(messages)
    worker = pipeline.start_worker()
    worker.wait_ready()

    # What each message must become: a dead letter under its key, or (when ingest accepts it) its post indexed or
    # dead-lettered by a later stage.
    settings = pipeline.settings
    expected_ids: dict[str, str | None] = {}
    for key, value in messages:
        try:
            expected_ids[key] = parse_post(value, settings).id
        except InvalidPost:
            expected_ids[key] = None

    async def all_finished() -> bool:
        indexed = set(await pipeline.documents(es, settings.es_index_posts))
        lettered = {letter.key for letter in await pipeline.dead_letters()}
        return all(key in lettered or post_id in indexed for key, post_id in expected_ids.items())

    await pipeline.wait_indexed(es, TWEETS_BEFORE + TWEETS_AFTER, timeout_s=300)
    await wait_for(all_finished, "every message indexed or dead-lettered", timeout_s=120)
    for letter in await pipeline.dead_letters():
        assert letter.error.stage and letter.error.kind and letter.error.message, letter
    indexed = await pipeline.documents(es, settings.es_index_posts)
    assert all(key in indexed for key, _ in messages if key.startswith("after-"))
    assert worker.metric("postlens_agent_crashes_total") == 0
    assert not worker.died
