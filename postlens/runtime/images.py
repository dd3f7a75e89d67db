"""Turning an image into the model's pixels — one function, so training and serving see identical inputs.

Torch-free on purpose: the stream worker and the served model import it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageOps


def to_model_pixels(image: Image.Image, size: int) -> np.ndarray:
    """Upright RGB ``size``×``size`` uint8 HWC pixels.

    The image is stretched, not letterboxed, so a box normalized to the model input is the same box normalized to
    the original image.
    """
    upright = ImageOps.exif_transpose(image)
    rgb = upright.convert("RGB")
    resized = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def empty_images(count: int, size: int) -> np.ndarray:
    """A zero batch of ``count`` images, for the padded slots that the image mask switches off."""
    return np.zeros((count, size, size, 3), dtype=np.uint8)


def load_images(paths: Sequence[str], size: int, max_images: int) -> np.ndarray:
    """Local image files → uint8 [k, S, S, 3] (the first ``max_images``)."""
    pixels = []
    for path in paths[:max_images]:
        with Image.open(path) as image:
            pixels.append(to_model_pixels(image, size))
    return np.stack(pixels) if pixels else empty_images(0, size)


def stack_images(per_post: Sequence[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Posts' uint8 [k_i, S, S, 3] images → padded [B, N, S, S, 3] and the mask [B, N] (N = the largest k_i)."""
    slots = max((len(images) for images in per_post), default=0)
    batch = np.zeros((len(per_post), slots, size, size, 3), dtype=np.uint8)
    mask = np.zeros((len(per_post), slots), dtype=bool)
    for row, images in enumerate(per_post):
        batch[row, : len(images)] = images
        mask[row, : len(images)] = True
    return batch, mask
