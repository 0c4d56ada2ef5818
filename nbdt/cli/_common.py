"""What every command shares: one exit status for bad input, argument types, the output and
data flags, and loading a checkpoint with mode, node-score and hierarchy overrides.

Commands raise ``ValueError`` (or ``OSError``) for bad input, as the API does; :func:`run` turns
it into one line on stderr and exit status 2. Nothing here holds logic the API lacks.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbdt._messages import for_terminal, one_line

if TYPE_CHECKING:
    from nbdt.model import NBDT

EXIT_BAD_INPUT = 2
# The options through which commands write files; every other path argument is read.
OUTPUT_OPTIONS = ("output", "html")


def run(
    prog: str,
    main: Callable[[argparse.Namespace], int | None],
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
) -> int:
    """Parse arguments and run ``main``; bad input becomes one stderr line and exit 2, a
    diverging loss (:class:`~nbdt.training.loop.LossDiverged`) one line and exit 1, Ctrl-C
    exit 130 with what was kept. Messages are printed through
    :func:`nbdt._messages.for_terminal`: a class or file name cannot drive the terminal."""
    args = parser.parse_args(argv)
    try:
        check_paths(parser, args)
        return int(main(args) or 0)
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted{f' {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    except ArithmeticError as e:  # the loss diverged: the input was fine, the run was not
        if os.environ.get("RANK", "0") == "0":
            print(f"{prog}: error: {for_terminal(one_line(e))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `nbdt-... | head`: the reader left, which is no error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, OSError) as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process fails alike
            print(f"{prog}: error: {for_terminal(one_line(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT


# ------------------------------------------------------------------------------- parsers
class _ShowDefaults(argparse.HelpFormatter):
    """``--help`` names every option's default: " (default: X)" after a help text that does
    not state it already (options without a value, or whose default is None or [], have none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or any(default is unset for unset in (None, False, argparse.SUPPRESS))
            or default == []
            or action.nargs == 0
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)".lstrip()


class Parser(argparse.ArgumentParser):
    """Every command's parser: no prefix matching (``--opt`` is an error, never ``--optimizer``)
    and every default shown in ``--help``; subcommands' parsers are built alike."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _ShowDefaults)
        super().__init__(allow_abbrev=False, **kwargs)


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The rule every command keeps, before any work: no output replaces an input
    (:func:`nbdt._io.check_outputs`). Outputs are the :data:`OUTPUT_OPTIONS`; inputs, every
    other path a free-text argument names (arguments with choices name no path)."""
    from nbdt._io import check_outputs, check_writable

    outputs = {f"--{dest}": getattr(args, dest, None) for dest in OUTPUT_OPTIONS}
    folders = {a.dest for a in _actions(parser) if getattr(a, "folder", False)}
    for option, path in outputs.items():
        if path:
            check_writable(option, path, folder=option[2:] in folders)
    inputs: list[str] = []
    for dest in _path_arguments(parser):
        value = getattr(args, dest, None)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                inputs.append(item)
    check_outputs(outputs, inputs)


def _path_arguments(parser: argparse.ArgumentParser) -> set[str]:
    """The destinations of ``parser``'s (and its sub-commands') free-text arguments, outputs
    excepted."""
    dests = {
        a.dest
        for a in _actions(parser)
        if a.choices is None and a.type in (None, str) and a.nargs != 0
    }
    return dests - set(OUTPUT_OPTIONS)


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """``parser``'s arguments and its sub-commands'."""
    actions = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                actions += _actions(sub)
        else:
            actions.append(action)
    return actions


