"""The README and the docs site: short and built strictly.

Every command of the README and of the getting-started page runs as written in
tests/test_distribution.py, from the wheel installed in a clean environment outside the
repository: one run checks the pages and the distribution (the quickstart trains once).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.doc_blocks import environment, link_venv, run_pages

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))

# Notes that only make sense to whoever wrote them, and one machine's paths.
_PRIVATE = re.compile(
    r"not run yet|this session|the issue'?s?\b|when this was written|/work/|/home/", re.I
)


def test_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / target).exists(), f"README links to {target}, which does not exist"
    for needed in ("make demo", "make test", "```python", "```bash"):
        assert needed in text


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_no_private_notes(page):
    for n, line in enumerate(page.read_text().splitlines(), 1):
        assert not _PRIVATE.search(line), f"{page.name}:{n}: {line}"


def test_pages_run_their_blocks_in_order_each_text_once(tmp_path):
    """run_pages, which runs the README and getting-started in the distribution test: a block
    a page repeats from an earlier one runs once; a block after <!-- long --> never runs."""
    first, second = tmp_path / "first.md", tmp_path / "second.md"
    first.write_text("```bash\necho one >> log\n```\n")
    second.write_text(
        "```bash\necho one >> log\n```\n\n```python\nopen('log', 'a').write('two\\n')\n```\n"
        "<!-- long -->\n```bash\necho long >> log\n```\n```text\nnot code\n```\n"
    )
    link_venv(tmp_path, Path(sys.prefix))
    run_pages([first, second], tmp_path, environment(), timeout=60)
    assert (tmp_path / "log").read_text() == "one\ntwo\n"


@pytest.mark.slow
def test_docs_site_builds_strictly(tmp_path):
    """mkdocs build --strict: a broken link, a missing page or API reference fails the build."""
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env=environment(PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-5000:]
    assert "WARNING" not in r.stderr, r.stderr[-5000:]
    cli = (site / "cli" / "index.html").read_text()
    scripts = re.findall(r'^(nbdt-[\w-]+) = "', (ROOT / "pyproject.toml").read_text(), re.M)
    assert len(scripts) >= 8
    for command in scripts:
        assert f"usage: {command}" in cli, f"{command} is missing from the CLI reference"
    api = (site / "api" / "index.html").read_text()
    for name in (
        "hierarchy.Hierarchy.induced",
        "rules.DecisionRules.soft",
        "loss.SoftTreeSupLoss",
        "model.NBDT.explain",
        "evaluation.evaluate.evaluate",
        "deploy.runtime.OnnxNBDT",
    ):
        assert f'id="nbdt.{name}"' in api, f"nbdt.{name} is missing from the API reference"
