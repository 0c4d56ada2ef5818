"""Pooled backbone features computed once: the input of every head-only computation.

Head-only training (``nbdt-train --head-only``) and the interventions of :mod:`nbdt.intervene`
run the backbone once over their images (:func:`cache_features`, :func:`pooled_features`) and
then train or evaluate only the classifier head on the result. The features are those of
:func:`nbdt.heads.logits_and_features`, in float32.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nbdt._io import atomic_path
from nbdt.heads import logits_and_features, model_input
from nbdt.networks import eval_mode
from nbdt.progress import Progress

IN_MEMORY_LIMIT = 1 << 30  # bytes of features kept in memory when a cache folder is given


@dataclass(frozen=True)
class Features:
    """Pooled backbone features (N, D) float32 (in memory or a file mapping) and targets (N,)."""

    features: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return len(self.targets)


def _pooled(net: nn.Module, x: Tensor) -> Tensor:
    """(B, D) float32 features of one preprocessed batch (the caller sets the modes)."""
    return logits_and_features(net, x)[1].float()


def cache_features(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    *,
    batch_size: int = 256,
    folder: str | os.PathLike[str] | None = None,
    in_memory_limit: int = IN_MEMORY_LIMIT,
    name: str = "features.f32",
    progress: Progress | None = None,
) -> Features:
    """The backbone's pooled features of every ``(image, target)`` of a dataset, computed once.

    Images are uint8 dataset images (preprocessed with the model's data config) or float
    model input. With ``folder``, features over ``in_memory_limit`` bytes go to
    ``folder/name``, a memory-mapped file (written whole, then renamed into place).
    ``progress`` shows the pass.
    """
    if not len(dataset):
        raise ValueError("cache_features: the dataset holds no images")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    targets = torch.empty(len(dataset), dtype=torch.long)
    store: Tensor | None = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(eval_mode(model.model))
        stack.enter_context(torch.inference_mode())
        at = 0
        batches = loader if progress is None else progress.track(loader, len(loader), "features")
        for images, labels in batches:
            pooled = _pooled(model.model, model_input(model, images)).cpu()
            if store is None:
                shape = (len(dataset), pooled.shape[1])
                if folder is not None and math.prod(shape) * 4 > in_memory_limit:
                    path = stack.enter_context(atomic_path(Path(folder) / name))
                    store = torch.from_numpy(np.memmap(path, np.float32, "w+", shape=shape))
                else:
                    with torch.inference_mode(False):  # a tensor that training can read
                        store = torch.empty(shape)
            store[at : at + len(pooled)] = pooled
            targets[at : at + len(pooled)] = torch.as_tensor(labels)
            at += len(pooled)
    assert store is not None
    return Features(store, targets)


def pooled_features(model: nn.Module, images: Any, batch_size: int = 256) -> Tensor:
    """Pooled (N, D) features of images: a uint8 or float (N, C, H, W) batch, or a list of PIL
    images, paths and (C, H, W) tensors (preprocessed as :meth:`NBDT.explain` does)."""
    if isinstance(images, Tensor):
        if images.dim() != 4:
            raise ValueError(f"images: expected an (N, C, H, W) batch, got {images.dim()}-d")
        batches = [
            model_input(model, images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
    else:
        items = list(images)
        batches = [
            model._input_batch(items[i : i + batch_size]) for i in range(0, len(items), batch_size)
        ]
    if not batches:
        raise ValueError("images: none given")
    with eval_mode(model.model), torch.inference_mode():
        pooled = [_pooled(model.model, x).cpu() for x in batches]
    return torch.cat(pooled)  # outside inference mode: a tensor that training can read
