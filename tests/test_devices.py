"""devices.py: GPU variables before TensorFlow, detection, where XLA goes."""
import pytest

from vitcifar.backend import devices
from vitcifar.errors import UsageError


def test_prepare_environment_refuses_to_run_after_tensorflow():
    import tensorflow  # noqa: F401

    from vitcifar.backend import devices
    with pytest.raises(RuntimeError, match="before TensorFlow"):
        devices.prepare_environment(0)


def test_a_gpu_asked_for_in_vain_is_said_plainly(monkeypatch, cpu_only_host):
    from vitcifar.backend import devices
    monkeypatch.setenv("DML_VISIBLE_DEVICES", "0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    device = devices.detect()
    assert device.kind == "CPU"
    assert "DML_VISIBLE_DEVICES=0 asks for a DirectML GPU" in device.warning
    assert "training on the CPU" in device.warning


def test_xla_only_where_supported():
    from vitcifar.backend import devices
    cpu, dml = devices.Device("CPU", "cpu"), devices.Device("DirectML", "gpu")
    volta = devices.Device("CUDA", "V100", compute_capability=(7, 0))
    assert [devices.use_xla("auto", d) for d in (cpu, dml, volta)] == [False, False, True]
    with pytest.raises(UsageError, match="--xla on is not possible on DirectML"):
        devices.use_xla("on", dml)


def test_gpu_flag_warning_names_the_stacks_own_gpu_kind(monkeypatch, cpu_only_host):
    """--gpu sets both variables: the warning must not blame DirectML on a CUDA/CPU stack."""
    from vitcifar.backend import devices
    monkeypatch.setenv("DML_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    warning = devices.detect().warning
    if devices.directml_plugin_installed():
        assert warning.startswith("DML_VISIBLE_DEVICES=1 asks for a DirectML GPU, but DirectML")
    else:
        assert warning.startswith("CUDA_VISIBLE_DEVICES=1 asks for a CUDA GPU")



def test_directml_without_an_adapter_says_so_and_what_to_check(monkeypatch):
    """On the DirectML stack with no usable adapter (this project's Linux machines: not WSL),
    the banner and --list-devices say so even when no GPU was asked for."""
    import sys

    from vitcifar.commands import train as train_command
    from vitcifar.config.presets import PRESETS
    from vitcifar.config.settings import RunOptions
    if not devices.directml_plugin_installed():
        pytest.skip("the DirectML stack's behaviour")
    monkeypatch.delenv("DML_VISIBLE_DEVICES", raising=False)
    device = devices.detect()
    if device.kind != "CPU":
        pytest.skip("DirectML found an adapter on this machine")
    assert device.warning.startswith("DirectML found no compatible adapter; training on the "
                                     "CPU. Check ")
    assert "DML_VISIBLE_DEVICES (not set" in device.warning
    if sys.platform != "win32":
        assert devices.WSL_D3D12 in device.warning
    assert "training on CPU (" in train_command.banner(PRESETS["tiny"], RunOptions(), device)
    assert "; DirectML found no adapter), XLA off" in train_command.banner(PRESETS["tiny"], RunOptions(),
                                                                 device)
    listing = devices.list_devices().splitlines()
    assert listing[-2].endswith("; DirectML found no adapter)")
    assert listing[-1] == f"warning: {device.warning}"


def test_gpu_lists_reach_both_variables_but_not_directml(monkeypatch):
    from vitcifar.backend import devices
    monkeypatch.setattr(devices, "directml_plugin_installed", lambda: False)
    values = devices.environment_variables("0,1", "none")
    assert values["CUDA_VISIBLE_DEVICES"] == values["DML_VISIBLE_DEVICES"] == "0,1"
    assert values["KERAS_BACKEND"] == "tensorflow"
    assert "CUDA_VISIBLE_DEVICES" not in devices.environment_variables(None, "none")
    monkeypatch.setattr(devices, "directml_plugin_installed", lambda: True)
    assert devices.environment_variables("1", "none")["DML_VISIBLE_DEVICES"] == "1"
    with pytest.raises(UsageError, match="--gpu 0,1: tensorflow-directml-plugin drives one "
                                         "adapter; pick it with --gpu N"):
        devices.environment_variables("0,1", "none")


@pytest.mark.parametrize("keras_3, tf_keras, expected", [
    (False, False, None),          # TF 2.10: its own Keras is Keras 2
    (True, True, "1"),             # current TF + tf-keras: tf.keras becomes tf-keras
    (True, False, "refused"),      # current TF alone: Keras 3's fit fails multi-worker
])
def test_multi_worker_picks_keras_2_before_tensorflow_starts(monkeypatch, keras_3, tf_keras,
                                                             expected):
    import importlib.util

    from vitcifar.backend import devices
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(devices, "keras_3_installed", lambda: keras_3)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: (
        (object() if tf_keras else None) if name == "tf_keras" else real_find_spec(name, *args)))
    assert "TF_USE_LEGACY_KERAS" not in devices.environment_variables(None, "mirrored")
    if expected == "refused":
        with pytest.raises(UsageError, match=r"multi-worker needs Keras 2 .*pip install -r "
                                             r"requirements-multiworker.txt"):
            devices.environment_variables(None, "multi-worker")
    else:
        assert devices.environment_variables(None, "multi-worker").get(
            "TF_USE_LEGACY_KERAS") == expected
