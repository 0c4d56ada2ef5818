"""Where in the image each decision was made: a Grad-CAM-family map of every path step's decision
margin (the child taken against its runner-up), the evidence ``explain(evidence=True)``
attaches to each step (the map, and with node examples the training images behind it), and the
margins themselves, which the deletion test (:mod:`nbdt.evidence.faithfulness`) measures.

Methods: :data:`CAM_METHODS` is the one table of them, each entry a class of the ``grad-cam``
package (pytorch-grad-cam) or a small class of your own in its style. Its CAM classes take one
target callable per batch row and run one backward for the whole batch. Cost: the backbone runs
once per image up to the chosen layer, whose output is then detached and repeated once per path
step, so only the layers after it run on the (image, step) rows, and one backward over them gives
every step's gradient.

``model`` arguments are :class:`nbdt.NBDT` instances, typed as modules: NBDT's own methods
call this module, so it sits below :mod:`nbdt.model` and does not import it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nbdt.evidence.examples import NodeExamples
from nbdt.heads import logits_and_features, network_device
from nbdt.networks import eval_mode

# name -> the CAM class that makes the map: the name of a class of the ``grad-cam`` package
# (imported when used; grad-cam is an optional extra) or a class of your own in its style (a
# ``pytorch_grad_cam.base_cam.BaseCAM`` subclass overriding ``get_cam_weights`` or
# ``get_cam_image``). The one table of methods: ``decision_saliency``, ``explain(evidence=True)``
# and ``nbdt-explain --method`` all read it, so a new method is one entry here. The built-in ones
# are the gradient-based CAMs, which read only activations and gradients (Score-CAM and
# Ablation-CAM would rerun the network once per channel).
CAM_METHODS: dict[str, str | type] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcamelementwise": "GradCAMElementWise",
}

CAM_ALIASES: dict[str, str] = {"gradcam-elementwise": "gradcamelementwise"}

"""Other spellings of :data:`CAM_METHODS` keys (nbdt's former ones), accepted everywhere."""


def method_name(method: str) -> str:
    """The :data:`CAM_METHODS` key of a method name as grad-cam spells it (any case) or a
    spelling of :data:`CAM_ALIASES`; other names come back as given (and fail their check)."""
    if method in CAM_METHODS:
        return method
    lowered = method.lower()
    return CAM_ALIASES.get(lowered, lowered if lowered in CAM_METHODS else method)


DEFAULT_METHOD = "hirescam"

"""The CAM method of ``explain(..., evidence=True)`` and the CLIs (see the README's numbers)."""


_ROWS_PER_CHUNK = 256  # (image, step) rows per CAM call: bounds the activations kept in memory


_MIN_SIDE = 7  # the coarsest map chosen when the final one is 1x1


_auto_layers: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()
_checked_layers: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------- saliency
def cam_class(method: str) -> type:
    """The CAM class of ``method``, a key of :data:`CAM_METHODS` (a ValueError naming the keys
    otherwise; an ImportError naming the extra when grad-cam is missing)."""
    method = method_name(method)
    if method not in CAM_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, CAM_METHODS))}, got {method!r}"
        )
    made_by = CAM_METHODS[method]
    if not isinstance(made_by, str):
        return made_by
    try:
        import pytorch_grad_cam
    except ImportError:
        raise ImportError("grad-cam is missing: pip install 'nbdt[evidence]'") from None
    return getattr(pytorch_grad_cam, made_by)


def find_layer(model: nn.Module, layer: str | nn.Module | None = None) -> tuple[str, nn.Module]:
    """The backbone layer whose output the saliency maps explain, as (dotted name, module).

    ``layer`` is a module of ``model.model`` or its dotted name; by default the module whose output
    is ``forward_features``' last feature map (for models without ``forward_features``, the last
    module with a 4-d output; where that map is 1x1, the last stage output of at least 7x7), found
    with forward hooks on one dry run and remembered per backbone.
    Token maps (B, tokens, C) are read as a grid; with class-token pooling (ViT), the output of
    the last block but one. The layer's output must alone feed the rest of the network (a block or
    stage output, not a branch inside a residual block).
    """
    backbone = model.model
    modules = dict(backbone.named_modules())
    if isinstance(layer, nn.Module):
        name = next((n for n, m in modules.items() if m is layer and n), None)
        if name is None:
            raise ValueError("layer: the module given is not part of this model's backbone")
        return name, layer
    if isinstance(layer, str):
        if layer not in modules or not layer:
            close = [n for n in modules if n and n.split(".")[0] == layer.split(".")[0]]
            hint = f" (e.g. {', '.join(close[-3:])})" if close else ""
            raise ValueError(f"layer={layer!r}: the model has no module of that name{hint}")
        _check_spatial(model, layer, modules[layer])
        return layer, modules[layer]
    if layer is not None:
        raise TypeError(f"layer must be a module, a dotted name or None, got {type(layer)}")
    if backbone not in _auto_layers:
        _auto_layers[backbone] = _detect_layer(model)
    name = _auto_layers[backbone]
    return name, modules[name]


