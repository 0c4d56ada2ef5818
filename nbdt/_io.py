"""Where nbdt writes: atomically (every file appears whole or not at all) and its cache folder.

The data goes to a temporary file beside the target, which a rename then puts in place; a crash,
a full disk or Ctrl-C leaves the previous file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path to write; renamed over ``path`` when the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text with Unix line ends atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "x", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return Path(path)


def cache_dir() -> Path:
    """nbdt's folder in the user cache: ``$XDG_CACHE_HOME/nbdt``, default ``~/.cache/nbdt``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification asks: never the cwd.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbdt"
