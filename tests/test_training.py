"""training.py: whole runs, resume after SIGKILL, Ctrl-C, restart, NaN stop, plateaus, early
stopping, and settings that must train to the same loss."""
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import archives
from helpers import CPP_LOG, ROOT, app_environment, run_app, saved_epochs
from vit_model import build_model
from vitcifar.backend import devices
from vitcifar.config.config_file import to_json
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions
from vitcifar.config.views import override
from vitcifar.data import cifar
from vitcifar.errors import RunStopped
from vitcifar.runs import checkpoint, resume, run_dir
from vitcifar.training import compiled, fit_loop, trainer, workers

keras = tf.keras


@pytest.fixture(scope="module")
def slow_tar(tmp_path_factory):
    """1,000 training images: with batch 8, an epoch is ~100 steps, long enough to kill."""
    files, _ = archives.archive_files("cifar10", per_batch=200, seed=5)
    return archives.write_tar(str(tmp_path_factory.mktemp("slow") / "c10.tar.gz"), files)


def train_args(tar, out, epochs, *extra):
    """A tiny run in float32: the runs compared against each other compute in one format
    whatever --mixed-precision auto would choose on this machine."""
    return ["--preset", "tiny", "--data-dir", tar, "--output-dir", out, "--epochs", epochs,
            "--batch-size", 8, "--dropout", 0, "--mixed-precision", "off", *extra]


def start(args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "train_cifar10.py"),
                             *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=app_environment())


