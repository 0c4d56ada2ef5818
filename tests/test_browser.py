"""The HTML pages in a real browser (Debian's chromium through Playwright, never a download).

Each page loads from file:// with every request routed: anything but file: or data: fails the
test. Assertions are on the rendered DOM: nodes drawn, search, probabilities, escaped labels.
"""

import time

import pytest

from nbdt.labels import display_names
from nbdt.visualize import IMAGE_MAX_SIDE, explanation_html, hierarchy_html

from helpers.pages import EVIL, Page, assert_not_blank

pytestmark = pytest.mark.browser


def drawn_ids(page: Page, selector: str = "g.node") -> list[str]:
    return page.js("s => [...document.querySelectorAll(s)].map(e => e.dataset.id)", selector)


# ------------------------------------------------------------------------ hierarchy page
def test_small_tree_draws_every_node_and_shows_labels_as_text(tmp_path, open_page, make_tree):
    h = make_tree(10, labels=[EVIL] + [f"class {i}" for i in range(1, 10)], seed=2)
    page = open_page(hierarchy_html(h, tmp_path / "tree.html"))
    assert sorted(drawn_ids(page)) == sorted(n.id for n in h.nodes)
    shown = page.js("document.querySelector('g.node[data-id=\"c0\"] .label').textContent")
    assert shown == EVIL
    assert page.js("document.querySelectorAll('img').length") == 0
    # Clicking an inner node collapses it: everything below it leaves the drawing.
    inner = h.inner_nodes[1]
    below = [inner.id]
    for node_id in below:
        below.extend(h[node_id].children)
    page.page.click(f"g.node[data-id='{inner.id}'] circle")
    assert sorted(drawn_ids(page)) == sorted(n.id for n in h.nodes if n.id not in below[1:])
    page.page.click(f"g.node[data-id='{inner.id}'] circle")
    assert len(drawn_ids(page)) == len(h)
    page.check_clean()


def test_big_tree_opens_collapsed_search_highlights_the_path(tmp_path, open_page, make_tree):
    h = make_tree(1000, branching=4, seed=5)
    page = open_page(hierarchy_html(h, tmp_path / "big.html"))
    first = drawn_ids(page)
    assert 5 < len(first) < 200
    # What is drawn is the top of the tree: an open node shows all its children, a closed none.
    drawn = set(first)
    opened = set(drawn_ids(page, "g.node[aria-expanded='true']"))
    assert h.root.id in opened
    for node_id in drawn - {h.root.id}:
        assert h.parent(node_id).id in opened
    for node in h.inner_nodes:
        if node.id in drawn:
            shown = {c for c in node.children if c in drawn}
            assert shown == (set(node.children) if node.id in opened else set())

    target = 737
    page.page.fill("#search", "class 737")
    page.page.press("#search", "Enter")
    want = [n.id for n in h.path(target)]
    page.page.wait_for_function(
        "n => document.querySelectorAll('g.node.on-path').length === n", arg=len(want)
    )
    assert drawn_ids(page, "g.node.on-path") == want
    assert drawn_ids(page, "g.node.current") == [h.class_ids[target]]
    crumbs = page.js("[...document.querySelectorAll('#crumbs .crumb')].map(e => e.textContent)")
    names = display_names(h)  # the names every output shows
    assert crumbs == [names[n.id] for n in h.path(target)]
    assert page.js("document.getElementById('matches').textContent") == "1 of 1"
    # The highlighted edges are drawn: one per step down the path.
    assert page.js("document.querySelectorAll('#edges path.on-path').length") == len(want) - 1

    start = time.perf_counter()
    page.page.click("#expand")
    assert len(drawn_ids(page)) == len(h)
    assert time.perf_counter() - start < 3.0
    start = time.perf_counter()
    for step in range(10):
        page.page.mouse.wheel(0, -120 if step % 2 else 120)
    page.page.mouse.move(600, 400)
    page.page.mouse.down()
    page.page.mouse.move(400, 300, steps=5)
    page.page.mouse.up()
    page.js("0")
    assert time.perf_counter() - start < 3.0
    assert_not_blank(page.page.screenshot())
    page.check_clean()


