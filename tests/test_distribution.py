"""distribution.py: --distribute's strategies, TF_CONFIG, and whole runs on two replicas and
on two worker processes (the fault case included)."""
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import archives
from helpers import ROOT, saved_epochs
from vitcifar.backend import devices
from vitcifar.errors import UsageError
from vitcifar.training import distribution

# Keras 2 is there: TF 2.10's own, or tf-keras beside Keras 3 (requirements-multiworker.txt)
MULTI_WORKER_POSSIBLE = (not devices.keras_3_installed()
                         or importlib.util.find_spec("tf_keras") is not None)
needs_keras_2 = pytest.mark.skipif(not MULTI_WORKER_POSSIBLE, reason="needs Keras 2: pip "
                                   "install -r requirements-multiworker.txt")
RUN_FILES = {"config.json", "checkpoint.npz", "best.weights.npz", "history.csv",
             "results.json", "labels.json"}


@pytest.fixture(scope="module")
def slow_tar(tmp_path_factory):
    """850 training images: with batch 8 an epoch is 107 steps, long enough to interrupt."""
    files, _ = archives.archive_files("cifar10", per_batch=200, seed=5)
    return archives.write_tar(str(tmp_path_factory.mktemp("slow") / "c10.tar.gz"), files)


def tf_config(index, ports):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def test_tf_config_names_the_chief_and_bad_ones_get_one_line():
    ports = (1, 2)
    assert distribution.read_tf_config({"TF_CONFIG": tf_config(0, ports)}) == (2, True)
    assert distribution.read_tf_config({"TF_CONFIG": tf_config(1, ports)}) == (2, False)
    with_chief = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                  "task": {"type": "worker", "index": 0}}
    assert distribution.read_tf_config({"TF_CONFIG": json.dumps(with_chief)}) == (3, False)
    with pytest.raises(UsageError, match="needs the TF_CONFIG variable on every worker, e.g. "
                                         "TF_CONFIG='{\"cluster\""):
        distribution.read_tf_config({})
    for bad in ("{not json", json.dumps({"cluster": {"worker": ["a:1"]}}),
                tf_config(2, ports), json.dumps({"cluster": {"ps": ["a:1"], "worker": ["b:1"]},
                                                 "task": {"type": "worker", "index": 0}})):
        with pytest.raises(UsageError, match="TF_CONFIG is not a multi-worker cluster this "
                                             "app can use .*it should look like"):
            distribution.read_tf_config({"TF_CONFIG": bad})


def test_auto_mirrors_several_cuda_gpus_only_and_directml_is_refused():
    cuda, cpu = devices.Device("CUDA", "gpu"), devices.Device("CPU", "cpu")
    dml = devices.Device("DirectML", "gpu")
    assert [distribution.resolve("auto", d, n) for d, n in
            ((cuda, 2), (cuda, 1), (cpu, 0), (dml, 2))] == ["mirrored", "none", "none", "none"]
    assert distribution.resolve("mirrored", cpu, 0) == "mirrored"
    assert distribution.resolve("none", dml, 1) == "none"
    for kind in ("mirrored", "multi-worker"):
        with pytest.raises(UsageError, match=f"--distribute {kind} is not possible on "
                                             "DirectML: tensorflow-directml-plugin drives one "
                                             r"adapter \(pick it with --gpu N\)"):
            distribution.resolve(kind, dml, 1)


def test_the_global_batch_is_split_evenly_or_refused():
    plan = distribution.Plan("mirrored", None, replicas=4)
    assert plan.per_replica_batch(512) == 128
    assert plan.describe(512) == "MirroredStrategy, 4 replicas of 128 images"
    assert plan.record(512) == {"strategy": "MirroredStrategy", "replicas": 4, "workers": 1,
                                "per_replica_batch": 128}
    with pytest.raises(UsageError, match="--batch-size 510 does not divide evenly among 4 "
                                         "replicas; use a multiple of 4"):
        plan.per_replica_batch(510)
    workers = distribution.Plan("multi-worker", None, replicas=2, workers=2, chief=False)
    assert workers.describe(16) == "MultiWorkerMirroredStrategy, 2 replicas on 2 workers of " \
                                   "8 images"
    assert distribution.Plan("none", None).describe(7) == "one device"


def test_a_workers_own_folder_is_temporary_unless_named(tmp_path, monkeypatch):
    monkeypatch.delenv(distribution.WORKER_DIR_VARIABLE, raising=False)
    with distribution.worker_dir() as folder:
        assert os.path.isdir(folder) and folder != str(tmp_path)
        open(os.path.join(folder, "checkpoint.npz"), "wb").close()
    assert not os.path.exists(folder)
    monkeypatch.setenv(distribution.WORKER_DIR_VARIABLE, str(tmp_path / "kept"))
    with distribution.worker_dir() as folder:
        open(os.path.join(folder, "checkpoint.npz"), "wb").close()
    assert os.listdir(tmp_path / "kept") == ["checkpoint.npz"]


