import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"

import archives  # noqa: E402  (needs the path above)


def run_app(script, *args, timeout=300, env=None):
    """Runs a top-level script of the app in a fresh Python; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=ROOT)


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
