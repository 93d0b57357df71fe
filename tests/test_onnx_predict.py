"""onnx_predict.py: an exported model classifies image files without TensorFlow, as
predict.py does (prediction_io reads the images and writes the lines of both); its
one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, run_app
from vitcifar.commands import export, onnx_predict
from vitcifar.config.datasets import CIFAR10_CLASSES
from vitcifar.data import prediction_io
from vitcifar.deploy import deployed_model


def write_images(folder):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 256, (57, 41), np.uint8)).save(folder / "b.png")
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), np.uint8)).save(folder / "c.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20, 4), np.uint8)).save(folder / "d.gif")
    return sorted(str(folder / name) for name in os.listdir(folder))


def test_images_become_32x32_rgb_uint8_whatever_their_mode(tmp_path):
    paths = write_images(tmp_path)
    assert prediction_io.image_paths([str(tmp_path)]) == paths
    read = prediction_io.read_images(paths, 32)
    assert read.shape == (4, 32, 32, 3) and read.dtype == np.uint8
    square = np.asarray(Image.open(paths[0]))
    np.testing.assert_array_equal(read[0], square)        # 32x32 RGB is kept as it is
    grey = read[1]
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_report_lines_and_json_agree():
    probabilities = prediction_io.softmax(np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]))
    names = ["x", "y", "z"]
    lines = prediction_io.report(["p", "q"], probabilities, names, 2).splitlines()
    assert lines == ["p: y 0.67, z 0.24", "q: x 0.91, y 0.05"]
    parsed = json.loads(prediction_io.report(["p", "q"], probabilities, names, 9, True))
    assert [entry["class"] for entry in parsed[0]["top"]] == ["y", "z", "x"]
    assert parsed[1]["top"][0] == {"class": "x", "label": 0,
                                   "probability": round(float(probabilities[1, 0]), 6)}


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("export") / "model.onnx")
    assert export.main([tiny_run[0], "--output", path]) == 0
    return path


@pytest.mark.slow
def test_onnx_predict_prints_what_predict_prints_without_tensorflow(tiny_run, exported,
                                                                    tmp_path):
    paths = write_images(tmp_path)
    probe = ("import runpy, sys; sys.argv = sys.argv[1:]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "finally:\n    print('tensorflow' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, os.path.join(ROOT, "onnx_predict.py"),
                             exported, str(tmp_path), "--top", "3"],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0 and result.stderr == "False\n", result.stderr
    expected = run_app("predict.py", tiny_run[0], *paths, "--top-k", "3")
    assert expected.returncode == 0, expected.stderr[-2000:]
    assert result.stdout == expected.stdout and len(result.stdout.splitlines()) == 4


@pytest.mark.slow
def test_onnx_predict_json(exported, tmp_path, capsys):
    paths = write_images(tmp_path)
    assert onnx_predict.main([exported, paths[0], "--json", "--top", "10"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["image"] == paths[0]
    assert sorted(t["class"] for t in entry["top"]) == sorted(CIFAR10_CLASSES)
    assert sum(t["probability"] for t in entry["top"]) == pytest.approx(1, abs=1e-4)


def onnx_without_class_names(path):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.UINT8, None)],
                              [helper.make_tensor_value_info("logits", TensorProto.UINT8, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


@pytest.mark.slow
@pytest.mark.parametrize("case, message", [
    ("foreign", "is not a model exported by this app"),
    ("not_onnx", "is not an ONNX model ONNX Runtime can load"),
    ("not_an_image", "is not a PNG, JPEG, GIF or BMP image"),
    ("no_model", "no ONNX file"),
    ("directml", "has no directml execution provider"),
    ("top", "--top-k must be 1 or more"),
])
def test_bad_input_is_one_error_line(exported, tmp_path, case, message):
    model, image, extra = exported, str(tmp_path / "a.png"), []
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    if case == "foreign":
        model = str(tmp_path / "foreign.onnx")
        onnx_without_class_names(model)
    elif case == "not_onnx":
        model = str(tmp_path / "text.onnx")
        open(model, "w").write("not a model")
    elif case == "not_an_image":
        image = str(tmp_path / "text.png")
        open(image, "w").write("text")
    elif case == "no_model":
        model = str(tmp_path / "none.onnx")
    elif case == "directml":
        if "DmlExecutionProvider" in deployed_model.import_onnxruntime().get_available_providers():
            pytest.skip("this ONNX Runtime has the DirectML provider")
        extra = ["--provider", "directml", "--device-id", "1"]
    elif case == "top":
        extra = ["--top", "0"]
    result = run_app("onnx_predict.py", model, image, *extra, timeout=120)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
