"""Interventions: with_hierarchy, cached features, head-only refits, corrections, a new class."""

import copy

import pytest
import timm
import torch

import nbdt
from nbdt import intervene
from nbdt.data import TensorImages
from nbdt.features import Features, cache_features, pooled_features
from nbdt.heads import (
    apply_head,
    classifier_head,
    find_head,
    head_classes,
    logits_and_features,
    model_input,
)
from nbdt.hierarchy import Hierarchy

CLASSES = ["cat", "dog", "horse", "ship", "truck", "airplane"]


def synthetic_images(classes: int, per_class: int, seed: int = 0) -> TensorImages:
    """Class k: a bright 7x7 patch at its own place on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(classes).repeat_interleave(per_class)
    images = torch.randint(0, 20, (len(targets), 1, 28, 28), generator=g, dtype=torch.uint8)
    row, col = (targets // 4) * 7, (targets % 4) * 7
    for dy in range(7):  # a loop over patch pixels, not samples
        for dx in range(7):
            images[torch.arange(len(targets)), 0, row + dy, col + dx] = 255
    return TensorImages(images, targets, CLASSES[:classes], ["x"] * classes)


@pytest.fixture(scope="module")
def tree() -> Hierarchy:
    return Hierarchy.wordnet(CLASSES)


def trained(model: nbdt.NBDT, data: TensorImages) -> Features:
    """Fit the head on the data's features (head only, plain tree loss) and return them."""
    features = cache_features(model, data, batch_size=64)
    intervene.refit_head(model, features.features, features.targets, epochs=300, lr=0.3)
    return features


@pytest.mark.parametrize("arch", ["test_vit", "test_convnext", "dla46_c"])  # dla: 1x1 Conv2d head
def test_pooled_features_are_timms_pre_logits_for_linear_and_conv_heads(arch):
    torch.manual_seed(0)
    net = timm.create_model(arch, num_classes=5).eval()
    x = torch.randn(2, *net.pretrained_cfg["input_size"])
    with torch.no_grad():
        logits, features = logits_and_features(net, x)
        expected = net.forward_head(net.forward_features(x), pre_logits=True).flatten(1)
        torch.testing.assert_close(features, expected)
        torch.testing.assert_close(logits, net(x))
        torch.testing.assert_close(apply_head(classifier_head(net), features), logits)
    assert find_head(net) is net.get_classifier() and head_classes(net) == 5


def test_a_network_without_the_timm_contract_is_read_by_its_last_linear():
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, 3),
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        logits, features = logits_and_features(net, x)
        torch.testing.assert_close(features, net[:3](x))
    torch.testing.assert_close(logits, net(x))
    assert find_head(net) is net[3] and head_classes(net) == 3
    with pytest.raises(ValueError, match="has no classifier"):
        find_head(torch.nn.Conv2d(1, 1, 1))


def test_features_feed_the_head_as_the_network_does(tree, tmp_path, tiny_nbdt):
    model = tiny_nbdt(tree, channels=1)
    data = synthetic_images(6, 4)
    cached = cache_features(model, data, batch_size=7)
    assert cached.features.shape == (24, model.model.num_features)
    assert torch.equal(cached.targets, data.targets)
    with torch.no_grad():
        logits = model.logits(model_input(model, data.images))
        from_features = model.model.get_classifier()(cached.features)
    torch.testing.assert_close(from_features, logits, atol=1e-5, rtol=1e-5)
    on_disk = cache_features(
        model, data, batch_size=7, folder=tmp_path, in_memory_limit=0
    )  # the same batches: other batch sizes may round differently
    assert (tmp_path / "features.f32").stat().st_size == cached.features.numel() * 4
    assert torch.equal(on_disk.features, cached.features)
    assert list(tmp_path.iterdir()) == [tmp_path / "features.f32"]  # no temporary file left


