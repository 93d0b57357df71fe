"""fit_loop.py: the Bookkeeper's plateau halving and its floor, early stopping, and the rates
it records; the BudgetKeeper's re-plans from the steps' own times."""
import pytest
import tensorflow as tf

from vit_model import build_model
from vitcifar.config.presets import PRESETS
from vitcifar.config.views import override
from vitcifar.runs import time_budget
from vitcifar.runs.checkpoint import RunState
from vitcifar.training import compiled, fit_loop

keras = tf.keras


@pytest.fixture
def bookkeeper_of(tmp_path):
    """A Bookkeeper on a compiled tiny model, fed epoch logs by hand."""
    def make(**settings):
        config = override(PRESETS["tiny"], **settings)
        model = build_model(config)
        compiled.compile_model(model, config)
        keeper = fit_loop.Bookkeeper(config, RunState(learning_rate=config.learning_rate),
                                     str(tmp_path))
        keeper.set_model(model)
        return keeper
    return make


def feed(keeper, scores):
    for epoch, score in enumerate(scores):
        keeper.on_epoch_begin(epoch)
        keeper.on_epoch_end(epoch, {"loss": 1.0, "val_top1": score})
    return [row["learning_rate"] for row in keeper.state.history]


def test_the_rate_halves_after_patience_epochs_without_a_better_score_down_to_its_floor(
        bookkeeper_of):
    keeper = bookkeeper_of(learning_rate=1e-3, patience=2, min_learning_rate=3e-4)
    rates = feed(keeper, [0.5, 0.4, 0.4, 0.45, 0.4, 0.6, 0.5, 0.5, 0.5, 0.5, 0.5])
    # each row holds the rate that epoch trained with: halved after epochs 3 and 5 (two
    # epochs without beating 0.5), reset counting at the better epoch 6, then the floor
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 3e-4, 3e-4, 3e-4, 3e-4,
                                   3e-4, 3e-4])
    assert float(keras.backend.get_value(keeper.model.optimizer.learning_rate)) == \
        pytest.approx(3e-4)
    assert keeper.state.best_epoch == 6 and keeper.state.best_val_top1 == 0.6


def test_early_stopping_stops_after_its_epochs_without_improvement(bookkeeper_of):
    keeper = bookkeeper_of(early_stopping=3, patience=100)
    feed(keeper, [0.5, 0.6, 0.5, 0.55])
    assert not keeper.model.stop_training
    feed_more = keeper.on_epoch_end
    keeper.on_epoch_begin(4)
    feed_more(4, {"loss": 1.0, "val_top1": 0.59})
    assert keeper.model.stop_training and keeper.state.stopped_early
    assert keeper.state.epochs_since_best == 3


def test_a_cosine_run_records_its_scheduled_rates_and_never_halves(bookkeeper_of):
    keeper = bookkeeper_of(lr_schedule="cosine", patience=1, learning_rate=1e-3)
    rates = feed(keeper, [0.5, 0.4, 0.3])
    assert rates == [pytest.approx(1e-3)] * 3      # no step taken: the schedule's start


