"""Image fetching without services: the SSRF guard refuses internal targets by default, the allowlist lets the
loopback test server through, and decoding refuses what is not a safe image."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from postlens.io.fetch import FetchError, ImageFetcher, decode_image
from postlens.settings import Settings
from tests.support.fixed_dns import FixedResolver
from tests.support.image_server import ImageServer, encoded, picture

SIZE = 32


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with ImageServer() as running:
        yield running


def fetch_settings(**overrides: object) -> Settings:
    return Settings(fetch_connect_timeout_s=2, fetch_read_timeout_s=2, fetch_total_timeout_s=5, **overrides)


async def fetch_once(url: str, settings: Settings, resolver: FixedResolver | None = None) -> tuple[str, str | None]:
    fetcher = ImageFetcher(settings, SIZE, cache=None, resolver=resolver)
    try:
        image = await fetcher.fetch(url)
    finally:
        await fetcher.close()
    return image.outcome.status, image.outcome.message


@pytest.mark.parametrize(
    "url",
    [
        "{base}/img/a.png",  # 127.0.0.1
        "http://localhost:{port}/img/a.png",  # a name resolving to loopback (real resolver)
        "http://[::1]:{port}/img/a.png",
        "http://[::ffff:127.0.0.1]:{port}/img/a.png",
        "http://10.1.2.3/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
    ],
)
async def test_internal_targets_are_refused_by_default(server: ImageServer, url: str) -> None:
    before = sum(server.requests.values())
    status, message = await fetch_once(url.format(base=server.base_url, port=server.port), fetch_settings())
    assert status == "ssrf_blocked", message
    assert sum(server.requests.values()) == before  # refused before connecting


async def test_name_resolving_to_a_private_address_is_refused() -> None:
    status, message = await fetch_once("http://images.example/a.png", fetch_settings(), FixedResolver("10.0.0.5"))
    assert status == "ssrf_blocked" and "10.0.0.5" in (message or "")


async def test_allowlist_lets_the_loopback_test_server_through(server: ImageServer) -> None:
    settings = fetch_settings(fetch_allowlist=["127.0.0.1/32"])
    fetcher = ImageFetcher(settings, SIZE)
    try:
        images = await fetcher.fetch_post_images([server.url("/img/a.png"), server.url("/img/b.jpg")])
    finally:
        await fetcher.close()
    assert [image.outcome.status for image in images] == ["ok", "ok"]
    for image in images:
        assert image.pixels is not None and image.pixels.shape == (SIZE, SIZE, 3) and image.pixels.dtype == np.uint8


async def test_allowlist_does_not_open_other_private_addresses(server: ImageServer) -> None:
    settings = fetch_settings(fetch_allowlist=["127.0.0.1/32"])
    assert (await fetch_once("http://10.1.2.3/a.png", settings))[0] == "ssrf_blocked"
    assert (await fetch_once(server.url("/to-private"), settings))[0] == "ssrf_blocked"  # checked at every hop


async def test_images_beyond_the_model_limit_are_recorded_not_fetched(server: ImageServer) -> None:
    settings = fetch_settings(fetch_allowlist=["127.0.0.1/32"], max_images_per_post=2)
    fetcher = ImageFetcher(settings, SIZE)
    try:
        images = await fetcher.fetch_post_images([server.url(f"/img/many{i}.png") for i in range(3)])
    finally:
        await fetcher.close()
    assert [image.outcome.status for image in images] == ["ok", "ok", "skipped"]
    assert server.requests["/img/many2.png"] == 0


def test_exif_orientation_is_applied() -> None:
    # Stored landscape, red left / blue right; EXIF 6 says "rotate 90° clockwise to display" → red on top.
    stored = Image.new("RGB", (80, 40), "blue")
    stored.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    pixels = decode_image(encoded(stored, "JPEG", exif=exif.tobytes()), SIZE, 10_000)
    top, bottom = pixels[2, SIZE // 2], pixels[-3, SIZE // 2]
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_content_is_sniffed_not_trusted() -> None:
    with pytest.raises(FetchError) as refused:
        decode_image(b"<svg xmlns='http://www.w3.org/2000/svg'></svg>", SIZE, 10_000)
    assert refused.value.kind == "not_image"


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(FetchError) as refused:
        decode_image(_png_header_only(50_000, 50_000), SIZE, 40_000_000)
    assert refused.value.kind == "bomb"


def test_pixel_limit_applies_below_pillows_own() -> None:
    with pytest.raises(FetchError) as refused:
        decode_image(encoded(picture("big", (200, 200)), "PNG"), SIZE, 10_000)
    assert refused.value.kind == "bomb"


def test_truncated_file_is_reported_as_truncated() -> None:
    whole = encoded(picture("t", (320, 240)), "JPEG", quality=95)
    with pytest.raises(FetchError) as refused:
        decode_image(whole[: len(whole) // 2], SIZE, 1_000_000)
    assert refused.value.kind == "truncated"


def test_decoded_pixels_match_the_shared_preprocessing() -> None:
    from postlens.runtime.images import to_model_pixels

    image = picture("same")
    expected = to_model_pixels(Image.open(io.BytesIO(encoded(image, "PNG"))), SIZE)
    np.testing.assert_array_equal(decode_image(encoded(image, "PNG"), SIZE, 1_000_000), expected)
