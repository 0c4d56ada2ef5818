"""Self-contained HTML pages for a hierarchy and for explanations of predictions.

Each page is one file that opens offline: CSS, JavaScript, data and images are inline, and a
Content-Security-Policy forbids every request. Labels travel as JSON and the page draws them as
text, so a class named ``<img src=x onerror=alert(1)>`` shows as exactly that.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import operator
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from nbdt._io import write_text
from nbdt.classes import is_wordnet_id
from nbdt.explanation import Explanation, png_data_uri
from nbdt.hierarchy import Hierarchy
from nbdt.labels import display_names, with_names
from nbdt.tree import Tree

IMAGE_MAX_SIDE = 320
"""Images are downscaled to at most this many pixels per side before they are embedded."""

_SMALL_IMAGE = 96  # at most this size, PNG keeps the pixels exact; larger photos become JPEG
_SLOT = re.compile(r"\{\{(\w+)\}\}")


# ------------------------------------------------------------------------------ public API
def hierarchy_html(
    hierarchy: Hierarchy,
    path: str | os.PathLike[str],
    *,
    highlight: str | int | None = None,
    title: str | None = None,
    moved: Iterable[str] = (),
    examples: Any = None,
) -> Path:
    """Write the hierarchy as one interactive HTML page: a collapsible tree with search and zoom.

    ``highlight`` is a node id (or a label naming one node) or a class index; its path from the
    root opens expanded and highlighted. ``moved`` holds node ids an edit moved (see
    :func:`nbdt.edits.moved_nodes`): they are marked, listed in the legend, and their paths open.
    With ``examples`` (``nbdt.evidence.examples.NodeExamples`` of this hierarchy), clicking an inner
    node shows each child's representative and confused training images. Returns ``path``; the file
    is written atomically.
    """
    if not isinstance(hierarchy, Tree):
        raise TypeError(f"hierarchy must be a Hierarchy, got {type(hierarchy).__name__}")
    moved = set(moved)
    unknown = sorted(moved.difference(node.id for node in hierarchy.nodes))
    if unknown:
        raise ValueError(f"moved: {unknown[:3]} are no node ids of the hierarchy")
    data = tree_data(hierarchy)
    data["moved"] = [int(node.id in moved) for node in hierarchy.nodes]
    if examples is not None:
        examples.check(hierarchy, source="examples")
        data["examples"] = _examples_data(hierarchy, examples)
    data["highlight"] = None if highlight is None else node_index(hierarchy, highlight)
    if title is None:
        title = f"{hierarchy.root.label}: {hierarchy.num_classes} classes"
    data["title"] = title
    return write_text(path, render_page("hierarchy", title, data))


def explanation_html(
    explanations: Any,
    images: Any,
    path: str | os.PathLike[str],
    *,
    hierarchy: Hierarchy | None = None,
    title: str | None = None,
    crop_pct: float = 1.0,
    true_labels: Sequence[str | None] | None = None,
) -> Path:
    """Write explanations as one HTML page, a section per image: prediction, path, bars, context.

    ``explanations``: ``Explanation`` objects or their ``to_dict()`` dicts (one, or a list);
    ``images``: a PIL image, an image file path or None for each explanation (or None for all).
    With ``hierarchy``, each step also lists the node's other children. Steps with evidence
    (``explain(..., evidence=True, examples=...)``) show the image under their heatmap (a toggle)
    and the training images behind the decision; ``crop_pct`` is the centred share of the image's
    shorter side that the model saw (timm's ``crop_pct``), so the map lies where it belongs.
    ``true_labels`` (one class name or None per explanation) shows each image's true class
    beside the prediction. Written atomically.
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct!r}")
    exps = [explanations] if _is_single(explanations) else list(explanations)
    if not exps:
        raise ValueError("explanation_html: no explanations given")
    if images is None:
        imgs: list[Any] = [None] * len(exps)
    else:
        imgs = [images] if _is_single_image(images) else list(images)
    if len(imgs) != len(exps):
        raise ValueError(
            f"explanation_html: {len(exps)} explanations but {len(imgs)} images (give one image,"
            " or None, per explanation)"
        )
    truths = [None] * len(exps) if true_labels is None else list(true_labels)
    if len(truths) != len(exps):
        raise ValueError(
            f"explanation_html: {len(exps)} explanations but {len(truths)} true labels"
        )
    if hierarchy is not None and not isinstance(hierarchy, Tree):
        raise TypeError(f"hierarchy must be a Hierarchy or None, got {type(hierarchy).__name__}")
    items = []
    for i, (exp, image, truth) in enumerate(zip(exps, imgs, truths, strict=True)):
        record = _explanation_record(exp, i)
        item = {
            "explanation": record,
            "image": None if image is None else _image_data_uri(image),
            "context": None if hierarchy is None else _path_context(hierarchy, record, i),
        }
        if truth is not None:
            item["true_label"] = str(truth)
        if any(step["saliency"] for step in record["path"]):
            item["overlays"] = [_overlay_uri(step["saliency"]) for step in record["path"]]
        items.append(item)
    if title is None:
        title = (
            "NBDT explanation" if len(items) == 1 else f"NBDT explanations ({len(items)} images)"
        )
    data = {"title": title, "items": items, "crop_pct": crop_pct}
    return write_text(path, render_page("explanation", title, data))


