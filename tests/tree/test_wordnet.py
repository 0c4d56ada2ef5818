"""WordNet offline: locating and copying the data, WordNet facts, and class names to synsets."""

from __future__ import annotations

import importlib.resources
import shutil
from pathlib import Path

import nltk
import pytest

from nbdt import wordnet as wn
from nbdt._io import cache_dir
from nbdt.classes import CLASS_LISTS, dataset_classes

# Hand-checked: each class with the synset it must map to.
CIFAR100_SYNSETS = {
    "apple": "apple.n.01",
    "aquarium_fish": "fish.n.01",
    "baby": "baby.n.01",
    "bear": "bear.n.01",
    "beaver": "beaver.n.07",
    "bed": "bed.n.01",
    "bee": "bee.n.01",
    "beetle": "beetle.n.01",
    "bicycle": "bicycle.n.01",
    "bottle": "bottle.n.01",
    "bowl": "bowl.n.01",
    "boy": "male_child.n.01",
    "bridge": "bridge.n.01",
    "bus": "bus.n.01",
    "butterfly": "butterfly.n.01",
    "camel": "camel.n.01",
    "can": "can.n.01",
    "castle": "castle.n.02",
    "caterpillar": "caterpillar.n.01",
    "cattle": "cattle.n.01",
    "chair": "chair.n.01",
    "chimpanzee": "chimpanzee.n.01",
    "clock": "clock.n.01",
    "cloud": "cloud.n.02",
    "cockroach": "cockroach.n.01",
    "couch": "sofa.n.01",
    "crab": "crab.n.01",
    "crocodile": "crocodile.n.01",
    "cup": "cup.n.01",
    "dinosaur": "dinosaur.n.01",
    "dolphin": "dolphin.n.02",
    "elephant": "elephant.n.01",
    "flatfish": "flatfish.n.02",
    "forest": "forest.n.02",
    "fox": "fox.n.01",
    "girl": "girl.n.01",
    "hamster": "hamster.n.01",
    "house": "house.n.01",
    "kangaroo": "kangaroo.n.01",
    "keyboard": "keyboard.n.01",
    "lamp": "lamp.n.01",
    "lawn_mower": "lawn_mower.n.01",
    "leopard": "leopard.n.02",
    "lion": "lion.n.01",
    "lizard": "lizard.n.01",
    "lobster": "lobster.n.02",
    "man": "man.n.01",
    "maple_tree": "maple.n.02",
    "motorcycle": "motorcycle.n.01",
    "mountain": "mountain.n.01",
    "mouse": "mouse.n.01",
    "mushroom": "mushroom.n.01",
    "oak_tree": "oak.n.02",
    "orange": "orange.n.01",
    "orchid": "orchid.n.01",
    "otter": "otter.n.02",
    "palm_tree": "palm.n.03",
    "pear": "pear.n.01",
    "pickup_truck": "pickup.n.01",
    "pine_tree": "pine.n.01",
    "plain": "plain.n.01",
    "plate": "plate.n.04",
    "poppy": "poppy.n.01",
    "porcupine": "porcupine.n.01",
    "possum": "opossum.n.02",
    "rabbit": "rabbit.n.01",
    "raccoon": "raccoon.n.02",
    "ray": "ray.n.07",
    "road": "road.n.01",
    "rocket": "rocket.n.01",
    "rose": "rose.n.01",
    "sea": "sea.n.01",
    "seal": "seal.n.09",
    "shark": "shark.n.01",
    "shrew": "shrew.n.02",
    "skunk": "skunk.n.04",
    "skyscraper": "skyscraper.n.01",
    "snail": "snail.n.01",
    "snake": "snake.n.01",
    "spider": "spider.n.01",
    "squirrel": "squirrel.n.01",
    "streetcar": "streetcar.n.01",
    "sunflower": "sunflower.n.01",
    "sweet_pepper": "sweet_pepper.n.02",
    "table": "table.n.02",
    "tank": "tank.n.01",
    "telephone": "telephone.n.01",
    "television": "television_receiver.n.01",
    "tiger": "tiger.n.02",
    "tractor": "tractor.n.01",
    "train": "train.n.01",
    "trout": "trout.n.02",
    "tulip": "tulip.n.01",
    "turtle": "turtle.n.02",
    "wardrobe": "wardrobe.n.01",
    "whale": "whale.n.02",
    "willow_tree": "willow.n.01",
    "wolf": "wolf.n.01",
    "woman": "woman.n.01",
    "worm": "worm.n.01",
}
FASHION_MNIST_SYNSETS = {
    "T-shirt/top": "jersey.n.03",  # "T-shirt, tee shirt, jersey"
    "Trouser": "trouser.n.01",
    "Pullover": "pullover.n.01",
    "Dress": "dress.n.01",
    "Coat": "coat.n.01",
    "Sandal": "sandal.n.01",
    "Shirt": "shirt.n.01",
    "Sneaker": "gym_shoe.n.01",
    "Bag": "bag.n.01",
    "Ankle boot": "boot.n.01",
}
CIFAR10_SYNSETS = {
    "airplane": "airplane.n.01",
    "automobile": "car.n.01",
    "bird": "bird.n.01",
    "cat": "cat.n.01",
    "deer": "deer.n.01",
    "dog": "dog.n.01",
    "frog": "frog.n.01",
    "horse": "horse.n.01",
    "ship": "ship.n.01",
    "truck": "truck.n.01",
}


