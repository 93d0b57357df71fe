"""Which backend and device train: the Keras backend and GPU chosen before TensorFlow or
Keras is imported, detection after.

DirectML and CUDA read DML_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES once, when TensorFlow is
imported, and Keras reads KERAS_BACKEND (and, on torch, KERAS_TORCH_DEVICE) once, when it is
imported, so `prepare_environment` must run first; it refuses to run after the import.
The torch backend's devices are torch_devices'.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.metadata
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from vitcifar.backend import torch_devices
from vitcifar.config.flags import backend_requested, verbose_requested
from vitcifar.config.settings import BACKENDS
from vitcifar.errors import UsageError, entry_point

GPU_VARIABLES = ("DML_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES")


def prepare_environment(gpu: Optional[str], distribute: str = "none",
                        verbose: bool = False, backend: Optional[str] = None) -> None:
    """Select the Keras backend (--backend, else KERAS_BACKEND, else tensorflow) and the GPUs
    (--gpu: "1" or "0,1"), pick the Keras that --distribute needs, and quieten TensorFlow's
    C++ start-up logs; call before importing TF or Keras.

    Quiet (the default, unless the user set TF_CPP_MIN_LOG_LEVEL): TF_CPP_MIN_LOG_LEVEL=3
    hides TensorFlow's C++ info, warning and error lines (on a CPU, TF 2.21 logs as errors
    "E0000 ... cuInit ... (303)" at start-up and "oneDNN supports DT_INT32 only on ..." at
    the first step; real failures still raise Python exceptions), and TensorFlow's start-up
    (its import and its first look for devices) runs with the process's stderr on the null
    device: TF 2.16+ prints "I0000 ... oneDNN custom operations are on" and the CUDA probe
    there before any log level applies. `verbose` changes nothing, so all of them show.
    TF_ENABLE_ONEDNN_OPTS is left alone: it changes the numerics."""
    if "tensorflow" in sys.modules:
        raise RuntimeError("prepare_environment() must run before TensorFlow is imported")
    os.environ.update(environment_variables(gpu, distribute, backend))
    torch_devices.import_device_package(os.environ)
    if not verbose and "TF_CPP_MIN_LOG_LEVEL" not in os.environ:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        if not any(isinstance(finder, _QuietStart) for finder in sys.meta_path):
            sys.meta_path.insert(0, _QuietStart())



def run_command(main: Callable[[Optional[List[str]]], int], backend_flag: bool = True) -> int:
    """A command that opens a saved run, as a process: the backend (its --backend, when
    `backend_flag`; else TensorFlow's, whatever KERAS_BACKEND says), the GPU variables as
    set and a quiet TensorFlow (unless --verbose is among its arguments) prepared before
    `main` imports Keras; returns main's exit code (2 for a backend that cannot start)."""
    argv = sys.argv[1:]
    backend = backend_requested(argv) if backend_flag else "tensorflow"
    started = entry_point(lambda: prepare_environment(None, verbose=verbose_requested(argv),
                                                      backend=backend))()
    return started if started else main(None)

@contextlib.contextmanager
def _stderr_discarded():
    """File descriptor 2 on the null device (C++ writes there, not to sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietStart(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do, and has it imported, and its devices
    listed once (which probes CUDA), with stderr discarded. Used once, then removed: when
    TensorFlow is imported, not when it is only looked for (Keras's torch backend asks
    importlib.util.find_spec("tensorflow") long before tf.data imports it).
    A failing import still raises: its traceback is printed after stderr is back."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader, self)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, finder):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        module.__loader__ = module.__spec__.loader = self.loader   # as if imported plainly
        with _stderr_discarded():
            self.loader.exec_module(module)
            module.config.list_physical_devices()


def chosen_backend(flag: Optional[str], environ: Dict[str, str]) -> str:
    """The Keras backend: --backend `flag`, else KERAS_BACKEND in `environ`, else tensorflow;
    UsageError for one the app does not run on (jax, numpy, openvino: its model, input
    pipeline and kernel checks are written for these two)."""
    name = flag or environ.get("KERAS_BACKEND") or "tensorflow"
    if name not in BACKENDS:
        said = f"--backend {name}" if flag else f"KERAS_BACKEND={name}"
        raise UsageError(f"{said}: this app runs on Keras's tensorflow or torch backend; use "
                         "--backend tensorflow or --backend torch")
    return name


def torch_variables(gpu: Optional[str], distribute: str) -> Dict[str, str]:
    """environment_variables on the torch backend: KERAS_BACKEND=torch and the device
    (torch_devices.device_variables), or UsageError where this stack cannot run it."""
    if not keras_3_installed():
        raise UsageError("--backend torch needs Keras 3; this stack has Keras 2 (TensorFlow "
                         "2.10's): use the current stack, pip install -r requirements.txt "
                         f"-r {torch_devices.REQUIREMENTS}")
    if not torch_devices.installed("torch"):
        raise UsageError("--backend torch needs PyTorch, which is not installed: pip install "
                         f"-r {torch_devices.REQUIREMENTS} (any DirectX 12 GPU: "
                         f"{torch_devices.DIRECTML_REQUIREMENTS})")
    if distribute in ("mirrored", "multi-worker"):
        raise UsageError(f"--distribute {distribute} is tf.distribute, TensorFlow's; the torch "
                         "backend trains on one device: use --distribute none, or --backend "
                         "tensorflow")
    return {"KERAS_BACKEND": "torch", **torch_devices.device_variables(gpu, dict(os.environ))}


def environment_variables(gpu: Optional[str], distribute: str,
                          backend: Optional[str] = None) -> Dict[str, str]:
    """The variables prepare_environment sets, or UsageError (one line) for what this stack
    cannot do, found before TensorFlow's slow start:
    - --backend (else KERAS_BACKEND): chosen_backend; torch: torch_variables.
    - --gpu: DML_VISIBLE_DEVICES and CUDA_VISIBLE_DEVICES; tensorflow-directml-plugin drives
      one adapter only (microsoft/tensorflow-directml-plugin#258), so a list is refused there.
    - KERAS_BACKEND=tensorflow: Keras 3 could otherwise pick another backend.
    - --distribute multi-worker: Keras 3's model.fit does not run under
      MultiWorkerMirroredStrategy (keras-team/keras#20585), Keras 2's does. TF 2.10's own
      Keras is Keras 2; on TF >= 2.16, TF_USE_LEGACY_KERAS=1 makes tf.keras the tf-keras
      package (requirements-multiworker.txt), refused if it is not installed."""
    if chosen_backend(backend, dict(os.environ)) == "torch":
        return torch_variables(gpu, distribute)
    values = {"KERAS_BACKEND": "tensorflow"}
    if gpu is not None:
        if "," in gpu and directml_plugin_installed():
            raise UsageError(f"--gpu {gpu}: tensorflow-directml-plugin drives one adapter; "
                             "pick it with --gpu N")
        values.update({name: gpu for name in GPU_VARIABLES})
    if distribute == "multi-worker" and keras_3_installed():
        if importlib.util.find_spec("tf_keras") is None:
            raise UsageError("--distribute multi-worker needs Keras 2 (Keras 3's fit does not "
                             "run multi-worker); install tf-keras: pip install -r "
                             "requirements-multiworker.txt")
        values["TF_USE_LEGACY_KERAS"] = "1"
    return values


def keras_3_installed() -> bool:
    """Whether the installed keras package is Keras 3 (TF >= 2.16's tf.keras unless
    TF_USE_LEGACY_KERAS=1); read from the package metadata, without importing anything."""
    try:
        return int(importlib.metadata.version("keras").split(".")[0]) >= 3
    except importlib.metadata.PackageNotFoundError:
        return False


def directml_plugin_installed() -> bool:
    try:
        importlib.metadata.version("tensorflow-directml-plugin")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Device:
    kind: str          # "DirectML", "CUDA" or "CPU"; on torch also "XPU", "MPS"
    name: str          # e.g. "AMD Radeon RX 6600" or "x86_64 CPU, 2 threads"
    warning: Optional[str] = None   # said before training: a GPU asked for or expected in vain
    compute_capability: Optional[tuple] = None  # CUDA only
    note: Optional[str] = None      # why it is the CPU, in the banner: "DirectML found no adapter"
    backend: str = "tensorflow"     # the Keras backend: "tensorflow" or "torch"
    torch_device: Optional[str] = None   # on torch: "cuda:0", "privateuseone:1", "cpu"

    def describe(self) -> str:
        where = f"{self.torch_device}: " if self.torch_device else ""
        return f"{self.kind} ({where}{self.name}{'; ' + self.note if self.note else ''})"


def keras_backend() -> str:
    """The backend Keras runs on (imports Keras, and so TensorFlow on tensorflow)."""
    from vitcifar.backend.keras_compat import BACKEND
    return BACKEND


def detect() -> Device:
    if keras_backend() == "torch":
        return _detect_torch()
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = details.get("device_name", gpus[0].name)
        if directml_plugin_installed():
            return Device("DirectML", name)
        return Device("CUDA", name, compute_capability=details.get("compute_capability"))
    cpu = f"{platform.machine() or 'unknown'} CPU, {os.cpu_count()} threads"
    if directml_plugin_installed():
        return Device("CPU", cpu, warning=directml_missing_warning(),
                      note="DirectML found no adapter")
    return Device("CPU", cpu, warning=_missing_gpu_warning())


WSL_D3D12 = "/usr/lib/wsl/lib/libd3d12.so"     # WSL 2's bridge to the Windows GPU driver


def directml_missing_warning() -> str:
    """What to check when the DirectML plugin is installed but found no adapter, said
    whether a GPU was asked for or not: the driver, WSL's libd3d12.so, DML_VISIBLE_DEVICES."""
    asked = os.environ.get("DML_VISIBLE_DEVICES")
    checks = []
    if sys.platform == "win32":
        checks.append("that the GPU supports DirectX 12 and its driver is up to date")
    elif os.path.exists(WSL_D3D12):
        checks.append("that the Windows GPU driver is up to date (WSL uses it through "
                      f"{WSL_D3D12}; do not install a Linux GPU driver inside WSL)")
    else:
        checks.append(f"that this is WSL 2 with a Windows GPU driver: {WSL_D3D12} is missing "
                      "(DirectML runs on Windows 10/11 and WSL 2 only)")
    if asked not in (None, ""):
        checks.append(f"that DML_VISIBLE_DEVICES={asked} names an adapter (--list-devices; "
                      "unset it to use the first)")
    else:
        checks.append("DML_VISIBLE_DEVICES (not set: any adapter would do)")
    prefix = (f"DML_VISIBLE_DEVICES={asked} asks for a DirectML GPU, but " if asked not in
              (None, "", "-1") else "")
    return (f"{prefix}DirectML found no compatible adapter; training on the CPU. Check "
            f"{', and '.join(checks)}")


def _detect_torch() -> Device:
    """The device Keras's torch backend trains on (KERAS_TORCH_DEVICE, or Keras's own pick);
    on the CPU where torch-directml is installed, the same warning as the DirectML plugin's."""
    device = torch_devices.current_device()
    kind, name, capability = torch_devices.describe(device)
    if kind == "CPU" and torch_devices.installed("torch_directml"):
        return Device(kind, name, warning=directml_missing_warning(), backend="torch",
                      note="DirectML found no adapter", torch_device=device)
    return Device(kind, name, compute_capability=capability, backend="torch",
                  torch_device=device)


def _missing_gpu_warning() -> Optional[str]:
    """On a stack without the DirectML plugin: a GPU asked for by the variables in vain."""
    asked = {name: os.environ[name] for name in GPU_VARIABLES
             if os.environ.get(name, "") not in ("", "-1")}
    if "CUDA_VISIBLE_DEVICES" in asked:    # --gpu sets both variables; this stack is CUDA's
        return (f"CUDA_VISIBLE_DEVICES={asked['CUDA_VISIBLE_DEVICES']} asks for a CUDA GPU, but "
                "TensorFlow found none; training on the CPU")
    if "DML_VISIBLE_DEVICES" in asked:
        return (f"DML_VISIBLE_DEVICES={asked['DML_VISIBLE_DEVICES']} asks for a DirectML GPU, "
                "but tensorflow-directml-plugin is not installed (see "
                "requirements-directml.txt); training on the CPU")
    return None


def use_xla(setting: str, device: Device) -> bool:
    """XLA only where it is supported and measured faster: CUDA. DirectML has no XLA, and on
    the CPU it made training steps slower (0.65-0.79x on TF 2.21 here; README, Performance)."""
    if device.backend == "torch":
        if setting == "on":
            raise UsageError("--xla on: XLA is TensorFlow's compiler; the torch backend runs "
                             "eagerly (use --xla auto or off, or --backend tensorflow)")
        return False
    if setting == "auto":
        return device.kind == "CUDA"
    if setting == "on" and device.kind == "DirectML":
        raise UsageError("--xla on is not possible on DirectML (it has no XLA); use --xla auto")
    return setting == "on"




def versions() -> dict:
    """The versions the banner and results.json name; on torch, torch's too (TensorFlow
    then runs only the tf.data input pipeline)."""
    import tensorflow as tf

    from vitcifar.backend.keras_compat import keras_version
    found = {"backend": keras_backend(), "tensorflow_version": tf.__version__,
             "keras_version": keras_version(), "python_version": platform.python_version()}
    if found["backend"] == "torch":
        found.update(torch_devices.versions())
    return found


def describe_versions(found: dict) -> str:
    """The banner's "TensorFlow 2.21.0, Keras 3.15.1, Python 3.11.9" of versions(); on
    torch "Keras 3.15.1 on torch 2.13.0+cpu (tf.data: TensorFlow 2.21.0), Python 3.11.9"."""
    if found.get("backend") == "torch":
        directml = (f", torch-directml {found['torch_directml_version']}"
                    if "torch_directml_version" in found else "")
        return (f"Keras {found['keras_version']} on torch {found['torch_version']}{directml} "
                f"(tf.data: TensorFlow {found['tensorflow_version']}), Python "
                f"{found['python_version']}")
    return (f"TensorFlow {found['tensorflow_version']}, Keras {found['keras_version']}, "
            f"Python {found['python_version']}")


def list_devices() -> str:
    """What `--list-devices` prints: every device TensorFlow (or torch) sees, one a line."""
    if keras_backend() == "torch":
        chosen = detect()
        return torch_devices.list_devices(chosen.describe()) + (
            f"\nwarning: {chosen.warning}" if chosen.warning else "")
    import tensorflow as tf

    lines = []
    for device in tf.config.list_physical_devices():
        details = tf.config.experimental.get_device_details(device) if \
            device.device_type == "GPU" else {}
        label = details.get("device_name", "")
        lines.append(f"{device.name}  {device.device_type}  {label}".rstrip())
    chosen = detect()
    lines.append(f"training would use: {chosen.describe()}")
    if chosen.warning:
        lines.append(f"warning: {chosen.warning}")
    return "\n".join(lines)
