"""What a run trains, resolved once from its :class:`~nbdt.training.config.TrainConfig`: the
checkpoint it starts from, the data and its classes, the network, where the hierarchy comes from
and the loss of every epoch.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nbdt import builders
from nbdt import data as datasets
from nbdt.checkpoint import check_format, read_checkpoint
from nbdt.classes import DatasetClasses, is_wordnet_id, read_wnid_overrides
from nbdt.hierarchy import Hierarchy
from nbdt.loss import LOSSES, SoftTreeSupLoss
from nbdt.networks import create_model, network_from_checkpoint, rebuild_errors, set_padding
from nbdt.pretrained import load_hierarchy_for
from nbdt.training.config import DEFAULT_ARCH, OPTIMIZERS, TrainConfig, option_name


# ---------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """What a run trains, resolved once from a :class:`TrainConfig`: the settings with every
    default filled in (what args.json records), the checkpoint it starts from (read and its
    hierarchy parsed once), the dataset's splits and classes, and where the hierarchy comes from.
    """

    config: TrainConfig
    train_set: datasets.ImageDataset
    test_set: datasets.ImageDataset
    classes: DatasetClasses
    image_size: tuple[int, int] | None = None
    checkpoint: dict[str, Any] | None = None
    checkpoint_hierarchy: Hierarchy | None = None
    class_guesses: list[str] = dataclasses.field(default_factory=list)
    eval_set: datasets.ImageDataset | None = None
    """The test split with the held-out classes' images too (``--holdout-classes``); the
    end-of-run evaluation reads it, ``test_set`` holds the seen classes only."""

    @property
    def trained_head(self) -> bool:
        """Whether the checkpoint's head already predicts these classes: no warm-up then."""
        tree = self.checkpoint_hierarchy
        return tree is not None and tree.has_classes(self.classes.names, self.classes.wnids)

    @property
    def warmup_epochs(self) -> int:
        return 0 if self.trained_head else self.config.warmup_epochs

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.config.epochs

    def network(self) -> tuple[nn.Module, dict[str, Any]]:
        """The timm network with a head for the dataset's classes, and its timm arguments."""
        config, num_classes = self.config, len(self.classes.names)
        if self.checkpoint is not None:
            model = set_padding(
                network_from_checkpoint(self.checkpoint, config.checkpoint), config.padding
            )
            if self.trained_head:
                return model, dict(self.checkpoint["model_kwargs"])
            model.reset_classifier(num_classes)
            return model, {**self.checkpoint["model_kwargs"], "num_classes": num_classes}
        import timm

        if not timm.is_model(config.arch):
            raise ValueError(
                f"unknown timm architecture {config.arch!r} (--arch; see timm.list_models())"
            )
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        model = create_model(
            config.arch,
            pretrained=config.pretrained,
            pretrained_file=config.pretrained_file,
            **kwargs,
        )
        return set_padding(model, config.padding), kwargs

    def data_config(self, model: nn.Module, model_kwargs: dict[str, Any]) -> dict[str, Any]:
        """timm's data config of the network, at the size the images are read."""
        size = self.image_size or self.train_set.image_shape[1:]
        return datasets.data_config(model, size, model_kwargs.get("in_chans", 3))

    def fixed_hierarchy(self) -> Hierarchy | None:
        """The hierarchy known before training, or None when it is induced from the head."""
        kind, classes = self.config.hierarchy, self.classes
        if kind == "induced":
            return None
        if kind == "checkpoint":
            if not self.trained_head:
                raise ValueError(
                    f"{self.config.checkpoint}: its hierarchy's classes are not the"
                    f" {self.config.dataset} classes: pass --hierarchy induced|wordnet|random|FILE"
                )
            return self.checkpoint_hierarchy
        if kind in builders.BUILDERS:
            seed = {"seed": self.config.seed} if "seed" in builders.options(kind) else {}
            return Hierarchy.build(kind, classes, **seed)
        return load_hierarchy_for(kind, classes.names, classes.wnids)

    def check_tree_source(self) -> None:
        """Refuse to induce the tree before any epoch trained the head (the recipe would build
        it from random weights, which ``nbdt-hierarchy induced`` refuses too)."""
        if self.config.hierarchy == "induced" and self.warmup_epochs == 0 and not self.trained_head:
            raise ValueError(
                f"--hierarchy induced with --warmup-epochs 0: {builders.RANDOM_HEAD};"
                " pass --warmup-epochs N (N >= 1), a --checkpoint whose head has these classes,"
                " or --hierarchy wordnet|random|FILE"
            )

    def induce(self, model: nn.Module, *, warmed_up: bool = False) -> Hierarchy:
        """The hierarchy induced from the head's weights as they are now. A head no epoch of
        this run trained (the checkpoint's, or a new one) is refused when it looks randomly
        initialised (:func:`nbdt.builders.looks_untrained`): the tree would be meaningless.
        After this run's warm-up (``warmed_up``) the tree is taken as it is."""
        build = functools.partial(
            Hierarchy.build, "induced", self.classes, weights=model,
            wordnet_weight=self.config.wordnet_weight,
        )  # fmt: skip
        with warnings.catch_warnings():
            action = "ignore" if warmed_up else "error"
            warnings.simplefilter(action, builders.UntrainedHeadWarning)
            try:
                return build()
            except builders.UntrainedHeadWarning:
                source = self.config.checkpoint if self.trained_head else "the new head"
                raise ValueError(
                    f"{source}: --hierarchy induced: {builders.UNTRAINED_HEAD}; train it first"
                    " (nbdt-train --warmup-epochs N), or pass --hierarchy wordnet|random|FILE"
                ) from None

    def criterion(self, epoch: int, hierarchy: Hierarchy | None, device: torch.device) -> nn.Module:
        """Cross-entropy while warming up, then the tree-supervision loss at this epoch."""
        if epoch < self.warmup_epochs:
            return nn.CrossEntropyLoss()
        config = self.config
        options = {
            name: getattr(config, name)
            for name in (
                "tree_weight", "ce_weight", "tree_weight_end", "tree_weight_power",
                "ce_weight_end", "ce_weight_power", "node_score",
            )
        }  # fmt: skip
        if LOSSES[config.loss] is SoftTreeSupLoss:
            options["variant"] = config.soft_variant
        loss = LOSSES[config.loss](hierarchy, **options)
        loss.set_epoch(epoch - self.warmup_epochs, config.epochs)
        return loss.to(device)


