"""Evidence wired through the package: explain(evidence=True, examples=...), the explanation
format, the CLIs (nbdt-explain --evidence, nbdt-examples), the trainer's node-examples stage and
both HTML pages in a real browser."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nbdt.classes import DatasetClasses
from nbdt.cli.examples import main as examples_main
from nbdt.cli.explain import main as explain_main
from nbdt.data import BatchTransform, load_dataset
from nbdt.evidence.examples import NodeExamples, node_examples
from nbdt.explanation import Explanation
from nbdt.hierarchy import Hierarchy
from nbdt.model import NBDT
from nbdt.progress import Progress
from nbdt.training import outputs
from nbdt.training.config import TrainConfig
from nbdt.training.outputs import RunResult, write_outputs
from nbdt.training.run_folder import RunFolder
from nbdt.visualize import explanation_html, hierarchy_html

from helpers.patch_models import PATCH_CONFIG, FlatNet, patch_images, patch_model, patch_tree

REGIONS = [(slice(2, 6), slice(14, 22)), (slice(9, 15), slice(1, 5))]


def _patches() -> torch.Tensor:
    """Image 0 decides through a wide patch top right, image 1 through a tall one bottom left."""
    batch = torch.zeros(2, 1, 16, 24)
    batch[0, :, REGIONS[0][0], REGIONS[0][1]] = 1.0
    batch[1, :, REGIONS[1][0], REGIONS[1][1]] = -1.0
    return batch


def _deep_model() -> NBDT:
    """The patch model with c3 the strongest class of channel 1: its path passes "bb", whose
    label "right" repeats its parent's."""
    model = patch_model()
    model.model.fc.weight.data[3] = torch.tensor([0.0, 6.0])
    return model


# --------------------------------------------------------------------------- the API
def test_explain_with_evidence_puts_each_heatmap_on_the_region_that_decides():
    model = patch_model()
    plain = model.explain(_patches())
    explained = model.explain(_patches(), evidence=True)
    for exp, before, (rows, cols) in zip(explained, plain, REGIONS, strict=True):
        assert [s.child_id for s in exp.path] == [s.child_id for s in before.path]
        for step in exp.path:
            heat = step.saliency
            assert heat.shape == (16, 24) and heat.dtype == np.float32
            assert 0 <= heat.min() and heat.max() <= 1
            grown = np.zeros_like(heat, dtype=bool)
            grown[rows.start - 1 : rows.stop + 1, max(cols.start - 1, 0) : cols.stop + 1] = True
            assert heat[grown].sum() / heat.sum() > 0.97
            assert step.child_examples == () and step.nearest == ()
    assert all(s.saliency is None for s in plain[0].path)


def test_evidence_round_trips_through_json_and_old_records_still_load(explanation_dict):
    exp = patch_model().explain(_patches()[0], evidence=True)
    record = json.loads(json.dumps(exp.to_dict()))
    assert record["path"][0]["saliency"].startswith("data:image/png;base64,")
    back = Explanation.from_dict(record)
    for a, b in zip(back.path, exp.path, strict=True):
        assert np.abs(a.saliency - b.saliency).max() <= 0.5 / 255 + 1e-6
    assert back == exp  # saliency takes no part in equality; every other field survives
    new = {"display", "child_display", "runner_up_display", "saliency", "child_examples"}
    new |= {"runner_up_examples", "nearest"}
    old = explanation_dict(patch_tree(), 0)
    old["path"] = [{k: v for k, v in step.items() if k not in new} for step in old["path"]]
    loaded = Explanation.from_dict(old)
    assert loaded.path[0].saliency is None and loaded.path[0].child_examples == ()
    assert loaded.path[0].child_display == ""
    with pytest.raises(ValueError, match="saliency: expected a data:image/png"):
        Explanation.from_dict({**record, "path": [{**record["path"][0], "saliency": "x"}]})


def test_repeated_labels_read_with_their_classes_in_text_and_json():
    exp = _deep_model().explain(_patches()[1] * 30)
    assert [s.child_id for s in exp.path] == ["b", "bb", "c3"]
    assert exp.path[1].child_label == "right"
    assert exp.path[1].child_display == "right: c3 or c4"
    assert exp.path[2].display == "right: c3 or c4" and exp.path[0].child_display == "right"
    assert exp.to_dict()["path"][1]["child_display"] == "right: c3 or c4"
    # Every step is shown, as on the page and in the JSON: nothing merged.
    assert str(exp).startswith("Prediction: c3 // Decisions: right (")
    assert str(exp).count("->") == 2


