"""Property-based: any file a post's image URL may serve — every format Pillow writes, mutated, truncated, headers
with absurd dimensions, random bytes — decodes to model pixels or fails with a kind; nothing else escapes. The same
through the real fetcher over HTTP, where a failed image is an outcome, never an exception."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from postlens.io.fetch import OK, FetchError, ImageFetcher, decode_image
from postlens.settings import Settings
from tests.support.hostile_images import encoded_images, hostile_images
from tests.support.image_server import ImageServer

SIZE = 16
MAX_PIXELS = 1_000_000
DECODE_KINDS = {"not_image", "bomb", "truncated", "corrupt"}
CORPUS = encoded_images()


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_images(CORPUS))
def test_any_file_decodes_or_fails_with_a_kind(data: bytes) -> None:
    try:
        pixels = decode_image(data, SIZE, MAX_PIXELS)
    except FetchError as error:
        assert error.kind in DECODE_KINDS and str(error)
    else:
        assert pixels.shape == (SIZE, SIZE, 3) and pixels.dtype == np.uint8


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ImageServer]]:
    directory = tmp_path_factory.mktemp("hostile-files")
    with ImageServer(files_dir=directory) as server:
        yield directory, server


@pytest.mark.integration
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=hostile_images(CORPUS))
def test_any_file_served_over_http_is_an_outcome(files: tuple[Path, ImageServer], data: bytes) -> None:
    directory, server = files
    name = f"{uuid.uuid4().hex}.img"
    (directory / name).write_bytes(data)
    image_settings = Settings(fetch_allowlist=["127.0.0.1/32"], fetch_max_pixels=MAX_PIXELS)

    async def fetch() -> None:
        fetcher = ImageFetcher(image_settings, SIZE)  # no cache: every example is fetched and decoded
        try:
            [image] = await fetcher.fetch_post_images([server.url(f"/files/{name}")])
        finally:
            await fetcher.close()
        assert (image.outcome.status == OK) == (image.pixels is not None)
        assert image.outcome.status == OK or image.outcome.status in DECODE_KINDS, image.outcome

    asyncio.run(fetch())