def test_with_hierarchy_equals_a_model_rebuilt_with_that_tree(tree, tiny_nbdt):
    model = tiny_nbdt(tree, channels=1)
    x = torch.randn(5, 1, 28, 28)
    edited = tree.move("horse", nbdt.Hierarchy.wordnet(CLASSES).root.id)
    rebuilt = nbdt.NBDT(copy.deepcopy(model.model), edited)
    fast = model.with_hierarchy(edited)
    assert fast.hierarchy == edited
    with torch.no_grad():
        torch.testing.assert_close(fast(x), rebuilt(x))
        fast.mode = rebuilt.mode = "hard"
        torch.testing.assert_close(fast(x), rebuilt(x))
    shared = fast.model.get_classifier()
    assert shared is not model.model.get_classifier()  # its own head ...
    ours, theirs = dict(fast.model.named_parameters()), dict(model.model.named_parameters())
    assert all(ours[k] is theirs[k] for k in theirs if not k.startswith("fc."))  # same backbone


def test_with_hierarchy_after_remove_class_drops_the_row(tree, tmp_path, tiny_nbdt):
    model = tiny_nbdt(tree, channels=1)
    smaller = tree.remove_class("dog")
    fast = model.with_hierarchy(smaller)
    net = copy.deepcopy(model.model)
    keep = [i for i, c in enumerate(tree.classes) if c != "dog"]
    weight, bias = net.fc.weight.detach()[keep], net.fc.bias.detach()[keep]
    net.reset_classifier(5)
    with torch.no_grad():
        net.fc.weight.copy_(weight)
        net.fc.bias.copy_(bias)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), nbdt.NBDT(net, smaller)(x))
    assert model.model.num_classes == 6 and fast.model.num_classes == 5
    loaded = nbdt.load(fast.save(tmp_path / "small.pt"))
    assert loaded.hierarchy.classes == smaller.classes
    with pytest.raises(ValueError, match=r"no row for classes \['zebra'\]"):
        fast.with_hierarchy(Hierarchy.wordnet(["cat", "zebra"]))


def test_head_only_refit_touches_no_backbone_weight(tree, tiny_nbdt):
    model = tiny_nbdt(tree, channels=1)
    model.train()  # batch norm in training mode would update its statistics if it ran
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    features = cache_features(model, synthetic_images(6, 4))
    stats = intervene.refit_head(model, features.features, features.targets, epochs=3)
    after = model.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}
    assert stats["steps"] == 3 and model.model.training and model.model.fc.training
    with pytest.raises(ValueError, match=r"features must be \(N, "):
        intervene.refit_head(model, features.features[:, :3], features.targets)
    with pytest.raises(ValueError, match="loss must be one of"):
        intervene.refit_head(model, features.features, features.targets, loss="focal")


def test_correction_fixes_a_seeded_mistake(tree, tiny_nbdt):
    model = tiny_nbdt(tree, channels=1)
    data = synthetic_images(6, 12)
    features = trained(model, data)
    assert intervene.evaluate_features(model, features.features, features.targets)["top1"] == 100
    head = model.model.fc
    with torch.no_grad():  # the mistake: "horse" (2) images now score as "ship" (3)
        head.weight[2] = head.weight[3] * 0.5
        head.bias[2] = head.bias[3] - 5
    horses = data.targets == 2
    wrong = intervene.evaluate_features(model, features.features[horses], data.targets[horses])
    assert wrong["nbdt_soft_top1"] == 0
    replay = ~horses  # the replay holds no horse: only the corrections teach it
    fixed, stats = intervene.correct(
        model,
        data.images[horses],
        ["horse"] * int(horses.sum()),
        features.features[replay],
        features.targets[replay],
        holdout=0.25,
        epochs=100,
        lr=0.3,
    )
    before, after = stats["before"], stats["after"]
    assert before["corrections"]["nbdt_soft_top1"] == 0 and before["held_out"]["images"] == 3
    assert after["corrections"]["nbdt_soft_top1"] == 100
    assert after["held_out"]["nbdt_soft_top1"] == 100  # generalises to horses it did not see
    assert after["replay"]["nbdt_soft_top1"] >= 95  # and keeps the other classes
    assert torch.equal(model.model.fc.weight[2], head.weight[3] * 0.5)  # the input is unchanged
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        intervene.correct(model, data.images[:1], ["zebra"], features.features, features.targets)


