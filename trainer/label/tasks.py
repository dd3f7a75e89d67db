"""A chosen post → a Label Studio task: its text and images, and the model's entities and grounded boxes as one
prediction (with each span's confidence, each box's score and the model version) for the annotator to correct."""

from __future__ import annotations

from typing import Any

from trainer.label.config import BOXES, IMAGES, SHOWN_IN, SPANS, TEXT
from trainer.label.select import Candidate


def task(candidate: Candidate, max_images: int) -> dict[str, Any]:
    post = candidate.post
    images = list(post.get("images") or [])[:max_images]
    result: list[dict[str, Any]] = []
    for index, entity in enumerate(candidate.entities):
        span_id = f"e{index}"
        result.append(
            {
                "id": span_id,
                "from_name": SPANS,
                "to_name": TEXT,
                "type": "labels",
                "value": {"start": entity.start, "end": entity.end, "text": entity.text, "labels": [entity.type]},
                "score": entity.confidence,
            }
        )
        for number, region in enumerate(r for r in entity.regions if r.image_index < len(images)):
            box_id = f"e{index}b{number}"
            x0, y0, x1, y1 = region.box
            result.append(
                {
                    "id": box_id,
                    "from_name": BOXES,
                    "to_name": IMAGES,
                    "type": "rectanglelabels",
                    "item_index": region.image_index,
                    "value": {
                        "x": 100 * x0, "y": 100 * y0, "width": 100 * (x1 - x0), "height": 100 * (y1 - y0),
                        "rotation": 0, "rectanglelabels": [entity.type],
                    },
                    "score": region.score,
                }
            )  # fmt: skip
            result.append(
                {"type": "relation", "from_id": span_id, "to_id": box_id, "direction": "right", "labels": [SHOWN_IN]}
            )
    confidences = [e.confidence for e in candidate.entities]
    return {
        "data": {
            "text": post["text"],
            "images": images,
            "post_id": candidate.id,
            "model_version": candidate.model_version,
            "uncertainty": round(candidate.uncertainty, 4),
        },
        "predictions": [
            {
                "model_version": candidate.model_version or "unknown",
                "score": min(confidences) if confidences else 0.0,
                "result": result,
            }
        ],
    }
