"""Export an NBDT as one ONNX graph: the timm network and the decision rules, with metadata.

The graph takes a preprocessed (B, C, H, W) float32 batch (B is dynamic) and returns soft
inference's class log-probabilities, the greedy descent's class and every inner node's child
log-probabilities; the hierarchy, mode, node score and preprocessing config go into the file's
metadata, so :class:`nbdt.deploy.runtime.OnnxNBDT` explains with ONNX Runtime alone.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript). Measured with
torch 2.14: it exports the rules' own code (float64 prefix sums, scatters, the unrolled descent)
with a dynamic batch exactly (class log-probs within 5e-7 of PyTorch); the deprecated
TorchScript exporter traces the batch size into the rules' index tensors and gives wrong
results for any other batch size.

``model`` arguments are :class:`nbdt.NBDT` instances, typed as modules: NBDT's own methods
call this module, so it sits below :mod:`nbdt.model` and does not import it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from nbdt._io import atomic_path
from nbdt.deploy.runtime import (
    INPUT_NAME,
    ONNX_FORMAT_NAME,
    ONNX_FORMAT_VERSION,
    OUTPUT_NAMES,
    import_deploy,
)
from nbdt.labels import with_names
from nbdt.networks import eval_mode

DEFAULT_OPSET = 18


class ExportGraph(nn.Module):
    """The exported computation: image batch -> (class log-probs, hard class, node log-probs,
    the network's logits), computed by the model's own network and :class:`nbdt.DecisionRules`
    (no second copy of the rules to drift from the first)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.network = model.model
        self.rules = model.rules

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.network(image)
        return (
            self.rules.soft(logits),
            self.rules.hard(logits),
            self.rules.node_log_probs(logits),
            logits,
        )


def onnx_metadata(model: nn.Module) -> dict[str, str]:
    """The ``metadata_props`` that make an ONNX file an nbdt model (see nbdt.deploy.runtime)."""
    return {
        "nbdt.format": ONNX_FORMAT_NAME,
        "nbdt.version": str(ONNX_FORMAT_VERSION),
        "nbdt.arch": model.arch or "",
        "nbdt.mode": model.mode,
        "nbdt.node_score": model.node_score,
        "nbdt.classes": json.dumps(list(model.hierarchy.classes)),
        "nbdt.hierarchy": json.dumps(with_names(model.hierarchy).to_node_link()),
        "nbdt.data_config": json.dumps(dict(model.data_config)),
    }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    example_batch: int = 2,
) -> Path:
    """Write ``model`` (network + decision rules, eval mode, float32) as one ONNX file.

    Outputs ``class_log_probs`` (B, C), ``hard_class`` (B,) int64, ``node_log_probs``
    (B, N, K) (padding slots -inf) and the network's ``logits`` (B, C); input ``image``
    (B, C, H, W) at the data config's size. The file is written atomically; the model's training
    flags are left as they were.
    """
    if not (isinstance(model, nn.Module) and hasattr(model, "rules")):
        raise TypeError(f"export_onnx: expected an nbdt.NBDT, got {type(model).__name__}")
    onnx = import_deploy("onnx")
    import_deploy("onnxscript")
    size = tuple(int(v) for v in model.data_config["input_size"])
    example = torch.zeros(example_batch, *size)
    graph = ExportGraph(model)
    with _on_cpu_in_float32(graph), eval_mode(graph), torch.no_grad():
        program = torch.onnx.export(
            graph,
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, onnx_metadata(model))
    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return Path(path)


@contextlib.contextmanager
def _on_cpu_in_float32(module: nn.Module) -> Iterator[None]:
    """Run the block with ``module``'s tensors on the CPU in float32 (what the exporter traces),
    then give every parameter and buffer back its own tensor: a CUDA, bf16 or float64 model
    comes out exactly as it went in. (Moving a module swaps its parameters' data in place but
    replaces its buffers, hence the two ways back.)"""
    parameters = list(module.parameters())
    own_data = [parameter.data for parameter in parameters]
    own_buffers = {m: dict(m._buffers) for m in module.modules()}
    module.cpu().float()
    try:
        yield
    finally:
        for parameter, data in zip(parameters, own_data, strict=True):
            parameter.data = data
        for m, buffers in own_buffers.items():
            m._buffers.update(buffers)
