"""export.py and model_export: the exported graphs compute what Keras computes, with the
agreed interface (uint8 `images`, dynamic batch; `logits`, `probabilities`), ONNX ops the
DirectML execution provider runs, the run's metadata; and export.py's one-line errors."""
import collections
import json
import os
import subprocess

import numpy as np
import pytest

from helpers import ROOT
from vitcifar.backend import keras_compat
from vitcifar.commands import export
from vitcifar.config.datasets import CIFAR10_CLASSES
from vitcifar.config.presets import PRESETS
from vitcifar.config.views import override
from vitcifar.data import cifar
from vitcifar.deploy import deployed_model, model_export
from vitcifar.runs import checkpoint, run_dir

# The ONNX operators ONNX Runtime's DirectML execution provider registers at opset 17
# (onnxruntime/core/providers/dml/DmlExecutionProvider/src/Operators/OperatorRegistration.cpp)
# that a ViT may need; an export must use no other.
DIRECTML_OPS = {
    "Add", "Sub", "Mul", "Div", "Sqrt", "Reciprocal", "Erf", "Exp", "Pow", "Tanh", "Sigmoid",
    "MatMul", "Gemm", "Softmax", "ReduceMean", "ReduceSum", "LayerNormalization",
    "GlobalAveragePool", "Cast", "Concat", "Gather", "Reshape", "Shape", "Slice", "Split",
    "Squeeze", "Unsqueeze", "Tile", "Transpose", "Expand", "Identity",
    "DynamicQuantizeLinear", "MatMulInteger",                    # --quantize int8
}
CURRENT_STACK = keras_compat.keras_major() >= 3
OTHER = os.environ.get("OTHER_STACK_PYTHON")
TOLERANCE = 1e-4


def images(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), np.uint8)


@pytest.fixture(scope="module")
def model():
    """The tiny preset with overlapping patches (stride 4 < size 8), random weights."""
    config = override(PRESETS["tiny"], patch_stride=4).validate()
    return config, model_export.inference_model(config)


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory):
    config, keras_model = model
    path = str(tmp_path_factory.mktemp("onnx") / "model.onnx")
    values = model_export.metadata(config, CIFAR10_CLASSES, 0.5)
    export.write_bytes(model_export.to_onnx(keras_model, values))(path)
    return path


@pytest.mark.parametrize("batch", [1, 37])
def test_onnx_logits_equal_keras_for_any_batch(model, onnx_file, batch):
    x = images(batch)
    expected = model[1](x, training=False).numpy()
    outputs = deployed_model.open_model(onnx_file).run(x)
    np.testing.assert_allclose(outputs["logits"], expected, atol=TOLERANCE, rtol=0)
    assert (outputs["logits"].argmax(1) == expected.argmax(1)).all()
    np.testing.assert_allclose(outputs["probabilities"].sum(1), 1, atol=1e-5)


def test_onnx_graph_is_uint8_in_float32_out_opset_17_directml_ops(onnx_file):
    import onnx
    proto = onnx.load(onnx_file)
    assert {node.op_type for node in proto.graph.node} <= DIRECTML_OPS
    assert all(o.domain in ("", "ai.onnx") and o.version <= 17 for o in proto.opset_import)
    (given,) = proto.graph.input
    assert given.name == "images" and given.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = given.type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value") and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    assert {o.name: o.type.tensor_type.elem_type for o in proto.graph.output} == \
        {"logits": onnx.TensorProto.FLOAT, "probabilities": onnx.TensorProto.FLOAT}
    assert not any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)


@pytest.fixture(scope="module")
def trained_like(model, tmp_path_factory):
    """The tiny model with every weight moved off its initial value (LayerNorm gamma not 1,
    beta and biases not 0, which tf2onnx would otherwise fold away), its fused ONNX file and
    tf2onnx's own (to_onnx fuse=False)."""
    config, _ = model
    keras_model = model_export.inference_model(config)
    rng = np.random.default_rng(3)
    for weight in keras_model.weights:
        weight.assign(weight.numpy() + rng.normal(0, 0.1, weight.shape).astype(np.float32))
    values = model_export.metadata(config, CIFAR10_CLASSES, None)
    folder = tmp_path_factory.mktemp("trained_like")
    paths = {}
    for fuse in (True, False):
        paths[fuse] = str(folder / f"fuse_{fuse}.onnx")
        export.write_bytes(model_export.to_onnx(keras_model, values, fuse=fuse))(paths[fuse])
    return keras_model, paths