def _check_spatial(model: nn.Module, name: str, module: nn.Module) -> None:
    """Refuse a named layer whose output is no map to explain (a head, a pooling, a norm's
    vector): one dry run of a zero input, remembered per module."""
    if _checked_layers.get(module):
        return
    outputs, _ = _dry_run(model, [(name, module)], full=True)
    out = outputs[-1][1] if outputs else None
    if isinstance(out, Tensor) and (
        (out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1)
        or _token_grid(model.model, out) is not None
    ):
        _checked_layers[module] = True
        return
    shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
    try:
        default, _ = find_layer(model)
        hint = f" such as {default.split('.')[0]} (the default here: {default})"
    except ValueError:  # no spatial map anywhere: find_layer(model) says so on its own
        hint = ""
    raise ValueError(
        f"layer={name!r}: its output is {shape}, not a spatial map: pass a block or stage output"
        + hint
    )


def _dry_run(
    model: nn.Module, named: Sequence[tuple[str, nn.Module]], *, full: bool = False
) -> tuple[list[tuple[str, Any]], Tensor | None]:
    """One eval-mode forward of a zero input of the model's input size, with the outputs of the
    ``named`` modules in call order, and ``forward_features``' output where the backbone has it
    (``full``: the whole network, so that a head's modules run too)."""
    backbone = model.model
    channels, height, width = model.data_config["input_size"]
    device, dtype = network_device(backbone)
    sample = torch.zeros(1, channels, height, width, device=device, dtype=dtype)
    outputs: list[tuple[str, Any]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _a, out, name=name: outputs.append((name, out)))
        for name, module in named
    ]
    training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            final = None
            if hasattr(backbone, "forward_features") and not full:
                final = backbone.forward_features(sample)
            else:
                backbone(sample)
    finally:
        backbone.train(training)
        for hook in hooks:
            hook.remove()
    return outputs, final


def _detect_layer(model: nn.Module) -> str:
    """Dry run: the last module whose output is the backbone's final spatial map."""
    backbone = model.model
    named = [(n, m) for n, m in backbone.named_modules() if n]
    outputs, final = _dry_run(model, named)
    tensors = [(n, o) for n, o in outputs if isinstance(o, Tensor)]
    if final is None:
        names = [n for n, o in tensors if o.dim() == 4 and o.shape[-1] * o.shape[-2] > 1]
        shape = tuple(tensors[-1][1].shape) if tensors else ()
    else:
        shape = tuple(final.shape)
        spatial = _token_grid(backbone, final) is not None or (
            final.dim() == 4 and final.shape[-1] * final.shape[-2] > 1
        )
        same = [n for n, o in tensors if o is final] or [
            n for n, o in tensors if tuple(o.shape) == shape
        ]
        names = same if spatial else []
        if not spatial and final.dim() == 4:
            # A 1x1 final map (a small input through a deep network): the last stage or block
            # output (a child of the backbone or of a Sequential, so its output alone feeds the
            # rest) of at least 7x7, the resolution of a 224-px ImageNet CNN's last map; coarser
            # maps failed the deletion test on 28-px Fashion-MNIST (scripts/bench_evidence.py).
            parents = {n for n, m in backbone.named_modules() if isinstance(m, nn.Sequential)}
            stages = [
                (n, o)
                for n, o in tensors
                if o.dim() == 4 and ("." not in n or n.rsplit(".", 1)[0] in parents)
            ]
            names = [n for n, o in stages if min(o.shape[-2:]) >= _MIN_SIDE]
        if names and final.dim() == 3 and getattr(backbone, "global_pool", None) == "token":
            # Class-token pooling reads only the class token of the last map: explain the
            # tokens entering the last block (the previous block's output) instead.
            blocks = getattr(backbone, "blocks", None)
            if isinstance(blocks, nn.Sequential) and len(blocks) > 1:
                names = [f"blocks.{len(blocks) - 2}"]
    if not names:
        raise ValueError(
            f"the model has no spatial feature map to explain (its features are shaped {shape}):"
            " pass layer=NAME, a module whose output is (B, C, H, W) or (B, tokens, C)"
        )
    return names[-1]


