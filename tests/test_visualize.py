"""Fast checks of the HTML writer: escaping, no external URLs, the embedded data, atomic writes."""

import base64
import hashlib
import io
import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from nbdt import visualize
from nbdt.labels import display_names
from nbdt.visualize import embed_json, explanation_html, hierarchy_html

EVIL = "<img src=x onerror=alert(1)>"


class _Page(HTMLParser):
    """Collects tags with their attributes, and the text of each script element."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._script: dict | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._script = dict(attrs)

    def handle_data(self, data):
        if self._script is not None:
            self.scripts.append((self._script, data))

    def handle_endtag(self, tag):
        if tag == "script":
            self._script = None


def page_data(text: str):
    """The JSON the page embeds, parsed."""
    (data,) = [body for attrs, body in _Page(text).scripts if attrs.get("id") == "nbdt-data"]
    return json.loads(data)


def assert_self_contained(text: str) -> None:
    page = _Page(text)
    for tag, attrs in page.tags:
        assert tag not in ("link", "iframe", "object", "embed", "base"), tag
        assert not {"src", "href", "srcset", "action"} & set(attrs), (tag, attrs)
    assert not re.search(r"\b(https?|ftp|wss?):", text, re.IGNORECASE)
    assert "url(" not in text and "@import" not in text
    (csp,) = [
        a["content"] for t, a in page.tags if a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert "default-src 'none'" in csp and "img-src data:" in csp
    # The one executable script is exactly the one the policy's hash allows.
    (code,) = [body for attrs, body in page.scripts if "type" not in attrs]
    digest = base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp


def test_embed_json_cannot_close_the_script_element():
    value = {"label": "</script><script>alert(1)</script><!-- & \u2028\u2029 ü"}
    text = embed_json(value)
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == value


def test_hierarchy_page_is_self_contained_and_embeds_the_tree(tmp_path, make_tree):
    labels = [EVIL, "</script><script>alert(2)</script>"] + [f"class {i}" for i in range(2, 12)]
    h = make_tree(12, labels=labels)
    out = hierarchy_html(h, tmp_path / "tree.html")
    assert out == tmp_path / "tree.html"
    text = out.read_text(encoding="utf-8")
    assert_self_contained(text)
    assert EVIL not in text and "</script><script>alert" not in text
    data = page_data(text)
    nodes = h.nodes
    assert data["label"] == [n.label for n in nodes]
    assert data["id"] == [n.id for n in nodes]
    index = {n.id: i for i, n in enumerate(nodes)}
    assert data["parent"] == [-1] + [index[h.parent(n.id).id] for n in nodes[1:]]
    assert data["leaves"] == [len(h.leaf_indices(n.id)) for n in nodes]
    assert data["class"] == [h.class_ids.index(n.id) if n.is_leaf else -1 for n in nodes]
    assert data["wordnet"] == [int(n.from_wordnet) for n in nodes]
    assert 0 < sum(data["wordnet"]) < len(nodes)
    assert data["highlight"] is None


def test_title_is_escaped(tmp_path, make_tree):
    text = hierarchy_html(make_tree(4), tmp_path / "t.html", title="<b>trees & me</b>").read_text()
    assert "<title>&lt;b&gt;trees &amp; me&lt;/b&gt;</title>" in text
    assert "<b>" not in text


def test_highlight_by_class_index_node_id_or_label(tmp_path, make_tree):
    h = make_tree(30, seed=3)
    leaf_position = [n.id for n in h.nodes].index(h.class_ids[7])
    for key in (7, h.class_ids[7], "class 7"):
        data = page_data(hierarchy_html(h, tmp_path / "t.html", highlight=key).read_text())
        assert data["highlight"] == leaf_position
    inner = h.inner_nodes[2]
    data = page_data(hierarchy_html(h, tmp_path / "t.html", highlight=inner.id).read_text())
    assert data["highlight"] == [n.id for n in h.nodes].index(inner.id)


@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        (30, ValueError, r"class index 30 is not in \[0, 30\)"),
        (-1, ValueError, "class index -1"),
        ("no such node", ValueError, "'no such node' is no node id or label"),
        (True, TypeError, "not a bool"),
        (2.5, TypeError, "got float"),
    ],
)
def test_bad_highlight_is_refused_and_nothing_written(tmp_path, make_tree, key, error, message):
    with pytest.raises(error, match=message):
        hierarchy_html(make_tree(30), tmp_path / "t.html", highlight=key)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, make_tree, monkeypatch):
    out = tmp_path / "tree.html"
    out.write_text("old page")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(visualize.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        hierarchy_html(make_tree(5), out)
    assert out.read_text() == "old page"
    assert [p.name for p in tmp_path.iterdir()] == ["tree.html"]


def test_missing_folder_is_named(tmp_path, make_tree):
    with pytest.raises(FileNotFoundError, match="folder .*nowhere does not exist"):
        hierarchy_html(make_tree(5), tmp_path / "nowhere" / "t.html")


# ------------------------------------------------------------------------- explanations
def test_explanation_page_embeds_validated_records_and_context(
    tmp_path, make_tree, explanation_dict
):
    h = make_tree(40, labels=[EVIL] + [f"class {i}" for i in range(1, 40)], seed=1)
    exps = [explanation_dict(h, 0, 0.8), explanation_dict(h, 17, 0.95)]
    text = explanation_html(exps, [None, None], tmp_path / "e.html", hierarchy=h).read_text()
    assert_self_contained(text)
    assert EVIL not in text
    items = page_data(text)["items"]
    shown = display_names(h)  # the children are named as every output names them
    assert [item["explanation"] for item in items] == exps
    assert [item["image"] for item in items] == [None, None]
    for item, exp in zip(items, exps, strict=True):
        assert len(item["context"]) == len(exp["path"])
        for step, children in zip(exp["path"], item["context"], strict=True):
            node = h[step["node_id"]]
            assert [c["label"] for c in children] == [shown[c] for c in node.children]
            assert [c["leaves"] for c in children] == [
                len(h.leaf_indices(c)) for c in node.children
            ]
            roles = {h[c].label: r["role"] for c, r in zip(node.children, children, strict=True)}
            assert roles[step["child_label"]] == "taken"
            assert roles[step["runner_up_label"]] == "runner-up"
            assert sum(r == "other" for r in roles.values()) == len(node.children) - 2


def test_explanation_objects_single_items_and_no_context(tmp_path, make_tree, explanation_dict):
    h = make_tree(6)
    record = explanation_dict(h, 2)

    class FakeExplanation:
        def to_dict(self):
            return record

    data = page_data(explanation_html(FakeExplanation(), None, tmp_path / "e.html").read_text())
    assert data["title"] == "NBDT explanation"
    assert data["items"] == [{"explanation": record, "image": None, "context": None}]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("path"), r"explanation 0: missing keys \['path'\]"),
        (lambda e: e["path"][1].pop("runner_up_id"), r"step 1 is missing keys \['runner_up_id'\]"),
        (lambda e: e.update(probability=1.5), "probability is 1.5, expected a probability"),
        (lambda e: e["path"][0].update(entropy=float("nan")), "step 0 entropy is nan"),
        (lambda e: e["path"][0].update(node_id="nope"), "node 'nope' is not in the hierarchy"),
    ],
)
def test_bad_explanations_are_refused(tmp_path, make_tree, explanation_dict, change, message):
    h = make_tree(20, branching=2)
    exp = explanation_dict(h, 3)
    change(exp)
    with pytest.raises(ValueError, match=message):
        explanation_html([exp], [None], tmp_path / "e.html", hierarchy=h)
    assert list(tmp_path.iterdir()) == []


def test_image_count_must_match(tmp_path, make_tree, explanation_dict):
    h = make_tree(5)
    with pytest.raises(ValueError, match="2 explanations but 1 images"):
        explanation_html([explanation_dict(h, 0)] * 2, [None], tmp_path / "e.html")
    with pytest.raises(ValueError, match="no explanations"):
        explanation_html([], [], tmp_path / "e.html")


def _decode(uri: str) -> tuple[str, Image.Image]:
    head, payload = uri.split(",", 1)
    return head, Image.open(io.BytesIO(base64.b64decode(payload)))


def test_images_are_downscaled_and_embedded(tmp_path, make_tree, explanation_dict):
    h = make_tree(5)
    photo = Image.effect_mandelbrot((900, 600), (-2, -1.2, 1, 1.2), 60).convert("RGB")
    photo_file = tmp_path / "photo.png"
    photo.save(photo_file)
    small = Image.new("L", (28, 28), 200)
    clear = Image.new("RGBA", (500, 100), (255, 0, 0, 0))
    exps = [explanation_dict(h, i) for i in range(4)]
    out = tmp_path / "e.html"
    items = page_data(explanation_html(exps, [photo, photo_file, small, clear], out).read_text())
    heads, images = zip(*(_decode(item["image"]) for item in items["items"]), strict=True)
    assert heads == (
        "data:image/jpeg;base64",
        "data:image/jpeg;base64",
        "data:image/png;base64",
        "data:image/png;base64",
    )
    assert [im.size for im in images] == [(320, 213), (320, 213), (28, 28), (320, 64)]
    assert images[3].mode == "RGBA"
    assert out.stat().st_size < 200_000


def test_high_bit_depth_images_are_scaled_not_clipped(tmp_path, make_tree, explanation_dict):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    wide = Image.fromarray(ramp)  # mode I;16: 0..65535
    assert wide.mode == "I;16"
    out = explanation_html([explanation_dict(make_tree(5), 0)], [wide], tmp_path / "e.html")
    [item] = page_data(out.read_text())["items"]
    _, shown = _decode(item["image"])
    pixels = np.asarray(shown)
    assert shown.mode == "L" and pixels.min() == 0 and pixels.max() == 255
    assert abs(pixels.mean() - 127.5) < 2  # a clipped image would be almost all white


@pytest.mark.parametrize(
    "name",
    ["missing", "directory", "not-an-image", "truncated-png", "truncated-jpeg", "bomb"],
)
def test_bad_image_files_are_named(tmp_path, make_tree, explanation_dict, bad_image_files, name):
    h = make_tree(5)
    out = tmp_path / "e.html"
    with pytest.raises((ValueError, OSError)) as caught:
        explanation_html([explanation_dict(h, 0)], [bad_image_files[name]], out)
    assert str(bad_image_files[name]) in str(caught.value)
    assert not out.exists()


def test_wrong_argument_types(tmp_path, make_tree, explanation_dict):
    h = make_tree(5)
    with pytest.raises(TypeError, match="must be a Hierarchy"):
        hierarchy_html(h.to_node_link(), tmp_path / "t.html")
    with pytest.raises(TypeError, match="got int"):
        explanation_html([explanation_dict(h, 0)], [3], tmp_path / "e.html")
    with pytest.raises(TypeError, match="expected an Explanation or its dict"):
        explanation_html(["tabby"], [None], tmp_path / "e.html")


# -------------------------------------------------------------------- nbdt-hierarchy html
def test_cli_html_writes_the_page_of_a_file_or_shipped_tree(tmp_path, make_tree, capsys):
    from nbdt.cli.hierarchy import main as hierarchy_main

    h = make_tree(12, seed=9)
    tree_file = h.save(tmp_path / "tree.json")
    out = tmp_path / "tree.html"
    argv = ["html", str(tree_file), "-o", str(out), "--highlight", "4", "--title", "Mine"]
    assert hierarchy_main(argv) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (12 classes")
    data = page_data(out.read_text())
    assert data["title"] == "Mine"
    assert data["id"][data["highlight"]] == h.class_ids[4]

    assert hierarchy_main(["html", "cifar10-wordnet", "-o", str(out), "--highlight", "cat"]) == 0
    data = page_data(out.read_text())
    assert len(data["class"]) > 10 and data["label"][data["highlight"]] == "cat"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["html", "no-such-tree.json"], "no-such-tree.json: no such hierarchy file"),
        (["html", "cifar10-wordnet", "--highlight", "12"], "class index 12 is not in [0, 10)"),
        (["html", "cifar10-wordnet", "--highlight", "unicorn"], "'unicorn' is no node id"),
    ],
)
def test_cli_html_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    from nbdt.cli.hierarchy import main as hierarchy_main

    out = tmp_path / "out.html"
    assert hierarchy_main([*argv, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbdt-hierarchy: error: ") and message in err
    assert err.count("\n") == 1
    assert not out.exists()
