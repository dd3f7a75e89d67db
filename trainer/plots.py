"""Every chart PostLens draws, written as PNG files: training curves, evaluation plots (type confusion, reliability,
grounding), retraining's base-vs-candidate comparison and the benchmarks' figures.

matplotlib is imported when a chart is drawn, not with this module: it takes about a second to load, and most
callers of the modules that import this one never draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from postlens.schemas import PostPrediction
from trainer.data.examples import Example
from trainer.metrics import Calibration, Confusion, EntityScores

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120
BAR_HEADROOM = 1.2  # y axis top for scores in [0, 1]: room for the legend above the bars


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    _pyplot().close(figure)


def _score_bars(
    axes: Axes, groups: Sequence[str], series: Mapping[str, Sequence[float]], colors: Sequence[str] | None = None
) -> None:
    """Scores in [0, 1]: one bar per series in each group, side by side, with the legend above them."""
    width = 0.8 / len(series)
    for index, (name, values) in enumerate(series.items()):
        offset = (index - (len(series) - 1) / 2) * width
        color = colors[index] if colors else None
        axes.bar(np.arange(len(groups)) + offset, values, width, label=name, color=color)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylim(0, BAR_HEADROOM)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.legend(loc="upper center", ncols=len(series), frameon=False, fontsize=8)


# --------------------------------------------------------------------------------------------------------------
# Training and evaluation
# --------------------------------------------------------------------------------------------------------------


def plot_training_curve(history: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Train loss and selection scores (dev slice, or valid) per epoch (``trainer.train``'s history records)."""
    plt = _pyplot()
    epochs = [record["epoch"] for record in history]
    figure, loss_axes = plt.subplots(figsize=(6, 4))
    loss_axes.plot(epochs, [record["loss"] for record in history], "o-", color="tab:blue", label="train loss")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("train loss", color="tab:blue")
    score_axes = loss_axes.twinx()
    score_axes.plot(
        epochs, [record["selection_f1"] for record in history], "s-", color="tab:green", label="selection entity F1"
    )
    if any(record["selection_grounding"] is not None for record in history):
        grounding = [record["selection_grounding"] for record in history]
        score_axes.plot(epochs, grounding, "^-", color="tab:red", label="selection grounding acc.")
    score_axes.set_ylim(0, 1)
    score_axes.set_ylabel("selection score (dev slice, or valid)")
    handles = loss_axes.get_legend_handles_labels()[0] + score_axes.get_legend_handles_labels()[0]
    score_axes.legend(handles=handles, loc="center right")
    loss_axes.set_title(f"Training: {title}")
    _save(figure, path)


def plot_confusion(confusion: Confusion, path: Path) -> None:
    plt = _pyplot()
    counts = np.asarray(confusion.counts)
    labels = [label if label != "O" else "none" for label in confusion.labels]
    figure, axes = plt.subplots(figsize=(5.5, 4.5))
    axes.imshow(counts, cmap="Blues")
    for (row, column), value in np.ndenumerate(counts):
        colour = "white" if value > counts.max() / 2 else "black"
        axes.text(column, row, str(value), ha="center", va="center", color=colour, fontsize=9)
    axes.set_xticks(range(len(labels)), labels)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted type (none = span not predicted)")
    axes.set_ylabel("gold type (none = spurious span)")
    axes.set_title("Entity type confusion (same span)")
    _save(figure, path)


def plot_reliability(reliability: Calibration, path: Path) -> None:
    plt = _pyplot()
    bins = [b for b in reliability.bins if b.count]
    width = reliability.bins[0].high - reliability.bins[0].low
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar(
        [b.low for b in bins],
        [b.accuracy for b in bins],
        width=width,
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy",
    )
    top.plot([b.confidence for b in bins], [b.accuracy for b in bins], "o", color="red", label="mean confidence")
    top.set_ylabel("share exactly correct")
    top.set_title(f"Entity confidence reliability (ECE {reliability.ece:.3f})")
    top.legend(loc="upper left")
    bottom.bar([b.low for b in bins], [b.count for b in bins], width=width, align="edge", edgecolor="black")
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("entities")
    bottom.set_xlim(0, 1)
    _save(figure, path)


def plot_grounding(
    examples: Sequence[Example], predictions: Sequence[PostPrediction], path: Path, limit: int = 8
) -> bool:
    """A grid of images with gold boxes (green) and predicted regions (red); False when there is nothing to show."""
    from matplotlib.patches import Rectangle
    from PIL import Image

    panels = []  # (example, image index, gold boxes, predicted regions)
    for example, prediction in zip(examples, predictions, strict=True):
        gold = [(example.entities[b.entity].type, b.image_index, b.box) for b in example.boxes]
        regions = [(e.type, r.image_index, r.box) for e in prediction.entities for r in e.regions]
        shown = [image for _, image, _ in gold + regions]
        if not shown or not Path(example.images[shown[0]]).is_file():
            continue
        panels.append((example, shown[0], gold, regions))
        if len(panels) == limit:
            break
    if not panels:
        return False
    plt = _pyplot()
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.6 * rows), squeeze=False)
    for axes in grid.flat:
        axes.axis("off")
    # The grid may have spare cells (left blank) after the last panel.
    for axes, (example, image_index, gold, regions) in zip(grid.flat, panels, strict=False):
        with Image.open(example.images[image_index]) as image:
            axes.imshow(image.convert("RGB"), extent=(0, 1, 1, 0))
        # Gold drawn wide with its label on top, predictions thin with the label below, so both show when equal.
        for boxes, colour, width, label_at_top in ((gold, "green", 5, True), (regions, "red", 2, False)):
            for entity_type, index, (x0, y0, x1, y1) in boxes:
                if index == image_index:
                    axes.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=width))
                    y, align = (y0, "top") if label_at_top else (y1, "bottom")
                    axes.text(x0, y, entity_type, color="white", backgroundcolor=colour, fontsize=7, va=align)
        # The default font has no emoji or CJK glyphs; leave those out of the caption rather than draw boxes.
        caption = "".join(char for char in example.text if ord(char) < 0x2000)
        title = caption if len(caption) <= 60 else caption[:57] + "..."
        axes.set_title(f"{title}\n(image {image_index})", fontsize=7, wrap=True)
    figure.suptitle("Grounding: gold green, predicted red")
    _save(figure, path)
    return True