def _token_grid(backbone: nn.Module, tokens: Tensor) -> tuple[int, int, int] | None:
    """(prefix tokens, grid height, grid width) of a (B, tokens, C) map, or None."""
    if tokens.dim() != 3:
        return None
    prefix = int(getattr(backbone, "num_prefix_tokens", 0) or 0)
    count = tokens.shape[1] - prefix
    grid = getattr(getattr(backbone, "patch_embed", None), "grid_size", None)
    if grid is not None and grid[0] * grid[1] == count:
        return prefix, int(grid[0]), int(grid[1])
    side = int(round(count**0.5))
    return (prefix, side, side) if side > 1 and side * side == count else None


class _TokensToMap:
    """grad-cam reshape transform: a (B, tokens, C) map to (B, C, H, W); others pass as they are."""

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone

    def __call__(self, tensor: Tensor) -> Tensor:
        if tensor.dim() != 3:
            return tensor
        grid = _token_grid(self.backbone, tensor)
        if grid is None:
            raise ValueError(
                f"layer: its tokens {tuple(tensor.shape)} form no square grid; pass another layer="
            )
        prefix, height, width = grid
        patches = tensor[:, prefix:].reshape(tensor.shape[0], height, width, tensor.shape[2])
        return patches.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class _Steps:
    """Per (image, step) row: the node, the child taken, the runner-up and whether it is real."""

    node: Tensor
    taken: Tensor
    runner_up: Tensor
    valid: Tensor


def _own_steps(model: nn.Module, logits: Tensor, depth: int) -> _Steps:
    """The model's own path (what ``explain`` reports) for rows of ``depth`` copies per image."""
    rules = model.rules
    with torch.no_grad():
        if model.mode == "soft":
            predicted = rules.soft(logits).argmax(1)
        else:
            predicted = rules.hard(logits)
        step = torch.arange(logits.shape[0], device=logits.device) % depth
        node = rules.path_node[predicted, step]
        taken = rules.path_slot[predicted, step]
        valid = step < rules.path_length[predicted]
        log_probs = rules.node_log_probs(logits)[torch.arange(len(node)), node]  # (R, K)
        runner_up = log_probs.scatter(1, taken[:, None], float("-inf")).argmax(1)
    return _Steps(node, taken, runner_up, valid)


def _given_steps(model: nn.Module, explanations: Sequence[Any], depth: int) -> _Steps:
    """Index tensors of the steps of explanations (anything with ``.path`` of Steps)."""
    inner = {node.id: i for i, node in enumerate(model.hierarchy.inner_nodes)}
    h = model.hierarchy
    rows = []
    for exp in explanations:
        path = list(getattr(exp, "path", ()))
        if len(path) > depth:
            raise ValueError("explanations: a path is longer than this hierarchy is deep")
        for step in path:
            if step.node_id not in inner:
                raise ValueError(f"explanations: node {step.node_id!r} is not in this hierarchy")
            children = h[step.node_id].children
            if step.child_id not in children or step.runner_up_id not in children:
                raise ValueError(
                    f"explanations: {step.child_id!r} / {step.runner_up_id!r} are not children"
                    f" of {step.node_id!r} in this hierarchy"
                )
            rows.append(
                (
                    inner[step.node_id],
                    children.index(step.child_id),
                    children.index(step.runner_up_id),
                    1,
                )
            )
        rows.extend([(0, 0, 1, 0)] * (depth - len(path)))
    table = torch.tensor(rows, dtype=torch.long).reshape(-1, 4)
    return _Steps(table[:, 0], table[:, 1], table[:, 2], table[:, 3].bool())


def _step_margins(model: nn.Module, logits: Tensor, steps: _Steps) -> Tensor:
    """(R,) score(child taken) - score(runner-up) at each row's node, 0 on padding rows.

    A difference of the node's log-probabilities: the node's log-softmax subtracts one
    normaliser from both, so it equals the difference of the rule's child scores.
    """
    log_probs = model.rules.node_log_probs(logits)
    rows = torch.arange(logits.shape[0], device=logits.device)
    node = steps.node.to(logits.device)
    margin = (
        log_probs[rows, node, steps.taken.to(logits.device)]
        - log_probs[rows, node, steps.runner_up.to(logits.device)]
    )
    return margin * steps.valid.to(logits.device)


class _RowTarget:
    """grad-cam target: the wrapped network already returns one margin per row."""

    def __call__(self, margin: Tensor) -> Tensor:
        return margin


