"""The run directory: every file a run writes, how each is written, and opening a run again.

    config.json         the run's TrainConfig and RunOptions (config.to_json)
    checkpoint.npz      weights + optimizer + run state after the last completed epoch
                        (checkpoint.py): `python train_cifar10.py --output-dir DIR` resumes
                        from it with the settings in config.json (--restart to start over)
    best.weights.npz    weights with the best validation top-1 so far (rebuild the model from
                        config.json, then checkpoint.load_weights(model, path))
    training.lock       held by the training process while it runs (see RunLock)
    history.csv         one row of metrics per completed epoch
    results.json        test top-1/top-5 of the best weights, timings, device and versions;
                        written when training has finished
    labels.json         the class names in label order
    tensorboard/        TensorBoard logs (--tensorboard, on by default)
    *.png               FIGURES (visualize.py), drawn from the best weights at the end of
                        the run and when it stops early; PATCHES by visualize.py only

Every file but the figures is written beside its destination under a `.partial-` name and
renamed over it when complete, so a crash, a kill or a full disk leaves the previous version
readable. The figures, which visualize.py can redraw, are written in place.

This module imports no TensorFlow (nor the command line: resume.py joins the two), so a
missing run directory is reported before TensorFlow's slow start-up.
"""
from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from vitcifar.config.config_file import from_json
from vitcifar.config.settings import RunOptions, TrainConfig
from vitcifar.errors import RunStopped, UsageError

CONFIG = "config.json"
CHECKPOINT = "checkpoint.npz"
BEST_WEIGHTS = "best.weights.npz"
LOCK = "training.lock"
HISTORY = "history.csv"
RESULTS = "results.json"
LABELS = "labels.json"
TENSORBOARD = "tensorboard"
CURVES = "training_curves.png"
CONFUSION = "confusion_matrix.png"
PREDICTIONS = "test_predictions.png"
ATTENTION = "attention_maps.png"
PATCHES = "patches.png"
FIGURES = (CURVES, CONFUSION, PREDICTIONS, ATTENTION)     # drawn at the end of every run
RUN_FILES = (CONFIG, CHECKPOINT, BEST_WEIGHTS, HISTORY, RESULTS, LABELS)


def default_path(dataset: str) -> str:
    return os.path.join("runs", f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


def best_weights_path(folder: str) -> Optional[str]:
    """The run's best.weights.npz; None before the first epoch has ended."""
    path = os.path.join(folder, BEST_WEIGHTS)
    return path if os.path.isfile(path) else None


def check_folder(output_dir: str) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output-dir {output_dir} is a file; pass a folder")


def remove_run_files(output_dir: str) -> None:
    """Deletes every file a run writes in `output_dir` (--restart), half-written ones too;
    other files stay."""
    figures = [name for name in os.listdir(output_dir) if name.endswith(".png")]
    for name in (*RUN_FILES, *figures):
        for path in (os.path.join(output_dir, name),
                     partial_path(os.path.join(output_dir, name))):
            if os.path.exists(path):
                os.remove(path)
    shutil.rmtree(os.path.join(output_dir, TENSORBOARD), ignore_errors=True)


# --- atomic writes --------------------------------------------------------------------------

def partial_path(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, ".partial-" + name)   # keeps the suffix (.npz, .json)


def atomic_save(path: str, write: Callable[[str], None]) -> None:
    """Calls write(temporary_path), then renames the result over `path`. A failure leaves
    `path` as it was and raises RunStopped naming the file and what to do."""
    temporary = partial_path(path)
    try:
        write(temporary)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        if os.path.exists(temporary):
            os.remove(temporary)
        full = error.errno in (errno.ENOSPC, errno.EDQUOT)
        advice = ("free some disk space" if full else "check the folder is writable")
        raise RunStopped(f"could not save {path} ({error.strerror or error}); training stopped "
                         f"with the previous save intact: {advice}, then rerun the same "
                         "command to resume") from None


def atomic_write_text(path: str, text: str) -> None:
    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
    atomic_save(path, write)


def atomic_write_json(path: str, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


# --- history.csv ------------------------------------------------------------------------------

def write_history(path: str, history: List[Dict[str, float]]) -> None:
    if not history:
        return
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def read_history(path: str) -> Dict[str, np.ndarray]:
    """history.csv as {column: float array by epoch}; empty when the file is missing or has
    no epochs yet (a run interrupted early). Cells that are no number (empty where an epoch
    lacks a column, or a row cut short) become NaN, which matplotlib leaves out."""
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    return {key: np.array([_number(row[key]) for row in rows]) for key in rows[0]}


def _number(cell: Optional[str]) -> float:
    try:
        return float(cell)
    except (TypeError, ValueError):
        return float("nan")


# --- config.json ------------------------------------------------------------------------------

def read_config(path: str, advice: str = "") -> Tuple[TrainConfig, RunOptions]:
    """The (TrainConfig, RunOptions) in a run directory's config.json; a UsageError, ending
    with `advice` (what the caller's user can do), if it is damaged or not this version's."""
    config_path = os.path.join(path, CONFIG)
    try:
        with open(config_path, encoding="utf-8") as handle:
            return from_json(json.load(handle), config_path)
    except ValueError as error:                  # JSONDecodeError
        raise UsageError(f"{config_path} is damaged ({error}){advice}") from None
    except UsageError as error:
        raise UsageError(f"{error}{advice}") from None


# --- one trainer per run directory --------------------------------------------------------------

class RunLock:
    """An exclusive lock on a run directory, held by the training process: an OS lock
    (fcntl.flock on POSIX, msvcrt.locking on Windows) on LOCK in the folder, which holds the
    owner's PID. The OS releases it when the process ends, however it ends (a SIGKILL or a
    power cut leaves no stale lock: the file stays, unlocked). A second process is refused
    with UsageError naming the first, before it has changed anything.

        with RunLock(output_dir):
            ...train...
    """

    # Windows locks are mandatory: the PID at the start of the file stays readable because
    # the byte locked lies beyond it.
    LOCKED_BYTE = 64

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.path = os.path.join(output_dir, LOCK)
        self.fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        check_folder(self.output_dir)
        os.makedirs(self.output_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd, self.LOCKED_BYTE)
        except OSError:
            owner = _read_pid(fd)
            os.close(fd)
            who = f"process {owner}" if owner else "another process"
            raise UsageError(f"{self.output_dir} is being trained by {who} (it holds "
                             f"{self.path}); wait for it to end or stop it, or pick another "
                             "--output-dir") from None
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid():<{self.LOCKED_BYTE - 1}d}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            _unlock(self.fd, self.LOCKED_BYTE)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> Optional[int]:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, RunLock.LOCKED_BYTE).split()[0])
    except (OSError, ValueError, IndexError):
        return None


