"""The examples run as a user would run them, and print what they promise."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, cwd: Path) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=cwd,  # the examples must not depend on the working directory
    )
    assert result.returncode == 0, result.stderr
    assert not list(cwd.iterdir()), "an example wrote into the working directory"
    return result.stdout.splitlines()


@pytest.mark.slow
def test_custom_training_loop(tmp_path):
    lines = run_example("custom_training_loop.py", tmp_path)
    tree = "\n".join(lines[:-3])
    for name in ("cat", "dog", "horse", "car", "truck", "ship"):
        assert re.search(rf"^ +{name}  \(class \d\)$", tree, re.M), tree
    assert re.fullmatch(r"tree-supervised loss after training: \d+\.\d{3}", lines[-3])
    accuracy = int(re.fullmatch(r"NBDT accuracy on the training images: (\d+)%", lines[-2])[1])
    assert accuracy >= 90
    prediction = re.fullmatch(
        r"Prediction: (\w+) // Decisions: .* -> (\w+) \(\d+\.\d%\)", lines[-1]
    )
    assert prediction and prediction[1] == prediction[2] == "cat"  # images[0] is a cat


@pytest.mark.slow
def test_explain_photo(tmp_path):
    lines = run_example("explain_photo.py", tmp_path)
    label = re.fullmatch(r"Prediction: (.+) // Decisions: (.+)", lines[0])[1]
    assert label in {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"}
    steps = lines[1:-1]
    assert all(
        re.fullmatch(r"  at '.+': '.+' \d+\.\d% \(runner-up .+, entropy \d\.\d\d nats\)", s)
        for s in steps
    )
    # The one-line form shows every step, with the names the steps show (one rule for all).
    children = [re.match(r"  at '.+': '(.+?)' \d", s)[1] for s in steps]
    decisions = lines[0].split(" // Decisions: ")[1].split(" -> ")
    assert [re.sub(r" \(\d+\.\d%\)$", "", d) for d in decisions] == children
    nodes = [re.match(r"  at '(.+?)': ", s)[1] for s in steps]
    assert nodes[1:] == children[:-1]  # each step is at the child the one before took
    assert len(set(nodes)) == len(nodes)  # no node's name repeats another's on the path
    assert steps[-1].split(": ", 1)[1].startswith(f"'{label}' ")
    assert lines[-1].startswith(f"top-3 classes: {label} ")
