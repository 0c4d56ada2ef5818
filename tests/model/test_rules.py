"""DecisionRules against the loop reference: values, gradients, descent, dtypes, devices, errors."""

import pytest
import torch

from nbdt.hierarchy import Hierarchy, Node
from nbdt.rules import DecisionRules

from helpers import reference_loops as ref

# (classes, seed, branching, chain): mixed, deep chain, binary, wide, the smallest tree
TREES = [
    (23, 0, (2, 7), False),
    (16, 1, (2, 3), True),
    (30, 2, (2, 2), False),
    (40, 3, (5, 7), False),
    (2, 4, (2, 2), False),
]
SCORES = ["mean", "marginal"]


def tree_id(spec):
    classes, seed, branching, chain = spec
    return f"C{classes}-b{branching[0]}{branching[1]}{'-chain' if chain else ''}"


@pytest.fixture(params=TREES, ids=tree_id)
def tree(request):
    classes, seed, branching, chain = request.param
    return ref.random_tree(classes, seed, branching, chain)


def logits_for(h, batch=6, seed=0, scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, h.num_classes, generator=gen, dtype=torch.float64) * scale
    return z.requires_grad_()


def grad_of(values, z, seed=1):
    """Gradient of a random linear functional of ``values`` with respect to ``z``."""
    weights = torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))
    finite = torch.isfinite(values)
    total = (torch.where(finite, values, 0.0) * weights.to(values.dtype)).sum()
    return torch.autograd.grad(total, z)[0]


def test_random_tree_helper_shapes():
    deep = ref.random_tree(16, 1, (2, 3), chain=True)
    assert deep.max_depth >= 6
    wide = ref.random_tree(40, 3, (5, 7))
    assert max(len(n.children) for n in wide.inner_nodes) == 7
    # Depth-first leaf order differs from class order, so the permutation is exercised.
    order = DecisionRules(ref.random_tree(23, 0)).leaf_order
    assert not torch.equal(order, torch.arange(23))


@pytest.mark.parametrize("node_score", SCORES)
def test_node_log_probs_match_reference(tree, node_score):
    rules = DecisionRules(tree, node_score)
    z = logits_for(tree)
    got, want = rules.node_log_probs(z), ref.node_log_probs(tree, z, node_score)
    assert got.shape == (6, rules.num_nodes, rules.max_children)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_of(got, z), grad_of(want, z), atol=1e-12, rtol=0)


