"""fit_loop.py: the Bookkeeper's plateau halving and its floor, early stopping, and the rates
it records."""
import pytest
import tensorflow as tf

from vit_model import build_model
from vitcifar.config.presets import PRESETS
from vitcifar.config.views import override
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
