"""The network's classifier head, asked the timm way (``get_classifier()``): finding it, its
rows, the pooled features it reads, the input batch it expects, and a copy of a network with
other rows.

Head-only interventions (``with_hierarchy``, refits, new classes), the feature cache, node
examples and saliency all read the head through these functions, so a network with an unusual
head needs one change here. Models are typed as modules: :mod:`nbdt.model` sits above this one.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from nbdt.hierarchy import Hierarchy
from nbdt.tree import Tree


def find_head(net: nn.Module) -> nn.Module:
    """The network's classifier, asked the timm way (``get_classifier()``); for a network
    without that contract (or whose classifier was reset to ``nn.Identity``), its last
    ``nn.Linear``. The one place that finds a head: everything else asks here."""
    get_classifier = getattr(net, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        head = next((m for m in reversed(list(net.modules())) if isinstance(m, nn.Linear)), None)
    if head is None:
        raise ValueError(
            f"{type(net).__name__} has no classifier: neither get_classifier() nor an nn.Linear"
        )
    return head


def classifier_head(net: nn.Module) -> nn.Linear | nn.Conv2d:
    """The network's classifier (:func:`find_head`), checked to be a Linear or a 1x1 Conv2d:
    the heads whose rows head-only interventions can read and replace."""
    head = find_head(net)
    is_conv = isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1)
    if not (isinstance(head, nn.Linear) or is_conv):
        raise ValueError(
            f"{type(net).__name__}'s classifier is {type(head).__name__}: head-only interventions"
            " need a Linear or 1x1 Conv2d head (get_classifier())"
        )
    return head


def head_classes(net: nn.Module) -> int | None:
    """The number of classes the network predicts (its ``num_classes``, else its head's
    outputs); None when it says neither."""
    num_classes = getattr(net, "num_classes", None)
    if isinstance(num_classes, int):
        return num_classes
    try:
        head = find_head(net)
    except ValueError:
        return None
    return getattr(head, "out_features", getattr(head, "out_channels", None))


def head_rows(net: nn.Module) -> tuple[Tensor, Tensor | None]:
    """The head's (C, D) weight rows and (C,) bias, detached."""
    head = classifier_head(net)
    bias = head.bias.detach() if head.bias is not None else None
    return head.weight.detach().flatten(1), bias


def apply_head(head: nn.Module, features: Tensor) -> Tensor:
    """Logits of pooled (N, D) features through a Linear or 1x1 Conv2d head."""
    if isinstance(head, nn.Conv2d):
        return head(features[:, :, None, None]).flatten(1)
    return head(features)


class FeatureHead(nn.Module):
    """A network's classifier as a module of pooled (N, D) features: what head-only training
    runs (and wraps in DistributedDataParallel) instead of the whole network."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.head = classifier_head(net)

    def forward(self, features: Tensor) -> Tensor:
        return apply_head(self.head, features)


def with_head(net: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A copy of ``net`` that shares every module and tensor except the classifier, which is a
    new one of these rows. Only the modules on the way to the head are copied (shallowly)."""
    head = classifier_head(net)
    path = next(name for name, module in net.named_modules() if module is head).split(".")
    rows, features = weight.shape
    if isinstance(head, nn.Conv2d):
        new: nn.Module = nn.Conv2d(features, rows, 1, bias=bias is not None)
        weight = weight[:, :, None, None]
    else:
        new = nn.Linear(features, rows, bias=bias is not None)
    new = new.to(device=head.weight.device, dtype=head.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(head.training)

    def shallow(module: nn.Module) -> nn.Module:
        twin = copy.copy(module)
        twin._modules = dict(module._modules)
        twin._parameters = dict(module._parameters)
        twin._buffers = dict(module._buffers)
        return twin

    root = parent = shallow(net)
    for name in path[:-1]:
        child = shallow(parent._modules[name])
        parent._modules[name] = child
        parent = child
    parent._modules[path[-1]] = new
    if isinstance(getattr(root, "num_classes", None), int):
        root.num_classes = rows
    return root


def rewrap(model: nn.Module, net: nn.Module, hierarchy: Hierarchy) -> nn.Module:
    """An NBDT like ``model`` (mode, node score, architecture, data config) over ``net``."""
    return type(model)(
        net,
        hierarchy,
        model.mode,
        model.node_score,
        arch=model.arch,
        model_kwargs={**model.model_kwargs, "num_classes": hierarchy.num_classes},
        data_config=model.data_config,
    )


def with_hierarchy(model: nn.Module, hierarchy: Hierarchy) -> nn.Module:
    """An NBDT over the same backbone (shared weights) with ``hierarchy``'s decision rules.

    It gets its own copy of the head, one row per class of ``hierarchy`` matched by leaf id, so
    refitting it leaves ``model`` as it was; a class the tree lost (``remove_class``) loses its
    row. A class the head has no row for is refused: add it with :func:`add_class`.
    """
    if not isinstance(hierarchy, Tree):
        raise TypeError(f"hierarchy must be a nbdt.Hierarchy, got {type(hierarchy).__name__}")
    row = {leaf: i for i, leaf in enumerate(model.hierarchy.class_ids)}
    unknown = [c for c in hierarchy.class_ids if c not in row]
    if unknown:
        raise ValueError(
            f"with_hierarchy: the model's head has no row for classes"
            f" {[hierarchy[c].label for c in unknown[:5]]} (matched by leaf id): add a class"
            " with nbdt.intervene.add_class"
        )
    index = torch.tensor([row[c] for c in hierarchy.class_ids])
    weight, bias = head_rows(model.model)
    index = index.to(weight.device)
    net = with_head(model.model, weight[index], None if bias is None else bias[index])
    return rewrap(model, net, hierarchy)


def network_device(net: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where and in which dtype the network computes (its first parameter's; CPU float32
    for a network without parameters)."""
    parameter = next(net.parameters(), None)
    if parameter is None:
        return torch.device("cpu"), torch.float32
    return parameter.device, parameter.dtype


def model_input(model: nn.Module, images: Tensor) -> Tensor:
    """A batch as the model's network takes it, on its device and in its dtype: uint8 dataset
    images go through the model's batch transform (its data config); float input is taken as
    preprocessed."""
    from nbdt.data import BatchTransform

    device, dtype = network_device(model.model)
    if images.dtype == torch.uint8:
        return BatchTransform(model.data_config).to(device)(images.to(device)).to(dtype)
    if not images.is_floating_point():
        raise ValueError(
            f"images must be uint8 images or preprocessed float input, got {images.dtype}"
        )
    return images.to(device, dtype)


def logits_and_features(net: nn.Module, batch: Tensor) -> tuple[Tensor, Tensor]:
    """(logits (B, C), pooled features (B, D)) of a network from one forward: the features are
    the input of its classifier (:func:`find_head`), timm's ``forward_head(pre_logits=True)``.
    The one pooled-features function: node examples, evidence and the feature cache read it."""
    head = find_head(net)
    captured: list[Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = net(batch)
    finally:
        hook.remove()
    return logits, captured[-1].flatten(1)
