"""Neural-Backed Decision Trees: interpretable image classification on any timm model.

The public API is re-exported here and imported lazily, so ``import nbdt`` stays cheap and has no
side effects.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Hierarchy": "nbdt.hierarchy",
    "Node": "nbdt.hierarchy",
    "DecisionRules": "nbdt.rules",
    "SoftTreeSupLoss": "nbdt.loss",
    "HardTreeSupLoss": "nbdt.loss",
    "NBDT": "nbdt.model",
    "Explanation": "nbdt.explanation",
    "load": "nbdt.model",
    "hierarchy_html": "nbdt.visualize",
    "explanation_html": "nbdt.visualize",
    "evaluate": "nbdt.evaluation.evaluate",
    "EvalResult": "nbdt.evaluation.evaluate",
    "TreeMetrics": "nbdt.evaluation.metrics",
    "report_html": "nbdt.evaluation.report",
    "node_examples": "nbdt.evidence.examples",
    "NodeExamples": "nbdt.evidence.examples",
    "export_onnx": "nbdt.deploy.export",
    "OnnxNBDT": "nbdt.deploy.runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nbdt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
