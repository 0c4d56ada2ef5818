"""Acting on an NBDT without retraining its backbone: new tree, refit head, corrections, new class.

The backbone's pooled features are computed once (:mod:`nbdt.features`); everything after that
trains only the classifier head on them, with the tree-supervision loss, so an intervention costs
a few linear-layer epochs instead of a network's.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nbdt.choices import check_choice
from nbdt.classes import is_wordnet_id
from nbdt.distributed import Process
from nbdt.evaluation.accumulator import Batch, Setting
from nbdt.evaluation.metrics import Top1
from nbdt.features import Features, pooled_features
from nbdt.heads import (
    FeatureHead,
    apply_head,
    classifier_head,
    head_rows,
    network_device,
    rewrap,
    with_head,
    with_hierarchy,
)
from nbdt.hierarchy import Hierarchy, Node
from nbdt.loss import LOSSES
from nbdt.model import NBDT
from nbdt.networks import eval_mode
from nbdt.training.loop import Epoch, EpochLoop, StepContext


# ------------------------------------------------------------------------------ replay
def known_classes(
    dataset: Any, hierarchy: Hierarchy, source: str = "the model", holdout: Sequence[str] = ()
) -> Any:
    """``dataset`` as the model sees it, by the rule every command matches a dataset to a model
    (:func:`nbdt.evaluation.evaluate.class_lookup`, by class name or WordNet id): without the
    ``holdout`` classes (those its training run held out), and refused unless the other
    classes are the model's, in its order. Errors name ``source`` (the model file)."""
    from nbdt.evaluation.evaluate import class_lookup

    try:
        lookup, _, _ = class_lookup(hierarchy, dataset, list(holdout))
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if lookup is None:
        return dataset
    if lookup[lookup >= 0].tolist() != list(range(hierarchy.num_classes)):
        raise ValueError(
            f"{source}: the dataset's classes are the model's in another order; the model needs"
            " its own dataset's class order"
        )
    return dataset.without_classes(holdout)


# ---------------------------------------------------------------------------- refitting
def evaluate_features(
    model: NBDT, features: Tensor, targets: Tensor, batch_size: int = 4096
) -> dict[str, float]:
    """Top-1 (%) of the network, NBDT-soft and NBDT-hard on cached features."""
    head = classifier_head(model.model)
    device, dtype = network_device(model.model)
    setting = Setting(model.rules)
    top1 = Top1(setting)
    with eval_mode(model.model), torch.inference_mode():
        for i in range(0, len(targets), batch_size):
            logits = apply_head(head, features[i : i + batch_size].to(device, dtype))
            top1.update(Batch(setting, logits, targets[i : i + batch_size].to(device)))
    return {**top1.scalars(), "images": len(targets)}


class _SourceBatches:
    """One epoch's steps of a head refit: each step's batch of every source, concatenated (the
    sources' draws ``orders``, (steps, size) per source, rows ``steps``)."""

    def __init__(self, sources: Sequence[tuple[Tensor, Tensor, float]], orders: list[Tensor]):
        self.sources, self.orders = sources, orders

    def __len__(self) -> int:
        return len(self.orders[0])

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        for step in range(len(self)):
            picks = [
                (x[o[step]], y[o[step]])
                for (x, y, _), o in zip(self.sources, self.orders, strict=True)
            ]
            yield torch.cat([x for x, _ in picks]), torch.cat([y for _, y in picks])


class _SourceWeighted(nn.Module):
    """A step's loss over the sources' batches concatenated: each source's mean loss times its
    weight, summed."""

    def __init__(self, criterion: nn.Module, sizes: list[int], weights: list[float]):
        super().__init__()
        self.criterion, self.sizes, self.weights = criterion, sizes, weights

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        parts = zip(logits.split(self.sizes), targets.split(self.sizes), self.weights, strict=True)
        return sum(weight * self.criterion(z, y) for z, y, weight in parts)


