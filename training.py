"""Training a VisionTransformer with model.fit: resumable, with the run's bookkeeping.

`run` trains (or resumes) the experiment in a TrainConfig with the RunOptions of this machine,
writing the run directory that run_dir.py describes, and ends by evaluating the best
weights on the test set. It trains on one device, or with the tf.distribute strategy of a
distribution.Plan (several GPUs, several workers: only the chief writes the run directory).
"""
from __future__ import annotations

import importlib.util
import json
import math
import re
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Optional

import numpy as np
import tensorflow as tf

import cifar_data
import devices
import distribution
import input_pipeline
import optimization
import run_dir
import visualize
from config import RunOptions, TrainConfig, flat, from_json, listed_differences, to_json
from errors import RunStopped, UsageError, first_line
from run_dir import RunState
from vit_model import build_model

keras = tf.keras
LR_FACTOR = 0.5          # --patience epochs without a better val top-1 halve the rate
# --time-budget: untimed steps first (tracing, warm caches), then timed ones; the plan uses
# this share of the budget, as epochs vary by a few percent in length.
CALIBRATION_WARMUP_STEPS, CALIBRATION_STEPS, BUDGET_SHARE = 3, 10, 0.95


class Bookkeeper(keras.callbacks.Callback):
    """The run's bookkeeping at every epoch end, one method a step, in this order: stop on a
    NaN loss; record the metrics; keep the best weights; halve the learning rate on a
    plateau; stop early if asked; save checkpoint.npz and history.csv. A Ctrl-C request
    stops after that save.

    Keras has callbacks for most of these (TerminateOnNaN, ModelCheckpoint,
    ReduceLROnPlateau, EarlyStopping, CSVLogger), but they keep their counters in Python
    objects that no file holds: a resumed run would restart its plateau and early-stopping
    counts, and their files are not written atomically. Here all of it is RunState, saved
    with the weights in one checkpoint, so a resumed run goes on exactly where it stopped."""

    def __init__(self, config: TrainConfig, state: RunState, output_dir: str,
                 tensorboard: "EpochLog | None" = None):
        super().__init__()
        self.config, self.state, self.output_dir = config, state, output_dir
        self.tensorboard = tensorboard
        self.nan_at = None                # (epoch, step) of the first non-finite loss
        self.stop_requested = False       # set by the first Ctrl-C
        self.epoch_started = 0.0
        # Multi-worker: distribution.any_worker, so that a Ctrl-C on one worker stops all
        # after the same epoch (a worker going on alone would wait in its collectives).
        self.any_worker = lambda flag: flag

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.nan_at is None:
            self.nan_at = (self.state.epochs_done + 1, batch + 1)
            self.model.stop_training = True
        plan = self.state.plan                # --time-budget: the last epoch is cut short
        if plan and self.state.epochs_done + 1 == plan["epochs"] and \
                batch + 1 >= plan["last_epoch_steps"]:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_at is not None:        # nothing of this epoch is kept
            return
        row = self.record(epoch, logs or {})
        improved = self.track_best(row)
        self.halve_rate_on_plateau()
        self.stop_early_if_asked()
        self.save(improved)
        if self.tensorboard is not None:
            self.tensorboard.write(row)
        # A request stays set even when the vote missed it (a Ctrl-C during the vote), for
        # the next vote; but only the vote stops training, so all workers stop together.
        if self.any_worker(self.stop_requested):
            self.stop_requested = True
            self.model.stop_training = True

    def record(self, epoch: int, logs: dict) -> dict:
        """Appends the epoch's row (epoch, the learning rate at the end of its training:
        plateau runs train a whole epoch at it, cosine runs' next step uses it; the run's
        seconds so far; its metrics) to the history and counts its time; returns the row."""
        state = self.state
        state.train_seconds += time.perf_counter() - self.epoch_started
        state.epochs_done = epoch + 1
        if self.config.lr_schedule != "plateau":      # the schedule's rate at the epoch's end
            state.learning_rate = optimization.current_learning_rate(self.model.optimizer)
        row = {"epoch": epoch + 1, "learning_rate": state.learning_rate,
               "train_seconds": round(state.train_seconds, 2)}     # cumulative, this run
        row.update({k: float(v) for k, v in sorted(logs.items())
                    if k not in ("lr", "learning_rate", "train_seconds")})
        state.history.append(row)
        return row

    def track_best(self, row: dict) -> bool:
        """Whether this epoch's validation top-1 is the best so far; updates the counters."""
        state = self.state
        score = row.get("val_top1", -math.inf)
        if score > state.best_val_top1:
            state.best_val_top1, state.best_epoch = score, row["epoch"]
            state.epochs_since_best = state.epochs_since_lr_change = 0
            return True
        state.epochs_since_best += 1
        state.epochs_since_lr_change += 1
        return False

    def halve_rate_on_plateau(self) -> None:
        state, floor = self.state, self.config.min_learning_rate
        if self.config.lr_schedule == "plateau" and \
                state.epochs_since_lr_change >= self.config.patience and \
                state.learning_rate > floor:
            state.learning_rate = max(state.learning_rate * LR_FACTOR, floor)
            state.epochs_since_lr_change = 0
            self.model.optimizer.learning_rate = state.learning_rate
            print(f"Validation top-1 has not improved for {self.config.patience} epochs: "
                  f"learning rate now {state.learning_rate:.3g}")

    def stop_early_if_asked(self) -> None:
        if self.config.early_stopping and \
                self.state.epochs_since_best >= self.config.early_stopping:
            self.state.stopped_early = True
            self.model.stop_training = True
            print(f"Early stopping: no better validation top-1 for "
                  f"{self.config.early_stopping} epochs")

    def save(self, improved: bool) -> None:
        # The checkpoint first: if a crash follows, resume() rewrites the best weights from it.
        run_dir.save_checkpoint(self.path(run_dir.CHECKPOINT), self.model, self.model.optimizer,
                                self.state)
        if improved:
            run_dir.save_weights(self.model, self.path(run_dir.BEST_WEIGHTS))
        run_dir.write_history(self.path(run_dir.HISTORY), self.state.history)


