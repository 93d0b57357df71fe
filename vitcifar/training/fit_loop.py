"""model.fit and what runs around it: the Bookkeeper callback (the run's bookkeeping at every
epoch's end), the BudgetKeeper (--time-budget's re-plans while training) and its progress
bar, the TensorBoard epoch log, the two-stage Ctrl-C handler, and the calibration that
times the training step for --time-budget (time_budget.plan plans from it).
"""
from __future__ import annotations

import importlib.util
import math
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from typing import Optional

from vitcifar.backend.keras_compat import KERAS_3, keras, to_numpy
from vitcifar.config.settings import RunOptions, TrainConfig
from vitcifar.data import input_pipeline
from vitcifar.runs import checkpoint, run_dir, time_budget
from vitcifar.runs.checkpoint import RunState
from vitcifar.runs.time_budget import (CALIBRATION_STEPS, CALIBRATION_WARMUP_STEPS,
                                       REPLAN_EVERY, REPLAN_MIN_STEPS)
from vitcifar.training import optimization
from vitcifar.training.wall_clock import WallClock

LR_FACTOR = 0.5          # --patience epochs without a better val top-1 halve the rate


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
                 tensorboard: "EpochLog | None" = None, clock: Optional[WallClock] = None):
        super().__init__()
        self.config, self.state, self.output_dir = config, state, output_dir
        self.tensorboard = tensorboard
        self.clock = clock or WallClock()     # each epoch's steps, validation and saves
        self.validation_started, self.validation_seconds, self.steps_done = 0.0, 0.0, 0
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
        self.validation_seconds, self.steps_done = 0.0, 0

    def on_test_begin(self, logs=None):               # model.fit's validation
        self.validation_started = time.perf_counter()

    def on_test_end(self, logs=None):
        self.validation_seconds += time.perf_counter() - self.validation_started

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done = batch + 1
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)) and self.nan_at is None:
            self.nan_at = (self.state.epochs_done + 1, batch + 1)
            self.model.stop_training = True
        plan = self.state.plan                # --time-budget: the last epoch is cut short
        if plan and self.state.epochs_done + 1 == plan.epochs and \
                batch + 1 >= plan.last_epoch_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_at is not None:        # nothing of this epoch is kept
            return
        row = self.record(epoch, logs or {})
        improved = self.track_best(row)
        self.halve_rate_on_plateau()
        self.stop_early_if_asked()
        with self.clock.phase("epoch-end saves and logs"):
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
        state, seconds = self.state, time.perf_counter() - self.epoch_started
        state.train_seconds += seconds
        state.epochs_done = epoch + 1
        self.time_epoch(epoch, seconds)
        if self.config.lr_schedule != "plateau":      # the schedule's rate at the epoch's end
            state.learning_rate = optimization.current_learning_rate(self.model.optimizer)
        row = {"epoch": epoch + 1, "learning_rate": state.learning_rate,
               "train_seconds": round(state.train_seconds, 2)}     # cumulative, this run
        row.update({k: float(v) for k, v in sorted(logs.items())
                    if k not in ("lr", "learning_rate", "train_seconds")})
        state.history.append(row)
        return row

    def time_epoch(self, epoch: int, seconds: float) -> None:
        """Adds the epoch's training steps and validation to the wall clock, and its images
        (steps x batch) and seconds to the clock's epochs; `whole` unless cut short."""
        steps, training = self.steps_done, seconds - self.validation_seconds
        self.clock.add("training steps", training)
        self.clock.add("validation", self.validation_seconds)
        self.clock.epochs.append({"epoch": epoch + 1, "images": steps * self.config.batch_size,
                                  "train_seconds": training,
                                  "validation_seconds": self.validation_seconds,
                                  "whole": steps >= self.steps_per_epoch(steps)})

    def steps_per_epoch(self, default: int) -> int:
        """model.fit's steps per epoch (Keras sets self.params when fit starts; a test that
        calls the methods itself has none: `default` then)."""
        return (getattr(self, "params", None) or {}).get("steps") or default

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
        checkpoint.save_checkpoint(self.path(run_dir.CHECKPOINT), self.model,
                                   self.model.optimizer, self.state)
        if improved:
            checkpoint.save_weights(self.model, self.path(run_dir.BEST_WEIGHTS))
        run_dir.write_history(self.path(run_dir.HISTORY), self.state.history)


