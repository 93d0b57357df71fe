"""visualize.py: attention rollout, the figures of a run and their sizes, redrawing them.

One tiny run (overlapping 8x8 patches at stride 4: 49 patches, the tiny_run fixture) is trained
once and shared by the tests that need a trained model.
"""
import importlib.util
import json
import os

import numpy as np
import pytest

from helpers import assert_figures, expected_size, png_size
from vit_model import build_model
from vitcifar.analysis import figures
from vitcifar.commands import visualize
from vitcifar.config import datasets
from vitcifar.runs import checkpoint, run_dir

PATCHES_PER_SIDE = (32 - 8) // 4 + 1
END_OF_RUN_FIGURES = run_dir.FIGURES


# --- attention rollout --------------------------------------------------------------------------

def test_rollout_of_a_hand_worked_two_block_example():
    first = np.array([[0, 1, 0], [0, 1, 0], [0, 0, 1.]])       # both heads alike
    second = np.array([[[0, 0, 1], [1, 0, 0], [0, 1, 0]],       # heads differ: mean
                       [[0, 0, 1], [0, 1, 0], [0, 0, 1.]]])     # [[0,0,1],[.5,.5,0],[0,.5,.5]]
    # + identity, rows renormalised: A1 = [[.5,.5,0],[0,1,0],[0,0,1]],
    # A2 = [[.5,0,.5],[.25,.75,0],[0,.25,.75]]; (A2 @ A1)[0] = [.25, .25, .5]; without the
    # class token's own .25 and renormalised: [1/3, 2/3].
    rollout = figures.attention_rollout([np.stack([first, first])[None], second[None]])
    np.testing.assert_allclose(rollout, [[1 / 3, 2 / 3]])


def test_rollout_without_a_class_token_averages_every_token_row():
    """Mean pooling: all T tokens are patches, and the map is the mean of the rolled-out rows."""
    first = np.array([[[0, 1], [0, 1.]], [[1, 0], [0, 1.]]])   # two heads: mean [[.5,.5],[0,1]]
    second = np.array([[[1, 0], [1, 0.]]])                      # one head
    # + identity, rows renormalised: A1 = [[.75,.25],[0,1]], A2 = [[1,0],[.5,.5]];
    # A2 @ A1 = [[.75,.25],[.375,.625]], whose mean row is [.5625, .4375].
    attentions = [first[None], second[None]]
    np.testing.assert_allclose(figures.attention_rollout(attentions, class_token=False),
                               [[9 / 16, 7 / 16]])
    # the class token's reading of the same weights: row 0 without token 0, renormalised
    np.testing.assert_allclose(figures.attention_rollout(attentions), [[1.0]])


def test_rollout_of_a_mean_pooling_model_covers_all_its_patches():
    from vit_model import VisionTransformer
    model = VisionTransformer(10, patch_size=8, patch_stride=8, num_layers=2, embedding_dim=16,
                              num_heads=2, mlp_hidden_dim=8, head_units=(), pooling="mean")
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    attentions = [np.asarray(w) for w in model.attention_weights(images)]
    assert [w.shape for w in attentions] == [(3, 2, 16, 16)] * 2      # 16 patches, no class token
    expected = figures.patches_to_pixels(
        figures.attention_rollout(attentions, class_token=False), 8, 8)
    maps = figures.model_attention_maps(model, images)
    np.testing.assert_allclose(maps, expected)
    np.testing.assert_allclose(maps.reshape(3, 4, 8, 4, 8)[:, :, 0, :, 0].sum(axis=(1, 2)), 1,
                               rtol=1e-6)                       # one pixel per patch: sums to 1