def test_fused_onnx_of_trained_weights_equals_keras_and_the_unfused_graph(trained_like):
    keras_model, paths = trained_like
    x = images(37, seed=4)
    expected = keras_model(x, training=False).numpy()
    fused = deployed_model.open_model(paths[True]).run(x)["logits"]
    plain = deployed_model.open_model(paths[False]).run(x)["logits"]
    np.testing.assert_allclose(fused, expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(fused, plain, atol=1e-5, rtol=0)
    assert np.abs(expected).max() > 0.1              # the weights move the logits


@pytest.mark.parametrize("weights", ["initial", "trained_like"])
def test_onnx_graph_is_fused_one_matmul_per_dense(model, onnx_file, trained_like, tmp_path,
                                                  weights):
    """Per Dense on (B, T, D) one MatMul (no Shape -> Gather -> Concat -> Reshape chain), each
    layer norm one LayerNormalization, and every GELU in the form ONNX Runtime's optimiser
    fuses (its saved optimised graph has no Erf left); tf2onnx's own graph has none of it."""
    import onnx
    import onnxruntime as ort
    config = model[0]
    path = onnx_file if weights == "initial" else trained_like[1][True]
    graph = onnx.load(path).graph
    ops = collections.Counter(node.op_type for node in graph.node)
    dense_3d = 1 + 4 * config.num_layers                     # patch_proj; qkv, output, mlp x2
    attention = 2 * config.num_layers                        # Q K^T and P V
    dense_2d = len(config.head_units) + 1                    # head and classifier
    assert ops["MatMul"] + ops["Gemm"] == dense_3d + attention + dense_2d
    # every Reshape to a constant shape; one Shape only, the class token's batch size
    constants = {t.name for t in graph.initializer}
    assert all(node.input[1] in constants for node in graph.node if node.op_type == "Reshape")
    assert config.pooling == "class_token" and ops["Shape"] == 1
    assert not {"GlobalAveragePool", "Sqrt", "Reciprocal"} & set(ops)
    assert ops["LayerNormalization"] == 2 * config.num_layers + 1
    assert ops["Erf"] == config.num_layers + len(config.head_units)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    assert "Erf" not in {node.op_type for node in onnx.load(options.optimized_model_filepath)
                         .graph.node}
    if weights == "trained_like":
        plain = collections.Counter(node.op_type for node in
                                    onnx.load(trained_like[1][False]).graph.node)
        assert plain["Shape"] == dense_3d + 1 and plain["LayerNormalization"] == 0
        assert sum(plain.values()) > 2 * sum(ops.values())


def test_onnx_metadata_describes_the_run(onnx_file):
    metadata = deployed_model.open_model(onnx_file).metadata
    assert set(metadata) == set(deployed_model.METADATA_KEYS)
    assert json.loads(metadata["class_names"]) == list(CIFAR10_CLASSES)
    assert metadata["dataset"] == "cifar10" and metadata["test_top1"] == "0.5000"
    assert metadata["precision"] == "float32" and "tf2onnx" in metadata["exported_with"]
    assert metadata["app_version"] != ""
    assert json.loads(metadata["model"])["patch_stride"] == 4


def test_preset_is_named_when_the_model_settings_match_one():
    assert model_export.preset_of(PRESETS["sample"]) == "sample"
    assert model_export.preset_of(override(PRESETS["tiny"], epochs=3)) == "tiny"
    assert model_export.preset_of(override(PRESETS["tiny"], num_layers=5)) == "custom"


def test_mixed_precision_training_still_exports_float32(model):
    import tensorflow as tf
    tf.keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        rebuilt = model_export.inference_model(model[0])
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert all(w.dtype == "float32" for w in rebuilt.weights)
    assert rebuilt(images(2), training=False).dtype == tf.float32


@pytest.mark.parametrize("format_name", ["saved_model", "tflite"])
def test_saved_model_and_tflite_load_and_match_keras(model, tmp_path, format_name):
    config, keras_model = model
    path = str(tmp_path / format_name)
    if format_name == "saved_model":
        model_export.write_saved_model(keras_model, path,
                                       model_export.metadata(config, CIFAR10_CLASSES, None))
        assert json.load(open(os.path.join(path, "assets", "metadata.json")))["class_names"]
    else:
        export.write_bytes(model_export.to_tflite(keras_model))(path)
    x = images(9, seed=1)
    expected = keras_model(x, training=False).numpy()
    logits = model_export.exported_logits(path, format_name, x)
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE, rtol=0)
    assert (logits.argmax(1) == expected.argmax(1)).all()


