"""Builders of class hierarchies: induced from classifier weights, from WordNet, or random.

Each builder only decides the tree's shape; one shared step then names every inner node with the
lowest WordNet hypernym common to all leaves under it, so every name is true. They return plain
:class:`~nbdt.tree.Tree` values; :meth:`nbdt.hierarchy.Hierarchy.build` and its class methods wrap
them as the Hierarchy users meet.
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from nbdt import wordnet as wn
from nbdt.classes import DatasetClasses, check_unique, is_wordnet_id
from nbdt.labels import named
from nbdt.tree import Node, Tree

LINKAGES = ("ward", "complete", "average", "single")
# Why nbdt-train and nbdt-hierarchy refuse to induce a tree from an untrained head.
RANDOM_HEAD = "a randomly initialised head gives a meaningless tree"
UNTRAINED_HEAD = (
    "the classifier's rows look as initialised, not trained (no more structure than its entries"
    f" shuffled): {RANDOM_HEAD}"
)


class UntrainedHeadWarning(UserWarning):
    """An induced tree was built from classifier rows that look randomly initialised
    (:func:`looks_untrained`). The commands make it an error."""


# A tree shape: inner node k lists its children; a child i < C is class i, a child C + j is inner
# node j. Children always come before their parent, so the last inner node is the root.
Shape = list[list[int]]


# ------------------------------------------------------------------ classes
def _classes(classes: Sequence[str], wnids: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """Class names and WordNet ids (resolved when not given) after checking them."""
    if isinstance(classes, str) or not isinstance(classes, Sequence | DatasetClasses):
        raise TypeError("classes must be a sequence of class names or WordNet ids")
    names = [str(c) for c in classes]
    if len(names) < 2:
        raise ValueError(f"a hierarchy needs at least two classes, got {len(names)}")
    if wnids is None and isinstance(classes, DatasetClasses):
        wnids = classes.wnids
    if wnids is None:
        wnids = wn.resolve(names)
    elif len(wnids) != len(names):
        raise ValueError(f"{len(wnids)} wnids given for {len(names)} classes")
    check_unique(names, "classes", [str(w) for w in wnids])
    names = [wn.label(n) if is_wordnet_id(n) else n for n in names]
    return names, [str(w) for w in wnids]


# ------------------------------------------------------------------ naming
def _synthetic_label(names: Sequence[str]) -> str:
    shown = ", ".join(names[:2])
    more = f", +{len(names) - 2} more" if len(names) > 2 else ""
    return f"synthetic: {shown}{more}"


def unique_ids(preferred: Sequence[str]) -> list[str]:
    """The preferred ids, with ``-2``, ``-3``, ... added to repeats, first come first served."""
    used: set[str] = set()
    out = []
    for want in preferred:
        candidate, n = want, 1
        while candidate in used:
            n += 1
            candidate = f"{want}-{n}"
        used.add(candidate)
        out.append(candidate)
    return out


def assemble(
    shape: Shape, names: Sequence[str], wnids: Sequence[str], *, display: bool = True
) -> Tree:
    """Name a tree shape and turn it into a Tree; ``display`` also gives every node its display
    name (:func:`nbdt.labels.named`).

    Each leaf's WordNet ancestors (over all hypernym paths) become one row of a boolean matrix
    whose columns are sorted deepest first (ties by id); a node's common hypernyms are the AND of
    its children's rows, and its label is the first column left: the lowest common hypernym.
    """
    num_classes = len(names)
    real = np.array([is_wordnet_id(w) for w in wnids])
    columns, table = wn.hypernym_table(wnids)

    # Row i: class i; row C + k: inner node k (children come before their parents).
    common = np.concatenate([table, np.zeros((len(shape), len(columns)), dtype=bool)])
    synthetic = np.concatenate([~real, np.zeros(len(shape), dtype=bool)])
    leaves_of: list[list[int]] = [[i] for i in range(num_classes)]
    for k, kids in enumerate(shape):
        common[num_classes + k] = np.logical_and.reduce(common[kids], axis=0)
        synthetic[num_classes + k] = synthetic[kids].any()
        leaves_of.append([i for c in kids for i in leaves_of[c]])
    lowest = common[num_classes:].argmax(axis=1) if columns else np.zeros(len(shape), dtype=int)
    synthetic = synthetic[num_classes:]
    leaves_of = leaves_of[num_classes:]

    inner_wnid = [None if synthetic[k] else columns[lowest[k]] for k in range(len(shape))]
    inner_label = [
        _synthetic_label([names[i] for i in leaves_of[k]]) if w is None else wn.label(w)
        for k, w in enumerate(inner_wnid)
    ]
    # Ids: leaves first (class order), then inner nodes root first, breadth first.
    root = num_classes + len(shape) - 1
    order = [root]
    for node in order:
        if node >= num_classes:
            order.extend(shape[node - num_classes])
    inner_order = [n - num_classes for n in order if n >= num_classes]
    preferred = [w if r else n for w, n, r in zip(wnids, names, real, strict=True)]
    preferred += [inner_wnid[k] or "synthetic" for k in inner_order]
    ids = unique_ids(preferred)
    node_id = dict(enumerate(ids[:num_classes]))
    node_id.update(
        (num_classes + k, i) for k, i in zip(inner_order, ids[num_classes:], strict=True)
    )

    nodes = [Node(node_id[i], names[i], wnids[i] if real[i] else None) for i in range(num_classes)]
    nodes += [
        Node(
            node_id[num_classes + k],
            inner_label[k],
            inner_wnid[k],
            tuple(node_id[c] for c in shape[k]),
        )
        for k in inner_order
    ]
    tree = Tree(nodes, [node_id[i] for i in range(num_classes)])
    return named(tree) if display else tree


# ------------------------------------------------------------------ weights
def classifier_weights(source: Any, num_classes: int | None = None) -> np.ndarray:
    """The (C, D) classifier weight matrix of a tensor, state dict, checkpoint file or timm model.

    A timm model's head comes from ``get_classifier()`` (a Linear or 1x1 Conv2d); a state dict's is
    the last ``*weight`` of C rows; checkpoints nesting it under ``state_dict`` or ``model`` work.
    """
    import torch

    source = _read_checkpoint(source)
    if isinstance(source, torch.nn.Module):
        return _module_weights(source)
    if isinstance(source, Mapping):
        return _state_dict_weights(source, num_classes)
    if isinstance(source, np.ndarray | torch.Tensor):
        return _as_matrix(source, "weights")
    raise TypeError(
        f"cannot take classifier weights from {type(source).__name__}: pass a (C, D) tensor,"
        " a state dict, a checkpoint path or a timm model"
    )


def _read_checkpoint(source: Any) -> Any:
    """A checkpoint path's contents (``torch.load(weights_only=True)``); anything else as it is."""
    from nbdt.checkpoint import read_torch_file

    if not isinstance(source, str | os.PathLike):
        return source
    return read_torch_file(source, kind="a readable torch checkpoint")