# --- MirroredStrategy over two logical CPU devices ---------------------------------------------

MIRRORED_SCRIPT = """
import sys
from vitcifar.backend import devices
devices.prepare_environment(None, "mirrored")
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions
from vitcifar.config.views import override
from vitcifar.data import cifar
from vitcifar.training import distribution, trainer
# no randomness but the seeded initial weights and order: dropout and augmentation off
config = override(PRESETS["tiny"], epochs=2, batch_size=16, dropout=0.0, crop_padding=0,
                  flip=False, randaugment_n=0).validate()
data = cifar.load("cifar10", {tar!r})
device = devices.detect()
for kind in ("none", "mirrored"):
    options = RunOptions(data_dir={tar!r}, output_dir={out!r} + "/" + kind, distribute=kind,
                         tensorboard=False, mixed_precision="off").validate()   # compared
    plan = distribution.create(options, device)
    print("plan:", plan.describe(config.batch_size), flush=True)
    for epochs in (2, 3):                     # then resumed for a third epoch
        trainer.run(override(config, epochs=epochs), options, data, device, cluster=plan)
"""


def checkpoint_arrays(folder, prefix="model/"):
    """The checkpoint's arrays whose keys start with `prefix` (model/PATH, optimizer/...),
    in key order; at least one."""
    with np.load(os.path.join(folder, "checkpoint.npz")) as saved:
        names = sorted(k for k in saved.files if k.startswith(prefix))
        assert names, f"no {prefix} arrays in {folder}/checkpoint.npz"
        return [saved[k] for k in names]


