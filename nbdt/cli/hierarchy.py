"""``nbdt-hierarchy``: build (induced, wordnet, random), show, edit and draw hierarchies."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from nbdt import builders
from nbdt._messages import for_terminal
from nbdt.cli._common import Parser, add_output, non_negative_int, run


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-hierarchy: build, show and export class hierarchies."""
    return run("nbdt-hierarchy", _hierarchy, parser(), argv)


# The flag of each builder option (nbdt.builders.options): a builder's command has the flags of
# the options it takes, and passes them on under the same names. --wnids is a file, read apart.
_OPTION_FLAGS: dict[str, dict[str, Any]] = {
    "linkage": {
        "default": "ward",
        "choices": builders.LINKAGES,
        "help": "how clusters merge (default: ward, the least variance added)",
    },
    "normalize": {"action": "store_true", "help": "L2-normalise weight rows"},
    "seed": {"type": non_negative_int, "default": 0, "help": "the same seed, the same tree"},
    "branching": {"type": int, "default": 2, "help": "children per node, at most"},
    "wordnet_weight": {
        "type": float,
        "default": 0.0,
        "metavar": "W",
        "help": "blend the WordNet distance into the weights' distance: 0 (default) the weights"
        " alone, 1 WordNet's grouping (docs/names.md)",
    },
}


def _builder_options(kind: str) -> tuple[str, ...]:
    """The options of builder ``kind`` that nbdt-hierarchy sets by flags (all but wnids)."""
    return tuple(o for o in builders.options(kind) if o != "wnids")


def parser() -> argparse.ArgumentParser:
    """nbdt-hierarchy's commands and their options."""
    from nbdt.classes import CLASS_LISTS

    p = Parser(
        prog="nbdt-hierarchy",
        description="Build a class hierarchy (induced from a model's classifier, from WordNet, or"
        " random), print it, and save it as node-link JSON or HTML.",
    )
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        add_output(
            sub,
            required=False,
            metavar="TREE.json",
            help="write the hierarchy as JSON",
            aliases=("--out",),
        )
        sub.add_argument("--html", metavar="OUT.html", help="write the hierarchy as HTML")
        sub.add_argument(
            "--max-depth", type=non_negative_int, metavar="N", help="print only N levels"
        )
        sub.add_argument("--quiet", action="store_true", help="do not print the tree")

    induced = commands.add_parser(
        "induced", help="cluster the classifier weights of a model (agglomerative, Ward)"
    )
    common(induced)
    weights = induced.add_mutually_exclusive_group(required=True)
    weights.add_argument("--model", metavar="NAME", help="a timm architecture")
    weights.add_argument("--arch", dest="model", help=argparse.SUPPRESS)  # nbdt-train's name
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
    wordnet = commands.add_parser("wordnet", help="the WordNet hypernym tree of the classes")
    common(wordnet)
    random = commands.add_parser("random", help="a seeded random tree (ablation baseline)")
    common(random)
    for kind, sub in (("induced", induced), ("wordnet", wordnet), ("random", random)):
        for option in _builder_options(kind):  # the options the builder takes, its flags
            sub.add_argument(f"--{option.replace('_', '-')}", **_OPTION_FLAGS[option])

    show = commands.add_parser("show", help="print a hierarchy file or a shipped hierarchy")
    show.add_argument(
        "tree", metavar="TREE", help="a JSON file, or a shipped name such as imagenet-induced"
    )
    common(show, classes_required=False)
    html = commands.add_parser("html", help="write a hierarchy as one self-contained HTML page")
    html.add_argument(
        "tree", metavar="TREE", help="a JSON file, or a shipped name such as imagenet-induced"
    )
    add_output(html, metavar="OUT.html", help="the page")
    html.add_argument(
        "--highlight", metavar="CLASS", help="a class index, node id or label: its path is lit"
    )
    html.add_argument("--title", help="the page title (default: root label and class count)")
    order = html.add_mutually_exclusive_group()
    order.add_argument("--dataset", choices=CLASS_LISTS, help="class order for files without one")
    order.add_argument("--classes", metavar="FILE", help="class order, one name per line")

    name = commands.add_parser(
        "name",
        help="give every node of a tree file the name that best describes its classes"
        " (docs/names.md)",
    )
    name.add_argument(
        "tree", metavar="TREE", help="a JSON file (e.g. the reference implementation's)"
    )
    add_output(name, metavar="NAMED.json", help="the tree with display names and their fit")
    name.add_argument("--max-depth", type=non_negative_int, metavar="N", help="print N levels")
    name.add_argument("--quiet", action="store_true", help="do not print the tree")
    order = name.add_mutually_exclusive_group()
    order.add_argument("--dataset", choices=CLASS_LISTS, help="class order for files without one")
    order.add_argument("--classes", metavar="FILE", help="class order, one name per line")

    edit = commands.add_parser(
        "edit", help="apply an edit file (move, group, ungroup, rename, remove; docs/edits.md)"
    )
    edit.add_argument(
        "tree", metavar="TREE", help="a JSON file, or a shipped name such as fashion-mnist-wordnet"
    )
    edit.add_argument("edits", metavar="EDITS", help="the edit file, one operation per line")
    add_output(edit, metavar="NEW.json", help="the edited tree")
    edit.add_argument("--html", metavar="NEW.html", help="its page, with what moved marked")
    edit.add_argument("--max-depth", type=non_negative_int, metavar="N", help="print N levels")
    edit.add_argument("--quiet", action="store_true", help="do not print the tree")
    order = edit.add_mutually_exclusive_group()
    order.add_argument("--dataset", choices=CLASS_LISTS, help="class order for files without one")
    order.add_argument("--classes", metavar="FILE", help="class order, one name per line")
    return p


