"""--init-from RUN_DIR: a fresh run starts from another run's best weights.

Every weight is taken from the source run's best.weights.npz (checkpoint.py's format, keyed
by weight path) except:
  - the classifier (the `logits` layer), new (as initialised) when the classes differ: other
    names, another order or another number (CIFAR-10 to your own 5 classes);
  - the position table, interpolated when the patch grid differs (another --image-size or
    --patch-stride): the patch rows as an (s, s, D) grid resized bilinearly to (t, t, D),
    the class token's row kept as it is (DeiT's and timm's way of changing resolution).
Everything else that makes the model's shapes (MODEL_SHAPE) must be the source's: one
`error:` line names what differs. A resumed run keeps its own weights: this applies only
when a run starts. No TensorFlow at import: the source is opened and checked before it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import List

import numpy as np

from vitcifar.config.settings import TrainConfig, patch_grid_side
from vitcifar.config.views import listed_differences
from vitcifar.errors import UsageError
from vitcifar.runs import checkpoint, run_dir

# The settings that decide the shapes of the weights taken (patch projection, blocks,
# classifier MLP, class token); the image size, the stride and the classes may differ.
MODEL_SHAPE = ("patch_size", "num_layers", "embedding_dim", "num_heads", "mlp_hidden_dim",
               "head_units", "pooling")
CLASSIFIER = "/logits/"                 # vit_model's last Dense layer, in a weight's path
POSITIONS = "/position_embedding/"      # the (T, D) position table


@dataclass(frozen=True)
class Source:
    """The run to start from, opened and checked against the new run's settings."""
    run: run_dir.SavedRun

    @property
    def path(self) -> str:
        return self.run.path


def open_source(path: str, config: TrainConfig) -> Source:
    """The run in `path`, checked: a run directory with best weights whose model has
    config's MODEL_SHAPE; UsageError (one line) otherwise. No TensorFlow."""
    try:
        run = run_dir.open_run(path)
    except UsageError as error:
        raise UsageError(f"--init-from: {error}") from None
    differences = [(name, getattr(config, name), getattr(run.config, name))
                   for name in MODEL_SHAPE if getattr(config, name) != getattr(run.config, name)]
    if differences:
        raise UsageError(f"--init-from {path}: its model differs from this run's "
                         f"({listed_differences(differences)} in {path}); give its model "
                         "settings (only the classes, --image-size and --patch-stride may "
                         "differ)")
    return Source(run)


def resize_positions(table: np.ndarray, class_token: bool, side: int) -> np.ndarray:
    """A (T, D) position table -> (side^2 + class_token, D): the patch rows, an (s, s, D)
    grid in row-major order, resized bilinearly to (side, side, D) (half-pixel centres,
    edges clamped: the same grid comes back unchanged); the class token's row (row 0)
    kept."""
    head, grid = table[:int(class_token)], table[int(class_token):]
    source = math.isqrt(len(grid))
    if source * source != len(grid):
        raise ValueError(f"a position table of {len(grid)} patch rows is not a square grid")
    rows = _linear_weights(source, side)                            # (side, s)
    resized = np.einsum("ia,jb,abd->ijd", rows, rows,
                        grid.reshape(source, source, -1).astype(np.float64))
    return np.concatenate([head, resized.reshape(side * side, -1).astype(table.dtype)])


def _linear_weights(source: int, target: int) -> np.ndarray:
    """(target, source): row i weighs the source samples around target pixel i's centre,
    linearly (1 - f, f), positions clamped to the edge samples."""
    position = np.clip((np.arange(target) + 0.5) * source / target - 0.5, 0, source - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, source - 1)
    weights = np.zeros((target, source))
    np.add.at(weights, (np.arange(target), low), 1 - (position - low))
    np.add.at(weights, (np.arange(target), high), position - low)
    return weights


def apply(model, source: Source, config: TrainConfig, label_names: List[str]) -> str:
    """Gives `model` (built from `config`) the source's best weights as the module docstring
    says; returns the banner line saying what was taken and what is new."""
    arrays = checkpoint.read_npz(run_dir.best_weights_path(source.path))
    same_classes = list(label_names) == list(source.run.label_names)
    values, taken, new, notes = [], 0, [], []
    for variable in model.weights:
        key, value = checkpoint.weight_key(variable), np.asarray(variable.numpy())
        found = arrays.get(key)
        if found is not None and POSITIONS in key and found.shape != value.shape:
            found = resize_positions(found, config.pooling == "class_token",
                                     patch_grid_side(config.image_size, config.patch_size,
                                                     config.patch_stride))
            notes.append(_grid_note(source.run.config, config))
        if CLASSIFIER in key and not same_classes:
            new.append(key)
        elif found is None or found.shape != value.shape:
            raise UsageError(f"--init-from {source.path}: its weights do not fit this model "
                             f"({key} is {None if found is None else found.shape} there, "
                             f"{value.shape} here)")
        else:
            value, taken = found.astype(value.dtype), taken + value.size
        values.append(value)
    model.set_weights(values)
    head = (f"new: the classifier for {len(label_names)} classes (the run's "
            f"{len(source.run.label_names)} classes differ)" if new else
            "the classifier too (the same classes)")
    return (f"Init from {source.path} (its best weights): {taken:,} parameters taken"
            f"{''.join(f'; {note}' for note in notes)}; {head}")


def _grid_note(old: TrainConfig, new: TrainConfig) -> str:
    sides = [patch_grid_side(c.image_size, c.patch_size, c.patch_stride) for c in (old, new)]
    return (f"position table interpolated from {sides[0]}x{sides[0]} to {sides[1]}x{sides[1]} "
            "patches")


def describe_ignored(path: str) -> str:
    """The line a resumed run prints when --init-from is given: it keeps its own weights."""
    return f"--init-from {os.path.normpath(path)} not used: a resumed run keeps its own weights"
