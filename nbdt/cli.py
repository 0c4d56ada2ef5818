"""Command-line entry points: thin argparse layers over the Python API.

Bad input ends with one line on stderr and exit status 2; nothing here holds logic the API lacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nbdt._messages import for_terminal, one_line

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Raised by CLI code for a user error: printed as one line, exit status 2."""


def run(prog: str, main: Callable[[argparse.Namespace], int | None], parser, argv) -> int:
    """Parse arguments and run ``main``; user errors become one stderr line and exit 2."""
    args = parser.parse_args(argv)
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `nbdt-... | head`: the reader left, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (BadInput, ValueError, OSError) as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process fails alike
            print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ---------------------------------------------------------------------- nbdt-hierarchy
def hierarchy_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-hierarchy: build, show and export class hierarchies."""
    return run("nbdt-hierarchy", _hierarchy, _hierarchy_parser(), argv)


def _hierarchy_parser() -> argparse.ArgumentParser:
    from nbdt.classes import CLASS_LISTS

    parser = argparse.ArgumentParser(
        prog="nbdt-hierarchy",
        description="Build a class hierarchy (induced from a model's classifier, from WordNet, or"
        " random), print it, and save it as node-link JSON or HTML.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sub: argparse.ArgumentParser, classes_required: bool = True) -> None:
        source = sub.add_mutually_exclusive_group(required=classes_required)
        source.add_argument("--dataset", choices=CLASS_LISTS, help="a shipped class list")
        source.add_argument(
            "--classes", metavar="FILE", help="class names or WordNet ids, one per line"
        )
        sub.add_argument(
            "--wnids",
            metavar="FILE",
            help="'name<TAB>wnid' lines: the WordNet sense of these class names",
        )
        sub.add_argument("--out", metavar="TREE.json", help="write the hierarchy as JSON")
        sub.add_argument("--html", metavar="OUT.html", help="write the hierarchy as HTML")
        sub.add_argument(
            "--max-depth", type=_non_negative_int, metavar="N", help="print only N levels"
        )
        sub.add_argument("--quiet", action="store_true", help="do not print the tree")

    induced = commands.add_parser(
        "induced", help="cluster the classifier weights of a model (agglomerative, Ward)"
    )
    common(induced)
    weights = induced.add_mutually_exclusive_group(required=True)
    weights.add_argument("--model", metavar="NAME", help="a timm architecture")
    weights.add_argument(
        "--checkpoint", metavar="PATH", help="a torch checkpoint or state dict file"
    )
    pretrained = induced.add_mutually_exclusive_group()
    pretrained.add_argument(
        "--pretrained", action="store_true", help="with --model: timm's weights (hub or cache)"
    )
    pretrained.add_argument(
        "--pretrained-file", metavar="PATH", help="with --model: weights from a local file"
    )
    induced.add_argument(
        "--linkage",
        default="ward",
        choices=("ward", "complete", "average", "single"),
        help="how clusters merge (default: ward, the least variance added)",
    )
    induced.add_argument("--normalize", action="store_true", help="L2-normalise weight rows")
    induced.add_argument("--branching", type=int, default=2, help="children per node, at most")

    wordnet = commands.add_parser("wordnet", help="the WordNet hypernym tree of the classes")
    common(wordnet)

    random = commands.add_parser("random", help="a seeded random tree (ablation baseline)")
    common(random)
    random.add_argument(
        "--seed", type=_non_negative_int, default=0, help="the same seed, the same tree (0)"
    )
    random.add_argument("--branching", type=int, default=2, help="children per node, at most")

    show = commands.add_parser("show", help="print a hierarchy file or a shipped hierarchy")
    show.add_argument(
        "tree", metavar="TREE", help="a JSON file, or a shipped name such as imagenet-induced"
    )
    common(show, classes_required=False)
    html = commands.add_parser("html", help="write a hierarchy as one self-contained HTML page")
    html.add_argument(
        "tree", metavar="TREE", help="a JSON file, or a shipped name such as imagenet-induced"
    )
    html.add_argument("-o", "--output", required=True, metavar="OUT.html", help="the page")
    html.add_argument(
        "--highlight", metavar="CLASS", help="a class index, node id or label: its path is lit"
    )
    html.add_argument("--title", help="the page title (default: root label and class count)")
    order = html.add_mutually_exclusive_group()
    order.add_argument("--dataset", choices=CLASS_LISTS, help="class order for files without one")
    order.add_argument("--classes", metavar="FILE", help="class order, one name per line")

    edit = commands.add_parser(
        "edit", help="apply an edit file (move, group, ungroup, rename, remove; docs/edits.md)"
    )
    edit.add_argument(
        "tree", metavar="TREE", help="a JSON file, or a shipped name such as fashion-mnist-wordnet"
    )
    edit.add_argument("edits", metavar="EDITS", help="the edit file, one operation per line")
    edit.add_argument("-o", "--output", required=True, metavar="NEW.json", help="the edited tree")
    edit.add_argument("--html", metavar="NEW.html", help="its page, with what moved marked")
    edit.add_argument("--max-depth", type=_non_negative_int, metavar="N", help="print N levels")
    edit.add_argument("--quiet", action="store_true", help="do not print the tree")
    order = edit.add_mutually_exclusive_group()
    order.add_argument("--dataset", choices=CLASS_LISTS, help="class order for files without one")
    order.add_argument("--classes", metavar="FILE", help="class order, one name per line")
    return parser


def _hierarchy_html(args: argparse.Namespace) -> int:
    """`nbdt-hierarchy html`: load a tree file or shipped name and write its page."""
    from nbdt._io import check_not_an_input
    from nbdt.visualize import hierarchy_html

    check_not_an_input("--output", args.output, [args.tree, args.classes])
    tree = _load_tree(args.tree, _hierarchy_classes(args))
    highlight: str | int | None = args.highlight
    if highlight is not None and highlight not in tree and highlight.lstrip("-").isdigit():
        highlight = int(highlight)
    path = hierarchy_html(tree, args.output, highlight=highlight, title=args.title)
    print(f"wrote {path}")
    return 0


_BUILDER_OPTIONS = ("linkage", "normalize", "branching", "seed")  # each builder takes its own


def _hierarchy_edit(args: argparse.Namespace) -> int:
    """`nbdt-hierarchy edit`: apply an edit file; write the new tree (and its page) only whole."""
    from pathlib import Path

    from nbdt.edits import apply_edits, moved_nodes, read_edits

    for option, target in (("--output", args.output), ("--html", args.html)):
        if target and not Path(target).resolve().parent.is_dir():
            raise BadInput(f"{option} {target}: the folder {Path(target).parent} does not exist")
    tree = _load_tree(args.tree, _hierarchy_classes(args))
    edited = apply_edits(tree, read_edits(args.edits))
    moved = moved_nodes(tree, edited)
    if args.html:  # the page first: the tree file, which other commands read, comes last
        from nbdt.visualize import hierarchy_html

        hierarchy_html(edited, Path(args.html), moved=moved)
    edited.save(Path(args.output))
    if not args.quiet:
        print(edited.render(max_depth=args.max_depth), flush=True)
    print(f"wrote {args.output}: {len(moved)} nodes moved", file=sys.stderr)
    return 0


def _hierarchy(args: argparse.Namespace) -> int:
    if args.command == "html":
        return _hierarchy_html(args)
    if args.command == "edit":
        return _hierarchy_edit(args)
    import warnings
    from pathlib import Path

    from nbdt import builders
    from nbdt._io import check_not_an_input
    from nbdt.wordnet import UnresolvedClassWarning

    inputs = [getattr(args, k, None) for k in ("tree", "classes", "checkpoint", "pretrained_file")]
    for option, target in (("--out", args.out), ("--html", args.html)):
        check_not_an_input(option, target, inputs)
        if target and not Path(target).resolve().parent.is_dir():
            raise BadInput(f"{option} {target}: the folder {Path(target).parent} does not exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnresolvedClassWarning)
        classes = _hierarchy_classes(args)
        if args.command == "show":
            tree = _load_tree(args.tree, classes)
        else:
            weights = _weights_source(args) if args.command == "induced" else None
            options = {k: getattr(args, k) for k in _BUILDER_OPTIONS if hasattr(args, k)}
            if not hasattr(classes, "wnids"):  # names from --classes: say how each resolved
                options["wnids"] = _resolve_classes("nbdt-hierarchy", classes, args.wnids)
            tree = builders.build(args.command, classes, weights=weights, **options)
    for warning in caught:
        if issubclass(warning.category, UnresolvedClassWarning):
            print(f"nbdt-hierarchy: warning: {warning.message}", file=sys.stderr)
    if args.out:
        print(f"nbdt-hierarchy: wrote {tree.save(Path(args.out))}", file=sys.stderr)
    if args.html:
        from nbdt.visualize import hierarchy_html

        print(f"nbdt-hierarchy: wrote {hierarchy_html(tree, Path(args.html))}", file=sys.stderr)
    if not args.quiet:
        print(tree.render(max_depth=args.max_depth), flush=True)
    return 0


def _hierarchy_classes(args: argparse.Namespace):
    """The class list from --dataset or --classes (None for `show` without either)."""
    from nbdt.classes import dataset_classes, read_class_file

    if args.dataset:
        return dataset_classes(args.dataset)
    if not args.classes:
        return None
    try:
        return read_class_file(args.classes)
    except (ValueError, OSError) as e:
        raise BadInput(f"--classes {e}") from None


def _resolve_classes(prog: str, names, wnids_file: str | None) -> list[str]:
    """WordNet ids of class names, with --wnids overrides; each guess is printed on stderr."""
    from nbdt.classes import read_wnid_overrides
    from nbdt.wordnet import resolutions

    try:
        overrides = read_wnid_overrides(wnids_file) if wnids_file else None
    except (ValueError, OSError) as e:
        raise BadInput(f"--wnids {e}") from None
    found = resolutions(list(names), overrides, warn=True)
    for r in found:
        if r.fallback and r.rule != "synthetic":  # synthetic ids have their own warning
            print(f"{prog}: note: {for_terminal(str(r))}; override with --wnids", file=sys.stderr)
    return [r.wnid for r in found]


def _load_tree(tree: str, classes):
    """A hierarchy from a JSON file or a shipped hierarchy's name."""
    from nbdt.pretrained import load_hierarchy

    try:
        return load_hierarchy(tree, classes=None if classes is None else list(classes))
    except ValueError as e:
        if classes is None and "no class order" in str(e):
            raise BadInput(
                f"{tree}: the file has no class order: give --dataset or --classes"
            ) from None
        raise


