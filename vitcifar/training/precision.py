"""The number format a run computes in, and why: float32, mixed float16 or mixed bfloat16.

`decide` turns --mixed-precision and the device into a `Precision` (a Keras policy and the
reason, for the banner and results.json); `set_policy` makes it Keras's global policy.
Under either mixed policy the weights, the optimizer's state, the logits, the loss,
LayerNorm and the attention softmax stay float32 (vit_model.py), so checkpoints are float32
whatever the precision, and a run may resume, evaluate or export in another one.

--mixed-precision auto:
  CUDA          bfloat16 from compute capability 8.0 (Ampere: bfloat16 tensor cores, and no
                loss scaling), float16 on 7.x (tensor cores), float32 before.
  DirectML      float32: the plugin registers no bfloat16 kernel for the model's ops
                (tests/test_directml_ops.py), and this app uses no float16 there; the same
                through torch-directml.
  XPU, MPS      (torch backend) bfloat16 on Intel XPU (Arc and Core Ultra GPUs multiply
                bfloat16 in their XMX units), float16 on Apple MPS.
  CPU           bfloat16 only where the CPU multiplies bfloat16 in hardware (AMX-BF16 or
                AVX512-BF16 on x86, BF16 on Arm) and it is faster for this model, which
                `block_speedup` measures (a few seconds): the gain depends on the model's
                width (measured here on AVX512-BF16: a block of width 192 trains about
                1.3-1.5x faster, one of width 128, the fast preset's, 1.17x, so auto keeps
                float32; the sample, width 64, not at all; benchmarks/README.md). Where
                the CPU's features cannot be read, float32. The same on both stacks: TF 2.10's
                oneDNN (the DirectML stack without an adapter) gains as TF 2.21's does.
                The measurement is made once per machine, model shape and software and
                kept in the user's cache folder (precision_cache.json; see `cache_file`),
                so the same command gives the same choice whatever load the machine has
                later; the banner says when the choice came from there. Delete the file
                to measure again.
--mixed-precision float16 / bfloat16 ask for a format; one the device cannot run is a
UsageError naming what to use. `on` is float16, as before there were two formats.

Imports Keras only inside functions: cli checks the flags before Keras starts. The policies
are Keras's, so the same on its torch backend, where each layer computes in the policy's
format (Keras casts, as torch's autocast would).
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from vitcifar.backend import devices
from vitcifar.config.settings import TrainConfig, patch_grid_side
from vitcifar.errors import UsageError

FLOAT32, FLOAT16, BFLOAT16 = "float32", "mixed_float16", "mixed_bfloat16"   # Keras policies
NAMES = {FLOAT32: "float32", FLOAT16: "mixed float16", BFLOAT16: "mixed bfloat16"}
SETTINGS = {"off": FLOAT32, "float16": FLOAT16, "on": FLOAT16, "bfloat16": BFLOAT16}
# auto on a CPU: bfloat16 when its blocks trained at least this much faster. A margin over
# 1.0: a whole step gains less than its blocks (the optimizer and the input pipeline cost
# the same in both formats), and timings on a busy machine move by 10-20%.
MIN_SPEEDUP = 1.2
PROBE_ROUNDS, PROBE_MAX_ROUNDS, PROBE_SECONDS = 3, 9, 2.0   # rounds, and more within 2 s
# /proc/cpuinfo flags of bfloat16 arithmetic: x86 ("flags") and Arm ("Features") names.
CPU_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16", "bf16": "BF16"}
DIRECTML_BFLOAT16 = ("tensorflow-directml-plugin has no bfloat16 kernels for the model's ops "
                     "(MatMul, BatchMatMulV2, Erf, ...)")
# TensorFlow 2.10 (the DirectML stack) on a CPU: its oneDNN bfloat16 kernels trained the tiny
# preset to a NaN loss at the second step on an AMD EPYC with AVX512-BF16 (seeds 1, 2, 42;
# issue 29), where TensorFlow 2.21 and float32 trained normally. Not reproducible on a CPU
# without AVX512-BF16 (TF 2.10 runs Eigen's bfloat16 there), so the faulty kernel is not
# known, and no check of a first step would see a NaN that comes at the second: bfloat16 is
# refused there. TF 2.10 is paused; the current stack has bfloat16 on CPUs.
TF210_CPU_BFLOAT16 = ("TensorFlow 2.10's bfloat16 CPU kernels trained the tiny preset to a NaN "
                      "loss on an AVX512-BF16 CPU")


@dataclass(frozen=True)
class Precision:
    policy: str                        # a Keras policy: FLOAT32, FLOAT16 or BFLOAT16
    reason: str                        # why: "AMX-BF16; a block's ... 1.38x ..., measured"
    speedup: Optional[float] = None    # bfloat16 / float32 speed of a block, when measured

    def describe(self) -> str:
        """For the banner: "mixed bfloat16 (AMX-BF16: ...)"."""
        return f"{NAMES[self.policy]} ({self.reason})"

    def record(self) -> dict:
        """For results.json."""
        return {"policy": self.policy, "reason": self.reason, "bfloat16_speedup": self.speedup}


def decide(setting: str, device: devices.Device, config: TrainConfig,
           workers: int = 1) -> Precision:
    """The precision --mixed-precision `setting` gives on `device` for this model; UsageError
    for a format the device (or this Keras) cannot run. `workers`: machines training
    together, which must not each measure on their own."""
    if setting == "off":
        return Precision(FLOAT32, "--mixed-precision off")
    if setting == "auto":
        return _automatic(device, config, workers)
    asked = SETTINGS[setting]
    check(asked, device)
    return Precision(asked, f"--mixed-precision {setting}")


def set_policy(setting: str, device: devices.Device, config: TrainConfig,
               workers: int = 1) -> Precision:
    """Decides (`decide`) and makes the result Keras's global policy; call before the model
    is built, and before seeding (a measurement draws random numbers). Returns it."""
    from vitcifar.backend.keras_compat import keras
    chosen = decide(setting, device, config, workers)
    keras.mixed_precision.set_global_policy(chosen.policy)
    return chosen


@contextlib.contextmanager
def policy(name: str):
    """Keras's global policy set to `name` within the block, the previous one after it (on
    whatever backend Keras runs: the model's tests run it on PyTorch too)."""
    from vitcifar.backend.keras_compat import keras
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def check(name: str, device: devices.Device) -> None:
    """UsageError, naming what to use instead, when `device` cannot run the policy `name`."""
    if name == FLOAT32:
        return
    flag = f"--mixed-precision {'float16' if name == FLOAT16 else 'bfloat16'}"
    if device.kind == "DirectML":
        why = (DIRECTML_BFLOAT16 if name == BFLOAT16 and device.backend == "tensorflow"
               else "this app trains DirectML in float32")
        raise UsageError(f"{flag} is not possible on DirectML ({why}); use --mixed-precision "
                         "auto (float32 there)")
    if name == FLOAT16:
        return                           # CUDA runs it (tensor cores from 7.0); CPUs emulate
    if device.kind == "CUDA" and _capability(device) < (8, 0):
        raise UsageError(f"{flag} needs a CUDA GPU of compute capability 8.0 or more (this "
                         f"{device.name}: {_shown(device)}); use --mixed-precision float16")
    if device.kind == "CPU" and cpu_bf16_features() == ():
        raise UsageError(f"{flag}: this CPU has no bfloat16 arithmetic (none of "
                         f"{', '.join(CPU_FLAGS.values())}), so it would be emulated, slower "
                         "than float32; use --mixed-precision off")
    if device.kind == "CPU" and _tensorflow_2_10():
        raise UsageError(f"{flag}: {TF210_CPU_BFLOAT16}; use --mixed-precision off, or the "
                         "current stack (requirements.txt) for bfloat16 on a CPU")
    if not keras_has_policy(BFLOAT16):
        raise UsageError(f"{flag}: Keras {_keras_version()} has no {BFLOAT16} policy; "
                         "use --mixed-precision off")


