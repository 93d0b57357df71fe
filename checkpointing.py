"""Crash-safe files: atomic writes, and the one-file resume checkpoint of a run.

Every file is written beside its destination under a `.partial-` name and renamed over it
when complete, so a crash, a kill or a full disk leaves the previous version readable.

`checkpoint.npz` holds everything a resumed run needs, in one file so that its parts cannot
disagree: the model weights, the optimizer's variables (step count, Adam moments) and the
run state (epochs done, best score, plateau counters, learning rate, metrics history) as
JSON. It is written after every completed epoch.
"""
from __future__ import annotations

import dataclasses
import errno
import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List

import numpy as np

CHECKPOINT = "checkpoint.npz"


class RunStopped(Exception):
    """Training stopped for a reason the user must act on (NaN loss, disk full, Ctrl-C);
    what was saved before stays. `exit_code` is the process's exit status."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


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
    values are restored next."""
    import tensorflow as tf
    variables = model.trainable_variables
    values = [tf.identity(v) for v in variables]
    optimizer.apply_gradients(zip([tf.zeros_like(v) for v in variables], variables))
    for variable, value in zip(variables, values):
        variable.assign(value)


def save_checkpoint(path: str, model, optimizer, state: RunState) -> None:
    arrays = {f"model_{i}": w for i, w in enumerate(model.get_weights())}
    arrays.update({f"optimizer_{i}": np.asarray(v)
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