def test_added_class_is_predicted_and_the_file_reloads(tree, tmp_path, tiny_nbdt):
    five = Hierarchy.wordnet(CLASSES[:5])
    model = tiny_nbdt(five, channels=1)
    data = synthetic_images(6, 12)
    old = data.targets < 5
    features = trained(
        model, TensorImages(data.images[old], data.targets[old], five.classes, ["x"] * 5)
    )
    new_images = data.images[~old]
    grown = intervene.add_class(
        model, "airplane", new_images[:6], replay=features, epochs=300, lr=0.3
    )
    assert grown.hierarchy.classes == (*five.classes, "airplane")
    assert grown.model_kwargs["num_classes"] == 6 and model.model.num_classes == 5
    leaf = grown.hierarchy.leaves[5]
    assert leaf.wnid == "n02691156"
    assert grown.hierarchy.parent(leaf.id).wnid in nbdt.wordnet.ancestors("n02691156")
    unseen = pooled_features(grown, new_images[6:])
    scores = intervene.evaluate_features(grown, unseen, torch.full((6,), 5))
    assert scores["nbdt_soft_top1"] >= 80
    kept = intervene.evaluate_features(grown, features.features, features.targets)
    assert kept["top1"] >= 95

    loaded = nbdt.load(grown.save(tmp_path / "grown.pt"))
    assert loaded.hierarchy == grown.hierarchy
    explanation = loaded.explain(model_input(grown, new_images[6:7])[0])
    assert explanation.label == "airplane" and explanation.path[-1].child_label == "airplane"

    induced = intervene.add_class(model, "airplane", new_images[:6], place="induced")
    sibling = induced.hierarchy.parent(induced.hierarchy.class_ids[5])
    assert len(sibling.children) == 2  # grouped with its nearest class under a new node
    with pytest.raises(ValueError, match="class 'Ship' exists \\(class 3, 'ship'\\)"):
        intervene.add_class(model, "Ship", new_images[:2])
    with pytest.raises(ValueError, match="no images of 'zebra'"):
        intervene.add_class(model, "zebra", new_images[:0])
    with pytest.raises(ValueError, match="place must be one of"):
        intervene.add_class(model, "zebra", new_images[:2], place="nearby")


def test_a_refit_step_is_every_sources_batch_with_its_mean_loss_weighted(tree, tiny_nbdt):
    """The head refits of correct and add_class (through the one epoch loop): each step draws a
    batch of every source and minimises the sum of their mean losses times their weights, as
    a per-source loop by hand does."""
    model = tiny_nbdt(tree, channels=1)
    by_hand = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    width = model.model.num_features
    sources = [
        (torch.randn(40, width, generator=g), torch.randint(0, 6, (40,), generator=g), 1.0),
        (torch.randn(7, width, generator=g), torch.randint(0, 6, (7,), generator=g), 0.25),
    ]
    criterion = intervene._criterion(model, model.hierarchy, "soft", {})
    stats = intervene._train_head(
        model, criterion, sources, epochs=2, lr=0.01, batch_size=16, weight_decay=0.0, seed=3
    )
    steps, generator, orders = 6, torch.Generator().manual_seed(3), []
    for _, y, _ in sources:
        size = min(16, len(y))
        rounds = -(-steps * size // len(y))
        order = torch.cat([torch.randperm(len(y), generator=generator) for _ in range(rounds)])
        orders.append(order[: steps * size].view(steps, size))
    head = by_hand.model.get_classifier()
    optimizer = torch.optim.AdamW(head.parameters(), lr=0.01, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    losses = []
    for step in range(steps):
        loss = sum(
            w * criterion(head(x[o[step]]), y[o[step]])
            for (x, y, w), o in zip(sources, orders, strict=True)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    fitted = model.model.get_classifier()
    torch.testing.assert_close(fitted.weight, head.weight)
    torch.testing.assert_close(fitted.bias, head.bias)
    assert stats["steps"] == steps and stats["epochs"] == 2
    assert stats["loss_first_epoch"] == pytest.approx(sum(losses[:3]) / 3, rel=1e-5)
    assert stats["loss_last_epoch"] == pytest.approx(sum(losses[3:]) / 3, rel=1e-5)
