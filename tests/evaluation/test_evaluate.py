"""Hierarchy-aware evaluation: every metric on hand-computed cases and against plain loops."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from nbdt.data import BatchTransform, TensorImages
from nbdt.evaluation import metrics as metrics_module
from nbdt.evaluation.accumulator import Accumulator, Batch
from nbdt.evaluation.evaluate import evaluate
from nbdt.evaluation.metrics import TreeMetrics
from nbdt.evaluation.rulers import align_reference, lca_tables
from nbdt.evaluation.unseen import UnseenRouting, UnseenTarget, unseen_target
from nbdt.hierarchy import Hierarchy, Node
from nbdt.rules import DecisionRules

from helpers import reference_loops as ref

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def four_classes() -> Hierarchy:
    """root -> A (c0, c1), B (c2, c3): heights 0 (leaves), 1 (A, B), 2 (root)."""
    nodes = [Node(f"c{i}", f"c{i}") for i in range(4)]
    nodes += [
        Node("A", "A", None, ("c0", "c1")),
        Node("B", "B", None, ("c2", "c3")),
        Node("r", "root", None, ("A", "B")),
    ]
    return Hierarchy(nodes, [f"c{i}" for i in range(4)])


# Four samples whose every decision is worked out by hand in test_hand_built_tree (mean scores):
#  0: target c0, all right.      1: target c1, all say c0 (LCA A, height 1).
#  2: target c2, network c0 (LCA root, 2), soft and hard c3 (LCA B, 1).   3: target c3, all right.
HAND_LOGITS = torch.tensor([[4, 0, 1, 1], [3, 0, 2.5, 0], [3, -3, 2, 2.5], [0, 0, 1, 5.0]])
HAND_TARGETS = torch.tensor([0, 1, 2, 3])


def assert_same(got, want, rel=1e-9):
    """Equal structure, counts and names; floats equal up to summation order."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key], rel)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert_same(a, b, rel)
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=rel, abs=1e-12)
    else:
        assert got == want and type(got) is type(want)


def entropy(*probabilities: float) -> float:
    return -sum(p * math.log(p) for p in probabilities)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_hand_built_tree():
    metrics = TreeMetrics(four_classes())
    metrics.update(HAND_LOGITS, HAND_TARGETS)
    out = metrics.compute()
    net, soft, hard = (out["variants"][v] for v in ("network", "nbdt_soft", "nbdt_hard"))
    assert out["images"] == 4 and out["top_k"] == 4  # top-5 over 4 classes is top-4
    for variant in (net, soft, hard):
        assert variant["top1"] == 50.0 and variant["top5"] == 100.0
        assert variant["mistakes"] == 2
        assert variant["per_class_top1"] == [100.0, 0.0, 0.0, 100.0]
        # every class's LCA heights with the 4 classes are 0, 1, 2, 2: mean 1.25
        assert variant["hierarchy"]["model"]["hdist@5"] == pytest.approx(1.25)
    assert net["hierarchy"]["model"]["mistake_severity"] == 1.5
    assert net["hierarchy"]["model"]["hdist@1"] == 0.75
    assert net["hierarchy"]["model"]["severity_histogram"] == [0, 1, 1]
    for variant in (soft, hard):
        assert variant["hierarchy"]["model"]["mistake_severity"] == 1.0
        assert variant["hierarchy"]["model"]["hdist@1"] == 0.5
        assert variant["hierarchy"]["model"]["severity_histogram"] == [0, 2, 0]
    assert out["agreement"] == {"network_soft": 75.0, "network_hard": 75.0, "soft_hard": 100.0}

    root, a, b = out["nodes"]
    assert (root["id"], root["samples"], root["correct"], root["accuracy"]) == ("r", 4, 4, 100.0)
    assert root["confusion"] == [[2, 0], [0, 2]]
    assert (a["samples"], a["correct"], a["accuracy"]) == (2, 1, 50.0)
    assert a["confusion"] == [[1, 0], [1, 0]]  # sample 1 (c1) sent to c0
    assert b["confusion"] == [[0, 1], [0, 1]]  # sample 2 (c2) sent to c3
    assert (a["reached"], a["reached_correct"], b["reached"], b["reached_correct"]) == (2, 1, 2, 1)

    # Path entropy of the soft (= hard here) predictions: root's decision + the child node's.
    right = [
        entropy(sigmoid(1), sigmoid(-1)) + entropy(sigmoid(4), sigmoid(-4)),
        entropy(sigmoid(3), sigmoid(-3)) + entropy(sigmoid(4), sigmoid(-4)),
    ]
    wrong = [
        entropy(sigmoid(0.25), sigmoid(-0.25)) + entropy(sigmoid(3), sigmoid(-3)),
        entropy(sigmoid(2.25), sigmoid(-2.25)) + entropy(sigmoid(0.5), sigmoid(-0.5)),
    ]
    for variant in (soft, hard):
        assert variant["path_entropy"]["right"] == pytest.approx(sum(right) / 2, rel=1e-5)
        assert variant["path_entropy"]["wrong"] == pytest.approx(sum(wrong) / 2, rel=1e-5)

    # ECE of the network's softmax: |accuracy - confidence| per bin, weighted by the bin's share.
    confidence = torch.softmax(HAND_LOGITS.double(), 1).max(1).values
    correct = torch.tensor([1.0, 0, 0, 1])
    bins = (confidence * 15).ceil().long() - 1
    expected = sum(
        abs(correct[bins == b].sum() - confidence[bins == b].sum()) / 4 for b in bins.unique()
    )
    assert net["calibration"]["ece"] == pytest.approx(100 * float(expected))
    table = net["calibration"]["bins"]
    assert len(table) == 15 and sum(row["count"] for row in table) == 4
    assert table[int(bins[0])]["accuracy"] is not None


