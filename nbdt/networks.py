"""timm networks as nbdt uses them: created with optional weights, rebuilt from a model file,
asked for their head and input channels, their data config fitted to the channels they read.

The CLIs, the model and the trainer all make and inspect networks through these functions, so
an unreadable weights file or a damaged model file reads the same everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from nbdt._messages import one_line
from nbdt.checkpoint import check_format


def create_model(
    arch: str,
    *,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    option: str = "--arch",
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model(arch, **kwargs)`` with timm's weights (``pretrained``: hub or cache)
    or a local ``pretrained_file``; weights that cannot be loaded are one ``ValueError`` naming
    ``option`` (the argument the user gave) and the source."""
    import timm

    weights: dict[str, Any] = {}
    if pretrained_file:
        overlay = {"file": str(Path(pretrained_file).resolve())}
        weights = {"pretrained": True, "pretrained_cfg_overlay": overlay}
    elif pretrained:
        weights = {"pretrained": True}
    try:
        return timm.create_model(arch, **kwargs, **weights)
    except Exception as e:  # timm, the hub and torch.load raise many kinds for bad weights
        if not weights:
            raise
        where = pretrained_file or "timm's hub (--pretrained needs internet or a cache)"
        raise ValueError(
            f"{option} {arch}: cannot load weights from {where}: {one_line(e)}"
        ) from None


@contextlib.contextmanager
def rebuild_errors(source: str) -> Iterator[None]:
    """Errors while rebuilding a model from a file become one ``ValueError`` naming ``source``."""
    try:
        yield
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        # load_state_dict lists the mismatched keys on later lines: keep them, on one line.
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        raise ValueError(f"{source}: cannot rebuild the model ({reason})") from None


def network_from_checkpoint(checkpoint: Mapping[str, Any], source: str) -> nn.Module:
    """The timm network of an nbdt model dict, its weights loaded (``source`` names it)."""
    import timm

    check_format(checkpoint, source)
    with rebuild_errors(source):
        model = timm.create_model(
            checkpoint["arch"], pretrained=False, **dict(checkpoint["model_kwargs"])
        )
        model.load_state_dict(checkpoint["state_dict"])
    return model


def head_classes(model: nn.Module) -> int | None:
    """The number of classes the model's head predicts, asked the timm way."""
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int):
        return num_classes
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    return getattr(head, "out_features", None)


def input_channels(model: nn.Module) -> int:
    """Input channels of the first convolution (timm's configs always say 3)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def data_config(model: nn.Module, channels: int) -> dict[str, Any]:
    """timm's data config of the model, fitted to ``channels`` input channels: the input size
    says so, and a mean and std of another length become their average per channel."""
    from timm.data import resolve_model_data_config

    config = dict(resolve_model_data_config(model))
    config["input_size"] = (channels, *config["input_size"][1:])
    for key in ("mean", "std"):
        values = tuple(config[key])
        if len(values) != channels:
            config[key] = (sum(values) / len(values),) * channels
    return config
