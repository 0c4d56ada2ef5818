"""Datasets for training and evaluating NBDTs, each with class names and WordNet ids.

Fashion-MNIST is read from its IDX files (gzipped or not), CIFAR-10/100 through torchvision, and
any ImageFolder from disk. Every dataset yields uint8 images of one size; :class:`BatchTransform`
turns a whole batch into the model's input on the training device (light augmentation, grayscale
to the model's channels, normalisation with the timm model's mean and std), so the per-image work
in the data loader is an index lookup for the in-memory datasets.
"""

from __future__ import annotations

import copy
import functools
import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nbdt import networks, wordnet
from nbdt._io import cache_dir
from nbdt.classes import check_unique, dataset_classes
from nbdt.images import load_image

SPLITS = ("train", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# IDX element types (the third magic byte) as big-endian numpy dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Read one IDX file (the MNIST family's format), gzipped or not, into a tensor."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise OSError(f"{path}: cannot read it ({e.strerror or e})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise ValueError(f"{path}: damaged gzip file ({e})") from None
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: IDX header is cut short")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    count = math.prod(dims)
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: IDX data holds {len(raw) - header} bytes, its header {dims} needs"
            f" {count * dtype.itemsize}"
        )
    array = np.frombuffer(raw, dtype, count=count, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("=")))


class TensorImages(torch.utils.data.Dataset):
    """Images held in memory as one uint8 tensor (N, C, H, W), with labels and class metadata."""

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        classes: Sequence[str],
        wnids: Sequence[str],
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be uint8 (N, C, H, W), got {images.dtype} {images.dim()}-d"
            )
        if targets.shape != (len(images),):
            raise ValueError(f"{len(images)} images but targets of shape {tuple(targets.shape)}")
        if len(classes) != len(wnids):
            raise ValueError(f"{len(classes)} class names but {len(wnids)} WordNet ids")
        if len(targets) and not 0 <= int(targets.min()) <= int(targets.max()) < len(classes):
            raise ValueError(f"targets outside [0, {len(classes)})")
        self.images = images
        self.targets = targets.long()
        self.classes = tuple(classes)
        self.wnids = tuple(wnids)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.targets[index]

    def head(self, n: int) -> TensorImages:
        """The first ``n`` images (all when there are fewer)."""
        return TensorImages(self.images[:n], self.targets[:n], self.classes, self.wnids)

    def without_classes(self, names: Collection[str]) -> TensorImages:
        """The images of the other classes, labelled in the order of the classes kept."""
        keep, relabel = _kept_classes(self.classes, names)
        targets = relabel[self.targets]
        mask = targets >= 0
        return TensorImages(
            self.images[mask],
            targets[mask],
            [self.classes[i] for i in keep],
            [self.wnids[i] for i in keep],
        )


class FolderImages(torch.utils.data.Dataset):
    """An ImageFolder (one sub-folder per class) read as uint8 RGB tensors of one size.

    Each image is resized so its shorter side fits, then centre-cropped to ``size`` (H, W);
    training augmentation happens later, on the batch (:class:`BatchTransform`).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: tuple[int, int],
        overrides: Mapping[str, str] | None = None,
    ):
        from torchvision.datasets import ImageFolder

        try:
            folder = ImageFolder(str(root))
        except (FileNotFoundError, RuntimeError) as e:
            raise FileNotFoundError(
                f"{root}: no image folder with class sub-folders ({e})"
            ) from None
        self.samples: list[tuple[str, int]] = list(folder.samples)
        self.resolutions = _folder_resolutions(folder.classes, overrides)
        self.classes = tuple(r.name for r in self.resolutions)
        self.wnids = tuple(r.wnid for r in self.resolutions)
        if all(r.rule == "given" and r.name == r.wnid for r in self.resolutions):
            self.classes = tuple(wordnet.label(r.wnid) for r in self.resolutions)
        check_unique(self.classes, f"{root}: class folders", self.wnids)  # before any write
        self.size = (int(size[0]), int(size[1]))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, *self.size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        from torchvision.transforms.v2 import functional as TF

        path, target = self.samples[index]
        image = load_image(path, channels=3)  # a damaged file is one ValueError naming it
        image = TF.resize(image, min(self.size), antialias=True)
        image = TF.center_crop(image, list(self.size))
        return TF.pil_to_tensor(image), torch.tensor(target)

    def head(self, n: int) -> FolderImages:
        """The first ``n`` images (all when there are fewer)."""
        out = copy.copy(self)
        out.samples = self.samples[:n]
        return out

    def without_classes(self, names: Collection[str]) -> FolderImages:
        """The images of the other classes, labelled in the order of the classes kept."""
        keep, relabel = _kept_classes(self.classes, names)
        out = copy.copy(self)
        out.samples = [(p, int(relabel[t])) for p, t in self.samples if relabel[t] >= 0]
        out.classes = tuple(self.classes[i] for i in keep)
        out.wnids = tuple(self.wnids[i] for i in keep)
        return out


ImageDataset = TensorImages | FolderImages


def _folder_resolutions(
    folders: Sequence[str], overrides: Mapping[str, str] | None
) -> list[wordnet.Resolution]:
    """How an ImageFolder's sub-folders (named by class or by wnid) became WordNet ids."""
    return wordnet.resolutions(list(folders), overrides, warn=True)