def synset_name(wnid: str) -> str:
    return wn.synset(wnid).name()


# ------------------------------------------------------------------ WordNet facts
def test_dog_and_cat_meet_at_carnivore():
    dog, cat = wn.resolve(["dog", "cat"])
    assert (synset_name(dog), synset_name(cat)) == ("dog.n.01", "cat.n.01")
    common = set(wn.ancestors(dog)) & set(wn.ancestors(cat))
    lowest = max(common, key=lambda s: wn.ancestors(dog)[s])
    assert synset_name(lowest) == "carnivore.n.01"
    assert wn.label(lowest) == "carnivore"


def test_ancestors_include_self_and_root_with_depths():
    dog = wn.resolve(["dog"])[0]
    depth = wn.ancestors(dog)
    assert depth[dog] == max(depth.values())
    assert depth["n00001740"] == 0  # entity
    assert wn.PHYSICAL_ENTITY in depth


def test_wnid_and_synset_round_trip():
    assert wn.wnid(wn.synset("n02084071")) == "n02084071"
    with pytest.raises(ValueError, match="not a WordNet noun id"):
        wn.synset("dog")
    with pytest.raises(ValueError, match="no WordNet 3.0 noun synset"):
        wn.synset("n00000001")


def test_reader_loads_once_and_reports_cost():
    assert wn.wordnet() is wn.wordnet()
    info = wn.load_info()
    assert info.seconds > 0 and "wordnet" in info.root


# ------------------------------------------------------------------ name resolution
@pytest.mark.parametrize(
    "name, expected",
    [
        ("T-shirt/top", "jersey.n.03"),  # "a/b" alternatives, hyphenated lemma
        ("aquarium_fish", "fish.n.01"),  # no such lemma: falls back to the head noun
        ("maple_tree", "maple.n.02"),  # the maple that is a tree
        ("Ankle boot", "boot.n.01"),  # case, space
        ("sweet_pepper", "sweet_pepper.n.02"),  # multiword lemma (override: the vegetable)
        ("Trousers", "trouser.n.01"),  # plural to singular
        ("pickup truck", "pickup.n.01"),  # multiword lemma written with a space
        ("table", "table.n.02"),  # physical sense before the abstract table of data
    ],
)
def test_resolution_rules(name, expected):
    assert synset_name(wn.resolve([name])[0]) == expected


def test_wordnet_ids_pass_through_and_unknown_ids_fail():
    assert wn.resolve(["n02084071", "cat"])[0] == "n02084071"
    with pytest.raises(ValueError, match="n99999999"):
        wn.resolve(["n99999999"])


def test_overrides_take_precedence():
    cat = wn.resolve(["cat"])[0]
    assert wn.resolve(["dog"], overrides={"dog": cat}) == [cat]
    assert wn.resolve(["Mystery Thing"], overrides={"mystery_thing": cat}) == [cat]


def test_unresolved_names_get_marked_ids_and_a_warning():
    with pytest.warns(wn.UnresolvedClassWarning, match="qwxzy"):
        ids = wn.resolve(["dog", "qwxzy blorp"])
    assert ids[1] == "synthetic:qwxzy_blorp"
    assert wn.is_synthetic(ids[1]) and not wn.is_synthetic(ids[0])


def test_cifar10_mapping():
    classes = dataset_classes("cifar10")
    assert dict(zip(classes.names, map(synset_name, classes.wnids), strict=True)) == (
        CIFAR10_SYNSETS
    )


def test_cifar100_mapping_hand_checked():
    classes = dataset_classes("cifar100")
    assert len(classes) == 100 and classes.names == tuple(sorted(CIFAR100_SYNSETS))
    shipped = dict(zip(classes.names, map(synset_name, classes.wnids), strict=True))
    assert shipped == CIFAR100_SYNSETS