def test_examples_attach_to_every_step():
    model = _deep_model()
    found = node_examples(model, patch_images(120), k=3, sample=64)
    x = _patches()
    explained = model.explain(x, examples=found)
    with torch.no_grad():
        features = model.model.forward_head(model.model.forward_features(x), pre_logits=True)
    h = model.hierarchy
    for b, exp in enumerate(explained):
        for step in exp.path:
            assert step.saliency is None
            assert list(step.child_examples) == found.examples(step.node_id, step.child_id)
            assert list(step.runner_up_examples) == found.examples(step.node_id, step.runner_up_id)
            assert step.child_examples
            for example in step.child_examples:
                assert example.class_index in h.leaf_indices(step.child_id)
                assert example.thumbnail.startswith(b"\x89PNG")
            for example in step.runner_up_examples:
                assert example.class_index in h.leaf_indices(step.runner_up_id)
            near = found.nearest(features[b].numpy(), step.node_id, step.child_id, found.k)
            assert list(step.nearest) == near
            scores = [e.score for e in step.nearest]
            assert scores == sorted(scores, reverse=True)
    both = model.explain(x, evidence=True, examples=found)
    assert both[0].path[0].child_examples == explained[0].path[0].child_examples
    assert both[0].path[0].saliency is not None
    record = json.loads(json.dumps(both[0].to_dict()))
    assert record["path"][0]["child_examples"][0]["thumbnail"].startswith("data:image/png;base64")
    assert Explanation.from_dict(record) == both[0]


def test_bad_evidence_options_are_one_line_errors():
    model = patch_model()
    x = _patches()
    with pytest.raises(ValueError, match=r"^layer='nope': the model has no module of that name"):
        model.explain(x, evidence=True, layer="nope")
    with pytest.raises(ValueError, match="no spatial feature map .* pass layer=NAME"):
        patch_model(FlatNet()).explain(x, evidence=True)
    with pytest.raises(ValueError, match="method must be one of"):
        model.explain(x, evidence=True, method="nope")
    other = NBDT(model.model, patch_tree(("d0", "d1", "d2", "d3", "d4")), data_config=PATCH_CONFIG)
    found = node_examples(other, patch_images(30), k=2, sample=8)
    with pytest.raises(ValueError, match="examples: examples of other classes"):
        model.explain(x, examples=found)
    with pytest.raises(TypeError, match="examples must be a NodeExamples"):
        model.explain(x, examples={"a": 1})