class EpochLog:
    """TensorBoard scalars of each epoch, from the Bookkeeper's history row: train/ gets
    loss, top1, top5 and learning_rate (as history.csv: the rate at the end of the epoch's
    training), validation/ the val_ metrics under the same names, as Keras's TensorBoard
    callback lays them out."""

    def __init__(self, log_dir: str):
        self.writers = {split: tf.summary.create_file_writer(os.path.join(log_dir, split))
                        for split in ("train", "validation")}

    def write(self, row: dict) -> None:
        for name, value in row.items():
            if name in ("epoch", "train_seconds"):
                continue
            split = "validation" if name.startswith("val_") else "train"
            with self.writers[split].as_default():
                tf.summary.scalar(f"epoch_{name.removeprefix('val_')}", value,
                                  step=row["epoch"])
        for writer in self.writers.values():
            writer.flush()


def epoch_log(options: RunOptions, output_dir: str) -> "EpochLog | None":
    """The run's EpochLog in OUTPUT_DIR/tensorboard; None when --no-tensorboard, or, with a
    warning, when the tensorboard package is missing (TensorFlow 2.21 does not install it,
    and tf.summary.scalar needs it)."""
    if not options.tensorboard:
        return None
    if importlib.util.find_spec("tensorboard") is None:
        print("warning: the tensorboard package is not installed (pip install tensorboard), "
              "so this run writes no TensorBoard logs; --no-tensorboard silences this")
        return None
    return EpochLog(os.path.join(output_dir, run_dir.TENSORBOARD))


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


def set_precision_policy(options: RunOptions, device: devices.Device) -> None:
    """mixed_float16 where --mixed-precision and the device call for it, else float32; set
    before the model is built."""
    keras.mixed_precision.set_global_policy(
        "mixed_float16" if devices.use_mixed_precision(options.mixed_precision, device)
        else "float32")


