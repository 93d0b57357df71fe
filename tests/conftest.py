"""Shared test fixtures: tiny archives with the official layout, one tiny trained run, a
copy of it, and a host without a GPU. Shared functions are in helpers.py."""
import contextlib
import io
import shutil

import pytest

import archives  # imports no TensorFlow
import helpers  # noqa: F401  (sets TensorFlow's log level before it is imported)
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions
from vitcifar.config.views import override
from vitcifar.runs import run_dir


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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cifar10_tar):
    """(run directory, what training printed) of a finished 2-epoch run on the tiny CIFAR-10
    archive, trained in this process (test_cli.py runs train_cifar10.py itself)."""
    from vitcifar.backend import devices
    from vitcifar.data import cifar
    from vitcifar.training import trainer
    out = str(tmp_path_factory.mktemp("viz") / "run")
    config = override(PRESETS["tiny"], epochs=2, batch_size=32, patch_stride=4).validate()
    options = RunOptions(data_dir=cifar10_tar, output_dir=out)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.run(config, options, cifar.load("cifar10", cifar10_tar),
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
