"""Compression: structured channel pruning of the network, int8 quantisation of the exported
ONNX graph, and the measure that matters for an NBDT: how many decisions survive.

Pruning uses Torch-Pruning's dependency graph (coupled channels leave together); the classifier
head keeps all its rows and columns (the channels that feed it are not pruned), so the class
vectors, and the hierarchy induced from them, stay as they were. A pruned network no longer
matches ``timm.create_model(arch)``: its checkpoint stores, under ``"pruned"``, the changed
module attributes (channel counts, groups) as plain data, which ``nbdt.networks`` applies
to a fresh timm model before its state dict loads: still ``torch.load(weights_only=True)``.

Quantisation works on the exported ONNX graph, restricted to the network's nodes: the decision
rules (prefix sums, log-softmaxes, the descent) stay float32. Two kinds (:data:`QUANTIZATIONS`):

- "int8": ONNX Runtime's static QDQ quantisation (int8 weights per output channel, int8
  activations calibrated on real images); integer kernels, fastest where the CPU has VNNI.
- "int8-weights": int8 weights per output channel stored as int8 and decoded by Cast and Mul,
  which ONNX Runtime's constant folding turns back into float32 weights when a session loads:
  the file is about 4x smaller and runs at float32 speed, which on CPUs without VNNI is faster
  than static int8; no calibration, and activations keep float32 precision.

Both were chosen over PyTorch's PT2E flow because the deployed artefact is the ONNX file:
quantising that graph is what is served, needs no torch at run time, and runs on every ORT
provider.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from nbdt._io import atomic_path
from nbdt.explanation import class_paths
from nbdt.hierarchy import Hierarchy
from nbdt.model import NBDT
from nbdt.networks import architecture_changes
from nbdt.runtime import INPUT_NAME, import_deploy

if TYPE_CHECKING:
    from nbdt.train import TrainConfig


def _magnitude(tp: Any) -> Any:
    return tp.importance.GroupMagnitudeImportance(p=2)


def _taylor(tp: Any) -> Any:
    return tp.importance.GroupTaylorImportance()


# importance name -> Torch-Pruning criterion (taylor needs labelled examples for its gradients)
IMPORTANCES: dict[str, Callable[[Any], Any]] = {"magnitude": _magnitude, "taylor": _taylor}


def prune(
    model: NBDT,
    ratio: float,
    *,
    importance: str = "magnitude",
    global_pruning: bool = False,
    examples: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None,
    round_to: int | None = None,
) -> NBDT:
    """A copy of ``model`` with a share ``ratio`` (0 < ratio < 1) of the network's prunable
    channels removed (per layer, or ranked across layers with ``global_pruning``).

    ``importance`` is a key of :data:`IMPORTANCES`; "taylor" reads the gradients of the NBDT's
    soft-inference NLL on ``examples`` (batches of preprocessed images and labels). The head is
    kept whole. Save it and fine-tune the file with :func:`finetune` (the trainer's parts). An
    architecture Torch-Pruning cannot handle is one ``ValueError`` naming it.
    """
    tp = import_deploy("torch_pruning")
    if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise ValueError(f"ratio must be between 0 and 1 (exclusive), got {ratio!r}")
    if importance not in IMPORTANCES:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if importance == "taylor" and examples is None:
        raise ValueError("importance 'taylor' needs examples: batches of (images, labels)")
    arch = model.arch or type(model.model).__name__
    pruned = copy.deepcopy(model).cpu().float().eval()
    network = pruned.model
    head = network.get_classifier() if hasattr(network, "get_classifier") else None
    if not isinstance(head, nn.Module) or not any(p.dim() >= 2 for p in head.parameters()):
        raise ValueError(f"cannot prune {arch}: its classifier head was not found")
    size = tuple(int(v) for v in model.data_config["input_size"])
    example = torch.zeros(2, *size)
    try:
        keep = _modules_feeding(tp, network, head, example)
        pruner = tp.pruner.MetaPruner(
            network,
            example,
            importance=IMPORTANCES[importance](tp),
            pruning_ratio=float(ratio),
            global_pruning=global_pruning,
            ignored_layers=[head, *keep],
            round_to=round_to,
        )
        if importance == "taylor":
            _accumulate_gradients(pruned, examples)
        pruner.step()
        network.zero_grad(set_to_none=True)
        with torch.no_grad():
            out = network(example)
    except (ValueError, TypeError) as e:
        raise ValueError(f"torch-pruning cannot prune {arch}: {_one_line(e)}") from None
    except Exception as e:  # a half-supported layer fails anywhere in tracing or the forward
        raise ValueError(
            f"torch-pruning cannot prune {arch} ({type(e).__name__}: {_one_line(e)})"
        ) from None
    if tuple(out.shape) != (2, model.hierarchy.num_classes):
        raise ValueError(f"torch-pruning cannot prune {arch}: the pruned network's output changed")
    pruned.pruned = architecture_changes(network, pruned.arch, pruned.model_kwargs)
    return pruned


def finetune(
    config: TrainConfig, *, teacher: NBDT | None = None, distill: float = 0.5
) -> tuple[NBDT, list[dict[str, Any]]]:
    """Tree-supervised fine-tuning of the model file ``config.checkpoint`` (a pruned one
    rebuilds from it) with ``nbdt-train``'s parts: the plan's network and data, then per epoch
    :func:`~nbdt.train.train_one_epoch` and :func:`~nbdt.train.validate`; ``config.output``
    becomes a run folder as ``nbdt-train`` writes (args.json, last.pt, best.pt, metrics.jsonl,
    its output stages). ``config.hierarchy`` "checkpoint" keeps the tree, "induced" induces
    it again from the head first. With a ``teacher`` (the uncompressed model) and ``distill``
    > 0, a share ``distill`` of the loss is :class:`~nbdt.loss.DecisionDistillLoss`'s decision
    KL to the teacher (1: the teacher's decisions alone), so that the tuned model keeps its
    decisions. Returns the tuned model and the epochs' metrics."""
    from nbdt import data, train
    from nbdt.loss import DecisionDistillLoss

    config.validate()
    runtime = train.start_runtime(config.device)
    plan = train.make_plan(config, runtime.device)
    if plan.checkpoint is None:
        raise ValueError("finetune: config.checkpoint must name the model file to fine-tune")
    network, model_kwargs = plan.network()
    device = runtime.device
    data_config = plan.checkpoint.get("data_config") or plan.data_config(network, model_kwargs)
    hierarchy = plan.fixed_hierarchy() or plan.induce(network)
    model = NBDT(
        network,
        hierarchy,
        plan.checkpoint["mode"],
        plan.config.node_score,
        arch=plan.config.arch,
        model_kwargs=model_kwargs,
        data_config=data_config,
    ).to(device)
    model.pruned = plan.checkpoint.get("pruned")  # training keeps the architecture
    amp = train.amp_dtype(device) if plan.config.amp else None
    context = train.StepContext(runtime, amp, train.Progress(runtime.main, plan.config.quiet))
    train_transform = data.BatchTransform(data_config, augment=plan.config.augment).to(device)
    eval_transform = data.BatchTransform(data_config).to(device)
    loader, sampler = train.train_loader(plan.train_set, plan.config, runtime)
    test = train.eval_loader(plan.test_set, plan.config, runtime)
    optimizer = train.make_optimizer(plan.config, network)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=plan.config.epochs * len(loader)
    )
    if teacher is not None and teacher.hierarchy != hierarchy:
        raise ValueError("finetune: the teacher's hierarchy differs (distill with the same tree)")
    distilling = teacher is not None and distill > 0
    teacher_network = copy.deepcopy(teacher.model).to(device).eval() if distilling else None
    folder = train.RunFolder(plan.config.output, runtime.main)
    folder.start(plan.config)
    folder.publish_hierarchy(hierarchy)
    history: list[dict[str, Any]] = []
    for epoch in range(plan.config.epochs):
        sampler.set_epoch(epoch)
        criterion = plan.criterion(epoch, hierarchy, device)
        loss = DecisionDistillLoss(criterion, model.rules, distill) if distilling else criterion
        stats = train.train_one_epoch(
            network, loader, loss, optimizer, scheduler, train_transform, context,
            description=f"fine-tune {epoch + 1}/{plan.config.epochs}", teacher=teacher_network,
        )  # fmt: skip
        metrics = train.validate(network, test, criterion, model.rules, eval_transform, context)
        history.append({"epoch": epoch + 1, "phase": "finetune", **stats, **metrics})
        best = max(history, key=lambda m: m["nbdt_soft_top1"]) is history[-1]
        state = {"epoch": epoch + 1, "config": dataclasses.asdict(plan.config)}
        folder.save_epoch(model.checkpoint(train=state), history, best)
    result = train.RunResult(
        model, plan.config, plan.classes, plan.test_set, eval_transform, context.progress
    )
    folder.finish(result)
    return model.eval(), history


def _one_line(error: BaseException) -> str:
    from nbdt._messages import one_line

    return one_line(error)[:200]


def _modules_feeding(tp: Any, network: nn.Module, head: nn.Module, example: torch.Tensor) -> list:
    """The layers whose output channels are the head's input: pruning them would shorten the
    class vectors, so they are left whole."""
    graph = tp.DependencyGraph().build_dependency(network, example_inputs=example)
    weight = next(p for p in head.parameters() if p.dim() >= 2)
    prune_in = (
        tp.prune_linear_in_channels if isinstance(head, nn.Linear) else tp.prune_conv_in_channels
    )
    group = graph.get_pruning_group(head, prune_in, idxs=list(range(weight.shape[1])))
    return [
        dep.target.module
        for dep, _ in group
        if graph.is_out_channel_pruning_fn(dep.handler) and isinstance(dep.target.module, nn.Module)
    ]


def _accumulate_gradients(
    model: NBDT, examples: Iterable[tuple[torch.Tensor, torch.Tensor]] | None
) -> None:
    """Gradients of soft inference's NLL, summed over ``examples``, for Taylor importance."""
    rules, network = model.rules, model.model
    network.zero_grad(set_to_none=True)
    seen = 0
    for images, labels in examples or ():
        log_probs = rules.soft(network(images.float()))
        torch.nn.functional.nll_loss(log_probs, labels.long()).backward()
        seen += 1
    if not seen:
        raise ValueError("importance 'taylor': examples held no batch")


# --------------------------------------------------------------------------- quantisation
# activation type name -> onnxruntime.quantization.QuantType member
ACTIVATION_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}


