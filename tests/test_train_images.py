"""train_images.py (class folders in, the same app out), --image-size, --init-from: the
settings, the bad input refused before anything is written, the position table's
interpolation, the weights taken, and a folder run from training to onnx_predict.py."""
import contextlib
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

import archives
from helpers import run_app
from vitcifar.commands import train as train_command
from vitcifar.config import config_file
from vitcifar.config.datasets import CIFAR10_CLASSES
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions
from vitcifar.config.views import override
from vitcifar.data import cifar, image_folders, sources
from vitcifar.errors import UsageError
from vitcifar.runs import init_from, run_dir


def write_folders(root, classes, per_class, size=32, seed=0, test=True):
    """DIR/train/CLASS/NNNN.png (and test/) of class-pattern images; returns DIR as str."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", max(2, per_class // 3))):
        if split == "test" and not test:
            continue
        labels = np.repeat(np.arange(len(classes)), count)
        images = archives.class_pattern_images(labels, rng)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = os.path.join(root, split, classes[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).resize((size, size)).save(os.path.join(folder, f"{i:04d}.png"))
    return str(root)


def train_images(*argv):
    """(exit code, stdout, stderr) of train_images.py's main, in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = train_command.main("images", [str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# --- settings ---------------------------------------------------------------------------------

def test_image_size_sets_the_grid_and_must_be_tiled_by_the_patches():
    images = override(PRESETS["tiny"], dataset="images", image_size=48).validate()
    assert images.image_size == 48 and images.num_classes == 0
    with pytest.raises(UsageError, match=r"^--image-size must be a positive whole number, "
                                         r"got 0$"):
        override(images, image_size=0).validate()
    with pytest.raises(UsageError, match=r"does not tile the 30x30 image .* or an "
                                         r"--image-size that is 8 plus a multiple of 8$"):
        override(images, image_size=30).validate()
    with pytest.raises(UsageError, match="are train_images.py's"):
        override(PRESETS["tiny"], image_size=48).validate()          # CIFAR stays 32
    assert override(images, folder_classes=3).num_classes == 3


def test_an_old_config_json_without_the_new_keys_opens_as_a_32_pixel_cifar_run():
    values = config_file.to_json(PRESETS["tiny"], RunOptions())
    for key in ("image_size", "test_fraction", "folder_classes"):
        del values["experiment"][key]
    config, _ = config_file.from_json(json.loads(json.dumps(values)))
    assert (config.dataset, config.image_size, config.num_classes) == ("cifar10", 32, 10)


def test_the_source_of_an_images_run_is_its_folder_at_its_size_and_split(tmp_path):
    folder = write_folders(tmp_path / "f", ["b", "a"], 6, size=40, test=False)
    config = override(PRESETS["tiny"], dataset="images", image_size=16, test_fraction=0.5,
                      seed=3).validate()
    with contextlib.redirect_stdout(io.StringIO()):
        data = sources.load(config, folder)
        again = image_folders.load(folder, image_size=16, test_fraction=0.5, seed=3)
    assert data.label_names == ["a", "b"] and data.x_train.shape[1:] == (16, 16, 3)
    np.testing.assert_array_equal(data.x_test, again.x_test)
    assert data.summary()["skipped_count"] == 0


# --- bad input: one error line, exit 2, nothing written ---------------------------------------

