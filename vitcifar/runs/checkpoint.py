"""The checkpoint format: a model's weights and its optimizer's state in .npz files, keyed by
name so that both stacks read them.

Weights are portable: best.weights.npz and the model part of checkpoint.npz are numpy
arrays keyed by each weight's path in the model ("vit/block_0/attention/qkv/kernel"), the
same on Keras 3 (variable.path) and Keras 2.10 (variable.name less ":0"), so a run trained on
one stack opens, evaluates and resumes on the other. The optimizer's Adam moments are keyed
the same way ("optimizer/m/vit/...").

`checkpoint.npz` holds everything a resumed run needs, in one file so that its parts cannot
disagree: the model weights (model/PATH), the optimizer's variables (optimizer/iterations,
optimizer/m/PATH, optimizer/v/PATH) and the RunState (epochs done, best score, plateau
counters, learning rate, metrics history, time-budget plan) as JSON (state).

Files are written atomically (run_dir.atomic_save). This module imports no TensorFlow at
import time (it works on the model objects it is given).
"""
from __future__ import annotations

import dataclasses
import json
import math
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from vitcifar.errors import UsageError, first_line
from vitcifar.runs.run_dir import CONFIG, SavedRun, atomic_save, best_weights_path
from vitcifar.runs.time_budget import Plan


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
    plan: Optional[Plan] = None       # --time-budget: what was measured and planned

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
        if values.get("plan") is not None:
            values["plan"] = Plan(**values["plan"])
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


def read_npz(path: str) -> Dict[str, np.ndarray]:
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
    _assign_model(model, read_npz(path), path)


# --- the optimizer's state -------------------------------------------------------------------

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
    call this together. On Keras's torch backend (one device) the optimizer builds its
    variables itself (optimizer.build), with no update and no TensorFlow op."""
    from vitcifar.backend.keras_compat import BACKEND
    if BACKEND != "tensorflow":
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        return
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


# --- checkpoint.npz --------------------------------------------------------------------------

def save_checkpoint(path: str, model, optimizer, state: RunState) -> None:
    from vitcifar.backend.keras_compat import to_numpy
    arrays = {f"model/{key}": value for key, value in model_arrays(model).items()}
    arrays.update({key: to_numpy(variable)
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
    arrays = read_npz(path)
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


def load_best_weights(run: SavedRun, model) -> None:
    """Gives `model` (built from run.config) the run's best weights, written on either
    stack; UsageError naming the file and what is wrong (damaged, or which weights do not
    fit the model in config.json)."""
    try:
        load_weights(model, best_weights_path(run.path))
    except WeightsError as error:
        raise UsageError(f"{error} (the model is built from {run.file(CONFIG)})") from None