def _train_head(
    model: NBDT,
    criterion: nn.Module,
    sources: Sequence[tuple[Tensor, Tensor, float]],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    weight_decay: float,
    seed: int,
) -> dict[str, Any]:
    """AdamW with a cosine schedule on the head alone, through the one epoch loop
    (:class:`~nbdt.training.loop.EpochLoop`, without validation or a run folder). An epoch is
    one pass over the first source; every step also draws a batch of each other source, their
    losses weighted."""
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    head = FeatureHead(model.model)
    device, dtype = network_device(model.model)
    per_epoch = math.ceil(len(sources[0][1]) / batch_size)
    steps = epochs * per_epoch
    generator = torch.Generator().manual_seed(seed)
    orders, sizes = [], []
    for _, targets, _ in sources:
        size = min(batch_size, len(targets))
        rounds = math.ceil(steps * size / len(targets))
        order = torch.cat(
            [torch.randperm(len(targets), generator=generator) for _ in range(rounds)]
        )
        orders.append(order[: steps * size].view(steps, size))
        sizes.append(size)
    weighted = _SourceWeighted(criterion.to(device), sizes, [w for _, _, w in sources])
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    loop = EpochLoop(
        head, optimizer, schedule, StepContext(Process(device)), epochs=epochs,
        transform=lambda features, generator=None: features.to(dtype), name="head epoch",
    )  # fmt: skip

    def epoch(index: int) -> Epoch:
        rows = slice(index * per_epoch, (index + 1) * per_epoch)
        return Epoch("head", _SourceBatches(sources, [o[rows] for o in orders]), weighted)

    was_training = head.head.training
    start = time.perf_counter()
    try:
        history = loop.run(epoch)
    finally:
        head.head.train(was_training)
    return {
        "epochs": epochs,
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "loss_first_epoch": history[0]["train_loss"],
        "loss_last_epoch": history[-1]["train_loss"],
    }


def _criterion(model: NBDT, hierarchy: Hierarchy, loss: str, options: dict[str, Any]) -> nn.Module:
    check_choice("loss", loss, LOSSES)
    options.setdefault("node_score", model.node_score)
    return LOSSES[loss](hierarchy, criterion=nn.CrossEntropyLoss(), **options)


def refit_head(
    model: NBDT,
    features: Tensor,
    targets: Tensor,
    hierarchy: Hierarchy | None = None,
    *,
    loss: str = "soft",
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 512,
    weight_decay: float = 0.0,
    seed: int = 0,
    **loss_options: Any,
) -> dict[str, Any]:
    """Train only ``model.model.get_classifier()``, in place, on cached features, with the
    tree-supervision loss of ``hierarchy`` (default the model's) plus cross-entropy.

    ``loss`` is "soft" or "hard"; ``loss_options`` go to the loss (``tree_weight``, ...).
    The backbone is not run, so none of its weights or statistics change. Returns the loss of
    the first and last epochs, steps and seconds.
    """
    hierarchy = hierarchy or model.hierarchy
    _check_features(model, features, targets, hierarchy.num_classes)
    criterion = _criterion(model, hierarchy, loss, dict(loss_options))
    return _train_head(
        model,
        criterion,
        [(features, targets, 1.0)],
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        seed=seed,
    )


def _check_features(model: NBDT, features: Tensor, targets: Tensor, classes: int) -> None:
    rows, width = head_rows(model.model)[0].shape
    if rows != classes:
        raise ValueError(f"the head has {rows} classes, the hierarchy {classes}")
    if features.dim() != 2 or features.shape[1] != width:
        raise ValueError(
            f"features must be (N, {width}) for this head, got {tuple(features.shape)}"
        )
    if targets.shape != features.shape[:1] or not len(targets):
        raise ValueError(
            f"targets must be (N,) for {len(features)} features, got {tuple(targets.shape)}"
        )
    if targets.min() < 0 or targets.max() >= classes:
        raise ValueError(f"targets must be class indices in [0, {classes})")


# ---------------------------------------------------------------------------- corrections
def class_indices(hierarchy: Hierarchy, labels: Sequence[int | str]) -> Tensor:
    """Class indices of labels given as indices, class names, leaf ids or WordNet ids."""
    from nbdt.edits import find_node

    index = {leaf: i for i, leaf in enumerate(hierarchy.class_ids)}
    out = []
    for label in labels:
        if isinstance(label, int | np.integer) and not isinstance(label, bool):
            if not 0 <= label < hierarchy.num_classes:
                raise ValueError(f"class index {label} outside [0, {hierarchy.num_classes})")
            out.append(int(label))
        else:
            try:
                out.append(index[find_node(hierarchy, str(label), "leaf").id])
            except ValueError as e:
                raise ValueError(f"unknown class {label!r}: {e}") from None
    return torch.tensor(out, dtype=torch.long)


