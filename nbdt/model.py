"""The NBDT model: a timm classifier whose logits are read through a decision tree.

``NBDT`` wraps the network with the hierarchy's decision rules, predicts with them and explains
every prediction as its path of decisions; ``save`` / ``load`` keep all of it in one file.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from nbdt._io import atomic_path
from nbdt._messages import one_line
from nbdt.hierarchy import Hierarchy
from nbdt.images import load_image, to_model_mode
from nbdt.rules import DecisionRules

FORMAT_NAME = "nbdt-model"
FORMAT_VERSION = 1
MODES = ("soft", "hard")
NODE_SCORES = ("mean", "marginal")

ImageInput = Image.Image | str | os.PathLike | torch.Tensor
_TRANSFORM_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_REQUIRED_KEYS = ("arch", "model_kwargs", "state_dict", "hierarchy", "mode", "node_score")


# ----------------------------------------------------------------------------- explanations
@dataclass(frozen=True)
class Step:
    """One decision on the path: at ``node_id`` the child ``child_id`` was taken.

    ``probability`` is that child's branch probability at the node, ``entropy`` (nats) measures
    how undecided the node was over all its children, and the runner-up is the best other child.
    """

    node_id: str
    label: str
    wnid: str | None
    entropy: float
    child_id: str
    child_label: str
    probability: float
    runner_up_id: str
    runner_up_label: str
    runner_up_probability: float


@dataclass(frozen=True)
class TopClass:
    """A class and its probability under soft inference."""

    class_index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Explanation:
    """A prediction and the decisions, root to leaf, that led to it.

    ``probability`` is the predicted class's soft-inference probability, which is the product
    of the path's branch probabilities; ``top_k`` ranks classes by that same probability.
    """

    class_index: int
    label: str
    wnid: str | None
    probability: float
    mode: str
    node_score: str
    top_k: tuple[TopClass, ...]
    path: tuple[Step, ...]

    def __str__(self) -> str:
        """One line. Consecutive steps into children of one label (an induced tree's nodes may
        share their lowest common hypernym) read as one decision: their probabilities multiply,
        the probability of reaching the last of them. ``path`` keeps every step."""
        merged: list[list[Any]] = []
        for step in self.path:
            if merged and merged[-1][0] == step.child_label:
                merged[-1][1] *= step.probability
            else:
                merged.append([step.child_label, step.probability])
        decisions = " -> ".join(f"{label} ({p:.1%})" for label, p in merged)
        return f"Prediction: {self.label} // Decisions: {decisions}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (the documented explanation format)."""
        return {
            "class_index": self.class_index,
            "label": self.label,
            "wnid": self.wnid,
            "probability": self.probability,
            "mode": self.mode,
            "node_score": self.node_score,
            "top_k": [
                {"class_index": t.class_index, "label": t.label, "probability": t.probability}
                for t in self.top_k
            ],
            "path": [
                {
                    "node_id": s.node_id,
                    "label": s.label,
                    "wnid": s.wnid,
                    "entropy": s.entropy,
                    "child_id": s.child_id,
                    "child_label": s.child_label,
                    "probability": s.probability,
                    "runner_up_id": s.runner_up_id,
                    "runner_up_label": s.runner_up_label,
                    "runner_up_probability": s.runner_up_probability,
                }
                for s in self.path
            ],
        }


