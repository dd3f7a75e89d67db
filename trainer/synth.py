"""Synthetic multimodal NER posts whose images matter: ``python -m trainer.synth --out DIR --posts N --seed S``.

Images (RGB PNG, ``--image-size`` px, 64 by default) are a white canvas with coloured shapes. Each shape fills a
half-size block aligned to a quarter-size grid (at 64 px: a 32×32 block on the 16-px grid), blocks never overlap.
The shape says the type — circle PER, triangle LOC, square ORG, star MISC — and the colour says who: each
ambiguous name has its own colour; distractor colours belong to no name.

Subsets (tagged in each post's ``subsets``):

- ``ambiguous`` (40 %): an ambiguous name ("Jordan") in a neutral template drawn from the same pool whatever the
  type; every name is PER, LOC and ORG equally often (per split). Text alone is at chance; the one image shows the
  name's colour in its type's shape (the gold box), plus distractors.
- ``multi_image`` (20 %): the same, with 2–4 images; the name's shape is in one of them, the others are distractors.
- ``irrelevant_image`` (20 %): unambiguous names whose context settles the type ("Just landed in Lyon"), one image of
  distractors only; gold: no region.
- ``no_image`` (20 %): unambiguous names in context, no image.

Some posts carry a second, context-settled entity (never depicted) and some text-only-subset posts carry none.
Splits ``train``/``valid``/``test`` are 70/15/15; each is balanced on its own. Everything follows from ``--seed``.
"""

from __future__ import annotations

import argparse
import math
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw
from tqdm import tqdm

from postlens.schemas import Box, EntitySpan, Label
from trainer.data.examples import Example
from trainer.data.jsonl import example_from_label, write_jsonl

SHAPE_OF_TYPE: dict[str, str] = {"PER": "circle", "LOC": "triangle", "ORG": "square", "MISC": "star"}
AMBIGUOUS_TYPES = ("PER", "LOC", "ORG")
# Ambiguous names and their colours: ≥ 90 apart in RGB from each other, the distractors and the white background.
NAME_COLOURS: dict[str, tuple[int, int, int]] = {
    "Jordan": (230, 25, 75),  # red
    "Madison": (0, 60, 220),  # blue
    "Austin": (40, 170, 60),  # green
    "Phoenix": (245, 130, 48),  # orange
    "Chelsea": (145, 30, 180),  # purple
    "Dallas": (0, 200, 220),  # cyan
    "Savannah": (240, 50, 230),  # magenta
    "Florence": (128, 128, 0),  # olive
}
DISTRACTOR_COLOURS: tuple[tuple[int, int, int], ...] = ((0, 0, 128), (128, 128, 128), (110, 0, 0), (0, 0, 0))
BACKGROUND = (255, 255, 255)

SUBSET_SHARES: dict[str, float] = {"ambiguous": 0.4, "irrelevant_image": 0.2, "multi_image": 0.2, "no_image": 0.2}
SPLIT_SHARES: dict[str, float] = {"train": 0.7, "valid": 0.15, "test": 0.15}

