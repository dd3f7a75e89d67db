"""``python -m trainer.retrain``: one retraining run (the exit code is the summary's), ``--history``,
``--rollback N`` or ``--watch``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

import trainer.retrain
from postlens.schemas import validation_summary
from postlens.settings import get_settings
from trainer.retrain.decision import RetrainError, newest_version
from trainer.retrain.lineage import history, history_table, rollback
from trainer.retrain.report import EXIT_NOT_LOADED, summary_text
from trainer.retrain.run import RetrainOptions, retrain


def main(argv: Sequence[str] | None = None) -> None:
    settings = get_settings()
    doc = trainer.retrain.__doc__ or ""
    parser = argparse.ArgumentParser(prog="python -m trainer.retrain", description=doc.splitlines()[0])
    add = parser.add_argument
    add("--base", type=Path, help="checkpoint to fine-tune (default: the one behind the newest version in --repo)")
    add("--valid", type=Path, help="labeled JSONL/CoNLL added to the held-out new labels (the new-labels gate)")
    add("--reference", type=Path, help="curated labeled JSONL/CoNLL added to the reference set (the reference gate)")
    add("--extra-train", type=Path, help="labeled JSONL/CoNLL mixed into fine-tuning")
    add("--images", type=Path, help="image folder of CoNLL --valid/--reference/--extra-train files (by IMGID)")
    add("--image-root", type=Path, default=Path.cwd(), help="relative image paths in labels are under this folder")
    add("--repo", type=Path, default=settings.model_repository, help="Triton model repository")
    add("--out", type=Path, help=f"candidate checkpoint folder (default: new, under {settings.checkpoints_dir})")
    add("--min-labels", type=int, default=settings.retrain_min_labels, help="fewer usable labels → exit 3")
    add("--max-labels", type=int, help="read at most this many label messages (the rest wait for the next run)")
    add("--from-beginning", action="store_true", help="read the whole topic, not only what came after the last commit")
    add("--dry-run", action="store_true", help="train and decide, but export, publish and commit nothing")
    add("--no-audit", action="store_true", help="train on every valid label, unaudited (recorded in lineage)")
    add(
        "--tolerance",
        type=float,
        default=settings.retrain_tolerance,
        help="F1 the new-labels gate lets go",
    )
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override train.*/loss.*")
    add("--triton-http", help="Triton HTTP URL to load a new version into (default: the stack's, for its repository)")
    add("--json", type=Path, help="write the summary (or with --history, the lineage) as JSON here ('-': stdout)")
    modes = parser.add_mutually_exclusive_group()
    modes.add_argument("--history", action="store_true", help="print every version's lineage as a table")
    modes.add_argument("--rollback", type=int, metavar="N", help="serve version N again, as a new newest version")
    modes.add_argument("--watch", action="store_true", help="retrain whenever enough labels wait (SIGTERM stops)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trainer").setLevel(logging.INFO)
    model_root = args.repo / settings.triton_model

    if args.history:
        if not model_root.is_dir():
            parser.error(f"{model_root} does not exist")
        rows = history(model_root)
        if args.json:
            write_json(args.json, json.dumps([row.model_dump() for row in rows], indent=2))
        else:
            print(history_table(rows, newest_version(model_root)))
        return
    if args.rollback is not None:
        http_url = args.triton_http or settings.triton_load_url(args.repo)
        try:
            result = rollback(model_root, args.rollback, http_url)
        except RetrainError as error:
            raise SystemExit(f"rollback refused: {error}") from None
        print(f"version {result.version} serves version {result.rollback_of} again; {result.triton}")
        raise SystemExit(EXIT_NOT_LOADED if result.triton_refused else 0)

    fields = {name: value for name, value in vars(args).items() if name not in ("json", "history", "rollback", "watch")}
    try:
        options = RetrainOptions(**fields)
    except ValidationError as error:
        parser.error(validation_summary(error, "options"))
    if args.watch:
        if args.dry_run:
            parser.error("--watch retrains for real: a dry run would train on the same labels at every look")
        from trainer.retrain.watch import watch

        raise SystemExit(watch(options, settings))
    summary = retrain(options, settings)
    print(summary_text(summary))
    if args.json:
        write_json(args.json, summary.model_dump_json(indent=2))
    raise SystemExit(summary.exit_code)


def write_json(target: Path, text: str) -> None:
    if str(target) == "-":
        print(text)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text + "\n")


if __name__ == "__main__":
    main()