@pytest.mark.slow
def test_rollout_of_the_trained_model_is_a_distribution_over_its_patches(tiny_run,
                                                                        cifar10_files):
    run = run_dir.open_run(tiny_run[0])
    model = build_model(run.config)
    checkpoint.load_best_weights(run, model)
    images = cifar10_files[1]["test"][0][:5]
    attentions = [np.asarray(w) for w in model.attention_weights(images)]
    assert [w.shape for w in attentions] == [(5, 4, 50, 50)] * 2
    rollout = figures.attention_rollout(attentions)
    assert rollout.shape == (5, PATCHES_PER_SIDE ** 2)
    assert (rollout >= 0).all()
    np.testing.assert_allclose(rollout.sum(axis=1), 1, rtol=1e-6)
    maps = figures.model_attention_maps(model, images)
    assert maps.shape == (5, 32, 32) and (maps > 0).all()


def test_patch_weights_spread_over_pixels_averaging_overlaps():
    # 2x2 patches at stride 1 on a 3x3 image: corners see one patch, edges two, centre four.
    pixels = figures.patches_to_pixels(np.array([[1., 2, 3, 4]]), 2, 1, image_size=3)
    np.testing.assert_allclose(pixels[0], [[1, 1.5, 2], [2, 2.5, 3], [3, 3.5, 4]])
    # Without overlap, each pixel carries its patch's weight.
    pixels = figures.patches_to_pixels(np.arange(16.)[None], 8, 8)
    np.testing.assert_array_equal(pixels[0, ::8, ::8], np.arange(16.).reshape(4, 4))
    # A stride above the patch size leaves pixels no patch covers: 0.
    pixels = figures.patches_to_pixels(np.ones((1, 9)), 1, 2, image_size=5)
    np.testing.assert_array_equal(pixels[0, 1], 0)
    with pytest.raises(ValueError, match="make 49"):
        figures.patches_to_pixels(np.ones((1, 16)), 8, 4)


# --- figures -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_ends_with_its_figures_class_names_and_tensorboard_logs(tiny_run):
    out, stdout = tiny_run
    assert_figures(out, END_OF_RUN_FIGURES)
    assert "Figures: training_curves.png" in stdout
    with open(os.path.join(out, run_dir.LABELS)) as handle:
        assert json.load(handle) == list(datasets.CIFAR10_CLASSES)
    logs = os.path.join(out, run_dir.TENSORBOARD)
    if importlib.util.find_spec("tensorboard"):
        for split in ("train", "validation"):
            events = os.listdir(os.path.join(logs, split))
            assert any(name.startswith("events.out.tfevents") for name in events), split
    else:                           # TensorFlow 2.21 does not install it
        assert "warning: the tensorboard package is not installed" in stdout
        assert not os.path.exists(logs)


@pytest.mark.slow
def test_visualize_redraws_every_figure_and_an_image_as_patches(run_copy, capsys):
    assert visualize.main([run_copy, "--patches", "3"]) == 0
    assert_figures(run_copy, END_OF_RUN_FIGURES + (run_dir.PATCHES,))
    assert "Test image 3 as patches" in capsys.readouterr().out


@pytest.mark.slow
def test_an_interrupted_run_gets_the_figures_it_has_data_for(run_copy, tmp_path):
    """An interrupted run has no results.json, and history.csv rows only for whole epochs
    (none at all when it stopped in the first epoch: then there are no curves to draw)."""
    history = run_dir.read_history(os.path.join(run_copy, run_dir.HISTORY))
    first_epoch = {key: values[:1] for key, values in history.items()}
    curves = figures.plot_training_curves(first_epoch, str(tmp_path / run_dir.CURVES))
    assert png_size(curves) == expected_size(run_dir.CURVES)

    for name in (run_dir.HISTORY, run_dir.RESULTS):
        os.remove(os.path.join(run_copy, name))
    assert run_dir.read_history(os.path.join(run_copy, run_dir.HISTORY)) == {}
    assert visualize.main([run_copy]) == 0
    assert_figures(run_copy, END_OF_RUN_FIGURES[1:] + (run_dir.PATCHES,))
    assert not os.path.exists(os.path.join(run_copy, run_dir.CURVES))


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    counts = figures.confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


# --- predict.py and evaluate.py -----------------------------------------------------------------


