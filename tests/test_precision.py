"""precision.py: which number format a run computes in, why, and what is refused."""
import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import ROOT, app_environment
from vitcifar.backend import devices
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions
from vitcifar.config.views import override
from vitcifar.errors import UsageError
from vitcifar.training import precision

CPU = devices.Device("CPU", "x86_64 CPU, 2 threads")
DIRECTML = devices.Device("DirectML", "Radeon")
AMPERE = devices.Device("CUDA", "A100", compute_capability=(8, 0))
TURING = devices.Device("CUDA", "T4", compute_capability=(7, 5))
PASCAL = devices.Device("CUDA", "P100", compute_capability=(6, 0))
FAST = PRESETS["fast"]


@pytest.fixture
def bf16_cpu(monkeypatch, tmp_path):
    """A CPU with AMX-BF16 whose measured block speed-up the test sets, with a cache of
    measurements of its own."""
    monkeypatch.setenv("VIT_CIFAR_CACHE", str(tmp_path))
    monkeypatch.setattr(precision, "_tensorflow_2_10", lambda: False)   # as the current stack
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ("AMX-BF16", "AVX512-BF16"))
    speedup = {"value": 1.5}
    monkeypatch.setattr(precision, "block_speedup", lambda *shape: speedup["value"])
    return speedup


