"""Image files read and converted one way for the model, the datasets and the HTML pages.

Any failure to read a file is one ``ValueError`` naming it. 16- and 32-bit integer images are
read as 16-bit data (0..65535, as PNG and TIFF store them) and float images as 0..255; Pillow's
own ``convert`` would clip them instead of scaling.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from nbdt._messages import one_line

# Errors Pillow's decoders raise on damaged files, besides OSError ("image file is truncated").
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


def to_8bit(image: Image.Image) -> Image.Image:
    """An ``L`` image for integer (``I``, ``I;16``, ...) and float (``F``) modes, else as is."""
    if image.mode.startswith("I"):
        data = np.asarray(image, dtype=np.float64) / 257.0
        return Image.fromarray(np.clip(np.rint(data), 0, 255).astype(np.uint8))
    if image.mode == "F":
        data = np.asarray(image)
        if not np.isfinite(data).all():
            raise ValueError("float image whose pixel values are not finite (NaN or infinity)")
        return Image.fromarray(np.clip(data, 0, 255).astype(np.uint8))
    return image


def load_image(
    path: str | os.PathLike[str], channels: int | None = None, *, draft: int | None = None
) -> Image.Image:
    """Open and fully decode an image file; any failure is one ``ValueError`` naming the file.

    Pillow's decompression-bomb warning counts as an error here: an image that large is refused
    rather than decoded. With ``channels`` (1 or 3) the image is converted with
    :func:`to_model_mode`. ``draft`` lets a JPEG decode at a reduced size of at least that many
    pixels a side (for thumbnails).
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not an image")
    if path.exists() and not path.is_file():  # a FIFO or device would block or never end
        raise ValueError(f"{path}: not a regular file (a pipe, socket or device), not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if draft is not None:
                    image.draft(None, (draft, draft))
                image.load()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except PermissionError:
        raise ValueError(f"{path}: permission denied") from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file (Pillow cannot identify it)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except _DECODE_ERRORS as e:
        raise ValueError(f"{path}: cannot decode image ({one_line(e)})") from None
    if channels is None:
        return image
    try:
        return to_model_mode(image, channels)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def to_model_mode(image: Image.Image, channels: int = 3) -> Image.Image:
    """Convert any Pillow mode to RGB (``channels=3``) or greyscale ``L`` (``channels=1``).

    Transparent images are composited onto white (dropping alpha would expose whatever colour
    the transparent pixels hold); high bit depths are scaled by :func:`nbdt.images.to_8bit`.
    """
    if channels not in (1, 3):
        raise ValueError(f"images can feed models with 1 or 3 input channels, not {channels}")
    image = to_8bit(image)
    if "A" in image.mode or "a" in image.mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
    target = "RGB" if channels == 3 else "L"
    return image if image.mode == target else image.convert(target)
