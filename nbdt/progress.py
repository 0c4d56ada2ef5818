"""What a command shows while it works, the one helper every command uses: tqdm bars on a
terminal; in a log file (stderr not a terminal) a plain line on the first step and then at least
every :data:`LOG_INTERVAL` seconds, each with the time left; nothing with ``quiet``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

LOG_INTERVAL = 30.0  # seconds between two log-file lines of one pass, at most
ESTIMATE_STEPS = 5  # steps measured before a run's time estimate
T = TypeVar("T")


def duration(seconds: float) -> str:
    """A duration a person reads at a glance: ``42 s``, ``7 min 5 s``, ``3 h 20 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class Progress:
    """The progress display of one process: tqdm bars when ``stream`` (stderr) is a terminal,
    else log lines on it (the first after one step, then one per ``interval`` seconds); none with
    ``quiet`` or when not ``enabled`` (a process other than the main one). :meth:`line` prints
    results (stdout) whenever ``enabled``."""

    def __init__(
        self,
        enabled: bool = True,
        quiet: bool = False,
        *,
        interval: float = LOG_INTERVAL,
        stream: TextIO | None = None,
    ):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        shown = enabled and not quiet
        self.bars = shown and self.stream.isatty()
        self.log = shown and not self.bars
        self.interval = interval
        self.forecast: tuple[int, str] | None = None  # (epochs, what): see :meth:`estimate`

    def bar(self, total: int, description: str, unit: str = "step") -> _Bar | None:
        """A bar over ``total`` steps (``update``, ``set_postfix``, ``close``, like tqdm's), or
        None when nothing is shown."""
        if not (self.bars or self.log):
            return None
        return _Bar(self, total, description, unit)

    def track(
        self, items: Iterable[T], total: int | None, description: str, unit: str = "batch"
    ) -> Iterator[T]:
        """``items``, one step of a bar each (``total``: None when unknown)."""
        bar = self.bar(total or 0, description, unit)
        if bar is None:
            yield from items
            return
        try:
            for item in items:
                yield item
                bar.update()
        finally:
            bar.close()

    def estimate(self, epochs: int, what: str) -> None:
        """Print, once the next bar has run :data:`ESTIMATE_STEPS` steps, how long one pass of
        it and ``epochs`` passes will take: a run's cost, known before the hours are committed."""
        self.forecast = (epochs, what)

    def line(self, text: str) -> None:
        """A result or note for the person, on stdout (above any bar)."""
        if not self.enabled:
            return
        if self.bars:
            from tqdm.auto import tqdm

            tqdm.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def status(self, text: str) -> None:
        """A log line on the progress stream."""
        print(text, file=self.stream, flush=True)

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


def _plural(unit: str) -> str:
    return unit + ("es" if unit.endswith(("s", "x", "ch", "sh")) else "s")


class _Bar:
    """One pass's display: a tqdm bar on a terminal, else log lines with the time left."""

    def __init__(self, progress: Progress, total: int, description: str, unit: str):
        self.progress, self.total, self.description, self.unit = progress, total, description, unit
        self.n = 0
        self.postfix = ""
        self.start = self.last = self.first = time.monotonic()
        self.logged = False
        self.tqdm: Any = None
        if progress.bars:
            from tqdm.auto import tqdm

            self.tqdm = tqdm(
                total=total or None, desc=description, unit=unit, leave=False,
                dynamic_ncols=True, file=progress.stream,
            )  # fmt: skip

    def update(self, steps: int = 1) -> None:
        self.n += steps
        now = time.monotonic()
        if self.tqdm is not None:
            self.tqdm.update(steps)
        elif not self.logged or now - self.last >= self.progress.interval:
            self.progress.status(self._status(now))
            self.last, self.logged = now, True
        if self.n == 1:
            self.first = now  # the first step also pays for start-up: timed apart
        forecast = self.progress.forecast
        measured = self.n - 1 if self.total > ESTIMATE_STEPS + 1 else self.n
        if forecast is not None and (measured >= ESTIMATE_STEPS or self.n >= self.total):
            self.progress.forecast = None
            epochs, what = forecast
            since = self.first if measured < self.n else self.start
            one = (now - since) / measured * (self.total or self.n)
            self.progress.line(
                f"measured on {measured} {_plural(self.unit)}: one {what} takes about"
                f" {duration(one)} ({self.total} {_plural(self.unit)}), all {epochs} about"
                f" {duration(one * epochs)} plus evaluation"
            )

    def set_postfix(self, **values: Any) -> None:
        self.postfix = " ".join(f"{k} {v}" for k, v in values.items())
        if self.tqdm is not None:
            self.tqdm.set_postfix(**values)

    def close(self) -> None:
        if self.tqdm is not None:
            self.tqdm.close()
        elif self.logged and self.n:  # a pass that logged says when it ended
            elapsed = duration(time.monotonic() - self.start)
            self.progress.status(f"{self.description}: {self.n} {_plural(self.unit)} in {elapsed}")

    def _status(self, now: float) -> str:
        elapsed = now - self.start
        text = f"{self.description}: {self.n}"
        if self.total:
            left = elapsed / self.n * (self.total - self.n)
            text += f"/{self.total} {_plural(self.unit)} ({100 * self.n / self.total:.0f}%)"
            text += f", {duration(elapsed)} so far, about {duration(left)} left"
        else:
            text += f" {_plural(self.unit)}, {duration(elapsed)} so far"
        return f"{text}, {self.postfix}" if self.postfix else text
