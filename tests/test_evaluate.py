"""evaluate.py: the saved model on the test set again, as the run evaluated it."""
import contextlib
import io

import pytest

from vitcifar.commands import evaluate
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions
from vitcifar.config.views import override
from vitcifar.data import cifar
from vitcifar.runs import run_dir


@pytest.mark.slow
def test_evaluate_reproduces_the_test_accuracy_in_results_json(tiny_run, cifar10_tar, capsys):
    run = run_dir.open_run(tiny_run[0])
    assert evaluate.main([tiny_run[0], "--data-dir", cifar10_tar]) == 0
    lines = capsys.readouterr().out.splitlines()
    stored = run.results()
    assert f"top-1 {stored['test_top1']:.2%}, top-5 {stored['test_top5']:.2%}" in lines[-2]
    assert lines[-1] == "results.json: the same"


@pytest.mark.slow
def test_a_mixup_run_trains_on_soft_labels_and_evaluates_the_same(tmp_path, cifar10_tar):
    """Soft labels switch the loss and metrics to their categorical forms; evaluate.py must
    encode the test labels the same way."""
    from vitcifar.backend import devices
    from vitcifar.training import trainer
    config = override(PRESETS["tiny"], epochs=1, batch_size=32, mixup_alpha=0.4,
                      cutmix_alpha=1.0).validate()
    options = RunOptions(data_dir=cifar10_tar, output_dir=str(tmp_path / "mix"))
    with contextlib.redirect_stdout(io.StringIO()):
        results = trainer.run(config, options, cifar.load("cifar10", cifar10_tar),
                               devices.detect())
    run = run_dir.open_run(options.output_dir)
    data = cifar.load("cifar10", run.options.data_dir)
    again = evaluate.evaluate_run(run, data.x_test, data.y_test, batch_size=64)
    assert again["test_top1"] == pytest.approx(results["test_top1"], abs=1e-6)
    assert again["test_loss"] == pytest.approx(results["test_loss"], rel=1e-4)