def test_proc_cpuinfo_flags_of_x86_and_arm_and_none_without_the_file(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse avx512_bf16 amx_bf16 amx_tile\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert {"amx_bf16", "avx512_bf16"} <= precision.proc_cpuinfo_flags(str(x86))
    assert "bf16" in precision.proc_cpuinfo_flags(str(arm))
    assert precision.proc_cpuinfo_flags(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("flags, expected", [
    ({"fpu", "amx_bf16", "avx512_bf16"}, ("AMX-BF16", "AVX512-BF16")),
    ({"fpu", "avx2"}, ()), ({"fp", "asimd", "bf16"}, ("BF16",))])
def test_cpu_features_from_the_kernels_flags(monkeypatch, flags, expected):
    monkeypatch.setattr(precision, "proc_cpuinfo_flags", lambda: frozenset(flags))
    precision.cpu_bf16_features.cache_clear()
    try:
        assert precision.cpu_bf16_features() == expected
    finally:
        precision.cpu_bf16_features.cache_clear()


def test_cpu_features_that_cannot_be_read_are_none_and_auto_keeps_float32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: None)
    chosen = precision.decide("auto", CPU, FAST)
    assert chosen.policy == precision.FLOAT32 and "cannot tell" in chosen.reason


@pytest.mark.parametrize("device, policy", [(AMPERE, precision.BFLOAT16),
                                            (TURING, precision.FLOAT16),
                                            (PASCAL, precision.FLOAT32),
                                            (DIRECTML, precision.FLOAT32)])
def test_auto_on_gpus_by_kind_and_compute_capability(device, policy):
    chosen = precision.decide("auto", device, FAST)
    assert chosen.policy == policy and chosen.speedup is None


def test_auto_measures_once_then_decides_from_the_cache(bf16_cpu, tmp_path):
    """The first decision measures and keeps the figure; later ones, in this process or
    another, read it whatever a new measurement would give, and say so; another model shape
    is measured anew."""
    first = precision.decide("auto", CPU, FAST)
    assert first.policy == precision.BFLOAT16 and "from the cache" not in first.reason
    bf16_cpu["value"] = 0.5                           # a busy machine would measure this
    again = precision.decide("auto", CPU, FAST)
    assert again.policy == precision.BFLOAT16 and again.speedup == 1.5
    assert f"from the cache {tmp_path}" in again.reason
    stored = json.loads((tmp_path / "precision_cache.json").read_text())
    assert [entry["speedup"] for entry in stored.values()] == [1.5]
    assert precision.cache_key(precision.probe_shape(FAST), ("AMX-BF16", "AVX512-BF16")) \
        in stored
    other = precision.decide("auto", CPU, PRESETS["sample"])
    assert other.policy == precision.FLOAT32 and other.speedup == 0.5


def test_an_unreadable_cache_is_measured_around(bf16_cpu, tmp_path):
    (tmp_path / "precision_cache.json").write_text("not json")
    assert precision.decide("auto", CPU, FAST).speedup == 1.5


def test_auto_on_a_bfloat16_cpu_follows_the_measurement(bf16_cpu):
    chosen = precision.decide("auto", CPU, FAST)
    assert chosen.policy == precision.BFLOAT16 and chosen.speedup == 1.5
    assert chosen.describe().startswith("mixed bfloat16 (AMX-BF16; ")
    assert "1.50x" in chosen.reason
    assert chosen.record() == {"policy": "mixed_bfloat16", "reason": chosen.reason,
                               "bfloat16_speedup": 1.5}
    bf16_cpu["value"] = 1.05                     # below MIN_SPEEDUP: not worth its rounding
    sample = PRESETS["sample"]                   # a shape not measured yet
    assert precision.decide("auto", CPU, sample).policy == precision.FLOAT32
    assert precision.decide("auto", CPU, FAST, workers=2).policy == precision.FLOAT32


def test_tensorflow_2_10_on_a_bfloat16_cpu_is_float32_and_refuses_bfloat16(monkeypatch,
                                                                         bf16_cpu):
    """TF 2.10's bfloat16 CPU kernels trained tiny to a NaN (issue 29): auto keeps float32
    without measuring, and asking for bfloat16 is one error naming what to use."""
    monkeypatch.setattr(precision, "_tensorflow_2_10", lambda: True)
    monkeypatch.setattr(precision, "block_speedup", lambda *shape: pytest.fail("measured"))
    chosen = precision.decide("auto", CPU, FAST)
    assert chosen.policy == precision.FLOAT32 and "NaN" in chosen.reason
    with pytest.raises(UsageError, match="TensorFlow 2.10's bfloat16 CPU kernels .* "
                                         "use --mixed-precision off, or the current stack"):
        precision.decide("bfloat16", CPU, FAST)
    assert precision.decide("bfloat16", AMPERE, FAST).policy == precision.BFLOAT16


def test_auto_on_a_cpu_without_bfloat16_arithmetic_is_float32_unmeasured(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ())
    monkeypatch.setattr(precision, "block_speedup", lambda *shape: pytest.fail("measured"))
    assert precision.decide("auto", CPU, FAST).policy == precision.FLOAT32


@pytest.mark.parametrize("setting, device, policy", [
    ("off", AMPERE, precision.FLOAT32), ("on", TURING, precision.FLOAT16),
    ("float16", AMPERE, precision.FLOAT16), ("bfloat16", AMPERE, precision.BFLOAT16),
    ("float16", CPU, precision.FLOAT16)])
def test_a_format_asked_for_is_used_where_the_device_runs_it(setting, device, policy):
    chosen = precision.decide(setting, device, FAST)
    assert chosen.policy == policy and chosen.reason == f"--mixed-precision {setting}"


@pytest.mark.parametrize("setting, device, message", [
    ("bfloat16", DIRECTML, "tensorflow-directml-plugin has no bfloat16 kernels"),
    ("float16", DIRECTML, "not possible on DirectML"),
    ("on", DIRECTML, "not possible on DirectML"),
    ("bfloat16", TURING, "compute capability 8.0 or more .* use --mixed-precision float16"),
    ("bfloat16", PASCAL, "use --mixed-precision float16")])
def test_a_format_the_device_cannot_run_is_refused_with_what_to_use(setting, device, message):
    with pytest.raises(UsageError, match=message):
        precision.decide(setting, device, FAST)


def test_bfloat16_on_a_cpu_without_it_or_a_keras_without_the_policy_is_refused(monkeypatch,
                                                                             bf16_cpu):
    monkeypatch.setattr(precision, "keras_has_policy", lambda name: False)
    with pytest.raises(UsageError, match="has no mixed_bfloat16 policy; use --mixed-precision "
                                         "off"):
        precision.decide("bfloat16", CPU, FAST)
    assert precision.decide("auto", CPU, FAST).policy == precision.FLOAT32
    monkeypatch.setattr(precision, "cpu_bf16_features", lambda: ())
    with pytest.raises(UsageError, match="no bfloat16 arithmetic .* --mixed-precision off"):
        precision.decide("bfloat16", CPU, FAST)


def test_both_stacks_keras_has_the_bfloat16_policy():
    assert precision.keras_has_policy(precision.BFLOAT16)
    assert not precision.keras_has_policy("mixed_bfloat17")


def test_policy_block_restores_the_previous_global_policy():
    import tensorflow as tf
    with precision.policy(precision.BFLOAT16):
        assert tf.keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert tf.keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_refused_bfloat16_is_one_error_line_exit_2_before_anything_is_written(tmp_path):
    """train_cifar10.py on a CPU made to report no bfloat16 arithmetic (whatever this host
    has, GPU included: --gpu -1 hides the GPUs): the banner decides the precision before the
    data are read or the folder is made; an existing run's files stay as they were."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("saved")
    args = ["--preset", "tiny", "--output-dir", str(run), "--data-dir",
            str(tmp_path / "nowhere"), "--mixed-precision", "bfloat16"]
    probe = ("import sys; from vitcifar.training import precision; "
             "precision.cpu_bf16_features = lambda: (); from vitcifar.commands import train; "
             f"sys.exit(train.main('cifar10', {args!r}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=app_environment({"CUDA_VISIBLE_DEVICES": "-1",
                                                 "DML_VISIBLE_DEVICES": "-1"}),
                            timeout=120, cwd=ROOT)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert errors == [line for line in result.stderr.splitlines() if line.strip()]
    assert errors[0].startswith("error: --mixed-precision bfloat16: this CPU has no bfloat16 "
                                "arithmetic")
    assert os.listdir(run) == ["keep.txt"] and (run / "keep.txt").read_text() == "saved"


@pytest.mark.slow
def test_the_measurement_times_a_real_block_and_gives_a_ratio():
    """Not a claim about which is faster (that depends on the machine): the probe builds
    and runs both formats and returns a positive, finite ratio."""
    speedup = precision.block_speedup(*precision.probe_shape(PRESETS["tiny"]))
    assert np.isfinite(speedup) and speedup > 0


def _train(tar, out, epochs, setting):
    from vitcifar.data import cifar
    from vitcifar.training import trainer
    config = override(PRESETS["tiny"], epochs=epochs, batch_size=32).validate()
    options = RunOptions(data_dir=tar, output_dir=str(out), mixed_precision=setting,
                         tensorboard=False)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), precision.policy(precision.FLOAT32):
        trainer.run(config, options, cifar.load("cifar10", tar), devices.detect())
    return json.loads((out / "results.json").read_text()), printed.getvalue()


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("bfloat16", "off"), ("off", "bfloat16")])
def test_a_run_resumes_and_evaluates_in_the_other_precision(tmp_path, cifar10_tar, first,
                                                            then, cpu_only_host):
    """Checkpoints hold float32 whatever the run computed in: an epoch in one precision,
    the next resumed in the other, then evaluate.py (float32) gives the results.json
    figures."""
    try:
        precision.check(precision.BFLOAT16, devices.detect())
    except UsageError as error:
        pytest.skip(f"this host cannot run bfloat16: {error}")
    from vitcifar.commands import evaluate
    from vitcifar.runs import run_dir
    out = tmp_path / "run"
    results, _ = _train(cifar10_tar, out, 1, first)
    with np.load(out / run_dir.CHECKPOINT) as saved:
        assert {saved[k].dtype for k in saved.files
                if k not in ("optimizer/iterations", "state")} == {
            np.dtype(np.float32)}
    results, printed = _train(cifar10_tar, out, 2, then)
    assert f"Resuming {out}: 1 of 2 epochs done" in printed
    assert results["epochs_completed"] == 2
    assert results["precision"]["reason"] == f"--mixed-precision {then}"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert evaluate.main([str(out), "--data-dir", cifar10_tar]) == 0
    assert buffer.getvalue().splitlines()[-1] == "results.json: the same"


# Every preset, a few training steps (the app's optimizer, schedule and loss) in every format
# auto may choose somewhere: float32, mixed bfloat16 (CPUs with bfloat16 arithmetic on the
# current stack, CUDA 8.0+) and mixed float16 (CUDA 7.x); here on this host's CPU kernels.
# One block of each preset's width, heads and patch size (the shapes that decide the
# arithmetic), random images, batch 4.
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_trains_to_a_finite_loss_in_each_format(name):
    from vit_model import build_model
    from vitcifar.data import input_pipeline
    from vitcifar.training import compiled
    config = override(PRESETS[name], batch_size=4, epochs=2, time_budget=0.0, num_layers=1,
                      warmup_epochs=min(PRESETS[name].warmup_epochs, 1.0))   # 1 of 2
    steps, rng = 3, np.random.default_rng(0)
    classes = input_pipeline.label_classes(config)
    for policy_name in (precision.FLOAT32, precision.BFLOAT16, precision.FLOAT16):
        with precision.policy(policy_name):
            model = build_model(config)
            schedule = compiled.compile_model(model, config, steps_per_epoch=steps)
            if schedule is not None:
                schedule.set_steps(config.epochs * steps, round(config.warmup_epochs * steps))
            for _ in range(steps):
                images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
                labels = rng.integers(0, config.num_classes, 4)
                if classes:
                    labels = np.eye(classes, dtype=np.float32)[labels]
                loss = model.train_on_batch(images, labels, return_dict=True)["loss"]
                assert np.isfinite(loss), f"{name} in {policy_name}: loss {loss}"
            assert all(np.isfinite(w).all() for w in model.get_weights()), policy_name
