"""The Label Studio labeling interface: entity spans on the text, boxes on each image, a link from entity to box.

The names below are the ``from_name``/``to_name`` of every prediction push sends and every result pull reads.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from postlens.schemas import ENTITY_TYPES

SPANS, TEXT = "entity", "text"  # <Labels name=SPANS toName=TEXT>
BOXES, IMAGES = "region", "images"  # <RectangleLabels name=BOXES toName=IMAGES>, one Image tag over the image list
SHOWN_IN = "shown in"  # the relation from an entity span to the box it is shown in


def labeling_config(types: tuple[str, ...] = ENTITY_TYPES) -> str:
    labels = "".join(f"<Label value={quoteattr(name)}/>" for name in types)
    return (
        "<View>"
        f'<Labels name="{SPANS}" toName="{TEXT}">{labels}</Labels>'
        f'<Text name="{TEXT}" value="$text" granularity="symbol"/>'
        f'<RectangleLabels name="{BOXES}" toName="{IMAGES}">{labels}</RectangleLabels>'
        f'<Image name="{IMAGES}" valueList="$images"/>'
        f"<Relations><Relation value={quoteattr(SHOWN_IN)}/></Relations>"
        "</View>"
    )
