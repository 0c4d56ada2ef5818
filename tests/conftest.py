"""Shared test set-up: no network, a private cache folder for the whole session, and the
fixtures tests in several folders use (trees, small models, Fashion-MNIST stand-ins, browser)."""

import atexit
import os
import shutil
import tempfile

import pytest

from helpers.pages import CHROMIUM, FLAGS, Page

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# nbdt's user cache (the WordNet copy, datasets) goes to a folder of this test session alone,
# inherited by the CLIs the tests start, so the user's ~/.cache is neither read nor written.
_CACHE = tempfile.mkdtemp(prefix="nbdt-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


# ---- image files that nbdt must refuse with one line naming the file
def _png_bytes(width: int, height: int, mode: str = "RGB") -> bytes:
    """A valid PNG whose header then claims ``width`` x ``height`` (a decompression bomb)."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.fixture
def bad_image_files(tmp_path):
    """name -> path of inputs nbdt must refuse: missing, directory, non-image, truncated, bombs."""
    import io

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    files = {
        "missing": tmp_path / "missing.png",
        "directory": tmp_path / "folder.jpg",
        "not-an-image": tmp_path / "notes.png",
        "truncated-png": tmp_path / "truncated.png",
        "truncated-jpeg": tmp_path / "truncated.jpg",
        "bomb": tmp_path / "bomb.png",
        "bomb-warning": tmp_path / "large.png",
    }
    files["directory"].mkdir()
    files["not-an-image"].write_text("hello, I am text\n")
    for name, fmt in (("truncated-png", "PNG"), ("truncated-jpeg", "JPEG")):
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format=fmt)
        files[name].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    files["bomb"].write_bytes(_png_bytes(20_000, 20_000))  # > 2x Pillow's limit: an error
    files["bomb-warning"].write_bytes(_png_bytes(10_000, 10_000))  # > the limit: a warning
    return files


# ---- hierarchies of any size and contract-shaped explanations for the HTML tests
def _make_tree(num_classes: int, *, branching: int = 3, labels=None, seed: int = 0):
    """A seeded random tree over ``num_classes`` leaves ``c0..``; even inner nodes get wnids."""
    import random

    from nbdt.hierarchy import Hierarchy, Node

    rng = random.Random(seed)
    labels = list(labels) if labels is not None else [f"class {i}" for i in range(num_classes)]
    nodes = [Node(f"c{i}", labels[i]) for i in range(num_classes)]

    def split(ids: list[str]) -> str:
        if len(ids) == 1:
            return ids[0]
        parts = min(len(ids), rng.randint(2, branching))
        cuts = sorted(rng.sample(range(1, len(ids)), parts - 1))
        bounds = zip([0, *cuts], [*cuts, len(ids)], strict=True)
        children = tuple(split(ids[a:b]) for a, b in bounds)
        k = len(nodes) - num_classes
        nodes.append(Node(f"g{k}", f"group {k}", f"n{k:08d}" if k % 2 == 0 else None, children))
        return nodes[-1].id

    order = [n.id for n in nodes]
    rng.shuffle(order)
    split(order)
    return Hierarchy(nodes, [f"c{i}" for i in range(num_classes)])


def _explanation_dict(h, class_index: int, branch_probability: float = 0.9) -> dict:
    """What ``Explanation.to_dict()`` returns, for the path of ``class_index`` in ``h``."""
    import itertools
    import math

    from nbdt.explanation import Explanation, Step, TopClass

    path = h.path(class_index)
    steps = []
    for node, child in itertools.pairwise(path):
        runner = next(c for c in node.children if c != child.id)
        runner_p = (1 - branch_probability) * 0.75
        rest = (1 - branch_probability - runner_p) / max(len(node.children) - 2, 1)
        probs = [branch_probability, runner_p] + [rest] * (len(node.children) - 2)
        entropy = -sum(p * math.log(p) for p in probs if p > 0)
        steps.append(
            Step(node.id, node.label, node.wnid, entropy, child.id, child.label,
                 branch_probability, runner, h[runner].label, runner_p)
        )  # fmt: skip
    probability = branch_probability ** len(steps)
    other = (class_index + 1) % h.num_classes
    top_k = (
        TopClass(class_index, path[-1].label, probability),
        TopClass(other, h.classes[other], 1 - probability),
    )
    leaf = path[-1]
    return Explanation(
        class_index, leaf.label, leaf.wnid, probability, "soft", "mean", top_k, tuple(steps)
    ).to_dict()


@pytest.fixture
def make_tree():
    """``make_tree(num_classes, branching=3, labels=None, seed=0) -> Hierarchy``."""
    return _make_tree


@pytest.fixture
def explanation_dict():
    """``explanation_dict(h, class_index, branch_probability=0.9) -> dict`` (the to_dict shape)."""
    return _explanation_dict


# ---- Fashion-MNIST folders in the official IDX file names, for data and train tests
def _write_idx(path, array, compress: bool = True):
    """An IDX file (the MNIST family's format) of a uint8 array, gzipped when asked."""
    import gzip
    import struct

    import numpy as np

    array = np.asarray(array, dtype=np.uint8)
    raw = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    raw += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def _stripes_fashion_mnist(folder, n_train: int = 320, n_test: int = 160, seed: int = 0):
    """A learnable stand-in for Fashion-MNIST: class k shows stripes of width 2 + k % 5,
    horizontal for k < 5 and vertical otherwise, at a random phase, with noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, cols = np.mgrid[0:28, 0:28]
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10)
        coord = np.where((labels >= 5)[:, None, None], cols, rows)
        phase = rng.integers(0, 12, n)[:, None, None]
        stripes = ((coord + phase) // (2 + labels % 5)[:, None, None]) % 2
        images = np.clip(40 + 160 * stripes + rng.normal(0, 30, (n, 28, 28)), 0, 255)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture
def write_idx():
    """``write_idx(path, uint8_array, compress=True) -> path``: one IDX file."""
    return _write_idx


@pytest.fixture(scope="session")
def stripes_dir(tmp_path_factory):
    """A Fashion-MNIST folder (IDX .gz files) of 320 train and 160 test learnable 28x28 images."""
    return _stripes_fashion_mnist(tmp_path_factory.mktemp("stripes"))


# ---- small untrained models
@pytest.fixture(scope="session")
def tiny_nbdt():
    """``tiny_nbdt(hierarchy, *, size=(28, 28), channels=3, seed=0) -> NBDT``: an untrained
    timm test_resnet (seeded, eval mode) over the hierarchy's classes, that reads ``size``
    images whole (``size=None``: timm's own data config); ``channels=1`` reads grayscale as is."""
    import timm
    import torch

    from nbdt.data import data_config
    from nbdt.model import NBDT

    def build(hierarchy, *, size=(28, 28), channels: int = 3, seed: int = 0) -> NBDT:
        torch.manual_seed(seed)
        kwargs = {"num_classes": hierarchy.num_classes, "in_chans": channels}
        net = timm.create_model("test_resnet", **kwargs).eval()
        config = None if size is None else data_config(net, size, channels=channels)
        return NBDT(net, hierarchy, arch="test_resnet", model_kwargs=kwargs, data_config=config)

    return build


@pytest.fixture(scope="session")
def varied_resnet():
    """``varied_resnet(classes, *, size, scale, seed=0) -> nn.Module``: timm's test_resnet (seeded,
    eval mode) with its head re-centred on random ``size`` x ``size`` inputs, ``scale`` over the
    features' spread, so that random inputs get varied classes."""
    import timm
    import torch

    def build(classes: int, *, size: int, scale: float, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        net = timm.create_model("test_resnet", num_classes=classes).eval()
        with torch.no_grad():
            x = torch.randn(64, 3, size, size)
            features = net.forward_head(net.forward_features(x), True)
            head = net.get_classifier()
            spread = features.std(0).clamp_min(1e-3)
            head.weight.copy_(scale * torch.randn_like(head.weight) / spread)
            head.bias.copy_(-head.weight @ features.mean(0))
        return net

    return build


@pytest.fixture(scope="module")
def stripes_checkpoint(stripes_dir, tmp_path_factory):
    """The path of an untrained tiny NBDT (test_efficientnet_gn, the tree induced from its head)
    over the stripes classes, built from the trainer's parts and saved."""
    import warnings

    import torch

    from nbdt.builders import UntrainedHeadWarning
    from nbdt.hierarchy import Hierarchy
    from nbdt.model import NBDT
    from nbdt.training.config import TrainConfig
    from nbdt.training.plan import make_plan

    arch = "test_efficientnet_gn"
    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)  # the same untrained network whichever tests ran before
    config = TrainConfig(
        output=str(folder / "run"), arch=arch, data_dir=str(stripes_dir), batch_size=32
    )
    plan = make_plan(config, torch.device("cpu"))
    network, kwargs = plan.network()
    with warnings.catch_warnings():  # the tree of an untrained head: a test model's
        warnings.simplefilter("ignore", UntrainedHeadWarning)
        tree = Hierarchy.build("induced", plan.classes, weights=network)
    model = NBDT(
        network, tree, arch=arch, model_kwargs=kwargs, data_config=plan.data_config(network, kwargs)
    )
    return model.save(folder / "tiny.pt")


# ---- HTML pages in chromium (helpers/pages.py)
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's chromium, launched once per test module; skips where it or playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: install Debian's chromium (make setup does)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test extra)")
    # Playwright gives each launch a fresh, temporary profile (--user-data-dir).
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    """``open_page(path, color_scheme="light") -> Page``, each page closed after the test."""
    pages = []

    def open_(path, **kwargs):
        pages.append(Page(browser, path, **kwargs))
        return pages[-1]

    yield open_
    for page in pages:
        page.close()
