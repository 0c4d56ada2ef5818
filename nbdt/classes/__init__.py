"""The class lists shipped with nbdt (one TSV per dataset: WordNet id, name) and WordNet ids.

Light on purpose: the hierarchy, the datasets and WordNet's name resolution all read from here,
and it reads nothing of theirs.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

CLASS_LISTS = ("cifar10", "cifar100", "fashion-mnist", "imagenet")
_ALIASES = {"fashionmnist": "fashion-mnist", "imagenet-1k": "imagenet", "imagenet1k": "imagenet"}
_WNID = re.compile(r"^n\d{8}$")


def is_wordnet_id(wnid: str | None) -> bool:
    """True for a real WordNet 3.0 noun offset id such as ``n02084071``."""
    return wnid is not None and bool(_WNID.match(wnid))


@dataclass(frozen=True)
class DatasetClasses:
    """A dataset's class names and WordNet ids, in the dataset's class order.

    It reads as the sequence of its names, so it can be passed wherever class names go; the
    builders then use its hand-checked ``wnids`` instead of resolving the names again.
    """

    dataset: str
    names: tuple[str, ...]
    wnids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __getitem__(self, index: int) -> str:
        return self.names[index]


def dataset_classes(name: str) -> DatasetClasses:
    """The shipped class list of ``cifar10``, ``cifar100``, ``fashion-mnist`` or ``imagenet``.

    ImageNet-1k is in the standard synset order (timm's), its names the synsets' first lemmas.
    """
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in CLASS_LISTS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(CLASS_LISTS)}")
    return _read_classes(key)


@functools.cache
def _read_classes(key: str) -> DatasetClasses:
    text = (importlib.resources.files(__name__) / f"{key}.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return DatasetClasses(key, tuple(r[1] for r in rows), tuple(r[0] for r in rows))


def read_class_file(path: str | os.PathLike[str]) -> list[str]:
    """Class names or WordNet ids from a UTF-8 text file, one per line (blank lines and
    ``#`` comments skipped); at least two, none twice."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a BOM is no part of a name
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise OSError(f"{path}: {e.strerror or e}") from None
    names = [line.strip() for line in text.splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if len(names) < 2:
        raise ValueError(f"{path}: needs at least two class names, one per line")
    check_unique(names, str(path))
    return names


def check_unique(
    classes: Sequence[str], where: str, ids: Sequence[str | None] | None = None
) -> None:
    """The one rule for class lists everywhere (files, builders, hierarchies): no class twice;
    a ``ValueError`` names the first repeated class and ``where`` it was listed.

    With ``ids`` (WordNet ids) a class is its id: ImageNet's two "crane" classes are a bird and
    a machine.
    """
    keys = classes if ids is None else ids
    seen: set[str | None] = set()
    for name, key in zip(classes, keys, strict=True):
        if key in seen:
            raise ValueError(f"{where}: class {name!r} is listed twice")
        seen.add(key)


def read_wnid_overrides(path: str | os.PathLike[str]) -> dict[str, str]:
    """``name<TAB>wnid`` lines (blank lines and ``#`` comments skipped) as {name: wnid}: how
    the command lines override the WordNet sense chosen for a class name."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file") from None
    except OSError as e:
        raise OSError(f"{path}: {e.strerror or e}") from None
    table: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, wnid = line.partition("\t")
        if not is_wordnet_id(wnid.strip()):
            raise ValueError(
                f"{path}:{number}: expected 'class name<TAB>WordNet id (n + 8 digits)',"
                f" got {line.strip()!r}"
            )
        table[name.strip()] = wnid.strip()
    return table