def _weights_source(args: argparse.Namespace):
    """What `induced` clusters: a checkpoint path, or a timm model with pretrained weights."""
    from pathlib import Path

    if args.checkpoint:
        if args.pretrained or args.pretrained_file:
            raise BadInput("--pretrained/--pretrained-file go with --model, not --checkpoint")
        if not Path(args.checkpoint).is_file():
            raise BadInput(f"--checkpoint {args.checkpoint}: no such file")
        return args.checkpoint
    import timm

    from nbdt import builders
    from nbdt.networks import create_model

    if not timm.is_model(args.model):
        raise BadInput(f"--model {args.model}: not a timm architecture (see timm.list_models())")
    if not (args.pretrained or args.pretrained_file):
        raise BadInput(f"--model needs --pretrained or --pretrained-file: {builders.RANDOM_HEAD}")
    if args.pretrained_file and not Path(args.pretrained_file).is_file():
        raise BadInput(f"--pretrained-file {args.pretrained_file}: no such file")
    return create_model(
        args.model, pretrained=True, pretrained_file=args.pretrained_file, option="--model"
    )


# -------------------------------------------------------------------------- nbdt-train
def train_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-train: tree-supervised fine-tuning (see ``nbdt.train``)."""
    return run("nbdt-train", _train, _train_parser(), argv)


def _train_parser() -> argparse.ArgumentParser:
    """nbdt-train's options: one per ``TrainConfig`` field, whose defaults they take."""
    import dataclasses

    from nbdt import builders, data, loss, train
    from nbdt.rules import NODE_SCORES

    p = argparse.ArgumentParser(
        prog="nbdt-train",
        description="Fine-tune a timm model with tree supervision and measure it as an NBDT:"
        " cross-entropy warm-up while the head is untrained, hierarchy, tree-supervised epochs.",
    )
    p.set_defaults(**{f.name: f.default for f in dataclasses.fields(train.TrainConfig)})
    default = " (default: %(default)s)"
    group = p.add_argument_group("data")
    group.add_argument("--dataset", choices=data.DATASETS, help=default.strip())
    group.add_argument(
        "--data-dir",
        metavar="DIR",
        help="dataset folder (fashion-mnist: IDX files, default Debian's"
        f" {data.FASHION_MNIST_DIR}; cifar: default <cache>/data; folder: train/ and"
        " val/ class folders)",
    )
    group.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR")
    group.add_argument("--subset", type=int, metavar="N", help="first N training images")
    group.add_argument("--eval-subset", type=int, metavar="N", help="first N test images")
    group.add_argument("--image-size", type=int, metavar="PX", help="resize images to PX x PX")
    group.add_argument(
        "--holdout-classes",
        type=_names,
        metavar="NAME[,NAME...]",
        help="classes left out of training (images, head and hierarchy), for nbdt-eval's"
        " unseen-class routing",
    )
    group.add_argument(
        "--no-augment", dest="augment", action="store_false", help="no random shift and flip"
    )
    group.add_argument(
        "--workers", type=int, metavar="N", help="data loader processes (default: 0 in memory)"
    )

    model = p.add_argument_group("model")
    model.add_argument("--arch", help=f"timm architecture (default: {train.DEFAULT_ARCH})")
    model.add_argument("--pretrained", action="store_true", help="timm's hub weights")
    model.add_argument("--pretrained-file", metavar="PATH", help="local timm weights file")
    model.add_argument("--checkpoint", metavar="FILE", help="start from an nbdt model file")
    model.add_argument(
        "--hierarchy",
        metavar="KIND|FILE",
        help=f"{', '.join(builders.BUILDERS)}, a hierarchy JSON file or a shipped name such as"
        " fashion-mnist-wordnet (default: induced, or the checkpoint's)",
    )
    model.add_argument("--node-score", choices=NODE_SCORES, help=default.strip())
    model.add_argument(
        "--wnids",
        metavar="FILE",
        help="'name<TAB>wnid' lines: the WordNet sense of folder class names",
    )

    fit = p.add_argument_group("training")
    fit.add_argument(
        "--warmup-epochs",
        type=int,
        metavar="N",
        help="cross-entropy epochs for a new head" + default,
    )
    fit.add_argument("--epochs", type=int, metavar="N", help="tree-supervised epochs" + default)
    fit.add_argument("--loss", choices=loss.LOSSES, help=default.strip())
    fit.add_argument("--soft-variant", choices=loss.SOFT_VARIANTS, help=default.strip())
    fit.add_argument("--tree-weight", type=float, metavar="W", help="tree term weight" + default)
    fit.add_argument(
        "--tree-weight-end", type=float, metavar="W", help="in the last epoch (default: constant)"
    )
    fit.add_argument(
        "--tree-weight-power", type=float, metavar="P", help="schedule shape" + default
    )
    fit.add_argument("--ce-weight", type=float, metavar="W", help="cross-entropy weight" + default)
    fit.add_argument(
        "--ce-weight-end", type=float, metavar="W", help="in the last epoch (default: constant)"
    )
    fit.add_argument("--ce-weight-power", type=float, metavar="P", help="schedule shape" + default)
    fit.add_argument("--optimizer", choices=train.OPTIMIZERS, help=default.strip())
    fit.add_argument("--lr", type=float, help="default: per optimiser, scaled by batch/256")
    fit.add_argument("--weight-decay", type=float, help="default: 5e-4 (sgd), 0.05 (adamw)")
    fit.add_argument(
        "--batch-size", type=int, metavar="N", help="global batch, split over processes" + default
    )
    fit.add_argument("--seed", type=int, help=default.strip())
    fit.add_argument(
        "--head-only",
        action="store_true",
        help="with --checkpoint: train only the classifier head on backbone features computed"
        " once (no augmentation), e.g. after editing the hierarchy",
    )

    run = p.add_argument_group("run")
    run.add_argument("--output", required=True, metavar="DIR", help="checkpoints and metrics")
    run.add_argument("--resume", action="store_true", help="continue from DIR/last.pt")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in DIR")
    run.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: the best present)")
    run.add_argument("--no-amp", dest="amp", action="store_false", help="no CUDA autocast")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    run.add_argument("--explain", type=int, metavar="N", help="explain N test images at the end")
    run.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="no evaluation at the end (eval.json, report.html: a pass over the test split)",
    )
    run.add_argument(
        "--no-examples",
        dest="examples",
        action="store_false",
        help="no node_examples.npz (each node's training images, shown on the pages and"
        " explained images' heatmaps)",
    )
    return p