@pytest.mark.parametrize("node_score", SCORES)
def test_soft_matches_reference_values_and_gradients(tree, node_score):
    rules = DecisionRules(tree, node_score)
    z = logits_for(tree)
    got, want = rules.soft(z), ref.soft(tree, z, node_score)
    assert got.dtype == torch.float64 and got.shape == (6, tree.num_classes)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_of(got, z), grad_of(want, z), atol=1e-12, rtol=0)
    torch.testing.assert_close(got.exp().sum(1), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("node_score", SCORES)
def test_hard_is_greedy_descent(tree, node_score):
    rules = DecisionRules(tree, node_score)
    z = logits_for(tree, batch=12).detach()
    assert torch.equal(rules.hard(z), ref.hard(tree, z, node_score))
    # Ties go to the first child, as argmax does: all-equal logits pick the leftmost path.
    zeros = torch.zeros(3, tree.num_classes)
    assert torch.equal(rules.hard(zeros), ref.hard(tree, zeros, node_score))


@pytest.mark.parametrize("node_score", SCORES)
def test_path_log_probs_are_the_label_path_of_soft(tree, node_score):
    rules = DecisionRules(tree, node_score)
    z = logits_for(tree)
    classes = torch.arange(6) % tree.num_classes
    steps = rules.path_log_probs(z, classes)
    assert steps.shape == (6, tree.max_depth)
    assert torch.all(steps[~rules.path_mask[classes]] == 0)
    soft = rules.soft(z).gather(1, classes[:, None])[:, 0]
    torch.testing.assert_close(steps.sum(1), soft, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_of(steps.sum(1), z), grad_of(soft, z), atol=1e-12, rtol=0)


def test_gradcheck_soft_and_path():
    h = ref.random_tree(9, 5, (2, 4))
    z = logits_for(h, batch=3)
    for node_score in SCORES:
        rules = DecisionRules(h, node_score)
        assert torch.autograd.gradcheck(rules.soft, (z,))
        assert torch.autograd.gradcheck(
            lambda x, rules=rules: rules.path_log_probs(x, torch.tensor([0, 4, 8])), (z,)
        )


def test_marginal_soft_is_the_networks_softmax(tree):
    rules = DecisionRules(tree, "marginal")
    z = logits_for(tree, batch=8, scale=10.0)
    torch.testing.assert_close(rules.soft(z), torch.log_softmax(z, 1), atol=1e-12, rtol=0)
    z32 = z.detach().float()
    torch.testing.assert_close(rules.soft(z32), torch.log_softmax(z32, 1), atol=2e-5, rtol=0)
    # A branch probability is the network's probability mass under that child.
    probs = torch.softmax(z, 1)
    root = tree.root
    mass = torch.stack([probs[:, list(tree.leaf_indices(c))].sum(1) for c in root.children], 1)
    got = rules.node_log_probs(z)[:, 0, : len(root.children)].exp()
    torch.testing.assert_close(got, mass, atol=1e-12, rtol=0)


def test_mean_rule_is_the_mean_of_leaf_logits():
    # root -> (a: classes 0, 1, 2), class 3; class order differs from depth-first order.
    nodes = [
        Node("root", "root", None, ("x3", "a")),
        Node("a", "a", None, ("x0", "x2", "x1")),
        *(Node(f"x{j}", f"x{j}") for j in range(4)),
    ]
    h = Hierarchy(nodes, ["x0", "x1", "x2", "x3"])
    z = torch.tensor([[1.0, 2.0, 6.0, 0.0]])
    rules = DecisionRules(h)
    root = rules.node_log_probs(z)[0, 0, :2]
    torch.testing.assert_close(root, torch.log_softmax(torch.tensor([0.0, 3.0]), 0))
    assert rules.hard(z).tolist() == [2]
    assert rules.node_log_probs(z)[0, 1].exp().sum().item() == pytest.approx(1.0)


def test_deep_chain_and_large_tree():
    chain = ref.random_tree(200, 7, (2, 2), chain=True)  # a caterpillar: depth 199
    assert chain.max_depth == 199
    z = logits_for(chain, batch=4).detach()
    rules = DecisionRules(chain)
    torch.testing.assert_close(rules.soft(z), ref.soft(chain, z), atol=1e-10, rtol=0)
    assert torch.equal(rules.hard(z), ref.hard(chain, z))

    big = ref.random_tree(1000, 8, (2, 2))
    rules = DecisionRules(big)
    z = torch.randn(5, 1000) * 5
    soft = rules.soft(z)
    assert soft.dtype == torch.float32
    torch.testing.assert_close(soft.exp().sum(1), torch.ones(5), atol=1e-5, rtol=0)
    classes = rules.hard(z)
    assert torch.equal(classes, ref.hard(big, z))


def test_dtypes_autocast_and_buffers():
    h = ref.random_tree(12, 9)
    rules = DecisionRules(h)
    z = torch.randn(4, 12)
    assert rules.soft(z.to(torch.bfloat16)).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = rules.soft(z)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, rules.soft(z))
    assert rules.state_dict() == {}  # derived from the hierarchy, not saved
    assert not any(b.is_floating_point() for b in rules.buffers())
    as64 = DecisionRules(h).to(torch.float64)
    assert as64.soft(z.double()).dtype == torch.float64
    assert as64.soft(z).dtype == torch.float32
    moved = DecisionRules(h, "marginal").to("meta")
    assert {b.device.type for b in moved.buffers()} == {"meta"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    h = ref.random_tree(50, 10)
    z = torch.randn(8, 50)
    for node_score in SCORES:
        rules = DecisionRules(h, node_score)
        cpu = rules.soft(z), rules.hard(z)
        rules.cuda()
        gpu = rules.soft(z.cuda()), rules.hard(z.cuda())
        torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=1e-5, rtol=0)
        assert torch.equal(gpu[1].cpu(), cpu[1])


def test_errors_are_one_line():
    h = ref.random_tree(9, 11)
    rules = DecisionRules(h)
    with pytest.raises(ValueError, match=r"hierarchy with 9 classes") as err:
        rules.soft(torch.randn(2, 10))
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"expected \(batch, 9\)"):
        rules.hard(torch.randn(9))
    with pytest.raises(TypeError, match="torch.Tensor"):
        rules.soft([[0.0] * 9])
    with pytest.raises(ValueError, match="node_score must be 'mean' or 'marginal', got 'max'"):
        DecisionRules(h, "max")
    with pytest.raises(TypeError, match="nbdt.Hierarchy"):
        DecisionRules({"root": []})
    with pytest.raises(ValueError, match=r"classes must be a tensor of shape \(2,\)"):
        rules.path_log_probs(torch.randn(2, 9), torch.tensor([1, 2, 3]))