def history_column(folder, column):
    import csv
    with open(os.path.join(folder, "history.csv")) as handle:
        return [float(row[column]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_mirrored_on_two_replicas_trains_as_one_device_does(tmp_path, cifar10_tar):
    """Same global batch (16 = 2 x 8) and seed: the same weights after two epochs and a
    resumed third, up to the float rounding of summing two half-batch gradients (measured
    at most 3e-5, with the position embedding's gradient dense; a sparse one gives 5e-3)."""
    script = MIRRORED_SCRIPT.format(tar=cifar10_tar, out=str(tmp_path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "plan: one device" in result.stdout
    assert "plan: MirroredStrategy, 2 replicas of 8 images" in result.stdout
    assert "Resuming" in result.stdout.split("plan: MirroredStrategy")[1]
    one, two = str(tmp_path / "none"), str(tmp_path / "mirrored")
    losses = history_column(two, "loss")
    assert len(losses) == 3 and losses[2] < losses[1] < losses[0]
    for got, expected in zip(checkpoint_arrays(two), checkpoint_arrays(one)):
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4)
    results = json.loads(open(os.path.join(two, "results.json")).read())
    assert results["distribution"] == {"strategy": "MirroredStrategy", "replicas": 2,
                                       "workers": 1, "per_replica_batch": 8}


# --- two worker processes on 127.0.0.1 ---------------------------------------------------------

def free_ports(count=2):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(args, outs, env_for=lambda index: {}, args_for=lambda index: []):
    """Both workers of a fresh two-worker cluster, worker i writing to outs[i], with
    env_for(i) added to its environment and args_for(i) to its flags."""
    ports = free_ports()
    processes = []
    for index, out in enumerate(outs):
        env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
        env.update({"TF_CONFIG": tf_config(index, ports), **env_for(index)})
        processes.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train_cifar10.py"), "--distribute",
             "multi-worker", "--output-dir", str(out), *map(str, args + args_for(index))],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def finish(processes, timeout=600):
    outputs = [p.communicate(timeout=timeout) for p in processes]
    for process, (stdout, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-3000:]
    return outputs


def assert_same_training_state(chief_dir, worker_dir):
    for prefix in ("model/", "optimizer/"):
        chief, worker = checkpoint_arrays(chief_dir, prefix), checkpoint_arrays(worker_dir, prefix)
        assert len(chief) == len(worker) > 0
        for a, b in zip(chief, worker):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.multiworker
@needs_keras_2
def test_two_workers_train_together_and_only_the_chief_writes(tmp_path, cifar10_tar):
    outs = [tmp_path / "chief", tmp_path / "worker"]
    own = tmp_path / "worker-own"        # the non-chief's bookkeeping, kept for this check
    processes = start_workers(
        ["--preset", "tiny", "--data-dir", cifar10_tar, "--epochs", 2, "--batch-size", 16],
        outs, lambda index: {distribution.WORKER_DIR_VARIABLE: str(own)} if index else {})
    (chief_out, _), (worker_out, _) = finish(processes)
    assert "MultiWorkerMirroredStrategy, 2 replicas on 2 workers of 8 images" in chief_out
    assert "Keras 2." in chief_out.split("|")[1]            # tf-keras or TF 2.10's Keras
    assert "the chief writes the results" in worker_out
    assert RUN_FILES <= set(os.listdir(outs[0]))
    assert not outs[1].exists()                            # the other worker wrote nothing
    assert_same_training_state(str(outs[0]), str(own))
    results = json.loads((outs[0] / "results.json").read_text())
    assert results["distribution"] == {"strategy": "MultiWorkerMirroredStrategy",
                                       "replicas": 2, "workers": 2, "per_replica_batch": 8}
    assert results["epochs_completed"] == 2


@pytest.mark.slow
@pytest.mark.multiworker
@needs_keras_2
def test_a_killed_worker_stops_the_chief_and_rerunning_both_resumes(tmp_path, slow_tar):
    args = ["--preset", "tiny", "--data-dir", slow_tar, "--epochs", 3, "--batch-size", 8,
            "--dropout", 0]                                      # 107 steps of 2 x 4 images
    outs = [tmp_path / "chief", tmp_path / "worker"]
    chief, worker = start_workers(args, outs)
    deadline = time.time() + 300
    while saved_epochs(str(outs[0])) < 1:
        assert chief.poll() is None and worker.poll() is None, chief.communicate()[1][-3000:]
        assert time.time() < deadline, "the first epoch did not end in time"
        time.sleep(0.05)
    time.sleep(1.0)                                             # into epoch 2
    worker.kill()
    killed = time.time()
    worker.communicate()
    _, stderr = chief.communicate(timeout=120)
    assert chief.returncode == 1 and time.time() - killed < 60   # ~10 s measured
    assert "a worker of the cluster died or stopped responding" in stderr
    assert f"1 epoch(s) are saved in {outs[0]}; rerun every worker's command" in stderr
    assert "Traceback" not in stderr and saved_epochs(str(outs[0])) == 1

    own = tmp_path / "worker-own"
    (chief_out, _), _ = finish(start_workers(args, outs, lambda index: {
        distribution.WORKER_DIR_VARIABLE: str(own)} if index else {}))
    assert f"Resuming {outs[0]}: 1 of 3 epochs done" in chief_out
    assert history_column(str(outs[0]), "epoch") == [1, 2, 3]   # none lost, none twice
    assert not outs[1].exists()
    assert_same_training_state(str(outs[0]), str(own))     # the chief's checkpoint was sent


@pytest.mark.slow
@pytest.mark.multiworker
@needs_keras_2
def test_a_worker_started_with_other_flags_is_refused_and_the_chief_stops(tmp_path,
                                                                         cifar10_tar):
    args = ["--preset", "tiny", "--data-dir", cifar10_tar, "--epochs", 2, "--batch-size", 16]
    chief, worker = start_workers(args, [tmp_path / "chief", tmp_path / "worker"],
                                  args_for=lambda index: ["--num-layers", 3] if index else [])
    _, worker_err = worker.communicate(timeout=300)
    assert worker.returncode == 2
    assert "error: this worker was started with --num-layers 3, not 2 (the chief's); start " \
           "every worker with the same flags" in worker_err
    stopped = time.time()
    _, chief_err = chief.communicate(timeout=120)
    assert chief.returncode == 1 and time.time() - stopped < 60
    assert "lost contact with another worker of the cluster" in chief_err
    assert "Traceback" not in chief_err + worker_err


@pytest.mark.slow
@pytest.mark.multiworker
@needs_keras_2
def test_ctrl_c_on_one_worker_stops_every_worker_after_the_same_epoch(tmp_path, slow_tar):
    outs = [tmp_path / "chief", tmp_path / "worker"]
    chief, worker = start_workers(["--preset", "tiny", "--data-dir", slow_tar, "--epochs", 20,
                                   "--batch-size", 8], outs)
    deadline = time.time() + 300
    while saved_epochs(str(outs[0])) < 1:
        assert chief.poll() is None and worker.poll() is None, chief.communicate()[1][-3000:]
        assert time.time() < deadline, "the first epoch did not end in time"
        time.sleep(0.05)
    worker.send_signal(signal.SIGINT)                 # on the worker that is not the chief
    (_, chief_err), (worker_out, worker_err) = [p.communicate(timeout=120)
                                                for p in (chief, worker)]
    assert chief.returncode == worker.returncode == 130, chief_err[-2000:]
    done = saved_epochs(str(outs[0]))
    assert 1 <= done < 20 and len(history_column(str(outs[0]), "epoch")) == done
    assert f"stopped by Ctrl-C; {done} epoch(s) saved in {outs[0]}; to resume, rerun every " \
           "worker's command" in chief_err
    assert f"stopped by Ctrl-C; {done} epoch(s) saved by the chief" in worker_err
    assert "Traceback" not in chief_err + worker_err
