"""The NBDT model: a timm classifier whose logits are read through a decision tree.

``NBDT`` wraps the network with the hierarchy's decision rules, predicts with them and explains
every prediction as its path of decisions; ``save`` / ``load`` keep all of it in one file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from nbdt import heads, networks
from nbdt.checkpoint import FORMAT_NAME, FORMAT_VERSION, read_checkpoint, save_checkpoint
from nbdt.choices import check_choice
from nbdt.explanation import Explanation, explanations_from_arrays
from nbdt.hierarchy import Hierarchy
from nbdt.images import load_image, to_model_mode
from nbdt.labels import display_names
from nbdt.networks import (
    eval_mode,
    input_channels,
    network_from_checkpoint,
    padding_of,
    rebuild_errors,
)
from nbdt.rules import NODE_SCORES, DecisionRules, check_finite
from nbdt.tree import Tree

ImageInput = Image.Image | str | os.PathLike | torch.Tensor
_TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


# ------------------------------------------------------------------------------------ model
class NBDT(nn.Module):
    """A timm classifier read through a decision tree over its classes.

    ``forward(x)`` returns (B, C) class log-probabilities:

    - ``mode="soft"``: soft inference, the probability of a class is the product of the branch
      probabilities on its root-to-leaf path;
    - ``mode="hard"``: the greedy descent's decision as a point mass: 0 (log 1) for the class
      reached by taking the most probable child at every node from the root, ``-inf`` (log 0)
      elsewhere. ``argmax``, ``exp()`` (one-hot) and accuracy work as in soft mode; the branch
      probabilities of the decisions are in :meth:`explain`. Do not train on it (use the losses).

    ``node_score`` picks how a child is scored from the logits (see ``DecisionRules``): "mean"
    for tree-supervised networks, "marginal" to explain any classifier as it is.
    ``arch`` and ``model_kwargs`` (the ``timm.create_model`` name and arguments) are needed only
    by :meth:`save`; when not given, they are the model's architecture with its class count and
    input channels, and :meth:`save` checks that they rebuild the network. ``data_config`` is timm's
    preprocessing config, resolved from the model when not given.
    """

    def __init__(
        self,
        model: nn.Module,
        hierarchy: Hierarchy,
        mode: str = "soft",
        node_score: str = "mean",
        *,
        arch: str | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        data_config: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        check_choice("mode", mode, MODES)
        check_choice("node_score", node_score, NODE_SCORES)
        if not isinstance(hierarchy, Tree):
            raise TypeError(f"hierarchy must be a nbdt.Hierarchy, got {type(hierarchy).__name__}")
        head_classes = heads.head_classes(model)
        if head_classes is not None and head_classes != hierarchy.num_classes:
            raise ValueError(
                f"hierarchy has {hierarchy.num_classes} leaves, model head has {head_classes}"
                " classes: build the hierarchy from this model"
                " (nbdt.Hierarchy.induced(model, classes) or nbdt-hierarchy induced)"
            )
        in_chans = input_channels(model)
        self.model = model
        self.hierarchy = hierarchy = Hierarchy.of(hierarchy)  # a builder's Tree gets the edits
        self.rules = DecisionRules(hierarchy, node_score=node_score)
        self.mode = mode
        self.node_score = node_score
        self.arch = arch or getattr(model, "pretrained_cfg", {}).get("architecture")
        self.model_kwargs = dict(
            model_kwargs
            if model_kwargs is not None
            else {"num_classes": hierarchy.num_classes, "in_chans": in_chans}
        )
        self.data_config = dict(data_config or networks.data_config(model, in_chans))
        self.display_labels = display_names(hierarchy)
        """Each node's name as every output shows it (:func:`nbdt.labels.display_names`)."""

        self.pruned: dict[str, dict[str, Any]] | None = None  # see nbdt.deploy
        self._rebuildable = False  # checked by the first checkpoint()
        self.train(model.training)  # a wrapped model in eval mode stays in eval mode

    # ------------------------------------------------------------------------ constructors
    @classmethod
    def from_arch(
        cls,
        arch: str,
        hierarchy: Hierarchy,
        mode: str = "soft",
        node_score: str = "mean",
        *,
        pretrained: bool = False,
        data_config: Mapping[str, Any] | None = None,
        **model_kwargs: Any,
    ) -> NBDT:
        """Create ``timm.create_model(arch, **model_kwargs)`` with the hierarchy's class count.

        ``model_kwargs`` (e.g. ``in_chans=1``, ``drop_rate``) are stored for :meth:`save`, so they
        must be plain data; ``pretrained`` and timm's ``pretrained_cfg*`` arguments are passed
        to timm but not stored (a saved model carries its weights).
        """
        import timm

        model_kwargs.setdefault("num_classes", hierarchy.num_classes)
        model = timm.create_model(arch, pretrained=pretrained, **model_kwargs)
        stored = {k: v for k, v in model_kwargs.items() if not k.startswith("pretrained_cfg")}
        stored.setdefault("in_chans", input_channels(model))
        return cls(
            model,
            hierarchy,
            mode,
            node_score,
            arch=arch,
            model_kwargs=stored,
            data_config=data_config,
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], source: str = "checkpoint") -> NBDT:
        """Rebuild a model from a :meth:`checkpoint` dict (``source`` names it in errors)."""
        network = network_from_checkpoint(checkpoint, source)
        with rebuild_errors(source):
            nbdt = cls(
                network,
                Hierarchy.from_node_link(checkpoint["hierarchy"]),
                checkpoint["mode"],
                checkpoint["node_score"],
                arch=checkpoint["arch"],
                model_kwargs=checkpoint["model_kwargs"],
                data_config=checkpoint.get("data_config"),
            )
        nbdt.pruned = checkpoint.get("pruned")
        return nbdt

    # ---------------------------------------------------------------------------- inference
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own (B, C) logits."""
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) class log-probabilities (soft) or the hard decision as a point mass."""
        return MODES[self.mode](self.rules, self.model(x))

    # ------------------------------------------------------- scikit-learn-style conveniences
    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the output columns (scikit-learn's ``classes_``)."""
        return list(self.hierarchy.classes)

    def predict_proba(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64
    ) -> torch.Tensor:
        """(N, C) class probabilities on the CPU, columns in the order of :attr:`classes`
        (``.numpy()`` gives an array): soft inference in mode "soft", the greedy descent's
        one-hot decision in mode "hard". ``images`` is what :meth:`explain` takes (a PIL image,
        a path, a preprocessed (C, H, W) or (N, C, H, W) float tensor, or a list of these); one
        image gives one row. The network runs ``batch_size`` images at a time."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        batch = self._input_batch(items, "predict")
        with eval_mode(self), torch.inference_mode():
            rows = [self(batch[i : i + batch_size]).float().exp().cpu() for i in
                    range(0, len(batch), batch_size)]  # fmt: skip
        return torch.cat(rows)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        indices: bool = False,
        batch_size: int = 64,
    ) -> list[str] | torch.Tensor:
        """The predicted class of each image: its name (a list), or with ``indices=True`` its
        index into :attr:`classes` (an (N,) CPU tensor). The class :meth:`explain` reports: the
        most probable (mode "soft") or the greedy descent's leaf (mode "hard"). ``images`` as
        :meth:`predict_proba` takes them."""
        predicted = self.predict_proba(images, batch_size).argmax(1)
        if indices:
            return predicted
        names = self.hierarchy.classes
        return [names[i] for i in predicted.tolist()]

    @property
    def transform(self) -> Any:
        """timm's evaluation transform (PIL image -> normalised tensor) for this model."""
        from timm.data import create_transform

        config = {k: self.data_config[k] for k in _TRANSFORM_KEYS if k in self.data_config}
        return create_transform(**config, is_training=False)

    def explain(
        self,
        x: ImageInput | Sequence[ImageInput],
        top_k: int = 5,
        *,
        evidence: bool = False,
        method: str | None = None,
        layer: str | nn.Module | None = None,
        examples: Any = None,
    ) -> Explanation | list[Explanation]:
        """Predict and explain: one :class:`Explanation` per image, a list for several.

        ``x`` is a PIL image, an image file path, a preprocessed float tensor (C, H, W) or
        (B, C, H, W), or a list of these. Images and paths are preprocessed with timm's
        evaluation transform for this model; any Pillow mode is converted first. The path goes
        to the predicted class: in soft mode the most probable class (the product of the path's
        branch probabilities is its probability), in hard mode the greedy descent's leaf.
        Unreadable files raise one ``ValueError`` naming the file.

        Evidence (``nbdt.evidence``): ``evidence=True`` gives every step a ``saliency`` map at
        the input's resolution, made by ``method`` (a key of ``nbdt.evidence.saliency.CAM_METHODS``;
        default ``DEFAULT_METHOD`` there) at backbone ``layer`` (a module or dotted name; found
        automatically by default); ``examples`` (a ``NodeExamples`` of this hierarchy) attaches the
        representative images of the child taken and of the runner-up, and the nearest training
        images among those the node sends to the child taken.
        """
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        if evidence or examples is not None:
            from nbdt.evidence.saliency import check_evidence_options

            method = check_evidence_options(self, method, layer, examples)
        single = not isinstance(x, (list, tuple)) and not (
            isinstance(x, torch.Tensor) and x.dim() == 4
        )
        batch = self._input_batch(list(x) if isinstance(x, (list, tuple)) else [x])
        with eval_mode(self):
            with torch.inference_mode():
                explanations = self._explain_batch(batch, top_k)
            if evidence or examples is not None:
                from nbdt.evidence.saliency import attach_evidence

                explanations = attach_evidence(
                    self,
                    batch,
                    explanations,
                    saliency=evidence,
                    method=method,
                    layer=layer,
                    examples=examples,
                )
        return explanations[0] if single else explanations

    def _input_batch(self, items: list[ImageInput], caller: str = "explain") -> torch.Tensor:
        """Stack images, paths and tensors into one (B, C, H, W) batch on the model's device
        (errors name the ``caller``)."""
        channels = self.data_config["input_size"][0]
        transform = None
        rows = []
        for item in items:
            if isinstance(item, torch.Tensor):
                tensor = item[None] if item.dim() == 3 else item
                if tensor.dim() != 4 or tensor.shape[1] != channels:
                    raise ValueError(
                        f"{caller}: expected a (C, H, W) or (B, C, H, W) tensor with C={channels},"
                        f" got shape {tuple(item.shape)}"
                    )
                if not tensor.is_floating_point():
                    raise ValueError(
                        f"{caller}: tensors must be preprocessed float input; pass raw images as"
                        " PIL images or paths"
                    )
                rows.append(tensor)
                continue
            if isinstance(item, (str, os.PathLike)):
                image = load_image(item, channels)
            elif isinstance(item, Image.Image):
                image = to_model_mode(item, channels)
            else:
                raise TypeError(
                    f"{caller}: expected PIL images, paths or tensors, got {type(item).__name__}"
                )
            if transform is None:
                transform = self.transform
            rows.append(transform(image)[None])
        if not rows:
            raise ValueError(f"{caller}: no input")
        shapes = {tuple(r.shape[1:]) for r in rows}
        if len(shapes) > 1:
            raise ValueError(f"{caller}: inputs of different shapes {sorted(shapes)} in one batch")
        device, dtype = heads.network_device(self.model)
        return torch.cat([r.to(device) for r in rows]).to(dtype)

    def _explain_batch(self, batch: torch.Tensor, top_k: int) -> list[Explanation]:
        """The rules' outputs for the whole batch at once, read into explanations by the one
        builder the ONNX Runtime explainer shares."""
        logits = self.model(batch)
        check_finite(logits)
        predicted = MODES[self.mode](self.rules, logits).argmax(1)
        return explanations_from_arrays(
            self.hierarchy,
            self.mode,
            self.node_score,
            self.rules.node_log_probs(logits).float().cpu().numpy(),  # (B, N, K), padding -inf
            self.rules.soft(logits).float().cpu().numpy(),
            predicted.cpu().numpy(),
            top_k,
            self.display_labels,
        )

    # -------------------------------------------------------------------------- persistence
    def export_onnx(self, path: str | os.PathLike[str], **options: Any) -> Path:
        """This model as one ONNX file (network, decision rules and nbdt metadata) that
        ``nbdt.OnnxNBDT`` and ``nbdt-explain --onnx`` run without torch; ``options`` go to
        :func:`nbdt.deploy.export.export_onnx`. Needs the ``deploy`` extra."""
        from nbdt.deploy.export import export_onnx

        return export_onnx(self, path, **options)

    def checkpoint(self, **extra: Any) -> dict[str, Any]:
        """The save format as a dict (``extra`` keys, e.g. optimizer state, are added)."""
        if not self.arch:
            raise ValueError(
                "save: the timm architecture name is unknown: pass arch=... (and model_kwargs)"
                " to NBDT, or build it with NBDT.from_arch"
            )
        _check_plain("model_kwargs", self.model_kwargs)
        _check_plain("data_config", self.data_config)
        if not self.pruned:
            self._check_rebuildable()
        return {
            **extra,
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "arch": self.arch,
            "model_kwargs": dict(self.model_kwargs),
            "state_dict": self.model.state_dict(),
            "hierarchy": self.hierarchy.to_node_link(),
            "mode": self.mode,
            "node_score": self.node_score,
            "data_config": dict(self.data_config),
            "padding": padding_of(self.model),
            **({"pruned": self.pruned} if self.pruned else {}),
        }

    def _check_rebuildable(self) -> None:
        """Fail when saving, not when loading, if ``arch`` and ``model_kwargs`` would build a
        network of other parameter shapes (e.g. a ViT made with ``img_size=32``). The twin is
        built once, on the meta device: no memory, no initialisation cost."""
        if self._rebuildable:
            return
        import timm

        with torch.device("meta"):
            twin = timm.create_model(self.arch, **self.model_kwargs)
        ours = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
        differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if differ:
            key = differ[0]
            raise ValueError(
                f"save: timm.create_model({self.arch!r}, **{self.model_kwargs}) would not rebuild"
                f" this network ({key}: {theirs.get(key)} there, {ours.get(key)} here): pass the"
                " model's timm arguments (e.g. img_size) to NBDT(..., model_kwargs=...)"
            )
        self._rebuildable = True

    def save(self, path: str | os.PathLike[str], **extra: Any) -> Path:
        """Write :meth:`checkpoint` to ``path`` atomically; read it back with :func:`load`."""
        return save_checkpoint(self.checkpoint(**extra), path)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, node_score={self.node_score!r}, arch={self.arch!r}"

    def with_hierarchy(self, hierarchy: Hierarchy) -> NBDT:
        """An NBDT over the same backbone with ``hierarchy``'s rules and its own copy of the
        head (a removed class's row dropped); see :func:`nbdt.heads.with_hierarchy`."""
        from nbdt.heads import with_hierarchy

        return with_hierarchy(self, hierarchy)


def load(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> NBDT:
    """Load a model written by :meth:`NBDT.save` (or the trainer), in eval mode.

    Extra keys (the trainer's optimizer state and such) are ignored; :func:`read_checkpoint`
    returns them.
    """
    return NBDT.from_checkpoint(read_checkpoint(path, map_location), source=str(path)).eval()


# ------------------------------------------------------------------------------------ modes
def _soft(rules: DecisionRules, logits: torch.Tensor) -> torch.Tensor:
    """Soft inference: each class's log-probability, the sum over its path's branches."""
    return rules.soft(logits)


def _hard(rules: DecisionRules, logits: torch.Tensor) -> torch.Tensor:
    """The greedy descent's class as a point mass: 0 (log 1) there, -inf elsewhere."""
    decision = rules.hard(logits)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    scores = torch.full(logits.shape, -math.inf, dtype=dtype, device=logits.device)
    return scores.scatter(1, decision[:, None], 0.0)


# How the model turns logits into (B, C) class scores, by name (NBDT's and nbdt-explain's mode).
MODES = {"soft": _soft, "hard": _hard}


# ---------------------------------------------------------------------------------- helpers
def _check_plain(name: str, value: Any) -> None:
    """Refuse values that ``torch.load(weights_only=True)`` could not read back."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(name, item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(name, key)
            _check_plain(name, item)
        return
    raise ValueError(f"save: {name} holds a {type(value).__name__}; only plain data can be saved")