# ---------------------------------------------------------------------------- the CLIs
def _cli(capsys, main, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_examples_and_explain_evidence_html_end_to_end(
    stripes_checkpoint, stripes_dir, tmp_path, capsys
):
    out = tmp_path / "examples.npz"
    code, _, err = _cli(
        capsys, examples_main, stripes_checkpoint, "--dataset", "fashion-mnist", "--data-dir",
        stripes_dir, "-o", out, "-k", "4", "--sample", "100",
    )  # fmt: skip
    assert code == 0 and err.strip().splitlines()[-1] == f"nbdt-examples: wrote {out}"
    model = NBDT.from_checkpoint(torch.load(stripes_checkpoint, weights_only=True))
    found = NodeExamples.load(out, model.hierarchy)
    assert found.k == 4 and len(found.sample_index) == 100
    train_set = load_dataset("fashion-mnist", "train", stripes_dir)
    for node in model.hierarchy.inner_nodes:
        for child in node.children:
            for example in found.examples(node.id, child):
                assert example.class_index == int(train_set.targets[example.index])
                assert example.class_index in model.hierarchy.leaf_indices(child)

    test = load_dataset("fashion-mnist", "test", stripes_dir)
    images = []
    for i in range(2):
        images.append(tmp_path / f"test-{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(images[-1])
    page = tmp_path / "page.html"
    code, stdout, err = _cli(
        capsys, explain_main, *images, "--checkpoint", stripes_checkpoint, "--evidence",
        "--examples", out, "--html", page, "--json",
    )  # fmt: skip
    assert code == 0, err
    records = json.loads(stdout)
    step = records[0]["path"][0]
    assert step["saliency"].startswith("data:image/png;base64,")
    assert len(step["child_examples"]) == 4 and step["nearest"]
    assert Explanation.from_dict(records[0]).path[0].saliency.shape == (28, 28)
    html = page.read_text()
    assert html.count(step["child_examples"][0]["thumbnail"]) >= 1
    assert '"overlays":["data:image/png;base64,' in html

    # Bad input: one line, exit 2, nothing written.
    other = tmp_path / "other.npz"
    other_model = NBDT(
        model.model,
        Hierarchy.random(model.hierarchy.classes, seed=1),
        data_config=model.data_config,
    )
    node_examples(other_model, train_set.head(40), k=2, sample=8).save(other)
    damaged = tmp_path / "damaged.npz"
    damaged.write_bytes(out.read_bytes()[:300])
    cases = [
        (["--examples", other], "other.npz: examples of another hierarchy"),
        (["--examples", damaged], "damaged.npz: not a readable node-examples file"),
        (["--examples", tmp_path / "none.npz"], "none.npz: no such node-examples file"),
        (["--evidence", "--layer", "nope"], "layer='nope': the model has no module"),
    ]
    for extra, message in cases:
        fresh = tmp_path / "fresh.html"
        code, stdout, err = _cli(
            capsys,
            explain_main,
            images[0],
            "--checkpoint",
            stripes_checkpoint,
            "--html",
            fresh,
            *extra,
        )
        assert code == 2 and stdout == "" and not fresh.exists()
        assert err.count("\n") == 1 and message in err and "Traceback" not in err
    code, _, err = _cli(
        capsys, examples_main, stripes_checkpoint, "--dataset", "fashion-mnist", "--data-dir",
        tmp_path, "-o", tmp_path / "x.npz",
    )  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "x.npz").exists()


# --------------------------------------------------------------------------- the trainer
def _run_result(folder, checkpoint, stripes_dir, **settings) -> RunResult:
    model = NBDT.from_checkpoint(torch.load(checkpoint, weights_only=True))
    config = TrainConfig(
        dataset="fashion-mnist", output=str(folder), explain=2, quiet=True, report=False, **settings
    )
    test = load_dataset("fashion-mnist", "test", stripes_dir)
    return RunResult(
        model,
        config,
        None,
        test,
        BatchTransform(model.data_config),
        Progress(False, True),
        train_set=load_dataset("fashion-mnist", "train", stripes_dir).head(96),
    )


def test_trainer_writes_node_examples_and_shows_them_on_both_pages(
    stripes_checkpoint, stripes_dir, tmp_path
):
    assert outputs.OUTPUT_STAGES[0] is outputs.node_examples
    assert "node_examples.npz" in RunFolder.FILES
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir()
    result = _run_result(folder.path, stripes_checkpoint, stripes_dir)
    result.classes = DatasetClasses("fashion-mnist", result.test_set.classes, ())
    write_outputs(folder, result)
    found = NodeExamples.load(folder.path / "node_examples.npz", result.model.hierarchy)
    assert found.k == 8 and len(found.sample_index) == 96
    records = json.loads((folder.path / "explanations.json").read_text())
    assert records[0]["path"][0]["saliency"].startswith("data:image/png")
    assert records[0]["path"][0]["child_examples"]
    hierarchy_page = (folder.path / "hierarchy.html").read_text()
    assert '"examples":{"thumbs":["data:image/png;base64,' in hierarchy_page

    plain = RunFolder(tmp_path / "plain")
    plain.path.mkdir()
    result = _run_result(plain.path, stripes_checkpoint, stripes_dir, examples=False)
    result.classes = DatasetClasses("fashion-mnist", result.test_set.classes, ())
    write_outputs(plain, result)
    assert not (plain.path / "node_examples.npz").exists()
    records = json.loads((plain.path / "explanations.json").read_text())
    assert records[0]["path"][0]["saliency"] is None
    assert '"examples":{' not in (plain.path / "hierarchy.html").read_text()


# --------------------------------------------------------------------------- the pages
def _pages(tmp_path):
    model = _deep_model()
    found = node_examples(model, patch_images(120), k=3, sample=64)
    x = _patches() * 30
    explained = model.explain(x, evidence=True, examples=found)
    pictures = [Image.fromarray((x[i, 0].abs() * 8).byte().numpy()) for i in range(2)]
    page = explanation_html(explained, pictures, tmp_path / "exp.html", hierarchy=model.hierarchy)
    tree = hierarchy_html(model.hierarchy, tmp_path / "tree.html", examples=found)
    return explained, page, tree, found


@pytest.mark.browser
def test_pages_show_heatmaps_and_examples_in_a_browser(tmp_path, open_page):
    explained, page_file, tree_file, found = _pages(tmp_path)
    page = open_page(page_file)
    steps = sum(len(e.path) for e in explained)
    visible = (
        "els => els.filter(e => e.complete && e.naturalWidth > 0"
        " && e.getBoundingClientRect().width > 0).length"
    )
    assert page.page.eval_on_selector_all(".heat img.overlay", visible) == steps
    thumbs = page.page.eval_on_selector_all(".evidence img.thumb", visible)
    assert thumbs == sum(
        len(s.child_examples) + len(s.runner_up_examples) + len(s.nearest)
        for e in explained
        for s in e.path
    )
    names = page.js("[...document.querySelectorAll('.branch.taken .lbl')].map(e => e.textContent)")
    assert "right: c3 or c4" in names
    opacity = "() => getComputedStyle(document.querySelector('.heat img.overlay')).opacity"
    assert page.js(opacity) == "1"
    page.page.click("#heat-toggle")
    page.page.wait_for_timeout(300)
    assert page.js(opacity) == "0"
    page.page.click("#heat-toggle")
    page.page.click(".heat")  # one figure alone
    page.page.wait_for_timeout(300)
    assert page.js(opacity) == "0"
    page.check_clean()

    tree = open_page(tree_file)
    assert tree.js("document.getElementById('examples').hidden") is True
    tree.page.click("g.node[data-id='b'] text")  # a node's name shows its examples
    assert tree.js("document.getElementById('examples').hidden") is False
    shown = tree.page.eval_on_selector_all("#examples img.thumb", visible)
    expected = sum(
        len(found.examples("b", child, kind))
        for child in ("c2", "bb")
        for kind in ("representative", "confused")
    )
    assert shown == expected > 0
    heads = tree.js("[...document.querySelectorAll('#examples h3')].map(e => e.textContent)")
    assert heads == ["→ c2", "→ right: c3 or c4"]
    tree.check_clean()


def test_default_method_meets_the_deletion_goal_and_gradcam_stays_available(capsys):
    from nbdt.evidence.saliency import CAM_METHODS, DEFAULT_METHOD

    assert DEFAULT_METHOD == "hirescam" and "gradcam" in CAM_METHODS
    with pytest.raises(SystemExit):
        explain_main(["--help"])
    assert "--method {gradcam," in capsys.readouterr().out


def test_a_cam_method_added_to_the_table_is_a_method_everywhere(
    monkeypatch, stripes_checkpoint, stripes_dir, tmp_path, capsys
):
    from pytorch_grad_cam.base_cam import BaseCAM

    from nbdt.evidence import saliency

    class PositiveGradCAM(BaseCAM):
        """Channels weighed by their mean positive gradient: a new method in one small class."""

        def get_cam_weights(self, input_tensor, target_layers, targets, activations, grads):
            return np.maximum(grads, 0).mean(axis=(2, 3))

    monkeypatch.setitem(saliency.CAM_METHODS, "positive-gradcam", PositiveGradCAM)
    model = patch_model()
    assert saliency.check_evidence_options(model, "positive-gradcam", None, None) == (
        "positive-gradcam"
    )
    explained = model.explain(_patches(), evidence=True, method="positive-gradcam")
    maps = saliency.decision_saliency(model, _patches(), method="positive-gradcam")
    for exp, image_maps, (rows, cols) in zip(explained, maps, REGIONS, strict=True):
        for step, heat in zip(exp.path, image_maps, strict=True):
            np.testing.assert_array_equal(step.saliency, heat)
            assert heat[rows, cols].sum() / heat.sum() > 0.9

    image = tmp_path / "test.png"
    test = load_dataset("fashion-mnist", "test", stripes_dir)
    Image.fromarray(test.images[0, 0].numpy()).save(image)
    code, stdout, err = _cli(
        capsys, explain_main, image, "--checkpoint", stripes_checkpoint, "--evidence",
        "--method", "positive-gradcam", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)[0]["path"][0]["saliency"].startswith("data:image/png;base64,")
    with pytest.raises(SystemExit):
        explain_main(["--help"])
    assert "positive-gradcam}" in capsys.readouterr().out
