"""predict.py: top-k classes of image files, and its one-line errors."""
import os

import numpy as np
import pytest
import tensorflow as tf

from helpers import CPP_LOG, run_app
from vitcifar.commands import predict
from vitcifar.config import datasets
from vitcifar.runs import run_dir


@pytest.mark.slow
def test_predict_prints_top_k_classes_for_images_of_any_size(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    files = {"square.png": tf.io.encode_png(rng.integers(0, 256, (32, 32, 3), np.uint8)),
             "grey.png": tf.io.encode_png(rng.integers(0, 256, (57, 41, 1), np.uint8)),
             "photo.jpg": tf.io.encode_jpeg(rng.integers(0, 256, (90, 120, 3), np.uint8))}
    paths = []
    for name, encoded in files.items():
        (tmp_path / name).write_bytes(encoded.numpy())
        paths.append(str(tmp_path / name))
    result = run_app("predict.py", tiny_run[0], *paths, "--top-k", "3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not CPP_LOG.search(result.stderr), result.stderr       # a quiet start
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for path, line in zip(paths, lines):
        assert line.startswith(f"{path}: ")
        pairs = [entry.rsplit(" ", 1) for entry in line[len(path) + 2:].split(", ")]
        assert len(pairs) == 3
        assert all(name in datasets.CIFAR10_CLASSES for name, _ in pairs)
        probabilities = [float(p) for _, p in pairs]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 <= sum(probabilities) <= 1.02      # each rounded to 2 places


@pytest.mark.slow
def test_predict_caps_top_k_at_the_number_of_classes(tiny_run, tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())
    assert predict.main([tiny_run[0], str(image), "--top-k", "50"]) == 0
    assert capsys.readouterr().out.count(", ") == 9


@pytest.mark.slow
@pytest.mark.parametrize("make_args, message", [
    (lambda run, tmp: [str(tmp / "missing"), "x.png"], "does not exist"),
    (lambda run, tmp: [str(tmp), "x.png"], "has no config.json"),
    (lambda run, tmp: [run, str(tmp / "none.png")], "no image file"),
    (lambda run, tmp: (tmp / "t.png").write_text("text") and [run, str(tmp / "t.png")],
     "is not a PNG, JPEG, GIF or BMP image"),
    (lambda run, tmp: [run, "x.png", "--top-k", "0"], "--top-k must be 1 or more"),
])
def test_predict_bad_input_is_one_error_line(tiny_run, tmp_path, capsys, make_args, message):
    assert predict.main(make_args(tiny_run[0], tmp_path)) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and message in stderr


@pytest.mark.slow
def test_missing_weights_is_one_error_line_before_tensorflow_starts(run_copy):
    os.remove(os.path.join(run_copy, run_dir.BEST_WEIGHTS))
    for script in ("predict.py", "evaluate.py", "visualize.py"):
        args = (run_copy, "x.png") if script == "predict.py" else (run_copy,)
        result = run_app(script, *args, timeout=60)
        assert result.returncode == 2, (script, result.stderr)
        assert result.stderr == f"error: {run_copy} has no best.weights.npz: not a run " \
                                "directory, or a run stopped before its first epoch ended\n"


@pytest.mark.slow
def test_a_file_given_as_the_run_directory_is_called_a_file(run_copy, tmp_path):
    weights = os.path.join(run_copy, run_dir.BEST_WEIGHTS)
    for script in ("predict.py", "evaluate.py", "visualize.py"):
        args = (weights, "x.png") if script == "predict.py" else (weights,)
        result = run_app(script, *args, timeout=60)
        assert result.returncode == 2, (script, result.stderr)
        assert result.stderr == f"error: {weights} is a file, not a run directory: pass the " \
            f"folder that train_cifar10.py wrote (runs/...); its folder {run_copy} is one\n"

