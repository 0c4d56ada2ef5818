"""nbdt-compress --prune reports the share of parameters it achieved, not the ratio asked, and
refuses a ratio that removes nothing."""

import json
import warnings

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch_pruning")

import nbdt  # noqa: E402
from nbdt.classes import dataset_classes  # noqa: E402
from nbdt.cli.compress import main as compress_main  # noqa: E402
from nbdt.hierarchy import Hierarchy  # noqa: E402
from nbdt.wordnet import UnresolvedClassWarning  # noqa: E402


@pytest.fixture
def checkpoint(tiny_nbdt, tmp_path):
    """An untrained test_resnet over Fashion-MNIST's classes, saved."""
    names = list(dataset_classes("fashion-mnist").names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnresolvedClassWarning)
        model = tiny_nbdt(Hierarchy.random(names, seed=0))
    return model.save(tmp_path / "tiny.pt")


def _compress(checkpoint, output, stripes_dir, *extra):
    argv = [checkpoint, "-o", output, "--data-dir", stripes_dir, "--test", "16"]
    return compress_main([str(a) for a in [*argv, "--calibration", "8", *extra]])


def test_the_table_and_compress_json_give_the_achieved_share(
    checkpoint, stripes_dir, tmp_path, capsys
):
    output = tmp_path / "out"
    assert _compress(checkpoint, output, stripes_dir, "--prune", "0.5", "--round-to", "0") == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in nbdt.load(checkpoint).model.parameters())
    kept = sum(p.numel() for p in nbdt.load(output / "pruned.pt").model.parameters())
    share = 1 - kept / params
    assert 0 < share < 1
    note = f"pruned: {share:.1%} of the network's parameters removed (--prune 0.5 asked)"
    assert note in out
    report = json.loads((output / "compress.json").read_text())
    assert any(n.startswith(note) for n in report["notes"])
    assert report["variants"]["pruned"]["params"] < report["variants"]["uncompressed"]["params"]


def test_a_ratio_that_removes_nothing_is_refused(checkpoint, stripes_dir, tmp_path, capsys):
    output = tmp_path / "none"
    # test_resnet's layers are too narrow for 99% of them to round to a multiple of 8 but 0
    assert _compress(checkpoint, output, stripes_dir, "--prune", "0.99", "--round-to", "8") == 2
    err = capsys.readouterr().err
    *progress, last = err.splitlines()  # the stages reached, then the one error line
    assert all("removes no channel" not in line for line in progress)
    assert "ratio 0.99: removes no channel of test_resnet" in last and "Traceback" not in err
    assert not (output / "pruned.pt").exists() and not (output / "compress.json").exists()
