"""--backend torch: the backend and device chosen before Keras starts, bad input refused in
one line, and a run's plumbing (fit, checkpoint, resume across backends, results, figures) on
Keras's torch backend.

The run tests train the tiny ViT on torch, resume it on TensorFlow, evaluate it on torch and
export it; they start processes and need Keras 3 and torch (skipped without them).
"""
import importlib.util
import json

import pytest

from helpers import run_app
from vitcifar.backend import devices, torch_devices
from vitcifar.config.flags import backend_requested
from vitcifar.config.settings import RunOptions
from vitcifar.errors import UsageError

TORCH = importlib.util.find_spec("torch") is not None and devices.keras_3_installed()
needs_torch = pytest.mark.skipif(not TORCH, reason="needs torch and Keras 3 "
                                                   "(requirements-torch.txt)")


# --- choosing the backend, before Keras -------------------------------------------------------

def test_the_flag_wins_then_keras_backend_then_tensorflow():
    assert devices.chosen_backend("torch", {"KERAS_BACKEND": "tensorflow"}) == "torch"
    assert devices.chosen_backend(None, {"KERAS_BACKEND": "torch"}) == "torch"
    assert devices.chosen_backend(None, {}) == "tensorflow"


@pytest.mark.parametrize("flag, environ, said", [
    ("jax", {}, "--backend jax"), (None, {"KERAS_BACKEND": "jax"}, "KERAS_BACKEND=jax")])
def test_other_backends_are_refused_naming_what_asked(flag, environ, said):
    with pytest.raises(UsageError, match=f"{said}: this app runs on Keras's tensorflow or "
                                         "torch backend"):
        devices.chosen_backend(flag, environ)


def test_run_options_check_the_backend():
    assert RunOptions(backend="torch").validate().backend == "torch"
    with pytest.raises(UsageError, match="--backend jax: this app runs on Keras's tensorflow "
                                         "or torch backend"):
        RunOptions(backend="jax").validate()


def test_saved_run_commands_read_the_flag_before_parsing():
    assert backend_requested(["run", "--backend", "torch"]) == "torch"
    assert backend_requested(["run", "--backend=tensorflow"]) == "tensorflow"
    assert backend_requested(["run", "--", "--backend", "torch"]) is None
    assert backend_requested(["run"]) is None


def test_torch_is_refused_where_it_cannot_run(monkeypatch):
    monkeypatch.setattr(devices, "keras_3_installed", lambda: False)
    with pytest.raises(UsageError, match="needs Keras 3.*requirements-torch.txt"):
        devices.environment_variables(None, "auto", "torch")
    monkeypatch.setattr(devices, "keras_3_installed", lambda: True)
    monkeypatch.setattr(torch_devices, "installed", lambda name: name != "torch")
    with pytest.raises(UsageError, match="needs PyTorch.*pip install -r requirements-torch"):
        devices.environment_variables(None, "auto", "torch")


@pytest.mark.parametrize("distribute", ["mirrored", "multi-worker"])
def test_tf_distribute_is_refused_on_torch(monkeypatch, distribute):
    monkeypatch.setattr(devices, "keras_3_installed", lambda: True)
    monkeypatch.setattr(torch_devices, "installed", lambda name: True)
    with pytest.raises(UsageError, match=f"--distribute {distribute} is tf.distribute"):
        devices.environment_variables(None, distribute, "torch")


# --- the torch device, before Keras --------------------------------------------------------

def seen(monkeypatch, kind, names, directml=()):
    """torch_devices as on a host where torch sees `names` of `kind` (and torch-directml the
    adapters `directml`): the tests never depend on the host's own GPUs."""
    monkeypatch.setattr(torch_devices, "directml_adapters", lambda: list(directml))
    monkeypatch.setattr(torch_devices, "gpus", lambda found: (kind, list(names)))


def test_gpu_n_picks_the_device_keras_reads(monkeypatch):
    seen(monkeypatch, "cuda", ["A", "B"])
    assert torch_devices.device_variables("1", {}) == {"KERAS_TORCH_DEVICE": "cuda:1"}
    assert torch_devices.device_variables(None, {}) == {}       # Keras's own choice
    assert torch_devices.device_variables("1", {"KERAS_TORCH_DEVICE": "cpu"}) == {}


def test_directml_is_chosen_by_gpu_or_its_variable(monkeypatch):
    seen(monkeypatch, "privateuseone", ["Radeon", "Arc"], directml=["Radeon", "Arc"])
    assert torch_devices.device_variables(None, {}) == {
        "KERAS_TORCH_DEVICE": "privateuseone:0"}
    assert torch_devices.device_variables(None, {"DML_VISIBLE_DEVICES": "1"}) == {
        "KERAS_TORCH_DEVICE": "privateuseone:1"}
    assert torch_devices.device_variables("0", {"DML_VISIBLE_DEVICES": "1"}) == {
        "KERAS_TORCH_DEVICE": "privateuseone:0"}


