"""A training run from start to finish: compile, resume or plan, fit, evaluate, figures.

`run` trains (or resumes) the experiment in a TrainConfig with the RunOptions of this machine,
writing the run directory that vitcifar.runs.run_dir describes, and ends by evaluating the
best weights on the test set. It trains on one device, or with the tf.distribute strategy of
a distribution.Plan (several GPUs, several workers: only the chief writes the run directory).
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from typing import NamedTuple, Optional, Sequence, Tuple

import vit_model
from vitcifar.backend import devices
from vitcifar.backend.keras_compat import keras
from vitcifar.config.config_file import to_json
from vitcifar.config.regularisation import describe_regularisation, regularised, with_choice_of
from vitcifar.config.settings import RunOptions, TrainConfig
from vitcifar.data import cifar, input_pipeline
from vitcifar.errors import RunStopped, UsageError
from vitcifar.runs import init_from, resume, run_dir, time_budget
from vitcifar.runs.checkpoint import RunState
from vitcifar.training import distribution, ending, fit_loop, precision, workers
from vitcifar.training.compiled import compile_model, local_model
from vitcifar.training.wall_clock import WallClock


def run(config: TrainConfig, options: RunOptions, data: cifar.CifarData,
        device: devices.Device, restart: bool = False,
        cluster: "distribution.Plan | None" = None,
        init: "init_from.Source | None" = None, clock: Optional[WallClock] = None,
        extra_callbacks: Sequence = ()) -> dict:
    """Trains (or resumes), keeps the best weights, evaluates them on the test set; returns
    what it writes to results.json. Raises RunStopped on NaN, disk errors, Ctrl-C and a lost
    worker, and UsageError, before touching anything, when another process trains in the
    folder. `cluster` (distribution.create) is the tf.distribute strategy, one device by
    default. On several workers only the chief writes --output-dir and the results; the
    others keep their bookkeeping in distribution.worker_dir() and return {}. `init`
    (--init-from): the run to take a fresh run's first weights from. `clock`, from the
    command's start, times the run's phases (a new one from here by default).
    `extra_callbacks`: more Keras callbacks for model.fit, after the run's own (a
    benchmark's probe)."""
    cluster, clock = cluster or distribution.single_device(), clock or WallClock()
    cluster.per_replica_batch(config.batch_size)              # UsageError unless it divides
    if config.time_budget and cluster.workers > 1:
        raise UsageError("--time-budget times one machine's steps; with several workers, "
                         "give --epochs instead (and --time-budget 0)")
    options = replace(options, output_dir=options.output_dir or run_dir.default_path(
        config.dataset))
    try:
        if cluster.chief:
            with run_dir.RunLock(options.output_dir):
                return train(config, options, data, device, restart, cluster, init, clock,
                             extra_callbacks)
        with distribution.worker_dir() as own:
            return train(config, replace(options, output_dir=own, tensorboard=False), data,
                         device, True, cluster, init, clock, extra_callbacks)
    except workers.LOST_WORKER_ERRORS as error:      # in an exchange outside model.fit
        if cluster.workers == 1:
            raise
        raise RunStopped(f"training stopped: lost contact with another worker of the "
                         f"cluster ({type(error).__name__}: {workers.tensorflow_cause(error)});"
                         " rerun every worker's command (the same flags and TF_CONFIG)") from None


class Built(NamedTuple):
    """What `build` makes on every replica: the model, its cosine schedule (None for a
    plateau run), the batch augmentation and the validation batches."""
    model: object
    schedule: "Optional[object]"
    augment: object
    validation: object


def build(config: TrainConfig, options: RunOptions, device: devices.Device,
          cluster: "distribution.Plan", steps: int, x_val, y_val) -> Built:
    """The model, optimizer and metrics, compiled on every replica of `cluster`."""
    with cluster.strategy.scope():
        model = vit_model.build_model(config)
        schedule = compile_model(model, config, jit_compile=devices.use_xla(options.xla, device),
                                 steps_per_execution=options.steps_per_execution,
                                 steps_per_epoch=steps)
    return Built(model, schedule, batch_augment(config),
                 input_pipeline.eval_dataset(x_val, y_val, config.batch_size,
                                             input_pipeline.label_classes(config)))


def batch_augment(config: TrainConfig):
    """The training batches' augmentation of `config` (its labels one-hot where it mixes
    or smooths them)."""
    return input_pipeline.make_augment(config.augmentation, input_pipeline.label_classes(config))


