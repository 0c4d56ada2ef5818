"""``nbdt-explain``: the class and decision path of images, from a checkpoint or an ONNX file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from nbdt._messages import for_terminal
from nbdt.cli._common import EXIT_BAD_INPUT, Parser, add_output, load_model, non_negative_int, run


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-explain: predict images with an NBDT and print each decision path."""
    return run("nbdt-explain", _explain, parser(), argv)


def parser() -> argparse.ArgumentParser:
    """nbdt-explain's options; --mode, --node-score and --method read their tables."""
    from nbdt.evidence.saliency import CAM_METHODS, DEFAULT_METHOD, method_name
    from nbdt.model import MODES
    from nbdt.rules import NODE_SCORES

    p = Parser(
        prog="nbdt-explain",
        description="Predict images with an NBDT and print the decisions that led to each class."
        " Without --checkpoint it runs the offline ImageNet example: efficientnet_lite0 with"
        " real weights, the shipped induced ImageNet hierarchy and marginal rules.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format)")
    p.add_argument(
        "--checkpoint", metavar="FILE", help="an nbdt model file (NBDT.save or nbdt-train)"
    )
    p.add_argument(
        "--onnx",
        metavar="FILE",
        help="an ONNX file from nbdt-export: explained with ONNX Runtime alone (its own"
        " hierarchy and rules)",
    )
    p.add_argument(
        "--hierarchy",
        metavar="NAME|FILE",
        help="a shipped hierarchy name (default for the example: imagenet-induced; or"
        " imagenet-wordnet) or a hierarchy JSON file; default with --checkpoint: its own",
    )
    p.add_argument("--mode", choices=MODES, help="inference mode (default: the checkpoint's, soft)")
    p.add_argument(
        "--node-score",
        choices=NODE_SCORES,
        help="how a child is scored (default: the checkpoint's; marginal for the example)",
    )
    p.add_argument(
        "--top-k",
        type=non_negative_int,
        metavar="K",
        help="classes to list (default: 5, or all when fewer)",
    )
    p.add_argument(
        "--json", action="store_true", help="print a JSON list, one explanation per image"
    )
    add_output(
        p,
        required=False,
        metavar="FILE.html",
        help="also write the explanations as one HTML page",
        aliases=("--html",),
    )
    evidence = p.add_argument_group("evidence")
    evidence.add_argument(
        "--evidence",
        action="store_true",
        help="a heatmap per decision: where the image pushed the node towards the child taken"
        " rather than the runner-up (in --json and -o)",
    )
    evidence.add_argument(
        "--method",
        choices=CAM_METHODS,
        type=method_name,
        default=DEFAULT_METHOD,
        help="CAM method, as grad-cam names it (default: %(default)s)",
    )
    evidence.add_argument(
        "--layer", metavar="NAME", help="backbone module to explain (default: found automatically)"
    )
    evidence.add_argument(
        "--examples",
        metavar="FILE",
        help="node examples (nbdt-examples, or nbdt-train's node_examples.npz): each decision's"
        " training images and the nearest ones",
    )
    return p


_EXPLAIN_BATCH = 16  # images decoded and explained at a time


_EXAMPLE_NOTE = (
    "note: efficientnet_lite0 was trained on ImageNet without tree supervision; its"
    " predictions are explained with {node_score} rules over the {hierarchy} hierarchy"
)