def _check_model_file_classes(source: Any, names: Sequence[str], ids: Sequence[str], where: str):
    """An nbdt model file names its classes (its hierarchy's leaves): they must be these."""
    if not (isinstance(source, Mapping) and isinstance(source.get("hierarchy"), Mapping)):
        return
    hierarchy = Tree.from_node_link(source["hierarchy"])
    same = hierarchy.has_classes(names, ids)
    if not same:
        shown = ", ".join(hierarchy.classes[:3])
        raise ValueError(
            f"{where}: an nbdt model of {hierarchy.num_classes} other classes ({shown}, ...),"
            " not the classes given: pass that model's classes"
        )


def _as_matrix(weight: Any, what: str) -> np.ndarray:
    import torch

    if isinstance(weight, torch.Tensor):
        weight = weight.detach().to("cpu", torch.float64).numpy()
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim == 4 and weight.shape[2:] == (1, 1):
        weight = weight[:, :, 0, 0]
    if weight.ndim != 2:
        raise ValueError(f"{what}: expected a (classes, features) matrix, got shape {weight.shape}")
    if not np.isfinite(weight).all():
        raise ValueError(f"{what}: weights hold NaN or infinite values")
    return weight


def _module_weights(model: Any) -> np.ndarray:
    import torch.nn as nn

    if not hasattr(model, "get_classifier"):
        raise TypeError(
            f"{type(model).__name__} has no get_classifier(): pass a timm model or its classifier"
            " weight tensor"
        )
    head = model.get_classifier()
    if isinstance(head, tuple | list):
        raise ValueError(
            f"{type(model).__name__} has {len(head)} classifier heads (e.g. distilled DeiT): pass"
            " the weight tensor of the head to use"
        )
    if isinstance(head, nn.Linear) or (isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1)):
        return _as_matrix(head.weight, f"{type(model).__name__} classifier")
    raise ValueError(
        f"{type(model).__name__}'s classifier is {type(head).__name__}, not a Linear or 1x1 Conv2d"
        " (a model made with num_classes=0 has none)"
    )