def test_fashion_mnist_mapping_hand_checked():
    classes = dataset_classes("fashion-mnist")
    assert classes.names == tuple(FASHION_MNIST_SYNSETS)  # torchvision's class order
    shipped = dict(zip(classes.names, map(synset_name, classes.wnids), strict=True))
    assert shipped == FASHION_MNIST_SYNSETS


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "fashion-mnist"])
def test_resolver_reproduces_shipped_lists(dataset):
    classes = dataset_classes(dataset)
    assert tuple(wn.resolve(classes.names)) == classes.wnids


def test_imagenet_list_is_timms_order_and_valid():
    classes = dataset_classes("imagenet")
    timm_info = importlib.resources.files("timm") / "data" / "_info" / "imagenet_synsets.txt"
    assert classes.wnids == tuple(timm_info.read_text().split())
    assert classes.names[:3] == ("tench", "goldfish", "great white shark")
    assert len(set(classes.wnids)) == 1000
    assert all(wn.wnid(wn.synset(w)) == w for w in classes.wnids)
    assert wn.resolve(classes.wnids) == list(classes.wnids)


def test_dataset_names_and_aliases():
    assert CLASS_LISTS == ("cifar10", "cifar100", "fashion-mnist", "imagenet")
    assert dataset_classes("Fashion_MNIST") is dataset_classes("fashion-mnist")
    assert list(dataset_classes("cifar10"))[:2] == ["airplane", "automobile"]
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        dataset_classes("mnist")


# ------------------------------------------------------------------ locating WordNet
def test_lexnames_resource_matches_the_wordnet_table():
    lines = (importlib.resources.files("nbdt") / "resources" / "lexnames").read_text()
    rows = [line.split("\t") for line in lines.splitlines()]
    assert len(rows) == 45
    assert rows[0] == ["00", "adj.all", "3"]
    assert rows[3] == ["03", "noun.Tops", "1"]
    assert rows[44] == ["44", "adj.ppl", "3"]
    assert [int(r[0]) for r in rows] == list(range(45))


@pytest.fixture
def debian_copy(tmp_path):
    """A copy of Debian's WordNet folder to build from (skip where it is not installed)."""
    if not (wn._source_dir() and (wn._source_dir() / "index.sense").is_file()):
        pytest.skip("needs a WordNet dict folder (Debian's wordnet-base + wordnet-sense-index)")
    source = tmp_path / "dict"
    shutil.copytree(wn._source_dir(), source)
    return source


def test_builds_an_nltk_copy_from_a_dict_folder(debian_copy, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("WNSEARCHDIR", str(debian_copy))
    monkeypatch.setattr(nltk.data, "find", _not_found)
    monkeypatch.setattr(nltk.data, "path", list(nltk.data.path))
    root = wn._locate()
    target = tmp_path / "cache" / "nbdt" / "nltk_data" / "corpora" / "wordnet"
    assert root == str(target.resolve())
    assert str((tmp_path / "cache" / "nbdt" / "nltk_data").resolve()) in nltk.data.path
    assert (target / "lexnames").read_text().count("\n") == 45
    assert (target / "index.sense").stat().st_size > 0
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".wordnet-build")]
    # A second call reuses the copy.
    stamp = (target / "data.noun").stat().st_mtime_ns
    assert wn._locate() == root and (target / "data.noun").stat().st_mtime_ns == stamp


def test_missing_sense_index_names_the_package(debian_copy, tmp_path):
    (debian_copy / "index.sense").unlink()
    with pytest.raises(wn.WordNetNotFound, match="wordnet-sense-index"):
        wn._build_nltk_copy(debian_copy, tmp_path / "out" / "wordnet")
    assert not (tmp_path / "out" / "wordnet").exists()


def test_no_wordnet_anywhere_names_both_fixes(tmp_path, monkeypatch):
    monkeypatch.setattr(nltk.data, "find", _not_found)
    monkeypatch.setattr(wn, "_DEBIAN_DIR", str(tmp_path / "nothing"))
    monkeypatch.delenv("WNSEARCHDIR", raising=False)
    with pytest.raises(wn.WordNetNotFound) as error:
        wn._locate()
    message = str(error.value)
    assert "\n" not in message
    assert "python -m nltk.downloader wordnet" in message
    assert "wordnet-base wordnet-sense-index" in message


def _not_found(*args, **kwargs):
    raise LookupError("not here")


def test_a_relative_xdg_cache_home_is_ignored(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert cache_dir() == Path.home() / ".cache" / "nbdt"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "abs"))
    assert cache_dir() == tmp_path / "abs" / "nbdt"
