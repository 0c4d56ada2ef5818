"""How convolutions pad: set on a network, kept by the model file, chosen by nbdt-train
(zeros for the networks it creates unless asked, a checkpoint's own otherwise), exported to ONNX."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nbdt
from nbdt.distributed import start_process
from nbdt.hierarchy import Hierarchy
from nbdt.networks import padding_of, set_padding
from nbdt.training.config import TrainConfig
from nbdt.training.plan import make_plan

CLASSES = [f"c{i}" for i in range(5)]


@pytest.fixture
def model(tiny_nbdt):
    return tiny_nbdt(Hierarchy.random(CLASSES, seed=0), size=(32, 32))


def test_set_padding_changes_every_padded_convolution_and_the_output(model):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.logits(x)
        assert padding_of(model.model) == "zeros"
        set_padding(model.model, "replicate")
        after = model.logits(x)
    padded = [m for m in model.model.modules() if isinstance(m, nn.Conv2d) and any(m.padding)]
    assert padded and all(m.padding_mode == "replicate" for m in padded)
    assert padding_of(model.model) == "replicate" and not torch.allclose(before, after)
    with pytest.raises(ValueError, match="padding 'reflect': must be one of zeros, replicate"):
        set_padding(model.model, "reflect")


def test_the_model_file_keeps_the_padding_and_old_files_read_as_zeros(model, tmp_path):
    set_padding(model.model, "replicate")
    x = torch.randn(2, 3, 32, 32)
    path = model.save(tmp_path / "m.pt")
    again = nbdt.load(path)
    assert padding_of(again.model) == "replicate"
    with torch.no_grad():
        torch.testing.assert_close(again.logits(x), model.logits(x))
    checkpoint = model.checkpoint()
    assert checkpoint["padding"] == "replicate"
    del checkpoint["padding"]  # a file written before the key existed
    assert padding_of(nbdt.NBDT.from_checkpoint(checkpoint).model) == "zeros"
    checkpoint["padding"] = "circular"
    with pytest.raises(ValueError, match=r"^bad\.pt: cannot rebuild the model \(padding 'circ"):
        nbdt.NBDT.from_checkpoint(checkpoint, "bad.pt")


def test_nbdt_train_pads_as_asked_and_keeps_a_checkpoints(model, stripes_dir, tmp_path):
    def plan(**options):
        config = TrainConfig(
            output=str(tmp_path / "run"), arch="test_resnet", data_dir=str(stripes_dir),
            batch_size=32, quiet=True, report=False, **options,
        )  # fmt: skip
        config.validate()
        made = make_plan(config, start_process("cpu").device)
        return made.config.padding, padding_of(made.network()[0])

    assert plan() == ("zeros", "zeros")
    assert plan(padding="replicate") == ("replicate", "replicate")
    checkpoint = str(model.save(tmp_path / "zeros.pt"))
    assert plan(checkpoint=checkpoint) == ("zeros", "zeros")
    assert plan(checkpoint=checkpoint, padding="replicate") == ("replicate", "replicate")
    with pytest.raises(ValueError, match="--padding with --head-only: the backbone is frozen"):
        plan(checkpoint=checkpoint, head_only=True, padding="replicate")
    with pytest.raises(ValueError, match="--padding"):
        plan(padding="edge")


def test_onnx_export_pads_as_the_network_does(model, tmp_path):
    pytest.importorskip("onnxruntime")
    from nbdt.deploy.runtime import OnnxNBDT

    set_padding(model.model, "replicate")
    x = torch.randn(3, 3, 32, 32)
    runtime = OnnxNBDT(model.export_onnx(tmp_path / "m.onnx"))
    with torch.no_grad():
        soft = model.rules.soft(model.logits(x)).numpy()
    assert abs(runtime.run(x.numpy())["class_log_probs"] - soft).max() < 1e-4