def _state_dict_weights(state: Mapping[str, Any], num_classes: int | None) -> np.ndarray:
    import torch

    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state.get(key), Mapping):
            return _state_dict_weights(state[key], num_classes)
    candidates = [
        (key, value)
        for key, value in state.items()
        if str(key).endswith("weight")
        and isinstance(value, torch.Tensor)
        and (value.ndim == 2 or (value.ndim == 4 and tuple(value.shape[2:]) == (1, 1)))
        and (num_classes is None or value.shape[0] == num_classes)
    ]
    if not candidates:
        rows = f" with {num_classes} rows" if num_classes is not None else ""
        raise ValueError(f"state dict holds no classifier weight{rows} (a 2-D or 1x1 '*weight')")
    key, value = candidates[-1]
    return _as_matrix(value, f"state dict key {key!r}")


def looks_untrained(weight: np.ndarray, *, rows: int = 128, columns: int = 1024) -> bool:
    """Whether (C, D) classifier rows look as initialised: no more structure than the same
    entries shuffled.

    Every timm head starts as independent draws of one distribution (uniform, normal, zeros);
    training moves the rows along the features' class means, which gives them shared directions.
    The statistic is the spread of the row-centred Gram matrix's eigenvalues (``|G|_F^2 / tr(G)^2``:
    the structure that the rows' pairwise distances, and so the clustering, see); 32 seeded
    shuffles of the entries give its distribution at initialisation. Rows count as trained when
    the statistic lies more than 6 of the shuffles' standard deviations above their mean.
    Measured: 120 untrained timm heads (resnet18/50, efficientnet_b0, tf_efficientnet_lite0,
    vit_tiny, convnext_atto, mobilenetv3_small, regnetx_002 at 3 to 1000 classes) stay below
    2.7; efficientnet_lite0's ImageNet head lies at 39, resnet18 heads of Fashion-MNIST runs of
    two or three epochs on 1,000 to 8,000 images at 26 to 178 (after one warm-up epoch of 15
    steps: 2.8, counted untrained). At most ``rows`` x ``columns`` entries, taken at seeded
    random, are read. Two classes or fewer make one tree whatever the rows: never untrained.
    """
    weight = np.asarray(weight, dtype=np.float64)
    if weight.ndim != 2 or len(weight) <= 2:
        return False
    rng = np.random.default_rng(0)
    if weight.shape[0] > rows:
        weight = weight[rng.choice(weight.shape[0], rows, replace=False)]
    if weight.shape[1] > columns:
        weight = weight[:, rng.choice(weight.shape[1], columns, replace=False)]
    shuffled = rng.permuted(np.broadcast_to(weight.ravel(), (32, weight.size)), axis=1)
    stack = np.concatenate([weight[None], shuffled.reshape(32, *weight.shape)])
    stack = stack - stack.mean(axis=1, keepdims=True)
    gram = (
        stack @ stack.swapaxes(1, 2)
        if weight.shape[0] <= weight.shape[1]
        else (stack.swapaxes(1, 2) @ stack)
    )
    trace = np.trace(gram, axis1=1, axis2=2)
    if trace[0] == 0:  # every row the same (a zero head): nothing to cluster
        return True
    spread = (gram**2).sum(axis=(1, 2)) / np.where(trace > 0, trace, 1.0) ** 2
    null = spread[1:]
    return bool(spread[0] <= null.mean() + 6 * null.std())


# ------------------------------------------------------------------ builders
def _check_branching(branching: int) -> int:
    if isinstance(branching, bool) or not isinstance(branching, int | np.integer) or branching < 2:
        raise ValueError(f"branching must be an integer >= 2, got {branching!r}")
    return int(branching)


def _collapse(merges: np.ndarray, distances: np.ndarray, branching: int) -> Shape:
    """Turn a binary merge tree (sklearn's ``children_``) into one with <= ``branching`` children.

    From the root down, a node absorbs the children of its highest child merge while it has
    room, so the tree keeps the dendrogram's order of merges.
    """
    num_classes = len(merges) + 1
    shape: Shape = []
    emitted: dict[int, int] = {}
    stack: list[tuple[int, bool]] = [(num_classes + len(merges) - 1, False)]
    kids_of: dict[int, list[int]] = {}
    while stack:
        node, ready = stack.pop()
        if node < num_classes:
            continue
        if ready:
            emitted[node] = num_classes + len(shape)
            shape.append([c if c < num_classes else emitted[c] for c in kids_of[node]])
            continue
        kids = [int(c) for c in merges[node - num_classes]]
        while len(kids) < branching:
            inner = [c for c in kids if c >= num_classes]
            if not inner:
                break
            highest = max(inner, key=lambda c: (distances[c - num_classes], c))
            at = kids.index(highest)
            kids[at : at + 1] = [int(c) for c in merges[highest - num_classes]]
        kids_of[node] = kids
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(kids))
    return shape


