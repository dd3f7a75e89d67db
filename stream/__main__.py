"""PostLens stream commands: ``python -m stream worker|publish|search|replay-dlq|wait``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from postlens.schemas import ENTITY_TYPES, PIPELINE_STAGES
from postlens.settings import Settings, get_settings


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    import faust  # imported here: Faust is heavy, the other commands do not need it

    from postlens.io.kafka import ensure_topics
    from stream.worker import build_worker

    asyncio.run(ensure_topics(settings))
    app = build_worker(settings, web_port=args.web_port)
    faust.Worker(app, loglevel=args.loglevel).execute_from_commandline()
    return 0


def _publish(settings: Settings, args: argparse.Namespace) -> int:
    from stream.commands.publish import publish_file

    topic = args.topic or settings.topic_posts
    count = asyncio.run(publish_file(settings, args.file, rate=args.rate, image_base=args.image_base, topic=topic))
    print(f"published {count} messages to {topic}")
    return 0


def _search(settings: Settings, args: argparse.Namespace) -> int:
    from stream.commands.search import entity_query, format_table, parse_since, search_entities

    since = parse_since(args.since) if args.since else None
    query = entity_query(args.text, args.type, args.min_confidence, since)
    entities = asyncio.run(search_entities(settings, query, args.limit))
    print(format_table(entities))
    print(f"{len(entities)} entities shown (limit {args.limit})")
    return 0


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from stream.commands.replay import replay_dead_letters

    report = asyncio.run(replay_dead_letters(settings, stage=args.stage))
    print(
        f"replayed {report.replayed} dead letters to {settings.topic_posts}; skipped {report.skipped}"
        f" (other stage or empty), unreadable {report.unreadable}"
    )
    return 0


def _wait(settings: Settings, args: argparse.Namespace) -> int:
    from stream.commands.search import parse_since, wait_for_posts

    try:
        since = parse_since(args.since) if args.since else None
        indexed = asyncio.run(wait_for_posts(settings, args.count, args.timeout, since))
    except TimeoutError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"{indexed} posts indexed in {settings.es_index_posts}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m stream", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)

    worker = commands.add_parser("worker", help="run a pipeline worker (joins the consumer group)")
    worker.add_argument(
        "--web-port",
        type=int,
        help="metrics/web port (default: POSTLENS_WORKER_WEB_PORT if set, else 6066 or, when taken, a free port)",
    )
    worker.add_argument("--loglevel", default="info")
    worker.set_defaults(run=_worker)

    publish = commands.add_parser("publish", help="publish posts from a JSONL file, keyed by post id")
    publish.add_argument("file", type=Path)
    publish.add_argument("--rate", type=float, help="posts per second (default: as fast as possible)")
    publish.add_argument("--image-base", help="base URL for relative image paths in the file")
    publish.add_argument("--topic", help="topic (default: the posts topic; the labels topic feeds trainer.retrain)")
    publish.set_defaults(run=_publish)

    search = commands.add_parser("search", help="search indexed entities")
    search.add_argument("text", nargs="?", help="full-text match on the entity mention")
    search.add_argument("--type", choices=ENTITY_TYPES, type=str.upper)
    search.add_argument("--min-confidence", type=float)
    search.add_argument("--since", help="indexed since: 1h, 30m, 2d or an ISO time")
    search.add_argument("--limit", type=int, default=20)
    search.set_defaults(run=_search)

    replay = commands.add_parser("replay-dlq", help="re-publish dead letters' original messages to the posts topic")
    replay.add_argument("--stage", choices=PIPELINE_STAGES, help="only letters of this stage")
    replay.set_defaults(run=_replay)

    wait = commands.add_parser("wait", help="wait until N posts are indexed")
    wait.add_argument("--count", type=int, required=True)
    wait.add_argument("--timeout", type=float, default=600.0, help="seconds (exit 1 when reached)")
    wait.add_argument("--since", help="count only posts indexed since: 1h, 30m or an ISO time (re-runs of old posts)")
    wait.set_defaults(run=_wait)
    return root


def main(argv: list[str] | None = None) -> int:
    commands = parser()
    args = commands.parse_args(argv)
    if args.command != "worker":  # the Faust worker configures logging itself
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(get_settings(), args)
    except (OSError, ValueError) as error:  # a missing file, a bad --since: say so without a traceback
        commands.error(str(error))


if __name__ == "__main__":
    sys.exit(main())