class _StepMargins(nn.Module):
    """The backbone with the layer's output repeated ``depth`` times per image (detached, so
    nothing before the layer enters the backward); returns each row's decision margin."""

    def __init__(self, model: nn.Module, layer: nn.Module, depth: int, steps: _Steps | None):
        super().__init__()
        self.nbdt = model
        self.depth = depth
        self.steps = steps
        self.last_steps = steps
        self._hook = layer.register_forward_hook(self._repeat)

    def _repeat(self, _module: nn.Module, _args: Any, out: Any) -> Tensor:
        if not isinstance(out, Tensor):
            raise ValueError("layer: its output is not a tensor; pick another layer")
        return out.detach().requires_grad_(True).repeat_interleave(self.depth, 0)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.nbdt.model(x)
        self.last_steps = self.steps or _own_steps(self.nbdt, logits, self.depth)
        return _step_margins(self.nbdt, logits, self.last_steps)

    def release(self) -> None:
        self._hook.remove()


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients (none computed, none lost), eval mode; everything restored."""
    params = list(model.parameters())
    state = [(p.requires_grad, p.grad) for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for p, (flag, grad) in zip(params, state, strict=True):
            p.requires_grad_(flag)
            p.grad = grad


def decision_saliency(
    model: nn.Module,
    batch: Tensor,
    explanations: Sequence[Any] | None = None,
    *,
    method: str = DEFAULT_METHOD,
    layer: str | nn.Module | None = None,
) -> list[list[np.ndarray]]:
    """Per image, per step of its path: an (H, W) float32 map in [0, 1] at the batch's H, W;
    all zeros where the step has no localised evidence (see :func:`localised`).

    A map shows where the image pushes the step's node towards the child taken rather than the
    runner-up: the CAM (``method``, a key of :data:`CAM_METHODS`) of the decision margin
    ``score(child) - score(runner-up)`` under the model's node score, at ``layer`` (see
    :func:`find_layer`). The steps are those of ``explanations`` (one per image, e.g. from
    ``model.explain``) or, when None, of the model's own prediction. One forward pass per image
    up to the layer and one backward over the layers after it, for all steps at once.
    """
    make_cam = cam_class(method)
    if not isinstance(batch, Tensor) or batch.dim() != 4 or not batch.is_floating_point():
        raise ValueError("batch must be a preprocessed float (B, C, H, W) tensor")
    if explanations is not None and len(explanations) != batch.shape[0]:
        raise ValueError(f"explanations: {len(explanations)} for a batch of {batch.shape[0]}")
    _, module = find_layer(model, layer)
    depth = model.rules.max_depth
    steps = None if explanations is None else _given_steps(model, explanations, depth)
    per_chunk = max(1, _ROWS_PER_CHUNK // depth)
    maps: list[np.ndarray] = []
    valid: list[Tensor] = []
    with _frozen(model):
        for start in range(0, batch.shape[0], per_chunk):
            x = batch[start : start + per_chunk].clone()
            rows = slice(start * depth, (start + x.shape[0]) * depth)
            chunk_steps = (
                None
                if steps is None
                else _Steps(
                    steps.node[rows], steps.taken[rows], steps.runner_up[rows], steps.valid[rows]
                )
            )
            wrapper = _StepMargins(model, module, depth, chunk_steps)
            cam = make_cam(wrapper, [module], reshape_transform=_TokensToMap(model.model))
            raw = _record_raw_maps(cam)
            try:
                chunk = _run_cam(cam, x, depth)
                chunk[~localised(raw[-1])] = 0  # no localised evidence: an empty map
                maps.append(chunk)
                valid.append(wrapper.last_steps.valid.cpu())
            finally:
                cam.activations_and_grads.release()
                wrapper.release()
    flat = np.concatenate(maps).astype(np.float32, copy=False)
    mask = torch.cat(valid).reshape(-1, depth).tolist()
    return [
        [flat[b * depth + d] for d in range(depth) if mask[b][d]] for b in range(batch.shape[0])
    ]


# A raw map's positive part must stand out by this share of its largest magnitude to be shown:
# below it, grad-cam's min-max scaling would blow noise up into a bright spot.
LOCALISED_SHARE = 0.05


def localised(raw: np.ndarray) -> np.ndarray:
    """(N,) whether each raw CAM map of (N, h, w) (before grad-cam's ReLU and scaling) has
    localised evidence: its positive part varies over the map by at least
    :data:`LOCALISED_SHARE` of the map's largest absolute value. A map that is flat (all values
    alike), all negative, or zero has none; scaled to [0, 1] it would show noise as a hot spot."""
    raw = np.asarray(raw, dtype=np.float64).reshape(len(raw), -1)
    positive = np.maximum(raw, 0)
    spread = positive.max(1) - positive.min(1)
    magnitude = np.abs(raw).max(1)
    return (spread > LOCALISED_SHARE * magnitude) & (magnitude > 0)


def _record_raw_maps(cam: Any) -> list[np.ndarray]:
    """A list that receives the CAM's raw (N, h, w) maps, as ``get_cam_image`` makes them."""
    raw: list[np.ndarray] = []
    make = cam.get_cam_image

    def recording(*args: Any, **kwargs: Any) -> np.ndarray:
        raw.append(make(*args, **kwargs))
        return raw[-1]

    cam.get_cam_image = recording
    return raw


