"""Whether the saliency maps are faithful: deleting the most salient pixels must lower the
decision margin more than deleting shifted or least salient ones.

A metric apart from the methods it judges (pytorch-grad-cam keeps its metrics in their own folder
too): ``scripts/bench_evidence.py`` runs it for the README's numbers and the choice of
:data:`nbdt.evidence.saliency.DEFAULT_METHOD`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nbdt.evidence.saliency import decision_margins
from nbdt.model import NBDT

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
