"""The run directory: every file a run writes, how each is written, and opening a run again.

    config.json         the run's TrainConfig and RunOptions (config.to_json)
    checkpoint.npz      weights + optimizer + run state after the last completed epoch: rerun
                        the same command to resume from it (--restart to start over)
    best.weights.h5     weights with the best validation top-1 so far (rebuild the model from
                        config.json, then load_weights)
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

`checkpoint.npz` holds everything a resumed run needs, in one file so that its parts cannot
disagree: the model weights, the optimizer's variables (step count, Adam moments) and the
run state (epochs done, best score, plateau counters, learning rate, metrics history) as
JSON.

This module imports no TensorFlow at import time (it works on the model objects it is
given), so a missing run directory is reported before TensorFlow's slow start-up.
"""
from __future__ import annotations

import csv
import dataclasses
import errno
import io
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

import label_names
from config import RunOptions, TrainConfig, differences_that_block_resume, flag_name, from_json, \
    to_json
from devices import keras_3_installed
from errors import RunStopped, UsageError, first_line

CONFIG = "config.json"
CHECKPOINT = "checkpoint.npz"
BEST_WEIGHTS = "best.weights.h5"
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


# --- atomic writes --------------------------------------------------------------------------

def partial_path(path: str) -> str:
    folder, name = os.path.split(path)
    return os.path.join(folder, ".partial-" + name)   # keeps the suffix (.weights.h5, .npz)


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


# --- the run state and the checkpoint -------------------------------------------------------

@dataclass
class RunState:
    """What a run has done so far; JSON-serialisable. Epochs are counted from 1."""
    epochs_done: int = 0
    best_val_top1: float = -math.inf
    best_epoch: int = 0
    epochs_since_best: int = 0        # for --early-stopping
    epochs_since_lr_change: int = 0   # for --patience
    learning_rate: float = 0.0
    stopped_early: bool = False
    train_seconds: float = 0.0        # summed over every session of the run
    history: List[Dict[str, float]] = field(default_factory=list)

    def to_json(self) -> str:
        # -inf is not JSON; before the first epoch there is no best yet
        values = dataclasses.asdict(self)
        if math.isinf(self.best_val_top1):
            values["best_val_top1"] = None
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> "RunState":
        values = json.loads(text)
        if values.get("best_val_top1") is None:
            values["best_val_top1"] = -math.inf
        return cls(**values)