def network_nodes(proto: Any) -> list[str]:
    """Names of the nodes the exporter traced inside the network (not the decision rules),
    read from the name scopes torch.onnx records on every node."""
    names = []
    for node in proto.graph.node:
        scopes = next(
            (p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), ""
        )
        if scopes.startswith("['', 'network'"):
            names.append(node.name)
    return names


def quantize_onnx(
    source: str | os.PathLike[str],
    path: str | os.PathLike[str],
    calibration: Sequence[np.ndarray],
    *,
    activations: str = "uint8",
    per_channel: bool = True,
) -> Path:
    """Static int8 QDQ quantisation of an exported NBDT, calibrated on ``calibration`` (batches
    of preprocessed float32 images); only the network's nodes are quantised, the rules stay
    float32 and read float32 logits (the head's output is not quantised). The metadata is kept;
    the file is written atomically.

    ``activations`` is a key of :data:`ACTIVATION_TYPES` (weights are always int8: U8S8 is what
    ONNX Runtime's x86 kernels without VNNI run fastest)."""
    onnx = import_deploy("onnx")
    import_deploy("onnxruntime")
    from onnxruntime import quantization as q

    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {', '.join(ACTIVATION_TYPES)}")
    if not len(calibration):
        raise ValueError("quantize: no calibration images")
    proto = onnx.load_model(str(source))
    nodes = network_nodes(proto)
    head = [n.op_type for n in proto.graph.node if "logits" in n.output]
    if not nodes or not head:
        raise ValueError(f"{source}: no network nodes found to quantise (not an nbdt export?)")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: np.asarray(batch, np.float32)}

    with atomic_path(path) as tmp, _unconfigured_root_logger_quiet():
        try:
            q.quantize_static(
                str(source),
                str(tmp),
                Reader(),
                quant_format=q.QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=getattr(q.QuantType, ACTIVATION_TYPES[activations]),
                weight_type=q.QuantType.QInt8,
                nodes_to_quantize=nodes,
                calibrate_method=q.CalibrationMethod.MinMax,
                extra_options={
                    "ActivationSymmetric": False,
                    "WeightSymmetric": True,
                    # the logits reach the rules unrounded
                    "OpTypesToExcludeOutputQuantization": head,
                },
            )
        except Exception as e:  # calibration failures surface as many error types
            raise ValueError(f"quantize {source}: calibration failed ({_one_line(e)})") from None
        quantized = onnx.load_model(str(tmp))
        del quantized.metadata_props[:]
        quantized.metadata_props.extend(proto.metadata_props)
        onnx.save_model(quantized, str(tmp))
    return Path(path)


