"""A 5-class NBDT over a tiny 1x1-conv network whose evidence lies where the image is non-zero,
and random images for it: the evidence tests' model, tree and data."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nbdt.hierarchy import Hierarchy, Node
from nbdt.model import NBDT

PATCH_CLASSES = ("c0", "c1", "c2", "c3", "c4")
PATCH_CONFIG = {
    "input_size": (1, 16, 24),
    "mean": (0.0,),
    "std": (1.0,),
    "interpolation": "bilinear",
}


def patch_tree(classes=PATCH_CLASSES) -> Hierarchy:
    """root -> {a -> {c0, c1}, b -> {c2, bb -> {c3, c4}}}."""
    c = classes
    nodes = [
        Node("root", "thing", None, ("a", "b")),
        Node("a", "left", None, (c[0], c[1])),
        Node("b", "right", None, (c[2], "bb")),
        Node("bb", "right", None, (c[3], c[4])),
        *(Node(name, name) for name in c),
    ]
    return Hierarchy(nodes, c)


class PatchNet(nn.Module):
    """timm-like CNN: 1x1 conv features (ReLU of +x and -x), global average pool, linear head.

    Only pixels whose features are non-zero can move the logits, so the evidence for a decision
    lies where the image is non-zero."""

    num_classes = len(PATCH_CLASSES)

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.conv.weight.data = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
        self.fc = nn.Linear(2, self.num_classes)
        self.fc.weight.data = torch.tensor([[3.0, 0], [2.0, 0], [0, 3.0], [0, 2.0], [0, 1.0]])
        self.fc.bias.data.zero_()

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x):
        return F.relu(self.conv(x))

    def forward_head(self, x, pre_logits: bool = False):
        x = x.mean((2, 3))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class FlatNet(PatchNet):
    """No spatial map: the features are pooled inside forward_features."""

    def forward_features(self, x):
        return F.relu(self.conv(x)).mean((2, 3))

    def forward_head(self, x, pre_logits: bool = False):
        return x if pre_logits else self.fc(x)


def patch_model(net: nn.Module | None = None) -> NBDT:
    """``net`` (a :class:`PatchNet` by default) over :func:`patch_tree`, mean scores, eval mode."""
    return NBDT(net or PatchNet(), patch_tree(), node_score="mean", data_config=PATCH_CONFIG).eval()


class Images(torch.utils.data.Dataset):
    """(image, label) pairs from two tensors."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def patch_images(n=90, seed=1) -> Images:
    """``n`` seeded random uint8 16x24 images with random labels."""
    generator = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 16, 24, generator=generator) * 255).to(torch.uint8)
    labels = torch.randint(0, len(PATCH_CLASSES), (n,), generator=generator)
    return Images(images, labels)
