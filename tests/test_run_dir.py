"""run_dir.py: atomic writes under faults, portable weights and checkpoints (and those of
earlier versions), resuming from a folder's config.json, the run lock, opening a run."""
import dataclasses
import errno
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import run_dir
from helpers import ROOT
from config import PRESETS, RunOptions, override, to_json
from run_dir import RunState, WeightsError
from errors import RunStopped, UsageError


@pytest.fixture
def tiny_model():
    import training
    from config import PRESETS
    from vit_model import build_model
    model = build_model(PRESETS["tiny"])
    training.compile_model(model, PRESETS["tiny"])
    model.fit(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), verbose=0)
    return model


def test_checkpoint_round_trip_restores_weights_optimizer_and_state(tmp_path, tiny_model):
    import training
    from config import PRESETS
    from vit_model import build_model
    path = str(tmp_path / "checkpoint.npz")
    state = RunState(epochs_done=3, best_val_top1=0.5, best_epoch=2, learning_rate=5e-4,
                     history=[{"epoch": 1, "loss": 2.0}])
    run_dir.save_checkpoint(path, tiny_model, tiny_model.optimizer, state)
    fresh = build_model(PRESETS["tiny"])
    training.compile_model(fresh, PRESETS["tiny"])
    assert run_dir.load_checkpoint(path, fresh, fresh.optimizer) == state
    for a, b in zip(fresh.get_weights(), tiny_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    saved = run_dir.optimizer_variables(tiny_model.optimizer)
    for a, b in zip(run_dir.optimizer_variables(fresh.optimizer), saved):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(np.asarray(fresh.optimizer.iterations)) == 1


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path, tiny_model,
                                                                   monkeypatch):
    path = str(tmp_path / "checkpoint.npz")
    run_dir.save_checkpoint(path, tiny_model, tiny_model.optimizer, RunState(epochs_done=1))
    before = open(path, "rb").read()

    def disk_full_half_way(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", disk_full_half_way)
    with pytest.raises(RunStopped, match="No space left on device.*previous save intact.*"
                                         "free some disk space"):
        run_dir.save_checkpoint(path, tiny_model, tiny_model.optimizer,
                                      RunState(epochs_done=2))
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]              # no partial file left
    state = run_dir.load_checkpoint(path, tiny_model, tiny_model.optimizer)
    assert state.epochs_done == 1


