"""The devices of Keras 3's PyTorch backend: which one a run trains on, chosen before Keras
is imported, and what the banner and --list-devices say about it.

Keras reads KERAS_TORCH_DEVICE once, when it is imported (Keras >= 3.14; before that it
picks MPS, CUDA, XPU, then the CPU by itself), so `device_variables` sets it first, from
--gpu N or DML_VISIBLE_DEVICES:

    CUDA            cuda:N      NVIDIA, and AMD's ROCm wheels (torch.version.hip)
    XPU             xpu:N       Intel Arc / Core Ultra (torch >= 2.5)
    DirectML        privateuseone:N   torch-directml, any DirectX 12 GPU (Windows, WSL 2)
    MPS             mps         Apple silicon, one device
    CPU             cpu

torch-directml is asked how many adapters it has in a child process: without a usable
adapter `torch_directml.device_count()` aborts the whole process (SIGABRT, no exception), as
does a backward pass. The DirectML device is used only where that child found an adapter;
torch_directml must be imported before Keras makes a tensor on "privateuseone" (the
backend registers that device), which `import_device_package` does.

This module imports no TensorFlow and no Keras; torch only inside functions.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

from vitcifar.errors import UsageError

DEVICE_VARIABLE = "KERAS_TORCH_DEVICE"
# torch device type -> the kind the banner, precision.py and the checks name
KINDS = {"cuda": "CUDA", "xpu": "XPU", "privateuseone": "DirectML", "mps": "MPS",
         "cpu": "CPU"}
PROBE_SECONDS = 60             # a child importing torch and torch_directml: a few seconds
REQUIREMENTS = "requirements-torch.txt"
DIRECTML_REQUIREMENTS = "requirements-torch-directml.txt"


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def directml_adapters(python: str = sys.executable) -> List[str]:
    """The names of the adapters torch-directml finds ([] without the package, or where it
    finds none), asked in a child process: there, no adapter aborts the process."""
    if not installed("torch_directml"):
        return []
    code = ("import torch_directml as d\n"
            "for i in range(d.device_count()): print(d.device_name(i))")
    try:
        child = subprocess.run([python, "-c", code], capture_output=True, text=True,
                               timeout=PROBE_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return child.stdout.splitlines() if child.returncode == 0 else []


def gpus(directml: List[str]) -> Tuple[str, List[str]]:
    """(torch device type, [names]) of the GPUs this torch drives: CUDA's, XPU's, MPS,
    else the DirectML adapters found (`directml`, from directml_adapters); ("cpu", [])
    for none. Imports torch (not Keras)."""
    import torch

    if torch.cuda.is_available():
        return "cuda", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu", [xpu.get_device_name(i) for i in range(xpu.device_count())]
    if torch.backends.mps.is_available():
        return "mps", ["Apple MPS"]
    if directml:
        return "privateuseone", list(directml)
    return "cpu", []


def device_variables(gpu: Optional[str], environ: Dict[str, str]) -> Dict[str, str]:
    """{KERAS_TORCH_DEVICE: device} for this run, or {} to leave Keras's own choice (no
    GPU asked for; DirectML is chosen here because Keras does not look for it). A device
    set in KERAS_TORCH_DEVICE by the user wins. --gpu N (else DML_VISIBLE_DEVICES with
    torch-directml) picks GPU N; UsageError, before Keras starts, where torch sees fewer."""
    if environ.get(DEVICE_VARIABLE):
        return {}
    if gpu is not None and "," in gpu:
        raise UsageError(f"--gpu {gpu}: the torch backend trains on one device (--distribute "
                         "is TensorFlow's); pick it with --gpu N")
    directml = directml_adapters()
    asked = gpu if gpu is not None else (environ.get("DML_VISIBLE_DEVICES") or None
                                         if directml else None)
    kind, names = gpus(directml)
    if asked is None:
        return {DEVICE_VARIABLE: "privateuseone:0"} if kind == "privateuseone" else {}
    index = int(asked)
    if index >= len(names):
        if not names:
            directml = ("torch-directml found no adapter" if installed("torch_directml") else
                        f"for DirectML: pip install -r {DIRECTML_REQUIREMENTS}")
            raise UsageError(f"--gpu {asked}: torch sees no GPU ({directml}); leave --gpu out "
                             "to train on the CPU")
        raise UsageError(f"--gpu {asked}: torch sees {len(names)} {KINDS[kind]} device(s), "
                         f"{', '.join(f'{i}: {n}' for i, n in enumerate(names))}; pick one "
                         "with --gpu N (--list-devices lists them)")
    return {DEVICE_VARIABLE: f"{kind}:{index}" if kind != "mps" else "mps"}


def import_device_package(environ: Dict[str, str]) -> None:
    """Imports torch_directml when the run's device is DirectML's, before Keras makes a
    tensor there (the package registers the "privateuseone" device with torch)."""
    if environ.get(DEVICE_VARIABLE, "").startswith("privateuseone"):
        import torch_directml  # noqa: F401


def current_device() -> str:
    """The device Keras trains on: "cuda:0", "privateuseone:1", "cpu" (imports Keras)."""
    from keras.src.backend.torch.core import get_device
    return str(get_device())


def describe(device: str) -> Tuple[str, str, Optional[tuple]]:
    """(kind, name, CUDA compute capability or None) of a torch device string."""
    import torch

    kind = device.split(":")[0]
    index = int(device.split(":")[1]) if ":" in device else 0
    if kind == "cuda":
        hip = getattr(torch.version, "hip", None)
        return ("CUDA", torch.cuda.get_device_name(index) + (f", ROCm {hip}" if hip else ""),
                torch.cuda.get_device_capability(index))
    if kind == "xpu":
        return "XPU", torch.xpu.get_device_name(index), None
    if kind == "privateuseone":
        import torch_directml
        return "DirectML", torch_directml.device_name(index), None
    if kind == "mps":
        return "MPS", "Apple MPS", None
    return "CPU", f"{platform.machine() or 'unknown'} CPU, {torch.get_num_threads()} threads", \
        None


def versions() -> Dict[str, str]:
    """torch's version, and torch-directml's where installed, for the banner."""
    import torch

    found = {"torch_version": torch.__version__}
    if installed("torch_directml"):
        from importlib.metadata import version
        found["torch_directml_version"] = version("torch-directml")
    return found


def list_devices(chosen: str) -> str:
    """What --list-devices prints on torch: every device torch sees, one a line, and the
    one training would use (`chosen`, as Device.describe says it)."""
    kind, names = gpus(directml_adapters())
    lines = [f"{kind}:{i}  {KINDS[kind]}  {name}" for i, name in enumerate(names)]
    lines.append(f"cpu  CPU  {platform.machine() or 'unknown'} CPU, {os.cpu_count()} threads")
    if installed("torch_directml") and kind != "privateuseone":
        lines.append("torch-directml is installed but found no DirectML adapter")
    lines.append(f"training would use: {chosen}")
    return "\n".join(lines)
