"""Annotation → label: what an annotator drew becomes the label they meant, or a refusal saying why."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.label.config import BOXES, IMAGES, SPANS, TEXT
from trainer.label.convert import Annotation, Refused, to_label

TEXT_OF_POST = "Messi 🐐 plays in Miami"
TASK = {"id": 7, "data": {"text": TEXT_OF_POST, "images": ["http://127.0.0.1/a.png"], "post_id": "p1",
                          "model_version": "postlens/3"}}  # fmt: skip


def span(id_: str, start: int, end: int, type_: str, text: str | None = None) -> dict[str, Any]:
    value = {"start": start, "end": end, "labels": [type_], "text": TEXT_OF_POST[start:end] if text is None else text}
    return {"id": id_, "type": "labels", "from_name": SPANS, "to_name": TEXT, "value": value}


def box(id_: str, type_: str, image: int = 0) -> dict[str, Any]:
    value = {"x": 10, "y": 20, "width": 30, "height": 40, "rotation": 0, "rectanglelabels": [type_]}
    return {"id": id_, "type": "rectanglelabels", "from_name": BOXES, "to_name": IMAGES, "item_index": image,
            "value": value}  # fmt: skip


def annotation(*results: dict[str, Any], **fields: Any) -> Annotation:
    raw = {"id": 42, "updated_at": "2026-12-07T10:00:00Z", "result": list(results), **fields}
    return Annotation(raw, TASK, project_id=3, annotator="alice@example.org")


def test_spans_and_linked_boxes_become_the_label_with_its_lineage() -> None:
    miami = TEXT_OF_POST.index("Miami")
    label = to_label(
        annotation(
            span("m", miami, miami + 5, "LOC"),
            span("p", 0, 5, "PER"),
            box("b", "PER"),
            {"type": "relation", "from_id": "p", "to_id": "b", "direction": "right"},
        )
    )
    assert label.id == "p1" and label.label_id == "label-studio/project-3/annotation-42"
    assert label.source == "annotator:alice@example.org@label-studio"
    assert [(e.start, e.end, e.type) for e in label.entities] == [(0, 5, "PER"), (miami, miami + 5, "LOC")]
    [linked] = label.boxes
    assert linked.entity == 0 and linked.image_index == 0
    assert linked.box == pytest.approx((0.1, 0.2, 0.4, 0.6))
    assert label.meta["task_id"] == 7 and label.meta["model_version"] == "postlens/3"


def test_an_unlinked_box_goes_to_the_only_entity_of_its_type() -> None:
    label = to_label(annotation(span("p", 0, 5, "PER"), box("b", "PER")))
    assert label.boxes[0].entity == 0


@pytest.mark.parametrize(
    ("results", "kind"),
    [
        ((span("p", 0, 5, "PER"), span("q", 2, 8, "ORG")), "schema"),  # overlapping spans
        ((span("p", 0, 5, "PER", text="Ronaldo"),), "span_mismatch"),
        ((span("p", 0, 5, "PER"), box("b", "LOC")), "box_unlinked"),
        ((span("p", 0, 5, "PER"), box("b", "PER", image=3)), "box_image"),
        ((span("p", 0, 5, "WEAPON"),), "schema"),
    ],
)
def test_what_cannot_be_a_label_is_refused_with_its_reason(results: tuple[dict[str, Any], ...], kind: str) -> None:
    with pytest.raises(Refused) as refusal:
        to_label(annotation(*results))
    assert refusal.value.kind == kind


def test_a_task_not_made_by_push_is_refused() -> None:
    foreign = Annotation({"id": 1, "result": []}, {"id": 2, "data": {"text": "x"}}, 3, None)
    with pytest.raises(Refused, match="no PostLens post"):
        to_label(foreign)


def test_skipped_annotations_say_so() -> None:
    assert annotation(was_cancelled=True).skipped and not annotation().skipped


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 200) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
RESULT = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["a", "b", "c"]),
        "type": st.sampled_from(["labels", "rectanglelabels", "relation", "choices"]),
        "from_name": st.sampled_from([SPANS, BOXES, "other"]),
    },
    optional={
        "value": st.dictionaries(
            st.sampled_from(["start", "end", "text", "labels", "x", "y", "width", "height", "rotation",
                             "rectanglelabels"]),
            JSON,
        ),
        "item_index": JSON,
        "from_id": JSON,
        "to_id": JSON,
    },
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(RESULT, max_size=6))
def test_any_result_list_gives_a_label_or_a_refusal(results: list[dict[str, Any]]) -> None:
    try:
        label = to_label(annotation(*results))
    except Refused:
        return
    assert label.text == TEXT_OF_POST


def test_two_annotators_of_one_post_give_two_labels_of_that_post() -> None:
    first = to_label(annotation(span("p", 0, 5, "PER")))
    bobs = {"id": 43, "updated_at": "2026-12-07T11:00:00Z", "result": [span("p", 0, 5, "ORG")]}
    second = to_label(Annotation(bobs, TASK, project_id=3, annotator="bob@x"))
    assert first.id == second.id == "p1"
    assert first.label_id != second.label_id and second.source == "annotator:bob@x@label-studio"
