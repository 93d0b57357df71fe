"""cli.py: the training command's start-up order and its one-line errors, end to end."""
import json
import os
import subprocess
import sys

import pytest

from helpers import CPP_LOG, ROOT, app_environment, run_app


@pytest.mark.slow
@pytest.mark.parametrize("make_dir, message", [
    (lambda tmp, tar: str(tmp / "missing"), "does not exist"),
    (lambda tmp, tar: str(tmp), "no cifar-10-python.tar.gz"),
    (lambda tmp, tar: (tmp / "x.tar.gz").write_bytes(b"not gzip") and str(tmp / "x.tar.gz"),
     "truncated or not a gzip tar"),
])
def test_bad_data_get_one_line_and_exit_code_2(tmp_path, cifar10_tar, make_dir, message):
    result = run_app("train_cifar10.py", "--data-dir", make_dir(tmp_path, cifar10_tar),
                     "--output-dir", tmp_path / "run")
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len([l for l in result.stderr.splitlines() if l.startswith("error:")]) == 1


@pytest.mark.slow
def test_gpu_flag_sets_both_variables_before_tensorflow_is_imported(tmp_path):
    """An import hook records the variables at the moment TensorFlow is first imported."""
    record = tmp_path / "seen.json"
    probe = f"""
import importlib.abc, json, os, sys
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "tensorflow" and not os.path.exists({str(record)!r}):
            json.dump({{k: os.environ.get(k) for k in
                        ("DML_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")}},
                      open({str(record)!r}, "w"))
        return None
sys.meta_path.insert(0, Spy())
from vitcifar.commands import train
sys.exit(train.main("cifar10", ["--gpu", "1", "--list-devices"]))
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("VISIBLE_DEVICES")}
    import subprocess
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=env, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(record.read_text()) == {"DML_VISIBLE_DEVICES": "1",
                                              "CUDA_VISIBLE_DEVICES": "1"}
    assert "training would use: " in result.stdout



@pytest.mark.slow
def test_tensorflow_start_up_lines_are_hidden_unless_verbose():
    """TF 2.21 prints oneDNN and CUDA notices (I0000 ...) and a failed cuInit (E0000 ...)
    at start-up; TF 2.10 its oneDNN and DirectML notices. None by default; --verbose shows
    them; the app's own lines stay."""
    env = app_environment()
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)           # as a user's shell has it
    command = [sys.executable, os.path.join(ROOT, "train_cifar10.py"), "--list-devices"]
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0, quiet.stderr
    assert "training would use: " in quiet.stdout
    assert not CPP_LOG.search(quiet.stderr + quiet.stdout), quiet.stderr
    assert "oneDNN" not in quiet.stderr and "cuInit" not in quiet.stderr
    verbose = subprocess.run(command + ["--verbose"], capture_output=True, text=True, env=env,
                             timeout=120)
    assert verbose.returncode == 0, verbose.stderr
    assert "training would use: " in verbose.stdout
    assert CPP_LOG.search(verbose.stderr), verbose.stderr
