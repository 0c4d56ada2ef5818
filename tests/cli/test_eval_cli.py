"""nbdt-eval end to end on a small Fashion-MNIST subset: files written, held-out classes, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nbdt.cli.evaluate import main as eval_main
from nbdt.hierarchy import Hierarchy, Node

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tiny_nbdt, tmp_path_factory):
    """An untrained test_resnet NBDT over Fashion-MNIST without 'Ankle boot', saved."""
    from nbdt.classes import dataset_classes

    info = dataset_classes("fashion-mnist")
    names, wnids = list(info.names[:9]), list(info.wnids[:9])  # class 9 is 'Ankle boot'
    model = tiny_nbdt(Hierarchy.wordnet(names, wnids=wnids))
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
                "-o",
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
        (["--reference", "OTHER"], "other.json: 9 of 9 classes match no leaf"),
        (["--subset", "0"], "no images to evaluate (the dataset is empty)"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--split", "test", "--data-dir", "NOWHERE"], "no Fashion-MNIST file"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys, extra, message):
    other = [Node(f"c{i}", f"class {i}") for i in range(9)]
    root = Node("root", "root", None, tuple(n.id for n in other))
    Hierarchy([root, *other], [n.id for n in other]).save(tmp_path / "other.json")
    extra = [
        {"OTHER": str(tmp_path / "other.json"), "NOWHERE": str(tmp_path / "nowhere")}.get(a, a)
        for a in extra
    ]
    out = tmp_path / "eval"
    code = eval_main(
        [str(checkpoint), "--dataset", "fashion-mnist", "--subset", "20", "-o", str(out), *extra]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_help_names_the_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        eval_main(["--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage: nbdt-eval")


@pytest.mark.slow
def test_two_torchrun_processes_give_the_one_process_numbers(checkpoint, tmp_path):
    """Under a real 2-process gloo torchrun each rank takes every other image; the merged sums
    are the single pass's, so eval.json is the same but for the speed and rounding."""
    script = tmp_path / "nbdt_eval.py"
    script.write_text("import sys\nfrom nbdt.cli.evaluate import main\nsys.exit(main())\n")
    args = [str(checkpoint), "--dataset", "fashion-mnist", "--subset", "90", "--no-report"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    runs = {
        "one": [sys.executable, script],
        "two": [BIN / "torchrun", "--standalone", "--nproc_per_node", "2", script],
    }
    for name, command in runs.items():
        done = subprocess.run(
            [*command, *args, "--batch-size", "16", "-o", str(tmp_path / name)],
            capture_output=True, text=True, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("wrote ") == 1  # rank 0 alone writes and reports
    one, two = (json.loads((tmp_path / n / "eval.json").read_text()) for n in runs)
    assert one.pop("images_per_s") > 0 and two.pop("images_per_s") > 0
    assert two["images"] + two["unseen"]["overall"]["images"] == 90
    flat_one, flat_two = flatten(one), flatten(two)
    assert flat_two.keys() == flat_one.keys()
    for key, value in flat_one.items():  # the same sums, added in another order
        assert flat_two[key] == (value if isinstance(value, str) else pytest.approx(value)), key


def flatten(value, prefix=""):
    """Nested JSON as {"a.b.0": leaf}."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return {prefix: value}
    return {k: v for key, item in items for k, v in flatten(item, f"{prefix}.{key}").items()}
