"""The evaluation report: one self-contained HTML page of an ``eval.json``, with plots.

Static plots are drawn with matplotlib as SVG and embedded as ``data:`` images (the page's
Content-Security-Policy allows no other source); the hierarchy is drawn by the page's script,
coloured by each node's accuracy, and a click on a node shows its child confusion matrix. Every
label reaches the page as JSON and is set as text, so no class name can inject markup.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nbdt._io import write_text
from nbdt._messages import for_terminal
from nbdt.evaluation.metrics import TOP1_KEYS, summary_columns
from nbdt.hierarchy import Hierarchy
from nbdt.tree import Tree
from nbdt.visualize import render_page, tree_data

_COLOURS = {"network": "#5d6673", "nbdt_soft": "#2f63d6", "nbdt_hard": "#d9480f"}
_NAMES = {"network": "network", "nbdt_soft": "NBDT soft", "nbdt_hard": "NBDT hard"}
_MANY_CLASSES = 40  # above this, per-class accuracy is drawn as sorted curves, not bars


def report_html(
    result: Any,
    path: str | os.PathLike[str],
    *,
    hierarchy: Hierarchy | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    title: str | None = None,
) -> Path:
    """Write the evaluation report of ``result`` (an ``EvalResult`` or its ``metrics`` dict).

    ``hierarchy`` is the model's tree (an ``EvalResult`` carries it); ``history`` the rows of a
    run's ``metrics.jsonl`` for the training curves. Needs matplotlib (the ``report`` extra).
    Written atomically; returns ``path``.
    """
    metrics = getattr(result, "metrics", result)
    hierarchy = hierarchy or getattr(result, "hierarchy", None)
    if not isinstance(metrics, Mapping) or "variants" not in metrics:
        raise ValueError("report_html: result must be an EvalResult or its metrics (eval.json)")
    if not isinstance(hierarchy, Tree):
        raise ValueError("report_html: pass the model's hierarchy (hierarchy=...)")
    if list(hierarchy.classes) != list(metrics["classes"]):
        raise ValueError("report_html: the hierarchy's classes are not the evaluated classes")
    plt = pyplot()
    plots = [
        ("Top-1 and top-k accuracy", _accuracy_plot(plt, metrics)),
        ("Per-class top-1", _per_class_plot(plt, metrics)),
        ("Reliability diagram", _reliability_plot(plt, metrics)),
        ("Mistake severity", _severity_plot(plt, metrics)),
    ]
    if history:
        plots.append(("Training curves", _history_plot(plt, history)))
    if title is None:
        title = f"NBDT evaluation: {metrics['images']} images, {len(metrics['classes'])} classes"
    data = {
        "title": title,
        "summary": _summary(metrics),
        "plots": [{"title": name, "src": _svg_uri(svg)} for name, svg in plots],
        "tree": _tree(hierarchy, metrics),
        "unseen": metrics.get("unseen"),
    }
    return write_text(path, render_page("report", title, data))


# ----------------------------------------------------------------------------------- data
def _summary(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Rows of the summary table: one per variant, a column per heading of the registered
    metrics."""
    columns = summary_columns(metrics)
    rows = [
        {"name": _NAMES[name], "cells": [cells.get(name) for cells in columns.values()]}
        for name in metrics["variants"]
    ]
    return {"columns": list(columns), "rows": rows, "agreement": metrics["agreement"]}