def _hierarchy_html(args: argparse.Namespace) -> int:
    """`nbdt-hierarchy html`: load a tree file or shipped name and write its page."""
    from nbdt.visualize import hierarchy_html, node_index

    tree = _load_tree(args.tree, _hierarchy_classes(args))
    highlight: str | int | None = args.highlight
    if highlight is not None and highlight not in tree and highlight.lstrip("-").isdigit():
        highlight = int(highlight)
    path = hierarchy_html(tree, args.output, highlight=highlight, title=args.title)
    what = f"{tree.num_classes} classes, {len(tree.inner_nodes)} inner nodes"
    if highlight is not None:
        node = tree.nodes[node_index(tree, highlight)]
        what += f"; {node.label!r} ({node.id}) and its path from the root highlighted"
    print(f"wrote {path} ({what})")
    return 0


def _hierarchy_edit(args: argparse.Namespace) -> int:
    """`nbdt-hierarchy edit`: apply an edit file; write the new tree (and its page) only whole."""
    from pathlib import Path

    from nbdt.edits import apply_edits, moved_nodes, read_edits

    tree = _load_tree(args.tree, _hierarchy_classes(args))
    edited = apply_edits(tree, read_edits(args.edits))
    moved = moved_nodes(tree, edited)
    if args.html:  # the page first: the tree file, which other commands read, comes last
        from nbdt.visualize import hierarchy_html

        hierarchy_html(edited, Path(args.html), moved=moved)
    edited.save(Path(args.output))
    if not args.quiet:
        print(edited.render(max_depth=args.max_depth), flush=True)
    page = f" and {args.html} (moved nodes marked)" if args.html else ""
    print(f"wrote {args.output}{page}: {len(moved)} nodes moved", file=sys.stderr)
    return 0


def _hierarchy_name(args: argparse.Namespace) -> int:
    """`nbdt-hierarchy name`: store every node's display name and fit (nbdt.labels.named)."""
    from pathlib import Path

    from nbdt.labels import named

    tree = named(_load_tree(args.tree, _hierarchy_classes(args)))
    tree.save(Path(args.output))
    if not args.quiet:
        print(tree.render(max_depth=args.max_depth), flush=True)
    fits = [n.fit for n in tree.inner_nodes if n.fit is not None]
    mean = f", mean name fit {sum(fits) / len(fits):.2f}" if fits else ""
    print(
        f"nbdt-hierarchy: wrote {args.output}: {len(tree.inner_nodes)} inner nodes named{mean}",
        file=sys.stderr,
    )
    return 0


