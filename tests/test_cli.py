"""The command line: flags, one-line errors with exit code 2, devices, a whole run."""
import csv
import json
import os
import sys

import pytest

from conftest import ROOT, run_app
import cli
from config import TrainConfig, UsageError


def test_flags_override_the_preset_and_cover_every_field():
    config, _ = cli.parse("cifar100", ["--epochs", "3", "--head-units", "32", "16",
                                       "--no-flip", "--learning-rate", "0.01"])
    assert config == TrainConfig(dataset="cifar100", epochs=3, head_units=(32, 16),
                                 flip=False, learning_rate=0.01)
    augmented, _ = cli.parse("cifar10", ["--randaugment-ops", "hue", "rotation",
                                         "--randaugment-n", "1", "--mixup-alpha", "0.2",
                                         "--vertical-flip"])
    assert augmented.randaugment_ops == ("hue", "rotation") and augmented.randaugment_n == 1
    assert augmented.soft_labels and augmented.vertical_flip and not TrainConfig().soft_labels
    assert TrainConfig.from_dict(json.loads(json.dumps(augmented.to_dict()))) == augmented
    tiny, _ = cli.parse("cifar10", ["--preset", "tiny", "--num-layers", "3"])
    assert tiny.num_layers == 3 and tiny.embedding_dim == 32
    help_text = cli.build_parser("cifar10").format_help()
    for flag in ["--data-dir", "--output-dir", "--epochs", "--batch-size", "--learning-rate",
                 "--patch-size", "--patch-stride", "--num-layers", "--embedding-dim",
                 "--num-heads", "--mlp-hidden-dim", "--patience", "--seed", "--gpu",
                 "--list-devices", "--crop-padding", "--flip", "--vertical-flip",
                 "--randaugment-ops", "--randaugment-n", "--randaugment-magnitude",
                 "--randaugment-prob", "--erasing-prob", "--erasing-max-area",
                 "--mixup-alpha", "--cutmix-alpha"]:
        assert flag in help_text


@pytest.mark.parametrize("args, message", [
    (["--patch-size", "5"], "does not tile the 32x32 image"),
    (["--patch-size", "40"], "larger than the 32x32 image"),
    (["--embedding-dim", "60", "--num-heads", "8"], "not divisible by --num-heads"),
    (["--epochs", "0"], "--epochs must be a positive"),
    (["--batch-size", "-5"], "--batch-size must be a positive"),
    (["--learning-rate", "0"], "--learning-rate must be positive"),
    (["--num-layers", "0"], "--num-layers must be a positive"),
    (["--epochs", "many"], "invalid int value"),
    (["--seed", "-1"], "--seed must be 0 to 4294967295"),
    (["--randaugment-n", "9"], "--randaugment-n must be 0 to 8"),
    (["--randaugment-ops", "hue", "--randaugment-n", "2"], "--randaugment-n must be 0 to 1"),
    (["--randaugment-ops", "hue", "hue"], "--randaugment-ops must name distinct"),
    (["--randaugment-ops", "blur"], "invalid choice: 'blur'"),
    (["--randaugment-magnitude", "31"], "--randaugment-magnitude must be 0 to 30"),
    (["--erasing-prob", "1.5"], "--erasing-prob must be 0 to 1"),
    (["--mixup-alpha", "-0.1"], r"--mixup-alpha must be 0 \(off\) or more"),
])
def test_bad_flags_get_one_line_and_exit_code_2(args, message):
    with pytest.raises(UsageError, match=message):
        cli.parse("cifar10", args)
    if args[0] in ("--patch-size", "--epochs"):         # and through the real entry point
        result = run_app("train_cifar10.py", *args)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and message in result.stderr
        assert "Traceback" not in result.stderr


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


