"""Regenerate the README's screenshots of the two HTML pages (docs/*.png).

Writes the hierarchy page of the shipped ImageNet WordNet tree with a search for "golden
retriever", and real explanations of three scikit-image sample photos by the offline
EfficientNet-Lite0 (marginal node score: no fine-tuning needed) with a heatmap per decision, then
photographs both in Debian's chromium. With ``--run DIR`` (a finished ``make demo`` folder: its
best.pt and node_examples.npz) also the evidence pages of that Fashion-MNIST model: explanations
with heatmaps and training examples, and the hierarchy with an inner node's examples open.
With ``--report RUN/report.html`` it photographs that evaluation report (nbdt-eval's or the
trainer's) into docs/report.png instead. With ``--pages RUN`` (a finished nbdt-train folder run
with --explain) it photographs that run's hierarchy.html, explanations.html and report.html at
1400 px and 500 px into docs/screenshots/<page>-<width>.png, each page as a user first sees it.
Usage: .venv/bin/python docs/screenshots.py [--run runs/demo] [--report RUN/report.html]
       .venv/bin/python docs/screenshots.py --pages RUN
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-quic"]  # fmt: skip


def write_pages(folder: Path) -> tuple[Path, Path]:
    """The hierarchy page and the explanation page, written into ``folder``."""
    import skimage.data
    from PIL import Image

    from nbdt.model import NBDT
    from nbdt.pretrained import efficientnet_lite0, shipped_hierarchy
    from nbdt.visualize import explanation_html, hierarchy_html

    tree = shipped_hierarchy("imagenet-wordnet")
    tree_page = hierarchy_html(tree, folder / "hierarchy.html")
    model = NBDT(efficientnet_lite0(), tree, mode="soft", node_score="marginal")
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut()]
    images = [Image.fromarray(photo) for photo in photos]
    explanations = model.explain(images, top_k=5, evidence=True)
    explain_page = explanation_html(
        explanations,
        images,
        folder / "explanations.html",
        hierarchy=tree,
        crop_pct=model.data_config["crop_pct"],
    )
    return tree_page, explain_page


def write_evidence_pages(folder: Path, run: Path) -> tuple[Path, Path, str]:
    """A demo run's hierarchy page with its node examples and three test images explained with
    heatmaps and examples; also the id of the inner node to open on the hierarchy page."""
    import nbdt
    from nbdt.data import BatchTransform, load_dataset, to_pil
    from nbdt.evidence.examples import NodeExamples
    from nbdt.visualize import explanation_html, hierarchy_html

    model = nbdt.load(run / "best.pt")
    examples = NodeExamples.load(run / "node_examples.npz", model.hierarchy)
    tree_page = hierarchy_html(model.hierarchy, folder / "tree.html", examples=examples)
    test = load_dataset("fashion-mnist", "test")
    picked = [0, 2, 6]  # an ankle boot, a pair of trousers, a coat
    images = test.images[picked]
    batch = BatchTransform(model.data_config)(images)
    explanations = model.explain(batch, top_k=3, evidence=True, examples=examples)
    page = explanation_html(
        explanations,
        [to_pil(image) for image in images],
        folder / "evidence.html",
        hierarchy=model.hierarchy,
        title="make demo: evidence for every decision",
    )
    return tree_page, page, explanations[0].path[0].node_id


def photograph(
    page: Path,
    out: Path,
    search: str | None = None,
    height: int = 800,
    click: str | None = None,
) -> None:
    """A 1280-wide screenshot, reduced to a 256-colour PNG to keep the README light."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        tab = browser.new_page(viewport={"width": 1280, "height": height})
        tab.goto(page.as_uri())
        tab.wait_for_selector("html[data-ready]", state="attached")
        if search:
            tab.fill("#search", search)
            tab.press("#search", "Enter")
            tab.wait_for_selector("g.node.current")
        if click:  # a click on a node's name shows its examples
            tab.click(click)
            tab.mouse.move(300, height - 20)  # away from the node: no tooltip
            tab.wait_for_timeout(300)
        png = tab.screenshot()
        browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    image.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KB")


WIDTHS = (1400, 500)


def photograph_widths(page: Path, name: str, folder: Path = DOCS / "screenshots") -> None:
    """``page`` at every width of :data:`WIDTHS` (900 px high), as 256-colour PNGs."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    folder.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        for width in WIDTHS:
            tab = browser.new_page(viewport={"width": width, "height": 900})
            tab.goto(page.as_uri())
            tab.wait_for_selector("html[data-ready]", state="attached")
            png = tab.screenshot()
            out = folder / f"{name}-{width}.png"
            image = Image.open(io.BytesIO(png)).convert("RGB")
            image.quantize(256, dither=Image.Dither.NONE).save(out, optimize=True)
            print(f"{out}: {out.stat().st_size // 1024} KB")
        browser.close()


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished make demo folder (runs/demo)")
    parser.add_argument("--report", type=Path, help="an evaluation report to photograph")
    parser.add_argument("--pages", type=Path, help="a run folder: its pages at both widths")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} (Debian's chromium; make setup installs it)", file=sys.stderr)
        return 2
    if args.pages:
        for name in ("hierarchy", "explanations", "report"):
            photograph_widths(args.pages.resolve() / f"{name}.html", name)
        return 0
    if args.report:
        photograph(args.report.resolve(), DOCS / "report.png", height=1400)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tree_page, explain_page = write_pages(Path(tmp))
        photograph(tree_page, DOCS / "hierarchy.png", search="golden retriever")
        photograph(explain_page, DOCS / "explanation.png", height=1000)
        if args.run:
            tree_page, evidence_page, node = write_evidence_pages(Path(tmp), args.run)
            photograph(evidence_page, DOCS / "evidence-explanation.png", height=1100)
            photograph(
                tree_page,
                DOCS / "evidence-hierarchy.png",
                click=f"g.node[data-id='{node}'] text",
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
