"""Time the decision rules and tree losses against plain cross-entropy and the loop reference.

Prints one JSON object. Trees: random binary trees at C = 10 and 100 (the shape induced trees
have), the shipped induced ImageNet tree at C = 1000 (a random binary tree if that file is
missing; the JSON says which) and the shipped WordNet ImageNet tree (wide nodes). B = 256.

    .venv/bin/python scripts/bench_rules.py [--threads 1] [--repeats 30] [--device cpu]

Each time is the median over repeats, in ms: process CPU time on CPU (on a shared machine wall
time mostly measures waiting for other processes), wall time on CUDA. The loop reference is
tests/helpers/reference_loops.py.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from nbdt.hierarchy import Hierarchy  # noqa: E402
from nbdt.loss import HardTreeSupLoss, SoftTreeSupLoss  # noqa: E402
from nbdt.model import NBDT  # noqa: E402
from nbdt.rules import DecisionRules  # noqa: E402

from helpers import reference_loops as ref  # noqa: E402

BATCH = 256
TARGET_SOFT_LOSS_X_CE = 10.0
TARGET_HARD_INFERENCE_MS = 10.0


def median_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median time of ``fn`` in ms after two warm-up calls: CPU time of this process on CPU
    (on a shared machine wall time mostly measures waiting for the others), wall time on CUDA."""
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = clock()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append((clock() - start) * 1e3)
    return round(statistics.median(times), 3)


def trees() -> list[tuple[str, Hierarchy]]:
    out = [(f"random-binary-{c}", ref.random_tree(c, seed=0, branching=(2, 2))) for c in (10, 100)]
    for name in ("imagenet-induced", "imagenet-wordnet"):
        path = ROOT / "hierarchies" / f"{name}.json"
        if path.exists():
            out.append((name, Hierarchy.load(path)))
        elif name == "imagenet-induced":
            out.append(("random-binary-1000", ref.random_tree(1000, seed=0, branching=(2, 2))))
    return out