def compile_model(model, config: TrainConfig, jit_compile: bool = False,
                  steps_per_execution: int = 1, steps_per_epoch: int = 1
                  ) -> Optional[optimization.WarmupCosine]:
    """The config's optimizer (Adam or AdamW, its schedule, clipping) and cross-entropy on
    logits (label-smoothed if asked) with metrics top1/top5: the categorical forms for
    one-hot (soft) labels, the sparse forms for class indices, as
    input_pipeline.label_classes says. Returns the cosine schedule (None for a plateau
    run's constant rate), whose steps the caller may fix (WarmupCosine.set_steps)."""
    cosine = config.lr_schedule == "cosine"
    rate = optimization.learning_rate_schedule(
        "cosine" if cosine else "constant", config.learning_rate,
        total_steps=max(1, round(config.epochs * steps_per_epoch)),
        warmup_steps=round(config.warmup_epochs * steps_per_epoch),
        floor=config.min_learning_rate)
    loss, metrics = optimization.loss_and_metrics(
        one_hot=input_pipeline.label_classes(config) is not None,
        label_smoothing=config.label_smoothing)
    model.compile(optimizer=optimization.build_optimizer(config.optimizer, rate,
                                                         config.weight_decay,
                                                         config.clip_norm, model),
                  loss=loss, metrics=metrics, jit_compile=jit_compile,
                  steps_per_execution=steps_per_execution)
    return rate if cosine else None


def evaluate_test(model, config: TrainConfig, x_test, y_test, batch_size: int) -> dict:
    """{test_top1, test_top5, test_loss} of a model compiled by compile_model, on test images
    and class indices: what results.json records and evaluate.py recomputes."""
    test = model.evaluate(input_pipeline.eval_dataset(x_test, y_test, batch_size,
                                                      input_pipeline.label_classes(config)),
                          return_dict=True, verbose=0)
    return {"test_top1": float(test["top1"]), "test_top5": float(test["top5"]),
            "test_loss": float(test["loss"])}


def run(config: TrainConfig, options: RunOptions, data: cifar_data.CifarData,
        device: devices.Device, restart: bool = False,
        cluster: "distribution.Plan | None" = None) -> dict:
    """Trains (or resumes), keeps the best weights, evaluates them on the test set; returns
    what it writes to results.json. Raises RunStopped on NaN, disk errors, Ctrl-C and a lost
    worker, and UsageError, before touching anything, when another process trains in the
    folder. `cluster` (distribution.create) is the tf.distribute strategy, one device by
    default. On several workers only the chief writes --output-dir and the results; the
    others keep their bookkeeping in distribution.worker_dir() and return {}."""
    cluster = cluster or distribution.single_device()
    cluster.per_replica_batch(config.batch_size)              # UsageError unless it divides
    if config.time_budget and cluster.workers > 1:
        raise UsageError("--time-budget times one machine's steps; with several workers, "
                         "give --epochs instead (and --time-budget 0)")
    options = replace(options, output_dir=options.output_dir or run_dir.default_path(
        config.dataset))
    try:
        if cluster.chief:
            with run_dir.RunLock(options.output_dir):
                return train(config, options, data, device, restart, cluster)
        with distribution.worker_dir() as own:
            return train(config, replace(options, output_dir=own, tensorboard=False), data,
                         device, True, cluster)
    except LOST_WORKER_ERRORS as error:      # in an exchange outside model.fit
        if cluster.workers == 1:
            raise
        raise RunStopped(f"training stopped: lost contact with another worker of the "
                         f"cluster ({type(error).__name__}: {tensorflow_cause(error)}); rerun "
                         "every worker's command (the same flags and TF_CONFIG)") from None


