"""WordNet 3.0 offline, through nltk, and the mapping from class names to WordNet noun synsets.

WordNet comes from nltk's own data when present, else from Debian's ``wordnet-base`` and
``wordnet-sense-index`` files, copied once into an nltk-compatible folder in the user cache. It is
loaded once per process; nothing here ever downloads.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdt._io import cache_dir
from nbdt.classes import is_wordnet_id

if TYPE_CHECKING:
    from nltk.corpus.reader.wordnet import Synset, WordNetCorpusReader

log = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"
PHYSICAL_ENTITY = "n00001930"

# Debian's wordnet-base + wordnet-sense-index (or any WordNet 3.0 "dict" folder, the one the
# WordNet tools read from $WNSEARCHDIR). nltk also needs "lexnames", which Debian leaves out: we
# ship it (nbdt/resources/lexnames, from the lexnames(5WN) table).
_DEBIAN_DIR = "/usr/share/wordnet"
_REQUIRED = (
    tuple(f"{kind}.{pos}" for kind in ("data", "index") for pos in ("noun", "verb", "adj", "adv"))
    + tuple(f"{pos}.exc" for pos in ("noun", "verb", "adj", "adv"))
    + ("index.sense",)
)
_OPTIONAL = ("cntlist.rev", "cntlist", "frames.vrb", "sentidx.vrb", "sents.vrb")

# Names whose first physical sense is not what an image dataset means by them: a fur, a person,
# a food or a device where the dataset shows the animal or the thing. Hand-checked.
DEFAULT_OVERRIDES: dict[str, str] = {
    "beaver": "n02363005",  # beaver.n.07, the rodent (not its fur)
    "castle": "n02980441",  # castle.n.02, the fortified building (also ImageNet's class)
    "cloud": "n09247410",  # cloud.n.02, water vapour in the sky
    "dolphin": "n02068974",  # dolphin.n.02, the toothed whale (not the food fish)
    "flatfish": "n02657368",  # flatfish.n.02, the fish (not its flesh)
    "leopard": "n02128385",  # leopard.n.02, the cat (not its pelt)
    "lobster": "n01982650",  # lobster.n.02, the animal (not its flesh)
    "otter": "n02444819",  # otter.n.02, the animal (not its fur)
    "plate": "n03959485",  # plate.n.04, the dish (not baseball's home plate)
    "raccoon": "n02508021",  # raccoon.n.02, the animal (not its fur)
    "ray": "n01495701",  # ray.n.07, the flat cartilaginous fish (not a ray of light)
    "seal": "n02076196",  # seal.n.09, the pinniped (not sealing wax)
    "shrew": "n01891633",  # shrew.n.02, the animal (not a scold)
    "skunk": "n02445715",  # skunk.n.04, the animal (not a rotter)
    "sweet_pepper": "n07720615",  # sweet_pepper.n.02, the vegetable, like apple and pear
    "television": "n04405907",  # television_receiver.n.01, the set (not broadcasting)
    "tiger": "n02129604",  # tiger.n.02, the cat (not a fierce person)
    "trout": "n02537085",  # trout.n.02, the fish (not its flesh)
    "turtle": "n01662784",  # turtle.n.02, the reptile (not a turtleneck)
    "whale": "n02062744",  # whale.n.02, the cetacean (not a giant)
}


class WordNetNotFound(FileNotFoundError):
    """WordNet 3.0 is in neither nltk's data nor Debian's folder."""


def _source_dir() -> Path | None:
    """A WordNet 3.0 dict folder on disk: ``$WNSEARCHDIR`` or Debian's, if it has the data."""
    for folder in (os.environ.get("WNSEARCHDIR"), _DEBIAN_DIR):
        if folder and Path(folder, "data.noun").is_file():
            return Path(folder)
    return None


def _missing_message() -> str:
    return (
        "WordNet 3.0 not found: install nltk's copy (python -m nltk.downloader wordnet) or"
        " Debian's packages (apt-get install wordnet-base wordnet-sense-index)"
    )


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _REQUIRED + ("lexnames",))


