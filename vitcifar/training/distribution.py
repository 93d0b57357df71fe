"""Training on several devices or machines through tf.distribute: the strategy (--distribute),
which worker is the chief, and what the workers exchange besides gradients.

  none          no strategy (TensorFlow's default one): one device
  mirrored      MirroredStrategy, one replica per visible GPU of this machine (with no GPU,
                per logical CPU device: one, unless configured, as the tests do)
  multi-worker  MultiWorkerMirroredStrategy over the workers of the TF_CONFIG variable, each
                with one replica per visible GPU (else its CPU). Keras 2 only: TF 2.10's own,
                or tf-keras on current TensorFlow (devices.prepare_environment sets
                TF_USE_LEGACY_KERAS=1), since Keras 3's fit fails under it
                (keras-team/keras#20585)
  auto          mirrored when TensorFlow sees more than one CUDA GPU, else none

--batch-size stays the global batch: each step trains on the images one device would, split
evenly over the replicas (input_pipeline.replica_train_dataset); gradients are summed.
tensorflow-directml-plugin drives one adapter and has no collective kernels, so DirectML
trains with none.

Multi-worker runs. Every worker runs the same command. Worker 0 of TF_CONFIG (or its "chief"
task, if it lists one) is the chief: it alone writes --output-dir. The others run the same
bookkeeping, collectives included, in a folder of their own (`worker_dir`: $VIT_WORKER_DIR,
else a temporary folder removed at exit) and leave --output-dir untouched. A resumed run
needs no shared disk: the chief sends its checkpoint to the others (`broadcast_bytes`). A
worker that dies or hangs is noticed by TensorFlow's coordination service, whose heartbeats
abort the others' collective ops within seconds (about 10 s on TF 2.10 and 2.21, measured
here), so they stop with an error instead of waiting; rerunning every worker's command
resumes from the chief's last checkpoint.

This module imports TensorFlow only inside functions: `read_tf_config` checks TF_CONFIG
before TensorFlow's slow start.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

from vitcifar.backend import devices
from vitcifar.config.settings import RunOptions
from vitcifar.errors import UsageError

WORKER_DIR_VARIABLE = "VIT_WORKER_DIR"
# tf.distribute's public names (MultiWorkerMirroredStrategy's class is called
# CollectiveAllReduceStrategy)
STRATEGY_NAMES = {"none": "none", "mirrored": "MirroredStrategy",
                  "multi-worker": "MultiWorkerMirroredStrategy"}
TF_CONFIG_EXAMPLE = ('TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}\'')


@dataclass(frozen=True)
class Plan:
    """How this process trains: `strategy` (TensorFlow's default strategy for "none"), the
    number of replicas in sync over all workers, and this worker's place among them."""
    kind: str                  # "none", "mirrored" or "multi-worker"
    strategy: object           # a tf.distribute.Strategy; its scope() builds the model
    replicas: int = 1          # all workers' replicas: the global batch is split this often
    workers: int = 1
    chief: bool = True         # writes the run directory

    @property
    def strategy_name(self) -> str:
        return STRATEGY_NAMES[self.kind]

    def per_replica_batch(self, batch_size: int) -> int:
        """The images each replica trains on per step; UsageError unless they divide evenly
        (a replica's gradient is the mean over its images, so equal shares make their sum the
        global batch's mean, as on one device)."""
        if batch_size % self.replicas:
            raise UsageError(f"--batch-size {batch_size} does not divide evenly among "
                             f"{self.replicas} replicas; use a multiple of {self.replicas}")
        return batch_size // self.replicas

    def describe(self, batch_size: int) -> str:
        """For the banner: 'one device', or the strategy, replicas and per-replica batch."""
        if self.kind == "none":
            return "one device"
        workers = f" on {self.workers} workers" if self.workers > 1 else ""
        replicas = f"{self.replicas} replica" + ("s" if self.replicas > 1 else "")
        return (f"{self.strategy_name}, {replicas}{workers} of "
                f"{self.per_replica_batch(batch_size)} images")

    def record(self, batch_size: int) -> dict:
        """What results.json records of the distribution."""
        return {"strategy": self.strategy_name, "replicas": self.replicas,
                "workers": self.workers, "per_replica_batch": self.per_replica_batch(batch_size)}


class OneDevice:
    """The strategy of a run on Keras's torch backend: one device, nothing to distribute
    (tf.distribute is TensorFlow's); its scope() is no scope."""

    @staticmethod
    def scope():
        return contextlib.nullcontext()


def single_device() -> Plan:
    if devices.keras_backend() == "torch":
        return Plan("none", OneDevice())
    import tensorflow as tf
    return Plan("none", tf.distribute.get_strategy())


def read_tf_config(environ=os.environ) -> Tuple[int, bool]:
    """(number of workers, whether this one is the chief) from TF_CONFIG; UsageError (one
    line, with an example) when it is missing or malformed. Pure Python: runs before
    TensorFlow starts. The chief is the "chief" task if the cluster lists one, else worker
    0, as TensorFlow decides."""
    text = environ.get("TF_CONFIG")
    if not text:
        raise UsageError(f"--distribute multi-worker needs the TF_CONFIG variable on every "
                         f"worker, e.g. {TF_CONFIG_EXAMPLE} (index 1 on the second)")
    try:
        values = json.loads(text)
        cluster, task = values["cluster"], values["task"]
        kind, index = task["type"], int(task["index"])
        count = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
        extra = set(cluster) - {"chief", "worker"}
        if extra or kind not in cluster or not 0 <= index < len(cluster[kind]):
            raise ValueError(f"task {kind} {index} of a cluster of {sorted(cluster)}")
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"TF_CONFIG is not a multi-worker cluster this app can use ({error});"
                         f" it should look like {TF_CONFIG_EXAMPLE}") from None
    chief = kind == "chief" or ("chief" not in cluster and index == 0)
    return count, chief


