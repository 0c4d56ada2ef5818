"""Tree-supervision losses against the loop reference; schedules, targets, reductions, errors."""

import pytest
import torch
import torch.nn.functional as F

from nbdt.loss import DecisionDistillLoss, HardTreeSupLoss, SoftTreeSupLoss, WeightSchedule
from nbdt.rules import DecisionRules

from helpers import reference_loops as ref

TREES = [(23, 0, (2, 7), False), (14, 1, (2, 3), True), (32, 2, (2, 2), False)]


@pytest.fixture(params=TREES, ids=lambda s: f"C{s[0]}-b{s[2][1]}{'-chain' if s[3] else ''}")
def tree(request):
    classes, seed, branching, chain = request.param
    return ref.random_tree(classes, seed, branching, chain)


def batch(h, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = (torch.randn(size, h.num_classes, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    return z, torch.randint(0, h.num_classes, (size,), generator=gen)


def reduce(values, reduction):
    return {"mean": values.mean(), "sum": values.sum(), "none": values}[reduction]


CASES = [
    ("soft-nll", lambda h, **kw: SoftTreeSupLoss(h, **kw), ref.soft_loss, {}),
    (
        "soft-reference",
        lambda h, **kw: SoftTreeSupLoss(h, variant="reference", **kw),
        ref.soft_loss,
        {"variant": "reference"},
    ),
    ("hard", lambda h, **kw: HardTreeSupLoss(h, **kw), ref.hard_loss, {}),
]


@pytest.mark.parametrize("name,make,reference,extra", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("node_score", ["mean", "marginal"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_matches_reference(tree, name, make, reference, extra, node_score, reduction):
    z, y = batch(tree)
    loss = make(tree, tree_weight=0.7, ce_weight=0.4, node_score=node_score, reduction=reduction)
    got = loss(z, y)
    tree_term = reference(tree, z, y, node_score=node_score, **extra)
    ce = F.cross_entropy(z, y, reduction=reduction)
    want = 0.4 * ce + 0.7 * reduce(tree_term, reduction)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    g_got = torch.autograd.grad(got.sum(), z)[0]
    g_want = torch.autograd.grad(want.sum(), z)[0]
    torch.testing.assert_close(g_got, g_want, atol=1e-12, rtol=0)


def test_hard_is_soft_nll_over_path_length(tree):
    z, y = batch(tree)
    soft = SoftTreeSupLoss(tree, reduction="none").tree_loss(z, y)
    hard = HardTreeSupLoss(tree, reduction="none").tree_loss(z, y)
    lengths = torch.tensor([len(tree.path(int(c))) - 1 for c in y], dtype=torch.float64)
    torch.testing.assert_close(hard, soft / lengths)


def test_marginal_nll_tree_term_is_cross_entropy(tree):
    z, y = batch(tree)
    term = SoftTreeSupLoss(tree, node_score="marginal", reduction="none").tree_loss(z, y)
    torch.testing.assert_close(term, F.cross_entropy(z, y, reduction="none"))


@pytest.mark.parametrize("make", [SoftTreeSupLoss, HardTreeSupLoss])
def test_probability_targets_are_linear(tree, make):
    z, y = batch(tree)
    loss = make(tree, reduction="none")
    onehot = F.one_hot(y, tree.num_classes).double()
    torch.testing.assert_close(loss(z, onehot), loss(z, y), atol=1e-12, rtol=0)
    other = y.roll(1)
    mixed = 0.3 * onehot + 0.7 * F.one_hot(other, tree.num_classes).double()
    want = 0.3 * loss(z, y) + 0.7 * loss(z, other)
    torch.testing.assert_close(loss(z, mixed), want, atol=1e-12, rtol=0)


def test_custom_criterion_and_reduction_mismatch():
    h = ref.random_tree(10, 3)
    z, y = batch(h)
    smooth = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = SoftTreeSupLoss(h, criterion=smooth, tree_weight=0.0)
    torch.testing.assert_close(loss(z, y), smooth(z, y))
    with pytest.raises(ValueError, match="give the criterion the same reduction"):
        SoftTreeSupLoss(h, criterion=smooth, reduction="none")(z, y)


def test_schedules():
    assert WeightSchedule(1.0, 0.0).at(0, 5) == 1.0
    assert WeightSchedule(1.0, 0.0).at(4, 5) == 0.0
    assert WeightSchedule(0.0, 1.0, power=2.0).at(2, 5) == pytest.approx(0.25)
    assert WeightSchedule(2.0, 3.0).at(0, 1) == 2.0  # a single epoch stays at the start

    h = ref.random_tree(10, 3)
    loss = HardTreeSupLoss(
        h, tree_weight=0.5, tree_weight_end=2.0, ce_weight=1.0, ce_weight_end=0.0
    )
    assert (loss.tree_weight, loss.ce_weight) == (0.5, 1.0)
    loss.set_epoch(2, 3)
    assert (loss.tree_weight, loss.ce_weight) == (2.0, 0.0)
    z, y = batch(h)
    want = 2.0 * HardTreeSupLoss(h, tree_weight=1.0, ce_weight=0.0)(z, y)
    torch.testing.assert_close(loss(z, y), want)

    fixed = SoftTreeSupLoss(h, tree_weight=0.3)
    fixed.set_epoch(7, 10)
    assert (fixed.tree_weight, fixed.ce_weight) == (0.3, 1.0)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"tree_weight": -1.0}, "tree_weight must be a finite number >= 0"),
        ({"ce_weight_end": float("nan")}, "ce_weight_end must be a finite number >= 0"),
        ({"tree_weight_power": 0}, "tree_weight_power must be a finite number > 0"),
        ({"reduction": "avg"}, "reduction must be one of"),
        ({"node_score": "max"}, "node_score must be 'mean' or 'marginal'"),
        ({"variant": "kl"}, "variant must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftTreeSupLoss(ref.random_tree(6, 0), **kwargs)


def test_set_epoch_errors():
    loss = SoftTreeSupLoss(ref.random_tree(6, 0))
    with pytest.raises(ValueError, match=r"epoch must be an int in \[0, 3\)"):
        loss.set_epoch(3, 3)
    with pytest.raises(ValueError, match="total_epochs must be an int >= 1"):
        loss.set_epoch(0, 0)


@pytest.mark.parametrize("make", [SoftTreeSupLoss, HardTreeSupLoss])
def test_normalised_outputs_are_refused(make):
    h = ref.random_tree(12, 4)
    z, y = batch(h)
    for normalised, kind in (
        (torch.log_softmax(z, 1), "log-probabilities"),
        (z.softmax(1), "probabilities"),
        # NBDT's hard mode: the decision as a point mass, log 1 = 0 and log 0 = -inf
        (torch.full_like(z, float("-inf")).scatter(1, y[:, None], 0.0), "log-probabilities"),
    ):
        with pytest.raises(ValueError, match=f"got {kind} .*NBDT.logits") as err:
            make(h)(normalised, y)
        assert "\n" not in str(err.value)
    # The same check passes raw logits, including a single row.
    make(h)(z[:1], y[:1])


def test_shape_errors():
    h = ref.random_tree(9, 11)
    z, y = batch(h)
    loss = SoftTreeSupLoss(h)
    with pytest.raises(ValueError, match="hierarchy with 9 classes"):
        loss(torch.randn(8, 10), y)
    with pytest.raises(ValueError, match=r"class indices of shape \(8,\)"):
        loss(z, y[:3])
    with pytest.raises(ValueError, match="must hold float probabilities"):
        loss(z, torch.zeros(8, 9, dtype=torch.long))


def test_buffers_follow_the_loss():
    loss = HardTreeSupLoss(ref.random_tree(8, 2)).to("meta")
    assert {b.device.type for b in loss.buffers()} == {"meta"}
    assert loss.state_dict() == {}


def test_autocast_training_step():
    h = ref.random_tree(20, 6)
    layer = torch.nn.Linear(5, 20)
    x, y = torch.randn(16, 5), torch.randint(0, 20, (16,))
    for loss in (SoftTreeSupLoss(h), HardTreeSupLoss(h)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            value = loss(layer(x), y)
        value.backward()
        assert value.dtype == torch.float32 and torch.isfinite(value)
        assert torch.isfinite(layer.weight.grad).all()
        layer.zero_grad()


@pytest.mark.parametrize("node_score", ["mean", "marginal"])
def test_an_empty_batch_is_no_error(node_score):
    h = ref.random_tree(10, 3)
    empty, none = torch.zeros(0, 10, requires_grad=True), torch.zeros(0, dtype=torch.long)
    for loss in (
        SoftTreeSupLoss(h, node_score=node_score),
        HardTreeSupLoss(h, node_score=node_score),
    ):
        for _ in range(2):  # before and after the first-batch input check
            assert loss(empty, none).isnan()  # as torch's CrossEntropyLoss: a mean over nothing
            loss(*batch(h))


def reference_decision_kl(h, logits, teacher_logits, temperature):
    """A plain loop over samples, inner nodes and children."""
    student = ref.node_log_probs(h, logits / temperature)
    teacher = ref.node_log_probs(h, teacher_logits / temperature)
    total = logits.new_zeros(())
    for b in range(logits.shape[0]):
        for i, node in enumerate(h.inner_nodes):
            for k in range(len(node.children)):
                p = teacher[b, i, k].exp()
                total = total + p * (teacher[b, i, k] - student[b, i, k])
    return total / (logits.shape[0] * len(h.inner_nodes)) * temperature**2


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_decision_distillation_is_the_nodes_kl_to_the_teacher(tree, temperature):
    logits, target = batch(tree)
    teacher = torch.randn(logits.shape, generator=torch.Generator().manual_seed(1)).double()
    base = SoftTreeSupLoss(tree).double()
    loss = DecisionDistillLoss(base, DecisionRules(tree).double(), 0.25, temperature)
    value = loss(logits, target, teacher)
    expected = reference_decision_kl(tree, logits, teacher, temperature)
    mixed = 0.75 * base(logits, target) + 0.25 * expected
    assert value.item() == pytest.approx(mixed.item(), rel=1e-9)
    alone = DecisionDistillLoss(base, DecisionRules(tree).double(), 1.0, temperature)
    assert alone(logits, target, teacher).item() == pytest.approx(expected.item(), rel=1e-9)
    gradient = torch.autograd.grad(loss.decision_kl(logits, teacher), logits)[0]
    expected_gradient = torch.autograd.grad(expected, logits)[0]
    torch.testing.assert_close(gradient, expected_gradient)  # no NaN from the padding slots


def test_decision_distillation_vanishes_when_the_decisions_are_the_teachers(tree):
    logits, target = batch(tree)
    loss = DecisionDistillLoss(SoftTreeSupLoss(tree).double(), DecisionRules(tree).double())
    kl = loss.decision_kl(logits, logits.detach())
    assert abs(kl.item()) < 1e-12
    assert torch.autograd.grad(kl, logits)[0].abs().max() < 1e-12
    shifted = logits.detach() + 5.0  # the same decisions: node scores move together
    assert abs(loss.decision_kl(logits, shifted).item()) < 1e-9


@pytest.mark.parametrize("kwargs", [{"share": -0.5}, {"share": 1.5}, {"temperature": 0.0}])
def test_decision_distillation_bad_arguments(tree, kwargs):
    with pytest.raises(ValueError, match="0 <= share <= 1 and temperature > 0"):
        DecisionDistillLoss(SoftTreeSupLoss(tree), DecisionRules(tree), **kwargs)
