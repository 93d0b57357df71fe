"""A run moves between the two stacks: trained here, it is evaluated, classified with, drawn
and resumed (optimizer state included) by the other stack's Python, and its files read back
here. Runs when OTHER_STACK_PYTHON names the other stack's interpreter (.ci/run sets it:
the current stack's tests use the DirectML venv's Python, and the reverse), else skipped:

    OTHER_STACK_PYTHON=/work/venv-dml/bin/python /work/venv-cur/bin/python -m pytest -k cross
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, app_environment, assert_figures, run_app
from vitcifar.runs import run_dir

OTHER = os.environ.get("OTHER_STACK_PYTHON")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not OTHER, reason="OTHER_STACK_PYTHON is not set")]

# Loads a checkpoint into a model built and compiled as training does, and saves it again:
# what the other stack makes of every array of this stack's checkpoint.
ROUND_TRIP = """
import sys
from vitcifar.backend import devices
devices.prepare_environment(None)
from vitcifar.runs import checkpoint, run_dir
from vitcifar.training import compiled
from vit_model import build_model
config, options = run_dir.read_config(sys.argv[1])
model = build_model(config)
compiled.compile_model(model, config)
state = checkpoint.load_checkpoint(sys.argv[2], model, model.optimizer)
checkpoint.save_checkpoint(sys.argv[3], model, model.optimizer, state)
import tensorflow as tf
print("keras", tf.keras.__version__)
"""


def other_stack(*args, timeout=300):
    return subprocess.run([OTHER, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=app_environment(), cwd=ROOT)


def keras_major(python):
    result = subprocess.run([python, "-c", "import tensorflow as tf; print(tf.keras.__version__)"],
                            capture_output=True, text=True, timeout=120, env=app_environment())
    return result.stdout.strip().split(".")[0]


@pytest.fixture(scope="module")
def here_run(tmp_path_factory, cifar10_tar):
    """A 1-epoch tiny run trained by this stack."""
    out = tmp_path_factory.mktemp("cross") / "run"
    result = run_app("train_cifar10.py", "--preset", "tiny", "--epochs", 1, "--batch-size", 32,
                     "--data-dir", cifar10_tar, "--output-dir", out, "--no-tensorboard")
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_cross_stack_the_other_python_is_the_other_keras():
    assert keras_major(OTHER) != keras_major(sys.executable), \
        "OTHER_STACK_PYTHON must be the other stack's Python"


def test_cross_stack_a_run_evaluates_predicts_and_draws_there(here_run, tmp_path):
    import tensorflow as tf
    evaluated = other_stack(os.path.join(ROOT, "evaluate.py"), here_run)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stdout.splitlines()[-1] == "results.json: the same", evaluated.stdout

    image = tmp_path / "x.png"
    image.write_bytes(tf.io.encode_png(np.full((40, 30, 3), 200, np.uint8)).numpy())
    predicted = other_stack(os.path.join(ROOT, "predict.py"), here_run, image, "--top-k", 2)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.startswith(f"{image}: ") and predicted.stdout.count(", ") == 1

    for name in run_dir.FIGURES:
        (here_run / name).unlink()
    drawn = other_stack(os.path.join(ROOT, "visualize.py"), here_run)
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert_figures(str(here_run), run_dir.FIGURES)


def test_cross_stack_a_checkpoint_keeps_every_array_there(here_run, tmp_path):
    again = tmp_path / "again.npz"
    result = other_stack("-c", ROUND_TRIP, here_run, here_run / run_dir.CHECKPOINT, again)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning" not in result.stdout                  # the optimizer state fitted
    with np.load(here_run / run_dir.CHECKPOINT) as mine, np.load(again) as theirs:
        assert sorted(mine.files) == sorted(theirs.files)
        assert any(key.startswith("optimizer/m/") for key in mine.files)
        for key in mine.files:
            np.testing.assert_array_equal(mine[key], theirs[key], err_msg=key)


def test_cross_stack_a_run_resumes_there_and_opens_here_again(here_run):
    resumed = other_stack(os.path.join(ROOT, "train_cifar10.py"), "--output-dir", here_run,
                          "--epochs", 2)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming {here_run}: 1 of 2 epochs done" in resumed.stdout
    assert "warning: the optimizer state" not in resumed.stdout
    results = json.loads((here_run / run_dir.RESULTS).read_text())
    assert results["epochs_completed"] == 2
    assert results["keras_version"].split(".")[0] == keras_major(OTHER)
    evaluated = run_app("evaluate.py", here_run)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stdout.splitlines()[-1] == "results.json: the same", evaluated.stdout