def _automatic(device: devices.Device, config: TrainConfig, workers: int) -> Precision:
    if device.kind == "DirectML":
        return Precision(FLOAT32, "DirectML: no mixed precision")
    if device.kind == "XPU":
        return Precision(BFLOAT16, "Intel XPU: bfloat16 XMX units")
    if device.kind == "MPS":
        return Precision(FLOAT16, "Apple MPS: float16")
    if device.kind == "CUDA":
        capability = _capability(device)
        if capability >= (8, 0):
            return Precision(BFLOAT16, f"CUDA compute capability {_shown(device)}: bfloat16 "
                                       "tensor cores")
        if capability >= (7, 0):
            return Precision(FLOAT16, f"CUDA compute capability {_shown(device)}: float16 "
                                      "tensor cores")
        return Precision(FLOAT32, f"CUDA compute capability {_shown(device)}: no tensor cores")
    features = cpu_bf16_features()
    if features is None:
        return Precision(FLOAT32, "cannot tell whether this CPU has bfloat16 arithmetic")
    if not features:
        return Precision(FLOAT32, "this CPU has no bfloat16 arithmetic")
    if _tensorflow_2_10():
        return Precision(FLOAT32, f"{features[0]}, but {TF210_CPU_BFLOAT16}")
    if workers > 1:
        return Precision(FLOAT32, f"{workers} workers: auto measures one machine; give "
                                  "--mixed-precision bfloat16 to use it")
    if not keras_has_policy(BFLOAT16):
        return Precision(FLOAT32, f"Keras {_keras_version()} has no {BFLOAT16}")
    speedup, when = cached_speedup(probe_shape(config), features)
    what = (f"{features[0]}; a block's training step {speedup:.2f}x float32's speed, "
            + (f"measured {when}, from the cache {cache_file()}" if when else "measured"))
    return Precision(BFLOAT16 if speedup >= MIN_SPEEDUP else FLOAT32, what, round(speedup, 2))