def _train(args: argparse.Namespace) -> int:
    from nbdt import train

    try:
        train.train(train.TrainConfig(**vars(args)))
    except train.Interrupted as e:
        print(f"nbdt-train: interrupted {e}", file=sys.stderr)
        return 130
    except train.LossDiverged as e:
        print(f"nbdt-train: error: {e}", file=sys.stderr)
        return 1
    return 0


# ------------------------------------------------------------------------ nbdt-explain
def explain_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-explain: predict images with an NBDT and print each decision path."""
    parser = argparse.ArgumentParser(
        prog="nbdt-explain",
        description="Predict images with an NBDT and print the decisions that led to each class."
        " Without --checkpoint it runs the offline ImageNet example: efficientnet_lite0 with"
        " real weights, the shipped induced ImageNet hierarchy and marginal rules.",
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format)")
    parser.add_argument(
        "--checkpoint", metavar="FILE", help="an nbdt model file (NBDT.save or nbdt-train)"
    )
    parser.add_argument(
        "--onnx",
        metavar="FILE",
        help="an ONNX file from nbdt-export: explained with ONNX Runtime alone (its own"
        " hierarchy and rules)",
    )
    parser.add_argument(
        "--hierarchy",
        metavar="NAME|FILE",
        help="a shipped hierarchy name (default for the example: imagenet-induced; or"
        " imagenet-wordnet) or a hierarchy JSON file; default with --checkpoint: its own",
    )
    from nbdt.model import MODES
    from nbdt.rules import NODE_SCORES

    parser.add_argument(
        "--mode", choices=MODES, help="inference mode (default: the checkpoint's, soft)"
    )
    parser.add_argument(
        "--node-score",
        choices=NODE_SCORES,
        help="how a child is scored (default: the checkpoint's; marginal for the example)",
    )
    parser.add_argument(
        "--top-k",
        type=_non_negative_int,
        metavar="K",
        help="classes to list (default: 5, or all when fewer)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print a JSON list, one explanation per image"
    )
    parser.add_argument("--html", metavar="FILE", help="also write the explanations as HTML")
    from nbdt.evidence import CAM_METHODS, DEFAULT_METHOD

    evidence = parser.add_argument_group("evidence")
    evidence.add_argument(
        "--evidence",
        action="store_true",
        help="a heatmap per decision: where the image pushed the node towards the child taken"
        " rather than the runner-up (in --json and --html)",
    )
    evidence.add_argument(
        "--method", choices=CAM_METHODS, default=DEFAULT_METHOD, help="CAM method (%(default)s)"
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
    return run("nbdt-explain", _explain, parser, argv)


_EXPLAIN_BATCH = 16  # images decoded and explained at a time
_EXAMPLE_NOTE = (
    "note: efficientnet_lite0 was trained on ImageNet without tree supervision; its"
    " predictions are explained with {node_score} rules over the {hierarchy} hierarchy"
)


def _explain(args: argparse.Namespace) -> int:
    """Explain every readable image; unreadable ones are reported and make the exit status 2."""
    import json

    from nbdt._io import check_not_an_input
    from nbdt.explanation import format_probability
    from nbdt.images import load_image
    from nbdt.rules import NonFiniteLogits

    check_not_an_input("--html", args.html, [*args.images, args.checkpoint, args.hierarchy])
    model, note = _explain_model(args)
    classes = model.hierarchy.num_classes
    if args.top_k is not None and args.top_k > classes:
        raise BadInput(f"--top-k {args.top_k}: the model has only {classes} classes")
    top_k = min(5, classes) if args.top_k is None else args.top_k
    channels = model.data_config["input_size"][0]
    examples = None
    if args.examples:
        from nbdt.evidence import NodeExamples

        examples = NodeExamples.load(args.examples, model.hierarchy)
    if args.evidence or examples is not None:
        from nbdt.evidence import check_evidence_options

        check_evidence_options(model, args.method, args.layer, examples)
    if note:
        print(note, file=sys.stderr if args.json else sys.stdout)
    explained: list[tuple[str, object]] = []
    failed = 0
    for start in range(0, len(args.images), _EXPLAIN_BATCH):
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
    if args.html and explained:
        from nbdt.visualize import explanation_html

        out = explanation_html(
            [exp for _, exp in explained],
            [name for name, _ in explained],
            args.html,
            hierarchy=model.hierarchy,
            title="nbdt-explain",
            crop_pct=float(model.data_config.get("crop_pct", 1.0)),
        )
        print(f"nbdt-explain: wrote {out}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _explain_model(args: argparse.Namespace) -> tuple[Any, str | None]:
    """The NBDT to explain with, and a note to print (for the example model)."""
    from nbdt.hierarchy import Hierarchy
    from nbdt.model import NBDT, read_checkpoint
    from nbdt.pretrained import load_hierarchy_for

    if args.onnx:
        return _onnx_model(args), None
    if args.checkpoint:
        checkpoint = read_checkpoint(args.checkpoint)
        if args.hierarchy:
            own = Hierarchy.from_node_link(checkpoint["hierarchy"])
            wnids = [leaf.wnid for leaf in own.leaves]
            tree = load_hierarchy_for(args.hierarchy, own.classes, wnids)
            checkpoint["hierarchy"] = tree.to_node_link()
        checkpoint["mode"] = args.mode or checkpoint.get("mode")
        checkpoint["node_score"] = args.node_score or checkpoint.get("node_score")
        return NBDT.from_checkpoint(checkpoint, source=args.checkpoint).eval(), None

    from nbdt.classes import dataset_classes
    from nbdt.pretrained import efficientnet_lite0

    name = args.hierarchy or "imagenet-induced"
    imagenet = dataset_classes("imagenet")
    tree = load_hierarchy_for(name, imagenet.names, imagenet.wnids)
    node_score = args.node_score or "marginal"
    try:
        network = efficientnet_lite0()
    except ImportError as e:  # the weights package is an optional dependency
        raise BadInput(f"{e} (or pass --checkpoint FILE)") from None
    model = NBDT(network, tree, args.mode or "soft", node_score)
    return model, _EXAMPLE_NOTE.format(node_score=node_score, hierarchy=name)


# --------------------------------------------------------------------------- nbdt-eval
def eval_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-eval: hierarchy-aware evaluation of a checkpoint, eval.json and report.html."""
    from nbdt.data import DATASETS, SPLITS

    parser = argparse.ArgumentParser(
        prog="nbdt-eval",
        description="Hierarchy-aware evaluation of an NBDT checkpoint (metrics: docs/metrics.md):"
        " top-k, mistake severity, hierarchical distance, per-node accuracy, calibration, and"
        " where images of held-out classes go. Under torchrun the ranks share the images.",
    )
    parser.add_argument("checkpoint", help="an nbdt model file (best.pt, last.pt, nbdt.pt)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", metavar="DIR", help="the dataset's folder (as nbdt-train)")
    parser.add_argument("--split", default="test", choices=SPLITS, help="(default: test)")
    parser.add_argument(
        "--reference",
        metavar="wordnet|none|FILE",
        help="a second hierarchy to measure mistakes on (default: WordNet when every class has"
        " a WordNet id)",
    )
    parser.add_argument(
        "--holdout-classes",
        type=_names,
        metavar="NAME[,NAME...]",
        help="classes the model never saw, routed through its tree (default: the run's, from"
        " args.json beside the checkpoint)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="eval.json and report.html")
    parser.add_argument("--no-report", action="store_true", help="write eval.json only")
    parser.add_argument("--subset", type=_non_negative_int, metavar="N", help="first N images")
    parser.add_argument("--batch-size", type=_non_negative_int, default=256, metavar="N")
    parser.add_argument("--workers", type=_non_negative_int, default=0, metavar="N")
    parser.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: the best present)")
    return run("nbdt-eval", _eval, parser, argv)