# --------------------------------------------------------------------------------------------------------------
# Comparisons: retraining and the benchmarks
# --------------------------------------------------------------------------------------------------------------


def plot_entity_f1(
    panels: Mapping[str, Mapping[str, EntityScores]],
    path: Path,
    types: Sequence[str] | None = None,
    colors: Sequence[str] | None = None,
) -> None:
    """Entity F1 overall and per type, one panel per title, the scored models side by side in each panel.
    ``types``: the per-type bars, in order (default: every type any model was scored on)."""
    if types is None:
        types = sorted({t for models in panels.values() for scores in models.values() for t in scores.per_type})
    groups = ["all", *types]
    figure, grid = _pyplot().subplots(1, len(panels), figsize=(1 + 5 * len(panels), 3.8), sharey=True, squeeze=False)
    for axes, (title, models) in zip(grid.flat, panels.items(), strict=True):
        series = {
            name: [scores.f1, *(scores.per_type[t].f1 if t in scores.per_type else 0.0 for t in types)]
            for name, scores in models.items()
        }
        _score_bars(axes, groups, series, colors)
        axes.set_title(title)
    grid[0, 0].set_ylabel("entity F1")
    _save(figure, path)


def plot_scores(groups: Sequence[str], series: Mapping[str, Sequence[float]], path: Path, title: str) -> None:
    """Scores in [0, 1] by group (e.g. metric), one bar per series (e.g. model) in each group."""
    plot_score_panels(groups, {title: series}, path)


def plot_score_panels(groups: Sequence[str], panels: Mapping[str, Mapping[str, Sequence[float]]], path: Path) -> None:
    """:func:`plot_scores` for several titled panels, stacked, each with its own series (e.g. a model and its
    ablations)."""
    width = max(8, 1.2 * len(groups) * max(1, max(len(series) for series in panels.values()) / 4))
    figure, grid = _pyplot().subplots(len(panels), 1, figsize=(width, 3.8 * len(panels)), squeeze=False)
    for axes, (title, series) in zip(grid.flat, panels.items(), strict=True):
        _score_bars(axes, groups, series)
        axes.set_title(title)
    _save(figure, path)


class LoadFigures(NamedTuple):
    throughput: float  # posts/s
    p50_ms: float  # latency per post
    p99_ms: float


def plot_serving(
    configs: Mapping[str, Mapping[str, LoadFigures]], in_process: Mapping[str, Mapping[int, float]], path: Path
) -> None:
    """Triton throughput and latency per serving configuration (label → load mode → figures), and in-process
    throughput per runtime (runtime → batch size → posts/s)."""
    figure, (throughput_axes, latency_axes, runtime_axes) = _pyplot().subplots(1, 3, figsize=(19, 6))
    positions = np.arange(len(configs))
    modes = list(dict.fromkeys(mode for loads_by_mode in configs.values() for mode in loads_by_mode))
    height = 0.8 / len(modes)
    for index, mode in enumerate(modes):
        offset, color = (index - (len(modes) - 1) / 2) * height, f"C{index}"
        loads = [loads_by_mode[mode] for loads_by_mode in configs.values()]
        throughput_axes.barh(
            positions + offset, [load.throughput for load in loads], height=height, color=color, label=mode
        )
        latency_axes.barh(positions + offset, [load.p99_ms for load in loads], height=height, color=color, alpha=0.4)
        latency_axes.barh(
            positions + offset,
            [load.p50_ms for load in loads],
            height=height,
            color=color,
            label=f"{mode}: p50 (p99 light)",
        )
    labels = [label.replace(", ", "\n", 2) for label in configs]
    for axes, title, unit in (
        (throughput_axes, "Triton entry model: throughput", "posts/s"),
        (latency_axes, "latency per post", "ms"),
    ):
        axes.set_yticks(positions, labels if axes is throughput_axes else [""] * len(configs), fontsize=8)
        axes.invert_yaxis()
        axes.set_xlabel(unit)
        axes.set_title(title)
        axes.legend(fontsize=8)
    batches = sorted({batch for by_batch in in_process.values() for batch in by_batch})
    width = 0.8 / max(len(in_process), 1)
    for index, (runtime, by_batch) in enumerate(in_process.items()):
        offset = (index - (len(in_process) - 1) / 2) * width
        runtime_axes.bar(np.arange(len(batches)) + offset, [by_batch[b] for b in batches], width=width, label=runtime)
    runtime_axes.set_xticks(np.arange(len(batches)), [f"batch {b}" for b in batches])
    runtime_axes.set_ylabel("posts/s (network only)")
    runtime_axes.set_title("in-process, network alone")
    runtime_axes.legend()
    _save(figure, path)