def make_plan(config: TrainConfig, device: torch.device) -> Plan:
    """Read the checkpoint (once) and the data, and fill in every default of ``config``."""
    checkpoint = tree = None
    if config.checkpoint:
        checkpoint = read_checkpoint(config.checkpoint)
        check_format(checkpoint, config.checkpoint)
        with rebuild_errors(config.checkpoint):
            tree = Hierarchy.from_node_link(checkpoint["hierarchy"])
    if checkpoint is not None and config.arch and config.arch != checkpoint["arch"]:
        raise ValueError(
            f"--arch {config.arch} but {config.checkpoint} holds a {checkpoint['arch']}:"
            " drop --arch"
        )
    config = _resolve(config, checkpoint, device)
    # Folders are read at a fixed size; in-memory datasets keep theirs unless --image-size.
    size = (config.image_size,) * 2 if config.image_size else None
    if size is None and config.dataset == "folder":
        size = _default_size(config.arch, checkpoint)
    overrides = read_wnid_overrides(config.wnids) if config.wnids else None
    load = {"download": config.download, "image_size": size or (224, 224), "wnids": overrides}
    train_set = datasets.load_dataset(config.dataset, "train", config.data_dir, **load)
    test_set = datasets.load_dataset(config.dataset, "test", config.data_dir, **load)
    if train_set.classes != test_set.classes:
        raise ValueError(f"{config.dataset}: train and test splits have different classes")
    if config.eval_subset:
        test_set = test_set.head(config.eval_subset)
    eval_set = test_set
    if config.holdout_classes:
        _check_holdout(config.holdout_classes, train_set.classes, train_set.wnids)
        train_set = train_set.without_classes(config.holdout_classes)
        test_set = test_set.without_classes(config.holdout_classes)
    if config.subset:
        train_set = train_set.head(config.subset)
    classes = DatasetClasses(config.dataset, tuple(train_set.classes), tuple(train_set.wnids))
    guesses = [str(r) for r in getattr(train_set, "resolutions", ()) if r.fallback]
    if len(classes.names) < 2:
        raise ValueError(
            f"{config.dataset}: one class ({', '.join(classes.names)}): a classifier and its"
            " hierarchy need at least two"
        )
    plan = Plan(config, train_set, test_set, classes, size, checkpoint, tree, guesses, eval_set)
    if config.hierarchy is None:  # a trained head's hierarchy is the default one
        kind = "checkpoint" if plan.trained_head else "induced"
        plan.config = dataclasses.replace(config, hierarchy=kind)
    if len(train_set) < config.batch_size:
        raise ValueError(
            f"{len(train_set)} training images, fewer than one batch"
            f" ({config.batch_size}): lower --batch-size or raise --subset"
        )
    return plan


def _check_holdout(names: Sequence[str], classes: Sequence[str], wnids: Sequence[str]) -> None:
    """Every held-out name is one of the dataset's classes, with a WordNet id (its target node
    is found through WordNet), and two classes or more stay."""
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise ValueError(
            f"{option_name('holdout_classes')}: {', '.join(map(repr, unknown))} not among the"
            f" dataset's classes: {', '.join(classes)}"
        )
    wnid = dict(zip(classes, wnids, strict=True))
    unnamed = [name for name in names if not is_wordnet_id(wnid[name])]
    if unnamed:
        raise ValueError(
            f"{option_name('holdout_classes')}: {unnamed[0]!r} has no WordNet id, so no node of the"
            " tree is its target"
        )
    if len(classes) - len(names) < 2:
        raise ValueError(f"{option_name('holdout_classes')}: fewer than two classes would stay")


def _resolve(
    config: TrainConfig, checkpoint: dict[str, Any] | None, device: torch.device
) -> TrainConfig:
    """Fill in the settings left to defaults, so args.json records what the run used."""
    trained = bool(checkpoint or config.pretrained or config.pretrained_file)
    defaults = OPTIMIZERS[config.optimizer]
    return dataclasses.replace(
        config,
        output=str(Path(config.output).expanduser().resolve()),
        arch=config.arch or (checkpoint["arch"] if checkpoint else DEFAULT_ARCH),
        padding=config.padding or (checkpoint or {}).get("padding", "zeros"),
        lr=config.lr or defaults.base_lr[trained] * config.batch_size / 256,
        weight_decay=(
            defaults.weight_decay if config.weight_decay is None else config.weight_decay
        ),
        workers=config.workers if config.workers is not None else _default_workers(config),
        device=str(device),
    )


# ------------------------------------------------------------------------------- helpers
def _default_size(arch: str, source: dict[str, Any] | None) -> tuple[int, int]:
    """Image size for folder datasets: the checkpoint's, else the architecture's default."""
    if source is not None and source.get("data_config"):
        return tuple(source["data_config"]["input_size"][-2:])
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    size = cfg.input_size if cfg is not None else (3, 224, 224)
    return tuple(size[-2:])


def _default_workers(config: TrainConfig) -> int:
    """No workers for in-memory datasets (an index lookup), up to 8 for image folders."""
    if config.dataset != "folder":
        return 0
    return min(
        8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
