"""training.py: whole runs, resume after SIGKILL, Ctrl-C, restart, NaN stop, plateaus, early
stopping, and settings that must train to the same loss."""
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import archives
import cifar_data
import devices
import run_dir
import training
from conftest import ROOT, run_app
from config import PRESETS, RunOptions, override
from errors import RunStopped
from run_dir import RunState
from vit_model import build_model

keras = tf.keras


@pytest.fixture(scope="module")
def slow_tar(tmp_path_factory):
    """1,000 training images: with batch 8, an epoch is ~100 steps, long enough to kill."""
    files, _ = archives.archive_files("cifar10", per_batch=200, seed=5)
    return archives.write_tar(str(tmp_path_factory.mktemp("slow") / "c10.tar.gz"), files)


def train_args(tar, out, epochs, *extra):
    return ["--preset", "tiny", "--data-dir", tar, "--output-dir", out, "--epochs", epochs,
            "--batch-size", 8, "--dropout", 0, *extra]


def start(args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train_cifar10.py"),
                             *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def saved_epochs(out):
    try:
        with np.load(os.path.join(out, "checkpoint.npz")) as saved:
            return RunState.from_json(saved["state"].tobytes().decode()).epochs_done
    except (OSError, KeyError, ValueError):
        return 0


def wait_for_epoch(process, out, epoch, timeout=120):
    deadline = time.time() + timeout
    while saved_epochs(out) < epoch:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "training did not reach the epoch in time"
        time.sleep(0.02)
    return time.time()


def history(out):
    return list(csv.DictReader(open(os.path.join(out, "history.csv"))))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_rerun_finishes_like_an_uninterrupted_run(tmp_path, slow_tar):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    reference = start(train_args(slow_tar, whole, 4))

    victim = start(train_args(slow_tar, killed, 4))
    first = wait_for_epoch(victim, killed, 1)
    second = wait_for_epoch(victim, killed, 2)
    time.sleep((second - first) / 2)                       # half-way through epoch 3
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done_before = saved_epochs(killed)
    assert done_before in (2, 3)
    assert len(history(killed)) == done_before

    resumed = subprocess.run([sys.executable, "train_cifar10.py",
                              *map(str, train_args(slow_tar, killed, 4))],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming {killed}: {done_before} of 4 epochs done" in resumed.stdout
    assert reference.wait(timeout=300) == 0

    got, expected = history(killed), history(whole)
    assert [r["epoch"] for r in got] == ["1", "2", "3", "4"]    # none lost, none twice
    for a, b in zip(got, expected):                              # same data, state, seeds
        for key in ("loss", "val_loss", "val_top1", "learning_rate"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-3, abs=1e-4), key
    results = json.loads((killed / "results.json").read_text())
    assert results["epochs_completed"] == 4
    assert results["test_top1"] == pytest.approx(
        json.loads((whole / "results.json").read_text())["test_top1"], abs=0.02)


@pytest.mark.slow
def test_ctrl_c_stops_after_saving_and_says_how_to_resume(tmp_path, slow_tar):
    out = tmp_path / "run"
    process = start(train_args(slow_tar, out, 50))
    wait_for_epoch(process, out, 1)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Ctrl-C: stopping once this epoch is saved" in stdout
    done = saved_epochs(out)
    assert 1 <= done < 50 and len(history(out)) == done
    assert f"stopped by Ctrl-C; {done} epoch(s) saved in {out}" in stderr
    assert f"python train_cifar10.py --output-dir {out}" in stderr
    assert "Traceback" not in stderr and not (out / "results.json").exists()
    for figure in ("training_curves.png", "confusion_matrix.png", "attention_maps.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"    # drawn on stopping


@pytest.mark.slow
def test_restart_starts_over(tmp_path, slow_tar):
    out = tmp_path / "run"
    assert run_app("train_cifar10.py", *train_args(slow_tar, out, 1)).returncode == 0
    again = run_app("train_cifar10.py", *train_args(slow_tar, out, 1), "--restart")
    assert again.returncode == 0 and "Resuming" not in again.stdout
    assert len(history(out)) == 1
    other = run_app("train_cifar10.py", *train_args(slow_tar, out, 1), "--num-layers", 3)
    assert other.returncode == 2
    assert "holds a run with --num-layers 2, not 3" in other.stderr


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_best_checkpoint(tmp_path, cifar10_tar):
    config = override(PRESETS["tiny"], epochs=2, batch_size=16)
    options = RunOptions(data_dir=cifar10_tar, output_dir=str(tmp_path / "run"))
    data = cifar_data.load("cifar10", cifar10_tar)
    device = devices.detect()
    training.run(config, options, data, device)
    best = tmp_path / "run" / "best.weights.h5"
    digest, mtime = hashlib.sha256(best.read_bytes()).hexdigest(), best.stat().st_mtime_ns

    diverging = dataclasses.replace(config, epochs=4, learning_rate=1e30)
    with pytest.raises(RunStopped, match=r"NaN or infinite at epoch 3, step \d+.*best "
                                         r"checkpoint \(epoch \d\) is unchanged.*lower "
                                         r"--learning-rate") as stopped:
        training.run(diverging, options, data, device)
    assert stopped.value.exit_code == 1
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest
    assert best.stat().st_mtime_ns == mtime
    assert saved_epochs(str(tmp_path / "run")) == 2
    assert len(history(str(tmp_path / "run"))) == 2


@pytest.mark.slow
def test_a_crash_between_checkpoint_and_best_weights_is_repaired_on_resume(tmp_path,
                                                                          cifar10_tar):
    """The checkpoint is written first; if the process dies before best.weights.h5 follows,
    the resumed run rewrites the best weights from the checkpoint."""
    config = override(PRESETS["tiny"], epochs=1, batch_size=16)
    options = RunOptions(data_dir=cifar10_tar, output_dir=str(tmp_path / "run"))
    data = cifar_data.load("cifar10", cifar10_tar)
    training.run(config, options, data, devices.detect())
    out = tmp_path / "run"
    (out / "best.weights.h5").unlink()                      # as if killed before writing it
    (out / "results.json").unlink()
    results = training.run(config, options, data, devices.detect())
    restored = build_model(config)
    restored.load_weights(str(out / "best.weights.h5"))
    from_checkpoint = build_model(config)
    training.compile_model(from_checkpoint, config)
    run_dir.load_checkpoint(str(out / "checkpoint.npz"), from_checkpoint,
                            from_checkpoint.optimizer)
    for a, b in zip(restored.get_weights(), from_checkpoint.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert results["best_epoch"] == 1


@pytest.mark.slow
def test_damaged_run_files_get_one_line(tmp_path, slow_tar, cifar100_files):
    out = tmp_path / "run"
    assert run_app("train_cifar10.py", *train_args(slow_tar, out, 1)).returncode == 0
    (out / "checkpoint.npz").write_bytes(b"not a zip")
    damaged = run_app("train_cifar10.py", *train_args(slow_tar, out, 2))
    assert damaged.returncode == 2 and "does not fit this model or is damaged" in damaged.stderr
    assert "--restart" in damaged.stderr and "Traceback" not in damaged.stderr
    c100 = archives.write_tar(str(tmp_path / "c100.tar.gz"), cifar100_files[0])
    other = run_app("train_cifar100.py", "--preset", "tiny", "--data-dir", c100,
                    "--output-dir", out)
    assert other.returncode == 2 and "holds a CIFAR-10 run; resume it with train_cifar10.py" \
        in other.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    clash = run_app("train_cifar10.py", *train_args(slow_tar, a_file, 1))
    assert clash.returncode == 2 and "is a file; pass a folder" in clash.stderr


@pytest.mark.slow
def test_whole_run_writes_checkpoint_history_and_results(tmp_path, cifar10_tar):
    out = tmp_path / "run"
    result = run_app("train_cifar10.py", "--preset", "tiny", "--epochs", "2",
                     "--data-dir", cifar10_tar, "--output-dir", out, "--batch-size", "32")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ViT on CIFAR-10 | TensorFlow" in result.stdout
    assert "Test accuracy of the best epoch" in result.stdout
    results = json.loads((out / "results.json").read_text())
    for key in ["dataset", "test_top1", "test_top5", "best_val_top1", "epochs_completed",
                "train_seconds", "device", "tensorflow_version", "keras_version", "config"]:
        assert key in results
    assert results["dataset"] == "cifar10" and results["device"] in ("CPU", "CUDA", "DirectML")
    assert results["epochs_completed"] == 2
    assert 0 <= results["test_top1"] <= results["test_top5"] <= 1
    assert results["config"]["experiment"]["num_layers"] == 2
    assert results["config"]["experiment"]["batch_size"] == 32
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == 2 and {"loss", "top1", "val_top1", "learning_rate"} <= set(rows[0])
    assert max(float(r["val_top1"]) for r in rows) == pytest.approx(results["best_val_top1"])
    assert (out / "best.weights.h5").stat().st_size > 10_000
    assert run_dir.read_config(str(out))[0].epochs == 2


@pytest.mark.slow
def test_mixed_precision_model_trains_with_float32_logits():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(PRESETS["tiny"])
        training.compile_model(model, PRESETS["tiny"])
        x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        history = model.fit(x, np.arange(8) % 10, epochs=2, verbose=0)
        assert model(x).dtype == tf.float32
        assert model.patch_proj.compute_dtype == "float16"
        assert all(np.isfinite(history.history["loss"]))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def xla_available() -> bool:
    try:
        tf.function(lambda x: x + 1, jit_compile=True)(tf.constant(1.0))
    except Exception:  # noqa: BLE001 - no XLA on this build/device
        return False
    return True


def train(config, jit_compile=False, steps_per_execution=1):
    """Four Adam steps on fixed batches from fixed initial weights; (losses, weights)."""
    keras.utils.set_random_seed(7)
    model = build_model(config)
    training.compile_model(model, config, jit_compile=jit_compile,
                           steps_per_execution=steps_per_execution)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, config.num_classes, 32)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    history = model.fit(data, epochs=2, verbose=0, shuffle=False)
    return history.history["loss"], model.get_weights()


BASE = override(PRESETS["tiny"], dropout=0.0, num_layers=2)


@pytest.mark.slow
@pytest.mark.parametrize("setting", [
    {"steps_per_execution": 2},
    {"steps_per_execution": 4},
    pytest.param({"jit_compile": True}, id="xla"),
])
def test_optional_speed_settings_train_to_the_same_loss(setting):
    if setting.get("jit_compile") and not xla_available():
        pytest.skip("no XLA in this TensorFlow")
    reference_loss, reference_weights = train(BASE)
    loss, weights = train(BASE, **setting)
    np.testing.assert_allclose(loss, reference_loss, rtol=2e-4)
    for got, expected in zip(weights, reference_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=2e-5)



def test_a_tensorflow_op_error_is_cut_to_the_line_that_says_what_happened():
    """The two forms measured when a worker died: TF 2.10's graph error (a 'Node:' line
    before the cause) and an eager op's '{{function_node ...}}' prefix on TF 2.21."""
    graph = tf.errors.UnavailableError(None, None, (
        "Graph execution error:\n\nDetected at node 'Adam/CollectiveReduceV2' defined at (most "
        "recent call last):\n    File \"train.py\", line 32, in <module>\n      model.fit()\n"
        "Node: 'Adam/CollectiveReduceV2'\nCollective ops is aborted by: failed to connect to "
        "all addresses\nAdditional GRPC error information\n\t [[{{node x}}]]"))
    assert training.tensorflow_cause(graph) == ("Collective ops is aborted by: failed to "
                                                "connect to all addresses")
    eager = tf.errors.UnavailableError(None, None, (
        "{{function_node __wrapped__CollectiveBcastSend_device_/job:worker/replica:0/task:0/"
        "device:CPU:0}} Collective ops is aborted by: task 1 is down [Op:CollectiveBcastSend]"))
    assert training.tensorflow_cause(eager) == ("Collective ops is aborted by: task 1 is down "
                                                "[Op:CollectiveBcastSend]")
