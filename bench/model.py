"""Model benchmark: ``python -m bench.model`` (``make bench`` runs it). Prints figures; writes ``reports/model.md``,
``reports/model.json`` and PNGs.

(a) Twitter-2015 and Twitter-2017 (under ``$POSTLENS_SHARED_DATA_DIR``), train → valid, text only (the tweet images
    are not distributed): the default ``twitter`` preset against its parts and a plain MiniLM softmax tagger
    (:mod:`bench.twitter`).
(b) Synthetic multimodal posts (``trainer.synth``): every fusion strategy and the seed papers' component ablations
    on the tiny preset (:mod:`bench.synthetic`).
(c) Held-out selection (issue 22): the ``twitter`` recipe over ``--seeds`` (selected on a dev slice of train), valid
    entity F1 per split as mean ± sd, weight averaging against the best epoch (:mod:`bench.selection`).

CPU-only and slow: section (a) trains MiniLM about a quarter of an hour per variant on 2 cores (``--work`` keeps
the checkpoints and a later run reuses them), section (b) trains 21 tiny models. ``--only twitter|synthetic|selection``
runs one section; the others keep their text, figures and command from the report already in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench import selection, synthetic, twitter
from postlens.settings import get_settings
from trainer.run_config import resolve_config

REPORTS = Path(__file__).resolve().parent.parent / "reports"
# in report order
SECTIONS = {"twitter": twitter.HEADING, "synthetic": synthetic.HEADING, "selection": selection.HEADING}


def previous_section(report: str, heading: str) -> str:
    """The section of an earlier ``model.md`` that starts with ``heading``, up to the next section ("" if none)."""
    sections = re.split(r"^(?=## )", report, flags=re.MULTILINE)
    return next((section.rstrip() + "\n" for section in sections if section.startswith(heading)), "")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPORTS, help="where model.md, model.json and the PNGs go")
    parser.add_argument(
        "--work", type=Path, default=None, help="keep checkpoints and synthetic data here (default: temporary)"
    )
    parser.add_argument("--only", choices=SECTIONS, help="run this section only; the others are kept from --out")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(selection.SEEDS), help="seeds of the selection section"
    )
    parser.add_argument("--synthetic-posts", type=int, default=600)
    parser.add_argument("--synthetic-seed", type=int, default=0)
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.model", *(argv if argv is not None else sys.argv[1:])])
    running = [args.only] if args.only else list(SECTIONS)
    data_dir = get_settings().shared_data_dir
    if {"twitter", "selection"} & set(running) and not all(
        (data_dir / path).is_file() for path in resolve_config(twitter.PRESET).named_data.train
    ):
        parser.error(f"{data_dir} lacks the {twitter.PRESET} preset's data (set POSTLENS_SHARED_DATA_DIR)")

    args.out.mkdir(parents=True, exist_ok=True)
    report_path, figures_path = args.out / "model.md", args.out / "model.json"
    old_report = report_path.read_text() if report_path.is_file() else ""
    figures = json.loads(figures_path.read_text()) if figures_path.is_file() else {}
    sections = {name: previous_section(old_report, heading) for name, heading in SECTIONS.items()}
    with tempfile.TemporaryDirectory(prefix="bench-model-") as scratch:
        work = args.work or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        if "synthetic" in running:
            variants = synthetic.run_synthetic(work, args.synthetic_posts, args.synthetic_seed)
            synthetic.plot(variants, args.out / "model_synthetic.png", args.out / "model_synthetic_ablations.png")
            sections["synthetic"] = synthetic.markdown(variants, command, args.synthetic_posts, args.synthetic_seed)
            figures["synthetic"] = {"command": command, "variants": [variant.to_json() for variant in variants]}
        if "twitter" in running:
            results = twitter.run_twitter(work)
            twitter.plot(results, args.out / "model_twitter.png")
            sections["twitter"] = twitter.markdown(results, command)
            figures["twitter"] = {"command": command, "variants": twitter.figures(results)}
        if "selection" in running:
            runs = selection.run_selection(work, args.seeds)
            sections["selection"] = selection.markdown(runs, command)
            figures["selection"] = {"command": command, "seeds": selection.figures(runs)}

    header = [
        "# Model benchmark",
        "",
        "CPU only (2 cores, shared); times are wall-clock and include validation passes.",
        "",
    ]
    report = "\n".join(header) + "\n" + "\n".join(section for section in sections.values() if section)
    report_path.write_text(report)
    figures_path.write_text(json.dumps(figures, indent=2) + "\n")
    print(report)
    print(f"report → {report_path}")


if __name__ == "__main__":
    main()
