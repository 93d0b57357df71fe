"""wall_clock.py: where a command's time goes, and the steady rate a budget is judged by."""
import pytest

from vitcifar.training.wall_clock import WallClock


def clock_with(*epochs):
    """A WallClock whose epochs trained (images, training seconds, validation seconds)."""
    clock = WallClock(started=0.0)
    clock.epochs = [{"epoch": number, "images": images, "train_seconds": training,
                     "validation_seconds": validation, "whole": images == 1000}
                    for number, (images, training, validation) in enumerate(epochs, 1)]
    return clock


def test_the_steady_rate_is_the_fastest_later_epoch_with_its_validation():
    assert clock_with((1000, 20.0, 1.0)).steady_images_per_second(1000) is None
    # the first epoch (tracing, warm caches) never counts
    clock = clock_with((1000, 2.0, 0.5), (1000, 9.0, 1.0), (1000, 7.0, 1.0))
    assert clock.steady_images_per_second(1000) == pytest.approx(1000 / 8.0)


def test_a_cut_short_last_epoch_counts_as_the_whole_epoch_its_step_rate_makes():
    # 250 images in 2 s: a whole epoch of 1,000 at that rate, 8 s, and its 1 s of validation
    clock = clock_with((1000, 20.0, 1.0), (250, 2.0, 1.0))
    assert clock.steady_images_per_second(1000) == pytest.approx(1000 / 9.0)
    record = clock.record(1250, 1000, budget_minutes=0.5)
    assert record["steady_images_per_second"] == pytest.approx(111.1)
    assert record["budget_share_at_steady_rate"] == pytest.approx(1250 / (1000 / 9.0) / 30,
                                                                  abs=1e-3)
    assert "budget_share_at_steady_rate" not in clock.record(1250, 1000)   # no budget


def test_a_last_epoch_of_a_few_steps_or_no_seconds_does_not_set_the_steady_rate():
    # 50 images (a twentieth of an epoch) in 0.05 s would count as 1,000 images/s
    clock = clock_with((1000, 20.0, 1.0), (1000, 9.0, 1.0), (50, 0.05, 1.0))
    assert clock.steady_images_per_second(1000) == pytest.approx(1000 / 10.0)
    # an epoch with no training seconds (the budget spent as it began) is skipped, not inf
    assert clock_with((1000, 20.0, 1.0), (1000, 0.0, 0.0)).steady_images_per_second(1000) \
        is None


def test_phases_add_up_and_what_no_phase_names_is_other():
    clock = WallClock(started=0.0)
    clock.add("validation", 1.5)
    clock.add("validation", 2.0)
    clock.add("training steps", 10.0)
    record = clock.record(0, 1000)
    assert record["phases"]["validation"] == 3.5
    assert record["phases"]["other"] == pytest.approx(record["total_seconds"] - 13.5, abs=0.02)
