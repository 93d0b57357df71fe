"""Issue 4: resume after SIGKILL, atomic saves under faults, NaN stop, Ctrl-C, bad archives."""
import csv
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import archives
import checkpointing
from checkpointing import RunState, RunStopped
from conftest import ROOT


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


def test_restart_starts_over(tmp_path, slow_tar):
    out = tmp_path / "run"
    from conftest import run_app
    assert run_app("train_cifar10.py", *train_args(slow_tar, out, 1)).returncode == 0
    again = run_app("train_cifar10.py", *train_args(slow_tar, out, 1), "--restart")
    assert again.returncode == 0 and "Resuming" not in again.stdout
    assert len(history(out)) == 1
    other = run_app("train_cifar10.py", *train_args(slow_tar, out, 1), "--num-layers", 3)
    assert other.returncode == 2
    assert "holds a run with --num-layers 2, not 3" in other.stderr


# --- in-process: faults while saving, NaN -----------------------------------------------------

@pytest.fixture
def tiny_model():
    import tensorflow as tf
    import training
    from config import PRESETS
    from vit_model import build_model
    model = build_model(PRESETS["tiny"])
    training.compile_model(model, PRESETS["tiny"], jit_compile=False)
    model.fit(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), verbose=0)
    return model


def test_checkpoint_round_trip_restores_weights_optimizer_and_state(tmp_path, tiny_model):
    import training
    from config import PRESETS
    from vit_model import build_model
    path = str(tmp_path / "checkpoint.npz")
    state = RunState(epochs_done=3, best_val_top1=0.5, best_epoch=2, learning_rate=5e-4,
                     history=[{"epoch": 1, "loss": 2.0}])
    checkpointing.save_checkpoint(path, tiny_model, tiny_model.optimizer, state)
    fresh = build_model(PRESETS["tiny"])
    training.compile_model(fresh, PRESETS["tiny"], jit_compile=False)
    assert checkpointing.load_checkpoint(path, fresh, fresh.optimizer) == state
    for a, b in zip(fresh.get_weights(), tiny_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    saved = checkpointing.optimizer_variables(tiny_model.optimizer)
    for a, b in zip(checkpointing.optimizer_variables(fresh.optimizer), saved):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(np.asarray(fresh.optimizer.iterations)) == 1


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path, tiny_model,
                                                                   monkeypatch):
    path = str(tmp_path / "checkpoint.npz")
    checkpointing.save_checkpoint(path, tiny_model, tiny_model.optimizer, RunState(epochs_done=1))
    before = open(path, "rb").read()

    def disk_full_half_way(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", disk_full_half_way)
    with pytest.raises(RunStopped, match="No space left on device.*previous save intact.*"
                                         "free some disk space"):
        checkpointing.save_checkpoint(path, tiny_model, tiny_model.optimizer,
                                      RunState(epochs_done=2))
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]              # no partial file left
    state = checkpointing.load_checkpoint(path, tiny_model, tiny_model.optimizer)
    assert state.epochs_done == 1


def test_best_weights_survive_a_failing_save(tmp_path, tiny_model):
    path = str(tmp_path / "best.weights.h5")
    checkpointing.atomic_save(path, tiny_model.save_weights)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()

    def crash(temporary):
        open(temporary, "wb").write(b"\x89HDF half")
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(RunStopped, match="Input/output error"):
        checkpointing.atomic_save(path, crash)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    tiny_model.load_weights(path)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_best_checkpoint(tmp_path, cifar10_tar):
    import dataclasses
    import cifar_data
    import devices
    import training
    from config import PRESETS
    config = dataclasses.replace(PRESETS["tiny"], data_dir=cifar10_tar, epochs=2,
                                 batch_size=16, output_dir=str(tmp_path / "run"))
    data = cifar_data.load("cifar10", cifar10_tar)
    device = devices.Device("CPU", "test CPU")
    training.run(config, data, device)
    best = tmp_path / "run" / "best.weights.h5"
    digest, mtime = hashlib.sha256(best.read_bytes()).hexdigest(), best.stat().st_mtime_ns

    diverging = dataclasses.replace(config, epochs=4, learning_rate=1e30)
    with pytest.raises(RunStopped, match=r"NaN or infinite at epoch 3, step \d+.*best "
                                         r"checkpoint \(epoch \d\) is unchanged.*lower "
                                         r"--learning-rate") as stopped:
        training.run(diverging, data, device)
    assert stopped.value.exit_code == 1
    assert hashlib.sha256(best.read_bytes()).hexdigest() == digest
    assert best.stat().st_mtime_ns == mtime
    assert saved_epochs(str(tmp_path / "run")) == 2
    assert len(history(str(tmp_path / "run"))) == 2


# --- malformed archives: a clear message, and the crafted pickle never runs ----------------

class Exploit:
    def __init__(self, marker, call=os.system):
        self.marker, self.call = marker, call

    def __reduce__(self):
        return (self.call, (f"touch {self.marker}",))


def with_exploit_in_test_batch(files, marker):
    """The test batch (read last) would run code: a loader that stops at the first fault,
    or that executes nothing, never creates the marker."""
    evil = {b"data": Exploit(marker), b"labels": [0]}
    return {**files, "cifar-10-batches-py/test_batch": __import__("pickle").dumps(evil, 2)}


def write_raw_tar(path, entries):
    import io
    import tarfile
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in entries:
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path