def unbalanced() -> Hierarchy:
    """root -> c0, X; X -> c1, Y; Y -> c2, c3: heights Y 1, X 2, root 3."""
    nodes = [Node(f"c{i}", f"c{i}") for i in range(4)]
    nodes += [
        Node("Y", "Y", None, ("c2", "c3")),
        Node("X", "X", None, ("c1", "Y")),
        Node("r", "root", None, ("c0", "X")),
    ]
    return Hierarchy(nodes, [f"c{i}" for i in range(4)])


def test_lca_height_is_the_longest_way_down_not_the_distance_to_the_classes():
    depth, height = lca_tables(unbalanced())
    assert height.tolist() == [[0, 3, 3, 3], [3, 0, 2, 2], [3, 2, 0, 1], [3, 2, 1, 0]]
    assert depth.tolist() == [[1, 0, 0, 0], [0, 2, 1, 1], [0, 1, 3, 2], [0, 1, 2, 3]]


@pytest.mark.parametrize("seed", [0, 1])
def test_distances_follow_the_definitions_on_an_unbalanced_tree(seed):
    h = ref.random_tree(11, seed=seed, branching=(2, 3), chain=seed == 1)
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(40, 11, generator=gen) * 2
    targets = torch.randint(0, 11, (40,), generator=gen)
    metrics = TreeMetrics(h)
    metrics.update(logits, targets)
    out = metrics.compute()["variants"]
    rules = DecisionRules(h)
    soft = rules.soft(logits)
    hard = rules.hard(logits).tolist()
    ranked = {
        "network": logits.argsort(1, descending=True).tolist(),
        "nbdt_soft": soft.argsort(1, descending=True).tolist(),
    }
    # hard: its leaf, then by how deep the class leaves the hard path, then by soft probability
    depth, _ = lca_tables(h)
    ranked["nbdt_hard"] = [
        sorted(range(11), key=lambda c, b=b: (-int(depth[hard[b], c]), -float(soft[b, c])))
        for b in range(40)
    ]
    assert [r[0] for r in ranked["nbdt_hard"]] == hard
    for name, rank in ranked.items():
        severity, hdist1, hdist5 = ref.bertinetto(h, rank, targets.tolist(), 5)
        got = out[name]["hierarchy"]["model"]
        assert got["mistake_severity"] == pytest.approx(severity)
        assert got["hdist@1"] == pytest.approx(hdist1)
        assert got["hdist@5"] == pytest.approx(hdist5)
        assert out[name]["top5"] == pytest.approx(
            100 * sum(t in r[:5] for r, t in zip(rank, targets.tolist(), strict=True)) / 40
        )


