"""--time-budget: how many training steps fit in a budget of minutes, planned from the step
and epoch-end times measured on this machine (fit_loop.calibrate measures them).

The budget is the whole command's: what it spent before planning (start-up, data, model
build, the calibration: `spent_seconds`) and what it will spend after training (the test
evaluation and figures: `closing_seconds`) come out of it, so `--time-budget 3` ends about
3 minutes after the command started. The plan is whole epochs, the last one cut short after
a whole number of steps_per_execution calls (Keras counts them from each epoch's start), at
least one call; the warmup is the same share of the planned steps as --warmup-epochs of
--epochs. It plans the whole budget: re-planning (below) keeps the command's end within
seconds of it.

A calibration of a few steps can be far off: measured while another process loads the
machine, or before the input pipeline's cache is filled, it was 25% slow or fast on a 2-core
CPU. So training re-plans (`replan`, every REPLAN_EVERY of the planned steps) from the rate
of its own latest steps and the command's clock: the plan grows or shrinks, up to the
epochs model.fit was started with (`most_epochs`: twice the calibration's). No TensorFlow
here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Tuple

# untimed steps first (tracing, warm caches), then timed ones
CALIBRATION_WARMUP_STEPS, CALIBRATION_STEPS = 3, 10
# training re-plans after every such share of the planned steps, and not more often than
# every REPLAN_MIN_STEPS steps (the rate is the mean over the steps since the last re-plan)
REPLAN_EVERY, REPLAN_MIN_STEPS = 0.1, 10
# Training may grow past the calibration's plan by this share of its epochs (at least one).
# Calibrations have been a quarter to a third slow: `fast` runs that planned 6 and 5 epochs
# and could grow by one and by a quarter stopped after 7, 11-20 s before their 3 minutes,
# at 2,400-2,635 images/s. Room costs nothing: the Bookkeeper stops by the plan.
REPLAN_GROWTH = 1.0
# Drawing a run's four figures from predictions already made (matplotlib, Agg), seconds: a
# bound over what this project's 2-core CPUs took (results.json "wall_time", "figures").
FIGURES_SECONDS = 4.0


@dataclass(frozen=True)
class Plan:
    """What --time-budget measured and planned. checkpoint.npz keeps it in the run state, so
    that a resumed run follows it; results.json records it (time_budget_plan)."""
    budget_minutes: float
    train_images_per_second: float
    validation_images_per_second: float
    epochs: int                   # the last one cut short: the Bookkeeper stops it
    steps: int                    # training steps in all
    last_epoch_steps: int
    warmup_steps: int
    planned_seconds: float        # the whole command: spent, steps, epochs' ends, closing
    calibration_seconds: float
    spent_seconds: float = 0.0    # the command's seconds before the plan, calibration included
    closing_seconds: float = 0.0  # planned for the test evaluation and figures
    epoch_end_seconds: float = 0.0   # validation and saves after each epoch
    replans: int = 0              # times training re-planned from its own step rate


def plan(budget_minutes: float, calibration_seconds: float, train_images_per_second: float,
         validation_images_per_second: float, epoch_end_seconds: float, batch_size: int,
         steps_per_epoch: int, steps_per_execution: int, warmup_fraction: float,
         spent_seconds: float = 0.0, closing_seconds: float = 0.0) -> Plan:
    """The most training steps that end within `budget_minutes`, counting the
    command's `spent_seconds` so far (at least the `calibration_seconds`), `epoch_end_seconds`
    (validation and saves) after every epoch and `closing_seconds` at the end;
    warmup_fraction of them warm up."""
    step_seconds = batch_size / train_images_per_second
    spent_seconds = max(spent_seconds, calibration_seconds)
    available = budget_minutes * 60 - spent_seconds - closing_seconds
    epochs, last = _fit(available, step_seconds, epoch_end_seconds, steps_per_epoch,
                        steps_per_execution)
    total = (epochs - 1) * steps_per_epoch + last
    return Plan(budget_minutes=budget_minutes,
                train_images_per_second=round(train_images_per_second, 1),
                validation_images_per_second=round(validation_images_per_second, 1),
                epochs=epochs, steps=total, last_epoch_steps=last,
                warmup_steps=round(warmup_fraction * total),
                planned_seconds=round(spent_seconds + total * step_seconds
                                      + epochs * epoch_end_seconds + closing_seconds, 1),
                calibration_seconds=round(calibration_seconds, 1),
                spent_seconds=round(spent_seconds, 1), closing_seconds=round(closing_seconds, 1),
                epoch_end_seconds=round(epoch_end_seconds, 2))


def most_epochs(planned_epochs: int) -> int:
    """The epochs model.fit is started with for a fresh budgeted run planned to
    `planned_epochs`: room for re-plans to grow it by REPLAN_GROWTH (at least one epoch)."""
    return planned_epochs + max(1, math.ceil(REPLAN_GROWTH * planned_epochs))


def replan(plan: Plan, elapsed_seconds: float, epochs_done: int, steps_into_epoch: int,
           train_images_per_second: float, epoch_end_seconds: float, batch_size: int,
           steps_per_epoch: int, steps_per_execution: int, max_epochs: int) -> Plan:
    """`plan` again, during training: `epochs_done` whole epochs and `steps_into_epoch` steps
    of the next are done `elapsed_seconds` after the command started; the steps left are
    planned at the measured `train_images_per_second` and `epoch_end_seconds`, in the same
    budget, with the same closing, in at most `max_epochs` epochs. Never before the step in
    progress (the next whole call after it): a budget already spent stops there. The warmup
    keeps its steps (cut to the total)."""
    step_seconds = batch_size / train_images_per_second
    available = plan.budget_minutes * 60 - elapsed_seconds - plan.closing_seconds
    epochs, last = _fit(available, step_seconds, epoch_end_seconds, steps_per_epoch,
                        steps_per_execution, epochs_done, steps_into_epoch, max_epochs)
    total = (epochs - 1) * steps_per_epoch + last
    left = total - epochs_done * steps_per_epoch - steps_into_epoch
    return replace(plan, train_images_per_second=round(train_images_per_second, 1),
                   epochs=epochs, steps=total, last_epoch_steps=last,
                   warmup_steps=min(plan.warmup_steps, total),
                   planned_seconds=round(elapsed_seconds + left * step_seconds
                                         + (epochs - epochs_done) * epoch_end_seconds
                                         + plan.closing_seconds, 1),
                   epoch_end_seconds=round(epoch_end_seconds, 2), replans=plan.replans + 1)


def _fit(available: float, step_seconds: float, epoch_end_seconds: float, steps: int,
         per_call: int, epochs_done: int = 0, steps_into_epoch: int = 0,
         max_epochs: int = 100_000) -> Tuple[int, int]:
    """(last epoch, 1-based; its steps): the most steps after the `steps_into_epoch` of epoch
    `epochs_done + 1` whose time and epoch ends (this epoch's and each later one's) fit in
    `available` seconds; whole calls of `per_call`; at least to the next call's end."""
    done = epochs_done * steps + steps_into_epoch
    least = min(steps, per_call * max(1, -(-steps_into_epoch // per_call)))
    epochs, last = epochs_done + 1, least
    for candidate in range(epochs_done + 1, max_epochs + 1):
        left = int((available - (candidate - epochs_done) * epoch_end_seconds) // step_seconds) \
            + done - (candidate - 1) * steps
        left = min(steps, left - left % per_call)
        if left < (least if candidate == epochs_done + 1 else 1):
            break
        epochs, last = candidate, left
    return epochs, last
