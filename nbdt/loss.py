"""Tree-supervision losses: the network's criterion plus a term that trains the tree's decisions.

``loss = ce_weight * criterion(logits, y) + tree_weight * tree_term(logits, y)``, both weights on
optional schedules over the epochs. The tree term reads only the nodes on each label's path (see
``DecisionRules.path_log_probs``), so it costs a few times a plain cross-entropy, not a tree walk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbdt.hierarchy import Hierarchy
from nbdt.rules import DecisionRules

REDUCTIONS = ("mean", "sum", "none")
SOFT_VARIANTS = ("nll", "reference")


@dataclass(frozen=True)
class WeightSchedule:
    """``start + (end - start) * progress ** power``; progress runs 0 -> 1 over the epochs."""

    start: float
    end: float
    power: float = 1.0

    def at(self, epoch: int, total_epochs: int) -> float:
        """The weight in 0-based ``epoch`` of ``total_epochs``: ``start`` first, ``end`` last
        (a run of a single epoch stays at ``start``)."""
        progress = min(epoch / max(total_epochs - 1, 1), 1.0)
        return self.start + (self.end - self.start) * progress**self.power


def _schedule(name: str, start: float, end: float | None, power: float) -> WeightSchedule:
    for label, value in ((name, start), (f"{name}_end", end if end is not None else start)):
        if not isinstance(value, Real) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{label} must be a finite number >= 0, got {value!r}")
    if not isinstance(power, Real) or not math.isfinite(power) or power <= 0:
        raise ValueError(f"{name}_power must be a finite number > 0, got {power!r}")
    return WeightSchedule(float(start), float(start if end is None else end), float(power))


class _TreeSupLoss(nn.Module):
    """The shared machinery: criterion, weights and their schedules, reduction, input checks."""

    def __init__(
        self,
        hierarchy: Hierarchy,
        criterion: nn.Module | None = None,
        tree_weight: float = 1.0,
        ce_weight: float = 1.0,
        *,
        node_score: str = "mean",
        reduction: str = "mean",
        tree_weight_end: float | None = None,
        tree_weight_power: float = 1.0,
        ce_weight_end: float | None = None,
        ce_weight_power: float = 1.0,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.rules = DecisionRules(hierarchy, node_score)
        self.reduction = reduction
        self.criterion = (
            nn.CrossEntropyLoss(reduction=reduction) if criterion is None else criterion
        )
        self.tree_schedule = _schedule(
            "tree_weight", tree_weight, tree_weight_end, tree_weight_power
        )
        self.ce_schedule = _schedule("ce_weight", ce_weight, ce_weight_end, ce_weight_power)
        self.tree_weight = self.tree_schedule.start
        self.ce_weight = self.ce_schedule.start
        self._inputs_checked = False

    def extra_repr(self) -> str:
        return (
            f"tree_weight={self.tree_weight:g}, ce_weight={self.ce_weight:g},"
            f" reduction={self.reduction!r}"
        )

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Move both weights along their schedules (0-based ``epoch``; the last gets ``end``)."""
        if not (isinstance(total_epochs, int) and total_epochs >= 1):
            raise ValueError(f"total_epochs must be an int >= 1, got {total_epochs!r}")
        if not (isinstance(epoch, int) and 0 <= epoch < total_epochs):
            raise ValueError(f"epoch must be an int in [0, {total_epochs}), got {epoch!r}")
        self.tree_weight = self.tree_schedule.at(epoch, total_epochs)
        self.ce_weight = self.ce_schedule.at(epoch, total_epochs)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """``ce_weight * criterion(logits, target) + tree_weight * tree term``, reduced.

        ``target`` holds class indices (B,) or class probabilities (B, C) (mixup, smoothing).
        """
        self._check_inputs(logits, target)
        tree = self.tree_loss(logits, target)
        if self.reduction == "mean":
            tree = tree.mean()
        elif self.reduction == "sum":
            tree = tree.sum()
        ce = self.criterion(logits, target)
        if ce.shape != tree.shape:
            raise ValueError(
                f"criterion returned shape {tuple(ce.shape)} but reduction={self.reduction!r}"
                f" gives {tuple(tree.shape)}: give the criterion the same reduction"
            )
        return self.ce_weight * ce + self.tree_weight * tree

    def tree_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """(B,) the unweighted, unreduced tree term."""
        raise NotImplementedError

    def _check_inputs(self, logits: Tensor, target: Tensor) -> None:
        """Shapes every call; on the first call only, that the logits are not normalised.

        Every row of NBDT's output (and of any softmax or log_softmax) is a normalised
        distribution: logsumexp 0 for log-probabilities, sum 1 for probabilities. Raw logits
        meet that by accident with probability ~0, so the test is reliable; it runs once because
        feeding NBDT's output is a wiring mistake that the first batch shows, and reading the
        result would cost a host-device synchronisation on every training step.
        """
        if not isinstance(logits, Tensor) or logits.dim() != 2:
            raise ValueError("logits must be a (batch, classes) tensor of the network's logits")
        if not isinstance(target, Tensor) or target.shape not in (logits.shape, logits.shape[:1]):
            raise ValueError(
                f"target must be class indices of shape ({logits.shape[0]},) or class"
                f" probabilities of shape {tuple(logits.shape)}"
            )
        if target.shape == logits.shape and not target.is_floating_point():
            raise ValueError("target of shape (batch, classes) must hold float probabilities")
        if target.dim() == 1 and target.numel():
            self._check_labels(target, logits.shape[1])
        if self._inputs_checked or logits.shape[0] == 0:  # an empty batch shows nothing
            return
        with torch.no_grad():
            x = logits.detach().float()
            tol = 1e-3
            log_probs = bool((x.logsumexp(1).abs() < tol).all())
            probs = bool((x >= 0).all() and ((x.sum(1) - 1).abs() < tol).all())
        if log_probs or probs:
            kind = "log-probabilities" if log_probs else "probabilities"
            raise ValueError(
                f"{type(self).__name__} got {kind} (every row is normalised, as NBDT's output"
                " is), not logits: pass the network's raw logits (NBDT.logits(x), or the timm"
                " model's output)"
            )
        self._inputs_checked = True

    @staticmethod
    def _check_labels(target: Tensor, num_classes: int) -> None:
        """Class indices in [0, num_classes): on the CPU two reductions over the batch; on an
        accelerator an asynchronous device assertion, so no step waits for the device."""
        if target.device.type != "cpu":
            inside = ((target >= 0) & (target < num_classes)).all()
            torch._assert_async(inside, f"a label is outside [0, {num_classes})")
            return
        low, high = target.aminmax()
        if low < 0 or high >= num_classes:
            label = int(low) if low < 0 else int(high)
            raise ValueError(
                f"label {label} is out of range: the hierarchy has {num_classes} classes"
                f" (labels 0..{num_classes - 1})"
            )


