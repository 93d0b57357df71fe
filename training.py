"""Training a VisionTransformer with model.fit, resumable, and the run directory it writes.

Run directory (--output-dir):
    config.json         the full TrainConfig of the run
    checkpoint.npz      weights + optimizer + run state after the last completed epoch: rerun
                        the same command to resume from it (--restart to start over)
    best.weights.h5     weights with the best validation top-1 so far (rebuild the model from
                        config.json, then load_weights)
    history.csv         one row of metrics per completed epoch
    results.json        test top-1/top-5 of the best weights, timings, device and versions;
                        written when training has finished
    labels.json         the class names in label order
    tensorboard/        TensorBoard logs (--tensorboard, on by default)
    *.png               figures (visualize.py), drawn from the best weights at the end of
                        the run and when it stops early
Every file but the figures is replaced atomically: a crash leaves the previous version
readable. The figures, which visualize.py can redraw, are written in place.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os
import shutil
import signal
import sys
import time
import zipfile
from contextlib import contextmanager
from dataclasses import replace
from typing import Optional

import tensorflow as tf

import cifar_data
import data_augmentations
import devices
import input_pipeline
import visualize
from checkpointing import (CHECKPOINT, RunState, RunStopped, atomic_save, atomic_write_text,
                           load_checkpoint, partial_path, save_checkpoint)
from config import TrainConfig, UsageError
from saved_run import BEST_WEIGHTS, CONFIG, HISTORY, LABELS, RESULTS, TENSORBOARD
from vit_model import build_model

keras = tf.keras
RUN_FILES = (CONFIG, CHECKPOINT, BEST_WEIGHTS, HISTORY, RESULTS, LABELS)
MIN_LEARNING_RATE = 1e-6
LR_FACTOR = 0.5          # --patience epochs without a better val top-1 halve the rate


def default_output_dir(dataset: str) -> str:
    return os.path.join("runs", f"{dataset}-{time.strftime('%Y%m%d-%H%M%S')}")


class Bookkeeper(keras.callbacks.Callback):
    """The run's bookkeeping at every epoch end, in this order: stop on a NaN loss; record
    the metrics; keep the best weights; halve the learning rate on a plateau; stop early if
    asked; save checkpoint.npz and history.csv. A Ctrl-C request stops after that save."""

    def __init__(self, config: TrainConfig, state: RunState, output_dir: str):
        super().__init__()
        self.config, self.state, self.output_dir = config, state, output_dir
        self.nan_at = None                # (epoch, step) of the first non-finite loss
        self.stop_requested = False       # set by the first Ctrl-C
        self.epoch_started = 0.0

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.nan_at is None:
            self.nan_at = (self.state.epochs_done + 1, batch + 1)
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_at is not None:        # nothing of this epoch is kept
            return
        if logs is not None:               # for TensorBoard, which comes after
            logs["learning_rate"] = self.state.learning_rate
        state, logs = self.state, dict(logs or {})
        state.train_seconds += time.perf_counter() - self.epoch_started
        state.epochs_done = epoch + 1
        row = {"epoch": epoch + 1, "learning_rate": state.learning_rate}
        row.update({k: float(v) for k, v in sorted(logs.items()) if k not in ("lr",
                                                                                "learning_rate")})
        state.history.append(row)

        score = row.get("val_top1", -math.inf)
        improved = score > state.best_val_top1
        if improved:
            state.best_val_top1, state.best_epoch = score, epoch + 1
            state.epochs_since_best = state.epochs_since_lr_change = 0
        else:
            state.epochs_since_best += 1
            state.epochs_since_lr_change += 1
        if state.epochs_since_lr_change >= self.config.patience and \
                state.learning_rate > MIN_LEARNING_RATE:
            state.learning_rate = max(state.learning_rate * LR_FACTOR, MIN_LEARNING_RATE)
            state.epochs_since_lr_change = 0
            self.model.optimizer.learning_rate = state.learning_rate
            print(f"Validation top-1 has not improved for {self.config.patience} epochs: "
                  f"learning rate now {state.learning_rate:.3g}")
        if self.config.early_stopping and state.epochs_since_best >= self.config.early_stopping:
            state.stopped_early = True
            self.model.stop_training = True
            print(f"Early stopping: no better validation top-1 for "
                  f"{self.config.early_stopping} epochs")

        # The checkpoint first: if a crash follows, resume() rewrites the best weights from it.
        save_checkpoint(self.path(CHECKPOINT), self.model, self.model.optimizer, state)
        if improved:
            atomic_save(self.path(BEST_WEIGHTS), self.model.save_weights)
        write_history(self.path(HISTORY), state.history)
        if self.stop_requested:
            self.model.stop_training = True


def write_history(path: str, history) -> None:
    if not history:
        return
    columns = list(dict.fromkeys(key for row in history for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def tensorboard_callbacks(config: TrainConfig, output_dir: str) -> list:
    """[a TensorBoard callback] logging the per-epoch metrics into OUTPUT_DIR/tensorboard
    (scalars only: no profiler, graph or histograms, which add time and disk to every run);
    [] when --no-tensorboard, or, with a warning, when the tensorboard package is missing
    (TensorFlow 2.21 no longer installs it, and the callback would then fail)."""
    if not config.tensorboard:
        return []
    if importlib.util.find_spec("tensorboard") is None:
        print("warning: the tensorboard package is not installed (pip install tensorboard), "
              "so this run writes no TensorBoard logs; --no-tensorboard silences this")
        return []
    return [TensorBoardLog(log_dir=os.path.join(output_dir, TENSORBOARD), profile_batch=0,
                           write_graph=False)]


class TensorBoardLog(keras.callbacks.TensorBoard):
    """Logs the `learning_rate` the Bookkeeper put in the logs: the rate the epoch trained
    with, as in history.csv. Keras 3's TensorBoard would read the optimizer's rate, which
    the Bookkeeper may already have lowered for the next epoch."""

    def _collect_learning_rate(self, logs):  # Keras's hook for that (TF 2.10 and Keras 3)
        return logs


@contextmanager
def two_stage_interrupt(bookkeeper: Bookkeeper):
    """First Ctrl-C: finish and save the current epoch, then stop. Second: stop at once
    (KeyboardInterrupt); the last completed epoch is on disk either way."""
    def on_interrupt(signum, frame):
        if bookkeeper.stop_requested:
            raise KeyboardInterrupt
        bookkeeper.stop_requested = True
        print("\nCtrl-C: stopping once this epoch is saved (Ctrl-C again to stop now, "
              "losing this epoch)", flush=True)

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def label_classes(config: TrainConfig) -> Optional[int]:
    """How labels are encoded for this config (input_pipeline.encode_labels' one_hot_classes):
    one-hot over config.num_classes when mixup/cutmix make soft labels, else None (class
    indices). Training, validation and test data must all follow it, as compile_model does."""
    return config.num_classes if config.soft_labels else None


def set_precision_policy(config: TrainConfig, device: devices.Device) -> None:
    """mixed_float16 where --mixed-precision and the device call for it, else float32; set
    before the model is built."""
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if devices.use_mixed_precision(config.mixed_precision, device)
        else "float32")


def compile_model(model, config: TrainConfig, jit_compile: bool) -> None:
    """Adam, cross-entropy on logits, metrics top1/top5: the categorical forms for one-hot
    (soft) labels, the sparse forms for class indices, as label_classes(config) says."""
    if label_classes(config) is None:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = [keras.metrics.SparseCategoricalAccuracy(name="top1"),
                   keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5")]
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True)
        metrics = [keras.metrics.CategoricalAccuracy(name="top1"),
                   keras.metrics.TopKCategoricalAccuracy(k=5, name="top5")]
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate),
                  loss=loss, metrics=metrics, jit_compile=jit_compile,
                  steps_per_execution=config.steps_per_execution)


def evaluate_test(model, config: TrainConfig, x_test, y_test, batch_size: int) -> dict:
    """{test_top1, test_top5, test_loss} of a model compiled by compile_model, on test images
    and class indices: what results.json records and evaluate.py recomputes."""
    test = model.evaluate(input_pipeline.eval_dataset(x_test, y_test, batch_size,
                                                      label_classes(config)),
                          return_dict=True, verbose=0)
    return {"test_top1": float(test["top1"]), "test_top5": float(test["top5"]),
            "test_loss": float(test["loss"])}


def make_augment(config: TrainConfig) -> input_pipeline.BatchAugment:
    """The batch augment callback for input_pipeline.train_dataset, as the config sets it;
    labels come out encoded as label_classes(config) says."""
    one_hot_classes = label_classes(config)

    def augment(images, labels, seed):
        return data_augmentations.augment_batch(
            images, input_pipeline.encode_labels(labels, one_hot_classes), seed,
            crop_padding=config.crop_padding, flip=config.flip,
            vertical_flip=config.vertical_flip, randaugment_ops=config.randaugment_ops,
            randaugment_n=config.randaugment_n,
            randaugment_magnitude=config.randaugment_magnitude,
            randaugment_prob=config.randaugment_prob, erasing_prob=config.erasing_prob,
            erasing_max_area=config.erasing_max_area, mixup_alpha=config.mixup_alpha,
            cutmix_alpha=config.cutmix_alpha)
    return augment


def prepare_output_dir(config: TrainConfig, restart: bool):
    """Creates or reopens the run directory and writes config.json; returns the config of
    the run being resumed, or None for a fresh run."""
    output_dir = config.output_dir
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
    config_path = os.path.join(output_dir, CONFIG)
    saved = None
    if os.path.exists(os.path.join(output_dir, CHECKPOINT)) and os.path.exists(config_path):
        try:
            with open(config_path, encoding="utf-8") as handle:
                saved = TrainConfig.from_dict(json.load(handle))
        except (ValueError, TypeError) as error:
            raise UsageError(f"{config_path} is damaged ({error}); add --restart to start the "
                             "run over") from None
        check_resumable(saved, config)
    atomic_write_text(config_path, json.dumps(config.to_dict(), indent=2) + "\n")
    return saved


def check_resumable(saved: TrainConfig, wanted: TrainConfig) -> None:
    if saved.dataset != wanted.dataset:
        raise UsageError(f"{wanted.output_dir} holds a {saved.display_name} run; resume it with "
                         f"train_{saved.dataset}.py, or pick another --output-dir")
    differences = saved.differences_that_block_resume(wanted)
    if differences:
        name, old, new = differences[0]
        raise UsageError(
            f"{wanted.output_dir} holds a run with --{name.replace('_', '-')} {old}, not {new}; "
            "rerun with its settings to resume, add --restart to start it over, or pick "
            "another --output-dir")


def run(config: TrainConfig, data: cifar_data.CifarData, device: devices.Device,
        restart: bool = False) -> dict:
    """Trains (or resumes), keeps the best weights, evaluates them on the test set; returns
    what it writes to results.json. Raises RunStopped on NaN, disk errors and Ctrl-C."""
    config = replace(config, output_dir=config.output_dir or default_output_dir(config.dataset))
    output_dir = config.output_dir
    saved_config = prepare_output_dir(config, restart)
    atomic_write_text(os.path.join(output_dir, LABELS), json.dumps(data.label_names) + "\n")

    keras.utils.set_random_seed(config.seed)
    set_precision_policy(config, device)
    (x_train, y_train), (x_val, y_val) = cifar_data.split_validation(
        data.x_train, data.y_train, config.validation_fraction, config.seed)
    model = build_model(config)
    compile_model(model, config, jit_compile=devices.use_xla(config.xla, device))

    state = RunState(learning_rate=config.learning_rate)
    checkpoint = os.path.join(output_dir, CHECKPOINT)
    if saved_config is not None:
        state = resume(checkpoint, model, config, saved_config)
    else:
        print(f"Data: {len(x_train):,} training, {len(x_val):,} validation, "
              f"{len(data.x_test):,} test images; run directory {output_dir}")

    bookkeeper = Bookkeeper(config, state, output_dir)
    if state.epochs_done < config.epochs and not state.stopped_early:
        train = input_pipeline.train_dataset(x_train, y_train, config.batch_size,
                                             make_augment(config), config.seed,
                                             state.epochs_done, config.epochs)
        val = input_pipeline.eval_dataset(x_val, y_val, config.batch_size,
                                          label_classes(config))
        try:
            with two_stage_interrupt(bookkeeper):
                model.fit(train, initial_epoch=state.epochs_done, epochs=config.epochs,
                          steps_per_epoch=input_pipeline.steps_per_epoch(len(x_train),
                                                                         config.batch_size),
                          validation_data=val, shuffle=False,
                          callbacks=[bookkeeper, *tensorboard_callbacks(config, output_dir)],
                          verbose=1 if sys.stdout.isatty() else 2)
        except KeyboardInterrupt:
            stopped = interrupted(config, state)
        else:
            stopped = (diverged(config, state, *bookkeeper.nan_at) if bookkeeper.nan_at else
                       interrupted(config, state) if bookkeeper.stop_requested and
                       state.epochs_done < config.epochs else None)
        if stopped is not None:
            draw_figures(config, data, model)
            raise stopped

    try:
        return finish(config, data, model, state, device)
    except KeyboardInterrupt:
        raise RunStopped(f"stopped by Ctrl-C during the final evaluation; all "
                         f"{state.epochs_done} epochs are saved in {config.output_dir}; run "
                         f"{resume_command(config)} to evaluate them", exit_code=130) from None


def draw_figures(config: TrainConfig, data: cifar_data.CifarData, model) -> None:
    """The run's figures from its best weights (none before the first epoch has ended)."""
    best = os.path.join(config.output_dir, BEST_WEIGHTS)
    if not os.path.exists(best):
        return
    print("Drawing the figures of the run so far (Ctrl-C skips them)", flush=True)
    try:
        model.load_weights(best)
        visualize.write_run_figures(config.output_dir, model, data.x_test, data.y_test,
                                    data.label_names)
    except KeyboardInterrupt:
        print("figures skipped")


def resume(checkpoint: str, model, config: TrainConfig, saved: TrainConfig) -> RunState:
    try:
        state = load_checkpoint(checkpoint, model, model.optimizer)
    except (KeyError, ValueError, TypeError, OSError, zipfile.BadZipFile) as error:
        raise UsageError(f"{checkpoint} does not fit this model or is damaged ({error}); "
                         "add --restart to start the run over") from None
    if config.learning_rate != saved.learning_rate:      # asked for anew, e.g. after a NaN
        state.learning_rate = config.learning_rate
        state.epochs_since_lr_change = 0
    model.optimizer.learning_rate = state.learning_rate
    best_weights = os.path.join(config.output_dir, BEST_WEIGHTS)
    if state.best_epoch == state.epochs_done and (
            not os.path.exists(best_weights)
            or os.path.getmtime(best_weights) < os.path.getmtime(checkpoint)):
        # The last epoch was the best, and its weights file, written after the checkpoint,
        # is missing or older: a crash came in between. The checkpoint holds those weights.
        atomic_save(best_weights, model.save_weights)
    best = (f", best validation top-1 {state.best_val_top1:.2%} at epoch {state.best_epoch}"
            if state.best_epoch else "")
    done = f"Resuming {config.output_dir}: {state.epochs_done} of {config.epochs} epochs done{best}"
    if state.epochs_done >= config.epochs or state.stopped_early:
        print(f"{done}; training is complete, evaluating the best weights")
    else:
        print(f"{done}; continuing at epoch {state.epochs_done + 1} with learning rate "
              f"{state.learning_rate:g}")
    return state


def resume_command(config: TrainConfig) -> str:
    script = f"train_{config.dataset}.py"
    return f"python {script} --output-dir {config.output_dir} (with the same flags)"


def interrupted(config: TrainConfig, state: RunState) -> RunStopped:
    return RunStopped(f"stopped by Ctrl-C; {state.epochs_done} epoch(s) saved in "
                      f"{config.output_dir}; to resume, run {resume_command(config)}",
                      exit_code=130)


def diverged(config: TrainConfig, state: RunState, epoch: int, step: int) -> RunStopped:
    kept = (f"the best checkpoint (epoch {state.best_epoch}) is unchanged"
            if state.best_epoch else "no checkpoint had been saved yet")
    return RunStopped(f"the loss became NaN or infinite at epoch {epoch}, step {step}, so "
                      f"training stopped; {kept}. Try a lower --learning-rate (now "
                      f"{state.learning_rate:g}, e.g. {state.learning_rate / 4:g}): rerunning "
                      "with it resumes from the last saved epoch")


def finish(config: TrainConfig, data: cifar_data.CifarData, model, state: RunState,
           device: devices.Device) -> dict:
    """Evaluates the best weights on the test set, writes results.json and the figures."""
    best = os.path.join(config.output_dir, BEST_WEIGHTS)
    if not os.path.exists(best):
        raise UsageError(f"{best} is missing, so the run cannot be evaluated; add --restart "
                         "to train it again")
    model.load_weights(best)
    results = {
        "dataset": config.dataset,
        **evaluate_test(model, config, data.x_test, data.y_test, config.batch_size),
        "best_val_top1": state.best_val_top1,
        "best_epoch": state.best_epoch,
        "epochs_completed": state.epochs_done,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 2),
        "device": device.kind,
        "device_name": device.name,
        **devices.versions(),
        "config": config.to_dict(),
    }
    atomic_write_text(os.path.join(config.output_dir, RESULTS),
                      json.dumps(results, indent=2) + "\n")
    print(f"Test accuracy of the best epoch ({state.best_epoch}): "
          f"top-1 {results['test_top1']:.2%}, top-5 {results['test_top5']:.2%}")
    print(f"Results in {os.path.join(config.output_dir, RESULTS)}")
    visualize.write_run_figures(config.output_dir, model, data.x_test, data.y_test,
                                data.label_names)
    return results