def bad_folders(root):
    """{case: (DIR, extra flags, what the error says)}."""
    one = write_folders(root / "one", ["only"], 3)
    case = write_folders(root / "case", ["Cat", "cat"], 3)
    empty = write_folders(root / "empty", ["a", "b"], 3)
    for name in os.listdir(os.path.join(empty, "train", "b")):
        os.remove(os.path.join(empty, "train", "b", name))
    differ = write_folders(root / "differ", ["a", "b"], 3)
    os.rename(os.path.join(differ, "test", "b"), os.path.join(differ, "test", "c"))
    good = write_folders(root / "good", ["a", "b"], 3)
    os.makedirs(root / "none" / "train")
    return {
        "missing": (str(root / "nowhere"), [], "does not exist"),
        "no class folders": (str(root / "none"), [], "class"),
        "one class": (one, [], "class"),
        "class without image": (empty, [], "no PNG, JPEG, GIF or BMP image"),
        "test classes differ": (differ, [], "test"),
        "classes differing in case": (case, [], "case"),
        "image size 0": (good, ["--image-size", 0], "--image-size must be a positive"),
        "image size not tiled": (good, ["--image-size", 30], "does not tile the 30x30"),
        "init-from not a run": (good, ["--init-from", good], "--init-from: "),
    }


def test_bad_input_is_one_error_line_with_exit_code_2_and_nothing_written(tmp_path):
    for name, (folder, extra, said) in bad_folders(tmp_path / "in").items():
        out = tmp_path / "runs" / name.replace(" ", "-")
        code, _, err = train_images(folder, "--preset", "tiny", "--output-dir", out, *extra)
        assert code == 2, (name, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and said in err, (name, err)
        assert not out.exists(), name


# --- --init-from --------------------------------------------------------------------------------

def test_the_position_table_is_interpolated_over_the_grid_and_keeps_the_class_row():
    table = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)       # class row + 2x2 grid, D=2
    np.testing.assert_array_equal(init_from.resize_positions(table, True, 2), table)
    bigger = init_from.resize_positions(table, True, 4)
    assert bigger.shape == (17, 2) and bigger.dtype == np.float32
    np.testing.assert_array_equal(bigger[0], table[0])
    grid = bigger[1:].reshape(4, 4, 2)
    np.testing.assert_array_equal(grid[0, 0], table[1])               # corners: the samples
    np.testing.assert_array_equal(grid[3, 3], table[4])
    np.testing.assert_allclose(grid[0, 1], 0.75 * table[1] + 0.25 * table[2])
    np.testing.assert_allclose(grid[1:3, 1:3].mean(axis=(0, 1)), table[1:].mean(axis=0))
    no_token = init_from.resize_positions(table[1:], False, 1)        # mean pooling, 1x1
    np.testing.assert_allclose(no_token[0], table[1:].mean(axis=0))


def saved_run(folder, config, label_names):
    """A run directory holding config.json, labels.json and best weights of a fresh model."""
    from vit_model import build_model
    from vitcifar.runs import checkpoint
    os.makedirs(folder)
    model = build_model(config)
    checkpoint.save_weights(model, os.path.join(folder, run_dir.BEST_WEIGHTS))
    run_dir.atomic_write_json(os.path.join(folder, run_dir.CONFIG),
                              config_file.to_json(config, RunOptions()))
    run_dir.atomic_write_json(os.path.join(folder, run_dir.LABELS), label_names)
    return model


def test_init_from_takes_all_but_a_new_head_and_resizes_the_position_table(tmp_path):
    from vit_model import build_model
    from vitcifar.runs.checkpoint import model_arrays
    source_config = override(PRESETS["tiny"], patch_stride=4).validate()      # 7x7 grid
    source = model_arrays(saved_run(str(tmp_path / "src"), source_config, CIFAR10_CLASSES))
    target_config = override(PRESETS["tiny"], dataset="images", image_size=48,
                             patch_stride=4, folder_classes=3).validate()      # 11x11
    model = build_model(target_config)
    fresh = model_arrays(model)
    opened = init_from.open_source(str(tmp_path / "src"), target_config)
    said = init_from.apply(model, opened, target_config, ["a", "b", "c"])
    assert "interpolated from 7x7 to 11x11" in said and "new: the classifier for 3" in said
    taken = model_arrays(model)
    for key, value in taken.items():
        if "/logits/" in key:
            np.testing.assert_array_equal(value, fresh[key], err_msg=key)
        elif "position_embedding" in key:
            np.testing.assert_allclose(value, init_from.resize_positions(source[key], True, 11))
        else:
            np.testing.assert_array_equal(value, source[key], err_msg=key)
    same = build_model(source_config)
    init_from.apply(same, init_from.open_source(str(tmp_path / "src"), source_config),
                    source_config, list(CIFAR10_CLASSES))
    for key, value in model_arrays(same).items():
        np.testing.assert_array_equal(value, source[key], err_msg=key)