def test_gpu_flag_sets_both_variables_before_tensorflow_is_imported(tmp_path):
    """An import hook records the variables at the moment TensorFlow is first imported."""
    record = tmp_path / "seen.json"
    probe = tmp_path / "probe.py"
    probe.write_text(f"""
import importlib.abc, json, os, sys
sys.path.insert(0, {ROOT!r})
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "tensorflow" and not os.path.exists({str(record)!r}):
            json.dump({{k: os.environ.get(k) for k in
                        ("DML_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")}},
                      open({str(record)!r}, "w"))
        return None
sys.meta_path.insert(0, Spy())
import cli
sys.exit(cli.main("cifar10", ["--gpu", "1", "--list-devices"]))
""")
    env = {k: v for k, v in os.environ.items() if not k.endswith("VISIBLE_DEVICES")}
    import subprocess
    result = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(record.read_text()) == {"DML_VISIBLE_DEVICES": "1",
                                              "CUDA_VISIBLE_DEVICES": "1"}
    assert "training would use: CPU" in result.stdout


def test_prepare_environment_refuses_to_run_after_tensorflow():
    import tensorflow  # noqa: F401
    import devices
    with pytest.raises(RuntimeError, match="before TensorFlow"):
        devices.prepare_environment(0)


def test_a_gpu_asked_for_in_vain_is_said_plainly(monkeypatch):
    import devices
    monkeypatch.setenv("DML_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device = devices.detect()                     # no GPU on the test machines
    assert device.kind == "CPU"
    assert "DML_VISIBLE_DEVICES=0 asks for a DirectML GPU" in device.warning
    assert "training on the CPU" in device.warning


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
    assert results["dataset"] == "cifar10" and results["device"] == "CPU"
    assert results["epochs_completed"] == 2
    assert 0 <= results["test_top1"] <= results["test_top5"] <= 1
    assert results["config"]["num_layers"] == 2 and results["config"]["batch_size"] == 32
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert len(rows) == 2 and {"loss", "top1", "val_top1", "learning_rate"} <= set(rows[0])
    assert max(float(r["val_top1"]) for r in rows) == pytest.approx(results["best_val_top1"])
    assert (out / "best.weights.h5").stat().st_size > 10_000
    assert TrainConfig.from_dict(json.loads((out / "config.json").read_text())).epochs == 2


def test_xla_and_mixed_precision_only_where_supported():
    import devices
    cpu, dml = devices.Device("CPU", "cpu"), devices.Device("DirectML", "gpu")
    volta = devices.Device("CUDA", "V100", compute_capability=(7, 0))
    pascal = devices.Device("CUDA", "P100", compute_capability=(6, 0))
    assert [devices.use_xla("auto", d) for d in (cpu, dml, volta)] == [False, False, True]
    assert [devices.use_mixed_precision("auto", d) for d in (cpu, dml, pascal, volta)] == [
        False, False, False, True]
    assert devices.use_mixed_precision("off", volta) is False
    for check, flag in ((devices.use_xla, "--xla on"),
                        (devices.use_mixed_precision, "--mixed-precision on")):
        with pytest.raises(UsageError, match=f"{flag} is not possible on DirectML"):
            check("on", dml)


def test_mixed_precision_model_trains_with_float32_logits():
    import numpy as np
    import tensorflow as tf
    import training
    from config import PRESETS
    from vit_model import build_model
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(PRESETS["tiny"])
        training.compile_model(model, PRESETS["tiny"], jit_compile=False)
        x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
        history = model.fit(x, np.arange(8) % 10, epochs=2, verbose=0)
        assert model(x).dtype == tf.float32
        assert model.patch_proj.compute_dtype == "float16"
        assert all(np.isfinite(history.history["loss"]))
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")


def test_gpu_flag_warning_names_the_stacks_own_gpu_kind(monkeypatch):
    """--gpu sets both variables: the warning must not blame DirectML on a CUDA/CPU stack."""
    import devices
    monkeypatch.setenv("DML_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    warning = devices.detect().warning
    if devices.directml_plugin_installed():
        assert warning.startswith("DML_VISIBLE_DEVICES=1 asks for a DirectML GPU, but DirectML")
    else:
        assert warning.startswith("CUDA_VISIBLE_DEVICES=1 asks for a CUDA GPU")
