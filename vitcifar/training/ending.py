"""How a run ends: the test evaluation of the best weights, results.json and the figures, and
the messages of a run stopped by Ctrl-C or a NaN loss."""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

from vitcifar.analysis import figures
from vitcifar.backend import devices
from vitcifar.config.config_file import to_json
from vitcifar.config.settings import RULE_SETTINGS, RunOptions, TrainConfig
from vitcifar.config.views import flat
from vitcifar.data import cifar, input_pipeline
from vitcifar.errors import RunStopped, UsageError
from vitcifar.runs import checkpoint, resume, run_dir
from vitcifar.runs.checkpoint import RunState
from vitcifar.training import distribution, precision
from vitcifar.training.compiled import test_logits, test_metrics
from vitcifar.training.wall_clock import WallClock


def draw_figures(output_dir: str, data: cifar.CifarData, model) -> None:
    """The run's figures from its best weights (none before the first epoch has ended)."""
    best = run_dir.best_weights_path(output_dir)
    if best is None:
        return
    print("Drawing the figures of the run so far (Ctrl-C skips them)", flush=True)
    try:
        checkpoint.load_weights(model, best)
        figures.write_run_figures(output_dir, model, data.x_test, data.y_test,
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


def finish(config: TrainConfig, options: RunOptions, data: cifar.CifarData, model,
           state: RunState, device: devices.Device, train_images: int,
           ran: precision.Precision, cluster: "distribution.Plan | None" = None,
           clock: Optional[WallClock] = None) -> dict:
    """Evaluates the best weights on the test set, draws the figures from the same
    predictions, writes results.json (with `ran`, the precision the run trained in, and
    where the command's wall time went) and ends with the test accuracy."""
    output_dir, cluster = options.output_dir, cluster or distribution.single_device()
    clock = clock or WallClock()
    best = run_dir.best_weights_path(output_dir)
    if best is None:
        raise UsageError(f"{os.path.join(output_dir, run_dir.BEST_WEIGHTS)} is missing, so "
                         "the run cannot be evaluated; add --restart to train it again")
    try:
        checkpoint.load_weights(model, best)
    except checkpoint.WeightsError as error:
        raise UsageError(f"{error}, so the run cannot be evaluated; add --restart to train "
                         "it again") from None
    with clock.phase("test evaluation"):
        logits = test_logits(model, data.x_test, config.batch_size)
        test = test_metrics(config, logits, data.y_test)
    with clock.phase("figures"):
        figures.write_run_figures(output_dir, model, data.x_test, data.y_test,
                                  data.label_names, logits)
    images_seen = (min(state.plan.steps * config.batch_size, state.epochs_done * train_images)
                   if state.plan else state.epochs_done * train_images)
    # an epoch's images as the Bookkeeper counts them (steps x batch), for the steady rate
    epoch_images = config.batch_size * input_pipeline.steps_per_epoch(train_images,
                                                                      config.batch_size)
    results = {
        "dataset": config.dataset,
        **({"data": data.summary()} if data.summary() is not None else {}),
        **test,
        "best_val_top1": state.best_val_top1,
        "best_epoch": state.best_epoch,
        "epochs_completed": state.epochs_done,
        "stopped_early": state.stopped_early,
        "train_seconds": round(state.train_seconds, 2),
        "images_seen": images_seen,
        "time_budget_plan": dataclasses.asdict(state.plan) if state.plan else None,
        "regularisation": regularisation_record(config),
        "distribution": cluster.record(config.batch_size),
        "device": device.kind,
        "device_name": device.name,
        "precision": ran.record(),
        **devices.versions(),
        "wall_time": clock.record(images_seen, epoch_images, config.time_budget),
        "config": to_json(config, options),
    }
    run_dir.atomic_write_json(os.path.join(output_dir, run_dir.RESULTS), results)
    print(clock.describe())
    print(f"Test accuracy of the best epoch ({state.best_epoch}): "
          f"top-1 {results['test_top1']:.2%}, top-5 {results['test_top5']:.2%}")
    print(f"Results in {os.path.join(output_dir, run_dir.RESULTS)}")
    return results
