"""nbdt-fix matches its training data's classes to the model's by nbdt-eval's rule: a model trained
with some classes held out gets the other classes' images by name, a model over none of the
dataset's classes is refused in one line naming the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import nbdt
from nbdt import data
from nbdt.cli.fix import main
from nbdt.hierarchy import Hierarchy

KEPT = ["Bag", "Coat", "Sneaker", "Trouser"]  # a folder dataset's order


def _model(tiny_nbdt, classes: list[str], folder: Path) -> Path:
    """An untrained tiny NBDT over ``classes`` saved as ``folder``/best.pt."""
    folder.mkdir()
    tree = Hierarchy.build("random", classes, seed=0)
    return tiny_nbdt(tree).save(folder / "best.pt")


def _folders(stripes_dir: Path, root: Path, classes: list[str], per_class: int) -> Path:
    """root/<class>/<i>.png: ``per_class`` test images of each of ``classes``."""
    test_set = data.load_dataset("fashion-mnist", "test", stripes_dir)
    for i in range(len(test_set)):
        image, target = test_set[i]
        folder = root / test_set.classes[int(target)]
        if folder.name in classes and len(list(folder.glob("*.png"))) < per_class:
            folder.mkdir(parents=True, exist_ok=True)
            data.to_pil(image).save(folder / f"{i}.png")
    return root


def test_fix_replays_only_the_kept_classes_of_a_model_trained_with_holdout_classes(
    capsys, tiny_nbdt, stripes_dir, tmp_path
):
    """A folder dataset of five classes; the model was trained with two of them held out."""
    held = ["Sandal", "Pullover"]
    for split in ("train", "test"):
        _folders(stripes_dir, tmp_path / "data" / split, KEPT + held, per_class=3)
    checkpoint = _model(tiny_nbdt, KEPT, tmp_path / "run")
    (tmp_path / "run" / "args.json").write_text(json.dumps({"holdout_classes": held}))
    code = main(
        [str(checkpoint), "--corrections", str(_folders(stripes_dir, tmp_path / "c", KEPT, 2)),
         "-o", str(tmp_path / "fixed.pt"), "--dataset", "folder",
         "--data-dir", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "64", "--json"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(out)
    assert report["replay_images"] == 3 * len(KEPT)
    assert report["corrections"]["before"]["test"]["images"] == 3 * len(KEPT)
    assert nbdt.load(tmp_path / "fixed.pt").hierarchy.classes == tuple(KEPT)


def test_fix_refuses_a_model_over_none_of_the_datasets_classes(
    capsys, tiny_nbdt, stripes_dir, tmp_path
):
    checkpoint = _model(tiny_nbdt, ["cat", "dog", "horse"], tmp_path / "run")
    corrections = tmp_path / "c" / "cat"
    corrections.mkdir(parents=True)
    data.to_pil(data.load_dataset("fashion-mnist", "test", stripes_dir)[0][0]).save(
        corrections / "0.png"
    )
    code = main(
        [str(checkpoint), "--corrections", str(tmp_path / "c"), "-o", str(tmp_path / "fixed.pt"),
         "--data-dir", str(stripes_dir), "--epochs", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nbdt-fix: error: "), err
    assert str(checkpoint) in lines[0]
    assert not (tmp_path / "fixed.pt").exists()
