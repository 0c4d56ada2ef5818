"""``nbdt-train``: the argparse layer over :func:`nbdt.training.run.train`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nbdt.cli._common import Parser, add_data_options, add_output, comma_list, run


def main(argv: Sequence[str] | None = None) -> int:
    """nbdt-train: tree-supervised fine-tuning (see ``nbdt.training``)."""
    return run("nbdt-train", _train, parser(), argv)


def parser() -> argparse.ArgumentParser:
    """nbdt-train's options: one per ``TrainConfig`` field, whose defaults they take."""
    import dataclasses

    from nbdt import builders, loss
    from nbdt.networks import PADDINGS
    from nbdt.rules import NODE_SCORES
    from nbdt.training.config import DEFAULT_ARCH, OPTIMIZERS, TrainConfig

    p = Parser(
        prog="nbdt-train",
        description="Fine-tune a timm model with tree supervision and measure it as an NBDT:"
        " cross-entropy warm-up while the head is untrained, hierarchy, tree-supervised epochs.",
    )
    p.set_defaults(**{f.name: f.default for f in dataclasses.fields(TrainConfig)})
    default = " (default: %(default)s)"
    group = p.add_argument_group("data")
    add_data_options(group)
    group.add_argument("--download", action="store_true", help="let torchvision fetch CIFAR")
    group.add_argument("--subset", type=int, metavar="N", help="first N training images")
    group.add_argument("--eval-subset", type=int, metavar="N", help="first N test images")
    group.add_argument("--image-size", type=int, metavar="PX", help="resize images to PX x PX")
    group.add_argument(
        "--holdout-classes",
        type=comma_list,
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
    model.add_argument("--arch", "--model", help=f"timm architecture (default: {DEFAULT_ARCH})")
    model.add_argument("--pretrained", action="store_true", help="timm's hub weights")
    model.add_argument("--pretrained-file", metavar="PATH", help="local timm weights file")
    model.add_argument("--checkpoint", metavar="FILE", help="start from an nbdt model file")
    model.add_argument(
        "--hierarchy",
        metavar="KIND|FILE",
        help=f"{', '.join(builders.BUILDERS)}, a hierarchy JSON file or a shipped name such as"
        " fashion-mnist-wordnet (default: induced, or the checkpoint's)",
    )
    model.add_argument(
        "--wordnet-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="induced trees: blend in the WordNet distance, 0 (default) the weights alone to 1"
        " WordNet's grouping",
    )
    model.add_argument(
        "--padding",
        choices=PADDINGS,
        help="how convolutions pad their input: zeros (timm's) or replicate, which repeats the"
        " border so a uniform background gives no edge there (default: zeros, or the checkpoint's)",
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
    fit.add_argument("--optimizer", choices=OPTIMIZERS, help=default.strip())
    fit.add_argument("--lr", type=float, help="default: per optimiser, scaled by batch/256")
    fit.add_argument("--weight-decay", type=float, help="default: 5e-4 (sgd), 0.05 (adamw)")
    fit.add_argument(
        "-b",
        "--batch-size",
        type=int,
        metavar="N",
        help="global batch, split over processes" + default,
    )
    fit.add_argument("--seed", type=int, help=default.strip())
    fit.add_argument(
        "--head-only",
        action="store_true",
        help="with --checkpoint: train only the classifier head on backbone features computed"
        " once (no augmentation), e.g. after editing the hierarchy",
    )

    run = p.add_argument_group("run")
    add_output(run, metavar="DIR", help="checkpoints and metrics", folder=True)
    run.add_argument("--resume", action="store_true", help="continue from DIR/last.pt")
    run.add_argument("--overwrite", action="store_true", help="replace the run already in DIR")
    run.add_argument("--device", help="cuda, cuda:N, mps or cpu (default: the best present)")
    run.add_argument("--no-amp", dest="amp", action="store_false", help="no CUDA autocast")
    run.add_argument("--compile", action="store_true", help="torch.compile the model")
    run.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")
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
    from nbdt.training.config import TrainConfig
    from nbdt.training.run import train

    train(TrainConfig(**vars(args)))
    return 0
