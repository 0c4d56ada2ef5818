"""nbdt-eval end to end on a small Fashion-MNIST subset: files written, held-out classes, errors."""

import json

import pytest

from nbdt.cli import eval_main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained test_resnet NBDT over Fashion-MNIST without 'Ankle boot', saved."""
    import torch

    import nbdt
    from nbdt.classes import dataset_classes
    from nbdt.data import data_config
    from nbdt.model import NBDT

    info = dataset_classes("fashion-mnist")
    names, wnids = list(info.names[:9]), list(info.wnids[:9])  # class 9 is 'Ankle boot'
    torch.manual_seed(0)
    tree = nbdt.Hierarchy.wordnet(names, wnids=wnids)
    net = NBDT.from_arch("test_resnet", tree).model
    model = NBDT.from_arch("test_resnet", tree, data_config=data_config(net, (28, 28)))
    folder = tmp_path_factory.mktemp("run")
    (folder / "args.json").write_text(json.dumps({"holdout_classes": ["Ankle boot"]}))
    (folder / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "top1": 10.0}) + "\n")
    return model.save(folder / "best.pt")


def test_writes_eval_json_and_report_with_the_runs_held_out_class(checkpoint, tmp_path, capsys):
    assert (
        eval_main(
            [
                str(checkpoint),
                "--dataset",
                "fashion-mnist",
                "--subset",
                "120",
                "--out",
                str(tmp_path / "eval"),
                "--batch-size",
                "64",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())
    unseen = metrics["unseen"]["classes"][0]
    assert unseen["name"] == "Ankle boot" and unseen["target"]["relatives"] == ["Sandal", "Sneaker"]
    assert metrics["images"] + unseen["images"] == 120
    assert list(metrics["rulers"]) == ["model", "reference"]
    page = (tmp_path / "eval" / "report.html").read_text()
    assert page.count("data:image/svg+xml") == 5  # with the training curves
    assert "Ankle boot -> " in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--holdout-classes", "Zebra"], "unknown held-out class 'Zebra'"),
        (["--holdout-classes", ""], "the dataset's class 'Ankle boot' is not one of the model's"),
        (["--reference", "missing.json"], "missing.json"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, extra, message):
    out = tmp_path / "eval"
    code = eval_main(
        [str(checkpoint), "--dataset", "fashion-mnist", "--subset", "20", "--out", str(out), *extra]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