class FakeClock:
    """The BudgetKeeper's `now`, moved by hand; the command started at 0."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def budget_keeper(plan_steps=100, steps_per_epoch=60):
    """A BudgetKeeper and the cosine schedule it sets, with a plan of `plan_steps` steps of
    batch 1 at 1 step/s in a 2-minute budget (20 s spent before training)."""
    from vitcifar.training import optimization
    from vitcifar.training.wall_clock import WallClock
    plan = time_budget.plan(2.0, 14.0, 1.0, 10.0, 0.0, 1, steps_per_epoch, 1, 0.1,
                            spent_seconds=20.0)
    assert plan.steps == plan_steps
    state = RunState(plan=plan, schedule_steps=[plan.steps, plan.warmup_steps])
    schedule = optimization.WarmupCosine(1e-3, plan.warmup_steps, plan.steps)
    now = FakeClock()
    keeper = fit_loop.BudgetKeeper(state, WallClock(started=0.0), schedule, 1, steps_per_epoch,
                                   1, max_epochs=time_budget.most_epochs(plan.epochs), now=now)
    return keeper, state, schedule, now


def run_steps(keeper, now, first_batch, count, seconds_each, bar=None):
    """`count` steps of `seconds_each` on the fake clock, each ending at the keeper and then
    at the progress bar, if any (model.fit's order)."""
    for batch in range(first_batch, first_batch + count):
        now.t += seconds_each
        keeper.on_train_batch_end(batch)
        if bar is not None:
            bar.on_train_batch_end(batch, {"loss": 1.0})


def test_steps_slower_than_calibrated_shrink_the_plan_and_the_schedule_with_it():
    keeper, state, schedule, now = budget_keeper()
    now.t = 20.0                               # training starts when the plan said
    run_steps(keeper, now, 0, 11, 2.0)         # 2 s a step, not 1: at step 11, 20 + 22 s
    plan = state.plan                          # 120 - 42 = 78 s left: 39 more steps
    assert plan.replans == 1 and plan.steps == 11 + 39 and plan.train_images_per_second == 0.5
    assert state.schedule_steps == [50, plan.warmup_steps]
    assert int(schedule.total_steps.numpy()) == 50


def test_epochs_shorter_than_a_replans_steps_still_replan():
    # 100 steps in epochs of 8, a re-plan every 10 steps: one spans two epochs (a 15-minute
    # `fast` run has 40 epochs, each shorter than a tenth of its plan)
    keeper, state, _, now = budget_keeper(steps_per_epoch=8)
    now.t = 20.0
    for epoch in range(2):
        state.epochs_done = epoch
        run_steps(keeper, now, 0, 8, 2.0)      # 2 s a step, not the calibrated 1
        now.t += 1.0                           # its validation and saves
    # re-planned at step 12 (45 s in) from 7 steps of epoch 1 (from its first step's end)
    # and 3 of epoch 2; 75 s left at 2 s a step and 1 s per epoch's end: 35 steps more
    assert state.plan.replans == 1 and state.plan.train_images_per_second == 0.5
    assert state.plan.steps == 12 + 35 and keeper.epoch_end_seconds == pytest.approx(1.0)


def test_the_gap_between_epochs_counts_as_each_epochs_end():
    keeper, state, _, now = budget_keeper()
    now.t = 20.0
    run_steps(keeper, now, 0, 60, 1.0)         # epoch 1 at the calibrated rate
    state.epochs_done = 1
    now.t += 5.0                               # its validation and saves
    run_steps(keeper, now, 0, 12, 1.0)
    assert keeper.epoch_end_seconds == pytest.approx(5.0)
    # re-planned at step 71 (96 s in) at 1 s a step: 120 - 96 = 24 s = 19 steps + 5 s for
    # this epoch's end, no time for another epoch's
    assert state.plan.steps == 71 + 19 and state.plan.epochs == 2


def started_bar(state, steps_per_epoch, verbose=2):
    """A PlanProgressBar as model.fit starts it: with room for epochs past the plan."""
    bar = fit_loop.PlanProgressBar(state, steps_per_epoch)
    bar.set_params({"verbose": verbose, "epochs": time_budget.most_epochs(state.plan.epochs),
                    "steps": steps_per_epoch})
    bar.on_train_begin()
    return bar


def test_the_progress_bar_counts_the_plans_epochs_and_its_last_epochs_steps(capsys):
    keeper, state, _, now = budget_keeper()      # 100 steps: 60, then 40 of epoch 2
    bar = started_bar(state, 60)                 # fit's 4 epochs: room for more
    bar.on_epoch_begin(0)
    assert "Epoch 1/2" in capsys.readouterr().out and bar.target == 60
    now.t = 20.0
    run_steps(keeper, now, 0, 60, 1.0, bar)
    bar.on_epoch_end(0, {"loss": 1.0})
    assert "60/60" in capsys.readouterr().out
    state.epochs_done = 1
    bar.on_epoch_begin(1)
    assert "Epoch 2/2" in capsys.readouterr().out and bar.target == 40
    run_steps(keeper, now, 0, 12, 2.0, bar)      # 2 s a step now: the plan shrinks
    last = state.plan.last_epoch_steps
    assert state.plan.epochs == 2 and last < 40 and bar.progbar.target == last
    bar.on_epoch_end(1, {"loss": 1.0})
    assert f"{last}/{last}" in capsys.readouterr().out


@pytest.mark.parametrize("verbose", [1, 2])      # 1: the terminal's bar, updated every step
def test_a_one_epoch_plan_names_its_epoch_and_ends_its_bar_at_the_plans_steps(capsys,
                                                                               verbose):
    keeper, state, _, now = budget_keeper(steps_per_epoch=200)   # 100 steps: one epoch
    bar = started_bar(state, 200, verbose)
    bar.on_epoch_begin(0)
    assert "Epoch 1/1" in capsys.readouterr().out and bar.target == 100
    now.t = 20.0
    run_steps(keeper, now, 0, 100, 1.0, bar)
    bar.on_epoch_end(0, {"loss": 1.0})
    assert state.plan.steps == 100 and "100/100" in capsys.readouterr().out