def _build_nltk_copy(source: Path, target: Path) -> None:
    """Copy a WordNet dict folder into ``target`` in nltk's layout, atomically (temp + rename).

    nltk refuses folders outside ``nltk.data.path`` and symlinks leaving its data root, so the
    files are copied, not linked.
    """
    missing = [name for name in _REQUIRED if not (source / name).is_file()]
    if missing:
        hint = " (apt-get install wordnet-sense-index)" if "index.sense" in missing else ""
        raise WordNetNotFound(f"{source}: WordNet folder lacks {', '.join(missing)}{hint}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wordnet-build-", dir=target.parent))
    try:
        for name in _REQUIRED + _OPTIONAL:
            if (source / name).is_file():
                shutil.copyfile(source / name, tmp / name)
        lexnames = source / "lexnames"
        if not lexnames.is_file():
            lexnames = importlib.resources.files("nbdt") / "resources" / "lexnames"
        (tmp / "lexnames").write_bytes(lexnames.read_bytes())
        if not _complete(target):  # else another process built it meanwhile: keep theirs
            if target.exists():  # an incomplete leftover
                shutil.rmtree(target)
            try:
                os.rename(tmp, target)
            except OSError:
                if not _complete(target):  # not just another process winning the race
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _locate() -> Any:
    """The WordNet corpus root for nltk: nltk's data, else the cached copy of a dict folder."""
    import nltk

    try:
        return nltk.data.find("corpora/wordnet")
    except LookupError:
        pass
    source = _source_dir()
    if source is None:
        raise WordNetNotFound(_missing_message())
    data_root = (cache_dir() / "nltk_data").resolve()
    target = data_root / "corpora" / "wordnet"
    if not _complete(target):
        log.info("building an nltk copy of WordNet from %s in %s", source, target)
        _build_nltk_copy(source, target)
    if str(data_root) not in nltk.data.path:
        nltk.data.path.append(str(data_root))  # nltk reads corpora only under its data path
    return str(target)


@dataclass(frozen=True)
class LoadInfo:
    """Where WordNet was read from and how long loading took."""

    root: str
    seconds: float


_load_info: LoadInfo | None = None


@functools.cache
def wordnet() -> WordNetCorpusReader:
    """The WordNet 3.0 reader, loaded once per process (about a second)."""
    global _load_info
    start = time.perf_counter()
    root = _locate()
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class _Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet") -> None:
            # nltk >= 3.9 maps the loaded WordNet onto itself through index.sense at start-up
            # (over half of the loading time); the map serves only the multilingual (OMW)
            # look-ups, which nbdt never makes.
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available"
        reader = _Reader(root, None)
    _load_info = LoadInfo(str(root), time.perf_counter() - start)
    log.info("WordNet loaded from %s in %.2f s", root, _load_info.seconds)
    return reader


def load_info() -> LoadInfo:
    """Where WordNet came from and what loading it cost (loads it if needed)."""
    wordnet()
    assert _load_info is not None
    return _load_info


# ------------------------------------------------------------------------- synsets
def wnid(synset: Synset) -> str:
    """The WordNet id of a synset, e.g. ``n02084071`` for dog.n.01."""
    return f"{synset.pos()}{synset.offset():08d}"


def synset(wordnet_id: str) -> Synset:
    """The noun synset of a WordNet id such as ``n02084071``."""
    if not is_wordnet_id(wordnet_id):
        raise ValueError(f"{wordnet_id!r} is not a WordNet noun id (n + 8 digits)")
    from nltk.corpus.reader.wordnet import WordNetError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nltk warns and returns None for unknown offsets
            found = wordnet().synset_from_pos_and_offset("n", int(wordnet_id[1:]))
    except WordNetError:
        found = None
    if found is None:
        raise ValueError(f"{wordnet_id!r} is no WordNet 3.0 noun synset")
    return found


def label(wordnet_id: str) -> str:
    """A display name: the synset's first lemma, with spaces ("odd-toed ungulate")."""
    return synset(wordnet_id).lemma_names()[0].replace("_", " ")


@functools.cache
def ancestors(wordnet_id: str) -> dict[str, int]:
    """Every hypernym of a synset (itself included, over all hypernym paths) with its depth.

    The depth is the synset's longest distance from WordNet's root ``entity`` (nltk's
    ``max_depth``), so the "lowest" common hypernym is the one with the greatest depth.
    """
    depth: dict[str, int] = {}
    for path in synset(wordnet_id).hypernym_paths():
        for level, s in enumerate(path):
            key = wnid(s)
            if depth.get(key, -1) < level:
                depth[key] = level
    return depth


def hypernym_table(wnids: Sequence[str]) -> tuple[list[str], Any]:
    """Every WordNet concept above the classes, and which classes it covers.

    Returns the concepts' ids, deepest first (ties by id), and a (C, K) boolean matrix whose row
    i marks the concepts above class i (its own synset included, over all hypernym paths).
    Classes without a synset (synthetic ids) have an empty row. The builders name nodes by its
    AND over a node's rows; :mod:`nbdt.labels` scores concepts by its column sums.
    """
    import numpy as np

    real = [is_wordnet_id(w) for w in wnids]
    above = [ancestors(w) if r else {} for w, r in zip(wnids, real, strict=True)]
    depth = {s: d for a in above for s, d in a.items()}
    columns = sorted(depth, key=lambda s: (-depth[s], s))
    column = {s: j for j, s in enumerate(columns)}
    table = np.zeros((len(wnids), len(columns)), dtype=bool)
    rows = np.repeat(np.arange(len(wnids)), [len(a) for a in above])
    table[rows, [column[s] for a in above for s in a]] = True
    return columns, table


def is_synthetic(class_id: str) -> bool:
    """Whether an id from :func:`resolve` is a marked synthetic id (no synset was found)."""
    return class_id.startswith(SYNTHETIC_PREFIX)


# ---------------------------------------------------------------- name resolution
class UnresolvedClassWarning(UserWarning):
    """Some class names matched no WordNet noun and got synthetic ids."""