# Used for every ambiguous name whatever its type, so the words around it carry no signal.
NEUTRAL_TEMPLATES = (
    "Can't stop thinking about {} today",
    "Everyone is talking about {} again",
    "{} is trending right now",
    "So much love for {} this week",
    "Just saw something amazing about {}",
    "Nothing beats {} on a Sunday",
    "Anyone else following {} lately?",
    "Big news about {} this morning",
    "{} never disappoints",
    "Here is my photo of {}",
)
CONTEXT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "PER": (
        "Interview with {} about the new album",
        "{} said in a statement that she is retiring",
        "Happy birthday to {}, the best coach ever",
        "{} scored twice in the second half",
        "Proud of my sister {} for graduating",
    ),
    "LOC": (
        "Just landed in {} for the weekend",
        "Visited the old town of {} today",
        "Flights to {} are cheap this month",
        "Heavy rain expected across {} tonight",
        "Moving to {} next spring",
    ),
    "ORG": (
        "The CEO of {} announced layoffs",
        "{} shares fell after the report",
        "Just applied for a job at {}",
        "{} released a new phone today",
        "Customer service at {} is terrible",
    ),
    "MISC": (
        "Watching the {} final tonight",
        "The {} trailer is finally out",
        "Who else is watching {} this weekend?",
        "Tickets for {} sold out in minutes",
        "Celebrating {} with family",
    ),
}
CONTEXT_NAMES: dict[str, tuple[str, ...]] = {
    "PER": ("Alice Moreau", "Kenji Watanabe", "Maria Lopez", "Tom Becker", "Priya Nair", "Grace Okafor"),
    "LOC": ("Lyon", "Nairobi", "Lake Como", "Reykjavik", "Kyoto", "New Mexico"),
    "ORG": ("Acme Corp", "Globex", "Initech", "Northwind Bank", "Umbrella Labs", "Hooli"),
    "MISC": ("World Cup", "Eurovision", "Minecraft", "Oscars", "Super Bowl", "Star Wars"),
}
NO_ENTITY_TEXTS = (
    "Lovely morning, coffee and rain",
    "Can't believe it's Monday already",
    "This view though",
    "Best day ever!!",
    "Need more sleep",
    "Throwback to last summer",
)
SUFFIXES = (" #tbt", " #photo", " 😂", " 🔥🔥", " 👍🏽")


@dataclass(frozen=True)
class Shape:
    kind: str  # circle | triangle | square | star
    colour: tuple[int, int, int]
    x: int  # top-left of its block, px
    y: int


@dataclass
class Draft:
    """A post under construction: text pieces with entity spans, images as shape lists, gold boxes."""

    text: str = ""
    entities: list[tuple[int, int, str]] = field(default_factory=list)
    images: list[list[Shape]] = field(default_factory=list)
    depicted: dict[int, tuple[int, Shape]] = field(default_factory=dict)  # entity position -> (image, shape)

    def add(self, template: str, name: str, entity_type: str) -> int:
        """Append a sentence with one entity; returns the entity's position in :attr:`entities`."""
        before, after = template.split("{}")
        if self.text:
            self.text += " "
        start = len(self.text) + len(before)
        self.text += before + name + after
        self.entities.append((start, start + len(name), entity_type))
        return len(self.entities) - 1

    def add_plain(self, sentence: str) -> None:
        self.text = f"{self.text} {sentence}" if self.text else sentence


def block_box(shape: Shape, size: int) -> tuple[float, float, float, float]:
    """The shape's block, normalized [x0, y0, x1, y1]."""
    block = size // 2
    return (shape.x / size, shape.y / size, (shape.x + block) / size, (shape.y + block) / size)


def draw_image(shapes: Sequence[Shape], size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    block = size // 2
    margin = max(1, block // 16)
    for shape in shapes:
        x0, y0 = shape.x + margin, shape.y + margin
        x1, y1 = shape.x + block - 1 - margin, shape.y + block - 1 - margin
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=shape.colour)
        elif shape.kind == "square":
            inset = block // 8  # a little smaller, so a square and a circle cover similar areas
            draw.rectangle((x0 + inset, y0 + inset, x1 - inset, y1 - inset), fill=shape.colour)
        elif shape.kind == "triangle":
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=shape.colour)
        elif shape.kind == "star":
            cx, cy, outer = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
            points = [
                (cx + radius * math.sin(math.pi * k / 5), cy - radius * math.cos(math.pi * k / 5))
                for k, radius in ((k, outer if k % 2 == 0 else outer * 0.5) for k in range(10))
            ]
            draw.polygon(points, fill=shape.colour)
        else:
            raise ValueError(f"unknown shape {shape.kind!r}")
    return image


