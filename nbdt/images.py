"""Pillow images of any bit depth brought to 8 bits, one rule for the model and the HTML pages.

16- and 32-bit integer images are read as 16-bit data (0..65535, as PNG and TIFF store them)
and float images as 0..255; Pillow's own ``convert`` would clip them instead of scaling.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_8bit(image: Image.Image) -> Image.Image:
    """An ``L`` image for integer (``I``, ``I;16``, ...) and float (``F``) modes, else as is."""
    if image.mode.startswith("I"):
        data = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(data), 0, 255).astype(np.uint8))
    if image.mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8))
    return image
