"""The seam between the pipeline and where processed posts end up (Elasticsearch: :mod:`stream.stages.index`).

A sink writes a batch and returns only once the batch is settled: every post written (acknowledged, so its offset
may be committed) or refused for good. Outages are waited out inside :meth:`Sink.write`; a refused post comes back
as a :class:`SinkFailure` and is dead-lettered by the pipeline, with none of its documents left behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from postlens.failures import IndexFailure
from stream.results import ProcessedPost


@dataclass(frozen=True)
class SinkFailure:
    item: ProcessedPost
    kind: IndexFailure
    message: str


class Sink(Protocol):
    async def prepare(self) -> None:
        """Make the destination ready (templates, indices…), waiting while it is unavailable."""

    async def write(self, batch: list[ProcessedPost]) -> list[SinkFailure]:
        """Write ``batch``; the posts refused for good. An older version of a post never overwrites a newer one."""

    async def close(self) -> None: ...
