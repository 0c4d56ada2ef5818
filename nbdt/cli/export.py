"""``nbdt-export``: a checkpoint as one ONNX file that explains without PyTorch."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nbdt.cli._common import Parser, add_output, load_model, run


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-export: an nbdt model file as one ONNX file (network + decision rules + metadata)."""
    return run("nbdt-export", _export, parser(), argv)


def parser() -> argparse.ArgumentParser:
    """nbdt-export's options; --mode and --node-score read the tables the model dispatches on."""
    from nbdt.model import MODES
    from nbdt.rules import NODE_SCORES

    p = Parser(
        prog="nbdt-export",
        description="Export an NBDT checkpoint as one ONNX file: the network, the decision rules"
        " and, in its metadata, the hierarchy and preprocessing, so that ONNX Runtime alone"
        " predicts and explains (nbdt.deploy.runtime.OnnxNBDT).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="an nbdt model file")
    add_output(p, metavar="MODEL.onnx", help="the ONNX file to write")
    p.add_argument("--mode", choices=MODES, help="default: the checkpoint's")
    p.add_argument("--node-score", choices=NODE_SCORES, help="default: the checkpoint's")
    return p


def _export(args: argparse.Namespace) -> int:
    from nbdt.deploy.export import export_onnx

    model = load_model(args.checkpoint, args.mode, args.node_score)
    print(f"nbdt-export: wrote {export_onnx(model, args.output)}")
    return 0