def optimizer_variables(optimizer) -> list:
    """Adam's or AdamW's variables (step count, moments). Under mixed precision these are the
    inner optimizer's: the loss scale starts afresh, so a run can resume with another
    precision. The step count comes first when the optimizer's own list lacks it (Keras
    2.10's experimental optimizers, e.g. its AdamW, list only the moments): a schedule and
    Adam's bias correction read it."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    variables = optimizer.variables          # a method on Keras 2's optimizers, a list on 3
    variables = list(variables() if callable(variables) else variables)
    if not any(v is optimizer.iterations for v in variables):   # `in` would compare values
        variables.insert(0, optimizer.iterations)
    return variables


def build_optimizer_slots(optimizer, model) -> None:
    """Creates the optimizer's variables (they are made at the first update otherwise) by
    applying zero gradients, and leaves the weights as they were: Adam moves none then, but
    AdamW's decoupled decay would (w -= lr * wd * w), so they are put back. The optimizer's
    values are restored next. In a tf.distribute strategy's scope the update runs on every
    replica (Keras 2's optimizers refuse it outside them); on several workers, all must
    call this together."""
    import tensorflow as tf
    variables = model.trainable_variables
    values = [tf.identity(v) for v in variables]

    def apply():
        optimizer.apply_gradients(zip([tf.zeros_like(v) for v in variables], variables))

    if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
        tf.distribute.get_strategy().run(apply)  # in a strategy's scope: on every replica
    else:
        apply()
    for variable, value in zip(variables, values):
        variable.assign(value)


def save_checkpoint(path: str, model, optimizer, state: RunState) -> None:
    import tensorflow as tf
    arrays = {f"model_{i}": w for i, w in enumerate(model.get_weights())}
    # through a tensor: Keras 2's variables of a tf.distribute strategy (MirroredVariable)
    # have no numpy conversion of their own
    arrays.update({f"optimizer_{i}": np.asarray(tf.convert_to_tensor(v))
                   for i, v in enumerate(optimizer_variables(optimizer))})
    arrays["state"] = np.frombuffer(state.to_json().encode("utf-8"), dtype=np.uint8)

    def write(temporary):
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
    atomic_save(path, write)


def load_checkpoint(path: str, model, optimizer) -> RunState:
    """Restores weights and optimizer variables into `model` / `optimizer`; returns the state.
    Raises ValueError if the file does not fit this model."""
    with np.load(path, allow_pickle=False) as saved:
        state = RunState.from_json(saved["state"].tobytes().decode("utf-8"))
        weights = [saved[f"model_{i}"] for i in range(len(model.get_weights()))]
        model.set_weights(weights)
        build_optimizer_slots(optimizer, model)
        variables = optimizer_variables(optimizer)
        if f"optimizer_{len(variables)}" in saved or f"optimizer_{len(variables) - 1}" not in saved:
            raise ValueError("optimizer variables do not match")
        for i, variable in enumerate(variables):
            variable.assign(saved[f"optimizer_{i}"])
    return state


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


# --- opening a run directory ------------------------------------------------------------------

def read_config(path: str) -> Tuple[TrainConfig, RunOptions]:
    """The (TrainConfig, RunOptions) in a run directory's config.json; UsageError if damaged."""
    config_path = os.path.join(path, CONFIG)
    try:
        with open(config_path, encoding="utf-8") as handle:
            values = json.load(handle)
    except ValueError as error:
        raise UsageError(f"{config_path} is damaged ({error}); add --restart to start the "
                         "run over") from None
    return from_json(values, config_path)


def prepare_for_training(config: TrainConfig, options: RunOptions, restart: bool
                         ) -> Optional[TrainConfig]:
    """Creates or reopens options.output_dir and writes config.json; returns the experiment of
    the run being resumed, or None for a fresh run. Refuses (UsageError, listing every
    difference) to resume a run whose experiment differs beyond the resumable settings."""
    output_dir = options.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output-dir {output_dir} is a file; pass a folder")
    os.makedirs(output_dir, exist_ok=True)
    if restart:
        figures = [name for name in os.listdir(output_dir) if name.endswith(".png")]
        for name in (*RUN_FILES, *figures):
            for path in (os.path.join(output_dir, name),
                         partial_path(os.path.join(output_dir, name))):
                if os.path.exists(path):
                    os.remove(path)
        shutil.rmtree(os.path.join(output_dir, TENSORBOARD), ignore_errors=True)
    saved = None
    if os.path.exists(os.path.join(output_dir, CHECKPOINT)) and \
            os.path.exists(os.path.join(output_dir, CONFIG)):
        saved, _ = read_config(output_dir)
        check_resumable(saved, config, output_dir)
    atomic_write_json(os.path.join(output_dir, CONFIG), to_json(config, options))
    return saved


def check_resumable(saved: TrainConfig, wanted: TrainConfig, output_dir: str) -> None:
    if saved.dataset != wanted.dataset:
        raise UsageError(f"{output_dir} holds a {saved.display_name} run; resume it with "
                         f"train_{saved.dataset}.py, or pick another --output-dir")
    differences = differences_that_block_resume(saved, wanted)
    if differences:
        listed = ", ".join(f"{flag_name(name)} {_shown(old)}, not {_shown(new)}"
                           for name, old, new in differences)
        raise UsageError(f"{output_dir} holds a run with {listed}; rerun with its settings to "
                         "resume, add --restart to start it over, or pick another --output-dir")


def _shown(value) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


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


def open_run(path: str) -> SavedRun:
    """Reads a run directory's config and class names; raises UsageError unless it holds a
    config.json and a best.weights.h5."""
    if not os.path.isdir(path):
        raise UsageError(f"run directory {path} does not exist; pass a folder that "
                         f"train_cifar10.py wrote (runs/...)")
    for name in (CONFIG, BEST_WEIGHTS):
        if not os.path.isfile(os.path.join(path, name)):
            raise UsageError(f"{path} has no {name}: not a run directory, or a run stopped "
                             "before its first epoch ended")
    config, options = read_config(path)
    return SavedRun(path, config.validate(), options, _label_names(path, config.dataset))


def _label_names(path: str, dataset: str) -> List[str]:
    """labels.json as training wrote it; runs older than that file get the official names."""
    labels = os.path.join(path, LABELS)
    if os.path.isfile(labels):
        with open(labels, encoding="utf-8") as handle:
            return list(json.load(handle))
    return label_names.official(dataset)


def load_best_weights(run: SavedRun, model) -> None:
    """Gives `model` (built from run.config) the run's best weights; UsageError naming the
    file when it is damaged or does not fit."""
    try:
        model.load_weights(run.file(BEST_WEIGHTS))
    except (OSError, ValueError) as error:
        # tf-keras and Keras 3 lay out .weights.h5 files differently
        hint = ("; it was trained --distribute multi-worker, with tf-keras: open it with "
                "TF_USE_LEGACY_KERAS=1 set" if run.options.distribute == "multi-worker" and
                os.environ.get("TF_USE_LEGACY_KERAS") != "1" and keras_3_installed() else "")
        raise UsageError(f"{run.file(BEST_WEIGHTS)} is damaged or does not fit the model in "
                         f"{CONFIG} ({first_line(error)}){hint}") from None