def train(config: TrainConfig, options: RunOptions, data: cifar.CifarData,
          device: devices.Device, restart: bool, cluster: "distribution.Plan",
          init: "init_from.Source | None", clock: WallClock,
          extra_callbacks: Sequence = ()) -> dict:
    """`run` in options.output_dir, which is this worker's own folder when not the chief."""
    (x_train, y_train), (x_val, y_val) = cifar.split_validation(
        data.x_train, data.y_train, config.validation_fraction, config.seed)
    held_out = len(x_val)
    if config.validation_images:      # the split is shuffled: its first N, a random subset
        x_val, y_val = x_val[:config.validation_images], y_val[:config.validation_images]
    if not config.time_budget:     # --epochs known: regularisation "auto" chooses now
        config = regularised(config, config.epochs, len(x_train))
    chosen_precision = precision.set_policy(options.mixed_precision, device, config,
                                            cluster.workers)               # unseeded
    saved_config = workers.share_start(cluster, config, resume.prepare_for_training(
        config, options, restart), options.output_dir)
    if saved_config is not None:   # a resumed run keeps what the rule chose at its start
        config = with_choice_of(saved_config, config)
    run_dir.atomic_write_json(os.path.join(options.output_dir, run_dir.LABELS),
                              data.label_names)

    keras.utils.set_random_seed(config.seed)
    steps = input_pipeline.steps_per_epoch(len(x_train), config.batch_size)
    with clock.phase("model build"):
        built = build(config, options, device, cluster, steps, x_val, y_val)
    if saved_config is not None:
        with cluster.strategy.scope():
            state = resume.restore(built.model, config, options, saved_config)
        if init is not None:
            print(init_from.describe_ignored(init.path))
    else:
        validated = (f" (each epoch validates the first {len(x_val):,})"
                     if len(x_val) < held_out else "")
        print(f"Data: {len(x_train):,} training, {held_out:,} validation{validated}, "
              f"{len(data.x_test):,} test images; run directory {options.output_dir}")
        config, built, state = start(config, options, device, cluster, built, steps,
                                     (x_train, y_train), (x_val, y_val), clock,
                                     len(data.x_test))
        if init is not None:   # after start: the budget's timing restores what it trained
            with cluster.strategy.scope():
                print(init_from.apply(built.model, init, config, data.label_names))
    if config.regularisation == "auto":
        print(describe_regularisation(config))
    config = fix_schedule(config, state, built.schedule, steps)
    fit(config, options, cluster, built, state, (x_train, y_train), data, clock,
        extra_callbacks)
    if not cluster.chief:
        print(f"Worker done: {state.epochs_done} epochs trained; the chief writes the results")
        return {}
    try:
        return ending.finish(config, options, data, local_model(cluster, config, built.model),
                             state, device, len(x_train), chosen_precision, cluster, clock)
    except KeyboardInterrupt:
        raise RunStopped(f"stopped by Ctrl-C during the final evaluation; all "
                         f"{state.epochs_done} epochs are saved in {options.output_dir}; run "
                         f"{resume.resume_command(config, options)} to evaluate them",
                         exit_code=130) from None


def start(config: TrainConfig, options: RunOptions, device: devices.Device,
          cluster: "distribution.Plan", built: Built, steps: int, train_split: Tuple,
          val_split: Tuple, clock: WallClock, test_images: int
          ) -> Tuple[TrainConfig, Built, RunState]:
    """A fresh run's state; with --time-budget, the plan from timing the first steps, and
    what regularisation "auto" then chooses for the planned epochs (kept in config.json for
    resuming). Returns (config, built, state): a new model only if the choice changes the
    model or the labels' encoding (keeps_model), else the calibrated one with the chosen
    augmentation."""
    state = RunState(learning_rate=config.learning_rate)
    if not config.time_budget:
        return config, built, state
    with cluster.strategy.scope(), clock.phase("calibration"):
        state.plan = fit_loop.calibrate(built.model, config, options, train_split,
                                        built.augment, built.validation, len(val_split[0]),
                                        test_images, clock)
    state.train_seconds += state.plan.calibration_seconds
    # the planned epochs known: regularisation "auto" chooses now (timed without it; with
    # 8x8 patches it adds only mixing, which costs little)
    chosen = regularised(config, state.plan.epochs, len(train_split[0]))
    if chosen != config:                  # the choice is kept in config.json for resuming
        if keeps_model(config, chosen):   # the calibrated, traced model, a new augmentation
            built = built._replace(augment=batch_augment(chosen))
        else:                             # a new model, traced again at its first step
            with clock.phase("model build"):
                built = build(chosen, options, device, cluster, steps, *val_split)
        config = chosen
        run_dir.atomic_write_json(os.path.join(options.output_dir, run_dir.CONFIG),
                                  to_json(config, options))
    return config, built, state


def keeps_model(config: TrainConfig, chosen: TrainConfig) -> bool:
    """Whether `chosen`, regularisation "auto"'s choice for the run calibrated with
    `config`, trains the model built (and traced, by the calibration) for `config`: besides
    the record of the choice, only the batch augmentation differs, which runs in tf.data
    outside the model's step, and the labels keep their encoding (mixup on class indices
    makes them one-hot: another loss). Tracing a new model's step costs about 10 s of a
    3-minute budget on a 2-core CPU, so a choice that changes no image (RandAugment's
    magnitude while it applies no operation: `fast` at a few epochs) must not cost it."""
    return (chosen.soft_labels == config.soft_labels
            and replace(chosen, augmentation=config.augmentation,
                        regularisation_epochs=config.regularisation_epochs) == config)