def test_a_gpu_torch_does_not_see_is_refused(monkeypatch):
    seen(monkeypatch, "cuda", ["A"])
    with pytest.raises(UsageError, match="--gpu 3: torch sees 1 CUDA device.*0: A"):
        torch_devices.device_variables("3", {})
    seen(monkeypatch, "cpu", [])
    with pytest.raises(UsageError, match="--gpu 0: torch sees no GPU"):
        torch_devices.device_variables("0", {})
    with pytest.raises(UsageError, match="trains on one device"):
        torch_devices.device_variables("0,1", {})


def test_the_directml_probe_survives_an_abort(tmp_path):
    """device_count() aborts a process without an adapter: the probe runs in a child and
    reads an abort as no adapter."""
    aborting = tmp_path / "python"
    aborting.write_text("#!/bin/sh\nkill -ABRT $$\n")
    aborting.chmod(0o755)
    if importlib.util.find_spec("torch_directml") is None:
        pytest.skip("torch-directml is not installed: nothing is probed")
    assert torch_devices.directml_adapters(str(aborting)) == []


# --- the command line -----------------------------------------------------------------------

def bad_input(args, env=None, tmp_path=None):
    """Runs train_cifar10.py with `args` and returns its stderr, checking: exit 2, one
    `error:` line, nothing written."""
    out = tmp_path / "run"
    result = run_app("train_cifar10.py", "--output-dir", out, *args, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()
    return errors[0]


@pytest.mark.slow
@needs_torch
def test_bad_backend_input_is_one_line_and_touches_nothing(tmp_path):
    assert "--backend jax" in bad_input(["--backend", "jax"], tmp_path=tmp_path)
    assert "KERAS_BACKEND=jax" in bad_input([], {"KERAS_BACKEND": "jax"}, tmp_path)
    assert "tf.distribute" in bad_input(["--backend", "torch", "--distribute", "mirrored"],
                                        tmp_path=tmp_path)
    assert "--gpu 99: torch sees" in bad_input(["--backend", "torch", "--gpu", "99"],
                                               tmp_path=tmp_path)


# --- a run on torch ---------------------------------------------------------------------------

@pytest.mark.slow
@needs_torch
def test_a_torch_run_trains_resumes_on_tensorflow_evaluates_and_exports(tmp_path, cifar10_tar):
    out = tmp_path / "run"
    flags = ["--preset", "tiny", "--data-dir", cifar10_tar, "--output-dir", out,
             "--batch-size", "32", "--lr-schedule", "cosine", "--optimizer", "adamw",
             "--weight-decay", "0.05"]
    torch_run = run_app("train_cifar10.py", *flags, "--epochs", "2", "--backend", "torch")
    assert torch_run.returncode == 0, torch_run.stderr
    banner = torch_run.stdout.splitlines()[0]
    assert " on torch " in banner and "training on CPU (cpu: " in banner, banner
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == "torch" and results["epochs_completed"] == 2
    assert results["torch_version"]
    for name in ("best.weights.npz", "checkpoint.npz", "history.csv",
                 "training_curves.png", "attention_maps.png"):
        assert (out / name).exists(), name

    resumed = run_app("train_cifar10.py", *flags, "--epochs", "3", "--backend", "tensorflow")
    assert resumed.returncode == 0, resumed.stderr
    assert "| TensorFlow " in resumed.stdout.splitlines()[0]
    assert "warning: the optimizer state" not in resumed.stdout      # Adam moments carried
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == "tensorflow" and results["epochs_completed"] == 3
    assert len((out / "history.csv").read_text().splitlines()) == 1 + 3

    evaluated = run_app("evaluate.py", out, "--backend", "torch")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "results.json: the same" in evaluated.stdout
    if importlib.util.find_spec("tf2onnx") is not None:     # requirements-export.txt
        exported = run_app("export.py", out)
        assert exported.returncode == 0, exported.stderr
        assert (out / "export" / "model.onnx").exists()


@pytest.mark.slow
@needs_torch
def test_a_time_budget_plans_on_torch(tmp_path, cifar10_tar):
    out = tmp_path / "run"
    result = run_app("train_cifar10.py", "--preset", "fast", "--data-dir", cifar10_tar,
                     "--output-dir", out, "--batch-size", "16", "--time-budget", "0.15",
                     "--backend", "torch", "--no-tensorboard")
    assert result.returncode == 0, result.stderr
    assert "training images/s measured" in result.stdout
    assert json.loads((out / "results.json").read_text())["time_budget_plan"]["steps"] > 0