def test_init_from_refuses_another_architecture(tmp_path):
    saved_run(str(tmp_path / "src"), PRESETS["tiny"], CIFAR10_CLASSES)
    with pytest.raises(UsageError, match=r"its model differs from this run's \(--num-layers "
                                         r"3, not 2"):
        init_from.open_source(str(tmp_path / "src"), override(PRESETS["tiny"], num_layers=3))


# --- end to end ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_folder_run_trains_resumes_predicts_exports_and_runs_in_onnx(tmp_path):
    folder = write_folders(tmp_path / "photos", ["ant", "bee", "cat"], 12, size=40)
    out = tmp_path / "run"
    first = run_app("train_images.py", folder, "--preset", "tiny", "--epochs", 1,
                    "--batch-size", 16, "--output-dir", out)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "3 classes, 36 training images" in first.stdout and "ant 12/4" in first.stdout
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "images" and results["data"]["skipped_count"] == 0
    resumed = run_app("train_images.py", folder, "--output-dir", out, "--epochs", 2)
    assert resumed.returncode == 0 and "1 of 2 epochs done" in resumed.stdout, resumed.stderr
    image = os.path.join(folder, "test", "bee", os.listdir(os.path.join(folder, "test", "bee"))[0])
    predicted = run_app("predict.py", out, image)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert {n for n in ("ant", "bee", "cat") if n in predicted.stdout} == {"ant", "bee", "cat"}
    evaluated = run_app("evaluate.py", out)
    assert evaluated.returncode == 0 and "results.json: the same" in evaluated.stdout
    exported = run_app("export.py", out, "--output", tmp_path / "m.onnx")
    if exported.returncode != 0 and "pip install" in exported.stderr:
        pytest.skip("the ONNX exporter is not installed on this stack")
    assert exported.returncode == 0, exported.stderr[-2000:]
    onnx = run_app("onnx_predict.py", tmp_path / "m.onnx", image)
    assert onnx.returncode == 0, onnx.stderr[-2000:]
    assert onnx.stdout.split(":")[1].split()[0] == predicted.stdout.split(":")[1].split()[0]


@pytest.mark.slow
def test_folders_and_the_archive_of_the_same_images_train_to_the_same_result(tmp_path):
    from vitcifar.backend import devices
    from vitcifar.training import trainer
    rng = np.random.default_rng(0)
    splits = {split: (archives.class_pattern_images(labels, rng), labels) for split, labels in
              (("train", np.repeat(np.arange(10), 8)), ("test", np.repeat(np.arange(10), 2)))}
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels)):
            path = tmp_path / "f" / split / CIFAR10_CLASSES[label] / f"{i:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path)
    archive = archives.write_tar(str(tmp_path / "a.tar.gz"),
                                 archives.files_from_arrays("cifar10", splits))
    tiny = override(PRESETS["tiny"], epochs=1, batch_size=16)
    with contextlib.redirect_stdout(io.StringIO()):
        folder = image_folders.load(str(tmp_path / "f"))
        runs = [trainer.run(config, RunOptions(output_dir=str(tmp_path / name),
                                               tensorboard=False), data, devices.detect())
                for name, config, data in (
                    ("folders", override(tiny, dataset="images", folder_classes=10), folder),
                    ("archive", tiny, cifar.load("cifar10", archive)))]
    assert runs[0]["test_top1"] == pytest.approx(runs[1]["test_top1"], abs=1e-6)
    assert runs[0]["best_val_top1"] == pytest.approx(runs[1]["best_val_top1"], abs=1e-6)
