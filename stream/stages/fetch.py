"""Fetch: each accepted post's images → model pixels (Redis cache, SSRF-safe: :mod:`postlens.io.fetch`).

An image that cannot be used, whatever the reason, only leaves the post without it: the post goes on (text-only when
no image loaded) and its document records each URL's outcome. The fetch stage never dead-letters a post.
"""

from __future__ import annotations

from postlens.io.fetch import OK, SKIPPED, FetchedImage, ImageFetcher
from stream.metrics import Metrics
from stream.results import Accepted, Fetched, StageResult


class FetchStage:
    def __init__(self, fetcher: ImageFetcher, metrics: Metrics) -> None:
        self._fetcher = fetcher
        self._metrics = metrics

    async def fetch(self, posts: list[Accepted]) -> StageResult[Fetched]:
        """Every post goes on, with one result per image URL, in order (never a letter)."""
        fetched = await self._fetcher.fetch_posts_images([item.post.images for item in posts])
        for images in fetched:
            self._record(images)
        return StageResult(done=[Fetched(item, images) for item, images in zip(posts, fetched, strict=True)])

    def _record(self, images: list[FetchedImage]) -> None:
        for image in images:
            status = image.outcome.status
            if status == SKIPPED:
                continue
            self._metrics.image_cache.labels("hit" if image.outcome.cached else "miss").inc()
            if status != OK:
                self._metrics.fetch_failures.labels(status).inc()
