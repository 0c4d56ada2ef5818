"""The evaluation report page: self-contained, plots as inline SVG, labels as text; in chromium."""

import base64
import re
import sys

import pytest
import torch

from nbdt.evaluation.evaluate import EvalResult
from nbdt.evaluation.metrics import TreeMetrics
from nbdt.evaluation.report import report_html
from nbdt.hierarchy import Hierarchy, Node

from helpers import reference_loops as ref
from helpers.pages import EVIL, assert_not_blank

HISTORY = [
    {"epoch": 1, "top1": 50.0, "nbdt_soft_top1": 48.0, "train_loss": 1.2, "test_loss": 1.3},
    {"epoch": 2, "top1": 60.0, "nbdt_soft_top1": 58.0, "nbdt_hard_top1": 55.0, "test_loss": 1.0},
]


def evil_tree() -> Hierarchy:
    labels = [EVIL, "$x^2$ dollars", "c2", "c3"]
    nodes = [Node(f"c{i}", labels[i]) for i in range(4)]
    nodes += [
        Node("A", "</script><b>A</b>", None, ("c0", "c1")),
        Node("B", "B", None, ("c2", "c3")),
        Node("r", "root", None, ("A", "B")),
    ]
    return Hierarchy(nodes, [f"c{i}" for i in range(4)])


@pytest.fixture(scope="module")
def result():
    h = evil_tree()
    flat = Hierarchy(
        [Node(f"c{i}", f"c{i}") for i in range(4)]
        + [Node("all", "all", None, tuple(f"c{i}" for i in range(4)))],
        [f"c{i}" for i in range(4)],
    )
    metrics = TreeMetrics(h, flat)
    gen = torch.Generator().manual_seed(0)
    metrics.update(torch.randn(40, 4, generator=gen) * 2, torch.randint(0, 4, (40,), generator=gen))
    return EvalResult(metrics.compute(), h)


def test_page_is_self_contained_with_svg_plots(result, tmp_path):
    page = report_html(result, tmp_path / "report.html", history=HISTORY).read_text()
    assert "default-src &#x27;none&#x27;; img-src data:" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)
    assert EVIL not in page and "</script><b>" not in page  # labels travel escaped in JSON
    plots = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", page)
    assert len(plots) == 5  # accuracy, per class, reliability, severity, training curves
    svg = base64.b64decode(plots[1]).decode()
    assert svg.lstrip().startswith("<?xml") and "&lt;img src=x" in svg  # class names as text
    assert "$x^2$ dollars" in svg  # no mathtext
    without = report_html(result, tmp_path / "plain.html").read_text()
    assert len(re.findall(r"data:image/svg\+xml", without)) == 4


def test_missing_matplotlib_is_one_line_naming_the_extra(result, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"^matplotlib is missing: pip install 'nbdt\[report\]'$"):
        report_html(result, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_bad_input_is_refused(result, tmp_path):
    with pytest.raises(ValueError, match="hierarchy"):
        report_html(result.metrics, tmp_path / "r.html")
    with pytest.raises(ValueError, match="classes"):
        report_html(result.metrics, tmp_path / "r.html", hierarchy=ref.random_tree(4, seed=1))
    with pytest.raises(ValueError, match="EvalResult"):
        report_html({"images": 3}, tmp_path / "r.html", hierarchy=evil_tree())


@pytest.mark.browser
def test_report_in_chromium_colours_nodes_and_shows_confusion_on_click(result, tmp_path, open_page):
    page = open_page(report_html(result, tmp_path / "report.html", history=HISTORY))
    h = result.hierarchy
    assert page.js("document.querySelectorAll('#summary tr').length") == 4  # header + 3 variants
    assert page.js("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    assert page.js("document.images.length") == 5
    ids = page.js("[...document.querySelectorAll('button.row')].map(b => b.dataset.id)")
    assert sorted(ids) == sorted(n.id for n in h.nodes)
    shown = page.js("document.querySelector('button.row[data-id=\"c0\"] .label').textContent")
    assert shown == EVIL
    node_a = next(row for row in result.metrics["nodes"] if row["id"] == "A")
    hue = page.js("document.querySelector('button.row[data-id=\"A\"] .swatch').style.background")
    assert hue == page.js(
        f"(() => {{ const e = document.createElement('i');"
        f" e.style.background = 'hsl({round(1.2 * node_a['accuracy'])}, 70%, 45%)';"
        " return e.style.background; })()"
    )
    page.page.click("button.row[data-id='A'] .label")
    cells = page.js(
        "[...document.querySelectorAll('#detail table tr')].slice(1)"
        ".map(tr => [...tr.children].slice(1).map(td => Number(td.textContent)))"
    )
    assert cells == node_a["confusion"]
    assert page.js("document.querySelector('#detail h3').textContent") == "</script><b>A</b>"
    assert_not_blank(page.page.screenshot(full_page=True))
    page.check_clean()


def test_report_tree_shows_the_display_names_of_the_other_pages(result, tmp_path, open_page):
    """The report's tree names a node as the hierarchy page and the terminal do (its display
    name), not by its lowest common hypernym label."""
    from nbdt.labels import display_names

    h = result.hierarchy
    names = display_names(h)
    assert names["B"] == "c2 or c3" != h["B"].label  # a node whose two names differ
    page = open_page(report_html(result, tmp_path / "r.html"))
    shown = page.js(
        "Object.fromEntries([...document.querySelectorAll('button.row')]"
        ".map(b => [b.dataset.id, b.querySelector('.label').textContent]))"
    )
    assert shown == names
    page.page.click("button.row[data-id='r'] .label")
    header = page.js(
        "[...document.querySelectorAll('#detail table tr th')].map(t => t.textContent)"
    )
    assert header[1:] == [names["A"], "c2 or c3"]
    page.check_clean()
