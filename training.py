"""A training run from start to finish: compile, resume or plan, fit, evaluate, figures.

`run` trains (or resumes) the experiment in a TrainConfig with the RunOptions of this machine,
writing the run directory that run_dir.py describes, and ends by evaluating the best
weights on the test set. It trains on one device, or with the tf.distribute strategy of a
distribution.Plan (several GPUs, several workers: only the chief writes the run directory).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import replace
from typing import Optional

import tensorflow as tf

import checkpoint
import cifar_data
import devices
import distribution
import fit_loop
import input_pipeline
import optimization
import precision
import resume
import run_dir
import visualize
from checkpoint import RunState
from config import (RULE_SETTINGS, RunOptions, TrainConfig, describe_regularisation, flat,
                    from_json, listed_differences, regularised, to_json, with_choice_of)
from errors import RunStopped, UsageError, first_line
from vit_model import build_model

keras = tf.keras


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
    (x_train, y_train), (x_val, y_val) = cifar_data.split_validation(
        data.x_train, data.y_train, config.validation_fraction, config.seed)
    if not config.time_budget:     # --epochs known: regularisation "auto" chooses now
        config = regularised(config, config.epochs, len(x_train))
    chosen_precision = precision.set_policy(options.mixed_precision, device, config,
                                            cluster.workers)               # unseeded
    saved_config = share_start(cluster, config, resume.prepare_for_training(
        config, options, restart), output_dir)
    if saved_config is not None:   # a resumed run keeps what the rule chose at its start
        config = with_choice_of(saved_config, config)
    run_dir.atomic_write_json(os.path.join(output_dir, run_dir.LABELS), data.label_names)

    keras.utils.set_random_seed(config.seed)
    steps = input_pipeline.steps_per_epoch(len(x_train), config.batch_size)

    def build(config):       # model, optimizer and metrics on every replica
        one_hot = input_pipeline.label_classes(config)
        with cluster.strategy.scope():
            model = build_model(config)
            schedule = compile_model(model, config,
                                     jit_compile=devices.use_xla(options.xla, device),
                                     steps_per_execution=options.steps_per_execution,
                                     steps_per_epoch=steps)
        return (model, schedule, input_pipeline.make_augment(config.augmentation, one_hot),
                input_pipeline.eval_dataset(x_val, y_val, config.batch_size, one_hot))

    model, schedule, augment, val = build(config)
    state = RunState(learning_rate=config.learning_rate)
    if saved_config is not None:
        with cluster.strategy.scope():
            state = resume.restore(model, config, options, saved_config)
    else:
        print(f"Data: {len(x_train):,} training, {len(x_val):,} validation, "
              f"{len(data.x_test):,} test images; run directory {output_dir}")
        if config.time_budget:
            with cluster.strategy.scope():
                state.plan = fit_loop.calibrate(model, config, options, (x_train, y_train),
                                                augment, val, len(x_val))
            state.train_seconds += state.plan.calibration_seconds
            # the planned epochs known: regularisation "auto" chooses now (timed without
            # it; with 8x8 patches it adds only mixing, which costs little)
            chosen = regularised(config, state.plan.epochs, len(x_train))
            if chosen != config:          # the choice is kept in config.json for resuming
                if replace(chosen, regularisation_epochs=config.regularisation_epochs) \
                        != config:        # a new setting: a new model, traced again
                    model, schedule, augment, val = build(chosen)
                config = chosen           # else the calibrated, traced model trains on
                run_dir.atomic_write_json(os.path.join(output_dir, run_dir.CONFIG),
                                          to_json(config, options))
    if config.regularisation == "auto":
        print(describe_regularisation(config))
    if state.plan is not None:               # the budget sets the epochs, resumed too
        config = replace(config, epochs=state.plan.epochs)
    if state.schedule_steps is None:         # fixed at the start: resumed and extended runs
        state.schedule_steps = ([state.plan.steps, state.plan.warmup_steps]        # keep
                                if state.plan else                               # their
                                [config.epochs * steps, round(config.warmup_epochs * steps)])
    if schedule is not None:
        schedule.set_steps(*state.schedule_steps)

    bookkeeper = fit_loop.Bookkeeper(config, state, output_dir,
                                     fit_loop.epoch_log(options, output_dir))
    bookkeeper.any_worker = lambda flag: distribution.any_worker(cluster, flag)
    if state.epochs_done < config.epochs and not state.stopped_early:
        train_data = training_data(cluster, config, augment, x_train, y_train,
                                   state.epochs_done)
        try:
            with fit_loop.two_stage_interrupt(bookkeeper):
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
                      device, len(x_train), chosen_precision, cluster)
    except KeyboardInterrupt:
        raise RunStopped(f"stopped by Ctrl-C during the final evaluation; all "
                         f"{state.epochs_done} epochs are saved in {output_dir}; run "
                         f"{resume.resume_command(config, options)} to evaluate them",
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
    """A model for the chief's test evaluation and figures: `model` itself on one worker in
    float32; else a float32 copy outside the strategy (built, compiled, given its weights),
    whose predictions need no other worker (they can exit or have died), and whose test
    figures are those evaluate.py and predict.py compute: they run in float32."""
    if plan.workers == 1 and keras.mixed_precision.global_policy().name == precision.FLOAT32:
        return model
    with precision.policy(precision.FLOAT32):
        copy = build_model(config)
        compile_model(copy, config)
    copy.set_weights(model.get_weights())
    return copy


def draw_figures(output_dir: str, data: cifar_data.CifarData, model) -> None:
    """The run's figures from its best weights (none before the first epoch has ended)."""
    best = run_dir.best_weights_path(output_dir)
    if best is None:
        return
    print("Drawing the figures of the run so far (Ctrl-C skips them)", flush=True)
    try:
        checkpoint.load_weights(model, best)
        visualize.write_run_figures(output_dir, model, data.x_test, data.y_test,
                                    data.label_names)
    except KeyboardInterrupt:
        print("figures skipped")
    except checkpoint.WeightsError as error:
        print(f"warning: figures not drawn: {error}")