# ----------------------------------------------------------------------------------- images
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
        _check_choice("mode", mode, MODES)
        _check_choice("node_score", node_score, NODE_SCORES)
        if not isinstance(hierarchy, Hierarchy):
            raise TypeError(f"hierarchy must be a nbdt.Hierarchy, got {type(hierarchy).__name__}")
        head_classes = _head_classes(model)
        if head_classes is not None and head_classes != hierarchy.num_classes:
            raise ValueError(
                f"hierarchy has {hierarchy.num_classes} leaves, model head has {head_classes}"
                " classes: build the hierarchy from this model"
                " (nbdt.Hierarchy.induced(model, classes) or nbdt-hierarchy induced)"
            )
        in_chans = _input_channels(model)
        self.model = model
        self.hierarchy = hierarchy
        self.rules = DecisionRules(hierarchy, node_score=node_score)
        self.mode = mode
        self.node_score = node_score
        self.arch = arch or getattr(model, "pretrained_cfg", {}).get("architecture")
        self.model_kwargs = dict(
            model_kwargs
            if model_kwargs is not None
            else {"num_classes": hierarchy.num_classes, "in_chans": in_chans}
        )
        self.data_config = dict(data_config or _resolve_data_config(model, in_chans))

        self.pruned: dict[str, dict[str, Any]] | None = None  # see nbdt.compress
        self._rebuildable = False  # checked by the first checkpoint()
        self._inner_nodes = hierarchy.inner_nodes  # the hierarchy builds these tuples per call
        self._leaves = hierarchy.leaves
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
        stored.setdefault("in_chans", _input_channels(model))
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
        missing = [k for k in _REQUIRED_KEYS if k not in checkpoint]
        if checkpoint.get("format") != FORMAT_NAME or missing:
            raise ValueError(f"{source}: not an nbdt model file (missing {missing or ['format']})")
        if checkpoint.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{source}: nbdt model format version {checkpoint.get('version')!r};"
                f" this nbdt reads version {FORMAT_VERSION}"
            )
        import timm

        try:
            hierarchy = Hierarchy.from_node_link(checkpoint["hierarchy"])
            model = timm.create_model(
                checkpoint["arch"], pretrained=False, **dict(checkpoint["model_kwargs"])
            )
            if checkpoint.get("pruned"):  # a pruned network: its own channel counts
                from nbdt.compress import restore_pruned

                restore_pruned(model, checkpoint["pruned"], checkpoint["state_dict"])
            model.load_state_dict(checkpoint["state_dict"])
            nbdt = cls(
                model,
                hierarchy,
                checkpoint["mode"],
                checkpoint["node_score"],
                arch=checkpoint["arch"],
                model_kwargs=checkpoint["model_kwargs"],
                data_config=checkpoint.get("data_config"),
            )
            nbdt.pruned = checkpoint.get("pruned")
            return nbdt
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            # load_state_dict lists the mismatched keys on later lines: keep them, on one line.
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            raise ValueError(f"{source}: cannot rebuild the model ({reason})") from None

    # ---------------------------------------------------------------------------- inference
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own (B, C) logits."""
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C) class log-probabilities (soft) or the hard decision as a point mass."""
        logits = self.model(x)
        if self.mode == "soft":
            return self.rules.soft(logits)
        decision = self.rules.hard(logits)
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        scores = torch.full(logits.shape, -math.inf, dtype=dtype, device=logits.device)
        return scores.scatter(1, decision[:, None], 0.0)

    @property
    def transform(self) -> Any:
        """timm's evaluation transform (PIL image -> normalised tensor) for this model."""
        from timm.data import create_transform

        config = {k: self.data_config[k] for k in _TRANSFORM_KEYS if k in self.data_config}
        return create_transform(**config, is_training=False)

    def explain(
        self, x: ImageInput | Sequence[ImageInput], top_k: int = 5
    ) -> Explanation | list[Explanation]:
        """Predict and explain: one :class:`Explanation` per image, a list for several.

        ``x`` is a PIL image, an image file path, a preprocessed float tensor (C, H, W) or
        (B, C, H, W), or a list of these. Images and paths are preprocessed with timm's
        evaluation transform for this model; any Pillow mode is converted first. The path goes
        to the predicted class: in soft mode the most probable class (the product of the path's
        branch probabilities is its probability), in hard mode the greedy descent's leaf.
        Unreadable files raise one ``ValueError`` naming the file.
        """
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        single = not isinstance(x, (list, tuple)) and not (
            isinstance(x, torch.Tensor) and x.dim() == 4
        )
        batch = self._input_batch(list(x) if isinstance(x, (list, tuple)) else [x])
        training = {module: module.training for module in self.modules()}
        self.eval()
        try:
            with torch.inference_mode():
                explanations = self._explain_batch(batch, top_k)
        finally:
            for module, flag in training.items():
                module.training = flag
        return explanations[0] if single else explanations

    def _input_batch(self, items: list[ImageInput]) -> torch.Tensor:
        """Stack images, paths and tensors into one (B, C, H, W) batch on the model's device."""
        channels = self.data_config["input_size"][0]
        transform = None
        rows = []
        for item in items:
            if isinstance(item, torch.Tensor):
                tensor = item[None] if item.dim() == 3 else item
                if tensor.dim() != 4 or tensor.shape[1] != channels:
                    raise ValueError(
                        f"explain: expected a (C, H, W) or (B, C, H, W) tensor with C={channels},"
                        f" got shape {tuple(item.shape)}"
                    )
                if not tensor.is_floating_point():
                    raise ValueError(
                        "explain: tensors must be preprocessed float input; pass raw images as"
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
                    f"explain: expected PIL images, paths or tensors, got {type(item).__name__}"
                )
            if transform is None:
                transform = self.transform
            rows.append(transform(image)[None])
        if not rows:
            raise ValueError("explain: no input")
        shapes = {tuple(r.shape[1:]) for r in rows}
        if len(shapes) > 1:
            raise ValueError(f"explain: inputs of different shapes {sorted(shapes)} in one batch")
        parameter = next(self.model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
        dtype = parameter.dtype if parameter is not None else torch.float32
        return torch.cat([r.to(device) for r in rows]).to(dtype)

    def _explain_batch(self, batch: torch.Tensor, top_k: int) -> list[Explanation]:
        """Compute every sample's path at once, then build the Python objects."""
        logits = self.model(batch)
        node_log_probs = self.rules.node_log_probs(logits)  # (B, N, K), padding -inf
        class_log_probs = self.rules.soft(logits)  # (B, C)
        if self.mode == "soft":
            predicted = class_log_probs.argmax(1)
        else:
            predicted = self.rules.hard(logits)
        rows = torch.arange(batch.shape[0], device=logits.device)
        # The rules hold each class's root-to-leaf path as (inner node, child slot) per depth.
        nodes = self.rules.path_node[predicted]  # (B, D), padded past the path's length
        slots = self.rules.path_slot[predicted]
        step_log_probs = node_log_probs[rows[:, None], nodes]  # (B, D, K)
        step_probs = step_log_probs.exp()
        entropy = torch.special.entr(step_probs).sum(-1)
        taken = step_probs.gather(-1, slots[..., None]).squeeze(-1)
        # Padding children sit at -inf, as does the child taken: the max is the best other child.
        others = step_log_probs.scatter(-1, slots[..., None], -math.inf)
        runner_up_log_prob, runner_up_slot = others.max(-1)
        top_prob, top_index = class_log_probs.exp().topk(min(top_k, class_log_probs.shape[1]))
        probability = class_log_probs.gather(1, predicted[:, None]).squeeze(1).exp()

        columns = (
            predicted,
            probability,
            self.rules.path_length[predicted],
            nodes,
            slots,
            entropy,
            taken,
            runner_up_slot,
            runner_up_log_prob.exp(),
            top_index,
            top_prob,
        )
        return [self._explanation(*row) for row in zip(*(c.tolist() for c in columns), strict=True)]

    def _explanation(
        self,
        class_index: int,
        probability: float,
        length: int,
        nodes: list[int],
        slots: list[int],
        entropy: list[float],
        taken: list[float],
        runner_up_slots: list[int],
        runner_up_probs: list[float],
        top_index: list[int],
        top_prob: list[float],
    ) -> Explanation:
        """Build one explanation from its already computed numbers."""
        h, leaves = self.hierarchy, self._leaves
        steps = []
        for d in range(length):
            node = self._inner_nodes[nodes[d]]
            child = h[node.children[slots[d]]]
            runner_up = h[node.children[runner_up_slots[d]]]
            steps.append(
                Step(
                    node.id,
                    node.label,
                    node.wnid,
                    entropy[d],
                    child.id,
                    child.label,
                    taken[d],
                    runner_up.id,
                    runner_up.label,
                    runner_up_probs[d],
                )
            )
        leaf = leaves[class_index]
        top = zip(top_index, top_prob, strict=True)
        return Explanation(
            class_index,
            leaf.label,
            leaf.wnid,
            probability,
            self.mode,
            self.node_score,
            tuple(TopClass(i, leaves[i].label, p) for i, p in top),
            tuple(steps),
        )

    # -------------------------------------------------------------------------- persistence
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


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half-written."""
    with atomic_path(path) as tmp:
        torch.save(dict(checkpoint), tmp)
    return Path(path)


def read_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu"
) -> dict[str, Any]:
    """Read an nbdt model file as a dict with ``torch.load(weights_only=True)``.

    A file that would need pickled Python code to load, or that is not an nbdt model file,
    raises one ``ValueError`` naming it.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not an nbdt model file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except pickle.UnpicklingError as e:  # the weights-only unpickler names what it refused
        code = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if code:
            raise ValueError(
                f"{path}: refused: loading it would run pickled Python code ({code.group(1)});"
                " nbdt model files hold only tensors and plain data"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
        reason = detail.group(1).strip() if detail else one_line(e)
        raise ValueError(f"{path}: not an nbdt model file ({reason})") from None
    except Exception as e:  # arbitrary bytes make the unpickler raise almost any error type
        raise ValueError(f"{path}: not an nbdt model file ({one_line(e)})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not an nbdt model file (no 'format': '{FORMAT_NAME}')")
    return data


def load(path: str | os.PathLike[str], map_location: str | torch.device | None = "cpu") -> NBDT:
    """Load a model written by :meth:`NBDT.save` (or the trainer), in eval mode.

    Extra keys (the trainer's optimizer state and such) are ignored; :func:`read_checkpoint`
    returns them.
    """
    return NBDT.from_checkpoint(read_checkpoint(path, map_location), source=str(path)).eval()


# ---------------------------------------------------------------------------------- helpers
def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _head_classes(model: nn.Module) -> int | None:
    """The number of classes the model's head predicts, asked the timm way."""
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int):
        return num_classes
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    return getattr(head, "out_features", None)


def _input_channels(model: nn.Module) -> int:
    """Input channels of the first convolution (timm's configs always say 3)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def _resolve_data_config(model: nn.Module, in_chans: int) -> dict[str, Any]:
    """timm's data config, with the input size and statistics fitted to ``in_chans``."""
    from timm.data import resolve_model_data_config

    config = dict(resolve_model_data_config(model))
    if config["input_size"][0] != in_chans:
        config["input_size"] = (in_chans, *config["input_size"][1:])
        for key in ("mean", "std"):
            values = tuple(config[key])
            if len(values) != in_chans:
                config[key] = (sum(values) / len(values),) * in_chans
    return config


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