def train(config: TrainConfig, options: RunOptions, data: cifar_data.CifarData,
          device: devices.Device, restart: bool, cluster: "distribution.Plan") -> dict:
    """`run` in options.output_dir, which is this worker's own folder when not the chief."""
    output_dir = options.output_dir
    saved_config = share_start(cluster, config, run_dir.prepare_for_training(
        config, options, restart), output_dir)
    run_dir.atomic_write_json(os.path.join(output_dir, run_dir.LABELS), data.label_names)

    keras.utils.set_random_seed(config.seed)
    set_precision_policy(options, device)
    (x_train, y_train), (x_val, y_val) = cifar_data.split_validation(
        data.x_train, data.y_train, config.validation_fraction, config.seed)
    steps = input_pipeline.steps_per_epoch(len(x_train), config.batch_size)
    one_hot = input_pipeline.label_classes(config)
    augment = input_pipeline.make_augment(config.augmentation, one_hot)
    val = input_pipeline.eval_dataset(x_val, y_val, config.batch_size, one_hot)
    with cluster.strategy.scope():         # model, optimizer and metrics on every replica
        model = build_model(config)
        schedule = compile_model(model, config,
                                 jit_compile=devices.use_xla(options.xla, device),
                                 steps_per_execution=options.steps_per_execution,
                                 steps_per_epoch=steps)
        state = RunState(learning_rate=config.learning_rate)
        if saved_config is not None:
            state = resume(model, config, options, saved_config)
        else:
            print(f"Data: {len(x_train):,} training, {len(x_val):,} validation, "
                  f"{len(data.x_test):,} test images; run directory {output_dir}")
            if config.time_budget:
                state.plan = plan_time_budget(model, config, options, (x_train, y_train),
                                              augment, val, len(x_val))
                state.train_seconds += state.plan["calibration_seconds"]
    if state.plan is not None:               # the budget sets the epochs, resumed too
        config = replace(config, epochs=state.plan["epochs"])
    if state.schedule_steps is None:         # fixed at the start: resumed and extended runs
        state.schedule_steps = ([state.plan["steps"], state.plan["warmup_steps"]]  # keep
                                if state.plan else                               # their
                                [config.epochs * steps, round(config.warmup_epochs * steps)])
    if schedule is not None:
        schedule.set_steps(*state.schedule_steps)

    bookkeeper = Bookkeeper(config, state, output_dir, epoch_log(options, output_dir))
    bookkeeper.any_worker = lambda flag: distribution.any_worker(cluster, flag)
    if state.epochs_done < config.epochs and not state.stopped_early:
        train_data = training_data(cluster, config, augment, x_train, y_train,
                                   state.epochs_done)
        try:
            with two_stage_interrupt(bookkeeper):
                model.fit(train_data, initial_epoch=state.epochs_done, epochs=config.epochs,
                          steps_per_epoch=input_pipeline.steps_per_epoch(len(x_train),
                                                                         config.batch_size),
                          validation_data=val, shuffle=False, callbacks=[bookkeeper],
                          verbose=1 if sys.stdout.isatty() else 2)
        except KeyboardInterrupt:
            stopped = interrupted(config, options, state, cluster)
        except LOST_WORKER_ERRORS as error:
            if cluster.workers == 1:
                raise
            raise lost_worker(config, options, state, cluster, error) from None
        else:
            stopped = (diverged(config, state, *bookkeeper.nan_at) if bookkeeper.nan_at else
                       interrupted(config, options, state, cluster)
                       if bookkeeper.stop_requested and state.epochs_done < config.epochs
                       else None)
        if stopped is not None:
            if cluster.chief:
                draw_figures(output_dir, data, local_model(cluster, config, model))
            raise stopped

    if not cluster.chief:
        print(f"Worker done: {state.epochs_done} epochs trained; the chief writes the results")
        return {}
    try:
        return finish(config, options, data, local_model(cluster, config, model), state,
                      device, len(x_train), cluster)
    except KeyboardInterrupt:
        raise RunStopped(f"stopped by Ctrl-C during the final evaluation; all "
                         f"{state.epochs_done} epochs are saved in {output_dir}; run "
                         f"{resume_command(config, options)} to evaluate them",
                         exit_code=130) from None