# ------------------------------------------------------------------------- argument types
def comma_list(text: str) -> list[str]:
    """A comma-separated list of names, spaces around each trimmed ("": none)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def int_at_least(minimum: int) -> Callable[[str], int]:
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


non_negative_int = int_at_least(0)
positive_int = int_at_least(1)


# ---------------------------------------------------------------------------------- flags
def add_output(
    container: Any,
    *,
    metavar: str,
    help: str,
    required: bool = True,
    aliases: Sequence[str] = (),
    folder: bool = False,
) -> None:
    """``-o/--output``: what a command writes, the same flag in every command (``args.output``).

    ``container`` is a parser or an argument group. ``aliases`` are a command's former spellings
    (``--out``): still accepted, hidden from ``--help``, for one release. ``folder``: the
    output is a folder the command creates (else a file in an existing folder); :func:`run`
    checks either can be written before any work.
    """
    group = container.add_mutually_exclusive_group(required=required)
    group.add_argument("-o", "--output", metavar=metavar, help=help).folder = folder
    for alias in aliases:
        action = group.add_argument(alias, dest="output", metavar=metavar, help=argparse.SUPPRESS)
        action.folder = folder


def add_data_options(
    container: Any,
    *,
    from_checkpoint: bool = False,
    fallback: str | None = None,
    split: str | None = None,
) -> None:
    """``--dataset``, ``--data-dir`` and (given a default ``split``) ``--split``: the same flags
    in every command that reads a dataset.

    ``from_checkpoint``: the command reads a checkpoint, and :func:`resolve_data` fills in the
    dataset (and its folder) that the checkpoint's training run recorded, else ``fallback``
    (None: then ``--dataset`` is needed). Otherwise the parser's default shows in ``--help``.
    """
    from nbdt.data import DATASETS, FASHION_MNIST_DIR, SPLITS

    dataset_help, dir_help = "(default: %(default)s)", ")"
    if from_checkpoint:
        otherwise = f", else {fallback}" if fallback else ""
        dataset_help = f"the model's data (default: the one its training run recorded{otherwise})"
        dir_help = "; default: the run's, for its dataset)"
    container.add_argument("--dataset", choices=DATASETS, help=dataset_help)
    container.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"dataset folder (fashion-mnist: IDX files, default Debian's {FASHION_MNIST_DIR};"
        " cifar: default <cache>/data; folder: train/ and val/ class folders" + dir_help,
    )
    if split is not None:
        container.add_argument(
            "--split", choices=SPLITS, default=split, help="(default: %(default)s)"
        )


def resolve_data(args: argparse.Namespace, fallback: str | None = None) -> None:
    """Fill in ``args.dataset`` and ``args.data_dir`` where not given: the dataset the training
    run of ``args.checkpoint`` recorded, else ``fallback``; the run's folder goes with the run's
    dataset. A missing checkpoint records nothing (loading it later names it)."""
    if args.dataset is not None and args.data_dir is not None:
        return
    recorded = recorded_data(args.checkpoint)
    if args.dataset is None:
        args.dataset = recorded.get("dataset") or fallback
    if args.dataset is None:
        if not Path(args.checkpoint).is_file():
            raise FileNotFoundError(f"{args.checkpoint}: no such file")
        raise ValueError(
            f"{args.checkpoint}: records no dataset (no training run's args.json beside it):"
            " pass --dataset NAME"
        )
    if args.data_dir is None and recorded.get("dataset") == args.dataset:
        args.data_dir = recorded.get("data_dir")


def recorded_data(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"dataset": ..., "data_dir": ...}`` as the training run that wrote ``checkpoint``
    recorded them: args.json beside it, else the checkpoint's own training state. ``{}`` for a
    model saved by ``NBDT.save`` (it records none) and for a missing file."""
    from nbdt.checkpoint import read_checkpoint
    from nbdt.training.run_folder import RunFolder

    path = Path(checkpoint)
    if not path.is_file():
        return {}
    settings = RunFolder(path.parent, main=False).recorded_args() or {}
    if not settings.get("dataset"):
        state = read_checkpoint(path).get("train")
        config = state.get("config") if isinstance(state, dict) else None
        settings = config if isinstance(config, dict) else {}
    if not settings.get("dataset"):
        return {}
    return {"dataset": settings["dataset"], "data_dir": settings.get("data_dir")}


def model_classes_of(dataset: Any, model: Any, checkpoint: str, adding: Sequence[str] = ()) -> Any:
    """``dataset`` as the model sees it (:func:`nbdt.intervene.known_classes`): without the
    classes the checkpoint's training run held out (its args.json), nor those named (or whose
    WordNet id is named) in ``adding``: classes nbdt-fix is about to add."""
    from nbdt.intervene import known_classes
    from nbdt.training.run_folder import RunFolder

    run = RunFolder(Path(checkpoint).parent, main=False).recorded_args() or {}
    holdout = list(run.get("holdout_classes") or [])
    named = set(adding)
    wnids = getattr(dataset, "wnids", dataset.classes)
    holdout += [
        c
        for c, w in zip(dataset.classes, wnids, strict=True)
        if named & {c, w} and c not in holdout
    ]
    return known_classes(dataset, model.hierarchy, checkpoint, holdout)


# ---------------------------------------------------------------------------------- models
def load_model(
    path: str,
    mode: str | None = None,
    node_score: str | None = None,
    hierarchy: str | None = None,
) -> NBDT:
    """An nbdt model file in eval mode, with its mode, node score and hierarchy (a shipped name
    or a JSON file, over the model's classes) replaced where given."""
    from nbdt.hierarchy import Hierarchy
    from nbdt.model import NBDT, read_checkpoint
    from nbdt.pretrained import load_hierarchy_for

    checkpoint = read_checkpoint(path)
    if hierarchy:
        own = Hierarchy.from_node_link(checkpoint["hierarchy"])
        wnids = [leaf.wnid for leaf in own.leaves]
        tree = load_hierarchy_for(hierarchy, own.classes, wnids)
        checkpoint["hierarchy"] = tree.to_node_link()
    checkpoint["mode"] = mode or checkpoint.get("mode")
    checkpoint["node_score"] = node_score or checkpoint.get("node_score")
    return NBDT.from_checkpoint(checkpoint, source=path).eval()