def wait_for_epoch(process, out, epoch, timeout=900):
    """When the run in `out` has saved `epoch` epochs. The deadline only ends a hung test: a
    machine busy with other jobs may take minutes for the start-up and an epoch."""
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
    hint = resume.resume_command(*run_dir.read_config(str(out)))
    assert stderr.rstrip().endswith(f"to resume, run {hint}") and "same flags" not in stderr
    assert "Traceback" not in stderr and not (out / "results.json").exists()
    for figure in ("training_curves.png", "confusion_matrix.png", "attention_maps.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"    # drawn on stopping


@pytest.mark.slow
def test_the_printed_command_resumes_and_flags_on_top_change_only_what_may(tmp_path,
                                                                          cifar10_tar):
    out = tmp_path / "run"
    first = run_app("train_cifar10.py", "--preset", "tiny", "--data-dir", cifar10_tar,
                    "--output-dir", out, "--epochs", 1, "--batch-size", 32, "--no-tensorboard")
    assert first.returncode == 0, first.stderr[-2000:]
    hint = resume.resume_command(*run_dir.read_config(str(out)))
    pasted = subprocess.run(shlex.split(hint), cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env=app_environment())
    assert pasted.returncode == 0, pasted.stderr[-2000:]
    assert f"Resuming {out}: 1 of 1 epochs done" in pasted.stdout
    assert "training is complete" in pasted.stdout

    more = run_app("train_cifar10.py", "--output-dir", out, "--epochs", 2)
    assert more.returncode == 0, more.stderr[-2000:]
    assert f"Resuming {out}: 1 of 2 epochs done" in more.stdout
    assert len(history(out)) == 2 and not (out / "tensorboard").exists()
    config, options = run_dir.read_config(str(out))
    assert (config.epochs, config.batch_size, config.num_layers) == (2, 32, 2)
    assert options.data_dir == str(cifar10_tar) and options.tensorboard is False

    saved = (out / "config.json").read_bytes()
    refused = run_app("train_cifar10.py", "--output-dir", out, "--num-layers", 3,
                      "--batch-size", 64, "--epochs", 3)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "holds a run with --num-layers 2, not 3, --batch-size 32, not 64; leave those " \
        "flags out" in refused.stderr
    assert (out / "config.json").read_bytes() == saved and len(history(out)) == 2
    (out / "config.json").write_text(saved.decode().replace('"seed"', '"sead"'))
    unknown = run_app("train_cifar10.py", "--output-dir", out)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1
    assert "config.json has unknown keys sead and missing keys seed" in unknown.stderr


def lock_holder_files(folder):
    return {name: (os.path.getmtime(os.path.join(folder, name)),
                   open(os.path.join(folder, name), "rb").read())
            for name in sorted(os.listdir(folder))}


@pytest.mark.slow
def test_a_second_trainer_on_a_locked_folder_exits_2_and_touches_nothing(tmp_path,
                                                                        cifar10_tar):
    """This process holds the lock, as a trainer would; even --restart, which deletes the
    run's files, must change nothing."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(to_json(PRESETS["tiny"],
                                                                RunOptions())))
    (out / "history.csv").write_text("epoch\n1\n")
    with run_dir.RunLock(str(out)):
        before = lock_holder_files(out)
        second = run_app("train_cifar10.py", "--preset", "tiny", "--data-dir", cifar10_tar,
                         "--output-dir", out, "--epochs", 1, "--restart")
        assert lock_holder_files(out) == before
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr == f"error: {out} is being trained by process {os.getpid()} (it " \
        f"holds {out / 'training.lock'}); wait for it to end or stop it, or pick another " \
        "--output-dir\n"


@pytest.mark.slow
def test_two_trainers_on_one_folder_the_second_names_the_first(tmp_path, slow_tar):
    out = tmp_path / "run"
    first = start(train_args(slow_tar, out, 50))
    try:
        wait_for_epoch(first, out, 1)
        second = run_app("train_cifar10.py", *train_args(slow_tar, out, 50))
        assert second.returncode == 2
        assert f"is being trained by process {first.pid} " in second.stderr
        assert second.stderr.count("\n") == 1 and "Traceback" not in second.stderr
    finally:
        first.kill()
        first.communicate()


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
    assert other.stderr.count("\n") == 1 and "Traceback" not in other.stderr


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_best_checkpoint(tmp_path, cifar10_tar):
    config = override(PRESETS["tiny"], epochs=2, batch_size=16)
    options = RunOptions(data_dir=cifar10_tar, output_dir=str(tmp_path / "run"))
    data = cifar.load("cifar10", cifar10_tar)
    device = devices.detect()
    trainer.run(config, options, data, device)
    best = tmp_path / "run" / "best.weights.npz"
    digest, mtime = hashlib.sha256(best.read_bytes()).hexdigest(), best.stat().st_mtime_ns

    diverging = dataclasses.replace(config, epochs=4, learning_rate=1e30)
    with pytest.raises(RunStopped, match=r"NaN or infinite at epoch 3, step \d+.*best "
                                         r"checkpoint \(epoch \d\) is unchanged.*lower "
                                         r"--learning-rate") as stopped:
        trainer.run(diverging, options, data, device)
    assert stopped.value.exit_code == 1
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest
    assert best.stat().st_mtime_ns == mtime
    assert saved_epochs(str(tmp_path / "run")) == 2
    assert len(history(str(tmp_path / "run"))) == 2


@pytest.mark.slow
def test_a_crash_between_checkpoint_and_best_weights_is_repaired_on_resume(tmp_path,
                                                                          cifar10_tar):
    """The checkpoint is written first; if the process dies before best.weights.npz follows,
    the resumed run rewrites the best weights from the checkpoint."""
    config = override(PRESETS["tiny"], epochs=1, batch_size=16)
    options = RunOptions(data_dir=cifar10_tar, output_dir=str(tmp_path / "run"))
    data = cifar.load("cifar10", cifar10_tar)
    trainer.run(config, options, data, devices.detect())
    out = tmp_path / "run"
    (out / "best.weights.npz").unlink()                     # as if killed before writing it
    (out / "results.json").unlink()
    results = trainer.run(config, options, data, devices.detect())
    restored = build_model(config)
    checkpoint.load_weights(restored, str(out / "best.weights.npz"))
    from_checkpoint = build_model(config)
    compiled.compile_model(from_checkpoint, config)
    checkpoint.load_checkpoint(str(out / "checkpoint.npz"), from_checkpoint,
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
    assert damaged.returncode == 2 and "checkpoint.npz is damaged" in damaged.stderr
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
    assert not CPP_LOG.search(result.stderr), result.stderr       # TensorFlow's C++ lines
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
    assert (out / "best.weights.npz").stat().st_size > 10_000
    assert run_dir.read_config(str(out))[0].epochs == 2


@pytest.mark.slow
@pytest.mark.parametrize("policy, compute", [("mixed_float16", "float16"),
                                             ("mixed_bfloat16", "bfloat16")])
def test_mixed_precision_model_trains_with_float32_logits_weights_and_optimizer(policy,
                                                                                 compute):
    """Both mixed policies: half-precision layers, float32 logits, weights and Adam state;
    float16 has a loss scale (its small gradients would underflow), bfloat16, with float32's
    exponent range, none."""
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model(PRESETS["tiny"])
        compiled.compile_model(model, PRESETS["tiny"])
        x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        history = model.fit(x, np.arange(8) % 10, epochs=2, verbose=0)
        assert model(x).dtype == tf.float32
        assert model.patch_proj.compute_dtype == compute
        assert all(np.isfinite(history.history["loss"]))
        assert hasattr(model.optimizer, "inner_optimizer") == (policy == "mixed_float16")
        moments = checkpoint.optimizer_variables(model.optimizer)[1:]
        assert {tf.as_dtype(v.dtype) for v in model.weights + moments} == {tf.float32}
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
    compiled.compile_model(model, config, jit_compile=jit_compile,
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



# --- whole runs: the recipe's settings end to end ---------------------------------------------

def quiet_run(config, options, data):
    with contextlib.redirect_stdout(io.StringIO()):
        return trainer.run(config, options, data, devices.detect())


@pytest.mark.slow
def test_a_resumed_cosine_run_follows_the_rates_of_an_uninterrupted_one(tmp_path, cifar10_tar,
                                                                       monkeypatch):
    config = override(PRESETS["tiny"], epochs=3, batch_size=32, lr_schedule="cosine",
                      warmup_epochs=1, optimizer="adamw", weight_decay=0.05)
    data = cifar.load("cifar10", cifar10_tar)
    whole = RunOptions(output_dir=str(tmp_path / "whole"), tensorboard=False)
    quiet_run(config, whole, data)
    split = RunOptions(output_dir=str(tmp_path / "split"), tensorboard=False)
    original = fit_loop.Bookkeeper.on_epoch_end

    def stop_after_the_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        self.stop_requested = True                      # as a Ctrl-C would
    monkeypatch.setattr(fit_loop.Bookkeeper, "on_epoch_end", stop_after_the_first_epoch)
    with pytest.raises(RunStopped):
        quiet_run(config, split, data)
    monkeypatch.undo()
    quiet_run(config, split, data)

    def rates(options):
        return [float(r["learning_rate"]) for r in history(options.output_dir)]
    assert len(rates(split)) == 3
    np.testing.assert_allclose(rates(split), rates(whole), rtol=1e-6)
    assert rates(whole)[0] == pytest.approx(1e-3)       # the warmup is the first epoch
    assert rates(whole)[0] > rates(whole)[1] > rates(whole)[2] == pytest.approx(1e-6)  # floor


@pytest.mark.slow
def test_a_new_learning_rate_given_on_resume_replaces_the_rate(tmp_path, cifar10_tar):
    config = override(PRESETS["tiny"], epochs=1, batch_size=32)
    options = RunOptions(output_dir=str(tmp_path / "run"), tensorboard=False)
    data = cifar.load("cifar10", cifar10_tar)
    quiet_run(config, options, data)
    quiet_run(override(config, epochs=2, learning_rate=2.5e-4), options, data)
    assert [float(r["learning_rate"]) for r in history(options.output_dir)] == \
        pytest.approx([1e-3, 2.5e-4])


@pytest.mark.slow
def test_a_time_budget_plans_the_epochs_and_a_resumed_run_keeps_the_plan(tmp_path, cifar10_tar):
    config = override(PRESETS["tiny"], batch_size=32, epochs=50, lr_schedule="cosine",
                      warmup_epochs=5, time_budget=0.25)
    options = RunOptions(output_dir=str(tmp_path / "run"), tensorboard=False)
    data = cifar.load("cifar10", cifar10_tar)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = trainer.run(config, options, data, devices.detect())
    plan = results["time_budget_plan"]
    assert "Time budget 0.25 min" in printed.getvalue()
    assert plan["budget_minutes"] == 0.25 and plan["epochs"] >= 1
    steps = 170 // 32 + 1                        # per epoch, of the 170 training images
    assert (plan["epochs"] - 1) * steps < plan["steps"] <= plan["epochs"] * steps
    assert plan["last_epoch_steps"] == plan["steps"] - (plan["epochs"] - 1) * steps
    # the warmup is the share of the first plan's steps; re-plans keep it (cut to the total)
    first = int(re.search(r"so ([\d,]+) steps", printed.getvalue()).group(1).replace(",", ""))
    assert plan["warmup_steps"] == min(round(5 / 50 * first), plan["steps"])
    assert results["epochs_completed"] == plan["epochs"]
    with np.load(os.path.join(options.output_dir, "checkpoint.npz")) as saved:
        assert int(saved["optimizer/iterations"]) == plan["steps"]   # cut exactly there
    assert float(history(options.output_dir)[-1]["learning_rate"]) == pytest.approx(
        config.min_learning_rate, rel=1e-3)      # the decay ends where the budget does
    again = quiet_run(config, options, data)          # finished: evaluates, keeps the plan
    assert again["time_budget_plan"] == plan and again["epochs_completed"] == plan["epochs"]


@pytest.mark.slow
def test_validation_images_validates_on_the_first_images_of_the_held_out_split(tmp_path,
                                                                               cifar10_tar):
    config = override(PRESETS["tiny"], epochs=1, batch_size=32, validation_images=7)
    options = RunOptions(output_dir=str(tmp_path / "run"), tensorboard=False,
                         mixed_precision="off")
    data = cifar.load("cifar10", cifar10_tar)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = trainer.run(config, options, data, devices.detect())
    assert "30 validation (each epoch validates the first 7)" in printed.getvalue()
    _, (x_val, y_val) = cifar.split_validation(data.x_train, data.y_train,
                                               config.validation_fraction, config.seed)
    model = build_model(config)
    checkpoint.load_weights(model, os.path.join(options.output_dir, run_dir.BEST_WEIGHTS))
    compiled.compile_model(model, config)
    first = compiled.evaluate_test(model, config, x_val[:7], y_val[:7], 32)
    row = history(options.output_dir)[0]
    assert float(row["val_loss"]) == pytest.approx(first["test_loss"], rel=1e-4)
    assert results["best_val_top1"] == pytest.approx(first["test_top1"])
    # the whole test set is still evaluated
    assert results["test_top1"] == pytest.approx(
        compiled.evaluate_test(model, config, data.x_test, data.y_test, 32)["test_top1"])


@pytest.mark.slow
def test_a_cifar100_run_trains_end_to_end(tmp_path, cifar100_files):
    archive = archives.write_tar(str(tmp_path / "c100.tar.gz"), cifar100_files[0])
    out = tmp_path / "run"
    result = run_app("train_cifar100.py", "--preset", "tiny", "--epochs", 1, "--data-dir",
                     archive, "--output-dir", out, "--no-tensorboard")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["dataset"] == "cifar100" and results["epochs_completed"] == 1
    assert len(json.loads((out / "labels.json").read_text())) == 100


@pytest.mark.slow
def test_a_tiny_run_learns_far_above_chance(tmp_path):
    """The archives' images show their class as a bright square at a class-dependent place:
    a model that learns anything gets most of them; chance is 10%."""
    files, _ = archives.archive_files("cifar10", per_batch=120, seed=3)
    archive = archives.write_tar(str(tmp_path / "c10.tar.gz"), files)
    config = override(PRESETS["tiny"], epochs=20, batch_size=32, randaugment_n=0, flip=False,
                      crop_padding=0, dropout=0.0, optimizer="adamw", weight_decay=0.05,
                      lr_schedule="cosine", warmup_epochs=1, learning_rate=3e-3)
    results = quiet_run(config, RunOptions(output_dir=str(tmp_path / "run"),
                                           tensorboard=False),
                        cifar.load("cifar10", archive))
    assert results["test_top1"] >= 0.5, results["test_top1"]


@pytest.mark.slow
def test_a_run_folder_of_another_format_gets_one_error_line_and_exit_code_2(run_copy):
    """A config.json without this version's format: evaluating or resuming the run says so
    in one line and changes nothing."""
    config_path = os.path.join(run_copy, "config.json")
    values = json.load(open(config_path))
    flat_values = {**values["experiment"], **values["experiment"].pop("augmentation"),
                   **values["run"]}
    with open(config_path, "w") as handle:
        json.dump(flat_values, handle)
    before = {name: open(os.path.join(run_copy, name), "rb").read()
              for name in os.listdir(run_copy) if os.path.isfile(os.path.join(run_copy, name))}
    for command in (["evaluate.py", run_copy], ["train_cifar10.py", "--output-dir", run_copy]):
        result = run_app(*command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, \
            result.stderr
        assert "has no format; this version of the app reads format 2 only" in result.stderr
    assert before == {name: open(os.path.join(run_copy, name), "rb").read() for name in before}


def test_a_tensorflow_op_error_is_cut_to_the_line_that_says_what_happened():
    """The two forms measured when a worker died: TF 2.10's graph error (a 'Node:' line
    before the cause) and an eager op's '{{function_node ...}}' prefix on TF 2.21."""
    graph = tf.errors.UnavailableError(None, None, (
        "Graph execution error:\n\nDetected at node 'Adam/CollectiveReduceV2' defined at (most "
        "recent call last):\n    File \"train.py\", line 32, in <module>\n      model.fit()\n"
        "Node: 'Adam/CollectiveReduceV2'\nCollective ops is aborted by: failed to connect to "
        "all addresses\nAdditional GRPC error information\n\t [[{{node x}}]]"))
    assert workers.tensorflow_cause(graph) == ("Collective ops is aborted by: failed to "
                                                "connect to all addresses")
    eager = tf.errors.UnavailableError(None, None, (
        "{{function_node __wrapped__CollectiveBcastSend_device_/job:worker/replica:0/task:0/"
        "device:CPU:0}} Collective ops is aborted by: task 1 is down [Op:CollectiveBcastSend]"))
    assert workers.tensorflow_cause(eager) == ("Collective ops is aborted by: task 1 is down "
                                                "[Op:CollectiveBcastSend]")


