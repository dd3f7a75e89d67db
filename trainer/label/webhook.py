"""The webhook receiver: Label Studio posts each created or updated annotation here, and it becomes a label at once.

Answers 200 once the label (or its refusal) is on Kafka, 503 when Kafka is unreachable (the next ``pull`` picks the
annotation up: both paths share the state, so nothing is published twice), 400 for a body that is not an annotation
event.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiokafka.errors import KafkaError

from postlens.settings import Settings
from trainer.label.convert import Annotation
from trainer.label.pull import publish
from trainer.label.state import LabelState
from trainer.label.studio import LabelStudio

log = logging.getLogger(__name__)
PATH = "/label-studio"
ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}


def app(settings: Settings, studio: LabelStudio, state: LabelState) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        try:
            event = await request.json()
            action = event["action"]
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text="not a Label Studio webhook event") from None
        if action not in ACTIONS:
            return web.json_response({"ignored": action})
        try:
            raw, task = event["annotation"], event["task"]
            project = int(event.get("project", {}).get("id") or task["project"])
            email = await studio.email(raw.get("completed_by"))
        except (KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text="an annotation event needs annotation, task and project") from None
        try:
            summary = await publish(settings, state, [Annotation(raw, task, project, email)])
        except (KafkaError, OSError) as error:
            log.warning("annotation %s not published now (%s); the next pull will", raw.get("id"), error)
            raise web.HTTPServiceUnavailable(text="Kafka is unreachable; retry or pull later") from error
        return web.json_response(vars(summary))

    application = web.Application()
    application.add_routes([web.post(PATH, receive)])
    return application