def test_ece_on_a_known_distribution():
    """Confidence 0.9 everywhere: ECE is |accuracy - 90%|."""
    h = Hierarchy([Node("a", "a"), Node("b", "b"), Node("r", "r", None, ("a", "b"))], ["a", "b"])
    logits = torch.tensor([[math.log(9), 0.0]]).expand(20, -1)
    for right, ece in ((18, 0.0), (10, 40.0), (20, 10.0)):
        metrics = TreeMetrics(h)
        metrics.update(logits, torch.tensor([0] * right + [1] * (20 - right)))
        calibration = metrics.compute()["variants"]["network"]["calibration"]
        assert calibration["ece"] == pytest.approx(ece, abs=1e-4)  # float32 softmax
        full = [row for row in calibration["bins"] if row["count"]]
        assert len(full) == 1 and full[0]["lower"] < 0.9 <= full[0]["upper"]
        assert full[0]["confidence"] == pytest.approx(90.0, abs=1e-4)
        assert full[0]["accuracy"] == pytest.approx(100 * right / 20)


def test_merging_two_accumulators_equals_one_pass():
    h = ref.random_tree(9, seed=3)
    reference = ref.random_tree(9, seed=4)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 9, generator=gen) * 3
    targets = torch.randint(0, 9, (50,), generator=gen)
    whole = TreeMetrics(h, reference)
    whole.update(logits, targets)
    first, second = TreeMetrics(h, reference), TreeMetrics(h, reference)
    first.update(logits[:17], targets[:17])
    second.update(logits[17:30], targets[17:30])
    second.update(logits[30:], targets[30:])
    assert_same(first.merge(second).compute(), whole.compute())
    with pytest.raises(ValueError, match="different hierarchies"):
        first.merge(TreeMetrics(ref.random_tree(5, seed=0)))


@pytest.mark.parametrize("seed, node_score", [(0, "mean"), (1, "marginal")])
def test_top1_agreement_and_path_entropy_match_plain_loops(seed, node_score):
    h = ref.random_tree(13, seed=seed, branching=(2, 4))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(70, 13, generator=gen, dtype=torch.float64) * 2
    if node_score == "mean":  # exact ties (marginal scores tie only up to rounding)
        logits[:3] = 0.0  # every variant takes the first of the tied classes
    targets = torch.randint(0, 13, (70,), generator=gen)
    metrics = TreeMetrics(h, node_score=node_score)
    metrics.update(logits, targets)
    out = metrics.compute()
    first = ref.predictions(h, logits, node_score)
    y = targets.tolist()
    for v, name in enumerate(("network", "nbdt_soft", "nbdt_hard")):
        right = [p == t for p, t in zip(first[v], y, strict=True)]
        variant = out["variants"][name]
        assert variant["top1"] == pytest.approx(100 * sum(right) / 70)
        assert variant["mistakes"] == right.count(False)
        for c in range(13):
            mine = [r for r, t in zip(right, y, strict=True) if t == c]
            want = 100 * sum(mine) / len(mine) if mine else None
            assert variant["per_class_top1"][c] == (want and pytest.approx(want))
        if v:
            entropy = ref.path_entropy(h, logits, first[v], node_score)
            for key, wanted in (("right", True), ("wrong", False)):
                values = [e for e, r in zip(entropy, right, strict=True) if r == wanted]
                assert variant["path_entropy"][key] == pytest.approx(sum(values) / len(values))
    pairs = {"network_soft": (0, 1), "network_hard": (0, 2), "soft_hard": (1, 2)}
    for key, (a, b) in pairs.items():
        same = sum(p == q for p, q in zip(first[a], first[b], strict=True))
        assert out["agreement"][key] == pytest.approx(100 * same / 70)
    epoch = TreeMetrics.for_epochs(metrics.setting.rules)
    epoch.update(logits, targets)
    assert epoch.scalars() == {
        "top1": out["variants"]["network"]["top1"],
        "nbdt_soft_top1": out["variants"]["nbdt_soft"]["top1"],
        "nbdt_hard_top1": out["variants"]["nbdt_hard"]["top1"],
    }


def test_shards_summed_in_one_collective_equal_one_pass():
    h, reference = ref.random_tree(9, seed=6), ref.random_tree(9, seed=7)
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(40, 9, generator=gen) * 3
    targets = torch.randint(0, 9, (40,), generator=gen)
    whole = TreeMetrics(h, reference)
    whole.update(logits, targets)
    ranks = [TreeMetrics(h, reference) for _ in range(2)]
    for rank, shard in enumerate(ranks):
        shard.update(logits[rank::2], targets[rank::2])
    other = torch.cat([a._state for a in ranks[1].accumulators])
    calls = []

    def reduce(flat):  # rank 0's view of a two-rank all_reduce
        calls.append(flat.shape)
        flat += other

    assert_same(ranks[0].all_reduce(reduce).compute(), whole.compute())
    assert calls == [other.shape]


