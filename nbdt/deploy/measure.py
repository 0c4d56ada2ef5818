"""The measures of a compressed NBDT: accuracy through ONNX Runtime, latency, size, and how
many decisions survive compression.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nbdt.deploy.runtime import import_deploy
from nbdt.evaluation.accumulator import Setting
from nbdt.evaluation.metrics import Top1
from nbdt.explanation import class_paths
from nbdt.hierarchy import Hierarchy
from nbdt.model import NBDT
from nbdt.rules import DecisionRules


# ------------------------------------------------------------------------------- measures
def decision_agreement(
    hierarchy: Hierarchy, reference: np.ndarray, other: np.ndarray
) -> dict[str, Any]:
    """How many hard decisions survive: ``path`` is the share of samples whose whole hard path
    is unchanged (in a tree, the same leaf), ``per_depth[d]`` the share of samples whose path
    reaches depth d under ``reference`` that took the same child at the same node there."""
    nodes, slots, lengths = class_paths(hierarchy)
    reference, other = np.asarray(reference), np.asarray(other)
    same = (nodes[reference] == nodes[other]) & (slots[reference] == slots[other])
    reached = np.arange(nodes.shape[1]) < lengths[reference][:, None]
    counts = reached.sum(0)
    per_depth = (same & reached).sum(0) / np.maximum(counts, 1)
    return {
        "path": float((reference == other).mean()) if len(reference) else 0.0,
        "per_depth": [float(v) for v, n in zip(per_depth, counts, strict=True) if n],
    }


def parameters_and_macs(model: NBDT) -> tuple[int, int]:
    """The network's parameter count and multiply-accumulates per image, at the data config's
    input size."""
    return network_parameters_and_macs(model.model, model.data_config["input_size"])


def network_parameters_and_macs(network: nn.Module, input_size: Sequence[int]) -> tuple[int, int]:
    """Parameter count and multiply-accumulates per image of shape ``input_size`` (C, H, W), by
    Torch-Pruning's counter, in eval mode."""
    tp = import_deploy("torch_pruning")
    size = tuple(int(v) for v in input_size)
    macs, params = tp.utils.count_ops_and_params(network.eval(), torch.zeros(1, *size))
    return int(params), int(macs)


def onnx_latency(
    paths: Sequence[str | os.PathLike[str]],
    batch: int,
    *,
    threads: int = 1,
    repeats: int = 5,
) -> list[float]:
    """Median CPU seconds per batch of each ONNX file, measured interleaved (one run of each in
    turn, ``repeats`` rounds) with ``threads`` intra-op threads, on random input."""
    from nbdt.deploy.runtime import OnnxNBDT

    models = [OnnxNBDT(p, threads=threads) for p in paths]
    size = tuple(int(v) for v in models[0].data_config["input_size"])
    x = np.random.default_rng(0).standard_normal((batch, *size), dtype=np.float32)
    times: list[list[float]] = [[] for _ in models]
    for m in models:
        m.run(x)  # warm-up
    for _ in range(repeats):
        for m, row in zip(models, times, strict=True):
            start = time.process_time()
            m.run(x)
            row.append(time.process_time() - start)
    return [float(np.median(row)) for row in times]


def evaluate_onnx(
    files: Mapping[str, str | os.PathLike[str]],
    inputs: np.ndarray,
    labels: np.ndarray,
    *,
    reference: str,
    threads: int = 1,
) -> dict[str, dict[str, Any]]:
    """Per ONNX file: size, network / NBDT-soft / NBDT-hard top-1 on ``inputs`` (preprocessed)
    and ``labels``, CPU latency at batch 1 and 64 (measured interleaved), and decision agreement
    with the ``reference`` file's hard decisions; ratios against the reference."""
    from nbdt.deploy.runtime import OnnxNBDT

    names = list(files)
    latency = {
        batch: onnx_latency([files[n] for n in names], batch, threads=threads) for batch in (1, 64)
    }
    outputs = {name: OnnxNBDT(files[name], threads=threads).run(inputs) for name in names}
    hierarchy = OnnxNBDT(files[reference]).hierarchy
    setting = Setting(DecisionRules(hierarchy))
    rows: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        out = outputs[name]
        top1 = Top1(setting)
        predictions = (out["logits"].argmax(1), out["class_log_probs"].argmax(1), out["hard_class"])
        top1.add(torch.from_numpy(np.stack(predictions)), torch.from_numpy(np.asarray(labels)))
        share = top1.scalars()
        rows[name] = {
            "file_bytes": Path(files[name]).stat().st_size,
            "latency_s_batch1": latency[1][i],
            "latency_s_batch64": latency[64][i],
            "network_top1": share["top1"],
            "nbdt_soft_top1": share["nbdt_soft_top1"],
            "nbdt_hard_top1": share["nbdt_hard_top1"],
            "agreement": decision_agreement(
                hierarchy, outputs[reference]["hard_class"], out["hard_class"]
            ),
        }
    base = rows[reference]
    for row in rows.values():
        row["size_ratio"] = row["file_bytes"] / base["file_bytes"]
        row["latency_ratio_batch64"] = row["latency_s_batch64"] / base["latency_s_batch64"]
        row["soft_top1_change"] = row["nbdt_soft_top1"] - base["nbdt_soft_top1"]
    return rows