def _normalise(text: str) -> str:
    return re.sub(r"[\s_]+", "_", text.strip().lower())


def _lemma_forms(name: str) -> Iterator[str]:
    """Lemma spellings to look up for a class name, most literal first."""
    for alternative in re.split(r"\s*/\s*", name):
        base = _normalise(alternative)
        if not base:
            continue
        yield base
        yield base.replace("-", "_")
        yield base.replace("-", "")


def _is_physical(s: Synset) -> bool:
    return PHYSICAL_ENTITY in ancestors(wnid(s))


def _best(synsets: Sequence[Synset]) -> Synset | None:
    """The first physical sense (WordNet lists senses by frequency), else the first sense."""
    return next((s for s in synsets if _is_physical(s)), synsets[0] if synsets else None)


@dataclass(frozen=True)
class Resolution:
    """How one class name became a WordNet id: ``rule`` is ``"given"`` (an id or an override),
    ``"lemma"`` (the name is a lemma), ``"lemma variant"`` (a spelling of it: "a/b", hyphens),
    ``"kind of"`` ("maple tree": the maple that is a tree), ``"last words"`` ("ankle boot" ->
    boot) or ``"synthetic"`` (no match). The last three are guesses a user should see."""

    name: str
    wnid: str
    rule: str

    @property
    def fallback(self) -> bool:
        return self.rule in ("kind of", "last words", "synthetic")

    def __str__(self) -> str:
        if self.rule == "synthetic":
            return f"{self.name!r}: no WordNet noun: synthetic id {self.wnid}"
        s = synset(self.wnid)
        return (
            f"{self.name!r} -> {self.wnid} {s.name()} ({s.definition()}) by the rule {self.rule!r}"
        )


def _resolve_one(name: str) -> tuple[str, str] | None:
    from nltk.corpus.reader.wordnet import NOUN

    wn = wordnet()

    def senses(lemma: str) -> list[Synset]:
        return wn.synsets(lemma, pos=NOUN) if lemma else []

    forms = list(dict.fromkeys(_lemma_forms(name)))
    for i, form in enumerate(forms):  # a lemma as it is ("sweet_pepper", "t-shirt"), or singular
        found = _best(senses(form))
        if found is not None:
            return wnid(found), "lemma" if i == 0 else "lemma variant"
    for form in forms:  # "maple_tree": a sense of "maple" that is a kind of "tree"
        words = form.split("_")
        if len(words) < 2:
            continue
        heads = {wnid(s) for s in senses(words[-1])}
        kinds = [s for s in senses("_".join(words[:-1])) if heads & set(ancestors(wnid(s)))]
        if kinds:
            return wnid(kinds[0]), "kind of"
        for start in range(1, len(words)):  # "ankle_boot" -> "boot"
            found = _best(senses("_".join(words[start:])))
            if found is not None:
                return wnid(found), "last words"
    return None


def resolve(names: Sequence[str], overrides: Mapping[str, str] | None = None) -> list[str]:
    """WordNet noun ids for class names, in order; WordNet ids pass through as they are.

    Rules: separators and case are normalised, "a/b" tries each alternative, lemmas are looked up
    as multiword lemmas and as singulars, "maple_tree" finds the maple that is a tree, and
    "ankle_boot" falls back to "boot". Among senses, those under ``physical_entity`` come first,
    then WordNet's frequency order. ``overrides`` (name -> id) take precedence over
    :data:`DEFAULT_OVERRIDES` and the rules. Names that match nothing get a marked synthetic id
    (``synthetic:<name>``) and are reported with an :class:`UnresolvedClassWarning`.
    """
    return [r.wnid for r in resolutions(names, overrides, warn=True)]


def resolutions(
    names: Sequence[str], overrides: Mapping[str, str] | None = None, *, warn: bool = False
) -> list[Resolution]:
    """:func:`resolve`, saying for each name which rule chose its id: the commands print the
    guesses (:attr:`Resolution.fallback`) so that a wrong sense is seen. ``warn``: an
    :class:`UnresolvedClassWarning` for names that got synthetic ids."""
    table = {_normalise(k): v for k, v in {**DEFAULT_OVERRIDES, **(overrides or {})}.items()}
    out: list[Resolution] = []
    for name in names:
        name = str(name)
        given = table.get(_normalise(name), name.strip())
        if is_wordnet_id(given):
            synset(given)  # an unknown id is an error, not a silent synthetic class
            out.append(Resolution(name, given, "given"))
            continue
        found = _resolve_one(name)
        if found is None:
            found = (SYNTHETIC_PREFIX + _normalise(name), "synthetic")
        out.append(Resolution(name, *found))
    unresolved = [r.name for r in out if r.rule == "synthetic"]
    if warn and unresolved:
        warnings.warn(
            f"no WordNet noun for classes {unresolved}: using synthetic ids; pass overrides"
            " {name: wnid} to name them",
            UnresolvedClassWarning,
            stacklevel=3,
        )
    return out
