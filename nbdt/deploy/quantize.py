"""int8 quantisation of the exported ONNX graph, restricted to the network's nodes: the decision
rules stay float32. Two kinds (:data:`QUANTIZATIONS`):

- "int8": ONNX Runtime's static QDQ quantisation (int8 weights per output channel, int8
  activations calibrated on real images); integer kernels, fastest where the CPU has VNNI.
- "int8-weights": int8 weights per output channel stored as int8 and decoded by Cast and Mul,
  which ONNX Runtime's constant folding turns back into float32 weights when a session loads:
  about 4x smaller at float32 speed; no calibration.

Both work on the ONNX file because that is what is served: no torch at run time, every ORT
provider.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nbdt._io import atomic_path
from nbdt._messages import one_line
from nbdt.choices import check_choice
from nbdt.deploy.runtime import INPUT_NAME, import_deploy

if TYPE_CHECKING:
    pass


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

    check_choice("activations", activations, ACTIVATION_TYPES)
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
            raise ValueError(
                f"quantize {source}: calibration failed ({one_line(e)[:200]})"
            ) from None
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
