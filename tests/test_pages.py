"""The three pages at 1400 px and 500 px in Debian's chromium: each test is a defect a new user
met (the examples panel, Fit, the legend, tooltips, true labels, thumbnails, captions, narrow
layouts, the report's table, tree marks and training curves), checked on the rendered DOM."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import torch

import nbdt
from nbdt import data

WIDTHS = [1400, 500]


# ------------------------------------------------------------------------------ the pages
@pytest.fixture(scope="module")
def model_and_data(stripes_dir):
    """An untrained tiny NBDT over the shipped Fashion-MNIST WordNet tree, its node examples
    and the stripes test images."""
    import timm

    from nbdt.evidence.examples import node_examples
    from nbdt.pretrained import shipped_hierarchy

    torch.manual_seed(0)
    network = timm.create_model("test_efficientnet_gn", num_classes=10).eval()
    model = nbdt.NBDT(
        network, shipped_hierarchy("fashion-mnist-wordnet"),
        data_config=data.data_config(network, (28, 28)),
    )  # fmt: skip
    train = data.load_dataset("fashion-mnist", "train", stripes_dir)
    examples = node_examples(model, train.head(160), k=8, sample=32, batch_size=80)
    return model, examples, data.load_dataset("fashion-mnist", "test", stripes_dir)


@pytest.fixture(scope="module")
def pages(model_and_data, tmp_path_factory):
    """{"hierarchy", "explanations", "report"}: the pages as a run writes them."""
    from nbdt.evaluation.evaluate import evaluate
    from nbdt.visualize import explanation_html, hierarchy_html

    model, examples, test = model_and_data
    folder = tmp_path_factory.mktemp("pages")
    images = test.images[:3]
    batch = data.BatchTransform(model.data_config)(images)
    explained = model.explain(batch, top_k=3, evidence=True, examples=examples)
    truths = [test.classes[int(t)] for t in test.targets[:3]]
    records = [e.to_dict() for e in explained]
    for step in records[0]["path"]:  # long names, as induced trees' displayed names are
        step["child_display"] = f"{step['child_label']}: T-shirt/top, Pullover, Coat, Shirt"
    history = [
        {"epoch": e, "phase": "warmup" if e == 1 else "tree", "train_loss": loss,
         "test_loss": loss, "test_ce": 1.0, "top1": 50.0 + e, "nbdt_soft_top1": 40.0 + e}
        for e, loss in ((1, 2.3), (2, 8.1), (3, 6.0))
    ]  # fmt: skip
    result = evaluate(model, test, batch_size=80)
    result.write(folder, history=history, title="a report")
    return {
        "hierarchy": hierarchy_html(model.hierarchy, folder / "hierarchy.html", examples=examples),
        "explanations": explanation_html(
            records,
            [data.to_pil(i) for i in images],
            folder / "explanations.html",
            hierarchy=model.hierarchy,
            true_labels=truths,
        ),
        "report": folder / "report.html",
    }


@pytest.fixture
def open_at(browser):
    """``open_at(path, width)``: a page at that window width (900 px high), once it is ready."""
    tabs = []

    def open_(path: Path, width: int):
        tab = browser.new_page(viewport={"width": width, "height": 900})
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.goto(Path(path).as_uri())
        tab.wait_for_selector("html[data-ready]", state="attached", timeout=10_000)
        tab.errors = errors
        tabs.append(tab)
        return tab

    yield open_
    for tab in tabs:
        assert tab.errors == []
        tab.close()


def rect(tab, selector: str) -> dict:
    return tab.evaluate(
        "s => { const r = document.querySelector(s).getBoundingClientRect();"
        " return {left: r.left, right: r.right, top: r.top, bottom: r.bottom}; }",
        selector,
    )


def inside(inner: dict, outer: dict, slack: float = 1.0) -> bool:
    return (
        inner["left"] >= outer["left"] - slack
        and inner["right"] <= outer["right"] + slack
        and inner["top"] >= outer["top"] - slack
        and inner["bottom"] <= outer["bottom"] + slack
    )


def overlap(a: dict, b: dict) -> bool:
    return (
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and a["top"] < b["bottom"]
        and b["top"] < a["bottom"]
    )


# ------------------------------------------------------------------------ hierarchy page
@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_clicking_a_name_shows_its_examples_and_keeps_the_node_open(pages, open_at, width):
    tab = open_at(pages["hierarchy"], width)
    tab.click("#fit")
    node = "g.node[data-index='0']"
    assert tab.get_attribute(node, "aria-expanded") == "true"
    tab.click(f"{node} text")
    assert tab.get_attribute("#examples", "data-node") == tab.get_attribute(node, "data-id")
    assert tab.get_attribute(node, "aria-expanded") == "true"  # still open
    tab.click(f"{node} circle")  # the dot still opens and closes
    assert tab.get_attribute(node, "aria-expanded") == "false"


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_the_examples_panel_covers_no_node_and_no_search_hit(pages, open_at, width):
    tab = open_at(pages["hierarchy"], width)
    tab.click("#fit")
    tab.click("g.node[data-index='0'] text")
    panel, tree = rect(tab, "#examples"), rect(tab, "#tree")
    assert not overlap(panel, tree)
    tab.fill("#search", "Ankle boot")
    tab.press("#search", "Enter")
    tab.wait_for_selector("g.node.current")
    hit = rect(tab, "g.node.current circle")
    assert inside(hit, tree) and not overlap(hit, panel)


def node_rects(tab) -> dict[str, dict]:
    """Every drawn node's box on screen (its dot, label and count), by node id."""
    return tab.evaluate(
        "Object.fromEntries([...document.querySelectorAll('g.node')].map(g => { const r ="
        " g.getBoundingClientRect(); return [g.dataset.id, {left: r.left, right: r.right,"
        " top: r.top, bottom: r.bottom}]; }))"
    )


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_fit_shows_the_whole_drawn_tree(pages, model_and_data, open_at, width):
    tab = open_at(pages["hierarchy"], width)
    tab.click("#expand")
    tab.click("#fit")
    tree = rect(tab, "#tree")
    nodes = node_rects(tab)
    assert len(nodes) == len(model_and_data[0].hierarchy.nodes)
    assert all(inside(node, tree) for node in nodes.values()), (nodes, tree)