if sys.platform == "win32":
    import msvcrt

    def _lock(fd: int, offset: int) -> None:
        os.lseek(fd, offset, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)       # OSError when another process holds it

    def _unlock(fd: int, offset: int) -> None:
        os.lseek(fd, offset, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int, offset: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError (an OSError)

    def _unlock(fd: int, offset: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


# --- opening a finished run -------------------------------------------------------------------

@dataclass(frozen=True)
class SavedRun:
    """A finished (or interrupted) run directory, opened for predict.py, evaluate.py and
    visualize.py: its settings and class names; the model is rebuilt from them."""
    path: str
    config: TrainConfig
    options: RunOptions
    label_names: List[str]      # class names in label order

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def results(self) -> Optional[dict]:
        """results.json, or None for a run that ended before its test evaluation."""
        if not os.path.isfile(self.file(RESULTS)):
            return None
        with open(self.file(RESULTS), encoding="utf-8") as handle:
            return json.load(handle)

    def data_dir(self, given: Optional[str]) -> Optional[str]:
        """Where to read the test set: `given` (--data-dir), else where the run read its
        data; UsageError when that is gone (a temporary folder, another machine)."""
        if given is not None or self.options.data_dir is None:
            return given
        if not os.path.exists(self.options.data_dir):
            raise UsageError(f"the run read its data from {self.options.data_dir} (its "
                             f"{CONFIG}), which is not there now; pass --data-dir with the "
                             "folder or archive that holds them")
        return self.options.data_dir


def open_run(path: str) -> SavedRun:
    """Reads a run directory's config and class names; raises UsageError unless it holds a
    config.json of this version, best weights and labels.json."""
    if os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        hint = (f"; its folder {folder} is one" if os.path.isfile(os.path.join(folder, CONFIG))
                else "")
        raise UsageError(f"{path} is a file, not a run directory: pass the folder that "
                         f"train_cifar10.py wrote (runs/...){hint}")
    if not os.path.isdir(path):
        raise UsageError(f"run directory {path} does not exist; pass a folder that "
                         f"train_cifar10.py wrote (runs/...)")
    if not os.path.isfile(os.path.join(path, CONFIG)):
        raise UsageError(f"{path} has no {CONFIG}: not a run directory, or a run stopped "
                         "before its first epoch ended")
    if best_weights_path(path) is None:
        raise UsageError(f"{path} has no {BEST_WEIGHTS}: not a run directory, or a run "
                         "stopped before its first epoch ended")
    config, options = read_config(path)
    if not os.path.isfile(os.path.join(path, LABELS)):
        raise UsageError(f"{path} has no {LABELS}: it was not written by this version of the "
                         "app; train the run again")
    with open(os.path.join(path, LABELS), encoding="utf-8") as handle:
        return SavedRun(path, config, options, list(json.load(handle)))
