"""Regenerate the README's screenshots of the two HTML pages (docs/*.png).

Writes the hierarchy page of the shipped ImageNet WordNet tree with a search for "golden
retriever", and real explanations of three scikit-image sample photos by the offline
EfficientNet-Lite0 (marginal node score: no fine-tuning needed), then photographs both in
Debian's chromium. Usage: .venv/bin/python docs/screenshots.py

With ``--report RUN/report.html`` it photographs that evaluation report (nbdt-eval's or the
trainer's) into docs/report.png instead.
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
    explanations = model.explain(images, top_k=5)
    explain_page = explanation_html(
        explanations, images, folder / "explanations.html", hierarchy=tree
    )
    return tree_page, explain_page


def photograph(page: Path, out: Path, search: str | None = None, height: int = 800) -> None:
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
        png = tab.screenshot()
        browser.close()
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(256, dither=Image.Dither.NONE)
    image.save(out, optimize=True)
    print(f"{out}: {out.stat().st_size // 1024} KB")


def main() -> int:
    if not Path(CHROMIUM).exists():
        print(f"needs {CHROMIUM} (Debian's chromium; make setup installs it)", file=sys.stderr)
        return 2
    if sys.argv[1:2] == ["--report"] and len(sys.argv) == 3:
        photograph(Path(sys.argv[2]).resolve(), DOCS / "report.png", height=1400)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tree_page, explain_page = write_pages(Path(tmp))
        photograph(tree_page, DOCS / "hierarchy.png", search="golden retriever")
        photograph(explain_page, DOCS / "explanation.png", height=1000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