def _tree(h: Hierarchy, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The page's tree columns plus, per node, accuracy, counts and confusion (inner nodes)."""
    data = tree_data(h)
    rows = {row["id"]: row for row in metrics["nodes"]}
    hard = metrics["variants"]["nbdt_hard"]["per_class_top1"]
    data["accuracy"] = [
        rows[node.id]["accuracy"] if node.id in rows else hard[data["class"][i]]
        for i, node in enumerate(h.nodes)
    ]
    data["samples"] = [
        rows[node.id]["samples"] if node.id in rows else metrics["class_images"][data["class"][i]]
        for i, node in enumerate(h.nodes)
    ]
    data["confusion"] = [
        rows[node.id]["confusion"] if node.id in rows else None for node in h.nodes
    ]
    data["reached"] = [
        [rows[node.id]["reached"], rows[node.id]["reached_correct"]] if node.id in rows else None
        for node in h.nodes
    ]
    return data


# ---------------------------------------------------------------------------------- plots
def pyplot() -> Any:
    """matplotlib's pyplot (Agg, SVG text as text); an ImportError naming the extra."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("matplotlib is missing: pip install 'nbdt[report]'") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.fonttype": "none",  # text stays text: small files, the page's fonts
            "svg.hashsalt": "nbdt",  # stable element ids: the same input, the same page
            "text.parse_math": False,  # a "$" in a class name is a dollar sign
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def _svg_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _accuracy_plot(plt: Any, metrics: Mapping[str, Any]) -> str:
    figure, ax = plt.subplots(figsize=(5, 3))
    names = list(metrics["variants"])
    width = 0.38
    for j, key in enumerate(("top1", "top5")):
        values = [metrics["variants"][n][key] or 0.0 for n in names]
        xs = [i + (j - 0.5) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, color=[_COLOURS[n] for n in names])
        for bar in bars:
            bar.set_alpha(1.0 if j == 0 else 0.45)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(range(len(names)), [_NAMES[n] for n in names])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title(f"solid: top-1, light: top-{metrics['top_k']}")
    return _svg(figure)


def _per_class_plot(plt: Any, metrics: Mapping[str, Any]) -> str:
    classes = metrics["classes"]
    many = len(classes) > _MANY_CLASSES
    figure, ax = plt.subplots(figsize=(7.5, 3.2) if not many else (6, 3))
    names = list(metrics["variants"])
    for j, name in enumerate(names):
        values = [v or 0.0 for v in metrics["variants"][name]["per_class_top1"]]
        if many:
            ax.plot(sorted(values, reverse=True), color=_COLOURS[name], label=_NAMES[name])
        else:
            xs = [i + (j - 1) * 0.27 for i in range(len(classes))]
            ax.bar(xs, values, 0.27, color=_COLOURS[name], label=_NAMES[name])
    if many:
        ax.set_xlabel("classes, best first")
    else:
        shown = [for_terminal(c) for c in classes]  # a control character is no valid SVG
        ax.set_xticks(range(len(classes)), shown, rotation=40, ha="right")
    ax.set_ylabel("top-1 (%)")
    ax.set_ylim(0, 105)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False, ncols=3)
    return _svg(figure)


def _reliability_plot(plt: Any, metrics: Mapping[str, Any]) -> str:
    figure, axes = plt.subplots(1, 2, figsize=(7, 3.2), sharey=True)
    for ax, name in zip(axes, ("network", "nbdt_soft"), strict=True):
        calibration = metrics["variants"][name]["calibration"]
        bins = calibration["bins"]
        centres = [50 * (b["lower"] + b["upper"]) for b in bins]
        accuracy = [b["accuracy"] or 0.0 for b in bins]
        ax.bar(centres, accuracy, 100 / len(bins), color=_COLOURS[name], edgecolor="white")
        ax.plot([0, 100], [0, 100], "--", color="#8a929e", linewidth=1)
        ece = calibration["ece"]
        ax.set_title(f"{_NAMES[name]}: ECE {'n/a' if ece is None else f'{ece:.2f}%'}")
        ax.set_xlabel("confidence (%)")
        ax.set_xlim(0, 100)
    axes[0].set_ylabel("accuracy (%)")
    return _svg(figure)


def _severity_plot(plt: Any, metrics: Mapping[str, Any]) -> str:
    rulers = list(metrics["rulers"])
    figure, axes = plt.subplots(1, len(rulers), figsize=(3.6 * len(rulers), 3), squeeze=False)
    names = list(metrics["variants"])
    for ax, ruler in zip(axes[0], rulers, strict=True):
        for j, name in enumerate(names):
            histogram = metrics["variants"][name]["hierarchy"][ruler]["severity_histogram"]
            xs = [h + (j - 1) * 0.27 for h in range(len(histogram))]
            ax.bar(xs, histogram, 0.27, color=_COLOURS[name], label=_NAMES[name])
        ax.set_title(f"{ruler} tree")
        ax.set_xlabel("height of the LCA of prediction and truth")
    axes[0][0].set_ylabel("top-1 mistakes")
    axes[0][0].legend(frameon=False)
    return _svg(figure)


def _history_plot(plt: Any, history: Sequence[Mapping[str, Any]]) -> str:
    """Test top-1 and the losses per epoch, on whole-epoch ticks; where tree supervision starts
    (the loss gains the tree term and jumps), a line says so, and the test cross-entropy, the
    same quantity in every phase, is drawn beside the losses."""
    from matplotlib.ticker import MaxNLocator

    figure, (left, right) = plt.subplots(1, 2, figsize=(7.5, 3))
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]
    for name, key in TOP1_KEYS.items():
        points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if key in row]
        if points:
            xs, ys = zip(*points, strict=True)
            left.plot(xs, ys, marker="o", color=_COLOURS[name], label=_NAMES[name])
    left.set_xlabel("epoch")
    left.set_ylabel("test top-1 (%)")
    left.legend(frameon=False)
    for key, style, colour in (
        ("train_loss", "-", "#1c2330"),
        ("test_loss", "--", "#1c2330"),
        ("test_ce", ":", "#2f63d6"),
    ):
        points = [(e, row[key]) for e, row in zip(epochs, history, strict=True) if key in row]
        if points:
            xs, ys = zip(*points, strict=True)
            label = "test cross-entropy" if key == "test_ce" else key
            right.plot(xs, ys, style, marker="o", color=colour, label=label)
    phases = [row.get("phase") for row in history]
    starts = [e for e, a, b in zip(epochs[1:], phases, phases[1:], strict=False) if a != b]
    for start in starts[:1] if "tree" in phases else ():
        for ax in (left, right):
            ax.axvline(start - 0.5, color="#8a929e", linewidth=0.8, linestyle="--")
        right.annotate(
            "tree loss added", xy=(start - 0.5, 1), xycoords=("data", "axes fraction"),
            xytext=(3, -3), textcoords="offset points", va="top", fontsize=8, color="#5d6673",
        )  # fmt: skip
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_xlabel("epoch")
    right.set_ylabel("loss")
    if right.lines:
        right.legend(frameon=False)
    return _svg(figure)
