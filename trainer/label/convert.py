"""A Label Studio annotation → a label (docs/contracts.md#label), or a refusal with its reason.

Spans become ``entities`` (character offsets on the post's text), boxes linked to a span (a relation from the span to
the box) become ``boxes`` of that entity on the image they are drawn on. A box with no link belongs to the only span
of its type, when there is exactly one; otherwise the annotation is refused, as is one whose span does not match the
text, whose boxes are not of the images, or that the label schema refuses (e.g. overlapping spans).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from postlens.failures import LabelFailure
from postlens.schemas import Box, EntitySpan, Label, validation_summary
from trainer.label.config import BOXES, SPANS

TOOL = "label-studio"


class Refused(Exception):
    """An annotation that cannot become a label; ``kind`` is the machine-readable reason."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Annotation:
    """One annotation with what it needs from its task and project."""

    raw: dict[str, Any]  # the annotation as Label Studio gives it
    task: dict[str, Any]  # its task: id, data (text, images, post_id, model_version)
    project_id: int
    annotator: str | None  # the annotator's email

    @property
    def id(self) -> int:
        return int(self.raw["id"])

    @property
    def updated_at(self) -> str:
        return str(self.raw.get("updated_at") or self.raw.get("created_at") or "")

    @property
    def post_id(self) -> str | None:
        return (self.task.get("data") or {}).get("post_id")

    @property
    def skipped(self) -> bool:
        """Skipped or cancelled by the annotator: not a label."""
        return bool(self.raw.get("was_cancelled"))


def label_id(project_id: int, annotation_id: int) -> str:
    return f"{TOOL}/project-{project_id}/annotation-{annotation_id}"


def _span_offsets(value: dict[str, Any], text: str) -> tuple[int, int]:
    """A span's character offsets, checked against the text it quotes (Label Studio counts code points, as Python
    does: checked in the browser, tests/trainer/label/test_labeling_page.py)."""
    start, end = int(value["start"]), int(value["end"])
    quoted = value.get("text")
    if quoted is not None and text[start:end] != quoted:
        raise Refused(
            LabelFailure.SPAN_MISMATCH, f"span [{start}, {end}) is {text[start:end]!r} in the text, not {quoted!r}"
        )
    return start, end


def to_label(annotation: Annotation) -> Label:
    data = annotation.task.get("data") or {}
    text, images, post_id = data.get("text"), list(data.get("images") or []), annotation.post_id
    if not isinstance(text, str) or not post_id:
        raise Refused(
            LabelFailure.NOT_A_POSTLENS_TASK, f"task {annotation.task.get('id')} has no PostLens post (text, post_id)"
        )
    results = annotation.raw.get("result") or []
    spans: dict[str, tuple[int, int, str]] = {}
    boxes: dict[str, tuple[int, tuple[float, float, float, float], str]] = {}
    links: dict[str, str] = {}
    for result in results:
        kind, value = result.get("type"), result.get("value") or {}
        try:
            if kind == "labels" and result.get("from_name") == SPANS:
                (name,) = value["labels"]
                spans[result["id"]] = (*_span_offsets(value, text), name)
            elif kind == "rectanglelabels" and result.get("from_name") == BOXES:
                (name,) = value["rectanglelabels"]
                image = int(result.get("item_index") or 0)
                if image >= len(images):
                    raise Refused(
                        LabelFailure.BOX_IMAGE, f"box {result['id']} is on image {image}; the task has {len(images)}"
                    )
                x, y, w, h = (float(value[key]) / 100 for key in ("x", "y", "width", "height"))
                if value.get("rotation"):
                    raise Refused(LabelFailure.BOX_ROTATED, f"box {result['id']} is rotated; boxes must be upright")
                boxes[result["id"]] = (image, (max(x, 0.0), max(y, 0.0), min(x + w, 1.0), min(y + h, 1.0)), name)
            elif kind == "relation":
                links[result["to_id"]] = result["from_id"]
        except (KeyError, ValueError, TypeError) as error:
            raise Refused(LabelFailure.RESULT, f"result {result.get('id')} of type {kind}: {error!r}") from error
    order = sorted(spans, key=lambda key: spans[key][:2])
    index = {key: i for i, key in enumerate(order)}
    label_boxes = []
    for box_id, (image, box, name) in boxes.items():
        span = links.get(box_id)
        if span is None:
            same_type = [key for key in order if spans[key][2] == name]
            if len(same_type) != 1:
                raise Refused(
                    LabelFailure.BOX_UNLINKED, f"box {box_id} ({name}) is linked to no entity ({len(same_type)} {name})"
                )
            span = same_type[0]
        if span not in index:
            raise Refused(LabelFailure.BOX_LINK, f"box {box_id} is linked to {span}, which is not an entity span")
        label_boxes.append(Box(entity=index[span], image_index=image, box=box))
    try:
        return Label(
            id=post_id,
            label_id=label_id(annotation.project_id, annotation.id),
            source=f"annotator:{annotation.annotator or 'unknown'}@{TOOL}",
            text=text,
            images=images,
            entities=[EntitySpan(start=spans[k][0], end=spans[k][1], type=spans[k][2]) for k in order],
            boxes=label_boxes,
            meta={
                "tool": TOOL,
                "project_id": annotation.project_id,
                "task_id": annotation.task.get("id"),
                "annotation_id": annotation.id,
                "updated_at": annotation.updated_at,
                "model_version": data.get("model_version"),
            },
        )
    except ValidationError as error:
        raise Refused(LabelFailure.SCHEMA, validation_summary(error, "label")) from error