def bench_tree(
    name: str, h: Hierarchy, repeats: int, ref_repeats: int, device: torch.device
) -> dict:
    gen = torch.Generator().manual_seed(0)
    logits = (torch.randn(BATCH, h.num_classes, generator=gen) * 3).to(device)
    target = torch.randint(0, h.num_classes, (BATCH,), generator=gen).to(device)
    z = logits.clone().requires_grad_()
    soft_loss = SoftTreeSupLoss(h).to(device)
    hard_loss = HardTreeSupLoss(h).to(device)
    rules = DecisionRules(h).to(device)

    def fwd_bwd(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
        def run() -> None:
            z.grad = None
            loss_fn(z, target).backward()

        return run

    ms = {
        "cross_entropy_fwd_bwd": median_ms(fwd_bwd(F.cross_entropy), repeats, device),
        "soft_loss_fwd_bwd": median_ms(fwd_bwd(soft_loss), repeats, device),
        "hard_loss_fwd_bwd": median_ms(fwd_bwd(hard_loss), repeats, device),
        "soft_inference": median_ms(lambda: rules.soft(logits), repeats, device),
        "hard_inference": median_ms(lambda: rules.hard(logits), repeats, device),
    }
    cpu_z = z.detach().cpu().requires_grad_()
    cpu_target = target.cpu()

    def ref_loss(term: Callable) -> Callable:
        def run() -> None:
            cpu_z.grad = None
            (F.cross_entropy(cpu_z, cpu_target) + term(h, cpu_z, cpu_target).mean()).backward()

        return run

    cpu = torch.device("cpu")
    reference_ms = {
        "soft_loss_fwd_bwd": median_ms(ref_loss(ref.soft_loss), ref_repeats, cpu),
        "hard_loss_fwd_bwd": median_ms(ref_loss(ref.hard_loss), ref_repeats, cpu),
        "soft_inference": median_ms(lambda: ref.soft(h, cpu_z.detach()), ref_repeats, cpu),
        "hard_inference": median_ms(lambda: ref.hard(h, cpu_z.detach()), ref_repeats, cpu),
    }
    ce = ms["cross_entropy_fwd_bwd"]
    big = h.num_classes == 1000 and h.max_depth < 50 and "wordnet" not in name
    alternatives = edge_score_alternatives(rules, z, repeats, device) if big else None
    return {
        "tree": name,
        "classes": h.num_classes,
        "inner_nodes": len(h.inner_nodes),
        "max_children": max(len(n.children) for n in h.inner_nodes),
        "depth": h.max_depth,
        "ms": ms,
        "x_cross_entropy": {k: round(v / ce, 2) for k, v in ms.items() if k in reference_ms},
        "reference_loops_ms (cpu)": reference_ms,
        "speedup_vs_reference": {k: round(v / ms[k], 1) for k, v in reference_ms.items()},
        "edge_scores_fwd_bwd_ms": alternatives,
        "explain_overhead_ms_per_image": explain_overhead_ms(h, max(3, repeats // 5), device),
    }


def explain_overhead_ms(h: Hierarchy, repeats: int, device: torch.device) -> dict:
    """What ``NBDT.explain`` costs per image beyond the network's own forward pass, B = 256:
    the rules, the per-sample paths and building the Explanation objects."""
    network = timm.create_model("test_resnet", num_classes=h.num_classes)
    x = torch.randn(BATCH, 3, 32, 32, device=device)
    out = {}
    for mode in ("soft", "hard"):
        model = NBDT(network, h, mode=mode).to(device).eval()
        with torch.no_grad():
            forward = median_ms(lambda m=model: m.logits(x), repeats, device)
        explain = median_ms(lambda m=model: m.explain(x), repeats, device)
        out[mode] = round((explain - forward) / BATCH, 4)
    return out


def edge_score_alternatives(
    rules: DecisionRules, z: torch.Tensor, repeats: int, device: torch.device
) -> dict:
    """Every edge's mean leaf logit, forward + backward, three ways: the leaf-mean matrix M
    (E x C) dense and as sparse CSR (z @ M.T), and the prefix sums DecisionRules uses."""
    start, end = rules.edge_start.tolist(), rules.edge_end.tolist()
    leaf_mean = torch.zeros(len(start), rules.num_classes)
    for e, (lo, hi) in enumerate(zip(start, end, strict=True)):
        leaf_mean[e, rules.leaf_order[lo:hi]] = 1.0 / (hi - lo)
    leaf_mean = leaf_mean.to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        sparse = leaf_mean.to_sparse_csr()

    def run(scores: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            z.grad = None
            scores().sum().backward()

        return step

    return {
        "dense_matmul": median_ms(run(lambda: z @ leaf_mean.t()), repeats, device),
        "sparse_csr_matmul": median_ms(
            run(lambda: torch.sparse.mm(sparse, z.t()).t()), repeats, device
        ),
        "prefix_sums (used)": median_ms(run(lambda: rules._edge_scores(z)), repeats, device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--reference-repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--keep-heap",
        action="store_true",
        help="glibc only: serve large tensors from the heap and never trim it, so repeated"
        " allocations stop paying page faults (large on some VMs) and times show compute",
    )
    args = parser.parse_args()
    if args.keep_heap:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = [
        bench_tree(name, h, args.repeats, args.reference_repeats, device) for name, h in trees()
    ]
    big = next(r for r in results if r["classes"] == 1000)
    report = {
        "batch": BATCH,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "keep_heap": args.keep_heap,
        "repeats": args.repeats,
        "clock": "wall" if device.type == "cuda" else "process CPU time",
        "torch": torch.__version__,
        "node_score": "mean",
        "results": results,
        "targets_at_1000": {
            "tree": big["tree"],
            "soft_loss_x_cross_entropy": big["x_cross_entropy"]["soft_loss_fwd_bwd"],
            "soft_loss_ok": big["x_cross_entropy"]["soft_loss_fwd_bwd"] <= TARGET_SOFT_LOSS_X_CE,
            "hard_inference_ms": big["ms"]["hard_inference"],
            "hard_inference_ok": big["ms"]["hard_inference"] <= TARGET_HARD_INFERENCE_MS,
            "explain_overhead_ms_per_image": big["explain_overhead_ms_per_image"],
        },
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
