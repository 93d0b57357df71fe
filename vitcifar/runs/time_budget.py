"""--time-budget: how many training steps fit in a budget of minutes, planned from the step
and epoch-end times measured on this machine (fit_loop.calibrate measures them).

The budget is the whole command's: what it spent before planning (start-up, data, model
build, the calibration: `spent_seconds`) and what it will spend after training (the test
evaluation and figures: `closing_seconds`) come out of it, so `--time-budget 3` ends about
3 minutes after the command started. The plan is whole epochs, the last one cut short after
a whole number of steps_per_execution calls (Keras counts them from each epoch's start), at
least one call; the warmup is the same share of the planned steps as --warmup-epochs of
--epochs. It uses BUDGET_SHARE of the budget, as epochs vary by a few percent in length.
No TensorFlow here.
"""
from __future__ import annotations

from dataclasses import dataclass

# untimed steps first (tracing, warm caches), then timed ones
CALIBRATION_WARMUP_STEPS, CALIBRATION_STEPS, BUDGET_SHARE = 3, 10, 0.95
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


def plan(budget_minutes: float, calibration_seconds: float, train_images_per_second: float,
         validation_images_per_second: float, epoch_end_seconds: float, batch_size: int,
         steps_per_epoch: int, steps_per_execution: int, warmup_fraction: float,
         spent_seconds: float = 0.0, closing_seconds: float = 0.0) -> Plan:
    """The most training steps that end within BUDGET_SHARE of `budget_minutes`, counting the
    command's `spent_seconds` so far (at least the `calibration_seconds`), `epoch_end_seconds`
    (validation and saves) after every epoch and `closing_seconds` at the end;
    warmup_fraction of them warm up."""
    step_seconds = batch_size / train_images_per_second
    spent_seconds = max(spent_seconds, calibration_seconds)
    available = budget_minutes * 60 * BUDGET_SHARE - spent_seconds - closing_seconds
    per_call, steps = steps_per_execution, steps_per_epoch
    epochs, last = 1, min(per_call, steps)
    for candidate in range(1, 100_000):
        left = int((available - candidate * epoch_end_seconds) // step_seconds) \
            - (candidate - 1) * steps
        left = min(steps, left - left % per_call)
        if left <= 0:
            break
        epochs, last = candidate, left
    total = (epochs - 1) * steps + last
    return Plan(budget_minutes=budget_minutes,
                train_images_per_second=round(train_images_per_second, 1),
                validation_images_per_second=round(validation_images_per_second, 1),
                epochs=epochs, steps=total, last_epoch_steps=last,
                warmup_steps=round(warmup_fraction * total),
                planned_seconds=round(spent_seconds + total * step_seconds
                                      + epochs * epoch_end_seconds + closing_seconds, 1),
                calibration_seconds=round(calibration_seconds, 1),
                spent_seconds=round(spent_seconds, 1), closing_seconds=round(closing_seconds, 1))