class SoftTreeSupLoss(_TreeSupLoss):
    """Soft tree supervision: the label's negative log-likelihood under soft inference.

    ``variant="reference"`` instead applies cross-entropy to the soft-inference probabilities as
    if they were logits, as the reference implementation did (a softmax of probabilities: its
    gradient vanishes as the tree grows confident, and it never reaches 0).
    """

    def __init__(
        self,
        hierarchy: Hierarchy,
        criterion: nn.Module | None = None,
        tree_weight: float = 1.0,
        ce_weight: float = 1.0,
        *,
        variant: str = "nll",
        **kwargs: Any,
    ) -> None:
        if variant not in SOFT_VARIANTS:
            raise ValueError(f"variant must be one of {SOFT_VARIANTS}, got {variant!r}")
        super().__init__(hierarchy, criterion, tree_weight, ce_weight, **kwargs)
        self.variant = variant

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, " + super().extra_repr()

    def tree_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.variant == "reference":
            probs = self.rules.soft(logits).exp()
            return F.cross_entropy(probs, target, reduction="none")
        if target.dim() == 2:
            return -(target * self.rules.soft(logits)).sum(1)
        return -self.rules.path_log_probs(logits, target).sum(1)


class HardTreeSupLoss(_TreeSupLoss):
    """Hard tree supervision: the mean, over the inner nodes on the label's path, of the
    cross-entropy among that node's children (each node's decision trained on its own)."""

    def tree_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.dim() == 2:
            per_class = self.rules.soft(logits) / self.rules.path_length
            return -(target * per_class).sum(1)
        steps = self.rules.path_log_probs(logits, target)
        return -steps.sum(1) / self.rules.path_length[target]


# The tree-supervision losses by name (nbdt-train's --loss).
LOSSES: dict[str, type[_TreeSupLoss]] = {"soft": SoftTreeSupLoss, "hard": HardTreeSupLoss}


class DecisionDistillLoss(nn.Module):
    """A loss that keeps a student's decisions those of a teacher (compression).

    ``(1 - share) * loss(logits, target) + share * T**2 * KL``, where KL is, per sample, the mean
    over the inner nodes of KL(teacher's distribution over the node's children || the
    student's), both at temperature ``T`` (logits divided by T; Hinton et al.'s T**2 keeps the
    gradient's scale). It trains every node's decision, not only those on the label's path: a
    pruned network then takes the same branches as the model it came from, mistakes included.
    ``share`` 1 learns the teacher's decisions alone (the labels are not read).
    """

    def __init__(
        self, loss: nn.Module, rules: DecisionRules, share: float = 0.5, temperature: float = 1.0
    ) -> None:
        super().__init__()
        if not 0 <= share <= 1 or not temperature > 0:
            raise ValueError(
                f"need 0 <= share <= 1 and temperature > 0, got {share}, {temperature}"
            )
        self.loss, self.rules = loss, rules
        self.share, self.temperature = float(share), float(temperature)

    def forward(self, logits: Tensor, target: Tensor, teacher_logits: Tensor) -> Tensor:
        """The mix of the wrapped loss of ``(logits, target)`` and the decision KL, batch mean."""
        kl = self.decision_kl(logits, teacher_logits)
        if self.share == 1:
            return kl
        return (1 - self.share) * self.loss(logits, target) + self.share * kl

    def decision_kl(self, logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """The batch mean of the per-sample mean over nodes of the children's KL, times T**2."""
        t = self.temperature
        student = self.rules.node_log_probs(logits / t)
        with torch.no_grad():
            teacher = self.rules.node_log_probs(teacher_logits.detach() / t)
        slot = torch.isfinite(teacher)  # padding slots are -inf for both
        gap = teacher.masked_fill(~slot, 0) - student.masked_fill(~slot, 0)
        terms = teacher.exp() * gap
        return terms.sum(2).mean(1).mean() * t * t
