"""time_budget.py: the plan's arithmetic (whole epochs, the last cut short after whole
steps_per_execution calls, the warmup's share) and its round trip through the run state."""
import dataclasses
import json

import pytest

from vitcifar.runs import time_budget
from vitcifar.runs.checkpoint import RunState
from vitcifar.runs.time_budget import Plan


def planned(minutes=1.0, spent=0.0, rate=4.0, epoch_end=0.0, batch=1, steps=20,
            per_call=1, warmup=0.1):
    return time_budget.plan(minutes, spent, rate, 50.0, epoch_end, batch, steps, per_call,
                            warmup)


def test_the_plan_fills_the_budget_with_steps_whole_epochs_first():
    # 0.25 s a step, 60 s: 240 steps = 12 epochs of 20; the whole budget, none held back
    plan = planned()
    assert plan.steps == int(60 / 0.25) == 240
    assert (plan.epochs, plan.last_epoch_steps) == (12, 20)
    assert plan.warmup_steps == 24 and plan.planned_seconds == pytest.approx(60.0)


def test_calibration_and_epoch_ends_count_against_the_budget():
    # 7 s spent, 1 s per epoch end: 53 s = 8 epochs of 6 s, then 4 s of steps and 1 s
    plan = planned(spent=7.0, epoch_end=1.0)
    assert (plan.epochs, plan.last_epoch_steps, plan.steps) == (9, 16, 176)
    assert plan.planned_seconds == pytest.approx(60.0) and plan.calibration_seconds == 7.0


def test_the_last_epoch_ends_after_whole_calls_and_at_least_one_call_runs():
    plan = planned(per_call=8)
    assert plan.last_epoch_steps % 8 == 0 or plan.last_epoch_steps == 20
    tiny = planned(minutes=0.001, per_call=4)                        # not even one step fits
    assert (tiny.epochs, tiny.steps, tiny.last_epoch_steps) == (1, 4, 4)


def test_a_plan_survives_the_run_state_json_as_a_plan():
    state = RunState(epochs_done=2, plan=planned())
    again = RunState.from_json(state.to_json())
    assert isinstance(again.plan, Plan) and again == state
    assert set(dataclasses.asdict(again.plan)) == {f.name for f in dataclasses.fields(Plan)}


def test_the_whole_command_counts_what_came_before_and_what_comes_after():
    # 15 s spent before the plan (start-up, data, build, calibration of 7 s) and 5 s for the
    # test evaluation and figures: 60 - 20 = 40 s of steps, 160 steps = 8 epochs of 20
    plan = time_budget.plan(1.0, 7.0, 4.0, 50.0, 0.0, 1, 20, 1, 0.1, spent_seconds=15.0,
                            closing_seconds=5.0)
    assert (plan.steps, plan.epochs, plan.last_epoch_steps) == (160, 8, 20)
    assert (plan.spent_seconds, plan.closing_seconds, plan.calibration_seconds) == \
        (15.0, 5.0, 7.0)
    assert plan.planned_seconds == pytest.approx(60.0)


def test_a_plan_saved_before_the_whole_command_counted_still_reads():
    """A checkpoint from before spent_seconds and closing_seconds existed resumes."""
    values = json.loads(RunState(plan=planned()).to_json())
    del values["plan"]["spent_seconds"], values["plan"]["closing_seconds"]
    state = RunState.from_json(json.dumps(values))
    assert state.plan.steps == planned().steps and state.plan.spent_seconds == 0.0


def replanned(plan, elapsed, epochs_done, into, rate, epoch_end=0.0, max_epochs=100):
    return time_budget.replan(plan, elapsed, epochs_done, into, rate, epoch_end, 1, 20, 1,
                              max_epochs)


def test_a_replan_at_the_plans_own_rate_changes_nothing_but_its_count():
    plan = planned(spent=7.0, epoch_end=1.0)          # 176 steps: 8 epochs of 20, then 16
    # 3 epochs and 10 steps done at 4 steps/s after the 7 s: 7 + 70 * 0.25 + 3 * 1 s
    again = replanned(plan, 7.0 + 70 * 0.25 + 3.0, 3, 10, 4.0, epoch_end=1.0)
    assert (again.steps, again.epochs, again.last_epoch_steps) == (176, 9, 16)
    assert again.replans == 1 and again.warmup_steps == plan.warmup_steps
    assert again.planned_seconds == pytest.approx(plan.planned_seconds)


def test_a_faster_rate_than_calibrated_fills_the_budget_and_a_slower_one_ends_sooner():
    plan = planned()                                  # 240 steps at 4 steps/s in 60 s
    faster = replanned(plan, 10.0, 2, 0 + 1, 8.0)     # 41 done; 50 s at 8 steps/s: 400 more
    assert faster.steps == 41 + 400 and faster.epochs == 23
    slower = replanned(plan, 10.0, 2, 1, 2.0)         # 50 s at 2 steps/s: 100 more
    assert slower.steps == 41 + 100 and slower.last_epoch_steps == 141 - 7 * 20
    assert faster.warmup_steps == slower.warmup_steps == plan.warmup_steps == 24


def test_fit_has_room_for_twice_the_epochs_calibrated():
    assert [time_budget.most_epochs(n) for n in (1, 3, 6, 40)] == [2, 6, 12, 80]
    plan = planned()                                  # 12 epochs of 20 steps at 4 steps/s
    # twice the calibrated rate fills 23 epochs, within most_epochs(12) = 24
    grown = replanned(plan, 10.0, 2, 1, 8.0, max_epochs=time_budget.most_epochs(plan.epochs))
    assert (grown.epochs, grown.steps) == (23, 441)
    held = replanned(plan, 10.0, 2, 1, 8.0, max_epochs=plan.epochs + 1)    # the old room
    assert (held.epochs, held.steps) == (13, 260)


def test_a_replan_never_goes_past_the_epochs_fit_runs_nor_back_before_the_step_in_progress():
    plan = planned()
    capped = replanned(plan, 10.0, 2, 1, 8.0, max_epochs=12)
    assert (capped.epochs, capped.last_epoch_steps, capped.steps) == (12, 20, 240)
    spent = replanned(plan, 120.0, 2, 7, 4.0)         # past the budget: stop at this step
    assert (spent.epochs, spent.last_epoch_steps, spent.steps) == (3, 7, 47)
    calls = time_budget.replan(plan, 120.0, 2, 7, 4.0, 0.0, 1, 20, 4, 100)
    assert (calls.epochs, calls.last_epoch_steps) == (3, 8)   # the end of the call in progress
    short = replanned(plan, 1.0, 0, 5, 0.01)          # 0.01 steps/s: the warmup is cut
    assert short.steps == 5 and short.warmup_steps == 5