class Generator:
    """Draws posts for one dataset; all randomness comes from one seeded ``random.Random``."""

    def __init__(self, seed: int, image_size: int) -> None:
        if image_size < 16 or image_size % 4:
            raise ValueError(f"--image-size must be a multiple of 4 and at least 16, got {image_size}")
        self.rng = random.Random(seed)
        self.size = image_size

    # -- images ------------------------------------------------------------------------------------------
    def place(self, kinds_colours: Sequence[tuple[str, tuple[int, int, int]]]) -> list[Shape]:
        """Non-overlapping grid-aligned blocks for the given (kind, colour) pairs (at most 4)."""
        step, block = self.size // 4, self.size // 2
        cells = [(x, y) for x in (0, step, 2 * step) for y in (0, step, 2 * step)]
        while True:
            self.rng.shuffle(cells)
            chosen: list[tuple[int, int]] = []
            for x, y in cells:
                if all(abs(x - cx) >= block or abs(y - cy) >= block for cx, cy in chosen):
                    chosen.append((x, y))
                if len(chosen) == len(kinds_colours):
                    placed = zip(kinds_colours, chosen, strict=True)
                    return [Shape(kind, colour, x, y) for (kind, colour), (x, y) in placed]

    def distractors(self, count: int) -> list[tuple[str, tuple[int, int, int]]]:
        kinds = list(SHAPE_OF_TYPE.values())
        return [(self.rng.choice(kinds), self.rng.choice(DISTRACTOR_COLOURS)) for _ in range(count)]

    # -- text ----------------------------------------------------------------------------------------------
    def context_entity(self, draft: Draft) -> None:
        entity_type = self.rng.choice(list(CONTEXT_TEMPLATES))
        draft.add(
            self.rng.choice(CONTEXT_TEMPLATES[entity_type]), self.rng.choice(CONTEXT_NAMES[entity_type]), entity_type
        )

    def context_post(self, draft: Draft) -> None:
        """0 (15 %), 1 (60 %) or 2 (25 %) context-settled entities."""
        roll = self.rng.random()
        if roll < 0.15:
            draft.add_plain(self.rng.choice(NO_ENTITY_TEXTS))
            return
        self.context_entity(draft)
        if roll >= 0.75:
            self.context_entity(draft)

    def ambiguous_post(self, draft: Draft, name: str, entity_type: str, n_images: int) -> None:
        """The name in a neutral sentence (plus, 30 %, a context entity before or after), depicted in one image."""
        extra_first = self.rng.random() < 0.15
        extra_last = not extra_first and self.rng.random() < 0.18
        if extra_first:
            self.context_entity(draft)
        position = draft.add(self.rng.choice(NEUTRAL_TEMPLATES), name, entity_type)
        if extra_last:
            self.context_entity(draft)
        target = self.rng.randrange(n_images)
        for index in range(n_images):
            if index == target:
                shapes = self.place(
                    [(SHAPE_OF_TYPE[entity_type], NAME_COLOURS[name]), *self.distractors(self.rng.randint(0, 2))]
                )
                draft.depicted[position] = (index, shapes[0])
            else:
                shapes = self.place(self.distractors(self.rng.randint(1, 3)))
            draft.images.append(shapes)

    def decorate(self, draft: Draft) -> None:
        """Social noise around the text (retweet prefix, hashtags, emoji, links) that shifts no entity inside it."""
        if self.rng.random() < 0.15:
            prefix = f"RT @user{self.rng.randrange(1000)}: "
            draft.text = prefix + draft.text
            draft.entities = [(s + len(prefix), e + len(prefix), t) for s, e, t in draft.entities]
        roll = self.rng.random()
        if roll < 0.2:
            draft.text += self.rng.choice(SUFFIXES)
        elif roll < 0.3:
            draft.text += " http://t.co/" + "".join(self.rng.choices(string.ascii_letters + string.digits, k=8))

    # -- splits --------------------------------------------------------------------------------------------
    def split(self, split: str, count: int, out: Path, progress: tqdm) -> list[Example]:
        subsets = [name for name, share in SUBSET_SHARES.items() for _ in range(round(count * share))]
        subsets = (subsets + ["ambiguous"] * count)[:count]
        self.rng.shuffle(subsets)
        decks: dict[str, list[str]] = {name: [] for name in NAME_COLOURS}
        examples = []
        for index, subset in enumerate(subsets):
            post_id = f"{split}-{index:05d}"
            draft = Draft()
            if subset in {"ambiguous", "multi_image"}:
                name = self.rng.choice(list(NAME_COLOURS))
                if not decks[name]:  # each name cycles through all types before repeating one
                    decks[name] = self.rng.sample(AMBIGUOUS_TYPES, len(AMBIGUOUS_TYPES))
                n_images = 1 if subset == "ambiguous" else self.rng.randint(2, 4)
                self.ambiguous_post(draft, name, decks[name].pop(), n_images)
            else:
                self.context_post(draft)
                if subset == "irrelevant_image":
                    draft.images.append(self.place(self.distractors(self.rng.randint(1, 3))))
            self.decorate(draft)
            examples.append(self.to_example(post_id, subset, draft, out))
            progress.update()
        return examples

    def to_example(self, post_id: str, subset: str, draft: Draft, out: Path) -> Example:
        images = []
        for index, shapes in enumerate(draft.images):
            relative = f"images/{post_id}-{index}.png"
            draw_image(shapes, self.size).save(out / relative, format="PNG")
            images.append(relative)
        label = Label(
            id=post_id,
            text=draft.text,
            images=images,
            entities=[EntitySpan(start=start, end=end, type=t) for start, end, t in draft.entities],
            boxes=[
                Box(entity=position, image_index=image_index, box=block_box(shape, self.size))
                for position, (image_index, shape) in draft.depicted.items()
            ],
            subsets=[subset],
        )
        # strict: a span off the shared tokenizer's word boundaries is a generator bug, not data to repair
        example, _ = example_from_label(label, out, strict=True)
        return example