def resolve(distribute: str, device: devices.Device, gpus: int) -> str:
    """The strategy --distribute asks for on this device ("auto" decided): UsageError for
    what DirectML cannot do."""
    if distribute == "auto":
        return "mirrored" if device.kind == "CUDA" and gpus > 1 else "none"
    if distribute != "none" and device.kind == "DirectML":
        raise UsageError(f"--distribute {distribute} is not possible on DirectML: "
                         "tensorflow-directml-plugin drives one adapter (pick it with --gpu N);"
                         " use --distribute none")
    return distribute


def create(options: RunOptions, device: devices.Device) -> Plan:
    """The Plan of --distribute on this device. Call right after devices.detect(), before
    anything else runs on TensorFlow: MultiWorkerMirroredStrategy must be created first (it
    configures the runtime), and waits here until every worker of TF_CONFIG has started."""
    if device.backend == "torch":        # devices.torch_variables refused the strategies
        return single_device()
    import tensorflow as tf

    # physical, not logical, devices: listing those would start the runtime, after which
    # MultiWorkerMirroredStrategy can no longer configure it
    kind = resolve(options.distribute, device, len(tf.config.list_physical_devices("GPU")))
    if kind == "none":
        return single_device()
    if kind == "mirrored":
        local = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy(devices=[d.name for d in local])
        return Plan(kind, strategy, strategy.num_replicas_in_sync)
    workers, chief = read_tf_config()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return Plan(kind, strategy, strategy.num_replicas_in_sync, workers, chief)


def warning(options: RunOptions) -> Optional[str]:
    """What to say before training when TF_CONFIG is set but ignored."""
    if os.environ.get("TF_CONFIG") and options.distribute != "multi-worker":
        return ("TF_CONFIG is set, but --distribute is not multi-worker: this process trains "
                "alone (add --distribute multi-worker on every worker to train together)")
    return None


# --- what workers exchange besides gradients ------------------------------------------------

def _chief_sum(plan: Plan, values: np.ndarray) -> np.ndarray:
    """The chief's `values` on every worker: an all-reduce (sum) to which only replica 0 (the
    chief's first) contributes; the others send zeros of the same shape and dtype. Every
    worker must call it at the same point of the program, as any collective."""
    import tensorflow as tf
    strategy = plan.strategy

    def contribute(tensor):
        context = tf.distribute.get_replica_context()
        first = tf.equal(context.replica_id_in_sync_group, 0)
        return context.all_reduce(tf.distribute.ReduceOp.SUM,
                                  tf.where(first, tensor, tf.zeros_like(tensor)))

    result = strategy.run(tf.function(contribute), args=(tf.constant(values),))
    return strategy.experimental_local_results(result)[0].numpy()


def broadcast_bytes(plan: Plan, data: Optional[bytes]) -> bytes:
    """The chief's `data` (the others pass None) on every worker, through two collectives:
    its length, then its bytes as int32 words (padded to whole words; integer sums with
    zeros are exact). One worker: `data` itself."""
    if plan.workers == 1:
        return data or b""
    length = int(_chief_sum(plan, np.array([len(data) if plan.chief else 0], np.int64))[0])
    words = (length + 3) // 4
    if plan.chief:
        payload = np.frombuffer(data + b"\0" * (words * 4 - length), np.int32)
    else:
        payload = np.zeros(words, np.int32)
    return _chief_sum(plan, payload).tobytes()[:length]


def any_worker(plan: Plan, flag: bool) -> bool:
    """Whether `flag` is true on any worker (e.g. a Ctrl-C on one of them), the same answer on
    all: they must stop at the same epoch, or the others would wait in collectives."""
    if plan.workers == 1:
        return flag
    import tensorflow as tf
    strategy = plan.strategy

    def vote():
        context = tf.distribute.get_replica_context()
        mine = tf.constant(1 if flag else 0, tf.int32)
        return context.all_reduce(tf.distribute.ReduceOp.SUM, mine)

    total = strategy.experimental_local_results(strategy.run(tf.function(vote)))[0]
    return int(total) > 0


@contextlib.contextmanager
def worker_dir() -> Iterator[str]:
    """The folder where a worker other than the chief keeps its copy of the run's
    bookkeeping: $VIT_WORKER_DIR if set (kept, for inspection), else a temporary folder
    removed on leaving."""
    kept = os.environ.get(WORKER_DIR_VARIABLE)
    if kept:
        os.makedirs(kept, exist_ok=True)
        yield kept
        return
    folder = tempfile.mkdtemp(prefix="vit-worker-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
