"""image_folders: your own images from DIR/train/CLASS/ (and test/CLASS/) as CifarData's
arrays, read as predict.py reads them; what is skipped, warned about and refused."""
import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import archives
from helpers import ROOT
from vitcifar.data import cifar as cifar_data
from vitcifar.data import image_folders, prediction_io
from vitcifar.data.image_folders import ImageFolderError
from vitcifar.errors import UsageError


def save(path, image, **options):
    """Writes a PIL image (or a uint8 array) to `path`, making its folders."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    image.save(path, **options)
    return str(path)


def noise(seed, shape=(32, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, np.uint8)


def make_classes(root, counts, split="train", size=(32, 32)):
    """counts: {class: number of images}; PNGs of noise, each image different."""
    for c, (name, count) in enumerate(counts.items()):
        for i in range(count):
            save(os.path.join(root, split, name, f"{i:03d}.png"),
                 noise(1000 * (c + 1) + i, size + (3,)))
    return str(root)


def load_quietly(root, **kwargs):
    return image_folders.load(str(root), **{"workers": 2, **kwargs})


# --- every format and mode ---------------------------------------------------------------------

def palette_with_transparency():
    image = Image.fromarray(np.tile(np.arange(4, dtype=np.uint8), (32, 8)), "P")
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 250, 250, 250])
    return image


def exif_rotated(path):
    """A 64 wide, 32 high JPEG, white left half, black right half, whose EXIF orientation (6)
    says: turn 90 degrees clockwise to show, so the white half shows on top."""
    pixels = np.zeros((32, 64, 3), np.uint8)
    pixels[:, :32] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return save(path, pixels, exif=exif.tobytes(), quality=95)


def test_every_format_and_mode_reads_as_predict_reads_it(tmp_path, capsys):
    a = tmp_path / "train" / "a"
    expected = {
        "rgb.png": (save(a / "rgb.png", noise(0)), noise(0)),
        "rgb.bmp": (save(a / "rgb.bmp", noise(1)), noise(1)),
        "grey.gif": (save(a / "grey.gif", noise(2, (32, 32))),
                     np.repeat(noise(2, (32, 32))[..., None], 3, -1)),
        "rgba.png": (save(a / "rgba.png", noise(3, (32, 32, 4))), noise(3, (32, 32, 4))[..., :3]),
        "grey16.png": (save(a / "grey16.png", np.full((32, 32), 0x1234, np.uint16)),
                       np.full((32, 32, 3), 0x12, np.uint8)),
        "palette.png": (save(a / "palette.png", palette_with_transparency(),
                             transparency=bytes([0, 128, 255, 255])),
                        np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 250]],
                                 np.uint8)[np.tile(np.arange(4), (32, 8))]),
        "la.png": (save(a / "la.png", Image.new("LA", (32, 32), (77, 10))),
                   np.full((32, 32, 3), 77, np.uint8)),
    }
    save(a / "CMYK.JPG", Image.new("CMYK", (40, 24), (0, 255, 255, 0)), quality=95)   # red
    exif_rotated(a / "rotated.jpeg")
    save(a / "big.jpg", noise(4, (300, 200, 3)))
    make_classes(tmp_path, {"b": 2})
    with _no_warnings():
        data = load_quietly(tmp_path, test_fraction=0.1)
    assert data.skipped == [] and capsys.readouterr().out == ""
    assert data.train_counts == [9, 1] and data.test_counts == [1, 1]    # 10 in a, 2 in b
    for name, (path, pixels) in expected.items():
        np.testing.assert_array_equal(prediction_io.read_image(path), pixels, err_msg=name)
    red = prediction_io.read_image(str(a / "CMYK.JPG"))
    assert (np.abs(red.astype(int) - [255, 0, 0]) < 8).all()
    rotated = prediction_io.read_image(str(a / "rotated.jpeg")).astype(int)
    assert (rotated[:12] > 240).all() and (rotated[-12:] < 15).all()    # white on top
    assert prediction_io.read_image(str(a / "big.jpg"), 48).shape == (48, 48, 3)
    everything = np.concatenate([data.x_train, data.x_test])
    for path, pixels in expected.values():                # each image went into the arrays
        assert (everything == pixels).all(axis=(1, 2, 3)).sum() == 1


class _no_warnings:
    """Fails if Python warnings (Pillow's palette or decompression-bomb warnings) are
    emitted inside it."""
    def __enter__(self):
        import warnings
        self.caught = warnings.catch_warnings(record=True)
        self.log = self.caught.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc):
        self.caught.__exit__(*exc)
        assert [str(w.message) for w in self.log] == []


def test_images_of_any_size_are_resized_to_image_size(tmp_path):
    make_classes(tmp_path, {"x": 3, "y": 3}, size=(57, 41))
    make_classes(tmp_path, {"x": 1, "y": 1}, split="test", size=(20, 90))
    data = load_quietly(tmp_path, image_size=24)
    assert data.x_train.shape == (6, 24, 24, 3) and data.x_test.shape == (2, 24, 24, 3)
    assert data.x_train.dtype == np.uint8 and data.y_train.dtype == np.int64
    assert data.held_out is None and data.test_counts == [1, 1]


# --- what is skipped -----------------------------------------------------------------------------

def test_what_folders_hold_besides_images_is_skipped_silently(tmp_path, capsys):
    make_classes(tmp_path, {"cat": 3, "dog": 3})
    cat = tmp_path / "train" / "cat"
    for junk in ("README.txt", ".DS_Store", "Thumbs.db", "desktop.ini", "._000.png", "notes"):
        (cat / junk).write_bytes(b"\x00\x05\x16\x07 not an image")
    save(cat / ".hidden" / "x.png", noise(9))
    save(cat / "__MACOSX" / "y.png", noise(9))
    save(tmp_path / "train" / ".thumbnails" / "z.png", noise(9))        # not a class
    save(cat / "UPPER.JPG", noise(8))
    save(cat / "deeper" / "w.Png", noise(7))                             # subfolders count
    (tmp_path / "README.md").write_text("my data")
    data = load_quietly(tmp_path)
    assert capsys.readouterr().out == ""
    assert data.skipped == [] and data.label_names == ["cat", "dog"]
    assert data.train_counts[0] + data.test_counts[0] == 5


def test_an_undecodable_file_and_a_bomb_are_warned_about_once_and_counted(tmp_path, capsys):
    make_classes(tmp_path, {"cat": 4, "dog": 4})
    corrupt = tmp_path / "train" / "cat" / "corrupt.png"
    corrupt.write_bytes(open(tmp_path / "train" / "cat" / "000.png", "rb").read()[:60])
    bomb = save(tmp_path / "train" / "dog" / "bomb.png", noise(5, (40, 40, 3)))
    with _no_warnings():
        data = load_quietly(tmp_path, max_pixels=32 * 32)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        f"warning: {corrupt} is not a PNG, JPEG, GIF or BMP image; skipped",
        f"warning: {bomb} has 40x40 pixels, more than the limit of 1,024 (a decompression "
        "bomb?); shrink it; skipped"]
    assert [s.path for s in data.skipped] == [str(corrupt), bomb]
    assert data.summary()["skipped_count"] == 2 and len(data.y_train) + len(data.y_test) == 8
    assert "2 files skipped" in data.describe()


def test_pillows_own_bomb_limit_is_a_skip_too(tmp_path, monkeypatch, capsys):
    make_classes(tmp_path, {"cat": 2, "dog": 2}, size=(8, 8))
    save(tmp_path / "train" / "dog" / "big.png", noise(5, (40, 40, 3)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with _no_warnings():
        data = load_quietly(tmp_path, max_pixels=10 ** 6)       # capped at 2 x Pillow's
    assert [s.reason for s in data.skipped] == [
        "has more than 200 pixels (a decompression bomb?); shrink it"]
    assert capsys.readouterr().out.count("warning:") == 1


def symlink(target, link):
    try:
        os.symlink(target, link)
    except (OSError, NotImplementedError):              # Windows without the privilege
        pytest.skip("this system cannot make symbolic links here")


def test_links_out_of_dir_are_not_followed_links_inside_are(tmp_path, capsys):
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    make_classes(root, {"cat": 2, "dog": 2})
    make_classes(outside, {"cat": 3})
    cat = root / "train" / "cat"
    symlink(outside / "train" / "cat" / "000.png", cat / "link.png")
    symlink(outside / "train" / "cat", cat / "linked_folder")
    symlink(outside / "train" / "cat", root / "train" / "bird")       # a class folder
    symlink(root / "train" / "dog", cat / "inside")                     # followed
    symlink(cat, cat / "loop")                                          # not entered
    symlink(root / "gone.png", cat / "broken.png")
    data = load_quietly(root)
    assert data.label_names == ["cat", "dog"]
    assert data.train_counts[0] + data.test_counts[0] == 2 + 2             # cat's and dog's
    reasons = {os.path.basename(s.path): s.reason for s in data.skipped}
    assert set(reasons) == {"link.png", "linked_folder", "bird", "broken.png"}
    assert reasons["bird"] == f"is a link to outside {os.path.realpath(root)}, not followed"
    assert reasons["broken.png"] == "is a broken link"
    assert capsys.readouterr().out.count("warning: ") == 4


# --- bad input -----------------------------------------------------------------------------------

def case_clash(root):
    make_classes(root, {"Cat": 1, "cat": 1, "dog": 1})
    if len(os.listdir(root / "train")) < 3:
        pytest.skip("this file system ignores case")


def empty_class(root):
    make_classes(root, {"cat": 2, "dog": 0})
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "a.webp").write_bytes(b"RIFF")
    (root / "train" / "dog" / "README.txt").write_text("not named in the message")


def all_unreadable(root):
    make_classes(root, {"cat": 2})
    (root / "train" / "dog").mkdir()
    for name in ("a.png", "b.jpg"):
        (root / "train" / "dog" / name).write_bytes(b"junk")


@pytest.mark.parametrize("build, kwargs, message", [
    (lambda root: None, {}, r"data does not exist; pass a folder laid out as "
                            r"DIR/train/CLASS/\*.jpg \(and optionally DIR/test/CLASS/\)$"),
    (lambda root: root.write_text("x"), {}, "data is a file, not a folder"),
    (lambda root: make_classes(root, {"cat": 1, "dog": 1}, split="elsewhere"), {},
     r"data has no train/ folder: lay it out as DIR/train/CLASS/\*.jpg \(and optionally "
     r"DIR/test/CLASS/\); move its class folders \(elsewhere\) into .*data/train$"),
    (lambda root: (root / "train").mkdir(parents=True), {},
     "train has no class folders; put the images of each class in a folder of its own"),
    (lambda root: make_classes(root, {"cat": 3}), {},
     r"train has one class folder \(cat\); a classifier needs two or more"),
    (empty_class, {}, r"no PNG, JPEG, GIF or BMP image in .*train/dog \(it holds \.webp files: "
                      r"convert them to PNG or JPEG\); add images of that class, or remove "
                      r"the folder$"),
    (all_unreadable, {}, r"no readable image in .*train/dog \(see the warnings above\)"),
    (lambda root: make_classes(root, {"cat": 1, "dog": 1}) and make_classes(
        root, {"cat": 1, "bird": 1}, split="test"), {},
     r"test/ has other class folders than train/ \(only in train/: dog; only in test/: bird\); "
     r"give both the same class folders, or remove test/ to hold out part of train/$"),
    (case_clash, {}, r"train/ has class folders whose names differ only in case: Cat/cat "
                     r"\(Windows and macOS see one folder\); rename or merge them$"),
    (lambda root: make_classes(root, {"cat": 1, "dog": 1}), {},
     "has one image per class: too few to hold out a test set"),
    (lambda root: make_classes(root, {"cat": 2, "dog": 2}), {"image_size": 0},
     "--image-size must be a whole number of pixels, 1 or more; got 0"),
    (lambda root: make_classes(root, {"cat": 2, "dog": 2}), {"image_size": -3}, "got -3"),
    (lambda root: make_classes(root, {"cat": 2, "dog": 2}), {"test_fraction": 1.0},
     "--test-fraction must be above 0 and below 1, got 1.0"),
])
def test_bad_folders_and_settings_are_one_line_usage_errors(tmp_path, build, kwargs, message):
    root = tmp_path / "data"
    build(root)
    with pytest.raises(ImageFolderError, match=message) as raised:
        load_quietly(root, **kwargs)
    assert isinstance(raised.value, UsageError) and "\n" not in str(raised.value)


def test_a_train_folder_leading_outside_dir_is_refused(tmp_path):
    make_classes(tmp_path / "elsewhere", {"cat": 2, "dog": 2})
    (tmp_path / "data").mkdir()
    symlink(tmp_path / "elsewhere" / "train", tmp_path / "data" / "train")
    with pytest.raises(ImageFolderError, match="data/train leads outside .*; make it a real"):
        load_quietly(tmp_path / "data")


# --- labels, the held-out test set, the arrays -------------------------------------------------

def test_class_order_is_the_sorted_folder_names(tmp_path):
    make_classes(tmp_path, {"zebra": 2, "Ant": 2, "moose": 2, "10_x": 2})
    data = load_quietly(tmp_path, test_fraction=0.5)
    assert data.label_names == ["10_x", "Ant", "moose", "zebra"]       # as sorted() sorts
    first = prediction_io.read_image(str(tmp_path / "train" / "Ant" / "000.png"))
    where = np.flatnonzero((np.concatenate([data.x_train, data.x_test]) == first)
                           .all(axis=(1, 2, 3)))
    assert np.concatenate([data.y_train, data.y_test])[where].tolist() == [1]


def test_the_held_out_test_set_is_stratified_seeded_and_disjoint(tmp_path):
    make_classes(tmp_path, {"a": 10, "b": 5, "c": 2})

    def held_out(seed):
        data = load_quietly(tmp_path, test_fraction=0.2, seed=seed)
        return data, {(int(y), x.tobytes()) for x, y in zip(data.x_test, data.y_test)}

    data, test = held_out(3)
    assert data.test_counts == [2, 1, 1] and data.train_counts == [8, 4, 1]
    assert data.held_out == 0.2 and data.summary()["test"] == {"held_out_fraction": 0.2,
                                                                 "seed": 3}
    train = {(int(y), x.tobytes()) for x, y in zip(data.x_train, data.y_train)}
    assert not train & test and len(train | test) == 17
    assert held_out(3)[1] == test                                        # same seed, same set
    assert any(held_out(seed)[1] != test for seed in (4, 5))
    assert (np.diff(data.y_train) >= 0).all()                            # class by class


def test_a_class_split_depends_on_its_own_images_only(tmp_path):
    make_classes(tmp_path, {"a": 10, "b": 10})
    before = load_quietly(tmp_path, seed=1)
    save(tmp_path / "train" / "b" / "new.png", noise(99))
    after = load_quietly(tmp_path, seed=1)
    np.testing.assert_array_equal(before.x_test[before.y_test == 0],
                                  after.x_test[after.y_test == 0])


def test_folders_and_a_cifar_archive_of_the_same_pngs_give_identical_arrays(tmp_path):
    rng = np.random.default_rng(0)
    splits = {}
    for split, per_class in (("train", 3), ("test", 2)):
        labels = np.repeat(np.arange(10), per_class)                  # class by class
        images = archives.class_pattern_images(labels, rng)
        splits[split] = images, labels
        for i, (image, label) in enumerate(zip(images, labels)):
            name = archives.datasets.CIFAR10_CLASSES[label]
            save(tmp_path / "folders" / split / name / f"{i:04d}.png", image)
    archive = archives.write_tar(str(tmp_path / "tiny.tar.gz"),
                                 archives.files_from_arrays("cifar10", splits))
    from_folders = load_quietly(tmp_path / "folders")
    from_archive = cifar_data.load("cifar10", archive)
    for name in ("x_train", "y_train", "x_test", "y_test", "label_names"):
        np.testing.assert_array_equal(getattr(from_folders, name), getattr(from_archive, name),
                                      err_msg=name)


def test_threads_give_the_same_arrays_as_one(tmp_path):
    make_classes(tmp_path, {"a": 150, "b": 3}, size=(20, 30))
    one, two = (load_quietly(tmp_path, workers=n, image_size=16) for n in (1, 2))
    np.testing.assert_array_equal(one.x_train, two.x_train)
    np.testing.assert_array_equal(one.x_test, two.x_test)


def test_progress_shows_on_a_terminal_only(tmp_path, monkeypatch, capsys):
    make_classes(tmp_path, {"a": 2, "b": 2})
    load_quietly(tmp_path)
    assert capsys.readouterr().out == ""

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    load_quietly(tmp_path)
    assert terminal.getvalue().startswith("\rdecoding images: 4/4 (100%), ")
    assert terminal.getvalue().endswith("/s\n")


def test_summary_and_banner_line(tmp_path):
    make_classes(tmp_path, {"a": 4, "b": 2})
    make_classes(tmp_path, {"a": 1, "b": 1}, split="test")
    data = load_quietly(tmp_path)
    assert data.describe() == (f"{tmp_path}: 2 classes, 6 training images (2-4 per class), "
                               "2 test images (from test/), 32x32; 0 files skipped")
    assert data.summary() == {"root": str(tmp_path), "image_size": 32, "classes": ["a", "b"],
                              "train_counts": [4, 2], "test_counts": [1, 1], "test": "test/",
                              "skipped_count": 0, "skipped": []}


def test_predicts_errors_are_unchanged():
    with pytest.raises(prediction_io.UnreadableImage, match="^nowhere.png cannot be read "):
        prediction_io.read_images(["nowhere.png"], 32)


@pytest.mark.slow
def test_loading_imports_no_tensorflow(tmp_path):
    make_classes(tmp_path, {"a": 2, "b": 2})
    probe = (f"import sys; from vitcifar.data import image_folders; image_folders.load({str(tmp_path)!r}); "
             "print('tensorflow' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