# What a collective op raises when another worker died or hung: the coordination service's
# heartbeats abort collectives with UnavailableError; the others are what an abort, a
# timeout or a restarted peer give.
LOST_WORKER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                      tf.errors.CancelledError, tf.errors.AbortedError,
                      tf.errors.FailedPreconditionError)


def lost_worker(config: TrainConfig, options: RunOptions, state: RunState,
                plan: "distribution.Plan", error: Exception) -> RunStopped:
    kept = (f"{state.epochs_done} epoch(s) are saved in {options.output_dir}" if plan.chief
            else "the chief keeps the last saved epoch")
    return RunStopped(f"training stopped: a worker of the cluster died or stopped responding "
                      f"({type(error).__name__}: {tensorflow_cause(error)}); {kept}; rerun "
                      "every worker's command (the same flags and TF_CONFIG) to resume")


def tensorflow_cause(error: Exception) -> str:
    """The line of a TensorFlow op error that says what happened ("Collective ops is aborted
    by: ..."): its message follows a 'Graph execution error:' header, the Python frames
    where the op was defined (indented) and, on TF 2.10, a 'Node:' line."""
    message = getattr(error, "message", str(error))
    headers = ("Graph execution error", "Detected at node", "Node:")
    lines = [line for line in message.splitlines() if line.strip() and not line[0].isspace()
             and not line.startswith(headers)]
    # eager ops prefix the op's name: "{{function_node __wrapped__CollectiveBcastSend...}} "
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", lines[0].strip()) if lines \
        else first_line(error)


def training_data(plan: "distribution.Plan", config: TrainConfig, augment, x_train, y_train,
                  first_epoch: int):
    """The training batches for model.fit: input_pipeline.train_dataset on one replica; on
    several, each worker's pipeline makes its own replicas' shares of every global batch
    (input_pipeline.replica_train_dataset), so no image is read twice per epoch."""
    if plan.replicas == 1:
        return input_pipeline.train_dataset(x_train, y_train, config.batch_size, augment,
                                            config.seed, first_epoch, config.epochs)

    def pipeline(context):        # tf.distribute.InputContext: one pipeline per worker
        local = plan.replicas // context.num_input_pipelines
        return input_pipeline.replica_train_dataset(
            x_train, y_train, config.batch_size, augment, config.seed, first_epoch,
            config.epochs, plan.replicas, context.input_pipeline_id * local, local)

    return plan.strategy.distribute_datasets_from_function(pipeline)


def share_start(plan: "distribution.Plan", config: TrainConfig,
                saved: "TrainConfig | None", output_dir: str) -> "TrainConfig | None":
    """On several workers, the chief's starting point for all: every other worker checks that
    it was given the chief's experiment (UsageError naming the differences otherwise), and
    gets the experiment the chief resumes (None for a fresh run) and its checkpoint, written
    into the worker's own output_dir. So all resume from the same epoch, weights and state,
    with no shared disk. One worker: `saved` as given."""
    if plan.workers == 1:
        return saved
    if plan.chief:
        distribution.broadcast_bytes(plan, json.dumps(
            {"experiment": to_json(config, RunOptions()),
             "resumed": None if saved is None else to_json(saved, RunOptions())}).encode())
        if saved is not None:
            with open(os.path.join(output_dir, run_dir.CHECKPOINT), "rb") as handle:
                distribution.broadcast_bytes(plan, handle.read())
        return saved
    chief = json.loads(distribution.broadcast_bytes(plan, None))
    chiefs = flat(from_json(chief["experiment"], "the chief's config")[0])
    mine = flat(config)
    differences = listed_differences((name, mine[name], chiefs[name]) for name in mine
                                     if mine[name] != chiefs[name])
    if differences:
        raise UsageError(f"this worker was started with {differences} (the chief's); start "
                         "every worker with the same flags")
    if chief["resumed"] is None:
        return None
    contents = distribution.broadcast_bytes(plan, None)

    def write(path):
        with open(path, "wb") as handle:
            handle.write(contents)
    run_dir.atomic_save(os.path.join(output_dir, run_dir.CHECKPOINT), write)
    return from_json(chief["resumed"], "the chief's config")[0]