def correct(
    model: NBDT,
    corrections_images: Any,
    corrections_labels: Sequence[int | str],
    replay_features: Tensor,
    replay_targets: Tensor,
    *,
    holdout: float = 0.25,
    correction_weight: float | None = None,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 512,
    seed: int = 0,
    test: Features | None = None,
    **loss_options: Any,
) -> tuple[NBDT, dict[str, Any]]:
    """A model whose head is refit so the corrected images get their right class.

    Every step trains on a batch of the replay (cached training features, which keeps the other
    classes where they were) and a batch of the corrections, weighted ``correction_weight``
    (default: as one class of the replay, 1 / classes). A
    seeded ``holdout`` share of the corrections is kept out of training: it measures whether the
    fix generalises. Returns the new model (``model`` is left as it was) and before/after top-1
    (network, NBDT-soft, NBDT-hard) on the fitted and held-out corrections, the replay and
    ``test`` when given.
    """
    targets = class_indices(model.hierarchy, corrections_labels)
    features = pooled_features(model, corrections_images)
    if len(features) != len(targets):
        raise ValueError(f"{len(features)} correction images but {len(targets)} labels")
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
    _check_features(model, replay_features, replay_targets, model.hierarchy.num_classes)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))
    held = order[: int(holdout * len(targets))]
    fit = order[len(held) :]
    if not len(fit):
        raise ValueError("correct: no corrections left to fit after the holdout")

    fixed = with_hierarchy(model, model.hierarchy)
    if correction_weight is None:
        correction_weight = 1.0 / model.hierarchy.num_classes
    sets = {
        "corrections": (features[fit], targets[fit]),
        "held_out": (features[held], targets[held]),
        "replay": (replay_features, replay_targets),
    }
    if test is not None:
        sets["test"] = (test.features, test.targets)

    def measure() -> dict[str, dict[str, float]]:
        return {k: evaluate_features(fixed, f, t) for k, (f, t) in sets.items() if len(t)}

    before = measure()
    criterion = _criterion(fixed, fixed.hierarchy, "soft", dict(loss_options))
    training = _train_head(
        fixed,
        criterion,
        [(replay_features, replay_targets, 1.0), (features[fit], targets[fit], correction_weight)],
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        weight_decay=0.0,
        seed=seed,
    )
    return fixed, {"before": before, "after": measure(), "training": training}


# ---------------------------------------------------------------------------- a new class
def _wordnet_place(model: NBDT, wnid: str | None, row: Tensor) -> tuple[str, None]:
    """Under the deepest inner node whose synset is a hypernym of the new class (else the root)."""
    from nbdt import wordnet

    h = model.hierarchy
    if wnid is None:
        return h.root.id, None
    above = wordnet.ancestors(wnid)
    fits = [n for n in h.inner_nodes if n.wnid in above]
    if not fits:
        return h.root.id, None
    return max(fits, key=lambda n: (h.depth(n.id), above[n.wnid])).id, None


def _induced_place(model: NBDT, wnid: str | None, row: Tensor) -> tuple[str, str]:
    """Next to the class whose head row is the most similar (cosine), grouped under a new node."""
    weight = head_rows(model.model)[0].float()
    nearest = int(torch.nn.functional.cosine_similarity(weight, row[None].float()).argmax())
    return model.hierarchy.root.id, model.hierarchy.class_ids[nearest]


PLACES = {"wordnet": _wordnet_place, "induced": _induced_place}