def cache_file() -> str:
    """Where measured speed-ups are kept: VIT_CIFAR_CACHE if set, else the user's cache
    folder (XDG_CACHE_HOME or ~/.cache; on Windows LOCALAPPDATA)/vit-cifar."""
    folder = os.environ.get("VIT_CIFAR_CACHE")
    if not folder:
        base = os.environ.get("LOCALAPPDATA") if os.name == "nt" else None
        base = base or os.environ.get("XDG_CACHE_HOME") or os.path.join(
            os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "vit-cifar")
    return os.path.join(folder, "precision_cache.json")


def cache_key(shape: tuple, features: Tuple[str, ...]) -> str:
    """One line naming what the measurement depends on: the CPU (model name, its bfloat16
    features, logical cores), the software (TensorFlow, Keras, Python) and the block's shape
    (probe_shape)."""
    versions = devices.versions()
    return " | ".join([cpu_model_name(), "+".join(features), f"{os.cpu_count()} cores",
                       f"TensorFlow {versions['tensorflow_version']}",
                       f"Keras {versions['keras_version']}",
                       f"Python {versions['python_version']}",
                       "shape " + " ".join(map(str, shape))])


def cached_speedup(shape: tuple, features: Tuple[str, ...]) -> Tuple[float, Optional[str]]:
    """(bfloat16 / float32 speed of a block of `shape`, the date it was measured when it
    came from the cache, else None): measured once (block_speedup) and kept in cache_file(),
    read from there after. A cache that cannot be read or written is measured around."""
    path, key = cache_file(), cache_key(shape, features)
    entries = _read_cache(path)
    if key in entries:
        return float(entries[key]["speedup"]), entries[key]["measured"]
    speedup = block_speedup(*shape)
    entries[key] = {"speedup": round(speedup, 4), "measured": time.strftime("%Y-%m-%d")}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(entries, handle, indent=1, sort_keys=True)
        os.replace(temporary, path)                 # atomic: a reader never sees half
    except OSError:
        pass                                        # a read-only home: measure each time
    return speedup, None


