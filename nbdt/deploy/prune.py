"""Structured channel pruning of an NBDT's network with Torch-Pruning's dependency graph.

The classifier head keeps all its rows and columns (the channels that feed it are not pruned), so
the class vectors, and the hierarchy induced from them, stay as they were. A pruned network no
longer matches ``timm.create_model(arch)``: its checkpoint stores, under ``"pruned"``, the changed
module attributes as plain data, which ``nbdt.networks`` applies to a fresh timm model before its
state dict loads: still ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from nbdt._messages import one_line
from nbdt.choices import check_choice
from nbdt.deploy.runtime import import_deploy
from nbdt.model import NBDT
from nbdt.networks import architecture_changes


def _magnitude(tp: Any) -> Any:
    return tp.importance.GroupMagnitudeImportance(p=2)


def _taylor(tp: Any) -> Any:
    return tp.importance.GroupTaylorImportance()


# importance name -> Torch-Pruning criterion (taylor needs labelled examples for its gradients)
IMPORTANCES: dict[str, Callable[[Any], Any]] = {"magnitude": _magnitude, "taylor": _taylor}


def prune(
    model: NBDT,
    ratio: float,
    *,
    importance: str = "magnitude",
    global_pruning: bool = False,
    examples: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    round_to: int | None = None,
) -> NBDT:
    """A copy of ``model`` with a share ``ratio`` (0 < ratio < 1) of the network's prunable
    channels removed (per layer, or ranked across layers with ``global_pruning``).

    ``importance`` is a key of :data:`IMPORTANCES`; "taylor" reads the gradients of the NBDT's
    soft-inference NLL on ``examples`` (batches of preprocessed images and labels). The head is
    kept whole. Save it and fine-tune the file with :func:`finetune` (the trainer's parts). An
    architecture Torch-Pruning cannot handle, and a ratio that removes nothing (``round_to``
    rounds each layer's share; :func:`removed_share` says what was achieved), are one
    ``ValueError`` naming it.
    """
    tp = import_deploy("torch_pruning")
    if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1 (exclusive), got {ratio!r}")
    check_choice("importance", importance, IMPORTANCES)
    if importance == "taylor" and examples is None:
        raise ValueError("importance 'taylor' needs examples: batches of (images, labels)")
    arch = model.arch or type(model.model).__name__
    pruned = copy.deepcopy(model).cpu().float().eval()
    network = pruned.model
    head = network.get_classifier() if hasattr(network, "get_classifier") else None
    if not isinstance(head, nn.Module) or not any(p.dim() >= 2 for p in head.parameters()):
        raise ValueError(f"cannot prune {arch}: its classifier head was not found")
    size = tuple(int(v) for v in model.data_config["input_size"])
    example = torch.zeros(2, *size)
    try:
        keep = _modules_feeding(tp, network, head, example)
        pruner = tp.pruner.MetaPruner(
            network,
            example,
            importance=IMPORTANCES[importance](tp),
            pruning_ratio=float(ratio),
            global_pruning=global_pruning,
            ignored_layers=[head, *keep],
            round_to=round_to,
        )
        if importance == "taylor":
            _accumulate_gradients(pruned, examples)
        pruner.step()
        network.zero_grad(set_to_none=True)
        with torch.no_grad():
            out = network(example)
    except (ValueError, TypeError) as e:
        raise ValueError(f"torch-pruning cannot prune {arch}: {one_line(e)[:200]}") from None
    except Exception as e:  # a half-supported layer fails anywhere in tracing or the forward
        raise ValueError(
            f"torch-pruning cannot prune {arch} ({type(e).__name__}: {one_line(e)[:200]})"
        ) from None
    if tuple(out.shape) != (2, model.hierarchy.num_classes):
        raise ValueError(f"torch-pruning cannot prune {arch}: the pruned network's output changed")
    if removed_share(model, pruned) == 0:
        raise ValueError(
            f"ratio {ratio}: removes no channel of {arch}"
            f"{f' once rounded to multiples of {round_to}' if round_to else ''}: choose"
            " another ratio or lower round_to"
        )
    pruned.pruned = architecture_changes(network, pruned.arch, pruned.model_kwargs)
    return pruned


def removed_share(model: NBDT, pruned: NBDT) -> float:
    """The share of ``model``'s network parameters that ``pruned`` no longer has: what a
    pruning achieved, which rounding and dependencies make differ from the ratio asked."""
    before = sum(p.numel() for p in model.model.parameters())
    after = sum(p.numel() for p in pruned.model.parameters())
    return 1 - after / before


def _modules_feeding(tp: Any, network: nn.Module, head: nn.Module, example: torch.Tensor) -> list:
    """The layers whose output channels are the head's input: pruning them would shorten the
    class vectors, so they are left whole."""
    graph = tp.DependencyGraph().build_dependency(network, example_inputs=example)
    weight = next(p for p in head.parameters() if p.dim() >= 2)
    prune_in = (
        tp.prune_linear_in_channels if isinstance(head, nn.Linear) else tp.prune_conv_in_channels
    )
    group = graph.get_pruning_group(head, prune_in, idxs=list(range(weight.shape[1])))
    return [
        dep.target.module
        for dep, _ in group
        if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Module)
    ]


def _accumulate_gradients(
    model: NBDT, examples: Iterable[tuple[torch.Tensor, torch.Tensor]] | None
) -> None:
    """Gradients of soft inference's NLL, summed over ``examples``, for Taylor importance."""
    rules, network = model.rules, model.model
    network.zero_grad(set_to_none=True)
    seen = 0
    for images, labels in examples or ():
        log_probs = rules.soft(network(images.float()))
        torch.nn.functional.nll_loss(log_probs, labels.long()).backward()
        seen += 1
    if not seen:
        raise ValueError("importance 'taylor': examples held no batch")
