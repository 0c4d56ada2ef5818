"""Which training images a node stands for: one streaming pass over a dataset keeps, for every
node and child, the images it sends there most confidently (representative) and its typical
mistakes (confused), plus a bounded sample of pooled features for nearest-neighbour search.

``model`` arguments are :class:`nbdt.NBDT` instances, typed as modules: NBDT's own methods
call this module, so it sits below :mod:`nbdt.model` and does not import it.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbdt._io import atomic_path
from nbdt._messages import one_line
from nbdt.distributed import shard
from nbdt.explanation import Example
from nbdt.heads import logits_and_features, model_input
from nbdt.hierarchy import Hierarchy
from nbdt.networks import eval_mode
from nbdt.progress import Progress
from nbdt.rules import check_finite

FORMAT_NAME = "nbdt-node-examples"


FORMAT_VERSION = 1


THUMBNAIL_SIZE = 64


_SEARCH_CHUNK = 65536  # feature rows per similarity product in nearest-neighbour search


_HASH = 2654435761  # Knuth's multiplicative hash: a bijection of indices modulo 2**32


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
            _check_array_sizes(path)
            with np.load(path, allow_pickle=False) as data:
                if str(data["format"]) != FORMAT_NAME or int(data["version"]) != FORMAT_VERSION:
                    raise ValueError(f"not format {FORMAT_NAME} version {FORMAT_VERSION}")
                tree = Hierarchy.from_node_link(json.loads(str(data["hierarchy"])))
                offsets = data["thumbnail_offsets"]
                blob = data["thumbnail_bytes"].tobytes()
                count = len(data["thumbnail_index"])
                if (
                    offsets.shape != (count + 1,)
                    or np.any(np.diff(offsets) < 0)
                    or (count and (offsets[0] < 0 or offsets[-1] > len(blob)))
                ):
                    raise ValueError("thumbnail offsets do not fit the thumbnails")
                thumbs = {
                    int(i): blob[offsets[j] : offsets[j + 1]]
                    for j, i in enumerate(data["thumbnail_index"].tolist())
                }
                fields = {name: data[name] for name in _ARRAYS}
            examples = cls(tree, thumbnails=thumbs, **fields)
            examples._validate()
        except FileNotFoundError:
            raise
        except (
            ValueError, KeyError, TypeError, IndexError, OSError, EOFError, RecursionError,
            zipfile.BadZipFile,
        ) as e:  # fmt: skip
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


# The most a node-examples file can need: tables of a 1000-class tree and a 4096-image sample of
# 2048 features take under 100 MB.
MAX_FILE_ARRAYS = 2**30
# The most the running example tables of node_examples may take (-k bounds them).
MAX_TABLE_BYTES = 2**31


def _check_array_sizes(path: Path) -> None:
    """Refuse, before reading any array, an .npz whose arrays would take more memory than node
    examples can need (:data:`MAX_FILE_ARRAYS`) or more than the file's members hold: a header
    claiming 10^12 elements, a small deflated file asking gigabytes."""
    total = 0
    with zipfile.ZipFile(path) as archive:
        for member in archive.infolist():
            with archive.open(member) as f:
                version = np.lib.format.read_magic(f)
                header = np.lib.format.read_array_header_1_0
                if version != (1, 0):
                    header = np.lib.format.read_array_header_2_0
                shape, _, dtype = header(f)
                need = math.prod(shape) * dtype.itemsize
                if need > member.file_size:
                    raise ValueError(
                        f"array {member.filename} claims {need:,} bytes; the file holds"
                        f" {member.file_size:,}"
                    )
                total += need
    if total > MAX_FILE_ARRAYS:
        raise ValueError(
            f"its arrays would take {total / 2**20:,.0f} MiB; node examples need at most"
            f" {MAX_FILE_ARRAYS / 2**20:,.0f} MiB"
        )


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

    def __init__(self, model: nn.Module, k: int, sample: int):
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
        with torch.no_grad():
            logits, features = logits_and_features(model.model, model_input(model, images))
            check_finite(logits)  # NaN would route every image to child 0: no examples
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
    def merge(
        cls, model: nn.Module, parts: Sequence[NodeExamples], k: int, sample: int
    ) -> NodeExamples:
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


def _thumbnails(model: nn.Module, images: Tensor) -> list[bytes]:
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
            shard(_Indexed(data), (rank, world)), batch_size=batch_size, num_workers=num_workers
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
    model: nn.Module,
    data: Any,
    k: int = 8,
    *,
    sample: int = 4096,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: Progress | bool = False,
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
    ``progress``: a :class:`~nbdt.progress.Progress` (True: a new one) shows the pass.
    """
    for name, value in (("k", k), ("sample", sample), ("batch_size", batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if isinstance(data, torch.utils.data.Dataset):  # more than it holds changes only memory
        k, sample = min(k, max(len(data), 1)), min(sample, max(len(data), 1))
    rules = model.rules
    need = 2 * rules.num_nodes * rules.max_children * k * 40  # scores, indices, classes, merge
    if need > MAX_TABLE_BYTES:
        raise ValueError(
            f"k {k}: the example tables would take {need / 2**30:.1f} GiB (at most"
            f" {MAX_TABLE_BYTES / 2**30:.0f} GiB): lower k"
        )
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
            shown = progress if isinstance(progress, Progress) else Progress()
            size = len(data) if isinstance(data, Sized) else 0
            batches = shown.track(batches, -(-size // (batch_size * world)), "node examples")
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
    model: nn.Module,
    parts: Sequence[NodeExamples],
    *,
    k: int | None = None,
    sample: int | None = None,
) -> NodeExamples:
    """Merge the results of passes over disjoint parts of one dataset: the same as one pass."""
    if not parts:
        raise ValueError("merge_examples: nothing to merge")
    k = k or max(p.k for p in parts)
    sample = sample or max(len(p.sample_index) for p in parts)
    return _Collector.merge(model, parts, k, sample)