# op type -> (input index of its weight, output-channel axis of that weight, the axis when the
# weight is transposed by transB); the nodes whose weights "int8-weights" stores as int8
WEIGHT_OPS: dict[str, tuple[int, int, int]] = {
    "Conv": (1, 0, 0),
    "Gemm": (1, 1, 0),
    "MatMul": (1, 1, 1),
}


def quantize_weights(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """int8 weights, float32 compute: every constant weight of the network's Conv, Gemm and
    MatMul nodes is stored as int8 with one float32 scale per output channel (symmetric,
    ``max|w| / 127``) and decoded by a Cast and a Mul, which ONNX Runtime folds into float32
    weights when a session loads. Biases, activations, the head's logits and the rules stay
    float32; the metadata is kept; the file is written atomically."""
    onnx = import_deploy("onnx")
    from onnx import helper, numpy_helper

    proto = onnx.load_model(str(source))
    network = set(network_nodes(proto))
    if not network:
        raise ValueError(f"{source}: no network nodes found to quantise (not an nbdt export?)")
    initializers = {t.name: t for t in proto.graph.initializer}
    axes: dict[str, set[int]] = {}
    for node in proto.graph.node:
        spec = WEIGHT_OPS.get(node.op_type)
        if spec and len(node.input) > spec[0] and node.input[spec[0]] in initializers:
            transposed = any(a.name == "transB" and a.i for a in node.attribute)
            axis = spec[2] if transposed else spec[1]
            axes.setdefault(node.input[spec[0]], set()).add(axis if node.name in network else -1)
    decoders = []
    for name, used in axes.items():
        weight = numpy_helper.to_array(initializers[name])
        if len(used) != 1 or -1 in used or weight.dtype != np.float32 or weight.ndim < 2:
            continue  # shared with the rules, or read along two axes: left float32
        (axis,) = used
        shape = [1] * weight.ndim
        shape[axis] = -1
        others = tuple(i for i in range(weight.ndim) if i != axis)
        scale = np.abs(weight).max(axis=others) / 127
        scale = np.where(scale > 0, scale, 1).astype(np.float32).reshape(shape)
        codes = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
        proto.graph.initializer.remove(initializers[name])
        proto.graph.initializer.extend(
            [
                numpy_helper.from_array(codes, f"{name}.int8"),
                numpy_helper.from_array(scale, f"{name}.scale"),
            ]
        )
        decoders += [
            helper.make_node("Cast", [f"{name}.int8"], [f"{name}.codes"], f"{name}.cast", to=1),
            helper.make_node("Mul", [f"{name}.codes", f"{name}.scale"], [name], f"{name}.decode"),
        ]
    if not decoders:
        raise ValueError(f"{source}: the network has no float32 weights to quantise")
    nodes = [*decoders, *proto.graph.node]
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(path)


def _static_int8(
    source: Any, path: Any, calibration: Sequence[np.ndarray], activations: str
) -> Path:
    """static int8: weights and calibrated activations, integer kernels (fastest with VNNI)"""
    return quantize_onnx(source, path, calibration, activations=activations)


def _int8_weights(
    source: Any, path: Any, calibration: Sequence[np.ndarray], activations: str
) -> Path:
    """int8 weights decoded to float32 when loaded: 4x smaller file, float32 speed"""
    return quantize_weights(source, path)


# --quantize name -> quantiser(source, path, calibration batches, activation type); the first
# docstring line is its help
QUANTIZATIONS: dict[str, Callable[[Any, Any, Sequence[np.ndarray], str], Path]] = {
    "int8": _static_int8,
    "int8-weights": _int8_weights,
}


@contextlib.contextmanager
def _unconfigured_root_logger_quiet() -> Iterator[None]:
    """ONNX Runtime's quantiser advises through the root logger, which configures it on first
    use: where the program has not configured logging, a null handler takes those lines (the
    advice does not apply: see the README) and nothing stays configured after."""
    root = logging.getLogger()
    quiet = logging.NullHandler()
    if not root.handlers:
        root.addHandler(quiet)
    try:
        yield
    finally:
        root.removeHandler(quiet)


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
    from nbdt.runtime import OnnxNBDT

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
    from nbdt.runtime import OnnxNBDT

    names = list(files)
    latency = {
        batch: onnx_latency([files[n] for n in names], batch, threads=threads) for batch in (1, 64)
    }
    outputs = {name: OnnxNBDT(files[name], threads=threads).run(inputs) for name in names}
    hierarchy = OnnxNBDT(files[reference]).hierarchy
    rows: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        out = outputs[name]
        rows[name] = {
            "file_bytes": Path(files[name]).stat().st_size,
            "latency_s_batch1": latency[1][i],
            "latency_s_batch64": latency[64][i],
            "network_top1": float((out["logits"].argmax(1) == labels).mean() * 100),
            "nbdt_soft_top1": float((out["class_log_probs"].argmax(1) == labels).mean() * 100),
            "nbdt_hard_top1": float((out["hard_class"] == labels).mean() * 100),
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
