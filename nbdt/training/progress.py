"""What a run shows while it works: tqdm bars on a terminal, one plain line per epoch elsewhere."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """tqdm bars on a terminal; otherwise (or with ``quiet``) one plain line per epoch."""

    def __init__(self, enabled: bool, quiet: bool):
        self.enabled = enabled
        self.bars = enabled and not quiet and sys.stderr.isatty()

    def bar(self, total: int, description: str) -> Any:
        if not self.bars:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

    def line(self, text: str) -> None:
        if self.enabled:
            print(text, flush=True)

    def epoch(self, m: dict[str, Any], total: int) -> None:
        self.line(
            f"epoch {m['epoch']}/{total} {m['phase']:<6} train loss {m['train_loss']:.4f}"
            f" top-1 {m['train_top1']:.2f}% | test loss {m['test_loss']:.4f} network"
            f" {m['top1']:.2f}% NBDT soft {m['nbdt_soft_top1']:.2f}% hard"
            f" {m['nbdt_hard_top1']:.2f}% | {m['train_images_per_s']:.0f} img/s"
        )

    def summary(self, s: dict[str, Any]) -> None:
        best = s["best"]
        self.line(
            f"done: {s['epochs']} epochs ({s['warmup_epochs']} warm-up)\n"
            f"  network top-1    {s['top1']:6.2f}%\n"
            f"  NBDT soft top-1  {s['nbdt_soft_top1']:6.2f}%\n"
            f"  NBDT hard top-1  {s['nbdt_hard_top1']:6.2f}%\n"
            f"  best NBDT soft top-1 {best['nbdt_soft_top1']:.2f}% at epoch {best['epoch']}"
            " (best.pt)\n"
            f"outputs in {s['output']}"
        )
