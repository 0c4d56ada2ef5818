"""Where nbdt writes: atomically (every file appears whole or not at all) and its cache folder.

The data goes to a temporary file beside the target, which a rename then puts in place; a crash,
a full disk or Ctrl-C leaves the previous file as it was and no temporary file behind (only
``kill -9`` can leave one: :func:`remove_stale_temporaries` clears them). A failed write is one
``OSError`` from :func:`write_error`, naming the user's path and what to do; new commands that
write files go through :func:`atomic_path` or :func:`write_text` and get the same.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

# What to do about the errors a write meets most, by errno.
_WRITE_HINTS = {
    errno.ENOSPC: "free some space and run again",
    errno.EDQUOT: "free some space and run again",
    errno.EROFS: "choose a writable location",
    errno.EACCES: "choose a writable location",
    errno.EPERM: "choose a writable location",
    errno.ENOENT: "choose a writable location",
}
# Temporary files of atomic_path: ".<name>.<pid>.<8 hex>.tmp".
_TEMPORARY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")


def write_error(path: str | os.PathLike[str], error: BaseException) -> OSError:
    """An ``OSError`` for a failed write of ``path``: the user's path (never a temporary name),
    the cause without ``[Errno N]``, and what to do. Torch's writer reports a full disk as a
    ``RuntimeError`` ("basic_ios::clear: iostream error"); it is worded the same way."""
    if isinstance(error, OSError) and error.strerror:
        cause = error.strerror
        hint = _WRITE_HINTS.get(error.errno or 0, "")
    else:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        cause = lines[-1] if lines else type(error).__name__
        hint = "is the disk full? free some space and run again"
    wrapped = OSError(f"{path}: not written ({cause}){'; ' + hint if hint else ''}")
    wrapped.errno = getattr(error, "errno", None)
    return wrapped


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
    except (OSError, RuntimeError) as e:
        raise write_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that killed writes (``kill -9``, power loss) left in
    ``folder`` and its sub-folders; returns them. Only :func:`atomic_path`'s names match."""
    removed = []
    for path in Path(folder).rglob(".*.tmp"):
        if _TEMPORARY.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text with Unix line ends atomically; returns the path."""
    with atomic_path(path) as tmp, open(tmp, "x", encoding="utf-8", newline="\n") as f:
        f.write(text)
    return Path(path)


def check_not_an_input(
    option: str,
    output: str | os.PathLike[str] | None,
    inputs: Sequence[str | os.PathLike[str] | None],
) -> None:
    """Refuse an output path that is one of the command's inputs (``--html photo.png`` given
    ``photo.png`` to read); a ``ValueError`` names the option. Other outputs are overwritten."""
    if output is None:
        return
    target = Path(output).expanduser().resolve()
    for given in inputs:
        if given is not None and Path(given).expanduser().resolve() == target:
            raise ValueError(f"{option} {output}: is an input of this command: choose another file")


def cache_dir() -> Path:
    """nbdt's folder in the user cache: ``$XDG_CACHE_HOME/nbdt``, default ``~/.cache/nbdt``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification asks: never the cwd.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbdt"
