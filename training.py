"""Training a VisionTransformer with model.fit, and the run directory it writes.

Run directory (--output-dir):
    config.json         the full TrainConfig of the run
    best.weights.h5     weights with the best validation top-1 so far (rebuild the model from
                        config.json, then load_weights)
    history.csv         one row of metrics per epoch
    results.json        test top-1/top-5 of the best weights, timings, device and versions
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace

import numpy as np
import tensorflow as tf

import cifar_data
import data_augmentations
import devices
import input_pipeline
from config import TrainConfig
from vit_model import build_model

keras = tf.keras
BEST_WEIGHTS = "best.weights.h5"
MONITOR = "val_top1"


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary file beside `path`, then rename over it: readers see the old
    file or the new one, never half of one."""
    temporary = f"{path}.partial"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def default_output_dir(dataset: str) -> str:
    return os.path.join("runs", f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


class BestWeights(keras.callbacks.Callback):
    """Saves the weights whenever validation top-1 improves, atomically."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.best = -math.inf
        self.best_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(MONITOR)
        if value is not None and value > self.best:
            self.best, self.best_epoch = float(value), epoch + 1
            temporary = self.path.replace(".weights.h5", ".partial.weights.h5")
            self.model.save_weights(temporary)
            os.replace(temporary, self.path)


class LearningRateLog(keras.callbacks.Callback):
    """Puts the learning rate the epoch trained with into the logs, as `learning_rate` on both
    stacks (Keras 2's ReduceLROnPlateau would add `lr` holding the next epoch's rate)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.rate = float(np.asarray(self.model.optimizer.learning_rate))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.pop("lr", None)
            logs["learning_rate"] = self.rate


def compile_model(model, config: TrainConfig, jit_compile: bool) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1"),
                 keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")],
        steps_per_execution=config.steps_per_execution, jit_compile=jit_compile)


def make_augment(config: TrainConfig) -> input_pipeline.BatchAugment:
    def augment(images, labels, seed):
        return data_augmentations.augment_batch(images, seed, flip=config.flip,
                                                crop_padding=config.crop_padding), labels
    return augment


def run(config: TrainConfig, data: cifar_data.CifarData, device: devices.Device) -> dict:
    """Trains, keeps the best weights, evaluates them on the test set; returns results.json."""
    output_dir = config.output_dir or default_output_dir(config.dataset)
    config = replace(config, output_dir=output_dir)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_text(os.path.join(output_dir, "config.json"),
                      json.dumps(config.to_dict(), indent=2) + "\n")

    keras.utils.set_random_seed(config.seed)
    (x_train, y_train), (x_val, y_val) = cifar_data.split_validation(
        data.x_train, data.y_train, config.validation_fraction, config.seed)
    print(f"Data: {len(x_train):,} training, {len(x_val):,} validation, "
          f"{len(data.x_test):,} test images; run directory {output_dir}")

    steps = input_pipeline.steps_per_epoch(len(x_train), config.batch_size)
    train = input_pipeline.train_dataset(x_train, y_train, config.batch_size,
                                         make_augment(config), config.seed, 0, config.epochs)
    val = input_pipeline.eval_dataset(x_val, y_val, config.batch_size)

    model = build_model(config)
    compile_model(model, config, jit_compile=devices.use_xla(config.xla, device))
    best = BestWeights(os.path.join(output_dir, BEST_WEIGHTS))
    callbacks = [
        best,
        keras.callbacks.ReduceLROnPlateau(monitor=MONITOR, mode="max", factor=0.5,
                                          patience=config.patience, min_lr=1e-6),
        LearningRateLog(),
        keras.callbacks.CSVLogger(os.path.join(output_dir, "history.csv")),
    ]
    if config.early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=MONITOR, mode="max",
                                                       patience=config.early_stopping))

    started = time.perf_counter()
    history = model.fit(train, steps_per_epoch=steps, epochs=config.epochs,
                        validation_data=val, callbacks=callbacks, shuffle=False,
                        verbose=1 if sys.stdout.isatty() else 2)
    train_seconds = time.perf_counter() - started

    model.load_weights(best.path)
    test = model.evaluate(input_pipeline.eval_dataset(data.x_test, data.y_test,
                                                      config.batch_size),
                          return_dict=True, verbose=0)
    results = {
        "dataset": config.dataset,
        "test_top1": float(test["top1"]),
        "test_top5": float(test["top5"]),
        "test_loss": float(test["loss"]),
        "best_val_top1": best.best,
        "best_epoch": best.best_epoch,
        "epochs_completed": len(history.history.get("loss", [])),
        "train_seconds": round(train_seconds, 2),
        "device": device.kind,
        "device_name": device.name,
        **devices.versions(),
        "config": config.to_dict(),
    }
    atomic_write_text(os.path.join(output_dir, "results.json"),
                      json.dumps(results, indent=2) + "\n")
    print(f"Test accuracy of the best epoch ({best.best_epoch}): "
          f"top-1 {results['test_top1']:.2%}, top-5 {results['test_top5']:.2%}")
    print(f"Results in {os.path.join(output_dir, 'results.json')}")
    return results
