"""Fetching a post's images: URL → model pixels, safely, or a recorded failure kind.

Every URL gets a :class:`FetchOutcome` (``ok`` or why not); a failed image never fails its post, the post is then
processed with the images that did load. Limits, in the order a fetch meets them: the SSRF policy (every hop),
concurrency (global and per host, via the connection pool), connect/read/total timeouts, redirects (followed by
hand so each hop is re-checked), response size, content sniffing by Pillow (the Content-Type header is ignored),
pixel count before decoding (decompression bombs), a decode marker in Redis (an image a worker died decoding is
decoded alone; after ``fetch_poison_strikes`` deaths, never again: kind ``poison``), the decode pool's pixel budget,
then EXIF orientation and resizing to the model's input.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import numpy as np
from aiohttp.abc import AbstractResolver
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel
from yarl import URL

from postlens.failures import FetchFailure
from postlens.io.decode_pool import DecodePool
from postlens.io.image_cache import CachedFailure, ImageCache
from postlens.io.ssrf import AddressPolicy, BlockedAddress, GuardedResolver
from postlens.runtime.images import to_model_pixels
from postlens.settings import Settings

OK = "ok"
SKIPPED = "skipped"  # beyond the images the model takes; recorded, not fetched
# Formats Pillow may decode; anything else (SVG, TIFF, PDF, HTML…) is "not_image".
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024
log = logging.getLogger(__name__)


class FetchOutcome(BaseModel):
    """What happened to one image URL; ``status`` is ``ok``, ``skipped`` or a failure kind."""

    url: str
    status: str
    message: str | None = None
    cached: bool = False


@dataclass(frozen=True)
class FetchedImage:
    outcome: FetchOutcome
    pixels: np.ndarray | None  # uint8 [S, S, 3] when status is ok


class FetchError(Exception):
    def __init__(self, kind: FetchFailure, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@contextmanager
def _refusals(data: bytes) -> Iterator[None]:
    """Whatever Pillow raises about ``data`` → :class:`FetchError`.

    Pillow's decoders raise nearly anything on crafted files (``OSError``, ``SyntaxError``, ``struct.error``,
    ``IndexError``, ``ZeroDivisionError``, ``MemoryError``…), and a bad image must cost only that image.
    """
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb is an error here at any size.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except FetchError:
            raise
        except UnidentifiedImageError as error:
            raise FetchError(
                FetchFailure.NOT_IMAGE, f"not a {'/'.join(IMAGE_FORMATS)} image ({len(data)} bytes)"
            ) from error
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            raise FetchError(FetchFailure.BOMB, str(error)) from error
        except Exception as error:
            kind = FetchFailure.TRUNCATED if "truncated" in str(error) else FetchFailure.CORRUPT
            raise FetchError(kind, f"cannot decode image: {type(error).__name__}: {error}") from error


def _open(data: bytes, max_pixels: int) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    # Opening read only the header; refuse before the pixels are decompressed.
    pixels = image.width * image.height
    if pixels > max_pixels:
        raise FetchError(FetchFailure.BOMB, f"{image.width}x{image.height} = {pixels} pixels exceeds {max_pixels}")
    return image


def image_pixels(data: bytes, max_pixels: int) -> int:
    """Width × height, from the header alone; raises :class:`FetchError` as :func:`decode_image` would."""
    with _refusals(data):
        image = _open(data, max_pixels)
        return image.width * image.height


def decode_image(data: bytes, size: int, max_pixels: int) -> np.ndarray:
    """Image bytes → upright ``size``×``size`` RGB pixels, refusing non-images and decompression bombs.

    Raises only :class:`FetchError`.
    """
    with _refusals(data):
        return to_model_pixels(_open(data, max_pixels), size)


def _http_kind(status: int) -> FetchFailure:
    if status == 404:
        return FetchFailure.HTTP_404
    if status >= 500:
        return FetchFailure.HTTP_5XX
    if status >= 400:
        return FetchFailure.HTTP_4XX
    return FetchFailure.HTTP_ERROR


def _client_error_kind(error: aiohttp.ClientError) -> FetchFailure:
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, BlockedAddress):  # raised by the guarded resolver
            return FetchFailure.SSRF_BLOCKED
        if isinstance(error, aiohttp.ClientConnectorDNSError):
            return FetchFailure.DNS_ERROR
        return FetchFailure.CONNECT_ERROR
    if isinstance(error, aiohttp.ClientPayloadError):
        return FetchFailure.TRUNCATED
    if isinstance(error, aiohttp.InvalidURL):
        return FetchFailure.INVALID_URL
    if isinstance(error, aiohttp.TooManyRedirects):
        return FetchFailure.TOO_MANY_REDIRECTS
    return FetchFailure.HTTP_ERROR


class ImageFetcher:
    """Fetches image URLs into model pixels with a Redis cache. Create and use inside a running event loop."""

    def __init__(
        self,
        settings: Settings,
        image_size: int,
        cache: ImageCache | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self._settings = settings
        self._image_size = image_size
        self._cache = cache
        self._policy = AddressPolicy.from_allowlist(settings.fetch_allowlist)
        self._decoder = DecodePool(settings.fetch_decode_threads, settings.fetch_decode_budget_pixels)
        self._in_flight: dict[str, asyncio.Future[FetchedImage]] = {}
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self._policy, resolver),
            # The pool's limits are the fetch concurrency limits: a request waits for a free connection.
            limit=settings.fetch_concurrency,
            limit_per_host=settings.fetch_per_host_concurrency,
            use_dns_cache=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(
                sock_connect=settings.fetch_connect_timeout_s, sock_read=settings.fetch_read_timeout_s
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # posts must not share cookies
            headers={"User-Agent": "PostLens-image-fetcher/1", "Accept": "image/*"},
        )

    @property
    def image_size(self) -> int:
        return self._image_size

    async def fetch_post_images(self, urls: list[str]) -> list[FetchedImage]:
        """One result per URL, in order; URLs beyond ``max_images_per_post`` are recorded as skipped."""
        [images] = await self.fetch_posts_images([urls])
        return images

    async def fetch_posts_images(self, posts: list[list[str]]) -> list[list[FetchedImage]]:
        """:meth:`fetch_post_images` for each post's URLs, the cache asked about all of them in one round trip."""
        limit = self._settings.max_images_per_post
        # Each URL once: posts sharing an image share its one fetch.
        wanted = list(dict.fromkeys(url for urls in posts for url in urls[:limit]))
        cached = await self._cache.get_many(wanted) if self._cache is not None else [None] * len(wanted)
        images = await asyncio.gather(*(self._fetched(url, hit) for url, hit in zip(wanted, cached, strict=True)))
        found = dict(zip(wanted, images, strict=True))
        return [
            [
                *(found[url] for url in urls[:limit]),
                *(
                    FetchedImage(
                        FetchOutcome(url=url, status=SKIPPED, message=f"only the first {limit} images are used"), None
                    )
                    for url in urls[limit:]
                ),
            ]
            for urls in posts
        ]

    async def fetch(self, url: str) -> FetchedImage:
        return await self._fetched(url, await self._cache.get(url) if self._cache is not None else None)

    async def _fetched(self, url: str, cached: np.ndarray | CachedFailure | None) -> FetchedImage:
        """The image at ``url`` given what the cache holds of it."""
        if isinstance(cached, np.ndarray):
            return FetchedImage(FetchOutcome(url=url, status=OK, cached=True), cached)
        if isinstance(cached, CachedFailure):
            return FetchedImage(FetchOutcome(url=url, status=cached.kind, message=cached.message, cached=True), None)
        # One fetch per URL at a time in this worker: batches in flight together share it, and two decodes of one URL
        # at once never look like a worker's death to its decode marker.
        while (pending := self._in_flight.get(url)) is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                # the fetch it waited for was cancelled with its own batch: fetch it here
        fetching = asyncio.ensure_future(self._fetch_new(url))
        self._in_flight[url] = fetching
        fetching.add_done_callback(lambda done: self._in_flight.pop(url) if self._in_flight.get(url) is done else None)
        return await fetching

    async def _fetch_new(self, url: str) -> FetchedImage:
        try:
            pixels = await self._fetch_uncached(url)
        except FetchError as error:
            return await self._failed(url, error)
        except Exception as error:
            log.warning("fetching %r failed unexpectedly", url, exc_info=True)
            return await self._failed(url, FetchError(FetchFailure.FETCH_ERROR, f"{type(error).__name__}: {error}"))
        return FetchedImage(FetchOutcome(url=url, status=OK), pixels)

    async def _failed(self, url: str, error: FetchError) -> FetchedImage:
        if self._cache is not None:
            await self._cache.put_failure(url, CachedFailure(error.kind, str(error)))
        return FetchedImage(FetchOutcome(url=url, status=error.kind, message=str(error)), None)

    async def _fetch_uncached(self, url: str) -> np.ndarray:
        settings = self._settings
        try:
            async with asyncio.timeout(settings.fetch_total_timeout_s):
                data = await self._download(url)
        except TimeoutError as error:  # aiohttp's connect/read timeouts are TimeoutErrors too
            raise FetchError(FetchFailure.TIMEOUT, f"{type(error).__name__}: {error or 'no answer in time'}") from error
        except BlockedAddress as error:
            raise FetchError(FetchFailure.SSRF_BLOCKED, str(error)) from error
        except aiohttp.ClientError as error:
            kind = _client_error_kind(error)
            reason = error.os_error if kind == FetchFailure.SSRF_BLOCKED else error  # type: ignore[attr-defined]
            raise FetchError(kind, f"{type(reason).__name__}: {reason}") from error
        except ValueError as error:  # yarl/aiohttp reject malformed URLs with ValueError subclasses
            raise FetchError(FetchFailure.INVALID_URL, str(error)) from error
        return await self._decode(url, data)

    async def _decode(self, url: str, data: bytes) -> np.ndarray:
        """Decode on the pool (CPU work off the event loop, so the Kafka heartbeat goes on) within its pixel budget,
        behind the decode marker that stops a crash loop (postlens.io.image_cache); the pixels are cached as the
        marker is taken away."""
        settings = self._settings
        pixels = image_pixels(data, settings.fetch_max_pixels)
        deaths = await self._cache.start_decoding(url) if self._cache is not None else None
        if deaths is not None and deaths >= settings.fetch_poison_strikes:
            raise FetchError(
                FetchFailure.POISON, f"{deaths} workers died while decoding this image; it is not decoded again"
            )
        if deaths:
            log.warning("a worker died while decoding %r; decoding it alone", url)
        decoded = None
        try:
            # A suspect takes the whole budget: if it kills this worker too, no innocent image is blamed with it.
            cost = self._decoder.budget_pixels if deaths else pixels
            decoded = await self._decoder.run(cost, decode_image, data, self._image_size, settings.fetch_max_pixels)
            return decoded
        finally:
            if self._cache is not None:  # also when cancelled (shielded): the worker lives on
                await asyncio.shield(self._cache.end_decoding(url, decoded))

    async def _download(self, url: str) -> bytes:
        """The body at ``url``, following redirects by hand so the SSRF policy sees every hop."""
        max_bytes = self._settings.fetch_max_bytes
        current = URL(url)
        visited = {str(current)}
        for _hop in range(self._settings.fetch_max_redirects + 1):
            self._policy.check_url(str(current))
            async with self._session.get(current, allow_redirects=False) as response:
                if response.status in REDIRECT_STATUSES:
                    location = response.headers.get("Location")
                    if not location:
                        raise FetchError(FetchFailure.HTTP_ERROR, f"HTTP {response.status} without a Location header")
                    current = current.join(URL(location))
                    if str(current) in visited:
                        raise FetchError(FetchFailure.REDIRECT_LOOP, f"redirect back to {current}")
                    visited.add(str(current))
                    continue
                if response.status != 200:
                    raise FetchError(_http_kind(response.status), f"HTTP {response.status} from {current}")
                if response.content_length is not None and response.content_length > max_bytes:
                    raise FetchError(
                        FetchFailure.TOO_LARGE, f"Content-Length {response.content_length} exceeds {max_bytes}"
                    )
                body = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    body += chunk
                    if len(body) > max_bytes:
                        raise FetchError(FetchFailure.TOO_LARGE, f"body exceeds {max_bytes} bytes")
                return bytes(body)
        raise FetchError(FetchFailure.TOO_MANY_REDIRECTS, f"more than {self._settings.fetch_max_redirects} redirects")

    async def close(self) -> None:
        await self._session.close()
        self._decoder.close()