class MeanConfidence(Accumulator):
    """A metric defined by a test: the network's mean top softmax probability, per epoch too."""

    per_epoch = True

    def shapes(self):
        return {"images": (1,), "confidence": (1,)}

    def update(self, batch: Batch) -> None:
        self._sums["images"] += len(batch.targets)
        self._sums["confidence"] += batch.network_log_probs.max(1).values.exp().sum()

    def compute(self):
        images, confidence = self._numbers("images")[0], self._numbers("confidence")[0]
        return {"mean_confidence": 100 * confidence / images if images else None}

    @classmethod
    def columns(cls, metrics):
        return {"mean confidence %": {"network": metrics.get("mean_confidence")}}


def test_a_registered_metric_shows_in_eval_json_validation_and_the_report(
    four_class_model, monkeypatch, tmp_path
):
    from nbdt.distributed import start_process
    from nbdt.evaluation.report import report_html
    from nbdt.training.loop import StepContext, validate

    monkeypatch.setattr(metrics_module, "METRICS", (*metrics_module.METRICS, MeanConfidence))
    data = images_of([0, 1, 2, 3, 3, 2, 1, 0], [f"c{i}" for i in range(4)])
    transform = BatchTransform(four_class_model.data_config)
    with torch.no_grad():
        logits = four_class_model.logits(transform(data.images))
    expected = 100 * float(torch.softmax(logits.double(), 1).max(1).values.mean())

    result = evaluate(four_class_model, data, batch_size=3)
    assert result.metrics["mean_confidence"] == pytest.approx(expected, rel=1e-5)
    assert list(result.metrics)[-4:] == ["nodes", "mean_confidence", "unseen", "images_per_s"]

    loader = torch.utils.data.DataLoader(data, batch_size=3)
    row = validate(
        four_class_model.model,
        loader,
        torch.nn.CrossEntropyLoss(),
        four_class_model.rules,
        lambda images, generator=None: transform(images),
        StepContext(start_process("cpu")),
    )
    assert list(row) == [
        "test_loss", "test_ce", "top1", "nbdt_soft_top1", "nbdt_hard_top1", "mean_confidence",
        "test_images", "test_images_per_s",
    ]  # fmt: skip
    assert row["mean_confidence"] == pytest.approx(expected, rel=1e-5)
    for key in ("top1", "nbdt_soft_top1", "nbdt_hard_top1"):
        assert row[key] == pytest.approx(result.metrics["variants"][TOP1_VARIANT[key]]["top1"])

    page = report_html(result, tmp_path / "report.html").read_text()
    assert "mean confidence %" in page


TOP1_VARIANT = {"top1": "network", "nbdt_soft_top1": "nbdt_soft", "nbdt_hard_top1": "nbdt_hard"}


def test_per_node_accuracy_and_confusion_match_a_loop():
    h = ref.random_tree(17, seed=5, branching=(2, 5))
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn(60, 17, generator=gen, dtype=torch.float64) * 2
    targets = torch.randint(0, 17, (60,), generator=gen)
    metrics = TreeMetrics(h)
    metrics.update(logits, targets)
    nodes = metrics.compute()["nodes"]
    log_probs = ref.node_log_probs(h, logits)  # the loop reference of the rules
    hard = DecisionRules(h).hard(logits)
    inner = h.inner_nodes
    for i, node in enumerate(inner):
        samples = correct = reached = reached_correct = 0
        confusion = [[0] * len(node.children) for _ in node.children]
        for b in range(60):
            path = [n.id for n in h.path(int(targets[b]))]
            if node.id not in path:
                continue
            truth = node.children.index(path[path.index(node.id) + 1])
            chosen = int(log_probs[b, i, : len(node.children)].argmax())
            samples += 1
            correct += chosen == truth
            confusion[truth][chosen] += 1
            hard_path = [n.id for n in h.path(int(hard[b]))]
            if node.id in hard_path:
                reached += 1
                reached_correct += (
                    hard_path[hard_path.index(node.id) + 1] == path[path.index(node.id) + 1]
                )
        row = nodes[i]
        assert row["id"] == node.id
        assert (row["samples"], row["correct"]) == (samples, correct)
        assert (row["reached"], row["reached_correct"]) == (reached, reached_correct)
        assert row["confusion"] == confusion