@pytest.mark.skipif(not CURRENT_STACK, reason="the quantiser needs onnx >= 1.13")
def test_int8_model_is_smaller_uses_directml_ops_and_stays_close(model, onnx_file, tmp_path):
    import onnx
    int8 = str(tmp_path / "model.int8.onnx")
    model_export.quantize_int8(onnx_file, int8)
    assert os.path.getsize(int8) < os.path.getsize(onnx_file)
    ops = {node.op_type for node in onnx.load(int8).graph.node}
    assert "MatMulInteger" in ops and ops <= DIRECTML_OPS
    x = images(64, seed=2)
    session = deployed_model.import_onnxruntime().InferenceSession(
        int8, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": x})[0]
    expected = model[1](x, training=False).numpy()
    assert np.corrcoef(logits.ravel(), expected.ravel())[0, 1] > 0.99


def test_a_failed_write_leaves_the_old_export_and_no_partial_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")

    def write(temporary):
        open(temporary, "wb").write(b"half")
        raise RuntimeError("converter fault")
    with pytest.raises(RuntimeError):
        export.replace_atomically(str(path), write)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.onnx"]
    export.replace_atomically(str(path), export.write_bytes(b"new"))
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["model.onnx"]


# ---- export.py on a trained run -----------------------------------------------------------

def keras_logits(run_path, x):
    model = model_export.inference_model(run_dir.open_run(run_path).config)
    checkpoint.load_best_weights(run_dir.open_run(run_path), model)
    return model(x, training=False).numpy()


@pytest.mark.slow
def test_exported_run_reproduces_its_test_top1_on_onnx_runtime(tiny_run, cifar10_tar, tmp_path,
                                                               capsys):
    path = str(tmp_path / "model.onnx")
    assert export.main([tiny_run[0], "--output", path]) == 0
    assert "logits differ from Keras's by at most" in capsys.readouterr().out
    data = cifar.load("cifar10", cifar10_tar)
    deployed = deployed_model.open_model(path)
    logits = deployed.run(data.x_test)["logits"]
    np.testing.assert_allclose(logits, keras_logits(tiny_run[0], data.x_test), atol=TOLERANCE,
                               rtol=0)
    stored = run_dir.open_run(tiny_run[0]).results()["test_top1"]
    assert np.mean(logits.argmax(1) == data.y_test) == pytest.approx(stored, abs=1e-6)
    assert deployed.metadata["test_top1"] == f"{stored:.4f}"


@pytest.mark.slow
def test_quantize_int8_reports_top1_and_sizes_or_names_the_other_stack(run_copy, cifar10_tar,
                                                                       capsys):
    code = export.main([run_copy, "--quantize", "int8", "--data-dir", cifar10_tar])
    captured = capsys.readouterr()
    if not CURRENT_STACK:
        assert code == 2 and captured.err.count("\n") == 1
        assert captured.err.startswith("error: ") and \
            f"python export.py {run_copy} --quantize int8" in captured.err
        assert not os.path.exists(os.path.join(run_copy, "export"))
        return
    assert code == 0, captured.err
    report = json.load(open(os.path.join(run_copy, "export", "model.int8.json")))
    assert report["bytes_int8"] < report["bytes_float32"]
    assert abs(report["test_top1_int8"] - report["test_top1_float32"]) <= 0.1
    assert f"int8 {report['test_top1_int8']:.2%}" in captured.out
    metadata = deployed_model.open_model(os.path.join(run_copy, "export", "model.int8.onnx"))\
        .metadata
    assert metadata["precision"] == "int8"


@pytest.mark.slow
@pytest.mark.parametrize("damage, args, message", [
    ("not_a_run", [], "has no config.json"),
    ("no_weights", [], "has no best.weights.npz"),
    ("damaged", [], "is damaged"),
    (None, ["--format", "pt"], "invalid choice: 'pt'"),
    ("existing", [], "exists; add --force to replace it"),
    ("no_tf2onnx", [], "pip install -r requirements-export"),
])
def test_bad_input_is_one_error_line_and_touches_nothing(run_copy, tmp_path, capsys,
                                                         monkeypatch, damage, args, message):
    run = run_copy
    existing = os.path.join(run_copy, "export", "model.onnx")
    if damage == "not_a_run":
        run = str(tmp_path / "empty")
        os.makedirs(run)
    elif damage == "no_weights":
        os.remove(os.path.join(run_copy, run_dir.BEST_WEIGHTS))
    elif damage == "damaged":
        open(os.path.join(run_copy, run_dir.BEST_WEIGHTS), "wb").write(b"garbage")
    elif damage == "existing":
        os.makedirs(os.path.dirname(existing))
        open(existing, "wb").write(b"kept")
    elif damage == "no_tf2onnx":
        real = export.importlib.util.find_spec
        monkeypatch.setattr(export.importlib.util, "find_spec",
                            lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    before = sorted(os.listdir(run))
    assert export.main([run, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert sorted(os.listdir(run)) == before
    if damage == "existing":
        assert open(existing, "rb").read() == b"kept"
        assert os.listdir(os.path.dirname(existing)) == ["model.onnx"]
        assert export.main([run, "--force"]) == 0
        assert deployed_model.open_model(existing).class_names == list(CIFAR10_CLASSES)


@pytest.mark.slow
@pytest.mark.skipif(not OTHER, reason="OTHER_STACK_PYTHON is not set")
def test_cross_stack_the_other_stack_exports_a_run_trained_here(tiny_run, tmp_path):
    path = str(tmp_path / "other.onnx")
    result = subprocess.run([OTHER, os.path.join(ROOT, "export.py"), tiny_run[0],
                             "--output", path], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    x = images(50, seed=3)
    logits = deployed_model.open_model(path).run(x)["logits"]
    expected = keras_logits(tiny_run[0], x)
    np.testing.assert_allclose(logits, expected, atol=TOLERANCE, rtol=0)
    assert (logits.argmax(1) == expected.argmax(1)).all()
    assert f"Keras {keras_compat.keras_version()}," not in \
        deployed_model.open_model(path).metadata["exported_with"]
