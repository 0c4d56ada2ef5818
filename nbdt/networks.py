"""timm networks as nbdt uses them: created with optional weights, rebuilt from a model file,
asked for their input channels, their data config fitted to the channels they read.

The CLIs, the model and the trainer all make and inspect networks through these functions, so
an unreadable weights file or a damaged model file reads the same everywhere.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from nbdt._messages import one_line
from nbdt.checkpoint import check_format, read_torch_file


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

    if pretrained_file:
        model = timm.create_model(arch, **kwargs)
        load_weights_file(model, pretrained_file, f"{arch} ({option})")
        return model
    weights: dict[str, Any] = {"pretrained": True} if pretrained else {}
    try:
        return timm.create_model(arch, **kwargs, **weights)
    except Exception as e:  # timm, the hub and torch.load raise many kinds for bad weights
        if not weights:
            raise
        where = "timm's hub (--pretrained needs internet or a cache)"
        raise ValueError(
            f"{option} {arch}: cannot load weights from {where}: {one_line(e)}"
        ) from None


def load_weights_file(model: nn.Module, path: str | os.PathLike[str], what: str) -> None:
    """Load a state dict file into ``model``; every key outside the classifier must fit.

    Missing, unexpected or reshaped keys of the body are one ``ValueError`` naming the file and a
    few keys (random weights trained at a fine-tuning rate are the silent alternative). The
    classifier's keys may differ, a new head for other classes: they are left as created, and one
    line on stderr says so. ``what`` names the model ("resnet18 (--arch)").
    """
    state = read_torch_file(path, kind="a weights file (a state dict)")
    if isinstance(state, Mapping):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path}: not a weights file (a state dict of tensors)")
    own = model.state_dict()
    head = tuple(f"{name}." for name in _classifier_names(model))

    def in_head(key: str) -> bool:
        return key.startswith(head)

    missing = [k for k in own if k not in state and not in_head(k)]
    unexpected = [k for k in state if k not in own and not in_head(k)]
    reshaped = [k for k in own if k in state and not in_head(k) and state[k].shape != own[k].shape]
    problems = [
        f"{len(keys)} {kind} keys ({', '.join(map(repr, keys[:3]))}{', ...' * (len(keys) > 3)})"
        for kind, keys in (("missing", missing), ("unexpected", unexpected), ("reshaped", reshaped))
        if keys
    ]
    if problems:
        raise ValueError(
            f"{path}: does not fit {what}: {'; '.join(problems)}: weights of another architecture?"
        )
    skipped = [k for k in own if in_head(k) and (k not in state or state[k].shape != own[k].shape)]
    body = {k: v for k, v in state.items() if k in own and k not in skipped}
    model.load_state_dict(body, strict=False)
    if skipped:
        print(
            f"nbdt: {path}: new classifier, not loaded from the file: {', '.join(skipped)}",
            file=sys.stderr,
        )


def _classifier_names(model: nn.Module) -> tuple[str, ...]:
    """Module names of the classifier, from timm's pretrained config ("fc", "head.fc", ...)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


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
    """The timm network of an nbdt model dict, its weights loaded (``source`` names it); a
    pruned network (``"pruned"``: its changed module attributes) is reshaped before loading, and
    the convolutions pad as the file's ``"padding"`` says (zeros when absent)."""
    import timm

    check_format(checkpoint, source)
    with rebuild_errors(source):
        model = timm.create_model(
            checkpoint["arch"], pretrained=False, **dict(checkpoint["model_kwargs"])
        )
        if checkpoint.get("pruned"):
            restore_pruned(model, checkpoint["pruned"], checkpoint["state_dict"])
        model.load_state_dict(checkpoint["state_dict"])
        return set_padding(model, checkpoint.get("padding", "zeros"))


# Attribute types a module's architecture is made of (what a pruned checkpoint records).
_ARCH_ATTRS = (int, float, bool, tuple, list, str, type(None))


def architecture_changes(
    network: nn.Module, arch: str, model_kwargs: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """Per module, the plain attributes (channel counts, groups, ...) that differ from a fresh
    ``timm.create_model(arch, **model_kwargs)``: what a checkpoint needs to rebuild a pruned
    network (the parameter shapes come from its state dict)."""
    import timm

    with torch.device("meta"):
        fresh = dict(timm.create_model(arch, **dict(model_kwargs)).named_modules())
    changes: dict[str, dict[str, Any]] = {}
    for name, module in network.named_modules():
        reference = fresh.get(name)
        if reference is None or type(reference) is not type(module):
            raise ValueError(f"save: module {name!r} is not in timm's {arch}")
        differ = {
            key: value
            for key, value in vars(module).items()
            if not key.startswith("_")
            and key != "training"
            and isinstance(value, _ARCH_ATTRS)
            and vars(reference).get(key) != value
        }
        if differ:
            changes[name] = differ
    return changes


def restore_pruned(
    network: nn.Module,
    changes: Mapping[str, Mapping[str, Any]],
    state_dict: Mapping[str, torch.Tensor],
) -> None:
    """Reshape a fresh timm ``network`` in place to a pruned checkpoint's architecture: set the
    recorded attributes, and give every parameter and buffer the state dict's shape."""
    modules = dict(network.named_modules())
    for name, attributes in changes.items():
        if name not in modules:
            raise ValueError(f"pruned module {name!r} is not in this architecture")
        for key, value in attributes.items():
            setattr(modules[name], key, tuple(value) if isinstance(value, list) else value)
    for key, tensor in state_dict.items():
        module_name, _, attr = key.rpartition(".")
        module = modules.get(module_name)
        if module is None:
            continue
        if attr in module._parameters and module._parameters[attr] is not None:
            if module._parameters[attr].shape != tensor.shape:
                module._parameters[attr] = nn.Parameter(torch.empty_like(tensor, device="cpu"))
        elif attr in module._buffers and module._buffers[attr] is not None:
            if module._buffers[attr].shape != tensor.shape:
                module._buffers[attr] = torch.empty_like(tensor, device="cpu")


# How convolutions pad their input. "zeros" is timm's; "replicate" repeats the border pixels, so a
# uniform background looks the same at the image edge as inside it: a network trained so has no
# edge detector to learn there (docs/names.md: what it does to the heatmaps).
PADDINGS = ("zeros", "replicate")


def set_padding(network: nn.Module, padding: str) -> nn.Module:
    """Make every padded ``nn.Conv2d`` of ``network`` pad with ``padding`` (one of
    :data:`PADDINGS`), in place; returns the network."""
    if padding not in PADDINGS:
        raise ValueError(f"padding {padding!r}: must be one of {', '.join(PADDINGS)}")
    for conv in _padded_convs(network):
        conv.padding_mode = padding
    return network


def padding_of(network: nn.Module) -> str:
    """How the network's padded convolutions pad: one of :data:`PADDINGS` (zeros when none is
    padded); a mix is a ``ValueError`` (a network nbdt did not make)."""
    modes = {conv.padding_mode for conv in _padded_convs(network)} or {"zeros"}
    if len(modes) > 1 or not modes <= set(PADDINGS):
        raise ValueError(f"the network's convolutions pad in several ways: {sorted(modes)}")
    return modes.pop()


def _padded_convs(network: nn.Module) -> Iterator[nn.Conv2d]:
    for module in network.modules():
        if isinstance(module, nn.Conv2d) and (
            module.padding == "same" or (isinstance(module.padding, tuple) and any(module.padding))
        ):
            yield module


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


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run the block with ``module`` in eval mode, then give every submodule back its own
    train/eval flag (a model half in train mode stays so)."""
    training = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, flag in training.items():
            m.training = flag
