"""The run directory: every file a run writes, how each is written, and opening a run again.

    config.json         the run's TrainConfig and RunOptions (config.to_json)
    checkpoint.npz      weights + optimizer + run state after the last completed epoch:
                        `python train_cifar10.py --output-dir DIR` resumes from it with the
                        settings in config.json (--restart to start over)
    best.weights.npz    weights with the best validation top-1 so far (rebuild the model from
                        config.json, then load_weights(model, path))
    training.lock       held by the training process while it runs (see RunLock)
    history.csv         one row of metrics per completed epoch
    results.json        test top-1/top-5 of the best weights, timings, device and versions;
                        written when training has finished
    labels.json         the class names in label order
    tensorboard/        TensorBoard logs (--tensorboard, on by default)
    *.png               FIGURES (visualize.py), drawn from the best weights at the end of
                        the run and when it stops early; PATCHES by visualize.py only

Weights are portable: best.weights.npz and the model part of checkpoint.npz are numpy
arrays keyed by each weight's path in the model ("vit/block_0/attention/qkv/kernel"), the
same on Keras 3 (variable.path) and Keras 2.10 (variable.name less ":0"), so a run trained on
one stack opens, evaluates and resumes on the other. The optimizer's Adam moments are keyed
the same way ("optimizer/m/vit/...").

Every file but the figures is written beside its destination under a `.partial-` name and
renamed over it when complete, so a crash, a kill or a full disk leaves the previous version
readable. The figures, which visualize.py can redraw, are written in place.

`checkpoint.npz` holds everything a resumed run needs, in one file so that its parts cannot
disagree: the model weights (model/PATH), the optimizer's variables (optimizer/iterations,
optimizer/m/PATH, optimizer/v/PATH) and the run state (epochs done, best score, plateau
counters, learning rate, metrics history) as JSON (state).

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
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from config import PRESETS, RunOptions, TrainConfig, differences_that_block_resume, from_json, \
    listed_differences, override, to_json
from errors import RunStopped, UsageError, first_line
from flags import split_settings

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
    # The cosine schedule's [total, warmup] optimizer steps, fixed when the run starts, so
    # that a resumed or extended run follows the rates it began with.
    schedule_steps: Optional[List[int]] = None
    plan: Optional[Dict[str, float]] = None    # --time-budget: what was measured and planned

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


class WeightsError(ValueError):
    """A weights file or checkpoint that cannot be read (its message says "damaged") or that
    does not fit the model (its message names the weights that differ)."""


def weight_key(variable) -> str:
    """A weight's path in its model, the same on both stacks: "vit/block_0/mlp_in/bias" is
    Keras 3's variable.path and Keras 2.10's variable.name ("vit/block_0/mlp_in/bias:0")."""
    path = getattr(variable, "path", None)
    return path if isinstance(path, str) else variable.name.split(":")[0]


def model_arrays(model) -> Dict[str, np.ndarray]:
    """{weight path: value} of every weight of `model`."""
    keys = [weight_key(v) for v in model.weights]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"the model has several weights named {', '.join(twice)}")
    return dict(zip(keys, model.get_weights()))


def _read_npz(path: str) -> Dict[str, np.ndarray]:
    """Every array of an .npz file, read now; WeightsError "damaged" if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            return {key: saved[key] for key in saved.files}
    except FileNotFoundError:
        raise WeightsError(f"{path} is missing") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise WeightsError(f"{path} is damaged ({first_line(error)})") from None


def _listed(names: List[str], limit: int = 3, separator: str = ", ") -> str:
    shown = separator.join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _assign_model(model, arrays: Dict[str, np.ndarray], where: str) -> None:
    """Gives `model` the weights in {weight path: array}; WeightsError naming every
    missing, unexpected and other-shaped weight (the first few of each) if they differ."""
    expected = {weight_key(v): tuple(v.shape) for v in model.weights}
    missing = [k for k in expected if k not in arrays]
    unexpected = sorted(k for k in arrays if k not in expected)
    reshaped = [f"{k} is {tuple(arrays[k].shape)} in the file, {expected[k]} in the model"
                for k in expected if k in arrays and tuple(arrays[k].shape) != expected[k]]
    problems = ([f"{len(missing)} missing ({_listed(missing)})"] if missing else []) + \
        ([f"{len(unexpected)} unexpected ({_listed(unexpected)})"] if unexpected else []) + \
        ([f"{len(reshaped)} of another shape ({_listed(reshaped, 2, '; ')})"] if reshaped
         else [])
    if problems:
        raise WeightsError(f"{where} does not fit the model: weights " + "; ".join(problems))
    model.set_weights([arrays[weight_key(v)] for v in model.weights])