class BudgetKeeper(keras.callbacks.Callback):
    """--time-budget while training: after every REPLAN_EVERY of the planned steps (at least
    REPLAN_MIN_STEPS), re-plans the steps left (time_budget.replan) from the mean step time
    since the last re-plan and, once an epoch has ended, the gap its validation and saves
    left between two steps; the command's clock says what is spent. The mean counts the
    steps inside epochs only, across as many epochs as it takes: with many short epochs
    (40 in a 15-minute `fast` run) a re-plan spans several. Updates the run state's plan
    (the Bookkeeper, after this callback, stops by it; the checkpoint keeps it) and the
    cosine schedule's total steps (their rate moves a little where the total moves). `now`:
    the clock, a test's own."""

    def __init__(self, state: RunState, clock: WallClock, schedule, batch_size: int,
                 steps_per_epoch: int, steps_per_execution: int, max_epochs: int,
                 now=time.perf_counter):
        super().__init__()
        self.state, self.clock, self.schedule, self.now = state, clock, schedule, now
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.per_call, self.max_epochs = steps_per_execution, max_epochs
        self.every = max(REPLAN_MIN_STEPS, round(REPLAN_EVERY * state.plan.steps))
        self.epoch_end_seconds = state.plan.epoch_end_seconds
        self.since = None             # (global step, time) the rate is measured from
        self.last_end = None          # (global step, time) of the latest step's end
        self.carried = (0, 0.0)       # steps and seconds of ended epochs since the re-plan

    def on_train_batch_end(self, batch, logs=None):
        now, step = self.now(), self.state.epochs_done * self.steps_per_epoch + batch + 1
        previous, self.last_end = self.last_end, (step, now)
        if previous is not None and batch + 1 <= self.per_call:      # an epoch's first call
            if self.since is not None and previous[0] > self.since[0]:
                self.carried = self.counted(previous)
                # the gap between the epochs' steps: validation, saves, a new iterator
                self.epoch_end_seconds = max(0.0, now - previous[1] - (batch + 1)
                                             * self.carried[1] / self.carried[0])
            self.since = self.last_end   # the rate from here: steps inside epochs only
        elif self.since is None:
            self.since = self.last_end
        else:
            steps, seconds = self.counted(self.last_end)
            if steps >= self.every:
                self.replan(seconds / steps, batch + 1)
                self.since, self.carried = self.last_end, (0, 0.0)

    def counted(self, until: tuple) -> tuple:
        """(steps, seconds) since the last re-plan: the ended epochs' and this one's to
        `until`, a (global step, time) mark."""
        return (self.carried[0] + until[0] - self.since[0],
                self.carried[1] + until[1] - self.since[1])

    def replan(self, step_seconds: float, steps_into_epoch: int) -> None:
        plan = time_budget.replan(
            self.state.plan, self.last_end[1] - self.clock.started, self.state.epochs_done,
            steps_into_epoch, self.batch_size / step_seconds, self.epoch_end_seconds,
            self.batch_size, self.steps_per_epoch, self.per_call, self.max_epochs)
        self.state.plan = plan
        self.state.schedule_steps = [plan.steps, plan.warmup_steps]
        if self.schedule is not None:
            self.schedule.set_steps(plan.steps, plan.warmup_steps)


class PlanProgressBar(keras.callbacks.ProgbarLogger):
    """Keras's progress bar, counting by --time-budget's current plan: "Epoch 2/2" for a run
    planned to two epochs (model.fit has room for more, which a re-plan may take), and
    the cut-short last epoch's steps as its bar's end ("160/160", not the whole epoch's
    "399/399"). model.fit takes it in place of its own bar."""

    def __init__(self, state: RunState, steps_per_epoch: int):
        super().__init__(*(() if KERAS_3 else ("steps",)))   # Keras 2's default: samples
        self.state, self.steps_per_epoch = state, steps_per_epoch

    def planned_steps(self, epoch: int) -> int:
        """Steps of 0-based `epoch` by the current plan."""
        plan = self.state.plan
        return plan.last_epoch_steps if epoch + 1 == plan.epochs else self.steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs, self.target = self.state.plan.epochs, self.planned_steps(epoch)
        super().on_epoch_begin(epoch, logs)
        if self.verbose and self.epochs == 1:    # Keras names no single epoch; a re-plan
            print(f"Epoch {epoch + 1}/1")       # may add a second

    def on_train_batch_end(self, batch, logs=None):    # a re-plan moves the epoch's end
        self.target = self.progbar.target = self.planned_steps(self.state.epochs_done)
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.target = self.progbar.target = self.planned_steps(epoch)
        super().on_epoch_end(epoch, logs)