def _explain(args: argparse.Namespace) -> int:
    """Explain every readable image; unreadable ones are reported and make the exit status 2."""
    import json

    from nbdt.explanation import format_probability
    from nbdt.images import load_image
    from nbdt.progress import Progress
    from nbdt.rules import NonFiniteLogits

    model, note = _explain_model(args)
    classes = model.hierarchy.num_classes
    if args.top_k is not None and args.top_k > classes:
        raise ValueError(f"--top-k {args.top_k}: the model has only {classes} classes")
    top_k = min(5, classes) if args.top_k is None else args.top_k
    channels = model.data_config["input_size"][0]
    examples = None
    if args.examples:
        from nbdt.evidence.examples import NodeExamples

        examples = NodeExamples.load(args.examples, model.hierarchy)
    if args.evidence or examples is not None:
        from nbdt.evidence.saliency import check_evidence_options

        check_evidence_options(model, args.method, args.layer, examples)
    if note:
        print(note, file=sys.stderr if args.json else sys.stdout)
    explained: list[tuple[str, object]] = []
    failed = 0
    starts = range(0, len(args.images), _EXPLAIN_BATCH)
    if len(starts) > 1:  # more than one batch: a pass worth a progress display
        starts = Progress().track(starts, len(starts), "explain")
    for start in starts:
        loaded: list[tuple[str, Any]] = []
        for name in args.images[start : start + _EXPLAIN_BATCH]:
            try:
                loaded.append((name, load_image(name, channels)))
            except ValueError as e:
                print(f"nbdt-explain: error: {for_terminal(str(e))}", file=sys.stderr)
                failed += 1
        if not loaded:
            continue
        explain_options: dict[str, Any] = {"top_k": top_k}
        if not args.onnx:  # evidence needs the network's gradients and features
            explain_options.update(
                evidence=args.evidence, method=args.method, layer=args.layer, examples=examples
            )
        try:
            explanations = model.explain([image for _, image in loaded], **explain_options)
        except NonFiniteLogits as e:  # report those images, explain the others
            for row in e.rows:
                print(
                    f"nbdt-explain: error: {for_terminal(loaded[row][0])}: the model's logits"
                    " are not finite (NaN or infinity): its weights or the image are damaged",
                    file=sys.stderr,
                )
            failed += len(e.rows)
            loaded = [item for i, item in enumerate(loaded) if i not in set(e.rows)]
            explanations = (
                model.explain([i for _, i in loaded], **explain_options) if loaded else []
            )
        for (name, _), exp in zip(loaded, explanations, strict=True):
            explained.append((name, exp))
            if not args.json:
                print(f"{for_terminal(name)}: {exp}")
                if exp.top_k:
                    top = ", ".join(
                        f"{for_terminal(t.label)} {format_probability(t.probability)}"
                        for t in exp.top_k
                    )
                    print(f"  top-{len(exp.top_k)}: {top}")
    if args.json:
        print(json.dumps([{"image": name, **exp.to_dict()} for name, exp in explained], indent=1))
    if args.output and explained:
        from nbdt.visualize import explanation_html

        out = explanation_html(
            [exp for _, exp in explained],
            [name for name, _ in explained],
            args.output,
            hierarchy=model.hierarchy,
            title="nbdt-explain",
            crop_pct=float(model.data_config.get("crop_pct", 1.0)),
        )
        print(f"nbdt-explain: wrote {out}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _explain_model(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The NBDT to explain with, and a note to print (for the example model)."""
    if args.onnx:
        return _onnx_model(args), None
    if args.checkpoint:
        model = load_model(args.checkpoint, args.mode, args.node_score, args.hierarchy)
        return model, None

    from nbdt.classes import dataset_classes
    from nbdt.model import NBDT
    from nbdt.pretrained import efficientnet_lite0, load_hierarchy_for

    name = args.hierarchy or "imagenet-induced"
    imagenet = dataset_classes("imagenet")
    tree = load_hierarchy_for(name, imagenet.names, imagenet.wnids)
    node_score = args.node_score or "marginal"
    try:
        network = efficientnet_lite0()
    except ImportError as e:  # the weights package is an optional dependency
        raise ValueError(f"{e} (or pass --checkpoint FILE)") from None
    model = NBDT(network, tree, args.mode or "soft", node_score)
    return model, _EXAMPLE_NOTE.format(node_score=node_score, hierarchy=name)


def _onnx_model(args: argparse.Namespace) -> Any:
    """The ONNX Runtime explainer of ``--onnx``; its file fixes the tree and the node score."""
    from nbdt.deploy.runtime import OnnxNBDT

    given = [f"--{n}" for n in ("checkpoint", "hierarchy") if getattr(args, n)]
    if given:
        raise ValueError(f"--onnx: the ONNX file holds the model and its tree: drop {given[0]}")
    if args.evidence or args.examples:
        option = "--evidence" if args.evidence else "--examples"
        raise ValueError(f"{option} needs the network itself: use --checkpoint instead of --onnx")
    model = OnnxNBDT(args.onnx)
    if args.node_score and args.node_score != model.node_score:
        raise ValueError(
            f"--node-score {args.node_score}: {args.onnx} was exported with"
            f" {model.node_score} rules (export again with nbdt-export --node-score)"
        )
    model.mode = args.mode or model.mode
    return model
