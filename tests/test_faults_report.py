"""A control character in a class name leaves every plot of report.html valid SVG (issue 18)."""

import base64
import re
import xml.etree.ElementTree as ET

import torch

from nbdt.evaluation.evaluate import EvalResult
from nbdt.evaluation.metrics import TreeMetrics
from nbdt.evaluation.report import report_html
from nbdt.hierarchy import Hierarchy, Node


def test_control_characters_in_class_names_keep_the_plots_valid_svg(tmp_path):
    labels = ["bell\x07", "esc\x1b[31m", "c2", "c3"]
    nodes = [Node(f"c{i}", labels[i]) for i in range(4)]
    nodes += [Node("r", "root", None, tuple(f"c{i}" for i in range(4)))]
    tree = Hierarchy(nodes, [f"c{i}" for i in range(4)])
    metrics = TreeMetrics(tree, tree)
    gen = torch.Generator().manual_seed(0)
    metrics.update(torch.randn(40, 4, generator=gen), torch.randint(0, 4, (40,), generator=gen))
    page = report_html(EvalResult(metrics.compute(), tree), tmp_path / "r.html").read_text()
    plots = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)", page)
    for plot in plots:
        ET.fromstring(base64.b64decode(plot))  # raises on an invalid character
    per_class = base64.b64decode(plots[1]).decode()
    assert "bell\\x07" in per_class and "esc\\x1b[31m" in per_class
