"""An exported NBDT run with ONNX Runtime alone: preprocessing, inference and explanations.

Nothing here imports torch: the ONNX file written by :func:`nbdt.deploy.export.export_onnx` carries
the network, the decision rules and, in its metadata, the hierarchy, mode, node score and timm's
preprocessing config, so a machine with onnxruntime, numpy and Pillow explains as ``NBDT.explain``
does, with the same :class:`Explanation` objects.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nbdt.checkpoint import check_data_config
from nbdt.explanation import Explanation, explanations_from_arrays
from nbdt.hierarchy import Hierarchy
from nbdt.images import load_image, to_model_mode

ONNX_FORMAT_NAME = "nbdt-onnx"
ONNX_FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("class_log_probs", "hard_class", "node_log_probs", "logits")
# metadata_props keys; every value is a string (JSON for structured values).
METADATA_KEYS = (
    "nbdt.format",
    "nbdt.version",
    "nbdt.arch",
    "nbdt.mode",
    "nbdt.node_score",
    "nbdt.classes",
    "nbdt.hierarchy",
    "nbdt.data_config",
)
_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}
_DEFAULT_CROP_PCT = 0.875  # timm's, when a config gives none

ArrayImage = Image.Image | str | os.PathLike | np.ndarray


def import_deploy(module: str) -> Any:
    """Import an optional deployment dependency; missing, one line naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = {"torch_pruning": "torch-pruning"}.get(module, module)
        raise ImportError(f"{package} is missing: pip install 'nbdt[deploy]'") from None