def induced(
    weights_or_model: Any,
    classes: Sequence[str],
    *,
    linkage: str = "ward",
    normalize: bool = False,
    branching: int = 2,
    wordnet_weight: float = 0.0,
    wnids: Sequence[str] | None = None,
) -> Tree:
    """Agglomerative clustering of the classifier's weight rows, one row per class.

    ``weights_or_model``: a (C, D) tensor or array, a state dict, a checkpoint path or a timm model.
    ``normalize`` L2-normalises the rows first (clustering by direction); ``branching`` caps the
    children per node; ``wordnet_weight`` (0 to 1) blends in the WordNet distance
    (:func:`blend_wordnet`): 0 clusters the weights alone, 1 WordNet alone; ``wnids`` skips
    resolving the class names.
    """
    from sklearn.cluster import AgglomerativeClustering

    if linkage not in LINKAGES:
        raise ValueError(f"linkage must be one of {', '.join(LINKAGES)}, got {linkage!r}")
    branching = _check_branching(branching)
    if isinstance(wordnet_weight, bool) or not (
        isinstance(wordnet_weight, int | float) and 0 <= wordnet_weight <= 1
    ):
        raise ValueError(f"wordnet_weight must be a number from 0 to 1, got {wordnet_weight!r}")
    names, ids = _classes(classes, wnids)
    source = _read_checkpoint(weights_or_model)
    _check_model_file_classes(source, names, ids, where=str(weights_or_model))
    weight = classifier_weights(source, num_classes=len(names))
    if weight.shape[0] != len(names):
        raise ValueError(
            f"classifier has {weight.shape[0]} classes but {len(names)} class names were given"
        )
    if wordnet_weight < 1 and looks_untrained(weight):
        where = weights_or_model if isinstance(weights_or_model, str | os.PathLike) else "weights"
        warnings.warn(f"{where}: {UNTRAINED_HEAD}", UntrainedHeadWarning, stacklevel=2)
    if normalize:
        norms = np.linalg.norm(weight, axis=1, keepdims=True)
        weight = weight / np.where(norms > 0, norms, 1.0)
    if wordnet_weight:
        weight = blend_wordnet(weight, ids, wordnet_weight)
    clustering = AgglomerativeClustering(n_clusters=1, linkage=linkage, compute_distances=True)
    clustering.fit(weight)
    return assemble(_collapse(clustering.children_, clustering.distances_, branching), names, ids)


def blend_wordnet(weight: np.ndarray, wnids: Sequence[str], wordnet_weight: float) -> np.ndarray:
    """Rows whose squared distances are ``(1 - w)`` times the weight rows' and ``w`` times
    WordNet's, each scaled to a mean squared distance of 1, so Ward's linkage still applies.

    WordNet's distance between two classes is the size of the symmetric difference of their
    hypernym sets (the squared distance between their rows of :func:`nbdt.wordnet.hypernym_table`):
    the concepts above one class and not the other, a tree distance. Classes without a synset
    share no concept with any other class.
    """
    _, table = wn.hypernym_table(wnids)

    def unit(rows: np.ndarray) -> np.ndarray:
        centred = rows - rows.mean(0)
        mean_square = 2 * (centred**2).sum(1).mean()  # the mean squared pairwise distance
        return rows / np.sqrt(mean_square) if mean_square > 0 else rows

    return np.concatenate(
        [
            np.sqrt(1 - wordnet_weight) * unit(weight),
            np.sqrt(wordnet_weight) * unit(table.astype(np.float64)),
        ],
        axis=1,
    )