def test_reference_hierarchy_is_aligned_by_class_and_other_leaves_are_refused():
    h = four_classes()
    # The same classes in another class order, grouped differently: c0 with c2.
    nodes = [Node(f"c{i}", f"c{i}") for i in range(4)]
    nodes += [
        Node("P", "P", None, ("c0", "c2")),
        Node("Q", "Q", None, ("c1", "c3")),
        Node("r", "root", None, ("P", "Q")),
    ]
    other = Hierarchy(nodes, ["c3", "c2", "c1", "c0"])
    assert align_reference(h, other).tolist() == [3, 2, 1, 0]
    metrics = TreeMetrics(h, other)
    metrics.update(HAND_LOGITS, HAND_TARGETS)
    network = metrics.compute()["variants"]["network"]["hierarchy"]["reference"]
    # network mistakes: c1 -> c0 (LCA root in the reference: 2), c2 -> c0 (LCA P: 1)
    assert network["mistake_severity"] == 1.5 and network["severity_histogram"] == [0, 1, 1]

    five = Hierarchy(
        [Node(f"c{i}", f"c{i}") for i in range(5)]
        + [Node("r", "root", None, tuple(f"c{i}" for i in range(5)))],
        [f"c{i}" for i in range(5)],
    )
    with pytest.raises(ValueError, match="reference hierarchy"):
        TreeMetrics(h, five)
    renamed = Hierarchy(
        [Node(f"d{i}", f"d{i}") for i in range(4)]
        + [Node("r", "root", None, tuple(f"d{i}" for i in range(4)))],
        [f"d{i}" for i in range(4)],
    )
    with pytest.raises(ValueError, match="reference hierarchy"):
        TreeMetrics(h, renamed)


def test_unseen_routing_by_hand():
    h = four_classes()
    targets = [UnseenTarget("n00000001", "A", ("c0", "c1"))]
    routing = UnseenRouting(h, ["new"], targets)
    # hard paths: A/c0, A/c1, B/c3 (network says c0 there), B/c2
    logits = torch.tensor([[4, 0, 1, 1], [0, 3, 1, 1], [3, -3, 2, 2.5], [0, 0, 5, 1.0]])
    routing.update(logits, torch.zeros(4, dtype=torch.long))
    out = routing.compute()
    row = out["classes"][0]
    assert row["target"] == {"id": "A", "label": "A", "relatives": ["c0", "c1"]}
    assert (row["images"], row["nbdt"], row["network"]) == (4, 50.0, 75.0)
    assert row["levels"] == [
        [{"id": "r", "label": "root", "share": 100.0}],
        [{"id": "A", "label": "A", "share": 50.0}, {"id": "B", "label": "B", "share": 50.0}],
    ]
    assert out["overall"] == {"images": 4, "nbdt": 50.0, "network": 75.0}


def fashion_without(name: str) -> tuple[Hierarchy, str]:
    from nbdt.classes import dataset_classes

    info = dataset_classes("fashion-mnist")
    i = info.names.index(name)
    keep = [j for j in range(len(info.names)) if j != i]
    h = Hierarchy.wordnet([info.names[j] for j in keep], wnids=[info.wnids[j] for j in keep])
    return h, info.wnids[i]


def test_unseen_target_of_ankle_boot_is_the_shoes():
    from nbdt import wordnet

    h, wnid = fashion_without("Ankle boot")
    target = unseen_target(h, wnid)
    assert target.relatives == ("Sandal", "Sneaker")  # boot meets both at footwear
    assert {h.classes[c] for c in h.leaf_indices(target.node_id)} == {"Sandal", "Sneaker"}
    footwear = {wordnet.wnid(s) for s in wordnet.wordnet().synsets("footwear")}
    assert footwear & set(wordnet.ancestors(h[target.node_id].wnid))
    h, wnid = fashion_without("Sneaker")
    target = unseen_target(h, wnid)  # one nearest relative (Sandal, a shoe): its parent
    assert target.relatives == ("Sandal",)
    assert h[target.node_id].label == "footwear"
    with pytest.raises(ValueError, match="one of the model's classes"):
        unseen_target(h, h.leaves[0].wnid)


# ------------------------------------------------------------------------------- evaluate()
@pytest.fixture(scope="module")
def four_class_model(tiny_nbdt):
    """An untrained test_resnet NBDT over :func:`four_classes`, reading 28x28 images."""
    return tiny_nbdt(four_classes())


def images_of(targets: list[int], classes, seed: int = 0) -> TensorImages:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (len(targets), 1, 28, 28), generator=gen, dtype=torch.uint8)
    return TensorImages(images, torch.tensor(targets), classes, [f"x{i}" for i in classes])


