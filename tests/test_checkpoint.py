"""checkpoint.py: portable weights and checkpoints, their optimizer state, and writes that
fail half way."""
import errno
import hashlib
import os

import numpy as np
import pytest

from vitcifar.config.presets import PRESETS
from vitcifar.config.views import override
from vitcifar.errors import RunStopped
from vitcifar.runs import checkpoint, run_dir
from vitcifar.runs.checkpoint import RunState, WeightsError


@pytest.fixture
def tiny_model():
    from vit_model import build_model
    from vitcifar.config.presets import PRESETS
    from vitcifar.training import compiled
    model = build_model(PRESETS["tiny"])
    compiled.compile_model(model, PRESETS["tiny"])
    model.fit(np.zeros((4, 32, 32, 3), np.uint8), np.arange(4), verbose=0)
    return model


def test_checkpoint_round_trip_restores_weights_optimizer_and_state(tmp_path, tiny_model):
    from vit_model import build_model
    from vitcifar.config.presets import PRESETS
    from vitcifar.training import compiled
    path = str(tmp_path / "checkpoint.npz")
    state = RunState(epochs_done=3, best_val_top1=0.5, best_epoch=2, learning_rate=5e-4,
                     history=[{"epoch": 1, "loss": 2.0}])
    checkpoint.save_checkpoint(path, tiny_model, tiny_model.optimizer, state)
    fresh = build_model(PRESETS["tiny"])
    compiled.compile_model(fresh, PRESETS["tiny"])
    assert checkpoint.load_checkpoint(path, fresh, fresh.optimizer) == state
    for a, b in zip(fresh.get_weights(), tiny_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    saved = checkpoint.optimizer_variables(tiny_model.optimizer)
    for a, b in zip(checkpoint.optimizer_variables(fresh.optimizer), saved):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(np.asarray(fresh.optimizer.iterations)) == 1


def test_a_write_that_fails_half_way_leaves_the_previous_checkpoint(tmp_path, tiny_model,
                                                                   monkeypatch):
    path = str(tmp_path / "checkpoint.npz")
    checkpoint.save_checkpoint(path, tiny_model, tiny_model.optimizer, RunState(epochs_done=1))
    before = open(path, "rb").read()

    def disk_full_half_way(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(np, "savez", disk_full_half_way)
    with pytest.raises(RunStopped, match="No space left on device.*previous save intact.*"
                                         "free some disk space"):
        checkpoint.save_checkpoint(path, tiny_model, tiny_model.optimizer,
                                   RunState(epochs_done=2))
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["checkpoint.npz"]              # no partial file left
    state = checkpoint.load_checkpoint(path, tiny_model, tiny_model.optimizer)
    assert state.epochs_done == 1


def test_best_weights_survive_a_failing_save(tmp_path, tiny_model):
    path = str(tmp_path / "best.weights.npz")
    checkpoint.save_weights(tiny_model, path)
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()

    def crash(temporary):
        open(temporary, "wb").write(b"PK half")
        raise OSError(errno.EIO, "Input/output error")
    with pytest.raises(RunStopped, match="Input/output error"):
        run_dir.atomic_save(path, crash)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
    checkpoint.load_weights(tiny_model, path)


def model_of(**settings):
    from vit_model import build_model
    return build_model(override(PRESETS["tiny"], **settings))


def test_weights_are_keyed_by_their_path_in_the_model(tmp_path, tiny_model):
    path = str(tmp_path / "w.npz")
    checkpoint.save_weights(tiny_model, path)
    with np.load(path) as saved:
        keys = list(saved.files)
    assert keys == [checkpoint.weight_key(v) for v in tiny_model.weights]
    assert "vit/block_0/attention/qkv/kernel" in keys and "vit/logits/bias" in keys
    assert not any(":" in key for key in keys)            # Keras 2's ":0" is not part of it
    fresh = model_of()
    checkpoint.load_weights(fresh, path)
    for a, b in zip(fresh.get_weights(), tiny_model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_weights_that_do_not_fit_say_which_and_damaged_only_when_unreadable(tmp_path,
                                                                            tiny_model):
    path = str(tmp_path / "w.npz")
    checkpoint.save_weights(tiny_model, path)
    with pytest.raises(WeightsError) as deeper:
        checkpoint.load_weights(model_of(num_layers=3), path)
    message = str(deeper.value)
    assert "does not fit the model: weights 12 missing (vit/block_2/" in message
    assert "damaged" not in message and "unexpected" not in message
    with pytest.raises(WeightsError, match=r"12 unexpected \(vit/block_1/"):
        checkpoint.load_weights(model_of(num_layers=1), path)
    with pytest.raises(WeightsError, match=r"weights 2 of another shape \(vit/logits/kernel is "
                                           r"\(64, 10\) in the file, \(64, 100\) in the model; "
                                           r"vit/logits/bias is \(10,\)"):
        checkpoint.load_weights(model_of(dataset="cifar100"), path)
    open(path, "wb").write(b"PK\x03\x04 cut short")
    with pytest.raises(WeightsError, match="w.npz is damaged"):
        checkpoint.load_weights(tiny_model, path)


@pytest.mark.parametrize("name, policy", [("adam", "float32"), ("adamw", "float32"),
                                          ("adam", "mixed_float16"),
                                          ("adamw", "mixed_bfloat16")])
def test_optimizer_state_is_keyed_by_slot_and_weight_path(name, policy):
    """Both stacks name Adam's moments differently (and under a loss-scale wrapper
    differently again); the portable keys must cover every one, so that a checkpoint
    resumes on the other stack, and with another precision, with its optimizer state."""
    import tensorflow as tf

    from vitcifar.training import optimization
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        model = model_of()
        model.compile(optimizer=optimization.build_optimizer(
            name, 1e-3, 0.01 * (name == "adamw"), None, model),
            loss=optimization.loss_and_metrics(one_hot=False)[0])
        checkpoint.build_optimizer_slots(model.optimizer, model)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert (policy == "mixed_float16") == hasattr(model.optimizer, "inner_optimizer")
    keys = set(checkpoint.optimizer_keys(model.optimizer, model))
    paths = [checkpoint.weight_key(v) for v in model.trainable_variables]
    assert keys == {"optimizer/iterations"} | {f"optimizer/{slot}/{path}" for path in paths
                                                for slot in ("m", "v")}


def test_optimizer_state_that_does_not_fit_resumes_with_weights_and_one_warning(
        tmp_path, tiny_model, capsys):
    """A checkpoint whose Adam moments are not this optimizer's (here: left out): the
    weights and the step count are restored, the moments start at 0."""
    from vitcifar.training import compiled
    path = str(tmp_path / "checkpoint.npz")
    checkpoint.save_checkpoint(path, tiny_model, tiny_model.optimizer, RunState(epochs_done=2))
    with np.load(path) as saved:
        arrays = {k: saved[k] for k in saved.files if not k.startswith("optimizer/m/")}
    arrays["optimizer/iterations"] = np.asarray(7, arrays["optimizer/iterations"].dtype)
    np.savez(path, **arrays)
    fresh = model_of()
    compiled.compile_model(fresh, PRESETS["tiny"])
    assert checkpoint.load_checkpoint(path, fresh, fresh.optimizer).epochs_done == 2
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and printed.startswith("warning: the optimizer state in")
    assert "resuming with the saved weights and step count and fresh Adam moments" in printed
    assert int(np.asarray(fresh.optimizer.iterations)) == 7
    for a, b in zip(fresh.get_weights(), tiny_model.get_weights()):
        np.testing.assert_array_equal(a, b)
    slots = checkpoint.optimizer_keys(fresh.optimizer, fresh)
    assert all(not np.asarray(v).any() for k, v in slots.items() if k != "optimizer/iterations")


def test_a_damaged_checkpoint_says_damaged_and_one_of_another_model_says_which(
        tmp_path, tiny_model):
    from vitcifar.training import compiled
    path = str(tmp_path / "checkpoint.npz")
    checkpoint.save_checkpoint(path, tiny_model, tiny_model.optimizer, RunState(epochs_done=1))
    other = model_of(embedding_dim=16)
    compiled.compile_model(other, PRESETS["tiny"])
    with pytest.raises(WeightsError, match=r"checkpoint.npz does not fit the model: weights "
                                           r"\d+ of another shape \(vit/patch_proj/kernel"):
        checkpoint.load_checkpoint(path, other, other.optimizer)
    open(path, "wb").write(b"not a zip")
    with pytest.raises(WeightsError, match="checkpoint.npz is damaged"):
        checkpoint.load_checkpoint(path, tiny_model, tiny_model.optimizer)
    np.savez(path, model_0=np.zeros(1), state=np.frombuffer(b"{}", np.uint8))   # by position
    with pytest.raises(WeightsError, match=r"checkpoint.npz holds no weights keyed by their "
                                           r"path \(model/...\): it was not written by this "
                                           r"version"):
        checkpoint.load_checkpoint(path, tiny_model, tiny_model.optimizer)