class EpochLog:
    """TensorBoard scalars of each epoch, from the Bookkeeper's history row: train/ gets
    loss, top1, top5 and learning_rate (as history.csv: the rate at the end of the epoch's
    training), validation/ the val_ metrics under the same names, as Keras's TensorBoard
    callback lays them out."""

    def __init__(self, log_dir: str):
        import tensorflow as tf              # tf.summary, on either Keras backend
        self.tf = tf
        self.writers = {split: tf.summary.create_file_writer(os.path.join(log_dir, split))
                        for split in ("train", "validation")}

    def write(self, row: dict) -> None:
        for name, value in row.items():
            if name in ("epoch", "train_seconds"):
                continue
            split = "validation" if name.startswith("val_") else "train"
            with self.writers[split].as_default():
                self.tf.summary.scalar(f"epoch_{name.removeprefix('val_')}", value,
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


class StepTimer(keras.callbacks.Callback):
    """Notes the time at the end of every training step (or every steps_per_execution
    steps), by the index of that step."""

    def __init__(self):
        super().__init__()
        self.at = {}

    def on_train_batch_end(self, batch, logs=None):
        self.at[batch] = time.perf_counter()


def evaluation_cost(model, val, val_images: int, batch_size: int) -> "tuple[float, float]":
    """(images/s, seconds per evaluate call) of the traced test step: one batch and then
    five timed, as a line: each call's own cost (its iterator, callbacks: about as long as a
    batch on a 2-core CPU) would halve a rate timed from one short call."""
    seconds = []
    for batches in (1, 5):
        began = time.perf_counter()
        model.evaluate(val.take(batches), verbose=0)
        seconds.append(time.perf_counter() - began)
    images = min(val_images, 5 * batch_size) - min(val_images, batch_size)
    per_image = max(seconds[1] - seconds[0], 1e-6) / max(images, 1)
    return 1.0 / per_image, max(0.0, seconds[0] - min(val_images, batch_size) * per_image)


def calibrate(model, config: TrainConfig, options: RunOptions, train_data, augment, val,
              val_images: int, test_images: int, clock: WallClock) -> time_budget.Plan:
    """--time-budget: times the compiled model's real training step on the real pipeline
    (CALIBRATION_STEPS after CALIBRATION_WARMUP_STEPS untimed ones), its validation step and
    the saves at an epoch's end, then plans the steps (time_budget.plan) in what is left of
    the budget after the command's time so far (`clock`) and before its end: the test
    evaluation of `test_images` and the figures. The model's weights and optimizer state are
    put back as they were: the calibration steps train nothing."""
    started = time.perf_counter()
    optimizer = model.optimizer
    checkpoint.build_optimizer_slots(optimizer, model)   # slots exist; a fresh Adam state:
    getattr(optimizer, "inner_optimizer", optimizer).iterations.assign(0)   # zero moments
    weights = model.get_weights()
    slots = [to_numpy(variable) for variable in checkpoint.optimizer_variables(optimizer)]

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
    eval_rate, eval_call = evaluation_cost(model, val, val_images, config.batch_size)

    with tempfile.TemporaryDirectory() as scratch:  # what every epoch's end writes, timed
        for _ in range(2):                           # the second time: imports are done
            saving_started = time.perf_counter()
            checkpoint.save_checkpoint(os.path.join(scratch, run_dir.CHECKPOINT), model,
                                       optimizer, RunState())
            checkpoint.save_weights(model, os.path.join(scratch, run_dir.BEST_WEIGHTS))
            saving = time.perf_counter() - saving_started

    model.set_weights(weights)
    for variable, value in zip(checkpoint.optimizer_variables(optimizer), slots):
        variable.assign(value)
    plan = time_budget.plan(
        config.time_budget, time.perf_counter() - started, train_rate, eval_rate,
        eval_call + val_images / eval_rate + saving, config.batch_size, steps, per_call,
        config.warmup_epochs / config.epochs, spent_seconds=clock.elapsed(),
        closing_seconds=eval_call + test_images / eval_rate + time_budget.FIGURES_SECONDS)
    print(f"Time budget {config.time_budget:g} min: {train_rate:,.0f} training images/s "
          f"measured over {timed} steps, so {plan.steps:,} steps ({plan.steps / steps:.2f} "
          f"epochs, the first {plan.warmup_steps:,} warming up), about "
          f"{plan.planned_seconds:.0f} s for the whole command")
    return plan
