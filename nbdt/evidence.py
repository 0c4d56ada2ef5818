"""Evidence for every decision: where in the image it was made, and which training images back it.

``decision_saliency`` maps, for every step of a decision path, the image regions that push the
node towards the child taken rather than its runner-up (a Grad-CAM-family map of the decision
margin). ``node_examples`` makes one streaming pass over a dataset and keeps, for every node and
child, the images it sends there most confidently (representative) and its typical mistakes
(confused), plus a bounded sample of pooled features for nearest-neighbour search.

Library: the CAM methods come from the ``grad-cam`` package (pytorch-grad-cam). Its CAM classes
take one target callable per batch row and run one backward for the whole batch, and offer
Grad-CAM, Grad-CAM++, XGrad-CAM, HiRes-CAM, Layer-CAM and more behind one interface; Captum's
``LayerGradCam`` is Grad-CAM only. Cost: the backbone runs once per image up to the chosen
layer, whose output is then detached and repeated once per path step, so only the layers after
it (for a CNN: pooling and the head) run on the (image, step) rows, and one backward over them
gives every step's gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import weakref
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbdt._io import atomic_path
from nbdt._messages import one_line
from nbdt.explanation import Example
from nbdt.hierarchy import Hierarchy
from nbdt.model import NBDT, eval_mode

# name -> pytorch_grad_cam class: the gradient-based CAMs, which read only activations and
# gradients (Score-CAM and Ablation-CAM would rerun the network once per channel).
CAM_METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "hirescam": "HiResCAM",
    "layercam": "LayerCAM",
    "eigengradcam": "EigenGradCAM",
    "gradcam-elementwise": "GradCAMElementWise",
}
DEFAULT_METHOD = "hirescam"
"""The CAM method of ``explain(..., evidence=True)`` and the CLIs (see the README's numbers)."""
FORMAT_NAME = "nbdt-node-examples"
FORMAT_VERSION = 1
THUMBNAIL_SIZE = 64
_ROWS_PER_CHUNK = 256  # (image, step) rows per CAM call: bounds the activations kept in memory
_SEARCH_CHUNK = 65536  # feature rows per similarity product in nearest-neighbour search
_MIN_SIDE = 7  # the coarsest map chosen when the final one is 1x1
_HASH = 2654435761  # Knuth's multiplicative hash: a bijection of indices modulo 2**32

_auto_layers: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


# ------------------------------------------------------------------------------- saliency
def _grad_cam() -> Any:
    try:
        import pytorch_grad_cam
    except ImportError:
        raise ImportError("grad-cam is missing: pip install 'nbdt[evidence]'") from None
    return pytorch_grad_cam


def find_layer(model: NBDT, layer: str | nn.Module | None = None) -> tuple[str, nn.Module]:
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
        return layer, modules[layer]
    if layer is not None:
        raise TypeError(f"layer must be a module, a dotted name or None, got {type(layer)}")
    if backbone not in _auto_layers:
        _auto_layers[backbone] = _detect_layer(model)
    name = _auto_layers[backbone]
    return name, modules[name]


def _detect_layer(model: NBDT) -> str:
    """Dry run: the last module whose output is the backbone's final spatial map."""
    backbone = model.model
    channels, height, width = model.data_config["input_size"]
    parameter = next(backbone.parameters(), None)
    sample = torch.zeros(1, channels, height, width)
    if parameter is not None:
        sample = sample.to(parameter.device, parameter.dtype)
    outputs: list[tuple[str, Any]] = []
    hooks = [
        module.register_forward_hook(lambda _m, _a, out, name=name: outputs.append((name, out)))
        for name, module in backbone.named_modules()
        if name
    ]
    training = backbone.training
    try:
        backbone.eval()
        with torch.no_grad():
            final = None
            if hasattr(backbone, "forward_features"):
                final = backbone.forward_features(sample)
            else:
                backbone(sample)
    finally:
        backbone.train(training)
        for hook in hooks:
            hook.remove()
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


def _own_steps(model: NBDT, logits: Tensor, depth: int) -> _Steps:
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


def _given_steps(model: NBDT, explanations: Sequence[Any], depth: int) -> _Steps:
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


def _step_margins(model: NBDT, logits: Tensor, steps: _Steps) -> Tensor:
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

    def __init__(self, model: NBDT, layer: nn.Module, depth: int, steps: _Steps | None):
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
    model: NBDT,
    batch: Tensor,
    explanations: Sequence[Any] | None = None,
    *,
    method: str = DEFAULT_METHOD,
    layer: str | nn.Module | None = None,
) -> list[list[np.ndarray]]:
    """Per image, per step of its path: an (H, W) float32 map in [0, 1] at the batch's H, W.

    A map shows where the image pushes the step's node towards the child taken rather than the
    runner-up: the CAM (``method``, a key of :data:`CAM_METHODS`) of the decision margin
    ``score(child) - score(runner-up)`` under the model's node score, at ``layer`` (see
    :func:`find_layer`). The steps are those of ``explanations`` (one per image, e.g. from
    ``model.explain``) or, when None, of the model's own prediction. One forward pass per image
    up to the layer and one backward over the layers after it, for all steps at once.
    """
    if method not in CAM_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, CAM_METHODS))}, got {method!r}"
        )
    if not isinstance(batch, Tensor) or batch.dim() != 4 or not batch.is_floating_point():
        raise ValueError("batch must be a preprocessed float (B, C, H, W) tensor")
    if explanations is not None and len(explanations) != batch.shape[0]:
        raise ValueError(f"explanations: {len(explanations)} for a batch of {batch.shape[0]}")
    cam_class = getattr(_grad_cam(), CAM_METHODS[method])
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
            cam = cam_class(wrapper, [module], reshape_transform=_TokensToMap(model.model))
            try:
                maps.append(_run_cam(cam, x, depth))
                valid.append(wrapper.last_steps.valid.cpu())
            finally:
                cam.activations_and_grads.release()
                wrapper.release()
    flat = np.concatenate(maps).astype(np.float32, copy=False)
    mask = torch.cat(valid).reshape(-1, depth).tolist()
    return [
        [flat[b * depth + d] for d in range(depth) if mask[b][d]] for b in range(batch.shape[0])
    ]