def local_model(plan: "distribution.Plan", config: TrainConfig, model):
    """A model for the chief's test evaluation and figures: `model` itself on one worker; on
    several, a copy of it outside the strategy (built, compiled, given its weights), whose
    predictions need no other worker, so they can exit or have died."""
    if plan.workers == 1:
        return model
    copy = build_model(config)
    compile_model(copy, config)
    copy.set_weights(model.get_weights())
    return copy


class StepTimer(keras.callbacks.Callback):
    """Notes the time at the end of every training step (or every steps_per_execution
    steps), by the index of that step."""

    def __init__(self):
        super().__init__()
        self.at = {}

    def on_train_batch_end(self, batch, logs=None):
        self.at[batch] = time.perf_counter()


def plan_time_budget(model, config: TrainConfig, options: RunOptions, train_data, augment,
                     val, val_images: int) -> dict:
    """--time-budget: times the compiled model's real training step on the real pipeline
    (CALIBRATION_STEPS after CALIBRATION_WARMUP_STEPS untimed ones), its validation step and
    the saves at an epoch's end, then picks the most training steps that end within
    BUDGET_SHARE of the budget, the calibration included: whole epochs, the last one cut short
    (the Bookkeeper stops it at `last_epoch_steps`, a resumed run too), with the warmup the
    same share of the schedule as in the config. The model's weights and optimizer state are
    put back as they were: the calibration steps train nothing. Returns the plan, as
    results.json records it."""
    started = time.perf_counter()
    optimizer = model.optimizer
    run_dir.build_optimizer_slots(optimizer, model)      # slots exist; a fresh Adam state:
    getattr(optimizer, "inner_optimizer", optimizer).iterations.assign(0)   # zero moments
    weights = model.get_weights()
    # through a tensor: Keras 2's MirroredVariable has no numpy conversion of its own
    slots = [np.asarray(tf.convert_to_tensor(variable))
             for variable in run_dir.optimizer_variables(optimizer)]

    per_call = options.steps_per_execution
    warmup = per_call * math.ceil(CALIBRATION_WARMUP_STEPS / per_call)
    timed = per_call * math.ceil(CALIBRATION_STEPS / per_call)
    images, labels = train_data
    steps = input_pipeline.steps_per_epoch(len(images), config.batch_size)
    batches = input_pipeline.train_dataset(images, labels, config.batch_size, augment,
                                           config.seed, 0, math.ceil((warmup + timed) / steps))
    timer = StepTimer()
    model.fit(batches, steps_per_epoch=warmup + timed, epochs=1, callbacks=[timer],
              shuffle=False, verbose=0)
    # the timed steps' batches are full ones unless an epoch ends among them
    train_rate = config.batch_size * timed / (timer.at[warmup + timed - 1] - timer.at[warmup - 1])
    model.evaluate(val.take(1), verbose=0)                              # traces the step
    eval_started = time.perf_counter()
    model.evaluate(val.take(3), verbose=0)
    eval_rate = min(val_images, 3 * config.batch_size) / (time.perf_counter() - eval_started)

    with tempfile.TemporaryDirectory() as scratch:  # what every epoch's end writes, timed
        for _ in range(2):                           # the second time: imports are done
            saving_started = time.perf_counter()
            run_dir.save_checkpoint(os.path.join(scratch, run_dir.CHECKPOINT), model,
                                    optimizer, RunState())
            run_dir.save_weights(model, os.path.join(scratch, run_dir.BEST_WEIGHTS))
            saving = time.perf_counter() - saving_started

    model.set_weights(weights)
    for variable, value in zip(run_dir.optimizer_variables(optimizer), slots):
        variable.assign(value)
    step_seconds = config.batch_size / train_rate
    epoch_end_seconds = val_images / eval_rate + saving     # validation and saves, per epoch
    spent = time.perf_counter() - started
    available = config.time_budget * 60 * BUDGET_SHARE - spent
    # the most steps that fit: whole epochs, then a last one cut short after a whole number
    # of executions (Keras counts them from each epoch's start); at least one execution
    epochs, last = 1, min(per_call, steps)
    for candidate in range(1, 100_000):
        left = int((available - candidate * epoch_end_seconds) // step_seconds) \
            - (candidate - 1) * steps
        left = min(steps, left - left % per_call)
        if left <= 0:
            break
        epochs, last = candidate, left
    total = (epochs - 1) * steps + last
    warmup_steps = round(config.warmup_epochs / config.epochs * total)
    plan = {"budget_minutes": config.time_budget,
            "train_images_per_second": round(train_rate, 1),
            "validation_images_per_second": round(eval_rate, 1),
            "epochs": epochs, "steps": total, "last_epoch_steps": last,
            "warmup_steps": warmup_steps,
            "planned_seconds": round(spent + total * step_seconds + epochs * epoch_end_seconds,
                                     1),
            "calibration_seconds": round(spent, 1)}
    print(f"Time budget {config.time_budget:g} min: {train_rate:,.0f} training images/s "
          f"measured over {timed} steps, so {total:,} steps ({total / steps:.2f} epochs, the "
          f"first {warmup_steps:,} warming up), about {plan['planned_seconds']:.0f} s in all")
    return plan


def draw_figures(output_dir: str, data: cifar_data.CifarData, model) -> None:
    """The run's figures from its best weights (none before the first epoch has ended)."""
    best = run_dir.best_weights_path(output_dir)
    if best is None:
        return
    print("Drawing the figures of the run so far (Ctrl-C skips them)", flush=True)
    try:
        run_dir.load_weights(model, best)
        visualize.write_run_figures(output_dir, model, data.x_test, data.y_test,
                                    data.label_names)
    except KeyboardInterrupt:
        print("figures skipped")
    except run_dir.WeightsError as error:
        print(f"warning: figures not drawn: {error}")


def resume(model, config: TrainConfig, options: RunOptions, saved: TrainConfig) -> RunState:
    checkpoint = os.path.join(options.output_dir, run_dir.CHECKPOINT)
    try:
        state = run_dir.load_checkpoint(checkpoint, model, model.optimizer)
    except run_dir.WeightsError as error:
        raise UsageError(f"{error}; add --restart to start the run over") from None
    if config.learning_rate != saved.learning_rate:      # asked for anew, e.g. after a NaN
        state.learning_rate = config.learning_rate       # (cosine: the schedule's new peak)
        state.epochs_since_lr_change = 0
    if config.lr_schedule == "plateau":                  # a schedule's rate follows its step
        model.optimizer.learning_rate = state.learning_rate
    best_weights = os.path.join(options.output_dir, run_dir.BEST_WEIGHTS)
    if state.best_epoch == state.epochs_done and (
            not os.path.exists(best_weights)
            or os.path.getmtime(best_weights) < os.path.getmtime(checkpoint)):
        # The last epoch was the best, and its weights file, written after the checkpoint,
        # is missing or older: a crash came in between. The checkpoint holds those weights.
        run_dir.save_weights(model, best_weights)
    best = (f", best validation top-1 {state.best_val_top1:.2%} at epoch {state.best_epoch}"
            if state.best_epoch else "")
    epochs = state.plan["epochs"] if state.plan else config.epochs     # --time-budget's plan
    done = f"Resuming {options.output_dir}: {state.epochs_done} of {epochs} epochs done{best}"
    if state.epochs_done >= epochs or state.stopped_early:
        print(f"{done}; training is complete, evaluating the best weights")
    else:
        print(f"{done}; continuing at epoch {state.epochs_done + 1} with learning rate "
              f"{state.learning_rate:g}")
    return state


def resume_command(config: TrainConfig, options: RunOptions) -> str:
    """The command that resumes the run, to paste into this shell from this folder: the run
    directory holds every setting. `python` when that is this interpreter on the PATH (an
    activated environment), else this interpreter's full path."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          f"train_{config.dataset}.py")
    try:
        relative = os.path.relpath(script)
    except ValueError:                     # Windows: the script is on another drive
        relative = os.pardir
    if not relative.startswith(os.pardir):  # the app's folder or below it: short and exact
        script = relative
    on_path = shutil.which("python")
    python = "python" if on_path and os.path.normcase(os.path.abspath(on_path)) == \
        os.path.normcase(os.path.abspath(sys.executable)) else sys.executable
    quote = subprocess.list2cmdline if os.name == "nt" else shlex.join
    return quote([python, script, "--output-dir", options.output_dir])


def interrupted(config: TrainConfig, options: RunOptions, state: RunState,
                plan: "distribution.Plan | None" = None) -> RunStopped:
    if plan is not None and plan.workers > 1:
        where = f"saved in {options.output_dir}" if plan.chief else "saved by the chief"
        return RunStopped(f"stopped by Ctrl-C; {state.epochs_done} epoch(s) {where}; to "
                          "resume, rerun every worker's command (the same flags and "
                          "TF_CONFIG)", exit_code=130)
    return RunStopped(f"stopped by Ctrl-C; {state.epochs_done} epoch(s) saved in "
                      f"{options.output_dir}; to resume, run {resume_command(config, options)}",
                      exit_code=130)


def diverged(config: TrainConfig, state: RunState, epoch: int, step: int) -> RunStopped:
    kept = (f"the best checkpoint (epoch {state.best_epoch}) is unchanged"
            if state.best_epoch else "no checkpoint had been saved yet")
    # what --learning-rate sets: the plateau run's current rate, or the cosine run's peak
    rate = state.learning_rate if config.lr_schedule == "plateau" else config.learning_rate
    lower = max(rate / 4, config.min_learning_rate)
    return RunStopped(f"the loss became NaN or infinite at epoch {epoch}, step {step}, so "
                      f"training stopped; {kept}. Try a lower --learning-rate (now {rate:g}, "
                      f"e.g. {lower:g}): rerunning with it resumes from the last saved epoch")


def finish(config: TrainConfig, options: RunOptions, data: cifar_data.CifarData, model,
           state: RunState, device: devices.Device, train_images: int,
           cluster: "distribution.Plan | None" = None) -> dict:
    """Evaluates the best weights on the test set, writes results.json and the figures."""
    output_dir = options.output_dir
    best = run_dir.best_weights_path(output_dir)
    if best is None:
        raise UsageError(f"{os.path.join(output_dir, run_dir.BEST_WEIGHTS)} is missing, so "
                         "the run cannot be evaluated; add --restart to train it again")
    try:
        run_dir.load_weights(model, best)
    except run_dir.WeightsError as error:
        raise UsageError(f"{error}, so the run cannot be evaluated; add --restart to train "
                         "it again") from None
    results = {
        "dataset": config.dataset,
        **evaluate_test(model, config, data.x_test, data.y_test, config.batch_size),
        "best_val_top1": state.best_val_top1,
        "best_epoch": state.best_epoch,
        "epochs_completed": state.epochs_done,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 2),
        "images_seen": (min(state.plan["steps"] * config.batch_size,
                            state.epochs_done * train_images) if state.plan
                        else state.epochs_done * train_images),
        "time_budget_plan": state.plan,
        "distribution": (cluster or distribution.single_device()).record(config.batch_size),
        "device": device.kind,
        "device_name": device.name,
        **devices.versions(),
        "config": to_json(config, options),
    }
    run_dir.atomic_write_json(os.path.join(output_dir, run_dir.RESULTS), results)
    print(f"Test accuracy of the best epoch ({state.best_epoch}): "
          f"top-1 {results['test_top1']:.2%}, top-5 {results['test_top5']:.2%}")
    print(f"Results in {os.path.join(output_dir, run_dir.RESULTS)}")
    visualize.write_run_figures(output_dir, model, data.x_test, data.y_test, data.label_names)
    return results
