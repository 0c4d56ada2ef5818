"""``nbdt-export``: a checkpoint as one ONNX file that explains without PyTorch."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nbdt.cli._common import load_model, run


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-export: an nbdt model file as one ONNX file (network + decision rules + metadata)."""
    parser = argparse.ArgumentParser(
        prog="nbdt-export",
        description="Export an NBDT checkpoint as one ONNX file: the network, the decision rules"
        " and, in its metadata, the hierarchy and preprocessing, so that ONNX Runtime alone"
        " predicts and explains (nbdt.deploy.runtime.OnnxNBDT).",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="an nbdt model file")
    parser.add_argument("-o", "--output", required=True, metavar="MODEL.onnx")
    parser.add_argument("--mode", choices=("soft", "hard"), help="default: the checkpoint's")
    parser.add_argument(
        "--node-score", choices=("mean", "marginal"), help="default: the checkpoint's"
    )
    return run("nbdt-export", _export, parser, argv)


def _export(args: argparse.Namespace) -> int:
    from nbdt.deploy.export import export_onnx

    model = load_model(args.checkpoint, args.mode, args.node_score)
    print(f"nbdt-export: wrote {export_onnx(model, args.output)}")
    return 0