def _run_cam(cam: Any, x: Tensor, depth: int) -> np.ndarray:
    """The CAM call; a layer inside a residual branch cannot be repeated alone: say so."""
    try:
        return cam(x, targets=[_RowTarget()] * (x.shape[0] * depth))
    except RuntimeError as e:
        if "size of tensor" not in str(e) and "must match" not in str(e):
            raise
        raise ValueError(
            "layer: the network combines this layer's output with other tensors (a residual"
            " branch?): pass layer= a module whose output alone feeds the rest, e.g. a block"
        ) from None


def check_evidence_options(
    model: NBDT, method: str | None, layer: str | nn.Module | None, examples: Any
) -> str:
    """Check ``explain``'s evidence options before any work; returns the method to use."""
    method = DEFAULT_METHOD if method is None else method
    if method not in CAM_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, CAM_METHODS))}, got {method!r}"
        )
    _grad_cam()
    find_layer(model, layer)
    if examples is not None:
        if not isinstance(examples, NodeExamples):
            raise TypeError(
                f"examples must be a NodeExamples (nbdt.evidence.node_examples or"
                f" NodeExamples.load), got {type(examples).__name__}"
            )
        examples.check(model.hierarchy, source="examples")
    return method


def attach_evidence(
    model: NBDT,
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
            features = pooled_features(model, batch)[1].float().cpu().numpy()
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


def decision_margins(model: NBDT, batch: Tensor, explanations: Sequence[Any]) -> Tensor:
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


def pooled_features(model: NBDT, batch: Tensor) -> tuple[Tensor, Tensor]:
    """(logits (B, C), pooled features (B, D)) from one forward: the features are the input of
    the classifier (``get_classifier()``, else the last ``nn.Linear``), timm's pre-logits."""
    backbone = model.model
    get_classifier = getattr(backbone, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        head = next(
            (m for m in reversed(list(backbone.modules())) if isinstance(m, nn.Linear)), None
        )
    if head is None:
        raise ValueError("the model has no classifier layer whose input could serve as features")
    captured: list[Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    try:
        logits = backbone(batch)
    finally:
        hook.remove()
    return logits, captured[-1].flatten(1)


# ------------------------------------------------------------------------- node examples
KINDS = ("representative", "confused")


@dataclass(frozen=True, eq=False)
class NodeExamples:
    """The images behind every node's decisions, from one pass over a dataset.

    Arrays over inner nodes (``hierarchy.inner_nodes`` order, N), child slots (K) and ranks (k):
    ``index`` / ``klass`` (int64, -1 where a slot holds no image) and ``probability`` (float32,
    the branch probability of that child), each (2, N, K, k) for the two :data:`KINDS`.
    ``sample_*`` is a fixed-size sample of the dataset (the indices with the smallest hash, so any
    order of the data and any split across ranks pick the same ones) with pooled features
    (float16), true classes and ``sample_route`` (M, N): the child each node sends it to, for
    nearest-neighbour search. ``thumbnails`` maps every referenced dataset index to a PNG.
    """

    hierarchy: Hierarchy
    index: np.ndarray
    klass: np.ndarray
    probability: np.ndarray
    sample_index: np.ndarray
    sample_class: np.ndarray
    sample_route: np.ndarray
    sample_features: np.ndarray
    thumbnails: Mapping[int, bytes]

    @property
    def k(self) -> int:
        return int(self.index.shape[-1])

    def examples(self, node_id: str, child_id: str, kind: str = "representative") -> list[Example]:
        """A node's images of ``kind`` for one child, best first."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
        node, slot = self._slot(node_id, child_id)
        row = (KINDS.index(kind), node, slot)
        return [
            self._example(i, c, p)
            for i, c, p in zip(
                self.index[row].tolist(),
                self.klass[row].tolist(),
                self.probability[row].tolist(),
                strict=True,
            )
            if i >= 0
        ]

    def nearest(
        self, features: np.ndarray | Tensor, node_id: str, child_id: str, k: int = 8
    ) -> list[Example]:
        """The ``k`` sampled images most similar (cosine of pooled features) to ``features`` (D,)
        among those the node sends to ``child_id``. Exact search in chunks; past ~100k sampled
        images an approximate index (FAISS IVF-PQ or HNSW over the saved features) would do."""
        node, slot = self._slot(node_id, child_id)
        query = torch.as_tensor(np.asarray(features, dtype=np.float32)).flatten()
        if query.shape[0] != self.sample_features.shape[1]:
            raise ValueError(
                f"features: {query.shape[0]} values, the examples hold"
                f" {self.sample_features.shape[1]}"
            )
        query = F.normalize(query, dim=0)
        best = torch.empty(0)
        best_rows = torch.empty(0, dtype=torch.long)
        for start in range(0, len(self.sample_index), _SEARCH_CHUNK):
            bank = torch.from_numpy(self.sample_features[start : start + _SEARCH_CHUNK]).float()
            sims = F.normalize(bank, dim=1) @ query
            routed = torch.from_numpy(
                self.sample_route[start : start + _SEARCH_CHUNK, node] == slot
            )
            sims = sims.masked_fill(~routed, float("-inf"))
            scores = torch.cat([best, sims])
            rows = torch.cat([best_rows, torch.arange(start, start + len(sims))])
            top = scores.topk(min(k, len(scores)))
            best, best_rows = top.values, rows[top.indices]
        keep = torch.isfinite(best)
        return [
            self._example(int(self.sample_index[r]), int(self.sample_class[r]), s)
            for r, s in zip(best_rows[keep].tolist(), best[keep].tolist(), strict=True)
        ]

    def check(self, hierarchy: Hierarchy, source: str = "node examples") -> None:
        """Refuse examples made for other classes or another hierarchy (``source`` names them)."""
        if hierarchy.classes != self.hierarchy.classes:
            raise ValueError(
                f"{source}: examples of other classes ({', '.join(self.hierarchy.classes[:3])},"
                f" ...; this model has {', '.join(hierarchy.classes[:3])}, ...)"
            )
        if hierarchy != self.hierarchy:
            raise ValueError(f"{source}: examples of another hierarchy over the same classes")

    # ------------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write one .npz file atomically (plain arrays; loads without pickle)."""
        keys = sorted(self.thumbnails)
        blobs = [self.thumbnails[i] for i in keys]
        offsets = np.cumsum([0, *map(len, blobs)]).astype(np.int64)
        arrays = {
            "format": np.array(FORMAT_NAME),
            "version": np.array(FORMAT_VERSION),
            "hierarchy": np.array(json.dumps(self.hierarchy.to_node_link())),
            "thumbnail_index": np.array(keys, dtype=np.int64),
            "thumbnail_offsets": offsets,
            "thumbnail_bytes": np.frombuffer(b"".join(blobs), dtype=np.uint8),
            **{name: getattr(self, name) for name in _ARRAYS},
        }
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            np.savez(f, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], hierarchy: Hierarchy | None = None) -> NodeExamples:
        """Read a file written by :meth:`save`; with ``hierarchy``, refuse one made for another."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such node-examples file")
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != FORMAT_NAME or int(data["version"]) != FORMAT_VERSION:
                    raise ValueError(f"not format {FORMAT_NAME} version {FORMAT_VERSION}")
                tree = Hierarchy.from_node_link(json.loads(str(data["hierarchy"])))
                offsets = data["thumbnail_offsets"]
                blob = data["thumbnail_bytes"].tobytes()
                thumbs = {
                    int(i): blob[offsets[j] : offsets[j + 1]]
                    for j, i in enumerate(data["thumbnail_index"].tolist())
                }
                fields = {name: data[name] for name in _ARRAYS}
            examples = cls(tree, thumbnails=thumbs, **fields)
            examples._validate()
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError, OSError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path}: not a readable node-examples file ({one_line(e)})") from None
        if hierarchy is not None:
            examples.check(hierarchy, source=str(path))
        return examples

    # --------------------------------------------------------------------------- internals
    def _slot(self, node_id: str, child_id: str) -> tuple[int, int]:
        inner = [n.id for n in self.hierarchy.inner_nodes]
        if node_id not in inner:
            raise ValueError(f"node {node_id!r} is not an inner node of this hierarchy")
        children = self.hierarchy[node_id].children
        if child_id not in children:
            raise ValueError(f"{child_id!r} is not a child of {node_id!r}")
        return inner.index(node_id), children.index(child_id)

    def _example(self, index: int, class_index: int, score: float) -> Example:
        label = self.hierarchy.classes[class_index]
        return Example(index, class_index, label, float(score), self.thumbnails.get(index, b""))

    def _validate(self) -> None:
        """Shapes, dtypes and references agree with the hierarchy (a damaged file fails here)."""
        inner = self.hierarchy.inner_nodes
        n, c = len(inner), self.hierarchy.num_classes
        shape = self.index.shape
        if len(shape) != 4 or shape[:3] != (2, n, max(len(x.children) for x in inner)):
            raise ValueError(f"example tables of shape {shape} do not fit the hierarchy")
        if self.klass.shape != shape or self.probability.shape != shape:
            raise ValueError("example tables of different shapes")
        m = len(self.sample_index)
        if (
            self.sample_class.shape != (m,)
            or self.sample_route.shape != (m, n)
            or self.sample_features.ndim != 2
            or len(self.sample_features) != m
        ):
            raise ValueError("feature sample tables of inconsistent shapes")
        classes = np.concatenate([self.klass[self.index >= 0], self.sample_class])
        if classes.size and (classes.min() < 0 or classes.max() >= c):
            raise ValueError("class indices out of range")
        referenced = set(self.index[self.index >= 0].tolist()) | set(self.sample_index.tolist())
        if not referenced <= set(self.thumbnails):
            raise ValueError("thumbnails missing")


_ARRAYS = (
    "index",
    "klass",
    "probability",
    "sample_index",
    "sample_class",
    "sample_route",
    "sample_features",
)


def _top(scores: Tensor, index: Tensor, k: int) -> Tensor:
    """Positions (..., k) of the k best scores along the last axis: ties go to the smaller
    dataset index and every index counts once, so the choice depends on no order of arrival."""
    by_index = index.argsort(dim=-1, stable=True)
    ordered = index.gather(-1, by_index)
    repeated = torch.zeros_like(ordered, dtype=torch.bool)
    repeated[..., 1:] = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
    ranked = scores.gather(-1, by_index).masked_fill(repeated, float("-inf"))
    best = ranked.argsort(dim=-1, descending=True, stable=True)[..., :k]
    return by_index.gather(-1, best)


class _Collector:
    """The running selection of a pass: merged with every batch, O(nodes x children x k)."""

    def __init__(self, model: NBDT, k: int, sample: int):
        rules = model.rules
        self.model, self.k, self.sample = model, k, sample
        self.hierarchy = model.hierarchy
        n, kk, c = rules.num_nodes, rules.max_children, rules.num_classes
        # slot_of[c, i]: the child slot of inner node i whose leaves hold class c, else -1
        self.slot_of = torch.full((c, n), -1, dtype=torch.long)
        mask = rules.path_mask.cpu()
        classes = torch.arange(c)[:, None].expand_as(mask)[mask]
        self.slot_of[classes, rules.path_node.cpu()[mask]] = rules.path_slot.cpu()[mask]
        self.child_mask = rules.child_mask.cpu()
        self.score = torch.full((2, n, kk, k), float("-inf"))
        self.index = torch.full((2, n, kk, k), -1, dtype=torch.long)
        self.klass = torch.full((2, n, kk, k), -1, dtype=torch.long)
        self.sample_key = torch.empty(0, dtype=torch.float64)
        self.sample_index = torch.empty(0, dtype=torch.long)
        self.sample_class = torch.empty(0, dtype=torch.long)
        self.sample_route = torch.empty(0, n, dtype=torch.int16)
        self.sample_features: Tensor | None = None
        self.thumbnails: dict[int, bytes] = {}

    def update(self, images: Tensor, labels: Tensor, indices: Tensor) -> None:
        """Score one batch and merge it into the selection (no loop over samples or nodes)."""
        model, rules = self.model, self.model.rules
        device = next(model.parameters()).device
        x = _model_input(model, images).to(device)
        with torch.no_grad():
            logits, features = pooled_features(model, x)
            log_probs = rules.node_log_probs(logits).cpu()  # (B, N, K), padding -inf
        probs = log_probs.exp().float()
        slot = self.slot_of[labels][..., None]  # (B, N, 1)
        under = slot == torch.arange(probs.shape[-1])
        representative = probs.masked_fill(~under, float("-inf"))
        confused = probs.masked_fill(under | (slot < 0) | ~self.child_mask, float("-inf"))
        batch = torch.stack([representative, confused]).permute(0, 2, 3, 1)  # (2, N, K, B)
        shape = batch.shape
        scores = torch.cat([self.score, batch], -1)
        index = torch.cat([self.index, indices.expand(shape)], -1)
        klass = torch.cat([self.klass, labels.expand(shape)], -1)
        self._keep(scores, index, klass)
        self._keep_sample(
            indices, labels, log_probs.argmax(-1).to(torch.int16), features.float().cpu()
        )
        self._add_thumbnails(images, indices)

    def _keep(self, scores: Tensor, index: Tensor, klass: Tensor) -> None:
        chosen = _top(scores, index, self.k)
        self.score = scores.gather(-1, chosen)
        empty = self.score == float("-inf")
        self.index = index.gather(-1, chosen).masked_fill(empty, -1)
        self.klass = klass.gather(-1, chosen).masked_fill(empty, -1)

    def _keep_sample(self, index: Tensor, klass: Tensor, route: Tensor, features: Tensor) -> None:
        key = ((index * _HASH) % 2**32).double()
        keys = torch.cat([self.sample_key, key])
        indices = torch.cat([self.sample_index, index])
        old = self.sample_features if self.sample_features is not None else features[:0]
        chosen = _top(-keys, indices, min(self.sample, len(keys)))
        self.sample_key, self.sample_index = keys[chosen], indices[chosen]
        self.sample_class = torch.cat([self.sample_class, klass])[chosen]
        self.sample_route = torch.cat([self.sample_route, route])[chosen]
        self.sample_features = torch.cat([old, features.half()])[chosen]

    def referenced(self) -> Tensor:
        return torch.unique(torch.cat([self.index[self.index >= 0], self.sample_index]))

    def _add_thumbnails(self, images: Tensor, indices: Tensor) -> None:
        referenced = self.referenced()
        known = torch.tensor([i in self.thumbnails for i in indices.tolist()], dtype=torch.bool)
        new = torch.isin(indices, referenced) & ~known
        if new.any():
            pictures = _thumbnails(self.model, images[new])
            self.thumbnails.update(zip(indices[new].tolist(), pictures, strict=True))
        if len(self.thumbnails) > 2 * len(referenced):
            self.thumbnails = {i: self.thumbnails[i] for i in referenced.tolist()}

    def result(self) -> NodeExamples:
        keep = self.referenced().tolist()
        dim = 0 if self.sample_features is None else self.sample_features.shape[1]
        features = self.sample_features if self.sample_features is not None else torch.empty(0, dim)
        return NodeExamples(
            self.hierarchy,
            self.index.numpy(),
            self.klass.numpy(),
            self.score.clamp(min=0).numpy().astype(np.float32),
            self.sample_index.numpy(),
            self.sample_class.numpy(),
            self.sample_route.numpy(),
            features.half().numpy(),
            {i: self.thumbnails[i] for i in keep},
        )

    @classmethod
    def merge(cls, model: NBDT, parts: Sequence[NodeExamples], k: int, sample: int) -> NodeExamples:
        """Re-select from several results (ranks of one pass): equal to one pass over all."""
        merged = cls(model, k, sample)
        for part in parts:
            part.check(model.hierarchy, source="merge")
            index = torch.from_numpy(part.index)
            score = torch.from_numpy(part.probability).double().float()
            score = score.masked_fill(index < 0, float("-inf"))
            merged._keep(
                torch.cat([merged.score, score], -1),
                torch.cat([merged.index, index], -1),
                torch.cat([merged.klass, torch.from_numpy(part.klass)], -1),
            )
            merged._keep_sample(
                torch.from_numpy(part.sample_index),
                torch.from_numpy(part.sample_class),
                torch.from_numpy(part.sample_route),
                torch.from_numpy(part.sample_features).float(),
            )
            merged.thumbnails.update(part.thumbnails)
        return merged.result()


def _model_input(model: NBDT, images: Tensor) -> Tensor:
    """uint8 dataset images through the model's batch transform; float input as it is."""
    if images.dtype == torch.uint8:
        from nbdt.data import BatchTransform

        return BatchTransform(model.data_config)(images)
    if not images.is_floating_point():
        raise ValueError(
            f"images must be uint8 images or preprocessed float input, got {images.dtype}"
        )
    return images


def _thumbnails(model: NBDT, images: Tensor) -> list[bytes]:
    """PNG bytes of images scaled down to fit THUMBNAIL_SIZE px (float input is de-normalised)."""
    from PIL import Image

    if images.dtype == torch.uint8:
        pixels = images.float()
    else:
        mean = torch.tensor(model.data_config["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(model.data_config["std"]).view(1, -1, 1, 1)
        pixels = (images.detach().float().cpu() * std + mean) * 255
    height, width = pixels.shape[-2:]
    scale = THUMBNAIL_SIZE / max(height, width)
    if scale < 1:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixels = F.interpolate(pixels, size=size, mode="bilinear", antialias=True)
    array = pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for picture in array:
        buffer = io.BytesIO()
        Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture).save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


class _Indexed(torch.utils.data.Dataset):
    """A dataset whose items also carry their index."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, label = self.dataset[index][:2]
        return image, label, index


def _batches(
    data: Any, batch_size: int, num_workers: int, rank: int, world: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(images, labels, dataset indices) batches of a dataset (this rank's share) or of an
    iterable of (images, labels) or (images, labels, indices) batches."""
    if isinstance(data, torch.utils.data.Dataset):
        loader = torch.utils.data.DataLoader(
            _Indexed(data),
            batch_size=batch_size,
            sampler=list(range(rank, len(data), world)),
            num_workers=num_workers,
        )
        yield from loader
        return
    seen = 0
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise ValueError("data: batches must be (images, labels) or (images, labels, indices)")
        images, labels = batch[0], torch.as_tensor(batch[1])
        if len(batch) == 3:
            indices = torch.as_tensor(batch[2])
        else:
            indices = torch.arange(seen, seen + len(labels))
        seen += len(labels)
        yield images, labels, indices


def node_examples(
    model: NBDT,
    data: Any,
    k: int = 8,
    *,
    sample: int = 4096,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = False,
    distributed: bool = True,
) -> NodeExamples:
    """One streaming pass: for every inner node and child, the ``k`` representative images (true
    class under that child, sent there with the highest branch probability) and the ``k``
    confused ones (true class under another child of the node, sent to this one with the highest
    probability), plus a ``sample`` of pooled features for :meth:`NodeExamples.nearest`.

    ``data`` is a torch Dataset of (image, label) items (uint8 images as ``nbdt.data`` yields, or
    preprocessed float tensors; dataset indices are positions) or an iterable of
    (images, labels[, indices]) batches. Memory is O(nodes x children x k + sample) whatever the
    dataset's size; the result depends on no order of the data. Under torchrun each rank reads its
    share of a dataset and the ranks merge their selections (every rank gets the result); with
    ``distributed=False`` (one process calls this alone) this process reads all of it.
    """
    for name, value in (("k", k), ("sample", sample), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    import torch.distributed as dist

    distributed = (
        distributed and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    )
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    collector = _Collector(model, k, sample)
    with eval_mode(model):
        batches: Iterable[tuple[Tensor, Tensor, Tensor]] = _batches(
            data, batch_size, num_workers, rank, world
        )
        if progress:
            from tqdm import tqdm

            batches = tqdm(batches, desc="node examples", unit="batch")
        for images, labels, indices in batches:
            labels, indices = labels.long().cpu(), indices.long().cpu()
            if labels.dim() != 1 or len(labels) != len(images) or len(indices) != len(images):
                raise ValueError("data: every batch needs one label and one index per image")
            if len(labels) and (labels.min() < 0 or labels.max() >= model.hierarchy.num_classes):
                raise ValueError(
                    f"data: labels must be class indices in [0, {model.hierarchy.num_classes})"
                )
            collector.update(images, labels, indices)
    result = collector.result()
    if not distributed:
        return result
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, result)
    return merge_examples(model, parts, k=k, sample=sample)


def merge_examples(
    model: NBDT, parts: Sequence[NodeExamples], *, k: int | None = None, sample: int | None = None
) -> NodeExamples:
    """Merge the results of passes over disjoint parts of one dataset: the same as one pass."""
    if not parts:
        raise ValueError("merge_examples: nothing to merge")
    k = k or max(p.k for p in parts)
    sample = sample or max(len(p.sample_index) for p in parts)
    return _Collector.merge(model, parts, k, sample)


# ----------------------------------------------------------------------------- faithfulness
DELETIONS = ("salient", "shifted", "least")


def deletion_test(
    model: NBDT,
    batch: Tensor,
    explanations: Sequence[Any],
    maps: Sequence[Sequence[np.ndarray]],
    fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """How much each step's margin falls when a ``fraction`` of the pixels is blurred away.

    For every (image, step): the most salient pixels of its map ("salient"), the same mask moved
    by a random offset of a quarter to three quarters of each side, wrapping around, so of the
    same shape and area ("shifted"), and the least salient pixels ("least"). Returns, per
    deletion, the margin drops (original minus deleted) of all steps, images in order.
    """
    from torchvision.transforms.functional import gaussian_blur

    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}")
    height, width = batch.shape[-2:]
    side = max(3, (min(height, width) // 4) | 1)
    blurred = gaussian_blur(batch, [side, side], [side / 4, side / 4])
    image = torch.tensor([b for b, steps in enumerate(maps) for _ in steps], dtype=torch.long)
    step = torch.tensor([d for steps in maps for d in range(len(steps))], dtype=torch.long)
    if not len(image):
        return {name: np.empty(0, np.float32) for name in DELETIONS}
    saliency = torch.from_numpy(np.stack([m for steps in maps for m in steps])).flatten(1)
    count = max(1, round(fraction * height * width))
    salient = torch.zeros_like(saliency, dtype=torch.bool)
    salient.scatter_(1, saliency.topk(count, dim=1).indices, True)
    least = torch.zeros_like(salient).scatter_(
        1, saliency.topk(count, 1, largest=False).indices, True
    )
    generator = torch.Generator().manual_seed(seed)
    rows = salient.shape[0]
    shift_y = torch.randint(
        height // 4, max(height // 4 + 1, 3 * height // 4), (rows,), generator=generator
    )
    shift_x = torch.randint(
        width // 4, max(width // 4 + 1, 3 * width // 4), (rows,), generator=generator
    )
    ys = (torch.arange(height)[None, :] - shift_y[:, None]) % height  # (R, H) source rows
    xs = (torch.arange(width)[None, :] - shift_x[:, None]) % width
    grid = salient.view(rows, height, width)
    shifted = grid.gather(1, ys[:, :, None].expand(-1, -1, width)).gather(
        2, xs[:, None, :].expand(-1, height, -1)
    )
    masks = torch.stack(
        [salient.view(rows, 1, height, width), shifted[:, None], least.view(rows, 1, height, width)]
    )
    source = batch[image].cpu()
    deleted = torch.where(masks, blurred[image].cpu(), source)  # (3, R, C, H, W)
    rows_exp = [explanations[b] for b in image.tolist()]
    device = batch.device
    before = decision_margins(model, source.to(device), rows_exp)[torch.arange(rows), step]
    drops = {}
    for name, images in zip(DELETIONS, deleted, strict=True):
        after = decision_margins(model, images.to(device), rows_exp)[torch.arange(rows), step]
        drops[name] = (before - after).cpu().numpy().astype(np.float32)
    return drops
