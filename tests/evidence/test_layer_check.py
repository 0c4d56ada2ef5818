"""An explicitly named ``layer`` for the saliency maps must output a spatial map that alone
feeds the rest: a head, a pooling or a branch inside a residual block is one clear error."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from nbdt.cli.explain import main as explain_main
from nbdt.hierarchy import Hierarchy
from nbdt.wordnet import UnresolvedClassWarning

DEFAULT = "layer1"  # test_resnet's last map of at least 7x7 at 28 px (layer4's is 1x1)
NOT_MAPS = [("fc", (1, 4)), ("global_pool", (1, 96)), ("layer4.0.bn2", (1, 96, 1, 1))]


@pytest.fixture(scope="module")
def model(tiny_nbdt):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnresolvedClassWarning)
        return tiny_nbdt(Hierarchy.random([f"c{i}" for i in range(4)], seed=0))


def _message(name: str, shape: tuple) -> str:
    return (
        f"layer='{name}': its output is {shape}, not a spatial map: pass a block or stage output"
        f" such as {DEFAULT} (the default here: {DEFAULT})"
    )


@pytest.mark.parametrize(("name", "shape"), NOT_MAPS)
def test_a_layer_without_a_spatial_map_is_refused(model, name, shape):
    x = torch.rand(2, 3, 28, 28)
    with pytest.raises(ValueError) as caught:
        model.explain(x, evidence=True, layer=name)
    assert str(caught.value) == _message(name, shape)


def test_a_residual_branch_on_one_image_is_the_residual_message(model):
    x = torch.rand(1, 3, 28, 28)  # one image: no gradient reaches bn2 (was a TypeError)
    with pytest.raises(ValueError, match=r"^layer: the network combines this layer's output"):
        model.explain(x, evidence=True, layer="layer1.0.bn2")
    explained = model.explain(x, evidence=True, layer=DEFAULT)
    assert explained[0].path[0].saliency is not None


@pytest.mark.parametrize(
    ("name", "message"),
    [(n, _message(n, s)) for n, s in NOT_MAPS]
    + [("layer1.0.bn2", "layer: the network combines this layer's output with other tensors")],
)
def test_the_cli_says_so_in_one_line(model, tmp_path, capsys, name, message):
    checkpoint = model.save(tmp_path / "tiny.pt")
    image = tmp_path / "x.png"
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(image)
    html = tmp_path / "out.html"
    argv = [image, "--checkpoint", checkpoint, "--evidence", "--layer", name, "--html", html]
    code = explain_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and not html.exists()
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