def imprint(
    model: NBDT, features: Tensor, replay: Features | None = None, *, quantile: float = 0.05
) -> tuple[Tensor, Tensor | None]:
    """Weight imprinting: a head row and bias for a class from its examples' pooled features.

    The row is the mean of the L2-normalised features, normalised and scaled to the mean norm of
    the existing rows. The bias: with ``replay`` (features of the old classes), the new class's
    logit stays below each replay image's own class logit on all but ``quantile`` of them, so
    the new row does not swamp the old classes before (or without) a head refit; without a
    replay, the mean of the existing biases. A head without bias gets none.
    """
    weight, bias = head_rows(model.model)
    unit = torch.nn.functional.normalize(features.float(), dim=1).mean(0)
    row = torch.nn.functional.normalize(unit, dim=0) * weight.float().norm(dim=1).mean()
    row = row.to(weight)
    if bias is None:
        return row, None
    if replay is None or not len(replay):
        return row, bias.mean()
    if not 0 <= quantile < 1:
        raise ValueError(f"quantile must be in [0, 1), got {quantile!r}")
    device, dtype = network_device(model.model)
    pick = torch.randperm(len(replay), generator=torch.Generator().manual_seed(0))[:8192]
    sample = replay.features[pick].to(device, dtype)
    with torch.no_grad():
        own = apply_head(classifier_head(model.model), sample).gather(
            1, replay.targets[pick, None].to(device)
        )
        margin = own.squeeze(1).float() - sample.float() @ row.float()
    return row, torch.quantile(margin, quantile).to(bias)


def check_new_class(hierarchy: Hierarchy, name: str) -> str:
    """The name of a class to add, stripped; a ValueError when it is empty or a class already
    has it (as label or leaf id, any case)."""
    name = str(name).strip()
    taken = [
        i
        for i, leaf in enumerate(hierarchy.leaves)
        if name.casefold() in (leaf.label.casefold(), leaf.id.casefold())
    ]
    if taken:
        raise ValueError(
            f"add_class: class {name!r} exists (class {taken[0]}, {hierarchy.classes[taken[0]]!r})"
        )
    if not name:
        raise ValueError("add_class: empty class name")
    return name


def add_class(
    model: NBDT,
    name: str,
    images: Any,
    place: str = "wordnet",
    wnid: str | None = None,
    *,
    replay: Features | None = None,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 512,
    seed: int = 0,
    **loss_options: Any,
) -> NBDT:
    """A model with one more class, last in class order, from a few of its images.

    Its head row is imprinted (:func:`imprint`, the bias calibrated on ``replay`` when given)
    and its leaf placed by ``place``: "wordnet" under the deepest inner node whose WordNet synset
    is a hypernym of the class's (``wnid``, else resolved from ``name``), "induced" grouped with
    the class of the most similar head row. With ``replay`` (cached training features of the old
    classes) and ``epochs`` > 0 the head is then refit on the replay and the new images, the new
    class weighted as one class of the replay. The backbone is shared with ``model``, which is
    left as it was.
    """
    from nbdt import wordnet
    from nbdt.builders import unique_ids
    from nbdt.edits import add_leaf

    check_choice("place", place, PLACES)
    h = model.hierarchy
    name = check_new_class(h, name)
    if replay is not None:
        _check_features(model, replay.features, replay.targets, h.num_classes)
    if (isinstance(images, Tensor) and not len(images)) or (
        not isinstance(images, Tensor) and not len(list(images))
    ):
        raise ValueError(f"add_class: no images of {name!r}")
    synset = wnid if wnid is not None else wordnet.resolve([name])[0]
    if wnid is not None:
        wordnet.synset(wnid)  # an unknown id is an error
    real = is_wordnet_id(synset)
    features = pooled_features(model, images)
    row, bias = imprint(model, features, replay)
    parent, sibling = PLACES[place](model, synset if real else None, row)
    leaf_id = unique_ids([n.id for n in h.nodes] + [synset if real else name])[-1]
    tree = add_leaf(h, Node(leaf_id, name, synset if real else None), parent, sibling)

    weight, biases = head_rows(model.model)
    net = with_head(
        model.model,
        torch.cat([weight, row[None]]),
        None if biases is None else torch.cat([biases, bias[None]]),
    )
    grown = rewrap(model, net, tree)
    if replay is not None and epochs:
        new_targets = torch.full((len(features),), h.num_classes, dtype=torch.long)
        _train_head(
            grown,
            _criterion(grown, tree, "soft", dict(loss_options)),
            [(replay.features, replay.targets, 1.0), (features, new_targets, 1.0 / h.num_classes)],
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=0.0,
            seed=seed,
        )
    return grown