def _eval(args: argparse.Namespace) -> int:
    """Evaluate, then (main process) write eval.json and the report: nothing before success."""
    from pathlib import Path

    import torch.distributed as dist

    from nbdt import data, train
    from nbdt.evaluate import evaluate
    from nbdt.model import load

    if not Path(args.checkpoint).is_file():
        raise BadInput(f"{args.checkpoint}: no such checkpoint file")
    if not args.batch_size:
        raise BadInput("--batch-size must be at least 1")
    run_folder = train.RunFolder(Path(args.checkpoint).parent, main=False)
    holdout = args.holdout_classes
    if holdout is None:
        holdout = (run_folder.recorded_args() or {}).get("holdout_classes") or []
    if not args.no_report:
        from nbdt.report import pyplot

        pyplot()  # a missing matplotlib stops here, before the evaluation
    runtime = train.start_runtime(args.device)
    try:
        model = load(args.checkpoint).to(runtime.device)
        size = tuple(model.data_config["input_size"][-2:])
        dataset = data.load_dataset(args.dataset, args.split, args.data_dir, image_size=size)
        if args.subset is not None:
            dataset = dataset.head(args.subset)
        result = evaluate(
            model,
            dataset,
            reference=args.reference,
            holdout=holdout,
            batch_size=args.batch_size,
            device=runtime.device,
            workers=args.workers,
        )
    finally:
        if runtime.distributed:
            dist.destroy_process_group()
    if not runtime.main:
        return 0
    written = result.write(args.out, report=not args.no_report, history=run_folder.history())
    print(result.summary())
    for path in written:
        print(f"wrote {path}")
    return 0