def _read_cache(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def cpu_model_name() -> str:
    """The CPU's model name (/proc/cpuinfo's "model name"; elsewhere platform's
    processor string)."""
    return cpuinfo_value(("model name",)) or platform.processor() or platform.machine()


def _capability(device: devices.Device) -> tuple:
    return tuple(device.compute_capability or (0, 0))


def _shown(device: devices.Device) -> str:
    return ".".join(map(str, device.compute_capability)) if device.compute_capability \
        else "unknown"


def _keras_version() -> str:
    from vitcifar.backend.keras_compat import keras_version
    return keras_version()


def _tensorflow_2_10() -> bool:
    """Whether the TensorFlow that runs is 2.10, the DirectML stack's (before 2.16 in all)."""
    import tensorflow as tf
    return tuple(int(part) for part in tf.__version__.split(".")[:2]) < (2, 16)


def keras_has_policy(name: str) -> bool:
    from vitcifar.backend.keras_compat import keras
    try:
        keras.mixed_precision.Policy(name)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


# --- what the CPU can do -------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def cpu_bf16_features() -> Optional[Tuple[str, ...]]:
    """The CPU's bfloat16 arithmetic, e.g. ("AMX-BF16", "AVX512-BF16"); () for none; None
    when it cannot be told. Linux and WSL: the kernel's /proc/cpuinfo flags. Elsewhere
    (Windows, macOS): numpy's own CPUID reading, which names AVX512-BF16 (numpy 2) but not
    AMX (every CPU with AMX-BF16 also has AVX512-BF16)."""
    flags = proc_cpuinfo_flags()
    if flags is not None:
        return tuple(name for flag, name in CPU_FLAGS.items() if flag in flags)
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return None
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as numpy_features
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as numpy_features
        except ImportError:
            return None
    if "AVX512BF16" not in numpy_features:         # numpy 1.x does not look for it
        return None
    return ("AVX512-BF16",) if numpy_features["AVX512BF16"] else ()


def proc_cpuinfo_flags(path: str = "/proc/cpuinfo") -> Optional[frozenset]:
    """The feature flags the first processor in /proc/cpuinfo lists (x86 "flags", Arm
    "Features"); None without that file."""
    if not os.path.isfile(path):
        return None
    return frozenset((cpuinfo_value(("flags", "Features"), path) or "").split())


def cpuinfo_value(keys: Tuple[str, ...], path: str = "/proc/cpuinfo") -> Optional[str]:
    """The value of the first line of /proc/cpuinfo whose key is one of `keys`; None when
    there is none or the file cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        return None
    return None


# --- is bfloat16 faster for this model: a measurement ----------------------------------------

def probe_shape(config: TrainConfig) -> tuple:
    """What decides a block's speed: (batch, tokens, width, heads, MLP width, dropout,
    attention dropout, drop path)."""
    tokens = patch_grid_side(config.image_size, config.patch_size, config.patch_stride) ** 2 + \
        (config.pooling == "class_token")
    return (config.batch_size, tokens, config.embedding_dim, config.num_heads,
            config.mlp_hidden_dim, config.dropout, config.attention_dropout, config.drop_path)


@functools.lru_cache(maxsize=None)
def block_speedup(batch: int, tokens: int, width: int, heads: int, mlp: int, dropout: float,
                  attention_dropout: float, drop_path: float) -> float:
    """How many times as fast one vit_model.TransformerBlock of this shape trains in mixed
    bfloat16 as in float32: its forward pass and the gradients of its input and weights, the
    model's own code, on a (batch, tokens, width) input, in training mode. Interleaved
    rounds (one float32 call, one bfloat16 call, in alternating order), PROBE_ROUNDS and more
    while within PROBE_SECONDS; the median of the rounds' ratios, so that a load that comes
    and goes cancels out. Once per shape and process (banner, training, results.json)."""
    arguments = (batch, tokens, width, heads, mlp, dropout, attention_dropout, drop_path)
    steps = {name: _block_step(name, *arguments) for name in (FLOAT32, BFLOAT16)}
    for step in steps.values():
        _seconds(step)                                   # traces it and warms the caches
    ratios, started = [], time.perf_counter()
    while len(ratios) < PROBE_ROUNDS or (len(ratios) < PROBE_MAX_ROUNDS and
                                         time.perf_counter() - started < PROBE_SECONDS):
        order = (FLOAT32, BFLOAT16) if len(ratios) % 2 == 0 else (BFLOAT16, FLOAT32)
        seconds = {name: _seconds(steps[name]) for name in order}
        ratios.append(seconds[FLOAT32] / seconds[BFLOAT16])
    return statistics.median(ratios)


def _block_step(name: str, batch, tokens, width, heads, mlp, dropout, attention_dropout,
                drop_path):
    """A tf.function (on torch, a function): one training-mode forward and backward pass of
    a fresh block built under the policy `name`, on a fixed input (drawn without the global
    seed)."""
    from vitcifar.backend.keras_compat import BACKEND
    if BACKEND == "torch":
        return _torch_block_step(name, batch, tokens, width, heads, mlp, dropout,
                                 attention_dropout, drop_path)
    import tensorflow as tf

    from vit_model import TransformerBlock
    with policy(name):
        block = TransformerBlock(width, heads, mlp, dropout, drop_path=drop_path,
                                 attention_dropout=attention_dropout, name="precision_probe")
        x = tf.cast(tf.random.stateless_normal((batch, tokens, width), seed=[0, 0]),
                    block.compute_dtype)
        block(x)                                                     # builds the weights

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = tf.reduce_sum(tf.cast(block(x, training=True), tf.float32))
        return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32))
                         for g in tape.gradient(out, [x, *block.trainable_weights])])
    return step


def _torch_block_step(name: str, batch, tokens, width, heads, mlp, dropout, attention_dropout,
                      drop_path):
    """_block_step on Keras's torch backend: torch.autograd.grad in place of the tape."""
    import numpy as np
    import torch

    from vit_model import TransformerBlock
    from vitcifar.backend.keras_compat import keras
    with policy(name):
        block = TransformerBlock(width, heads, mlp, dropout, drop_path=drop_path,
                                 attention_dropout=attention_dropout, name="precision_probe")
        x = keras.ops.cast(np.random.default_rng(0).standard_normal(
            (batch, tokens, width), dtype=np.float32), block.compute_dtype)
        block(x)                                                     # builds the weights

    def step():
        inputs = x.detach().requires_grad_(True)
        out = keras.ops.sum(keras.ops.cast(block(inputs, training=True), "float32"))
        weights = [w.value for w in block.trainable_weights]
        return sum(g.float().sum() for g in torch.autograd.grad(out, [inputs, *weights]))
    return step


def _seconds(step) -> float:
    from vitcifar.backend.keras_compat import to_numpy
    started = time.perf_counter()
    to_numpy(step())                        # waits for the device: the result is read
    return time.perf_counter() - started