def wordnet(classes: Sequence[str], *, wnids: Sequence[str] | None = None) -> Tree:
    """The minimal WordNet hypernym tree over the classes, single-child chains contracted.

    Each synset keeps one hypernym: the one whose own chosen path is shared by the most classes
    (then the longest, then the smallest id), so every class has one path and the paths form a
    tree. Classes without a synset hang from the root.
    """
    names, ids = _classes(classes, wnids)
    num_classes = len(names)
    real = [i for i, w in enumerate(ids) if is_wordnet_id(w)]
    shared: dict[str, int] = {}
    for i in real:
        for s in wn.ancestors(ids[i]):
            shared[s] = shared.get(s, 0) + 1

    best: dict[str, tuple[int, int, str | None]] = {}  # synset -> (score, length, parent)

    def choose(s: str) -> tuple[int, int, str | None]:
        if s not in best:
            parents = [
                wn.wnid(h) for h in wn.synset(s).hypernyms() + wn.synset(s).instance_hypernyms()
            ]
            ranked = [(choose(p)[0], choose(p)[1], p) for p in parents]
            top = min(ranked, key=lambda r: (-r[0], -r[1], r[2])) if ranked else (0, 0, None)
            best[s] = (top[0] + shared.get(s, 0), top[1] + 1, top[2])
        return best[s]

    children: dict[str, list[int | str]] = {}
    for i in real:
        children.setdefault(ids[i], []).append(i)
        node = ids[i]
        while True:
            parent = choose(node)[2]
            if parent is None:
                break
            fresh = parent not in children
            siblings = children.setdefault(parent, [])
            if node not in siblings:
                siblings.append(node)
            if not fresh:
                break
            node = parent

    shape: Shape = []

    def emit(item: int | str) -> tuple[int, int]:
        """Post-order emission, single-child synsets contracted: (shape index, first class)."""
        while isinstance(item, str) and len(children[item]) == 1:
            item = children[item][0]
        if isinstance(item, int):
            return item, item
        kids = sorted(emit(c)[::-1] for c in children[item])  # children by their first class
        shape.append([k for _, k in kids])
        return num_classes + len(shape) - 1, kids[0][0]

    roots = sorted(s for s in children if choose(s)[2] is None)
    top = [index for _, index in sorted(emit(r)[::-1] for r in roots)]
    top += [i for i in range(num_classes) if not is_wordnet_id(ids[i])]
    if len(top) > 1:
        shape.append(top)
    return assemble(shape, names, ids)


def random(
    classes: Sequence[str],
    seed: int = 0,
    branching: int = 2,
    *,
    wnids: Sequence[str] | None = None,
) -> Tree:
    """A seeded random balanced tree: the classes shuffled, then split into ``branching`` parts."""
    branching = _check_branching(branching)
    names, ids = _classes(classes, wnids)
    order = np.random.default_rng(seed).permutation(len(names))
    shape: Shape = []

    def split(block: np.ndarray) -> int:
        if len(block) == 1:
            return int(block[0])
        parts = np.array_split(block, min(branching, len(block)))
        kids = [split(p) for p in parts]
        shape.append(kids)
        return len(names) + len(shape) - 1

    split(order)
    return assemble(shape, names, ids)


# The hierarchy builders by name: nbdt-hierarchy's commands and nbdt-train's --hierarchy kinds.
# Each one's keyword parameters (see :func:`options`) are the options it takes.
BUILDERS: dict[str, Callable[..., Tree]] = {
    "induced": induced,
    "wordnet": wordnet,
    "random": random,
}
_WEIGHTS = "weights_or_model"  # the parameter of a builder that clusters classifier weights


def _builder(kind: str) -> Callable[..., Tree]:
    if kind not in BUILDERS:
        raise ValueError(f"unknown hierarchy builder {kind!r}; known: {', '.join(BUILDERS)}")
    return BUILDERS[kind]


def options(kind: str) -> tuple[str, ...]:
    """The options the builder named ``kind`` takes, in its signature's order: its parameters
    after the classes (and the weights). nbdt-hierarchy's flags and nbdt-train read them."""
    parameters = inspect.signature(_builder(kind)).parameters
    return tuple(p for p in parameters if p not in ("classes", _WEIGHTS))


def build(kind: str, classes: Sequence[str], *, weights: Any = None, **settings: Any) -> Tree:
    """Build with the builder named ``kind``; ``weights`` go to a builder that clusters them
    (the others build without). An option the builder does not take raises a ValueError
    naming both (``random does not take option 'linkage'``)."""
    builder = _builder(kind)
    taken = options(kind)
    unknown = [k for k in settings if k not in taken]
    if unknown:
        raise ValueError(
            f"{kind} does not take option {unknown[0]!r}; it takes: {', '.join(taken)}"
        )
    if _WEIGHTS in inspect.signature(builder).parameters:
        return builder(weights, classes, **settings)
    return builder(classes, **settings)