SCALE = "document.getElementById('viewport').transform.baseVal.consolidate().matrix.a"


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_the_first_view_cuts_no_node_and_stays_readable(pages, model_and_data, open_at, width):
    """At 500 px the first view used to cut the tree at the right edge until "Fit"; now it
    opens only the levels that fit at a readable scale, and 1400 px still opens them all."""
    tab = open_at(pages["hierarchy"], width)
    tree = rect(tab, "#tree")
    nodes = node_rects(tab)
    hierarchy = model_and_data[0].hierarchy
    assert all(inside(node, tree) for node in nodes.values()), (nodes, tree)
    assert tab.evaluate(SCALE) >= 0.85  # labels at 11 px or more, as Fit keeps them
    assert set(hierarchy.root.children) <= set(nodes)
    if width == 1400:
        assert len(nodes) == len(hierarchy.nodes)
    # What is not drawn sits under a node marked collapsed: its dot opens it.
    closed = tab.evaluate(
        "[...document.querySelectorAll('g.node.collapsed')].map(g => g.dataset.id)"
    )
    assert all(hierarchy.parent(n).id in nodes for n in nodes if n != hierarchy.root.id)
    assert (len(nodes) < len(hierarchy.nodes)) == bool(closed)


@pytest.mark.browser
def test_opening_a_node_at_500px_shows_its_children_whole(pages, model_and_data, open_at):
    tab = open_at(pages["hierarchy"], 500)
    hierarchy = model_and_data[0].hierarchy
    closed = tab.evaluate(
        "[...document.querySelectorAll('g.node.collapsed')].map(g => g.dataset.id)"
    )
    assert closed
    tab.click(f"g.node[data-id='{closed[0]}'] circle")
    tree, nodes = rect(tab, "#tree"), node_rects(tab)
    for node_id in [closed[0], *hierarchy[closed[0]].children]:
        assert inside(nodes[node_id], tree), (node_id, nodes[node_id], tree)