def _kept_classes(classes: Sequence[str], dropped: Collection[str]) -> tuple[list[int], Tensor]:
    """The indices of the classes not in ``dropped``, and (C,) each class's new index (-1 when
    dropped)."""
    dropped = set(dropped)
    keep = [i for i, name in enumerate(classes) if name not in dropped]
    relabel = torch.full((len(classes),), -1, dtype=torch.long)
    relabel[keep] = torch.arange(len(keep))
    return keep, relabel


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = False,
    image_size: tuple[int, int] = (224, 224),
    wnids: Mapping[str, str] | None = None,
) -> ImageDataset:
    """One split (``"train"`` or ``"test"``) of a dataset in :data:`DATASETS`.

    ``data_dir`` defaults to Debian's Fashion-MNIST folder, or ``<cache>/data`` for CIFAR; a
    ``"folder"`` dataset needs it, with ``train/`` and ``val/`` (or ``test/``) class folders.
    ``download`` lets torchvision fetch CIFAR; ``image_size`` (H, W) is used by folders only,
    the others keep their native size. ``wnids`` (class name -> WordNet id) override how a
    folder's class names are resolved (:func:`nbdt.wordnet.resolutions`).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
    folder, dataset = DATASETS[name](
        split,
        Path(data_dir) if data_dir else None,
        download=download,
        image_size=image_size,
        wnids=wnids,
    )
    if not len(dataset):  # caught here, not after a training epoch divides by it
        raise ValueError(f"{folder}: the {split} split holds no images")
    return dataset


def _find_idx(folder: Path, stem: str) -> Path:
    for sub in (folder, folder / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (sub / name).is_file():
                return sub / name
    raise FileNotFoundError(
        f"{folder}: no Fashion-MNIST file {stem}[.gz] (Debian: apt install dataset-fashion-mnist;"
        " or pass the folder holding the IDX files with --data-dir)"
    )


def _fashion_mnist(split: str, folder: Path | None, **_: Any) -> tuple[Path, TensorImages]:
    folder = folder or FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
    label_file = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    labels = read_idx(label_file)
    if images.dim() != 3 or images.dtype != torch.uint8 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"{folder}: Fashion-MNIST {split} files hold images {tuple(images.shape)} and labels"
            f" {tuple(labels.shape)}; expected (N, H, W) uint8 and (N,)"
        )
    info = dataset_classes("fashion-mnist")
    if labels.is_floating_point():
        raise ValueError(f"{label_file}: labels are {labels.dtype}, not integers")
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(info.names):
        raise ValueError(
            f"{label_file}: labels run from {int(labels.min())} to {int(labels.max())}, outside"
            f" the {len(info.names)} classes [0, {len(info.names)})"
        )
    return folder, TensorImages(images.unsqueeze(1), labels, info.names, info.wnids)


def _cifar(name: str, split: str, root: Path | None, download: bool, **_: Any):
    from torchvision import datasets

    root = root or cache_dir() / "data"
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    try:
        data = cls(str(root), train=split == "train", download=download)
    except RuntimeError:
        raise FileNotFoundError(
            f"{root}: {name} not found (pass its folder with --data-dir, or --download)"
        ) from None
    info = dataset_classes(name)
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    return root, TensorImages(images, torch.tensor(data.targets), info.names, info.wnids)


def _folder(
    split: str,
    root: Path | None,
    image_size: tuple[int, int],
    wnids: Mapping[str, str] | None = None,
    **_: Any,
) -> tuple[Path, FolderImages]:
    if root is None:
        raise ValueError("the folder dataset needs a data folder (--data-dir)")
    folder = _split_folder(root, split)
    return folder, FolderImages(folder, image_size, wnids)


def _split_folder(root: Path, split: str) -> Path:
    names = ("train",) if split == "train" else ("val", "test")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"{root}: no {' or '.join(n + '/' for n in names)} folder of classes")


def data_config(model: nn.Module, size: Sequence[int], channels: int = 3) -> dict[str, Any]:
    """The timm model's data config (mean, std, interpolation) sized for a dataset's images.

    Grayscale images are replicated to the model's ``channels`` (3 unless the model was built
    with ``in_chans=1``, whose mean and std are then the channel averages); the images are used
    whole (``crop_pct`` 1) at ``size`` (H, W).
    """
    config = networks.data_config(model, channels)
    config.update(input_size=(channels, *size[-2:]), crop_pct=1.0, crop_mode="center")
    return config


class BatchTransform(nn.Module):
    """uint8 image batches (B, c, h, w) to the model's normalised float input (B, C, H, W).

    Runs on the batch, on the training device, without a loop over images: optional light
    augmentation (a random crop of the image padded by an eighth of its side, and a horizontal
    flip), resizing to the config's size, grayscale replicated to the model's channels, then
    ``(x / 255 - mean) / std`` with the config's mean and std.
    """

    def __init__(self, config: Mapping[str, Any], *, augment: bool = False):
        super().__init__()
        channels, height, width = config["input_size"]
        self.size = (int(height), int(width))
        self.channels = int(channels)
        self.augment = augment
        mean = torch.tensor(config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std), persistent=False)
        self.register_buffer("shift", -mean / std, persistent=False)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"expected a uint8 (B, C, H, W) batch, got {images.dtype} {images.dim()}-d"
            )
        if self.augment:
            images = _random_crop_flip(images, generator)
        x = images.float()
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(
                x, size=self.size, mode="bilinear", antialias=True, align_corners=False
            )
        if x.shape[1] != self.channels:
            if x.shape[1] != 1:
                raise ValueError(f"{x.shape[1]}-channel images for a {self.channels}-channel model")
            x = x.expand(-1, self.channels, -1, -1)
        return x * self.scale + self.shift


def _random_crop_flip(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Each image shifted by up to 1/8 of its side (zero padding) and flipped with p=1/2."""
    batch, channels, height, width = images.shape
    pad = max(1, round(min(height, width) / 8))
    padded = F.pad(images, (pad, pad, pad, pad)).flatten(2)  # (B, C, (H + 2p) * (W + 2p))
    device = images.device
    dy, dx = torch.randint(0, 2 * pad + 1, (2, batch, 1), device=device, generator=generator)
    flip = torch.rand(batch, 1, device=device, generator=generator) < 0.5
    cols = torch.arange(width, device=device)
    rows = dy + torch.arange(height, device=device)  # (B, H)
    cols = dx + torch.where(flip, cols.flip(0), cols)  # (B, W): a flip reverses the columns
    index = (rows[:, :, None] * (width + 2 * pad) + cols[:, None, :]).view(batch, 1, -1)
    out = padded.gather(2, index.expand(-1, channels, -1))
    return out.view(batch, channels, height, width)


def to_pil(image: Tensor) -> Any:
    """A dataset's uint8 (C, H, W) image as a PIL image (grayscale or RGB)."""
    from torchvision.transforms.v2.functional import to_pil_image

    return to_pil_image(image)


# The datasets nbdt-train reads, by name: split, data folder (None: the default), download and
# image size in; the folder read (for messages) and the dataset out.
DATASETS: dict[str, Callable[..., tuple[Path, ImageDataset]]] = {
    "fashion-mnist": _fashion_mnist,
    "cifar10": functools.partial(_cifar, "cifar10"),
    "cifar100": functools.partial(_cifar, "cifar100"),
    "folder": _folder,
}