def _onnx_model(args: argparse.Namespace) -> Any:
    """The ONNX Runtime explainer of ``--onnx``; its file fixes the tree and the node score."""
    from nbdt.runtime import OnnxNBDT

    given = [f"--{n}" for n in ("checkpoint", "hierarchy") if getattr(args, n)]
    if given:
        raise BadInput(f"--onnx: the ONNX file holds the model and its tree: drop {given[0]}")
    if args.evidence or args.examples:
        option = "--evidence" if args.evidence else "--examples"
        raise BadInput(f"{option} needs the network itself: use --checkpoint instead of --onnx")
    model = OnnxNBDT(args.onnx)
    if args.node_score and args.node_score != model.node_score:
        raise BadInput(
            f"--node-score {args.node_score}: {args.onnx} was exported with"
            f" {model.node_score} rules (export again with nbdt-export --node-score)"
        )
    model.mode = args.mode or model.mode
    return model


def _names(text: str) -> list[str]:
    """A comma-separated list of names, spaces around each trimmed ("": none)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum`` (0 or 1)."""
    kind = "non-negative" if minimum == 0 else "positive"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}")
        return value

    return parse


_non_negative_int = _int_at_least(0)
_positive_int = _int_at_least(1)


# ----------------------------------------------------------------------- nbdt-examples
def examples_main(argv: Sequence[str] | None = None) -> int:
    """nbdt-examples CHECKPOINT --dataset NAME -o FILE: the node-examples pass on its own."""
    from nbdt.data import DATASETS, SPLITS

    parser = argparse.ArgumentParser(
        prog="nbdt-examples",
        description="For every inner node and child of a model's tree: the training images it"
        " sends there most confidently and its typical mistakes (with 64-px thumbnails), plus a"
        " sample of pooled features for nearest-image search, saved as one .npz file.",
    )
    parser.add_argument("checkpoint", help="an nbdt model file (nbdt-train's best.pt)")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", help="the dataset's folder (needed for 'folder')")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument("-o", "--output", required=True, help="the .npz file to write")
    parser.add_argument("-k", type=_positive_int, default=8, help="images per node, child, kind")
    parser.add_argument(
        "--sample", type=_positive_int, default=4096, help="images kept for nearest-image search"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=128)
    parser.add_argument(
        "--workers", type=_non_negative_int, default=0, help="DataLoader worker processes"
    )
    return run("nbdt-examples", _examples, parser, argv)


def _examples(args: argparse.Namespace) -> int:
    from pathlib import Path

    import nbdt
    from nbdt.data import load_dataset
    from nbdt.evidence import node_examples

    output = Path(args.output)
    if not output.parent.is_dir():
        raise FileNotFoundError(f"{output}: the folder {output.parent} does not exist")
    model = nbdt.load(args.checkpoint)
    dataset = load_dataset(args.dataset, args.split, args.data_dir)
    if list(dataset.classes) != list(model.hierarchy.classes):
        raise ValueError(
            f"{args.dataset}: its {len(dataset.classes)} classes are not the model's"
            f" {model.hierarchy.num_classes} ({', '.join(model.hierarchy.classes[:3])}, ...)"
        )
    found = node_examples(
        model,
        dataset,
        k=args.k,
        sample=args.sample,
        batch_size=args.batch_size,
        num_workers=args.workers,
        progress=sys.stderr.isatty(),
    )
    found.save(output)
    print(f"nbdt-examples: wrote {output}", file=sys.stderr)
    return 0