@pytest.mark.browser
def test_leaves_and_collapsed_nodes_look_different_and_the_legend_says_which(pages, open_at):
    tab = open_at(pages["hierarchy"], 1400)
    fill = "s => getComputedStyle(document.querySelector(s)).fill"
    tab.click("g.node[data-index='1'] circle")  # collapse an inner node
    collapsed = tab.evaluate(fill, "g.node.collapsed circle")
    leaf = tab.evaluate(fill, "g.node.leaf circle")
    assert leaf != collapsed
    assert tab.evaluate(fill, ".legend .k-leaf") == leaf
    assert tab.evaluate(fill, ".legend .k-closed") == collapsed


@pytest.mark.browser
def test_no_stale_tooltip_after_a_click(pages, open_at):
    tab = open_at(pages["hierarchy"], 1400)
    tab.hover("g.node[data-index='1'] circle")
    assert tab.evaluate("document.getElementById('tip').hidden") is False
    tab.click("g.node[data-index='1'] circle")
    assert tab.evaluate("document.getElementById('tip').hidden") is True


# ---------------------------------------------------------------------- explanation page
@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_explanations_show_the_true_class(pages, model_and_data, open_at, width):
    tab = open_at(pages["explanations"], width)
    test = model_and_data[2]
    shown = tab.evaluate("[...document.querySelectorAll('.truth b')].map(e => e.textContent)")
    assert shown == [test.classes[int(t)] for t in test.targets[:3]]


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_eight_thumbnails_to_a_row_under_a_whole_caption(pages, open_at, width):
    tab = open_at(pages["explanations"], width)
    rows = tab.evaluate(
        "[...document.querySelectorAll('.thumbs')].map(t => new Set([...t.children]"
        ".map(c => Math.round(c.getBoundingClientRect().top))).size)"
    )
    counts = tab.evaluate(
        "[...document.querySelectorAll('.thumbs')].map(t => t.querySelectorAll('img').length)"
    )
    assert 8 in counts
    assert all(r == 1 for r, n in zip(rows, counts, strict=True) if n <= 8), rows
    cut = tab.evaluate(
        "[...document.querySelectorAll('.ex-title')].filter(e => e.scrollWidth > e.clientWidth"
        " + 1).map(e => e.textContent)"
    )
    assert cut == []


@pytest.mark.browser
def test_at_500px_the_image_and_top_k_come_before_the_path(pages, open_at):
    tab = open_at(pages["explanations"], 500)
    figure, top_k = rect(tab, ".card .figure"), rect(tab, ".card .topk")
    path = rect(tab, ".card .path")
    assert figure["bottom"] <= path["top"] and top_k["bottom"] <= path["top"]
    assert tab.evaluate("document.documentElement.scrollWidth") <= 500


def test_the_trainers_explanations_page_shows_the_true_labels(model_and_data, tmp_path):
    """nbdt-train's explanations stage hands the page the true labels its JSON records."""
    from nbdt.classes import DatasetClasses
    from nbdt.progress import Progress
    from nbdt.training.config import TrainConfig
    from nbdt.training.outputs import RunResult, explanations
    from nbdt.training.run_folder import RunFolder

    model, _, test = model_and_data
    config = TrainConfig(output=str(tmp_path), arch="test_efficientnet_gn", explain=3)
    classes = DatasetClasses("fashion-mnist", tuple(test.classes), tuple(test.wnids))
    transform = data.BatchTransform(model.data_config)
    result = RunResult(model, config, classes, test, transform, Progress(quiet=True))
    explanations(RunFolder(tmp_path, main=True), result)
    page = (tmp_path / "explanations.html").read_text()
    shown = json.loads(page.split('id="nbdt-data">')[1].split("</script>")[0])
    records = json.loads((tmp_path / "explanations.json").read_text())
    assert [item["true_label"] for item in shown["items"]] == [r["true_label"] for r in records]


