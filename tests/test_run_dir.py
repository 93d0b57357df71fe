"""run_dir.py: atomic writes under faults, the checkpoint round trip, config.json."""
import errno
import hashlib
import os

import numpy as np
import pytest

import run_dir
from run_dir import RunState
from errors import RunStopped


@pytest.fixture
def tiny_model():
    import tensorflow as tf
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
    path = str(tmp_path / "best.weights.h5")
    run_dir.atomic_save(path, tiny_model.save_weights)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()

    def crash(temporary):
        open(temporary, "wb").write(b"\x89HDF half")
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(RunStopped, match="Input/output error"):
        run_dir.atomic_save(path, crash)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    tiny_model.load_weights(path)