def interrupted(config: TrainConfig, options: RunOptions, state: RunState,
                plan: "distribution.Plan | None" = None) -> RunStopped:
    if plan is not None and plan.workers > 1:
        where = f"saved in {options.output_dir}" if plan.chief else "saved by the chief"
        return RunStopped(f"stopped by Ctrl-C; {state.epochs_done} epoch(s) {where}; to "
                          "resume, rerun every worker's command (the same flags and "
                          "TF_CONFIG)", exit_code=130)
    return RunStopped(f"stopped by Ctrl-C; {state.epochs_done} epoch(s) saved in "
                      f"{options.output_dir}; to resume, run "
                      f"{resume.resume_command(config, options)}",
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


def regularisation_record(config: TrainConfig) -> Optional[dict]:
    """results.json "regularisation": what regularisation "auto" chose (None when off)."""
    if config.regularisation != "auto":
        return None
    values = flat(config)
    return {"epochs": config.regularisation_epochs,
            "given_as_flags": list(config.regularisation_given),
            "settings": {name: values[name] for name in RULE_SETTINGS}}


def finish(config: TrainConfig, options: RunOptions, data: cifar_data.CifarData, model,
           state: RunState, device: devices.Device, train_images: int,
           ran: precision.Precision, cluster: "distribution.Plan | None" = None) -> dict:
    """Evaluates the best weights on the test set, writes results.json (with `ran`, the
    precision the run trained in) and the figures."""
    output_dir, cluster = options.output_dir, cluster or distribution.single_device()
    best = run_dir.best_weights_path(output_dir)
    if best is None:
        raise UsageError(f"{os.path.join(output_dir, run_dir.BEST_WEIGHTS)} is missing, so "
                         "the run cannot be evaluated; add --restart to train it again")
    try:
        checkpoint.load_weights(model, best)
    except checkpoint.WeightsError as error:
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
        "images_seen": (min(state.plan.steps * config.batch_size,
                            state.epochs_done * train_images) if state.plan
                        else state.epochs_done * train_images),
        "time_budget_plan": dataclasses.asdict(state.plan) if state.plan else None,
        "regularisation": regularisation_record(config),
        "distribution": cluster.record(config.batch_size),
        "device": device.kind,
        "device_name": device.name,
        "precision": ran.record(),
        **devices.versions(),
        "config": to_json(config, options),
    }
    run_dir.atomic_write_json(os.path.join(output_dir, run_dir.RESULTS), results)
    print(f"Test accuracy of the best epoch ({state.best_epoch}): "
          f"top-1 {results['test_top1']:.2%}, top-5 {results['test_top5']:.2%}")
    print(f"Results in {os.path.join(output_dir, run_dir.RESULTS)}")
    visualize.write_run_figures(output_dir, model, data.x_test, data.y_test, data.label_names)
    return results
