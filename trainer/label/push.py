"""Push: choose posts (:mod:`trainer.label.select`), send them as pre-annotated tasks, remember them as sent."""

from __future__ import annotations

from dataclasses import dataclass

from elasticsearch import AsyncElasticsearch

from postlens.settings import Settings
from trainer.label.config import labeling_config
from trainer.label.select import select
from trainer.label.state import LabelState
from trainer.label.studio import LabelStudio
from trainer.label.tasks import task


@dataclass
class PushSummary:
    project_id: int
    tasks: int
    spans: int
    boxes: int


async def push(
    settings: Settings, es: AsyncElasticsearch, studio: LabelStudio, state: LabelState, count: int
) -> PushSummary:
    project_id = await studio.ensure_project(settings.label_project, labeling_config())
    chosen = await select(es, settings, state.excluded_posts(), count)
    tasks = [task(candidate, settings.max_images_per_post) for candidate in chosen]
    if tasks:
        await studio.import_tasks(project_id, tasks)
        state.record_pushed(project_id, [(c.id, c.model_version) for c in chosen])
    results = [r for t in tasks for r in t["predictions"][0]["result"]]
    return PushSummary(
        project_id,
        len(tasks),
        spans=sum(r["type"] == "labels" for r in results),
        boxes=sum(r["type"] == "rectanglelabels" for r in results),
    )