# --------------------------------------------------------------------------------- report
@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_the_summary_table_is_whole(pages, open_at, width):
    """Clipped at 1400 px once; at 500 px its ten columns are three, one per variant."""
    tab = open_at(pages["report"], width)
    widths = tab.evaluate(
        "() => { const s = document.querySelector('#summary').parentElement;"
        " return [s.scrollWidth, s.clientWidth]; }"
    )
    assert widths[0] <= widths[1], widths
    cells = tab.evaluate(
        "[...document.querySelectorAll('#summary tr')].map(r => [...r.children]"
        ".map(c => c.textContent))"
    )
    variants = ["network", "NBDT soft", "NBDT hard"]
    table = cells if width == 1400 else [list(column) for column in zip(*cells, strict=True)]
    assert [r[0] for r in table[1:]] == variants
    assert table[0][0] == ("variant" if width == 1400 else "")
    network = json.loads((pages["report"].parent / "eval.json").read_text())["variants"]["network"]
    assert table[1][1:3] == [f"{network['top1']:.2f}", f"{network['top5']:.2f}"]


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_tree_marks_say_open_or_closed(pages, open_at, width):
    tab = open_at(pages["report"], width)
    marks = tab.evaluate(
        "[...document.querySelectorAll('#tree li')].filter(li => li.querySelector('ul'))"
        ".map(li => [li.classList.contains('closed'), li.querySelector('.twist').textContent])"
    )
    assert marks and all(mark == ("▸" if closed else "▾") for closed, mark in marks)
    assert any(closed for closed, _ in marks)
    closed = "#tree li.closed > button .twist"
    tab.click(closed)
    assert tab.evaluate(
        "[...document.querySelectorAll('#tree li.closed > button .twist')]"
        ".every(t => t.textContent === '▸')"
    )


@pytest.mark.browser
@pytest.mark.parametrize("width", WIDTHS)
def test_the_node_detail_covers_no_tree_row_and_shows_after_a_click(pages, open_at, width):
    """At 500 px the detail box lay over the tree, whose names wrapped in what room was left."""
    tab = open_at(pages["report"], width)
    tab.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    tab.click("#tree button.row[data-index='1'] .label")
    detail = rect(tab, "#detail")
    assert tab.evaluate("document.querySelector('#detail h3').textContent")
    assert 0 <= detail["top"] < 900  # in the window after the click
    rows = tab.evaluate(
        "[...document.querySelectorAll('#tree button.row')].map(b => b.getBoundingClientRect())"
        ".filter(r => r.height > 0).map(r => ({left: r.left, right: r.right, top: r.top,"
        " bottom: r.bottom}))"
    )
    assert rows and not any(overlap(r, detail) for r in rows)
    heights = [r["bottom"] - r["top"] for r in rows]
    assert max(heights) < 1.5 * min(heights), heights  # every row on one line


def _training_curves_svg(report: Path) -> str:
    page = report.read_text()
    shown = json.loads(page.split('id="nbdt-data">')[1].split("</script>")[0])
    (plot,) = [p for p in shown["plots"] if p["title"] == "Training curves"]
    return base64.b64decode(plot["src"].split(",", 1)[1]).decode("utf-8")


def test_training_curves_tick_whole_epochs_and_say_where_the_tree_loss_starts(pages):
    svg = _training_curves_svg(pages["report"])
    ticks = re.findall(r'<g id="xtick_\d+">.*?<text[^>]*>([^<]*)</text>', svg, flags=re.S)
    assert ticks and all(re.fullmatch(r"\d+", t.strip()) for t in ticks), ticks
    assert "tree loss added" in svg and "test cross-entropy" in svg
