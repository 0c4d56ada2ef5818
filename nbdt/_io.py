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
import glob
import os
import re
from collections.abc import Iterator, Mapping, Sequence
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
_TEMPORARY = re.compile(r"^\..+\.((\d+)\.[0-9a-f]{8}\.tmp)$")


_ENFORCE = re.compile(r"\[enforce fail at [^\]]*\]")


def _nearly_full(folder: Path) -> bool:
    """Whether the file system of ``folder`` has under 1 MiB left for this user."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < 2**20


def write_error(path: str | os.PathLike[str], error: BaseException) -> OSError:
    """An ``OSError`` for a failed write of ``path``: the user's path (never a temporary name),
    the cause without ``[Errno N]``, and what to do. Torch's writer reports a full disk as a
    ``RuntimeError`` ("[enforce fail at inline_container.cc:672]"): on a file system left with
    under 1 MiB it says "No space left on device", as the system does."""
    if isinstance(error, OSError) and error.strerror:
        cause = error.strerror
        hint = _WRITE_HINTS.get(error.errno or 0, "")
    elif _nearly_full(Path(path).parent):
        cause, hint = "No space left on device", _WRITE_HINTS[errno.ENOSPC]
    else:  # torch's "[enforce fail at inline_container.cc:672] . unexpected pos ..."
        lines = [_ENFORCE.sub("", line).strip(" .") for line in str(error).splitlines()]
        lines = [line for line in lines if line]
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
    _remove_dead_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise write_error(path, e) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _remove_dead_temporaries(path: Path) -> None:
    """Delete the temporary files of earlier writes of ``path`` whose process is gone
    (``kill -9``): every command that writes ``path`` again clears what its killed run left."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        match = _TEMPORARY.match(tmp.name)
        if (
            match
            and tmp.name[: -len(match.group(1))] == f".{path.name}."
            and not _alive(int(match.group(2)))
        ):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is another user's
        return True
    return True


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


def check_outputs(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    inputs: Sequence[str | os.PathLike[str]],
) -> None:
    """Refuse, before any work, an output that would replace or swallow an input.

    ``outputs`` maps each option (``--output``) to the path it names. An output may not be an
    input (the same file, by resolved path or hard link), nor an existing folder holding one
    (``nbdt-compress D/pruned.pt -o D``), nor an existing file inside an input folder
    (``--corrections D -o D/Coat/c0.png``); two outputs may not name one path. A ``ValueError``
    names the option.
    """
    seen: dict[Path, str] = {}
    given = [Path(p).expanduser() for p in inputs]
    resolved = [(p, p.resolve()) for p in given if p.exists()]
    for option, output in outputs.items():
        if output is None:
            continue
        target = Path(output).expanduser().resolve()
        if target in seen:
            raise ValueError(f"{option} {output}: also given to {seen[target]}: choose another")
        seen[target] = option
        for original, source in resolved:
            if source == target or (target.exists() and _same_file(source, target)):
                why = "is"
            elif target.is_dir() and source.is_relative_to(target):
                why = "is a folder holding"
            elif source.is_dir() and target.is_file() and target.is_relative_to(source):
                why = "is a file inside"
            else:
                continue
            raise ValueError(
                f"{option} {output}: {why} the input {original}, which the output would replace:"
                " choose another path"
            )


def check_writable(option: str, path: str | os.PathLike[str], folder: bool = False) -> None:
    """Before any work: refuse an output that cannot be written, naming ``option``, so that
    no run ends in "File exists" or "Read-only file system". A file output's folder must
    exist; a ``folder`` output is created later with its parents (:func:`new_folder`)."""
    target = Path(path).expanduser()
    if target.is_dir() != folder and target.exists():
        kinds = ("a file, not a folder") if folder else "a folder, not a file"
        raise ValueError(f"{option} {path}: is {kinds}: choose another path")
    place = target if folder and target.is_dir() else target.parent
    if not folder and not place.is_dir():
        raise ValueError(f"{option} {path}: the folder {place} does not exist")
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise ValueError(f"{option} {path}: {place} is a file, not a folder")
    if os.statvfs(place).f_flag & os.ST_RDONLY:
        raise OSError(
            f"{option} {path}: {place} is on a read-only file system: {_WRITE_HINTS[errno.EROFS]}"
        )
    if not os.access(place, os.W_OK | os.X_OK):
        raise OSError(
            f"{option} {path}: {place} is not writable for you: {_WRITE_HINTS[errno.EACCES]}"
        )


@contextlib.contextmanager
def new_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create the folder ``path`` (and its parents) for a block that writes into it; when the
    block fails, remove the folders it created that stayed empty: no empty output folder."""
    path = Path(path)
    created = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        created.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        raise


def _same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (hard links included)."""
    try:
        return a.is_file() and b.is_file() and os.path.samefile(a, b)
    except OSError:
        return False


def cache_dir() -> Path:
    """nbdt's folder in the user cache: ``$XDG_CACHE_HOME/nbdt``, default ``~/.cache/nbdt``.

    A relative ``XDG_CACHE_HOME`` is ignored, as the XDG specification asks: never the cwd.
    """
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nbdt"
