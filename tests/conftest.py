"""Shared test fixtures: tiny archives with the official layout, one tiny trained run, and
running the app's scripts in a fresh Python."""
import contextlib
import io
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
# For TensorFlow in this process; the app's own scripts (run_app) start as a user's would,
# quiet by default (devices.prepare_environment), unless the variable was set outside.
OWN_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import archives  # noqa: E402  (needs the path above)
import run_dir  # noqa: E402
import visualize  # noqa: E402
from config import PRESETS, RunOptions, override  # noqa: E402


def run_app(script, *args, timeout=300, env=None):
    """Runs a top-level script of the app in a fresh Python; returns the CompletedProcess."""
    full_env = app_environment(env)
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=ROOT)


# A TensorFlow C++ log line: absl's (TF >= 2.16: "I0000 00:00:17... port.cc:153] ...", and
# its "WARNING: All log messages before absl::InitializeLog()") or TF 2.10's
# ("2026-01-01 10:00:00.123: I tensorflow/...").
CPP_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d|"
                     r"\d{4}-\d\d-\d\d [\d:.]+: [IWEF] )", re.M)


def app_environment(env=None):
    """This process's environment as a user's shell would have it, plus `env`."""
    full_env = {**os.environ, **(env or {})}
    if OWN_LOG_LEVEL and "TF_CPP_MIN_LOG_LEVEL" not in (env or {}):
        del full_env["TF_CPP_MIN_LOG_LEVEL"]
    return full_env


@pytest.fixture(scope="session")
def cifar10_files():
    return archives.archive_files("cifar10", per_batch=40, seed=1)


@pytest.fixture(scope="session")
def cifar100_files():
    return archives.archive_files("cifar100", per_batch=120, seed=2)


@pytest.fixture(scope="session")
def cifar10_tar(tmp_path_factory, cifar10_files):
    """A tiny CIFAR-10 archive, not under the official name (whose SHA-256 it cannot have)."""
    return archives.write_tar(str(tmp_path_factory.mktemp("c10") / "tiny-cifar-10.tar.gz"),
                              cifar10_files[0])
def png_size(path):
    """(width, height) from a PNG's IHDR chunk, which must come first after the signature."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def expected_size(name, num_classes=10):
    inches = visualize.confusion_inches(num_classes) if name == run_dir.CONFUSION else \
        visualize.INCHES[name]
    return round(inches[0] * visualize.DPI), round(inches[1] * visualize.DPI)


def assert_figures(folder, names):
    for name in names:
        assert png_size(os.path.join(folder, name)) == expected_size(name), name


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cifar10_tar):
    """(run directory, what training printed) of a finished 2-epoch run on the tiny CIFAR-10
    archive, trained in this process (test_cli.py runs train_cifar10.py itself)."""
    import cifar_data
    import devices
    import training
    out = str(tmp_path_factory.mktemp("viz") / "run")
    config = override(PRESETS["tiny"], epochs=2, batch_size=32, patch_stride=4).validate()
    options = RunOptions(data_dir=cifar10_tar, output_dir=out)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        training.run(config, options, cifar_data.load("cifar10", cifar10_tar),
                     devices.detect())
    return out, printed.getvalue()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run without its figures, for tests that change or redraw it."""
    copy = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], copy,
                    ignore=shutil.ignore_patterns("*.png", run_dir.TENSORBOARD))
    return copy



@pytest.fixture
def cpu_only_host():
    """Skips the test on a host where TensorFlow sees a GPU: it checks what happens when a
    GPU is asked for in vain."""
    import tensorflow as tf
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this host has a GPU; the test is about asking for one in vain")


def saved_epochs(out):
    """The epochs done in a run directory's checkpoint.npz (0 while there is none)."""
    import numpy as np
    try:
        with np.load(os.path.join(out, "checkpoint.npz")) as saved:
            return run_dir.RunState.from_json(saved["state"].tobytes().decode()).epochs_done
    except (OSError, KeyError, ValueError):
        return 0
