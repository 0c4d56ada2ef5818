"""scripts/gpu_check.py's CPU dry run: every part prints one JSON document with sane numbers, on
a machine without WordNet (nltk hidden), as the GPU machine it is meant for."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.py"
TINY = [
    "--device", "cpu", "--arch", "resnet18", "--image-size", "64", "--batch-size", "8",
    "--steps", "2", "--warmup-steps", "1", "--rounds", "1", "--classes", "10",
    "--images", "24", "--min-side", "64", "--max-side", "96", "--workers", "0,2",
    "--eval-images", "16", "--explain-batch", "4",
]  # fmt: skip


def parse_documents(text: str) -> list[dict]:
    """Every JSON document of ``text``; anything else on stdout is an error."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    text = text.strip()
    while position < len(text):
        document, position = decoder.raw_decode(text, position)
        documents.append(document)
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


@pytest.mark.slow
def test_cpu_dry_run_prints_every_part(tmp_path):
    hidden = tmp_path / "hidden" / "nltk"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('nltk hidden by the test')\n")
    path = [str(tmp_path / "hidden"), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(path)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *TINY, "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    documents = parse_documents(result.stdout)
    parts = {d["part"]: d for d in documents}
    assert [d["part"] for d in documents] == [
        "environment", "throughput", "loader", "passes", "torchrun",
    ]  # fmt: skip
    assert not [d for d in documents if "error" in d], result.stderr[-4000:]

    environment = parts["environment"]
    assert environment["device"] == "cpu" and environment["wordnet"] != "available"

    throughput = parts["throughput"]
    assert throughput["tree"]["classes"] == 10 and throughput["tree"]["max_depth"] >= 2
    assert throughput["amp"] is None and throughput["channels_last"] is False
    assert "skipped" in throughput["compile"] and "skipped" in throughput["largest_batch"]
    (run,) = throughput["runs"]
    assert run["batch_size"] == 8 and run["compiled"] is False
    rates = run["images_per_s"]
    assert set(rates) == {"a_plain_ce", "b_plain_soft_tree", "c_nbdt_train"}
    assert all(rate > 0 for rate in rates.values())
    assert set(run["ratios"]) == {"soft_tree_over_plain", "trainer_over_soft_tree"}
    assert all(isinstance(ok, bool) for ok in run["goals"].values()) and len(run["goals"]) == 2

    loader = parts["loader"]
    assert loader["folder"]["images"] == 24 and "WordNet missing" in loader["class_names"]
    assert set(loader["images_per_s_by_workers"]) == {"0", "2"}
    assert all(rate > 0 for rate in loader["images_per_s_by_workers"].values())
    assert loader["variants_at_most_workers"]["no_persistent_workers"]["images_per_s"] > 0
    assert loader["gpu_step"]["images_per_s"] == rates["c_nbdt_train"]
    assert loader["verdict"].startswith(("the loader is the limit", "the GPU step is the limit"))

    passes = parts["passes"]
    forward = passes["forward"]
    assert forward["soft_within_1e-3"] and forward["hard_paths_agree"]
    assert (
        forward["smallest_hard_path_margin"] > 0
        and forward["margins_where_hard_paths_differ"] == []
    )
    assert passes["evaluate"]["images"] == 16
    assert passes["evaluate"]["max_top1_difference_points"] == 0  # the CPU against itself
    assert passes["node_examples"]["same_choices_share"] == 1.0
    explained = passes["explain_evidence"]
    assert "skipped" in explained or explained["same_paths"] == "4/4"
    onnx = passes["export_onnx"]
    assert "skipped" in onnx or (onnx["soft_within_1e-3"] and onnx["same_hard_paths"] == "4/4")

    torchrun = parts["torchrun"]
    assert torchrun["backend"] == "gloo" and torchrun["world_size"] == 1
    assert torchrun["images_per_s"] > 0 and torchrun["loss_finite"]