# ----------------------------------------------------------------------------- preprocessing
def eval_transform(image: Image.Image, data_config: Mapping[str, Any]) -> np.ndarray:
    """timm's evaluation transform in numpy: a PIL image to the model's (C, H, W) float32 input.

    As ``timm.data.create_transform(**data_config, is_training=False)``: resize so the crop
    covers ``crop_pct`` of the shorter side (``crop_mode`` "center"; "squash" resizes both sides),
    center crop to ``input_size``, scale to [0, 1] and normalise with ``mean`` and ``std``.
    The image must already be in the model's mode (``nbdt.images.to_model_mode``).
    """
    _, height, width = (int(v) for v in data_config["input_size"])
    crop_pct = data_config.get("crop_pct") or _DEFAULT_CROP_PCT
    crop_mode = data_config.get("crop_mode") or "center"
    resample = _INTERPOLATION.get(data_config.get("interpolation", "bilinear"))
    if resample is None or crop_mode not in ("center", "squash"):
        raise ValueError(
            "data_config: interpolation must be one of"
            f" {', '.join(_INTERPOLATION)} and crop_mode 'center' or 'squash', got"
            f" {data_config.get('interpolation')!r} and {crop_mode!r}"
        )
    scale_h, scale_w = math.floor(height / crop_pct), math.floor(width / crop_pct)
    img_w, img_h = image.size
    if crop_mode == "squash":
        size = (scale_w, scale_h)
    elif scale_h == scale_w:  # torchvision's Resize(int): the shorter side to scale_h
        short, long = sorted((img_w, img_h))
        other = int(scale_h * long / short)
        size = (scale_h, other) if img_w <= img_h else (other, scale_h)
    else:  # timm's ResizeKeepRatio: the side nearer its target to it
        ratio = min(img_h / scale_h, img_w / scale_w)
        size = (round(img_w / ratio), round(img_h / ratio))
    if size != image.size:
        image = image.resize(size, resample)
    image = _center_crop(image, height, width)
    array = np.array(image, dtype=np.uint8, copy=True)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    mean = np.asarray(data_config["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(data_config["std"], dtype=np.float32)[:, None, None]
    return (array.astype(np.float32) / np.float32(255) - mean) / std


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """torchvision's center crop: zero padding where the image is smaller, then the middle."""
    img_w, img_h = image.size
    if img_w < width or img_h < height:
        padded = Image.new(image.mode, (max(img_w, width), max(img_h, height)))
        left, top = (max(width - img_w, 0)) // 2, (max(height - img_h, 0)) // 2
        padded.paste(image, (left, top))
        image, (img_w, img_h) = padded, padded.size
    top, left = int(round((img_h - height) / 2.0)), int(round((img_w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


# ----------------------------------------------------------------------------------- runtime
class OnnxNBDT:
    """An NBDT exported by :func:`nbdt.deploy.export.export_onnx`, run with ONNX Runtime on the CPU.

    ``run(batch)`` returns the graph's outputs by name; ``explain(images)`` returns
    :class:`Explanation` objects, the same as ``NBDT.explain`` on the model that was exported.
    A damaged file or one without nbdt metadata raises one ``ValueError`` naming it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        ort = import_deploy("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            what = "is a directory" if self.path.is_dir() else "no such file"
            raise (ValueError if self.path.is_dir() else FileNotFoundError)(f"{path}: {what}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=list(providers)
            )
        except Exception as e:  # onnxruntime raises its own error types for unreadable graphs
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise ValueError(f"{path}: not a readable ONNX model ({reason})") from None
        metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map, str(path))
        self.metadata = metadata
        self.hierarchy: Hierarchy = metadata["hierarchy"]
        self.mode: str = metadata["mode"]
        self.node_score: str = metadata["node_score"]
        self.arch: str | None = metadata["arch"]
        self.data_config: dict[str, Any] = metadata["data_config"]
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if missing:
            raise ValueError(f"{path}: not an nbdt ONNX model (no output {missing[0]!r})")
        width = outputs["logits"][-1] if outputs["logits"] else None
        if isinstance(width, int) and width != self.hierarchy.num_classes:
            raise ValueError(
                f"{path}: damaged nbdt metadata (a tree of {self.hierarchy.num_classes} classes"
                f" for a graph of {width})"
            )

    @property
    def classes(self) -> tuple[str, ...]:
        return self.hierarchy.classes

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for a preprocessed (B, C, H, W) batch, by output name; NaN or
        infinite logits raise :class:`nbdt.rules.NonFiniteLogits` naming the rows, as the
        PyTorch model does."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
        values = dict(zip(OUTPUT_NAMES, outputs, strict=True))
        finite = np.isfinite(values["logits"]).all(axis=1)
        if not finite.all():  # any answer read from NaN would be made up
            from nbdt.rules import NonFiniteLogits  # torch, on this error path only

            raise NonFiniteLogits(np.flatnonzero(~finite).tolist())
        return values

    def preprocess(self, image: Image.Image | str | os.PathLike[str]) -> np.ndarray:
        """A PIL image or image file as the model's (C, H, W) float32 input."""
        channels = int(self.data_config["input_size"][0])
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image, channels)
        else:
            image = to_model_mode(image, channels)
        return eval_transform(image, self.data_config)

    def explain(
        self, x: ArrayImage | Sequence[ArrayImage], top_k: int = 5
    ) -> Explanation | list[Explanation]:
        """Predict and explain, as ``NBDT.explain``: a PIL image, a path, a preprocessed
        (C, H, W) or (B, C, H, W) float array, or a list of these."""
        if not isinstance(top_k, int) or top_k < 0:
            raise ValueError(f"top_k must be a non-negative integer, got {top_k!r}")
        single = not isinstance(x, (list, tuple)) and not (
            isinstance(x, np.ndarray) and x.ndim == 4
        )
        batch = self._input_batch(list(x) if isinstance(x, (list, tuple)) else [x])
        out = self.run(batch)
        predicted = out["class_log_probs"].argmax(1) if self.mode == "soft" else out["hard_class"]
        explanations = explanations_from_arrays(
            self.hierarchy,
            self.mode,
            self.node_score,
            out["node_log_probs"],
            out["class_log_probs"],
            predicted,
            top_k,
        )
        return explanations[0] if single else explanations

    def _input_batch(self, items: list[ArrayImage]) -> np.ndarray:
        channels = int(self.data_config["input_size"][0])
        rows = []
        for item in items:
            if isinstance(item, np.ndarray):
                array = item[None] if item.ndim == 3 else item
                if array.ndim != 4 or array.shape[1] != channels:
                    raise ValueError(
                        f"explain: expected a (C, H, W) or (B, C, H, W) array with C={channels},"
                        f" got shape {item.shape}"
                    )
                if not np.issubdtype(array.dtype, np.floating):
                    raise ValueError(
                        "explain: arrays must be preprocessed float input; pass raw images as"
                        " PIL images or paths"
                    )
                rows.append(array.astype(np.float32, copy=False))
            elif isinstance(item, (str, os.PathLike, Image.Image)):
                rows.append(self.preprocess(item)[None])
            else:
                raise TypeError(
                    f"explain: expected PIL images, paths or arrays, got {type(item).__name__}"
                )
        if not rows:
            raise ValueError("explain: no input")
        shapes = {r.shape[1:] for r in rows}
        if len(shapes) > 1:
            raise ValueError(f"explain: inputs of different shapes {sorted(shapes)} in one batch")
        return np.concatenate(rows)


def read_metadata(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """The nbdt metadata of an ONNX model (its ``metadata_props`` as a dict), parsed and checked;
    anything missing or malformed is one ``ValueError`` naming ``source``."""
    if props.get("nbdt.format") != ONNX_FORMAT_NAME:
        raise ValueError(f"{source}: not an nbdt ONNX model (no nbdt metadata)")
    if props.get("nbdt.version") != str(ONNX_FORMAT_VERSION):
        raise ValueError(
            f"{source}: nbdt ONNX format version {props.get('nbdt.version')!r};"
            f" this nbdt reads version {ONNX_FORMAT_VERSION}"
        )
    try:
        hierarchy = Hierarchy.from_node_link(json.loads(props["nbdt.hierarchy"]))
        data_config = json.loads(props["nbdt.data_config"])
        classes = json.loads(props["nbdt.classes"])
        mode, node_score = props["nbdt.mode"], props["nbdt.node_score"]
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ValueError(f"{source}: damaged nbdt metadata ({reason})") from None
    if list(hierarchy.classes) != classes or mode not in ("soft", "hard"):
        raise ValueError(f"{source}: damaged nbdt metadata (classes or mode disagree)")
    if node_score not in ("mean", "marginal") or not isinstance(data_config, dict):
        raise ValueError(f"{source}: damaged nbdt metadata (node score or data config)")
    check_data_config(data_config, source)  # the checks a model file's config gets
    return {
        "hierarchy": hierarchy,
        "mode": mode,
        "node_score": node_score,
        "arch": props.get("nbdt.arch") or None,
        "data_config": data_config,
        "classes": tuple(classes),
    }