def _hierarchy(args: argparse.Namespace) -> int:
    if args.command == "html":
        return _hierarchy_html(args)
    if args.command == "name":
        return _hierarchy_name(args)
    if args.command == "edit":
        return _hierarchy_edit(args)
    import warnings
    from pathlib import Path

    from nbdt.hierarchy import Hierarchy
    from nbdt.wordnet import UnresolvedClassWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnresolvedClassWarning)
        classes = _hierarchy_classes(args)
        if args.command == "show":
            from nbdt.labels import with_names

            tree = with_names(_load_tree(args.tree, classes))
        else:
            weights = _weights_source(args) if args.command == "induced" else None
            options = {k: getattr(args, k) for k in _builder_options(args.command)}
            if not hasattr(classes, "wnids"):  # names from --classes: say how each resolved
                options["wnids"] = _resolve_classes("nbdt-hierarchy", classes, args.wnids)
            warnings.simplefilter("error", builders.UntrainedHeadWarning)
            try:
                tree = Hierarchy.build(args.command, classes, weights=weights, **options)
            except builders.UntrainedHeadWarning:
                raise ValueError(
                    f"{_weights_name(args)}: {builders.UNTRAINED_HEAD}; train it first, or build"
                    " the tree with nbdt-hierarchy wordnet (or random)"
                ) from None
    for warning in caught:
        if issubclass(warning.category, UnresolvedClassWarning):
            print(f"nbdt-hierarchy: warning: {warning.message}", file=sys.stderr)
    if args.output:
        print(f"nbdt-hierarchy: wrote {tree.save(Path(args.output))}", file=sys.stderr)
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
        raise ValueError(f"--classes {e}") from None


def _resolve_classes(prog: str, names, wnids_file: str | None) -> list[str]:
    """WordNet ids of class names, with --wnids overrides; each guess is printed on stderr."""
    from nbdt.classes import read_wnid_overrides
    from nbdt.wordnet import resolutions

    try:
        overrides = read_wnid_overrides(wnids_file) if wnids_file else None
    except (ValueError, OSError) as e:
        raise ValueError(f"--wnids {e}") from None
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
            raise ValueError(
                f"{tree}: the file has no class order: give --dataset or --classes"
            ) from None
        raise


def _weights_name(args: argparse.Namespace) -> str:
    """The flag and file `induced` read the classifier from, as messages name it."""
    if args.checkpoint:
        return f"--checkpoint {args.checkpoint}"
    if args.pretrained_file:
        return f"--pretrained-file {args.pretrained_file}"
    return f"--model {args.model} --pretrained"


def _weights_source(args: argparse.Namespace):
    """What `induced` clusters: a checkpoint path, or a timm model with pretrained weights."""
    from pathlib import Path

    if args.checkpoint:
        if args.pretrained or args.pretrained_file:
            raise ValueError("--pretrained/--pretrained-file go with --model, not --checkpoint")
        if not Path(args.checkpoint).is_file():
            raise ValueError(f"--checkpoint {args.checkpoint}: no such file")
        return args.checkpoint
    import timm

    from nbdt.networks import create_model

    if not timm.is_model(args.model):
        raise ValueError(f"--model {args.model}: not a timm architecture (see timm.list_models())")
    if not (args.pretrained or args.pretrained_file):
        raise ValueError(f"--model needs --pretrained or --pretrained-file: {builders.RANDOM_HEAD}")
    if args.pretrained_file and not Path(args.pretrained_file).is_file():
        raise ValueError(f"--pretrained-file {args.pretrained_file}: no such file")
    return create_model(
        args.model, pretrained=True, pretrained_file=args.pretrained_file, option="--model"
    )
