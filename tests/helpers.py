"""What several test files share: running the app's scripts as a user would, and checking
what a run directory holds. Importing it first (conftest does) sets this process's
TensorFlow log level and Keras backend before TensorFlow is imported: TensorFlow, unless
KERAS_BACKEND=torch was set outside, which the model's own tests (test_vit_model.py,
test_kernels.py) run on; the rest of the app needs TensorFlow."""
import os
import re
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# For TensorFlow in this process; the app's own scripts (run_app) start as a user's would,
# quiet by default (devices.prepare_environment), unless the variable was set outside.
OWN_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.get("KERAS_BACKEND") != "torch":
    os.environ["KERAS_BACKEND"] = "tensorflow"
# --mixed-precision auto's measurements (precision.cache_file) in a folder of this test
# session's, shared by the processes it starts: measured at most once per model shape, so
# every test of the session sees the same choice, and the user's own cache is not touched.
os.environ.setdefault("VIT_CIFAR_CACHE", tempfile.mkdtemp(prefix="vit-cifar-cache-"))

from vitcifar.analysis import figures  # noqa: E402
from vitcifar.runs import checkpoint  # noqa: E402
from vitcifar.runs import run_dir  # noqa: E402

# A TensorFlow C++ log line: absl's (TF >= 2.16: "I0000 00:00:17... port.cc:153] ...", and
# its "WARNING: All log messages before absl::InitializeLog()") or TF 2.10's
# ("2026-01-01 10:00:00.123: I tensorflow/...").
CPP_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWEF]\d{4} \d\d:\d\d|"
                     r"\d{4}-\d\d-\d\d [\d:.]+: [IWEF] )", re.M)


def run_app(script, *args, timeout=300, env=None):
    """Runs a top-level script of the app in a fresh Python; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=app_environment(env), cwd=ROOT)


def run_module(module, *args, timeout=300, env=None):
    """`python -m module args` from the repository's root (how benchmarks run)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          env=app_environment(env), cwd=ROOT)


def random_op(name):
    """One augmentation alone, as (images, seed, bound) -> images, through
    data_augmentations.apply_ops: an operation with its bound, "crop" (the padding, 4 by
    default) or "flip" (horizontal by default)."""
    import data_augmentations as aug
    if name == "crop":
        return lambda images, seed, padding=4: aug.apply_ops(images, seed, {},
                                                             crop_padding=padding)
    if name == "flip":
        return lambda images, seed, horizontal=True: aug.apply_ops(
            images, seed, {}, flip=horizontal, vertical_flip=not horizontal)
    return lambda images, seed, bound: aug.apply_ops(images, seed, {name: bound})


def app_environment(env=None):
    """This process's environment as a user's shell would have it, plus `env`."""
    full_env = {**os.environ, **(env or {})}
    if OWN_LOG_LEVEL and "TF_CPP_MIN_LOG_LEVEL" not in (env or {}):
        del full_env["TF_CPP_MIN_LOG_LEVEL"]
    return full_env


def png_size(path):
    """(width, height) from a PNG's IHDR chunk, which must come first after the signature."""
    with open(path, "rb") as handle:
        head = handle.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def expected_size(name, num_classes=10):
    inches = figures.confusion_inches(num_classes) if name == run_dir.CONFUSION else \
        figures.INCHES[name]
    return round(inches[0] * figures.DPI), round(inches[1] * figures.DPI)


def assert_figures(folder, names):
    for name in names:
        assert png_size(os.path.join(folder, name)) == expected_size(name), name


def saved_epochs(out):
    """The epochs done in a run directory's checkpoint.npz (0 while there is none)."""
    import numpy as np
    try:
        with np.load(os.path.join(out, "checkpoint.npz")) as saved:
            return checkpoint.RunState.from_json(saved["state"].tobytes().decode()).epochs_done
    except (OSError, KeyError, ValueError):
        return 0
