"""A finished (or interrupted) run directory, opened for predict.py, evaluate.py, visualize.py.

The file names of a run directory live here, and this module imports no TensorFlow, so a
missing run directory or checkpoint is reported before TensorFlow's slow start-up. The model
is rebuilt from config.json and given best.weights.h5; that works on both stacks, where the
stacks' native full-model formats do not.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import List, Optional

import label_names
from config import TrainConfig, UsageError

CONFIG = "config.json"
BEST_WEIGHTS = "best.weights.h5"
HISTORY = "history.csv"
RESULTS = "results.json"
LABELS = "labels.json"
TENSORBOARD = "tensorboard"


@dataclass(frozen=True)
class SavedRun:
    path: str
    config: TrainConfig
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
    with open(os.path.join(path, CONFIG), encoding="utf-8") as handle:
        config = TrainConfig.from_dict(json.load(handle)).validate()
    return SavedRun(path, config, _label_names(path, config.dataset))


def _label_names(path: str, dataset: str) -> List[str]:
    """labels.json as training wrote it; runs older than that file get the official names."""
    labels = os.path.join(path, LABELS)
    if os.path.isfile(labels):
        with open(labels, encoding="utf-8") as handle:
            return list(json.load(handle))
    return label_names.official(dataset)


def load_model(run: SavedRun):
    """The run's VisionTransformer with its best weights (imports TensorFlow)."""
    from vit_model import build_model
    model = build_model(run.config)
    try:
        model.load_weights(run.file(BEST_WEIGHTS))
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else \
            type(error).__name__
        raise UsageError(f"{run.file(BEST_WEIGHTS)} is damaged or does not fit the model in "
                         f"{CONFIG} ({reason})") from None
    return model


def load_test_data(run: SavedRun, data_dir: Optional[str] = None):
    """(x_test uint8 (N, 32, 32, 3), y_test int64 (N,)) of the run's dataset, from data_dir if
    given, else from where the run read it (its --data-dir, or keras.datasets)."""
    import cifar_data
    data = cifar_data.load(run.config.dataset, data_dir or run.config.data_dir)
    return data.x_test, data.y_test