def test_highlight_argument_opens_the_path_in_dark_mode(tmp_path, open_page, make_tree):
    h = make_tree(300, branching=3, seed=7)
    page = open_page(hierarchy_html(h, tmp_path / "t.html", highlight=123), color_scheme="dark")
    assert drawn_ids(page, "g.node.on-path") == [n.id for n in h.path(123)]
    background = page.js("getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(v) for v in background[background.index("(") + 1 : -1].split(","))
    assert max(red, green, blue) < 60, background
    assert_not_blank(page.page.screenshot())
    page.check_clean()


def test_moved_nodes_are_marked_shown_and_explained_in_the_legend(tmp_path, open_page, make_tree):
    from nbdt.edits import moved_nodes

    before = make_tree(300, branching=3, seed=4)
    deep = before.class_ids[max(range(300), key=lambda c: len(before.path(c)))]
    after = before.move(deep, before.root.id)
    moved = moved_nodes(before, after)
    assert deep in moved
    page = open_page(hierarchy_html(after, tmp_path / "moved.html", moved=moved))
    # Every moved node is drawn (its path opens), marked, and only those.
    assert sorted(drawn_ids(page, "g.node.moved")) == sorted(moved)
    tag = f"g.node[data-id='{deep}'] .moved-tag"
    assert page.js(f'document.querySelector("{tag}").textContent').strip() == "moved"
    assert page.js(f'getComputedStyle(document.querySelector("{tag}")).display') != "none"
    key = "getComputedStyle(document.getElementById('moved-key')).display"
    assert page.js(key) != "none"
    assert page.js("document.getElementById('moved-count').textContent") == str(len(moved))
    # The mark is a colour of its own: not the plain node's.
    stroke = "s => getComputedStyle(document.querySelector(s + ' circle')).stroke"
    plain = next(c for c in after.class_ids if c not in moved and c in drawn_ids(page))
    assert page.js(stroke, f"g.node[data-id='{deep}']") != page.js(
        stroke, f"g.node[data-id='{plain}']"
    )
    page.check_clean()


def test_pages_without_edits_show_no_moved_key(tmp_path, open_page, make_tree):
    page = open_page(hierarchy_html(make_tree(10, seed=1), tmp_path / "plain.html"))
    assert page.js("getComputedStyle(document.getElementById('moved-key')).display") == "none"
    assert drawn_ids(page, "g.node.moved") == []
    page.check_clean()


# ---------------------------------------------------------------------- explanation page
def test_explanation_page_shows_probabilities_path_and_images(
    tmp_path, open_page, make_tree, explanation_dict
):
    from PIL import Image

    h = make_tree(50, labels=[EVIL] + [f"class {i}" for i in range(1, 50)], seed=4)
    exps = [explanation_dict(h, 0, 0.93), explanation_dict(h, 31, 0.71)]
    photo = Image.effect_mandelbrot((400, 300), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    page = open_page(explanation_html(exps, [photo, None], tmp_path / "e.html", hierarchy=h))

    sections = page.page.locator("section.card")
    assert sections.count() == 2
    for n, exp in enumerate(exps):
        section = sections.nth(n)
        assert section.locator(".pred").text_content() == exp["label"]
        assert section.locator(".pred-prob .pct").text_content() == f"{exp['probability']:.1%}"
        top = section.locator(".topk li")
        assert top.count() == len(exp["top_k"])
        for t, entry in enumerate(exp["top_k"]):
            assert top.nth(t).locator(".lbl").text_content() == entry["label"]
            assert top.nth(t).locator(".num").text_content() == f"{entry['probability']:.1%}"
        steps = section.locator("li.step:not(.leaf)")
        assert steps.count() == len(exp["path"])
        for s, step in enumerate(exp["path"]):
            row = steps.nth(s)
            assert row.locator(".node-name").text_content() == step["label"]
            taken = row.locator(".branch.taken")
            assert taken.locator(".lbl").text_content() == step["child_label"]
            assert taken.locator(".num").text_content() == f"{step['probability']:.1%}"
            runner = row.locator(".branch.runner-up")
            assert runner.locator(".lbl").text_content() == step["runner_up_label"]
            assert runner.locator(".num").text_content() == f"{step['runner_up_probability']:.1%}"
            width = taken.locator(".bar > i").evaluate("e => e.style.width")
            assert float(width.rstrip("%")) == pytest.approx(100 * step["probability"], abs=0.01)
            others = len(h[step["node_id"]].children) - 2
            assert row.locator(".others .chip").count() == min(others, 12)
    assert sections.nth(0).locator(".pred").text_content() == EVIL
    assert (
        page.js("document.querySelector('section.card .figure img').naturalWidth") == IMAGE_MAX_SIDE
    )
    assert sections.nth(1).locator(".figure").count() == 0
    assert page.page.locator("#index a").count() == 2
    assert_not_blank(page.page.screenshot(full_page=True))
    page.check_clean()


def test_an_outside_request_would_be_caught(tmp_path, open_page):
    """The request guard itself works: a page that asks the network is reported."""
    probe = tmp_path / "probe.html"
    probe.write_text('<html data-ready="1"><img src="http://example.invalid/x.png"></html>')
    page = open_page(probe)
    page.page.wait_for_timeout(200)
    assert page.requests == ["http://example.invalid/x.png"]


# ------------------------------------------------------------------------ faults
def test_the_first_enter_after_typing_a_search_advances(tmp_path, open_page, make_tree):
    h = make_tree(300, branching=3, seed=7)
    page = open_page(hierarchy_html(h, tmp_path / "t.html"))
    page.page.type("#search", "class 1")
    page.page.wait_for_function(
        "() => document.getElementById('matches').textContent.startsWith('1 of')"
    )
    page.page.press("#search", "Enter")
    assert page.js("document.getElementById('matches').textContent").startswith("2 of")
    page.check_clean()


def test_a_window_resize_keeps_the_highlighted_node_in_view(tmp_path, open_page, make_tree):
    h = make_tree(1000, branching=4, seed=5)
    page = open_page(hierarchy_html(h, tmp_path / "t.html", highlight=737))
    visible = (
        "id => { const n = document.querySelector(`g.node[data-id='${id}'] circle`);"
        " const r = n.getBoundingClientRect();"
        " const s = document.getElementById('tree').getBoundingClientRect();"
        " return r.left >= s.left && r.right <= s.right && r.top >= s.top"
        " && r.bottom <= s.bottom; }"
    )
    leaf = h.class_ids[737]
    assert page.js(visible, leaf)
    page.page.set_viewport_size({"width": 900, "height": 600})
    page.page.wait_for_timeout(200)
    assert page.js(visible, leaf)
    page.check_clean()
