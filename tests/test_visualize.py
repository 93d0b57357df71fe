"""Looking at a run: figures, attention rollout, predict.py, evaluate.py, TensorBoard logs.

One tiny run (overlapping 8x8 patches at stride 4: 49 patches) is trained once and shared by
the tests that need a trained model.
"""
import contextlib
import importlib.util
import io
import json
import os
import shutil
import struct
from dataclasses import replace

import numpy as np
import pytest
import tensorflow as tf

from conftest import run_app
from config import PRESETS
import evaluate
import label_names
import predict
import saved_run
import visualize

PATCHES_PER_SIDE = (32 - 8) // 4 + 1
END_OF_RUN_FIGURES = (visualize.CURVES, visualize.CONFUSION, visualize.PREDICTIONS,
                      visualize.ATTENTION)


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, which must come first after the signature."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def expected_size(name, num_classes=10):
    inches = visualize.confusion_inches(num_classes) if name == visualize.CONFUSION else \
        visualize.INCHES[name]
    return round(inches[0] * visualize.DPI), round(inches[1] * visualize.DPI)


def assert_figures(folder, names):
    for name in names:
        assert png_size(os.path.join(folder, name)) == expected_size(name), name


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cifar10_tar):
    """(run directory, what training printed) of a finished 2-epoch run on the tiny CIFAR-10
    archive, trained in this process (test_cli.py runs train_cifar10.py itself)."""
    import cifar_data
    import devices
    import training
    out = str(tmp_path_factory.mktemp("viz") / "run")
    config = replace(PRESETS["tiny"], epochs=2, batch_size=32, patch_stride=4,
                     data_dir=cifar10_tar, output_dir=out).validate()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        training.run(config, cifar_data.load("cifar10", cifar10_tar), devices.detect())
    return out, printed.getvalue()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run without its figures, for tests that change or redraw it."""
    copy = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], copy,
                    ignore=shutil.ignore_patterns("*.png", saved_run.TENSORBOARD))
    return copy


# --- attention rollout --------------------------------------------------------------------------

def test_rollout_of_a_hand_worked_two_block_example():
    first = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1.]])       # both heads alike
    second = np.array([[[0, 0, 1], [1, 0, 0], [0, 1, 0]],       # heads differ: mean
                       [[0, 0, 1], [0, 1, 0], [0, 0, 1.]]])     # [[0,0,1],[.5,.5,0],[0,.5,.5]]
    # + identity, rows renormalised: A1 = [[.5,.5,0],[0,1,0],[0,0,1]],
    # A2 = [[.5,0,.5],[.25,.75,0],[0,.25,.75]]; (A2 @ A1)[0] = [.25, .25, .5]; without the
    # class token's own .25 and renormalised: [1/3, 2/3].
    rollout = visualize.attention_rollout([np.stack([first, first])[None], second[None]])
    np.testing.assert_allclose(rollout, [[1 / 3, 2 / 3]])


def test_rollout_without_a_class_token_averages_every_token_row():
    """Mean pooling: all T tokens are patches, and the map is the mean of the rolled-out rows."""
    first = np.array([[[0, 1], [0, 1.]], [[1, 0], [0, 1.]]])   # two heads: mean [[.5,.5],[0,1]]
    second = np.array([[[1, 0], [1, 0.]]])                      # one head
    # + identity, rows renormalised: A1 = [[.75,.25],[0,1]], A2 = [[1,0],[.5,.5]];
    # A2 @ A1 = [[.75,.25],[.375,.625]], whose mean row is [.5625, .4375].
    attentions = [first[None], second[None]]
    np.testing.assert_allclose(visualize.attention_rollout(attentions, class_token=False),
                               [[9 / 16, 7 / 16]])
    # the class token's reading of the same weights: row 0 without token 0, renormalised
    np.testing.assert_allclose(visualize.attention_rollout(attentions), [[1.0]])


def test_rollout_of_a_mean_pooling_model_covers_all_its_patches():
    from vit_model import VisionTransformer
    model = VisionTransformer(10, patch_size=8, patch_stride=8, num_layers=2, embedding_dim=16,
                              num_heads=2, mlp_hidden_dim=8, head_units=(), pooling="mean")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    attentions = [np.asarray(w) for w in model.attention_weights(images)]
    assert [w.shape for w in attentions] == [(3, 2, 16, 16)] * 2      # 16 patches, no class token
    expected = visualize.patches_to_pixels(
        visualize.attention_rollout(attentions, class_token=False), 8, 8)
    maps = visualize.model_attention_maps(model, images)
    np.testing.assert_allclose(maps, expected)
    np.testing.assert_allclose(maps.reshape(3, 4, 8, 4, 8)[:, :, 0, :, 0].sum(axis=(1, 2)), 1,
                               rtol=1e-6)                       # one pixel per patch: sums to 1


def test_rollout_of_the_trained_model_is_a_distribution_over_its_patches(tiny_run,
                                                                        cifar10_files):
    run = saved_run.open_run(tiny_run[0])
    model = saved_run.load_model(run)
    images = cifar10_files[1]["test"][0][:5]
    attentions = [np.asarray(w) for w in model.attention_weights(images)]
    assert [w.shape for w in attentions] == [(5, 4, 50, 50)] * 2
    rollout = visualize.attention_rollout(attentions)
    assert rollout.shape == (5, PATCHES_PER_SIDE ** 2)
    assert (rollout >= 0).all()
    np.testing.assert_allclose(rollout.sum(axis=1), 1, rtol=1e-6)
    maps = visualize.model_attention_maps(model, images)
    assert maps.shape == (5, 32, 32) and (maps > 0).all()


def test_patch_weights_spread_over_pixels_averaging_overlaps():
    # 2x2 patches at stride 1 on a 3x3 image: corners see one patch, edges two, centre four.
    pixels = visualize.patches_to_pixels(np.array([[1., 2, 3, 4]]), 2, 1, image_size=3)
    np.testing.assert_allclose(pixels[0], [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]])
    # Without overlap, each pixel carries its patch's weight.
    pixels = visualize.patches_to_pixels(np.arange(16.)[None], 8, 8)
    np.testing.assert_array_equal(pixels[0, ::8, ::8], np.arange(16.).reshape(4, 4))
    # A stride above the patch size leaves pixels no patch covers: 0.
    pixels = visualize.patches_to_pixels(np.ones((1, 9)), 1, 2, image_size=5)
    np.testing.assert_array_equal(pixels[0, 1], 0)
    with pytest.raises(ValueError, match="make 49"):
        visualize.patches_to_pixels(np.ones((1, 16)), 8, 4)


# --- figures -----------------------------------------------------------------------------------

def test_a_run_ends_with_its_figures_class_names_and_tensorboard_logs(tiny_run):
    out, stdout = tiny_run
    assert_figures(out, END_OF_RUN_FIGURES)
    assert "Figures: training_curves.png" in stdout
    with open(os.path.join(out, saved_run.LABELS)) as handle:
        assert json.load(handle) == list(label_names.CIFAR10)
    logs = os.path.join(out, saved_run.TENSORBOARD)
    if importlib.util.find_spec("tensorboard"):
        for split in ("train", "validation"):
            events = os.listdir(os.path.join(logs, split))
            assert any(name.startswith("events.out.tfevents") for name in events), split
    else:                           # TensorFlow 2.21 does not install it
        assert "warning: the tensorboard package is not installed" in stdout
        assert not os.path.exists(logs)


def test_visualize_redraws_every_figure_and_an_image_as_patches(run_copy, capsys):
    assert visualize.main([run_copy, "--patches", "3"]) == 0
    assert_figures(run_copy, END_OF_RUN_FIGURES + (visualize.PATCHES,))
    assert "Test image 3 as patches" in capsys.readouterr().out


def test_an_interrupted_run_gets_the_figures_it_has_data_for(run_copy, tmp_path):
    """An interrupted run has no results.json, and history.csv rows only for whole epochs
    (none at all when it stopped in the first epoch: then there are no curves to draw)."""
    history = visualize.read_history(os.path.join(run_copy, saved_run.HISTORY))
    first_epoch = {key: values[:1] for key, values in history.items()}
    curves = visualize.plot_training_curves(first_epoch, str(tmp_path / visualize.CURVES))
    assert png_size(curves) == expected_size(visualize.CURVES)

    for name in (saved_run.HISTORY, saved_run.RESULTS):
        os.remove(os.path.join(run_copy, name))
    assert visualize.read_history(os.path.join(run_copy, saved_run.HISTORY)) == {}
    assert visualize.main([run_copy]) == 0
    assert_figures(run_copy, END_OF_RUN_FIGURES[1:] + (visualize.PATCHES,))
    assert not os.path.exists(os.path.join(run_copy, visualize.CURVES))


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    counts = visualize.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


# --- predict.py and evaluate.py -----------------------------------------------------------------

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
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    for path, line in zip(paths, lines):
        assert line.startswith(f"{path}: ")
        pairs = [entry.rsplit(" ", 1) for entry in line[len(path) + 2:].split(", ")]
        assert len(pairs) == 3
        assert all(name in label_names.CIFAR10 for name, _ in pairs)
        probabilities = [float(p) for _, p in pairs]
        assert probabilities == sorted(probabilities, reverse=True)
        assert 0 <= sum(probabilities) <= 1.02      # each rounded to 2 places


def test_predict_caps_top_k_at_the_number_of_classes(tiny_run, tmp_path, capsys):
    image = tmp_path / "x.png"
    image.write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())
    assert predict.main([tiny_run[0], str(image), "--top-k", "50"]) == 0
    assert capsys.readouterr().out.count(", ") == 9


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


def test_missing_weights_is_one_error_line_before_tensorflow_starts(run_copy):
    os.remove(os.path.join(run_copy, saved_run.BEST_WEIGHTS))
    for script in ("predict.py", "evaluate.py", "visualize.py"):
        args = (run_copy, "x.png") if script == "predict.py" else (run_copy,)
        result = run_app(script, *args, timeout=60)
        assert result.returncode == 2, (script, result.stderr)
        assert result.stderr == f"error: {run_copy} has no best.weights.h5: not a run " \
                                "directory, or a run stopped before its first epoch ended\n"


def test_evaluate_reproduces_the_test_accuracy_in_results_json(tiny_run, cifar10_tar, capsys):
    run = saved_run.open_run(tiny_run[0])
    assert evaluate.main([tiny_run[0], "--data-dir", cifar10_tar]) == 0
    lines = capsys.readouterr().out.splitlines()
    stored = run.results()
    assert f"top-1 {stored['test_top1']:.2%}, top-5 {stored['test_top5']:.2%}" in lines[-2]
    assert lines[-1] == "results.json: the same"


def test_a_mixup_run_trains_on_soft_labels_and_evaluates_the_same(tmp_path, cifar10_tar):
    """Soft labels switch the loss and metrics to their categorical forms; evaluate.py must
    encode the test labels the same way."""
    import cifar_data
    import devices
    import training
    config = replace(PRESETS["tiny"], epochs=1, batch_size=32, mixup_alpha=0.4,
                     cutmix_alpha=1.0, data_dir=cifar10_tar,
                     output_dir=str(tmp_path / "mix")).validate()
    with contextlib.redirect_stdout(io.StringIO()):
        results = training.run(config, cifar_data.load("cifar10", cifar10_tar),
                               devices.detect())
    run = saved_run.open_run(config.output_dir)
    x_test, y_test = saved_run.load_test_data(run)
    again = evaluate.evaluate_run(run, x_test, y_test, batch_size=64)
    assert again["test_top1"] == pytest.approx(results["test_top1"], abs=1e-6)
    assert again["test_loss"] == pytest.approx(results["test_loss"], rel=1e-4)
