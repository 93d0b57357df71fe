"""The data a run's settings name: a CIFAR archive (cifar.load) or a folder of class folders
(image_folders.load, read at the run's image size with its test split). The one place the
training command, evaluate.py, visualize.py and export.py turn a config into arrays. No
TensorFlow."""
from __future__ import annotations

from typing import Optional

from vitcifar.config.datasets import IMAGES
from vitcifar.config.settings import TrainConfig
from vitcifar.data import cifar, image_folders


def load(config: TrainConfig, data_dir: Optional[str]) -> cifar.CifarData:
    """The run's images: for an images run, the folder `data_dir` (required) as
    image_folders.load reads it with config's image size, test fraction and seed (the same
    test set every time); else cifar.load(config.dataset, data_dir)."""
    if config.dataset != IMAGES:
        return cifar.load(config.dataset, data_dir)
    return image_folders.load(data_dir, image_size=config.image_size,
                              test_fraction=config.test_fraction, seed=config.seed,
                              max_pixels=None, workers=None)