def malformed(kind, tmp_path, files, marker):
    import pickle
    import tarfile
    files = with_exploit_in_test_batch(files, marker)
    if kind == "truncated gzip":
        full = open(archives.write_tar(str(tmp_path / "full.tar.gz"), files), "rb").read()
        (tmp_path / "a.tar.gz").write_bytes(full[: len(full) // 3])
    elif kind == "corrupt gzip":
        full = bytearray(open(archives.write_tar(str(tmp_path / "f.tar.gz"), files), "rb").read())
        full[200:260] = b"\x00" * 60
        (tmp_path / "a.tar.gz").write_bytes(bytes(full))
    elif kind == "not a tar":
        import gzip
        (tmp_path / "a.tar.gz").write_bytes(gzip.compress(b"just some text " * 100))
    elif kind in ("path outside", "absolute path", "symlink"):
        entries = []
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            entries.append((info, payload))
        bad = tarfile.TarInfo({"path outside": "cifar-10-batches-py/../../escape",
                               "absolute path": "/tmp/escape",
                               "symlink": "cifar-10-batches-py/link"}[kind])
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
            entries.insert(0, (bad, None))
        else:
            bad.size = 1
            entries.insert(0, (bad, b"x"))
        write_raw_tar(str(tmp_path / "a.tar.gz"), entries)
    elif kind == "other CIFAR":
        files100, _ = archives.archive_files("cifar100", per_batch=4)
        archives.write_tar(str(tmp_path / "a.tar.gz"), files100)
    else:
        batch = {"pickle imports eval": {b"data": Exploit(marker, eval), b"labels": [0]},
                 "wrong shape": {b"data": np.zeros((2, 32, 32), np.uint8), b"labels": [0, 1]},
                 "wrong dtype": {b"data": np.zeros((2, 3072), np.int64), b"labels": [0, 1]},
                 "labels out of range": {b"data": np.zeros((2, 3072), np.uint8),
                                         b"labels": [0, -1]}}[kind]
        files = {**files, "cifar-10-batches-py/data_batch_1": pickle.dumps(batch, protocol=2)}
        archives.write_tar(str(tmp_path / "a.tar.gz"), files)
    return str(tmp_path / "a.tar.gz")


@pytest.mark.parametrize("kind, message", [
    ("truncated gzip", "truncated or not a gzip tar"),
    ("corrupt gzip", "truncated or not a gzip tar"),
    ("not a tar", "truncated or not a gzip tar"),
    ("path outside", "outside its folder"),
    ("absolute path", "outside its folder"),
    ("symlink", "outside its folder"),
    ("other CIFAR", "is a CIFAR-100 archive, not CIFAR-10"),
    ("pickle imports eval", r"not plain CIFAR data .*(__builtin__|builtins)\.eval"),
    ("wrong shape", r"data should be uint8 of shape \(N, 3072\)"),
    ("wrong dtype", "data should be uint8"),
    ("labels out of range", "labels outside 0..9"),
])
def test_malformed_archive_is_refused_and_runs_nothing(tmp_path, cifar10_files, kind, message):
    import cifar_data
    marker = tmp_path / "marker"
    with pytest.raises(cifar_data.DataError, match=message):
        cifar_data.load("cifar10", malformed(kind, tmp_path, cifar10_files[0], marker))
    assert not marker.exists()


def test_the_cli_reports_a_crafted_archive_in_one_line(tmp_path, cifar10_files):
    from conftest import run_app
    marker = tmp_path / "marker"
    path = malformed("pickle imports eval", tmp_path, cifar10_files[0], marker)
    result = run_app("train_cifar10.py", "--data-dir", path, "--output-dir", tmp_path / "o")
    assert result.returncode == 2
    assert [l for l in result.stderr.splitlines() if l.startswith("error:")] == [
        l for l in result.stderr.splitlines() if "not plain CIFAR data" in l]
    assert not marker.exists() and "Traceback" not in result.stderr


def test_a_crash_between_checkpoint_and_best_weights_is_repaired_on_resume(tmp_path,
                                                                          cifar10_tar):
    """The checkpoint is written first; if the process dies before best.weights.h5 follows,
    the resumed run rewrites the best weights from the checkpoint."""
    import dataclasses
    import cifar_data
    import devices
    import training
    from config import PRESETS
    from vit_model import build_model
    config = dataclasses.replace(PRESETS["tiny"], data_dir=cifar10_tar, epochs=1,
                                 batch_size=16, output_dir=str(tmp_path / "run"))
    data = cifar_data.load("cifar10", cifar10_tar)
    training.run(config, data, devices.Device("CPU", "test CPU"))
    out = tmp_path / "run"
    (out / "best.weights.h5").unlink()                      # as if killed before writing it
    (out / "results.json").unlink()
    results = training.run(config, data, devices.Device("CPU", "test CPU"))
    restored = build_model(config)
    restored.load_weights(str(out / "best.weights.h5"))
    from_checkpoint = build_model(config)
    training.compile_model(from_checkpoint, config, jit_compile=False)
    checkpointing.load_checkpoint(str(out / "checkpoint.npz"), from_checkpoint,
                                  from_checkpoint.optimizer)
    for a, b in zip(restored.get_weights(), from_checkpoint.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert results["best_epoch"] == 1


def test_damaged_run_files_get_one_line(tmp_path, slow_tar, cifar100_files):
    from conftest import run_app
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
