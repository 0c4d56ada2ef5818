"""nbdt.data: IDX reading, the datasets with their class names and wnids, the batch transform."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from nbdt import data
from nbdt.classes import is_wordnet_id


@pytest.fixture
def write_fashion_mnist(write_idx):
    """``write_fashion_mnist(folder, compress=True)``: 30 train and 20 test images that show
    their index, labels index % 10."""

    def write(folder, compress=True):
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".gz" if compress else ""
        for prefix, n in (("train", 30), ("t10k", 20)):
            images = (np.arange(n)[:, None, None] + np.zeros((1, 28, 28))) % 256
            write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
            write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", np.arange(n) % 10, compress)
        return folder

    return write


# ------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_plain_and_gzip(tmp_path, write_idx, compress):
    array = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    out = data.read_idx(write_idx(tmp_path / "x.idx", array, compress))
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 4)
    assert torch.equal(out, torch.from_numpy(array.astype(np.uint8)))


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([1, -2, 70000], dtype=">i4")
    raw = struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.tobytes()
    (tmp_path / "x.idx").write_bytes(raw)
    assert data.read_idx(tmp_path / "x.idx").tolist() == [1, -2, 70000]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"PK\x03\x04rest", "not an IDX file"),
        (struct.pack(">BBBBI", 0, 0, 0x08, 1, 10) + b"\x00" * 3, "holds 3 bytes"),
        (gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 40)[:-12], "damaged gzip"),
        # a whole gzip file whose deflate stream starts with a reserved block type: zlib.error
        (gzip.compress(b"\x00" * 44)[:10] + b"\x07" + gzip.compress(b"\x00" * 44)[11:],
         "damaged gzip.*invalid block type"),
    ],
)  # fmt: skip
def test_read_idx_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_unreadable_file_is_one_error_naming_it(tmp_path, write_idx, monkeypatch):
    path = write_idx(tmp_path / "x.idx", np.zeros(3))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(path), "read_bytes", denied)  # root reads through chmod 000
    with pytest.raises(OSError, match="cannot read it") as info:
        data.read_idx(path)
    assert str(info.value) == f"{path}: cannot read it (Permission denied)"


# ---------------------------------------------------------------------------- Fashion-MNIST
@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_idx_folder(tmp_path, write_fashion_mnist, compress):
    folder = write_fashion_mnist(tmp_path / "fm", compress=compress)
    train = data.load_dataset("fashion-mnist", "train", folder)
    test = data.load_dataset("fashion-mnist", "test", folder)
    assert (len(train), len(test)) == (30, 20)
    assert train.image_shape == (1, 28, 28)
    image, target = train[13]
    assert image.dtype == torch.uint8 and int(image[0, 5, 5]) == 13 and int(target) == 3
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert len(train.wnids) == 10 and all(is_wordnet_id(w) for w in train.wnids)
    assert train.head(7).targets.tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_fashion_mnist_torchvision_layout(tmp_path, write_fashion_mnist):
    write_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    assert len(data.load_dataset("fashion-mnist", "test", tmp_path)) == 20


def test_fashion_mnist_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as info:
        data.load_dataset("fashion-mnist", "train", tmp_path / "nowhere")
    assert "nowhere" in str(info.value)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.full(20, 10), "labels run from 10 to 10, outside the 10 classes"),
        (np.arange(20, dtype=">f4"), "labels are torch.float32, not integers"),
    ],
)
def test_fashion_mnist_bad_labels_name_the_label_file(
    tmp_path, write_fashion_mnist, labels, message
):
    folder = write_fashion_mnist(tmp_path / "fm", compress=False)
    label_file = folder / "t10k-labels-idx1-ubyte"
    if labels.dtype.kind == "f":  # an IDX file of big-endian float32 (type 0x0D)
        label_file.write_bytes(struct.pack(">BBBBI", 0, 0, 0x0D, 1, 20) + labels.tobytes())
    else:
        label_file.write_bytes(label_file.read_bytes()[:8] + labels.astype(np.uint8).tobytes())
    with pytest.raises(ValueError, match=message) as info:
        data.load_dataset("fashion-mnist", "test", folder)
    assert str(info.value).startswith(f"{label_file}: ")
    assert len(data.load_dataset("fashion-mnist", "train", folder)) == 30


def test_empty_split_is_refused_when_loaded(tmp_path, write_fashion_mnist, write_idx):
    folder = write_fashion_mnist(tmp_path / "fm")
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28)))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(0))
    with pytest.raises(ValueError) as info:
        data.load_dataset("fashion-mnist", "test", folder)
    assert str(info.value) == f"{folder}: the test split holds no images"


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist")
def test_debian_fashion_mnist_files():
    train = data.load_dataset("fashion-mnist", "train")
    test = data.load_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert torch.bincount(test.targets).tolist() == [1000] * 10


# ----------------------------------------------------------------------- folders and CIFAR
def make_folder(root, classes, split_names=("train", "val"), size=(40, 30)):
    for split in split_names:
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for j in range(2):
                Image.new("RGB", size, (40 * i, 10 * j, 200)).save(root / split / name / f"{j}.png")
    return root


def test_image_folder_yields_fixed_size_uint8(tmp_path):
    root = make_folder(tmp_path, ["cat", "dog"])
    train = data.load_dataset("folder", "train", root, image_size=(16, 16))
    test = data.load_dataset("folder", "test", root, image_size=(16, 16))
    assert train.classes == ("cat", "dog") and len(test) == 4
    assert all(is_wordnet_id(w) for w in train.wnids)
    image, target = train[2]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8 and int(target) == 1
    assert image[0].unique().tolist() == [40] and image[2].unique().tolist() == [200]
    assert len(train.head(3)) == 3 and train.head(3).classes == train.classes


def test_image_folder_named_by_wnid_gets_wordnet_labels(tmp_path):
    root = make_folder(tmp_path, ["n02084071", "n02121808"], split_names=("train", "test"))
    train = data.load_dataset("folder", "train", root)
    assert train.classes == ("dog", "domestic cat") and train.wnids == ("n02084071", "n02121808")


def test_image_folder_damaged_image_is_one_error_naming_it(tmp_path):
    root = make_folder(tmp_path, ["cat", "dog"])
    bad = root / "train" / "dog" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])
    train = data.load_dataset("folder", "train", root, image_size=(8, 8))
    with pytest.raises(ValueError, match="1.png"):
        train[3]


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="--data-dir"):
        data.load_dataset("folder")
    make_folder(tmp_path, ["a", "b"], split_names=("train",))
    with pytest.raises(FileNotFoundError, match="no val/ or test/ folder"):
        data.load_dataset("folder", "test", tmp_path)


def test_cifar_missing_points_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        data.load_dataset("cifar10", "train", tmp_path)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.load_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        data.load_dataset("fashion-mnist", "val")


# --------------------------------------------------------------------------- transforms
CONFIG = {"input_size": (3, 8, 8), "mean": (0.5, 0.25, 0.0), "std": (0.5, 0.25, 1.0)}


def test_data_config_is_sized_for_the_dataset():
    import timm

    model = timm.create_model("test_resnet", num_classes=10)
    config = data.data_config(model, (28, 28))
    assert config["input_size"] == (3, 28, 28) and config["crop_pct"] == 1.0
    assert config["mean"] == model.pretrained_cfg["mean"]


def test_batch_transform_normalises_and_replicates_gray():
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    out = data.BatchTransform(CONFIG)(images)
    assert out.shape == (4, 3, 8, 8) and out.dtype == torch.float32
    x = images.float() / 255
    for c, (m, s) in enumerate(zip(CONFIG["mean"], CONFIG["std"], strict=True)):
        torch.testing.assert_close(out[:, c : c + 1], (x - m) / s)


def test_batch_transform_resizes_to_config():
    images = torch.full((2, 3, 16, 16), 255, dtype=torch.uint8)
    out = data.BatchTransform(CONFIG)(images)
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(out[:, 0], torch.ones(2, 8, 8))


def test_batch_transform_rejects_float_and_wrong_channels():
    with pytest.raises(ValueError, match="uint8"):
        data.BatchTransform(CONFIG)(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="2-channel"):
        data.BatchTransform(CONFIG)(torch.zeros(1, 2, 8, 8, dtype=torch.uint8))


def test_augmentation_is_a_shift_and_maybe_a_flip_of_each_image():
    n, size = 64, 16
    images = torch.arange(n * size * size).remainder(251).add(1).to(torch.uint8)
    images = images.view(n, 1, size, size)
    out = data._random_crop_flip(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    pad = size // 8
    padded = torch.nn.functional.pad(images, (pad,) * 4)
    shifts, flips = set(), 0
    for i in range(n):
        matches = [
            (dy, dx, flip)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for flip in (False, True)
            if torch.equal(
                out[i],
                (padded[i, :, dy : dy + size].flip(-1) if flip else padded[i, :, dy : dy + size])[
                    ..., (2 * pad - dx if flip else dx) :
                ][..., :size],
            )
        ]
        assert matches, f"image {i} is no shifted or flipped copy"
        shifts.add(matches[0][:2])
        flips += matches[0][2]
    assert len(shifts) > 5 and 10 < flips < 54  # the draws vary over the batch


def test_augmentation_follows_the_generator():
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
    transform = data.BatchTransform({**CONFIG, "input_size": (3, 12, 12)}, augment=True)
    a = transform(images, torch.Generator().manual_seed(3))
    b = transform(images, torch.Generator().manual_seed(3))
    c = transform(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_to_pil_round_trip():
    image = torch.randint(0, 256, (1, 5, 7), dtype=torch.uint8)
    pil = data.to_pil(image)
    assert pil.mode == "L" and pil.size == (7, 5)
    assert np.array_equal(np.asarray(pil), image[0].numpy())


def test_data_config_for_a_one_channel_model():
    import timm

    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    config = data.data_config(model, (28, 28), channels=1)
    assert config["input_size"] == (1, 28, 28)
    assert config["mean"] == (pytest.approx(sum(model.pretrained_cfg["mean"]) / 3),)
    out = data.BatchTransform(config)(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert out.shape == (2, 1, 28, 28)
