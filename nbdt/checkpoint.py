"""nbdt's model files on disk: read any torch file safely, write one atomically, check the format.

Every file a user hands nbdt (a model, a training checkpoint, weights to cluster) is read here,
with ``torch.load(weights_only=True)``: a file that would run pickled code is refused by name.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from nbdt._io import atomic_path
from nbdt._messages import one_line

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
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not {kind}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:  # the weights-only unpickler names what it refused
        code = re.search(r"Unsupported global: GLOBAL ([\w.]+\.\w+)", str(e))
        if code:
            raise ValueError(
                f"{path}: refused: loading it would run pickled Python code ({code.group(1)});"
                " nbdt model files hold only tensors and plain data"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        reason = detail.group(1).strip() if detail else one_line(e)
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


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half-written."""
    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)
    return Path(path)