def test_evaluate_is_one_pass_of_the_metrics_over_the_models_logits(four_class_model, tmp_path):
    data = images_of([0, 1, 2, 3, 3, 2, 1, 0, 2, 2], [f"c{i}" for i in range(4)])
    result = evaluate(four_class_model, data, batch_size=3)
    with torch.no_grad():
        logits = four_class_model.logits(BatchTransform(four_class_model.data_config)(data.images))
    expected = TreeMetrics(four_class_model.hierarchy)
    expected.update(logits, data.targets)
    metrics = dict(result.metrics)
    assert metrics.pop("images_per_s") > 0
    assert metrics.pop("format") == "nbdt-eval" and metrics.pop("version") == 1
    assert metrics.pop("unseen") is None
    assert_same(metrics, expected.compute(), rel=1e-5)  # the network sees other batches
    assert list(result.metrics["rulers"]) == ["model"]  # no WordNet ids: no default reference
    path = result.save(tmp_path / "eval.json")
    assert json.loads(path.read_text()) == result.metrics


def test_evaluate_routes_held_out_classes(four_class_model, monkeypatch):
    import nbdt.evaluation.evaluate as ev

    monkeypatch.setattr(ev, "unseen_target", lambda h, wnid: UnseenTarget(wnid, "B", ("c2", "c3")))
    classes = ["c0", "new", "c1", "c2", "c3"]
    data = images_of([0, 1, 1, 2, 3, 4, 1], classes, seed=1)
    result = evaluate(four_class_model, data, holdout=["new"], batch_size=4)
    assert result.metrics["images"] == 4
    assert result.metrics["class_images"] == [1, 1, 1, 1]
    unseen = result.metrics["unseen"]
    assert unseen["overall"]["images"] == 3
    assert unseen["classes"][0]["name"] == "new" and unseen["classes"][0]["wnid"] == "xnew"
    with torch.no_grad():
        logits = four_class_model.logits(
            BatchTransform(four_class_model.data_config)(data.images[[1, 2, 6]])
        )
    hard = four_class_model.rules.hard(logits)
    assert unseen["overall"]["nbdt"] == pytest.approx(100 * float((hard >= 2).float().mean()))
    assert unseen["overall"]["network"] == pytest.approx(
        100 * float((logits.argmax(1) >= 2).float().mean())
    )


@pytest.mark.parametrize(
    "classes, holdout, message",
    [
        (["c0", "c1", "c2", "c3"], ["shoe"], "unknown held-out class 'shoe'"),
        (["c0", "c1", "c2", "c3", "new"], [], "class 'new' is not one of the model's classes"),
        (["c0", "c1", "c2"], [], r"lacks the model's classes \['c3'\]"),
        (["c0", "c1", "c2", "c3"], ["c1"], "held-out class 'c1' is one of the model's"),
    ],
)
def test_evaluate_refuses_mismatched_classes(four_class_model, classes, holdout, message):
    data = images_of([0, 1, 2], classes)
    with pytest.raises(ValueError, match=message):
        evaluate(four_class_model, data, holdout=holdout)


def test_evaluate_refuses_empty_data_and_other_references(four_class_model, tmp_path):
    empty = images_of([], [f"c{i}" for i in range(4)])
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate(four_class_model, empty)
    data = images_of([0, 1], [f"c{i}" for i in range(4)])
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(data, []), batch_size=2)
    with pytest.raises(ValueError, match="no images to evaluate"):
        evaluate(four_class_model, loader)
    other = Hierarchy.random([f"c{i}" for i in range(5)], seed=0)
    path = other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="other.json"):
        evaluate(four_class_model, data, reference=path)
    with pytest.raises(ValueError, match="reference hierarchy"):
        evaluate(four_class_model, data, reference=other)
    with pytest.raises(ValueError, match="no WordNet id"):
        evaluate(four_class_model, data, reference="wordnet")


def test_every_eval_json_key_is_documented(four_class_model):
    data = images_of([0, 1, 2, 3], [f"c{i}" for i in range(4)])
    metrics = evaluate(four_class_model, data).metrics
    routing = UnseenRouting(four_classes(), ["x"], [UnseenTarget("n1", "A", ("c0",))])
    routing.update(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    metrics["unseen"] = routing.compute()
    documented = set(re.findall(r"`([\w@]+)`", DOCS.read_text(encoding="utf-8")))

    def keys(value):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield key
                yield from keys(inner)
        elif isinstance(value, list):
            for inner in value:
                yield from keys(inner)

    missing = sorted(set(keys(metrics)) - documented)
    assert missing == []