# ------------------------------------------------------------------------- page assembly
def render_page(name: str, title: str, data: Any) -> str:
    """Fill ``templates/<name>.html`` with its CSS, JavaScript, data and a strict CSP."""
    style = _template("base.css") + _template(f"{name}.css")
    script = _template(f"{name}.js")
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    csp = (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline';"
        f" script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )
    slots = {
        "title": html.escape(title),
        "csp": html.escape(csp),
        "style": style,
        "script": script,
        "data": embed_json(data),
    }
    # One pass over each template only: substituted text is never scanned for slots again.
    slots["head"] = _SLOT.sub(lambda m: slots[m.group(1)], _template("head.html")).rstrip()
    return _SLOT.sub(lambda m: slots[m.group(1)], _template(f"{name}.html"))


def _template(name: str) -> str:
    return resources.files("nbdt").joinpath("templates", name).read_text(encoding="utf-8")


def embed_json(data: Any) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` element.

    ``<``, ``>`` and ``&`` become ``\\u`` escapes (so no ``</script>`` or ``<!--`` can end the
    element early), as do U+2028/U+2029; ``JSON.parse`` reads the escapes back as the same text.
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


# ------------------------------------------------------------------------ hierarchy data
def tree_data(h: Hierarchy) -> dict[str, Any]:
    """Columns over ``h.nodes`` (root first, breadth first); the page rebuilds the tree."""
    nodes = h.nodes
    index = {node.id: i for i, node in enumerate(nodes)}
    class_index = {leaf: i for i, leaf in enumerate(h.class_ids)}
    parents = [h.parent(node.id) for node in nodes]
    named = with_names(h)
    return {
        "id": [node.id for node in nodes],
        "label": [node.label for node in nodes],
        "wnid": [node.wnid for node in nodes],
        "wordnet": [int(is_wordnet_id(node.wnid)) for node in nodes],
        "parent": [-1 if p is None else index[p.id] for p in parents],
        "leaves": [len(h.leaf_indices(node.id)) for node in nodes],
        "class": [class_index.get(node.id, -1) for node in nodes],
        "display": [named[node.id].display or node.label for node in nodes],
        "fit": [named[node.id].fit for node in nodes],
    }


def _examples_data(h: Hierarchy, examples: Any) -> dict[str, Any]:
    """Per inner node (by position in ``h.nodes``), per child: its representative and confused
    images as [thumbnail position, class label, branch probability]; each thumbnail once."""
    position = {node.id: i for i, node in enumerate(h.nodes)}
    thumbs: dict[int, int] = {}
    uris: list[str] = []

    def rows(found: Any) -> list[list[Any]]:
        out = []
        for example in found:
            if example.index not in thumbs:
                thumbs[example.index] = len(uris)
                uris.append(png_data_uri(example.thumbnail))
            out.append([thumbs[example.index], example.label, round(example.score, 4)])
        return out

    nodes = {}
    for node in h.inner_nodes:
        nodes[str(position[node.id])] = [
            {
                "child": position[child],
                "representative": rows(examples.examples(node.id, child, "representative")),
                "confused": rows(examples.examples(node.id, child, "confused")),
            }
            for child in node.children
        ]
    return {"thumbs": uris, "nodes": nodes}


# Heatmap colours from cold to hot (value 0 to 1), blended over the image with rising opacity.
_HEAT = ((0.0, (40, 0, 90)), (0.35, (180, 20, 90)), (0.7, (250, 130, 10)), (1.0, (255, 250, 150)))


def _overlay_uri(saliency: Any) -> str | None:
    """A step's saliency (its record's PNG data URI, or None) as a coloured RGBA PNG overlay;
    an empty map (no localised evidence) as ``""``."""
    if saliency is None:
        return None
    import numpy as np
    from PIL import Image

    from nbdt.explanation import saliency_from_json

    values = saliency_from_json(saliency, "saliency")
    if not values.any():
        return ""  # no localised evidence: the page says so instead of drawing a map
    stops, colours = zip(*_HEAT, strict=True)
    rgb = [np.interp(values, stops, [c[k] for c in colours]) for k in range(3)]
    alpha = 215 * np.clip(values, 0, 1) ** 1.5
    pixels = np.stack([*rgb, alpha], -1).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGBA").save(buffer, format="PNG", optimize=True)
    return png_data_uri(buffer.getvalue())


def node_index(h: Hierarchy, highlight: str | int) -> int:
    """Position in ``h.nodes`` of a node id, a label naming exactly one node, or a class index."""
    ids = [node.id for node in h.nodes]
    if isinstance(highlight, str):
        if highlight in h:
            return ids.index(highlight)
        named = [i for i, node in enumerate(h.nodes) if node.label == highlight]
        if len(named) == 1:
            return named[0]
        if named:
            raise ValueError(
                f"highlight {highlight!r} names {len(named)} nodes: give a node id instead"
            )
        raise ValueError(f"highlight {highlight!r} is no node id or label of the hierarchy")
    if isinstance(highlight, bool):
        raise TypeError("highlight must be a node id or a class index, not a bool")
    try:
        class_index = operator.index(highlight)
    except TypeError:
        raise TypeError(
            f"highlight must be a node id or a class index, got {type(highlight).__name__}"
        ) from None
    if not 0 <= class_index < h.num_classes:
        raise ValueError(f"highlight class index {class_index} is not in [0, {h.num_classes})")
    return ids.index(h.class_ids[class_index])


# ---------------------------------------------------------------------- explanation data
def _is_single(explanations: Any) -> bool:
    return isinstance(explanations, Mapping) or hasattr(explanations, "to_dict")


def _is_single_image(images: Any) -> bool:
    return isinstance(images, (str, os.PathLike)) or hasattr(images, "getpixel")


def _explanation_record(exp: Any, i: int) -> dict[str, Any]:
    """Check one explanation (object or dict) against the ``to_dict`` contract."""
    if hasattr(exp, "to_dict"):
        exp = exp.to_dict()
    if not isinstance(exp, Mapping):
        raise TypeError(
            f"explanation {i}: expected an Explanation or its dict, got {type(exp).__name__}"
        )
    return Explanation.from_dict(exp, where=f"explanation {i}").to_dict()


def _path_context(h: Hierarchy, record: Mapping[str, Any], i: int) -> list[list[dict[str, Any]]]:
    """For each step, the node's children in order: name, leaf count, taken or runner-up."""
    shown = display_names(h)
    context = []
    for s, step in enumerate(record["path"]):
        if step["node_id"] not in h:
            raise ValueError(
                f"explanation {i}: path step {s} node {step['node_id']!r} is not in the hierarchy"
                " (pass the hierarchy the model was built with)"
            )
        children = []
        for child_id in h[step["node_id"]].children:
            role = (
                "taken"
                if child_id == step["child_id"]
                else "runner-up"
                if child_id == step["runner_up_id"]
                else "other"
            )
            children.append(
                {"label": shown[child_id], "leaves": len(h.leaf_indices(child_id)), "role": role}
            )
        context.append(children)
    return context


def _image_data_uri(image: Any) -> str:
    """A PIL image or image file as a ``data:`` URI, downscaled to ``IMAGE_MAX_SIDE``.

    Small images (Fashion-MNIST's 28 px) and images with transparency stay PNG, so no pixel is
    blurred; photos become JPEG to keep the page small.
    """
    from PIL import Image

    from nbdt.images import load_image, to_8bit

    if isinstance(image, (str, os.PathLike)):
        img = load_image(image, draft=2 * IMAGE_MAX_SIDE)  # a JPEG decodes smaller
    elif isinstance(image, Image.Image):
        img = image.copy()
    else:
        raise TypeError(
            f"images must be PIL images, file paths or None, got {type(image).__name__}"
        )
    img = to_8bit(img)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
    img = img.convert("RGBA" if has_alpha else "L" if img.mode in ("1", "L") else "RGB")
    img.thumbnail((IMAGE_MAX_SIDE, IMAGE_MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    if has_alpha or max(img.size) <= _SMALL_IMAGE:
        img.save(buffer, format="PNG", optimize=True)
        mime = "image/png"
    else:
        img.save(buffer, format="JPEG", quality=85, optimize=True)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
