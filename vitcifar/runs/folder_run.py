"""An images run's start (train_images.py): the folder read before TensorFlow starts, so that
its errors come first and nothing is written; its number of classes recorded in the config
(folder_classes: the model's classifier), its class names checked against the run being
resumed (labels.json), and what was read shown in the banner."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from typing import Tuple

from vitcifar.config.settings import RunOptions, TrainConfig
from vitcifar.data import image_folders, sources
from vitcifar.errors import UsageError
from vitcifar.runs.run_dir import CHECKPOINT, LABELS


def read(config: TrainConfig, options: RunOptions, restart: bool
         ) -> Tuple[TrainConfig, "image_folders.ImageFolderData"]:
    """(config with folder_classes set, the folder's images); UsageError when the folder
    cannot be trained on, or its classes are not those of the run in --output-dir (unless
    `restart`)."""
    data = sources.load(config, options.data_dir)
    names = list(data.label_names)
    labels = os.path.join(options.output_dir or "", LABELS)
    if not restart and options.output_dir and os.path.isfile(labels) and \
            os.path.isfile(os.path.join(options.output_dir, CHECKPOINT)):
        with open(labels, encoding="utf-8") as handle:
            saved = json.load(handle)
        if saved != names:
            raise UsageError(f"{options.data_dir} has the classes {', '.join(names)}; the run "
                             f"in {options.output_dir} has {', '.join(saved)}: resume it with "
                             "its folder, add --restart, or pick another --output-dir")
    print(data.describe())
    print("Images per class (train/test): " + ", ".join(
        f"{name} {train}/{test}" for name, train, test in
        zip(names, data.train_counts, data.test_counts)))
    return replace(config, folder_classes=len(names)).validate(), data
