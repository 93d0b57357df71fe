"""Your own images as uint8 numpy arrays: a folder of class folders, the layout of
keras.utils.image_dataset_from_directory and torchvision's ImageFolder.

    DIR/train/CLASS/*.png|jpg|jpeg|gif|bmp      one folder per class, any depth below it
    DIR/test/CLASS/...                          optional: the same class folders

Class names are the folder names, sorted (label i is the i-th name). Without test/, a seeded
share of each class's readable images (test_fraction, at least one of a class of two or
more, never all of it) is held out as the test set, each class by its own seeded draw, so
that adding images to one class leaves the other classes' split alone.

Every image is read by prediction_io.read_image, as predict.py reads it (any size and mode,
turned upright by its EXIF orientation, resized directly to image_size x image_size; its
docstring says how and why), once, into one uint8 array, in parallel threads (Pillow
releases the GIL while it decodes and resizes), with a progress line on a terminal.

What a real folder holds besides images is skipped silently: files without an image suffix
(README.txt, Thumbs.db, desktop.ini), hidden files and folders (.DS_Store, ._x.jpg), and the
folders macOS archives and NAS indexers add (__MACOSX, @eaDir). Suffixes are matched in any
case (.JPG). A file with an image suffix that cannot be decoded, or has more pixels than
max_pixels (a decompression bomb), a broken link, and a link to a file or folder outside DIR
(never followed; links inside DIR are) are skipped with one `warning:` line each, and listed
in the result's `skipped`. Bad input raises ImageFolderError (a UsageError: one `error:`
line, exit code 2) saying what to do. numpy and Pillow only: no TensorFlow.
"""
from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from vitcifar.config.datasets import FOLDER_TEST_FRACTION
from vitcifar.data import prediction_io
from vitcifar.data.cifar import CifarData
from vitcifar.errors import UsageError

SPLITS = ("train", "test")
JUNK_FOLDERS = {"__macosx", "@eadir", "$recycle.bin", "system volume information"}
OTHER_IMAGE_SUFFIXES = {".webp", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jfif", ".jpe",
                        ".ico", ".svg", ".psd", ".dng", ".cr2", ".nef", ".arw"}   # not read
CHUNK = 64                    # images per thread task
LAYOUT = "DIR/train/CLASS/*.jpg (and optionally DIR/test/CLASS/)"


class ImageFolderError(UsageError):
    """The folder cannot be trained on as it is; the message says what to change."""


@dataclass
class Skipped:
    path: str                 # as found under the DIR given
    reason: str               # "is not a PNG, JPEG, GIF or BMP image", ...