def _run_cam(cam: Any, x: Tensor, depth: int) -> np.ndarray:
    """The CAM call; a layer inside a residual branch cannot be repeated alone (the repeat fails
    on mismatched sizes, or, for a one-image batch, no gradient reaches the layer): say so."""
    try:
        return cam(x, targets=[_RowTarget()] * (x.shape[0] * depth))
    except (RuntimeError, TypeError) as e:
        residual = ("size of tensor", "must match") if isinstance(e, RuntimeError) else ("None",)
        if not any(words in str(e) for words in residual):
            raise
        raise ValueError(
            "layer: the network combines this layer's output with other tensors (a residual"
            " branch?): pass layer= a module whose output alone feeds the rest, e.g. a block"
        ) from None


def check_evidence_options(
    model: nn.Module, method: str | None, layer: str | nn.Module | None, examples: Any
) -> str:
    """Check ``explain``'s evidence options before any work; returns the method to use."""
    method = DEFAULT_METHOD if method is None else method_name(method)
    cam_class(method)
    find_layer(model, layer)
    if examples is not None:
        if not isinstance(examples, NodeExamples):
            raise TypeError(
                f"examples must be a NodeExamples (nbdt.evidence.examples.node_examples or"
                f" NodeExamples.load), got {type(examples).__name__}"
            )
        examples.check(model.hierarchy, source="examples")
    return method


def attach_evidence(
    model: nn.Module,
    batch: Tensor,
    explanations: Sequence[Any],
    *,
    saliency: bool = True,
    method: str = DEFAULT_METHOD,
    layer: str | nn.Module | None = None,
    examples: NodeExamples | None = None,
) -> list[Any]:
    """The explanations of ``batch`` with evidence on every step: the ``saliency`` map (one
    forward and one batched backward for all steps, :func:`decision_saliency`) and, with
    ``examples``, both children's representative images and the nearest examples images (by the
    pooled features of one more forward pass)."""
    maps = (
        decision_saliency(model, batch, explanations, method=method, layer=layer)
        if saliency
        else None
    )
    features = None
    if examples is not None:
        with torch.no_grad():
            features = logits_and_features(model.model, batch)[1].float().cpu().numpy()
    out = []
    for b, explanation in enumerate(explanations):
        steps = []
        for d, step in enumerate(explanation.path):
            changes: dict[str, Any] = {}
            if maps is not None:
                changes["saliency"] = maps[b][d]
            if examples is not None and features is not None:
                changes["child_examples"] = tuple(examples.examples(step.node_id, step.child_id))
                changes["runner_up_examples"] = tuple(
                    examples.examples(step.node_id, step.runner_up_id)
                )
                changes["nearest"] = tuple(
                    examples.nearest(features[b], step.node_id, step.child_id, examples.k)
                )
            steps.append(dataclasses.replace(step, **changes))
        out.append(dataclasses.replace(explanation, path=tuple(steps)))
    return out


def decision_margins(model: nn.Module, batch: Tensor, explanations: Sequence[Any]) -> Tensor:
    """(B, max_depth) margins score(child) - score(runner-up) of the explanations' steps on
    ``batch`` (NaN past each path's end): what the deletion test measures."""
    if len(explanations) != batch.shape[0]:
        raise ValueError(f"explanations: {len(explanations)} for a batch of {batch.shape[0]}")
    depth = model.rules.max_depth
    steps = _given_steps(model, explanations, depth)
    with torch.no_grad():
        logits = torch.cat([model.model(part) for part in batch.split(64)])
        logits = logits.repeat_interleave(depth, 0)
        margins = _step_margins(model, logits, steps).reshape(-1, depth)
    return margins.masked_fill(~steps.valid.reshape(-1, depth).to(margins.device), float("nan"))
