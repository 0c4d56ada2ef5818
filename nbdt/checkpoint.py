"""nbdt's model files on disk: read any torch file safely, write one atomically, check the format.

Every file a user hands nbdt (a model, a training checkpoint, weights to cluster) is read here,
with ``torch.load(weights_only=True)``: a file that would run pickled code is refused by name.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdt._io import atomic_path
from nbdt._messages import one_line

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "nbdt-model"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("arch", "model_kwargs", "state_dict", "hierarchy", "mode", "node_score")


def read_torch_file(
    path: str | os.PathLike[str],
    map_location: str | torch.device | None = "cpu",
    kind: str = "an nbdt model file",
) -> Any:
    """``torch.load(path, weights_only=True)``; every failure is one error naming the file.

    ``kind`` says what the file should have been ("a readable torch checkpoint", ...).
    """
    import torch  # here, not at import: the ONNX runtime checks data configs without torch

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not {kind}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a regular file (a pipe, socket or device), not {kind}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:  # the weights-only unpickler names what it refused
        # Match the kind, not torch's wording (which changes): a GLOBAL is pickled code.
        code = re.search(r"GLOBAL ((?:\w+\.)*\w+)\s", str(e))  # a whole name ("at." is none)
        if code:
            raise ValueError(
                f"{path}: refused: loading it would run pickled Python code ({code.group(1)});"
                " nbdt model files hold only tensors and plain data"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        reason = detail.group(1).strip() if detail else "it holds more than tensors and plain data"
        raise ValueError(f"{path}: not {kind} ({reason})") from None
    except Exception as e:  # arbitrary bytes make the unpickler raise almost any error type
        raise ValueError(f"{path}: not {kind} ({one_line(e)})") from None


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read an nbdt model file as a dict with ``torch.load(weights_only=True)``.

    A file that would need pickled Python code to load, or that is not an nbdt model file,
    raises one ``ValueError`` naming it.
    """
    data = read_torch_file(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not an nbdt model file (no 'format': '{FORMAT_NAME}')")
    return data


def check_format(checkpoint: Mapping[str, Any], source: str) -> None:
    """Refuse a dict that is not an nbdt model of this format version (``source`` names it)."""
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if checkpoint.get("format") != FORMAT_NAME or missing:
        raise ValueError(f"{source}: not an nbdt model file (missing {missing or ['format']})")
    if checkpoint.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{source}: nbdt model format version {checkpoint.get('version')!r};"
            f" this nbdt reads version {FORMAT_VERSION}"
        )
    if checkpoint.get("data_config") is not None:
        check_data_config(checkpoint["data_config"], source)


# Pixels a side: the largest timm models take 1024; at 8192 one 28-pixel image took 10.2 GB.
MAX_INPUT_SIDE = 2048
# What timm's evaluation transform (and nbdt.deploy.runtime's) can resize and crop with.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
CROP_MODES = ("center", "squash")


def check_data_config(config: Any, source: str) -> None:
    """Refuse a preprocessing config no image could be read with (``source`` names the file):
    ``input_size`` (C, H, W) of positive integers up to :data:`MAX_INPUT_SIDE`, ``mean`` and
    ``std`` of C finite numbers (std > 0), ``crop_pct`` in (0, 1], ``interpolation`` one of
    :data:`INTERPOLATIONS`, ``crop_mode`` one of :data:`CROP_MODES`."""

    def bad(key: str, why: str) -> ValueError:
        value = config.get(key) if isinstance(config, Mapping) else config
        return ValueError(f"{source}: data_config {key} {value!r}: {why}")

    if not isinstance(config, Mapping):
        raise bad("", "not a mapping")
    size = config.get("input_size")
    if not (
        isinstance(size, (list, tuple))
        and len(size) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)
    ):
        raise bad("input_size", "must be (channels, height, width), positive integers")
    if max(size[1:]) > MAX_INPUT_SIDE:
        raise bad("input_size", f"images larger than {MAX_INPUT_SIDE} pixels a side")
    for key in ("mean", "std"):
        values = config.get(key)
        if values is None:
            continue
        if not (
            isinstance(values, (list, tuple))
            and len(values) == size[0]
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
        ):
            raise bad(key, f"must be {size[0]} finite numbers, one per channel")
        if key == "std" and min(values) <= 0:
            raise bad(key, "must be > 0")
    crop = config.get("crop_pct")
    if crop is not None and not (isinstance(crop, (int, float)) and 0 < crop <= 1):
        raise bad("crop_pct", "must be a number in (0, 1] (the share of the image kept)")
    for key, names in (("interpolation", INTERPOLATIONS), ("crop_mode", CROP_MODES)):
        if config.get(key) is not None and config.get(key) not in names:
            raise bad(key, f"must be one of {', '.join(names)}")


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half-written."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)
    return Path(path)
