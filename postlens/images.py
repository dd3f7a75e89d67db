"""Turning an image into the model's pixels — one function, so training and serving see identical inputs.

Torch-free on purpose: the stream worker imports it and must not need torch.
"""

from __future__ import annotations

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
