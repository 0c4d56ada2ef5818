"""A tree induced from an untrained classifier head is meaningless: the criterion that
recognises one (``builders.looks_untrained``) on real untrained and trained heads, the API's
warning, and the three commands that refuse it (issue 18, item 9)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import timm
import torch

import nbdt
from nbdt import builders, data
from nbdt.classes import dataset_classes
from nbdt.cli.hierarchy import main as hierarchy_main
from nbdt.cli.train import main as train_main
from nbdt.hierarchy import Hierarchy

FM = dataset_classes("fashion-mnist")


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0", "vit_tiny_patch16_224"])
@pytest.mark.parametrize("classes", [3, 10, 100, 1000])
def test_untrained_timm_heads_look_untrained(arch, classes):
    torch.manual_seed(classes)
    head = timm.create_model(arch, num_classes=classes).get_classifier()
    assert builders.looks_untrained(head.weight.detach().numpy())


def test_a_zero_head_looks_untrained_and_two_classes_never_do():
    assert builders.looks_untrained(np.zeros((10, 64)))
    assert not builders.looks_untrained(np.random.default_rng(0).standard_normal((2, 64)))


def test_efficientnet_lite0s_imagenet_head_looks_trained():
    from nbdt.pretrained import efficientnet_lite0

    assert not builders.looks_untrained(efficientnet_lite0().get_classifier().weight.detach())


@pytest.mark.skipif(not data.FASHION_MNIST_DIR.is_dir(), reason="Debian's dataset-fashion-mnist")
def test_a_head_trained_for_one_pass_over_fashion_mnist_looks_trained():
    """torch's default Linear init (resnet's fc), before and after one pass of SGD over 2,000
    Fashion-MNIST images (pixels as features)."""
    train = data.load_dataset("fashion-mnist", "train")
    images = train.images[:2000].flatten(1).float() / 255
    targets = train.targets[:2000]
    torch.manual_seed(0)
    head = torch.nn.Linear(images.shape[1], 10)
    assert builders.looks_untrained(head.weight.detach())
    optimizer = torch.optim.SGD(head.parameters(), lr=0.1)
    for batch in range(0, 2000, 64):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            head(images[batch : batch + 64]), targets[batch : batch + 64]
        )
        loss.backward()
        optimizer.step()
    assert not builders.looks_untrained(head.weight.detach())


def test_the_api_warns_and_still_builds():
    weights = torch.randn(10, 32)
    with pytest.warns(builders.UntrainedHeadWarning, match="look as initialised, not trained"):
        tree = Hierarchy.induced(weights, FM)
    assert tree.classes == FM.names
    with warnings.catch_warnings():
        warnings.simplefilter("error", builders.UntrainedHeadWarning)
        Hierarchy.induced(weights, FM, wordnet_weight=1.0)  # WordNet alone: the rows unread


# ------------------------------------------------------------------ the commands refuse it
def _one_error(capsys, prog: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def random_nbdt(tmp_path_factory) -> str:
    """An untrained ``NBDT.from_arch(...).save()`` over the Fashion-MNIST classes."""
    torch.manual_seed(0)
    model = nbdt.NBDT.from_arch("test_efficientnet_gn", Hierarchy.wordnet(FM))
    return str(model.save(tmp_path_factory.mktemp("rand") / "rand.pt"))


def test_nbdt_hierarchy_refuses_an_untrained_checkpoint(random_nbdt, tmp_path, capsys):
    out = tmp_path / "tree.json"
    argv = ["induced", "--dataset", "fashion-mnist", "--checkpoint", random_nbdt, "-o", str(out)]
    assert hierarchy_main(argv) == 2
    err = _one_error(capsys, "nbdt-hierarchy")
    assert f"--checkpoint {random_nbdt}: the classifier's rows look as initialised" in err
    assert "train it first" in err and "nbdt-hierarchy wordnet" in err
    assert not out.exists()


def test_nbdt_hierarchy_refuses_untrained_pretrained_file(tmp_path, capsys):
    torch.manual_seed(0)
    untrained = tmp_path / "untrained.pth"
    torch.save(timm.create_model("resnet18").state_dict(), untrained)
    argv = ["induced", "--dataset", "imagenet", "--model", "resnet18"]
    assert hierarchy_main([*argv, "--pretrained-file", str(untrained), "--quiet"]) == 2
    err = _one_error(capsys, "nbdt-hierarchy")
    assert f"--pretrained-file {untrained}: the classifier's rows look as initialised" in err


def test_nbdt_train_refuses_to_induce_from_an_untrained_checkpoint(
    random_nbdt, stripes_dir, tmp_path, capsys
):
    output = tmp_path / "run"
    argv = [
        "--checkpoint", random_nbdt, "--hierarchy", "induced", "--data-dir", str(stripes_dir),
        "--output", str(output), "--epochs", "1", "--batch-size", "32", "--quiet",
    ]  # fmt: skip
    assert train_main(argv) == 2
    err = _one_error(capsys, "nbdt-train")
    assert f"{random_nbdt}: --hierarchy induced: the classifier's rows look as initialised" in err
    assert "--hierarchy wordnet|random|FILE" in err
    assert not output.exists()
