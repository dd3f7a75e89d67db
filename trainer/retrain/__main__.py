"""``python -m trainer.retrain``: the command line of a retraining run; the exit code is the summary's."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

import trainer.retrain
from postlens.schemas import validation_summary
from postlens.settings import get_settings
from trainer.retrain.report import summary_text
from trainer.retrain.run import RetrainOptions, retrain


def main(argv: Sequence[str] | None = None) -> None:
    settings = get_settings()
    parser = argparse.ArgumentParser(
        prog="python -m trainer.retrain", description=trainer.retrain.__doc__.splitlines()[0]
    )
    add = parser.add_argument
    add("--base", type=Path, help="checkpoint to fine-tune (default: the one behind the newest version in --repo)")
    add("--valid", type=Path, help="labeled JSONL/CoNLL added to the evaluation set")
    add("--extra-train", type=Path, help="labeled JSONL/CoNLL mixed into fine-tuning (e.g. the base's train set)")
    add("--images", type=Path, help="image folder of CoNLL --valid/--extra-train files (by IMGID)")
    add("--image-root", type=Path, default=Path.cwd(), help="relative image paths in labels are under this folder")
    add("--repo", type=Path, default=settings.model_repository, help="Triton model repository")
    add("--out", type=Path, help=f"candidate checkpoint folder (default: new, under {settings.checkpoints_dir})")
    add("--min-labels", type=int, default=settings.retrain_min_labels, help="fewer usable labels → exit 3")
    add("--max-labels", type=int, help="read at most this many label messages (the rest wait for the next run)")
    add("--from-beginning", action="store_true", help="read the whole topic, not only what came after the last commit")
    add("--dry-run", action="store_true", help="train and decide, but export, publish and commit nothing")
    add("--tolerance", type=float, default=settings.retrain_tolerance, help="promote when F1 ≥ base F1 − this")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override train.*/loss.*")
    add("--triton-http", help="Triton HTTP URL to load a new version into (default: the stack's, for its repository)")
    add("--json", type=Path, help="write the summary JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("trainer").setLevel(logging.INFO)

    try:
        options = RetrainOptions(
            **{name: value for name, value in vars(args).items() if name != "json"},
        )
    except ValidationError as error:
        parser.error(validation_summary(error, "options"))
    summary = retrain(options, settings)
    print(summary_text(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(summary.model_dump_json(indent=2) + "\n")
    raise SystemExit(summary.exit_code)


if __name__ == "__main__":
    main()
