"""Maps with no localised evidence are empty, not noise scaled into a hot spot; a network whose
convolutions replicate the border has none on a uniform image, one that pads with zeros lights
the border (the cause of Fashion-MNIST's corner heatmaps)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nbdt.evidence.saliency import LOCALISED_SHARE, decision_saliency, localised
from nbdt.hierarchy import Hierarchy
from nbdt.networks import set_padding

pytest.importorskip("pytorch_grad_cam")


def test_localised_tells_a_spot_from_flat_negative_and_noise_maps():
    spot = np.zeros((6, 6))
    spot[2, 3] = 1.0
    flat = np.full((6, 6), 3.0)
    negative = -np.arange(36.0).reshape(6, 6)
    noise = flat + np.random.default_rng(0).uniform(0, LOCALISED_SHARE * 3 * 0.5, (6, 6))
    barely = -np.ones((6, 6))  # evidence against the child, and a positive spot of 1/10 of it
    barely[0, 0] = 0.1
    faint = barely.copy()
    faint[0, 0] = LOCALISED_SHARE / 2
    maps = np.stack([spot, flat, negative, noise, np.zeros((6, 6)), barely, faint])
    assert localised(maps).tolist() == [True, False, False, False, False, True, False]


def _peak_off_centre(heat: np.ndarray) -> bool:
    """The peak lies in the outer quarter of a side: nearer the padding than the centre."""
    y, x = np.unravel_index(np.argmax(heat), heat.shape)
    return min(y, x, heat.shape[0] - 1 - y, heat.shape[1] - 1 - x) < heat.shape[0] // 4


def test_a_uniform_image_lights_the_border_with_zero_padding_and_nothing_with_replicate(tiny_nbdt):
    model = tiny_nbdt(Hierarchy.random([f"c{i}" for i in range(6)], seed=0), size=(32, 32))
    uniform = torch.full((2, 3, 32, 32), -2.0)  # a black Fashion-MNIST background, normalised
    zero_padded = decision_saliency(model, uniform)
    shown = [heat for maps in zero_padded for heat in maps if heat.max() > 0]
    assert shown and all(_peak_off_centre(heat) for heat in shown)  # what the padding adds
    set_padding(model.model, "replicate")
    replicated = decision_saliency(model, uniform)
    assert [len(maps) for maps in replicated] == [len(e.path) for e in model.explain(uniform)]
    assert all(heat.shape == (32, 32) and not heat.any() for maps in replicated for heat in maps)


@pytest.mark.browser
def test_the_page_says_no_localised_evidence_instead_of_drawing_an_empty_map(
    tmp_path, open_page, make_tree, explanation_dict
):
    from PIL import Image

    from nbdt.explanation import saliency_png
    from nbdt.visualize import explanation_html

    h = make_tree(8, seed=1)
    record = explanation_dict(h, 0, 0.9)
    spot = np.zeros((28, 28), np.float32)
    spot[10:14, 12:16] = 1.0
    maps = [np.zeros((28, 28), np.float32), spot] + [spot] * (len(record["path"]) - 2)
    for step, heat in zip(record["path"], maps, strict=True):
        step["saliency"] = saliency_png(heat)
    image = Image.new("L", (28, 28), 0)
    page = open_page(explanation_html([record], [image], tmp_path / "e.html"))
    figures = page.page.locator(".evidence .heat")
    assert figures.count() == len(record["path"])
    first, second = figures.nth(0), figures.nth(1)
    assert first.locator(".none-note").text_content() == "no localised evidence"
    assert first.locator("img.overlay").count() == 0 and first.is_visible()
    assert second.locator("img.overlay").count() == 1 and second.locator(".none-note").count() == 0
    page.check_clean()