def fix_schedule(config: TrainConfig, state: RunState, schedule, steps: int) -> TrainConfig:
    """The epochs to train (the budget's plan sets them, resumed too) and the cosine
    schedule's steps, fixed at the start: resumed and extended runs keep theirs."""
    if state.plan is not None:
        config = replace(config, epochs=state.plan.epochs)
    if state.schedule_steps is None:
        state.schedule_steps = ([state.plan.steps, state.plan.warmup_steps] if state.plan else
                                [config.epochs * steps, round(config.warmup_epochs * steps)])
    if schedule is not None:
        schedule.set_steps(*state.schedule_steps)
    return config


def fit(config: TrainConfig, options: RunOptions, cluster: "distribution.Plan", built: Built,
        state: RunState, train_split: Tuple, data: cifar.CifarData, clock: WallClock,
        extra_callbacks: Sequence = ()) -> None:
    """model.fit from the epoch `state` has reached to config.epochs (a fresh budgeted run:
    time_budget.most_epochs of them, the Bookkeeper stopping by the plan), with the Bookkeeper
    (and `extra_callbacks` after the run's own); raises RunStopped (after drawing the
    figures so far) on Ctrl-C, NaN or a lost worker."""
    if state.epochs_done >= config.epochs or state.stopped_early:
        return
    bookkeeper = fit_loop.Bookkeeper(config, state, options.output_dir,
                                     fit_loop.epoch_log(options, options.output_dir), clock)
    bookkeeper.any_worker = lambda flag: distribution.any_worker(cluster, flag)
    x_train, y_train = train_split
    steps = input_pipeline.steps_per_epoch(len(x_train), config.batch_size)
    callbacks, fit_epochs = [bookkeeper], config.epochs
    # --time-budget: a fresh run re-plans as it goes, and may find time for more epochs than
    # calibrated (time_budget.most_epochs; the Bookkeeper stops by the plan). A resumed one
    # keeps its plan: this process's clock did not see the budget's start.
    if state.plan is not None and state.epochs_done == 0:
        fit_epochs = time_budget.most_epochs(config.epochs)
        callbacks.insert(0, fit_loop.BudgetKeeper(state, clock, built.schedule,
                                                  config.batch_size, steps,
                                                  options.steps_per_execution, fit_epochs))
    if state.plan is not None:       # the bar counts the plan's epochs and last steps
        callbacks.append(fit_loop.PlanProgressBar(state, steps))
    callbacks.extend(extra_callbacks)
    train_data = training_data(cluster, config, built.augment, x_train, y_train,
                               state.epochs_done, fit_epochs)
    try:
        with fit_loop.two_stage_interrupt(bookkeeper):
            built.model.fit(train_data, initial_epoch=state.epochs_done, epochs=fit_epochs,
                            steps_per_epoch=steps,
                            validation_data=built.validation, shuffle=False,
                            callbacks=callbacks,
                            verbose=1 if sys.stdout.isatty() else 2)
    except KeyboardInterrupt:
        stopped = ending.interrupted(config, options, state, cluster)
    except workers.LOST_WORKER_ERRORS as error:
        if cluster.workers == 1:
            raise
        raise workers.lost_worker(config, options, state, cluster, error) from None
    else:
        stopped = (ending.diverged(config, state, *bookkeeper.nan_at) if bookkeeper.nan_at
                   else ending.interrupted(config, options, state, cluster)
                   if bookkeeper.stop_requested and state.epochs_done < (
                       state.plan.epochs if state.plan else config.epochs)
                   else None)
    if stopped is not None:
        if cluster.chief:
            ending.draw_figures(options.output_dir, data,
                                local_model(cluster, config, built.model))
        raise stopped


def training_data(plan: "distribution.Plan", config: TrainConfig, augment, x_train, y_train,
                  first_epoch: int, last_epoch: int):
    """The training batches of epochs first_epoch .. last_epoch - 1 for model.fit:
    input_pipeline.train_dataset on one replica; on
    several, each worker's pipeline makes its own replicas' shares of every global batch
    (input_pipeline.replica_train_dataset), so no image is read twice per epoch."""
    if plan.replicas == 1:
        return input_pipeline.train_dataset(x_train, y_train, config.batch_size, augment,
                                            config.seed, first_epoch, last_epoch)

    def pipeline(context):        # tf.distribute.InputContext: one pipeline per worker
        local = plan.replicas // context.num_input_pipelines
        return input_pipeline.replica_train_dataset(
            x_train, y_train, config.batch_size, augment, config.seed, first_epoch,
            last_epoch, plan.replicas, context.input_pipeline_id * local, local)

    return plan.strategy.distribute_datasets_from_function(pipeline)