def save_weights(model, path: str) -> None:
    """Writes every weight of `model` to `path` (.npz, atomically), keyed by its path in the
    model, so that both stacks read it (load_weights)."""
    arrays = model_arrays(model)

    def write(temporary):
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
    atomic_save(path, write)


def load_weights(model, path: str) -> None:
    """Gives `model` the weights in `path`, a file of save_weights (either stack).
    WeightsError says "damaged" for a file that cannot be read, and names the weights that
    differ for one that does not fit."""
    _assign_model(model, _read_npz(path), path)


def best_weights_path(folder: str) -> Optional[str]:
    """The run's best.weights.npz; None before the first epoch has ended."""
    path = os.path.join(folder, BEST_WEIGHTS)
    return path if os.path.isfile(path) else None


# --- the optimizer ---------------------------------------------------------------------------

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


# Slot names of Adam and AdamW: Keras 3's, Keras 2.10's, and the portable key's.
_SLOTS = {"momentum": "m", "velocity": "v", "velocity_hat": "vhat",
          "m": "m", "v": "v", "vhat": "vhat"}


def optimizer_keys(optimizer, model) -> Dict[str, object]:
    """{portable key: variable} of the optimizer's state: "optimizer/iterations", and
    "optimizer/SLOT/PATH" for each moment of each trainable weight (SLOT m, v or vhat), as
    Keras 3 (name "vit_block_0_mlp_in_bias_momentum"), Keras 2.10's Adam
    ("Adam/vit/block_0/mlp_in/bias/m:0") and its AdamW ("AdamW/m/vit/block_0/...") name
    them. Keras 3's learning-rate variable is left out: the run state holds the rate. A
    variable of no known form is keyed by its own name (readable on its stack only)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    paths = [weight_key(v) for v in model.trainable_variables]
    by_name = {}
    for path in paths:
        for slot, short in _SLOTS.items():
            by_name[f"{path.replace('/', '_')}_{slot}"] = f"optimizer/{short}/{path}"   # 3
            by_name[f"{path}/{slot}"] = by_name[f"{slot}/{path}"] = f"optimizer/{short}/{path}"
    keys = {}
    for variable in optimizer_variables(optimizer):
        if variable is inner.iterations:
            keys["optimizer/iterations"] = variable
            continue
        if variable is getattr(inner, "_learning_rate", None):
            continue
        name = variable.name.split(":")[0]
        key = by_name.get(name)
        if key is None:       # Keras 2: "Adam/PATH/m", "cond_1/Adam/PATH/m", "AdamW/m/PATH"
            parts = name.split("/")
            key = next((by_name[tail] for i in range(1, len(parts))
                        if (tail := "/".join(parts[i:])) in by_name), None)
        keys[key or f"optimizer/other/{name}"] = variable
    return keys


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


# --- the checkpoint --------------------------------------------------------------------------

def save_checkpoint(path: str, model, optimizer, state: RunState) -> None:
    arrays = {f"model/{key}": value for key, value in model_arrays(model).items()}
    import tensorflow as tf
    # through a tensor: Keras 2's variables of a tf.distribute strategy (MirroredVariable)
    # have no numpy conversion of their own
    arrays.update({key: np.asarray(tf.convert_to_tensor(variable))
                   for key, variable in optimizer_keys(optimizer, model).items()})
    arrays["state"] = np.frombuffer(state.to_json().encode("utf-8"), dtype=np.uint8)

    def write(temporary):
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
    atomic_save(path, write)


def load_checkpoint(path: str, model, optimizer) -> RunState:
    """Restores weights and optimizer variables into `model` / `optimizer`; returns the state.
    Raises WeightsError if the file is damaged, is no checkpoint of this format, or its
    weights do not fit this model. An optimizer state that does not fit this optimizer is
    left out with a one-line warning: the run resumes with its weights and step count, and
    fresh Adam moments."""
    arrays = _read_npz(path)
    try:
        state = RunState.from_json(arrays["state"].tobytes().decode("utf-8"))
    except (KeyError, ValueError, TypeError) as error:
        raise WeightsError(f"{path} is damaged (its run state: {first_line(error)})") from None
    if not any(key.startswith("model/") for key in arrays):
        raise WeightsError(f"{path} holds no weights keyed by their path (model/...): it was "
                           "not written by this version of the app")
    _assign_model(model, {k[len("model/"):]: v for k, v in arrays.items()
                          if k.startswith("model/")}, path)
    build_optimizer_slots(optimizer, model)
    problem = _restore_optimizer(optimizer_keys(optimizer, model), arrays)
    if problem:
        print(f"warning: the optimizer state in {path} does not fit this optimizer "
              f"({problem}); resuming with the saved weights and step count and fresh Adam "
              "moments", flush=True)
    return state


def _restore_optimizer(variables: Dict[str, object], arrays: Dict[str, np.ndarray]
                       ) -> Optional[str]:
    """Assigns arrays[key] to each variables[key], all or none (saved keys this optimizer
    lacks are ignored); returns what does not fit, None when all did. When the moments do
    not fit, the step count alone is restored (a schedule and bias correction read it)."""
    missing = [k for k in variables if k not in arrays]
    reshaped = [k for k in variables if k in arrays
                and tuple(arrays[k].shape) != tuple(variables[k].shape)]
    if missing or reshaped:
        if "optimizer/iterations" in variables and "optimizer/iterations" in arrays:
            variables["optimizer/iterations"].assign(arrays["optimizer/iterations"])
        return "; ".join(([f"missing {_listed(missing)}"] if missing else []) +
                         ([f"other shape {_listed(reshaped)}"] if reshaped else []))
    for key, variable in variables.items():
        variable.assign(arrays[key])
    return None


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


def resume_settings(dataset: str, output_dir: Optional[str], given: Dict[str, object],
                    preset: Optional[str] = None) -> Optional[Tuple[TrainConfig, RunOptions]]:
    """The settings to go on with the run in `output_dir`: its config.json with the flags
    `given` (flat, as flags.given_settings returns) on top; None when the folder holds no
    config.json (a new run). The flags may change the resumable experiment settings
    (epochs, learning rate, patience, early stopping) and any run option; UsageError lists
    every other difference at once. `preset`, when given, is checked the same way (the run
    must be that preset, apart from the flags and the resumable settings) and changes
    nothing, so the command that started the run resumes it too."""
    if not output_dir or not os.path.isfile(os.path.join(output_dir, CONFIG)):
        return None
    saved, saved_options = read_config(output_dir)
    if saved.dataset != dataset:
        raise UsageError(f"{output_dir} holds a {saved.display_name} run; resume it with "
                         f"train_{saved.dataset}.py, or pick another --output-dir")
    experiment, run = split_settings(given)
    wanted = override(saved, **experiment)
    reference = wanted if preset is None else override(
        dataclasses.replace(PRESETS[preset], dataset=dataset), **experiment)
    check_resumable(saved, reference, output_dir)
    if "data_dir" not in run and saved_options.data_dir and \
            not os.path.exists(saved_options.data_dir):
        raise UsageError(f"the run's data, --data-dir {saved_options.data_dir} (in "
                         f"{os.path.join(output_dir, CONFIG)}), is not there; pass --data-dir "
                         "with the folder or archive that holds them now")
    return (wanted.validate(),
            dataclasses.replace(saved_options, **{**run, "output_dir": output_dir}).validate())


def prepare_for_training(config: TrainConfig, options: RunOptions, restart: bool
                         ) -> Optional[TrainConfig]:
    """Creates or reopens options.output_dir and writes config.json; returns the experiment of
    the run being resumed, or None for a fresh run. Refuses (UsageError, listing every
    difference) to resume a run whose experiment differs beyond the resumable settings.
    The caller holds the folder's RunLock."""
    output_dir = options.output_dir
    _check_folder(output_dir)
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
        saved, _ = read_config(output_dir, "; add --restart to start the run over")
        check_resumable(saved, config, output_dir)
    atomic_write_json(os.path.join(output_dir, CONFIG), to_json(config, options))
    return saved


def _check_folder(output_dir: str) -> None:
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output-dir {output_dir} is a file; pass a folder")


def check_resumable(saved: TrainConfig, wanted: TrainConfig, output_dir: str) -> None:
    if saved.dataset != wanted.dataset:
        raise UsageError(f"{output_dir} holds a {saved.display_name} run; resume it with "
                         f"train_{saved.dataset}.py, or pick another --output-dir")
    differences = differences_that_block_resume(saved, wanted)
    if differences:
        raise UsageError(f"{output_dir} holds a run with {listed_differences(differences)}; "
                         "leave those flags out to resume it with its own settings, add "
                         "--restart to start it over with yours, or pick another --output-dir")


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
        _check_folder(self.output_dir)
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


def load_best_weights(run: SavedRun, model) -> None:
    """Gives `model` (built from run.config) the run's best weights, written on either
    stack; UsageError naming the file and what is wrong (damaged, or which weights do not
    fit the model in config.json)."""
    try:
        load_weights(model, best_weights_path(run.path))
    except WeightsError as error:
        raise UsageError(f"{error} (the model is built from {run.file(CONFIG)})") from None