@dataclass
class ImageFolderData(CifarData):
    """CifarData's arrays (x_* (N, S, S, 3) uint8, y_* (N,) int64, label_names) and how they
    were had; counts are per class, in label order."""
    root: str
    image_size: int                     # S
    train_counts: List[int]
    test_counts: List[int]
    held_out: Optional[float]           # the test fraction taken from train/; None: test/ used
    seed: int
    skipped: List[Skipped] = field(default_factory=list)

    def summary(self) -> dict:
        """What results.json records about the data."""
        return {"root": self.root, "image_size": self.image_size, "classes": self.label_names,
                "train_counts": self.train_counts, "test_counts": self.test_counts,
                "test": "test/" if self.held_out is None else
                {"held_out_fraction": self.held_out, "seed": self.seed},
                "skipped_count": len(self.skipped),
                "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped]}

    def describe(self) -> str:
        """One banner line: classes, images, where the test set came from, skipped files."""
        test = "from test/" if self.held_out is None else \
            f"{self.held_out:.0%} of train/ held out, seed {self.seed}"
        return (f"{self.root}: {len(self.label_names)} classes, {len(self.y_train):,} training "
                f"images ({min(self.train_counts):,}-{max(self.train_counts):,} per class), "
                f"{len(self.y_test):,} test images ({test}), "
                f"{self.image_size}x{self.image_size}; {len(self.skipped):,} "
                f"file{'' if len(self.skipped) == 1 else 's'} skipped")


def load(root: str, image_size: int = 32, test_fraction: float = FOLDER_TEST_FRACTION,
         seed: int = 0, max_pixels: Optional[int] = None,
         workers: Optional[int] = None) -> ImageFolderData:
    """Reads DIR (`root`) as the module docstring says. max_pixels: width x height above
    which a file is skipped (None: Pillow's limit); workers: decoding threads (None: one
    per core, at most 4)."""
    _check_numbers(image_size, test_fraction, seed)
    names, files, skipped = _list(root)
    paths = [path for split in SPLITS for path in files[split][0]]
    images, failed = _decode(paths, image_size, max_pixels, workers)
    skipped += [Skipped(error.path, error.reason) for error in failed.values()]
    for entry in skipped:
        print(f"warning: {entry.path} {entry.reason}; skipped")
    readable = np.array([i not in failed for i in range(len(paths))], bool)
    arrays, start = {}, 0
    for split in SPLITS:
        split_paths, labels = files[split]
        ok = readable[start:start + len(split_paths)]
        arrays[split] = images[start:start + len(split_paths)][ok], labels[ok]
        start += len(split_paths)
        _check_readable(root, split, names, labels, ok)
    held_out = None
    if not files["test"][0]:
        held_out = test_fraction
        train, test = _hold_out(arrays["train"][1], len(names), test_fraction, seed)
        if not len(test):
            raise ImageFolderError(f"{root} has one image per class: too few to hold out "
                                   "a test set; add images, or a test/ folder")
        x, y = arrays["train"]
        arrays = {"train": (x[train], y[train]), "test": (x[test], y[test])}
    counts = {split: np.bincount(arrays[split][1], minlength=len(names)).tolist()
              for split in SPLITS}
    return ImageFolderData(*arrays["train"], *arrays["test"], names, root, image_size,
                           counts["train"], counts["test"], held_out, seed, skipped)


def _check_numbers(image_size: int, test_fraction: float, seed: int) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ImageFolderError(f"--image-size must be a whole number of pixels, 1 or more; "
                               f"got {image_size}")
    if not 0 < test_fraction < 1:
        raise ImageFolderError(f"--test-fraction must be above 0 and below 1, got "
                               f"{test_fraction}")
    if seed < 0:
        raise ImageFolderError(f"--seed must be 0 or more, got {seed}")


# --- finding the files -------------------------------------------------------------------------

Listing = Dict[str, Tuple[List[str], np.ndarray]]   # split -> (paths, (N,) int64 labels)


def _list(root: str) -> Tuple[List[str], Listing, List[Skipped]]:
    """(class names, the image files of each split with their labels, links skipped);
    ImageFolderError for a layout that cannot be trained on."""
    if not os.path.isdir(root):
        raise ImageFolderError(
            f"{root} is a file, not a folder; pass a folder laid out as {LAYOUT}"
            if os.path.exists(root) else f"{root} does not exist; pass a folder laid out as "
                                         f"{LAYOUT}")
    walker = _Walker(root)
    classes = {}
    for split in SPLITS:
        folder = os.path.join(root, split)
        if os.path.isdir(folder) and walker.outside(folder):
            raise ImageFolderError(f"{folder} leads outside {root}; make it a real folder "
                                   "in it")
        classes[split] = walker.folders(folder) if os.path.isdir(folder) else {}
    train = os.path.join(root, "train")
    if not os.path.isdir(train):
        raise _no_train_error(root, walker)
    names = sorted(classes["train"])
    _check_classes(train, names, sorted(classes["test"]))
    files = {}
    for split in SPLITS:
        paths, labels, empty = [], [], []
        for label, name in enumerate(names if classes[split] else []):
            found = walker.images(classes[split][name])
            if not found:
                empty.append(classes[split][name])
            paths += found
            labels += [label] * len(found)
        if empty:
            raise _no_images_error(empty)
        files[split] = paths, np.array(labels, np.int64)
    return names, files, walker.skipped


class _Walker:
    """Lists folders and image files under DIR, leaving out junk, hidden entries and links
    that lead outside DIR."""

    def __init__(self, root: str):
        self.root_real = os.path.realpath(root)
        self.skipped: List[Skipped] = []

    def outside(self, path: str) -> bool:
        real = os.path.realpath(path)
        try:
            return os.path.commonpath([real, self.root_real]) != self.root_real
        except ValueError:                  # another drive (Windows)
            return True

    def entries(self, folder: str) -> List[os.DirEntry]:
        """The entries of `folder` worth a look, by name; a link to outside DIR or a broken
        one, that could be an image or a folder of them, is noted in `skipped`."""
        kept = []
        try:
            with os.scandir(folder) as found:
                listed = sorted(found, key=lambda e: e.name)
        except OSError as error:
            self.skipped.append(Skipped(folder, f"cannot be listed ({error.strerror})"))
            return []
        for entry in listed:
            if entry.name.startswith(".") or entry.name.lower() in JUNK_FOLDERS:
                continue
            if entry.is_symlink():
                relevant = entry.is_dir() or _is_image_name(entry.name)
                if relevant and self.outside(entry.path):
                    self.skipped.append(Skipped(entry.path, "is a link to outside "
                                                f"{self.root_real}, not followed"))
                    continue
                if not os.path.exists(entry.path):
                    if _is_image_name(entry.name):
                        self.skipped.append(Skipped(entry.path, "is a broken link"))
                    continue
            kept.append(entry)
        return kept

    def folders(self, split_dir: str) -> Dict[str, str]:
        """{class name: folder} of the class folders in a split's folder."""
        return {e.name: e.path for e in self.entries(split_dir) if e.is_dir()}

    def images(self, folder: str, above: frozenset = frozenset()) -> List[str]:
        """The image files in `folder` and its subfolders, depth first, by name; a link back
        to a folder `above` (real paths) is not entered again."""
        real = os.path.realpath(folder)
        if real in above:
            return []
        found = []
        for entry in self.entries(folder):
            if entry.is_dir():
                found += self.images(entry.path, above | {real})
            elif _is_image_name(entry.name) and entry.is_file():
                found.append(entry.path)
        return found


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(prediction_io.SUFFIXES)


def _no_train_error(root: str, walker: _Walker) -> ImageFolderError:
    train = os.path.join(root, "train")
    here = [e.name for e in walker.entries(root) if e.is_dir() and e.name != "test"]
    hint = (f"; move its class folders ({', '.join(here[:5])}{', ...' if len(here) > 5 else ''})"
            f" into {train}") if here else ""
    return ImageFolderError(f"{root} has no train/ folder: lay it out as {LAYOUT}{hint}")


def _check_classes(train: str, names: List[str], test_names: List[str]) -> None:
    if not names:
        raise ImageFolderError(f"{train} has no class folders; put the images of each class "
                               f"in a folder of its own, named after it ({LAYOUT})")
    if len(names) == 1:
        raise ImageFolderError(f"{train} has one class folder ({names[0]}); a classifier "
                               "needs two or more: add a folder for each other class")
    for split, listed in (("train", names), ("test", test_names)):
        by_case: Dict[str, List[str]] = {}
        for name in listed:
            by_case.setdefault(name.casefold(), []).append(name)
        clashes = ["/".join(group) for group in by_case.values() if len(group) > 1]
        if clashes:
            raise ImageFolderError(
                f"{split}/ has class folders whose names differ only in case: "
                f"{', '.join(clashes)} (Windows and macOS see one folder); rename or merge them")
    if test_names and test_names != names:
        only_train = sorted(set(names) - set(test_names)) or ["none"]
        only_test = sorted(set(test_names) - set(names)) or ["none"]
        raise ImageFolderError(
            f"test/ has other class folders than train/ (only in train/: "
            f"{', '.join(only_train)}; only in test/: {', '.join(only_test)}); give both the "
            "same class folders, or remove test/ to hold out part of train/")


def _no_images_error(folders: List[str]) -> ImageFolderError:
    others = sorted({os.path.splitext(name)[1].lower() for folder in folders
                     for _, _, names in os.walk(folder) for name in names
                     if os.path.splitext(name)[1].lower() in OTHER_IMAGE_SUFFIXES})
    seen = f" (it holds {', '.join(others)} files: convert them to PNG or JPEG)" \
        if others else ""
    return ImageFolderError(f"no {prediction_io.KINDS} image in {', '.join(folders)}{seen}; "
                            "add images of that class, or remove the folder")


def _check_readable(root: str, split: str, names: List[str], labels: np.ndarray,
                    ok: np.ndarray) -> None:
    """ImageFolderError naming the classes of a split none of whose images could be read."""
    unreadable = [name for label, name in enumerate(names)
                  if (labels == label).any() and not ok[labels == label].any()]
    if unreadable:
        folders = [os.path.join(root, split, name) for name in unreadable]
        raise ImageFolderError(f"no readable image in {', '.join(folders)} (see the warnings "
                               "above); add images of that class, or remove the folder")


# --- decoding ----------------------------------------------------------------------------------

def default_workers() -> int:
    """Decoding threads: one per core, at most 4 (benchmarks/image_folder_loading.py)."""
    return max(1, min(os.cpu_count() or 1, 4))


def _decode(paths: List[str], size: int, max_pixels: Optional[int],
            workers: Optional[int]) -> Tuple[np.ndarray, Dict[int, UsageError]]:
    """((N, size, size, 3) uint8 of the files, {index: UnreadableImage} of those that could
    not be read: their rows stay unset). Threads take CHUNK files at a time."""
    images = np.empty((len(paths), size, size, 3), np.uint8)
    failed: Dict[int, UsageError] = {}

    def read(chunk: range) -> int:
        for i in chunk:
            try:
                images[i] = prediction_io.read_image(paths[i], size, max_pixels)
            except prediction_io.UnreadableImage as error:
                failed[i] = error
        return len(chunk)

    chunks = [range(start, min(start + CHUNK, len(paths)))
              for start in range(0, len(paths), CHUNK)]
    progress = _Progress(len(paths))
    pool = ThreadPoolExecutor(workers or default_workers())
    try:
        for done in pool.map(read, chunks):
            progress.advance(done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)   # Ctrl-C: the queued chunks are dropped
        progress.close()
    return images, failed


class _Progress:
    """'decoding images: 12,345/50,000 (24%), 2,345/s' rewritten in place on stdout, at most
    5 times a second, when stdout is a terminal; nothing otherwise (logs stay clean)."""

    def __init__(self, total: int):
        self.total, self.done, self.start, self.shown = total, 0, time.perf_counter(), 0.0
        self.on = sys.stdout.isatty() and total > 0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if self.on and (now - self.shown >= 0.2 or self.done == self.total):
            self.shown = now
            rate = self.done / max(now - self.start, 1e-9)
            sys.stdout.write(f"\rdecoding images: {self.done:,}/{self.total:,} "
                             f"({self.done / self.total:.0%}), {rate:,.0f}/s")
            sys.stdout.flush()

    def close(self) -> None:
        if self.on and self.shown:
            sys.stdout.write("\n")
            sys.stdout.flush()


# --- the held-out test set ---------------------------------------------------------------------

def _hold_out(labels: np.ndarray, num_classes: int, fraction: float,
              seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices), each ascending: per class, round(n x fraction) of its
    n images (at least 1 when n >= 2, at most n - 1), drawn by a generator seeded with
    (seed, class), so that a class's split depends on its own images only."""
    train, test = [], []
    for label in range(num_classes):
        members = np.flatnonzero(labels == label)
        n_test = min(len(members) - 1, max(1, round(len(members) * fraction)))
        drawn = np.random.default_rng([seed, label]).permutation(members)
        test.append(drawn[:n_test])
        train.append(drawn[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