def without_timings(results: dict) -> dict:
    """results.json less what measures time or names the folder: train_seconds, wall_time,
    the time-budget plan, config.run.output_dir; and the precision's reason, which says
    whether the choice was measured or came from the cache."""
    values = json.loads(json.dumps(results))
    for key in ("train_seconds", "wall_time", "time_budget_plan"):
        values.pop(key)
    values["config"]["run"].pop("output_dir")
    values["precision"].pop("reason")
    return values


@pytest.mark.slow
def test_the_same_command_and_seed_give_the_same_results(cifar10_tar, tmp_path):
    """--mixed-precision auto (the default) makes the same choice twice, and the same seed
    trains the same model: results.json is the same, timings aside (floats to 1e-5: oneDNN
    may sum in another order)."""
    results = []
    for name in ("first", "second"):
        out = tmp_path / name
        done = run_app("train_cifar10.py", "--preset", "tiny", "--data-dir", cifar10_tar,
                       "--output-dir", out, "--epochs", 2, "--batch-size", 16)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(json.loads((out / "results.json").read_text()))
    first, second = map(without_timings, results)
    assert set(first) == set(second) and first["precision"] == second["precision"]
    for key in first:
        if isinstance(first[key], float):
            assert second[key] == pytest.approx(first[key], rel=1e-5), key
        else:
            assert second[key] == first[key], key
    assert {"start-up", "data loading", "model build", "training steps", "validation",
            "test evaluation", "figures"} <= set(results[0]["wall_time"]["phases"])