def test_best_weights_survive_a_failing_save(tmp_path, tiny_model):
    path = str(tmp_path / "best.weights.npz")
    run_dir.save_weights(tiny_model, path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()

    def crash(temporary):
        open(temporary, "wb").write(b"PK half")
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(RunStopped, match="Input/output error"):
        run_dir.atomic_save(path, crash)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    run_dir.load_weights(tiny_model, path)


def model_of(**settings):
    from vit_model import build_model
    return build_model(override(PRESETS["tiny"], **settings))


def test_weights_are_keyed_by_their_path_in_the_model(tmp_path, tiny_model):
    path = str(tmp_path / "w.npz")
    run_dir.save_weights(tiny_model, path)
    with np.load(path) as saved:
        keys = list(saved.files)
    assert keys == [run_dir.weight_key(v) for v in tiny_model.weights]
    assert "vit/block_0/attention/qkv/kernel" in keys and "vit/logits/bias" in keys
    assert not any(":" in key for key in keys)            # Keras 2's ":0" is not part of it
    fresh = model_of()
    run_dir.load_weights(fresh, path)
    for a, b in zip(fresh.get_weights(), tiny_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weights_that_do_not_fit_say_which_and_damaged_only_when_unreadable(tmp_path,
                                                                            tiny_model):
    path = str(tmp_path / "w.npz")
    run_dir.save_weights(tiny_model, path)
    with pytest.raises(WeightsError) as deeper:
        run_dir.load_weights(model_of(num_layers=3), path)
    message = str(deeper.value)
    assert "does not fit the model: weights 12 missing (vit/block_2/" in message
    assert "damaged" not in message and "unexpected" not in message
    with pytest.raises(WeightsError, match=r"12 unexpected \(vit/block_1/"):
        run_dir.load_weights(model_of(num_layers=1), path)
    with pytest.raises(WeightsError, match=r"weights 2 of another shape \(vit/logits/kernel is "
                                           r"\(64, 10\) in the file, \(64, 100\) in the model; "
                                           r"vit/logits/bias is \(10,\)"):
        run_dir.load_weights(model_of(dataset="cifar100"), path)
    open(path, "wb").write(b"PK\x03\x04 cut short")
    with pytest.raises(WeightsError, match="w.npz is damaged"):
        run_dir.load_weights(tiny_model, path)


@pytest.mark.parametrize("name, policy", [("adam", "float32"), ("adamw", "float32"),
                                          ("adam", "mixed_float16")])
def test_optimizer_state_is_keyed_by_slot_and_weight_path(name, policy):
    """Both stacks name Adam's moments differently (and under a loss-scale wrapper
    differently again); the portable keys must cover every one, so that a checkpoint
    resumes on the other stack, and with another precision, with its optimizer state."""
    import tensorflow as tf
    import optimization
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        model = model_of()
        model.compile(optimizer=optimization.build_optimizer(
            name, 1e-3, 0.01 * (name == "adamw"), None, model),
            loss=optimization.loss_and_metrics(one_hot=False)[0])
        run_dir.build_optimizer_slots(model.optimizer, model)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert (policy == "mixed_float16") == hasattr(model.optimizer, "inner_optimizer")
    keys = set(run_dir.optimizer_keys(model.optimizer, model))
    paths = [run_dir.weight_key(v) for v in model.trainable_variables]
    assert keys == {"optimizer/iterations"} | {f"optimizer/{slot}/{path}" for path in paths
                                                for slot in ("m", "v")}


def test_optimizer_state_that_does_not_fit_resumes_with_weights_and_one_warning(
        tmp_path, tiny_model, capsys):
    """A checkpoint whose Adam moments are not this optimizer's (here: left out): the
    weights and the step count are restored, the moments start at 0."""
    import training
    path = str(tmp_path / "checkpoint.npz")
    run_dir.save_checkpoint(path, tiny_model, tiny_model.optimizer, RunState(epochs_done=2))
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files if not k.startswith("optimizer/m/")}
    arrays["optimizer/iterations"] = np.asarray(7, arrays["optimizer/iterations"].dtype)
    np.savez(path, **arrays)
    fresh = model_of()
    training.compile_model(fresh, PRESETS["tiny"])
    assert run_dir.load_checkpoint(path, fresh, fresh.optimizer).epochs_done == 2
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed.startswith("warning: the optimizer state in")
    assert "resuming with the saved weights and step count and fresh Adam moments" in printed
    assert int(np.asarray(fresh.optimizer.iterations)) == 7
    for a, b in zip(fresh.get_weights(), tiny_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    slots = run_dir.optimizer_keys(fresh.optimizer, fresh)
    assert all(not np.asarray(v).any() for k, v in slots.items() if k != "optimizer/iterations")


def test_a_damaged_checkpoint_says_damaged_and_one_of_another_model_says_which(
        tmp_path, tiny_model):
    import training
    path = str(tmp_path / "checkpoint.npz")
    run_dir.save_checkpoint(path, tiny_model, tiny_model.optimizer, RunState(epochs_done=1))
    other = model_of(embedding_dim=16)
    training.compile_model(other, PRESETS["tiny"])
    with pytest.raises(WeightsError, match=r"checkpoint.npz does not fit the model: weights "
                                           r"\d+ of another shape \(vit/patch_proj/kernel"):
        run_dir.load_checkpoint(path, other, other.optimizer)
    open(path, "wb").write(b"not a zip")
    with pytest.raises(WeightsError, match="checkpoint.npz is damaged"):
        run_dir.load_checkpoint(path, tiny_model, tiny_model.optimizer)
    np.savez(path, model_0=np.zeros(1), state=np.frombuffer(b"{}", np.uint8))   # by position
    with pytest.raises(WeightsError, match=r"checkpoint.npz holds no weights keyed by their "
                                           r"path \(model/...\): it was not written by this "
                                           r"version"):
        run_dir.load_checkpoint(path, tiny_model, tiny_model.optimizer)


# --- resuming from the folder's settings (no TensorFlow) -------------------------------------

@pytest.fixture
def saved_run(tmp_path):
    """A folder whose config.json holds a tiny run with --batch-size 32 on an archive."""
    archive = tmp_path / "data.tar.gz"
    archive.write_bytes(b"")
    folder = tmp_path / "run"
    folder.mkdir()
    config = override(PRESETS["tiny"], batch_size=32, epochs=2)
    options = RunOptions(data_dir=str(archive), output_dir=str(folder), tensorboard=False)
    (folder / "config.json").write_text(json.dumps(to_json(config, options)))
    return str(folder), config, options


def test_a_folder_with_config_json_resumes_with_its_settings_and_the_flags_on_top(saved_run):
    folder, config, options = saved_run
    assert run_dir.resume_settings("cifar10", folder, {}) == (config, options)
    resumed, resumed_options = run_dir.resume_settings(
        "cifar10", folder, {"epochs": 5, "learning_rate": 1e-4, "gpu": "1", "xla": "off"})
    assert resumed == dataclasses.replace(config, epochs=5, learning_rate=1e-4)
    assert resumed_options == dataclasses.replace(options, gpu="1", xla="off")
    # the preset that made it, with the same flags, is accepted and changes nothing
    assert run_dir.resume_settings("cifar10", folder, {"batch_size": 32}, "tiny") == \
        (config, options)
    assert run_dir.resume_settings("cifar10", os.path.dirname(folder), {}) is None
    assert run_dir.resume_settings("cifar10", None, {}) is None


def test_changes_that_would_make_another_run_are_listed_all_at_once(saved_run):
    folder, _, _ = saved_run
    before = open(os.path.join(folder, "config.json")).read()
    with pytest.raises(UsageError, match=r"holds a run with --patch-size 8, not 16, "
                                         r"--num-layers 2, not 3, --flip True, not False; "
                                         r"leave those flags out .* --restart"):
        run_dir.resume_settings("cifar10", folder, {"num_layers": 3, "patch_size": 16,
                                                    "flip": False, "epochs": 9})
    with pytest.raises(UsageError, match=r"--batch-size 32, not 128"):
        run_dir.resume_settings("cifar10", folder, {}, "tiny")           # tiny's own 128
    with pytest.raises(UsageError, match="holds a CIFAR-10 run; resume it with "
                                         "train_cifar10.py"):
        run_dir.resume_settings("cifar100", folder, {})
    assert open(os.path.join(folder, "config.json")).read() == before


def test_data_that_moved_and_a_config_json_of_another_version_are_one_line(saved_run):
    folder, _, options = saved_run
    os.remove(options.data_dir)
    with pytest.raises(UsageError, match=r"the run's data, --data-dir .*data.tar.gz \(in "
                                         r".*config.json\), is not there; pass --data-dir"):
        run_dir.resume_settings("cifar10", folder, {})
    assert run_dir.resume_settings("cifar10", folder, {"data_dir": "elsewhere"})[1].data_dir \
        == "elsewhere"
    run = run_dir.SavedRun(folder, *run_dir.read_config(folder), [])
    with pytest.raises(UsageError, match=r"the run read its data from .*data.tar.gz \(its "
                                         r"config.json\), which is not there now; pass "
                                         r"--data-dir"):
        run.data_dir(None)
    assert run.data_dir("mine") == "mine"
    values = json.load(open(os.path.join(folder, "config.json")))
    values["experiment"]["warp"] = 9
    json.dump(values, open(os.path.join(folder, "config.json"), "w"))
    with pytest.raises(UsageError, match="config.json has unknown keys warp"):
        run_dir.resume_settings("cifar10", folder, {"data_dir": "elsewhere"})


# --- the lock ------------------------------------------------------------------------------

def test_a_second_lock_on_a_run_directory_is_refused_naming_the_holder(tmp_path):
    folder = str(tmp_path / "run")
    with run_dir.RunLock(folder):
        with pytest.raises(UsageError, match=rf"run is being trained by process "
                                             rf"{os.getpid()} \(it holds .*training.lock\)"):
            run_dir.RunLock(folder).acquire()
    with run_dir.RunLock(folder):              # released: it can be taken again
        pass
    with pytest.raises(UsageError, match="is a file; pass a folder"):
        run_dir.RunLock(str(tmp_path / "run" / "training.lock")).acquire()


@pytest.mark.slow
def test_the_lock_of_a_killed_process_is_free_at_once(tmp_path):
    folder = str(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; "
         "import run_dir; run_dir.RunLock(sys.argv[1]).acquire(); print('held', flush=True); "
         "time.sleep(300)", folder], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"process {holder.pid} "):
            run_dir.RunLock(folder).acquire()
    finally:
        holder.kill()                                   # SIGKILL: no clean-up runs
        holder.wait()
    deadline = time.time() + 10
    lock = run_dir.RunLock(folder)
    while True:
        try:
            lock.acquire()
            break
        except UsageError:
            assert time.time() < deadline
            time.sleep(0.05)
    lock.release()


# --- opening a run -------------------------------------------------------------------------

def test_opening_a_file_as_a_run_directory_says_it_is_a_file(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(to_json(PRESETS["tiny"], RunOptions())))
    (folder / "best.weights.npz").write_bytes(b"")
    with pytest.raises(UsageError, match=r"best.weights.npz is a file, not a run directory: "
                                         r"pass the folder .*; its folder .*run is one"):
        run_dir.open_run(str(folder / "best.weights.npz"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UsageError, match=r"notes.txt is a file, not a run directory: pass the "
                                         r"folder that train_cifar10.py wrote \(runs/...\)$"):
        run_dir.open_run(str(tmp_path / "notes.txt"))
