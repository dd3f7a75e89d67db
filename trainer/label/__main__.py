"""``python -m trainer.label push | pull | webhook``: the Label Studio loop's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from aiohttp import web

import trainer.label
from postlens.io.connections import es_client
from postlens.settings import Settings, get_settings
from trainer.label import webhook
from trainer.label.config import labeling_config
from trainer.label.pull import poll
from trainer.label.push import push
from trainer.label.state import LabelState
from trainer.label.studio import LabelStudio


async def run_push(settings: Settings, count: int) -> dict[str, object]:
    es = es_client(settings)
    state = LabelState(settings.label_state)
    try:
        async with LabelStudio(settings) as studio:
            return asdict(await push(settings, es, studio, state, count)) | {"url": studio.url}
    finally:
        state.close()
        await es.close()


async def run_pull(settings: Settings) -> dict[str, object]:
    state = LabelState(settings.label_state)
    try:
        async with LabelStudio(settings) as studio:
            project_id = await studio.ensure_project(settings.label_project, labeling_config())
            return asdict(await poll(settings, studio, state, project_id))
    finally:
        state.close()


async def run_webhook(settings: Settings, register: bool) -> None:
    state = LabelState(settings.label_state)
    async with LabelStudio(settings) as studio:
        url = f"http://{settings.label_webhook_host}:{settings.label_webhook_port}{webhook.PATH}"
        if register:
            await studio.ensure_webhook(await studio.ensure_project(settings.label_project, labeling_config()), url)
        runner = web.AppRunner(webhook.app(settings, studio, state))
        await runner.setup()
        await web.TCPSite(runner, settings.label_webhook_host, settings.label_webhook_port).start()
        logging.getLogger(__name__).info("receiving Label Studio webhooks on %s", url)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            state.close()


def main(argv: Sequence[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m trainer.label", description=trainer.label.__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push_parser = commands.add_parser("push", help="send the posts the model is least sure of, pre-annotated")
    push_parser.add_argument("--count", type=int, default=settings.label_batch, help="posts to send")
    pull_parser = commands.add_parser("pull", help="completed annotations → labels (polling)")
    for command in (push_parser, pull_parser):
        command.add_argument("--json", type=Path, help="write the summary JSON here")
    hook_parser = commands.add_parser("webhook", help="receive annotations as Label Studio saves them")
    hook_parser.add_argument("--no-register", action="store_true", help="do not add the webhook to the project")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "elastic_transport"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    if args.command == "webhook":
        asyncio.run(run_webhook(settings, not args.no_register))
        return
    started = time.monotonic()
    summary = asyncio.run(run_push(settings, args.count) if args.command == "push" else run_pull(settings))
    summary["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