def sentences() -> list[str]:
    """Every sentence the generator writes, undecorated, and its decorations: the corpus the tiny text encoders'
    tokenizers are trained on."""
    neutral = [template.format(name) for template in NEUTRAL_TEMPLATES for name in NAME_COLOURS]
    context = [
        template.format(name)
        for entity_type, templates in CONTEXT_TEMPLATES.items()
        for template in templates
        for name in CONTEXT_NAMES[entity_type]
    ]
    return [
        *neutral,
        *context,
        *NO_ENTITY_TEXTS,
        *(suffix.strip() for suffix in SUFFIXES),
        "RT @user0:",
        "http://t.co/",
    ]


def generate(out: Path, posts: int, seed: int, image_size: int = 64) -> dict[str, int]:
    """Write ``train/valid/test.jsonl`` and ``images/`` under ``out``; returns posts per split."""
    if posts < 3:
        raise ValueError(f"--posts must be at least 3 (one per split), got {posts}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {"train": round(posts * SPLIT_SHARES["train"]), "valid": round(posts * SPLIT_SHARES["valid"])}
    counts["test"] = posts - counts["train"] - counts["valid"]
    generator = Generator(seed, image_size)
    with tqdm(total=posts, desc="synthetic posts", unit="post", disable=posts < 2000) as progress:
        for split, count in counts.items():
            write_jsonl(generator.split(split, count, out, progress), out / f"{split}.jsonl")
    return counts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trainer.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (JSONL splits + images/)")
    parser.add_argument("--posts", type=int, required=True, help="total posts over all splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=64, help="image side in px (multiple of 4)")
    args = parser.parse_args(argv)
    try:
        counts = generate(args.out, args.posts, args.seed, args.image_size)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {', '.join(f'{n} {split}' for split, n in counts.items())} posts to {args.out}")


if __name__ == "__main__":
    main()
