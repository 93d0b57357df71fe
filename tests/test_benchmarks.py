"""benchmarks/: each benchmark runs on tiny settings and prints its figures (no timing is
asserted: speed is measured, never tested)."""
import gzip
import json
import math
import re

import numpy as np
import pytest

from helpers import run_app, run_module


@pytest.mark.slow
def test_train_throughput_benchmark_prints_its_figures():
    result = run_module("benchmarks.train_throughput", "--preset", "tiny", "--steps", 2,
                     "--windows", 2, "--warmup", 1, "--images", 256, "--batch-size", 32,
                     "--peak-size", 256)
    assert result.returncode == 0, result.stderr[-2000:]
    rate = re.search(r"train throughput: ([\d.]+) images/s \(median of 2 windows", result.stdout)
    assert rate and float(rate.group(1)) > 0, result.stdout
    assert "input pipeline with augmentation, 256 synthetic uint8 images" in result.stdout
    assert re.search(r"peak memory: \d+ MiB", result.stdout)
    # against the peak of the format that ran (auto may pick bfloat16 on this host)
    ran = re.search(r"precision: (?:mixed )?(float32|bfloat16|float16)", result.stdout)
    assert ran, result.stdout
    assert re.search(r"FLOPs: [\d.]+ MFLOP per image per training step; [\d.]+ GFLOP/s at the "
                     r"median rate, [\d.]+% of this machine's " + ran.group(1) + r" matmul peak "
                     r"\([\d.]+ GFLOP/s, 256x256", result.stdout), result.stdout


@pytest.mark.slow
def test_train_throughput_compares_precisions_and_feeds_what_the_pipeline_feeds():
    """--compare-precisions: a row per format this device runs, float32's first, each
    against its own matmul peak; --model-only with label smoothing (fast's loss) feeds
    one-hot labels, as the pipeline does."""
    result = run_module("benchmarks.train_throughput", "--preset", "tiny", "--steps", 2,
                        "--windows", 2, "--warmup", 1, "--batch-size", 16, "--peak-size",
                        128, "--model-only", "--label-smoothing", 0.1, "--compare-precisions")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "one fixed uint8 batch (no input pipeline)" in result.stdout
    rows = re.findall(r"^(float32|mixed bfloat16|mixed float16) +[\d.]+ \([\d.]+-[\d.]+\) +"
                      r"[\d.]+ +[\d.]+% +([\d.]+)x", result.stdout, re.M)
    assert rows and rows[0] == ("float32", "1.00"), result.stdout
    assert re.search(r"matmul peaks, 128x128: float32 \d+ GFLOP/s", result.stdout)
    assert re.search(r"^--mixed-precision auto picks here: (float32|mixed \w+) \(",
                     result.stdout, re.M), result.stdout


@pytest.mark.slow
def test_profile_benchmark_lists_op_types_and_rejects_bad_counts():
    result = run_module("benchmarks.profile_step", "--preset", "tiny", "--steps", 1,
                     "--batch-size", 16, "--top", 50)
    assert result.returncode == 0, result.stderr[-2000:]
    shares = dict(re.findall(r"^  (\S+) +[\d.]+ ms/step +([\d.]+)%$", result.stdout, re.M))
    assert any("MatMul" in op for op in shares), result.stdout       # the model's Dense layers
    assert any(op.endswith("Softmax") and "Sparse" not in op for op in shares)
    assert 99.0 <= sum(map(float, shares.values())) <= 100.5         # all op types listed
    bad = run_module("benchmarks.profile_step", "--steps", 0)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --steps")


@pytest.mark.slow
def test_benchmark_runs_and_reports_the_ratios():
    result = run_module("benchmarks.pipeline_throughput", "--images", 600, "--seconds", 0.05,
                     "--windows", 1, "--batch-size", 64, "--train-batch-sizes", 16,
                     "--preset", "tiny")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ["batched pipeline", "per-image pipeline", "train steps, batch 16",
                 "batched / per-image pipeline", "batched / train steps, batch 16"]:
        assert line in result.stdout
    assert math.isfinite(float(result.stdout.split("batched / per-image pipeline")[1]
                               .split("x")[0]))


@pytest.mark.slow
def test_inference_benchmark_prints_each_runtime_and_the_ratios():
    result = run_module("benchmarks.inference_throughput", "--presets", "tiny",
                        "--batch1-runs", 3, "--big-batch", 8, "--big-runs", 1, "--warmup", 1)
    assert result.returncode == 0, result.stderr[-2000:]
    runtimes = re.findall(r"^  (.+?) +batch 1 median +([\d.]+) ms, p99 +([\d.]+) ms; batch 8 "
                          r"+([\d,]+) images/s$", result.stdout, re.M)
    names = [name for name, *_ in runtimes]
    assert names[:3] == ["Keras tf.function", "Keras model.predict", "ONNX Runtime float32"]
    assert all(float(median) > 0 for _, median, _, _ in runtimes)
    assert "ratios: ORT float32 batch-1 latency / Keras best" in result.stdout


def write_idx(path, array):
    """An MNIST-format file: 0, 0, dtype 8 (uint8), rank, then each size as 4 big-endian
    bytes, then the bytes; gzipped as Fashion-MNIST ships."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big")
                                                     for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.slow
def test_learning_check_keeps_its_data_so_the_kept_run_evaluates(tmp_path):
    rng = np.random.default_rng(0)
    fashion = tmp_path / "fashion"
    fashion.mkdir()
    for prefix, count in (("train", 120), ("t10k", 40)):
        write_idx(fashion / f"{prefix}-images-idx3-ubyte.gz",
                  rng.integers(0, 256, (count, 28, 28)))
        write_idx(fashion / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))
    run, data = tmp_path / "run", tmp_path / "data"
    result = run_module("benchmarks.learning_check", "--fashion-dir", fashion,
                     "--train-images", 120, "--test-images", 40, "--epochs", 1,
                     "--keep", run, "--keep-data", data, "--", "--batch-size", 32,
                     "--no-tensorboard")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"1 epochs: test top-1 [\d.]+% on 40 test images", result.stdout)
    config = json.loads((run / "config.json").read_text())
    assert config["experiment"]["batch_size"] == 32                 # passed through after --
    assert config["run"]["data_dir"] == str(data / "fashion-as-cifar-10.tar.gz")
    evaluated = run_app("evaluate.py", run)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stdout.splitlines()[-1] == "results.json: the same"


@pytest.mark.slow
def test_image_folder_loading_benchmark_prints_images_per_second_by_threads():
    result = run_module("benchmarks.image_folder_loading", "--images", 40, "--runs", 1,
                        "--workers", 1, 2, "--source-size", 48, "--format", "jpeg",
                        "--train-rate", 1000)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = re.findall(r"^(\d) threads? +([\d,]+)  \(([\d,]+) - ([\d,]+)\)$", result.stdout, re.M)
    assert [row[0] for row in rows] == ["1", "2"], result.stdout
    assert all(float(rate.replace(",", "")) > 0 for _, rate, _, _ in rows)
    assert "40 48x48 JPEG files, 10 classes" in result.stdout
    assert "one training epoch of 40 images at 1,000 images/s takes 0.0 s" in result.stdout


@pytest.mark.slow
def test_weight_ema_evaluates_the_last_weights_and_each_average(cifar10_tar, tmp_path):
    result = run_module("benchmarks.weight_ema", "--preset", "tiny", "--epochs", 1,
                        "--data-dir", cifar10_tar, "--output-dir", tmp_path / "run",
                        "--momenta", 0.9, 0.99, "--no-tensorboard")
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"weight_ema: \d+ steps, seed \d+, [\d,]+ images seen; the EMAs took",
                     result.stdout), result.stdout
    # one epoch: the run's best weights are its last ones, evaluated again here
    last = re.search(r"last weights: test top-1 ([\d.]+)% \(the run's best weights: "
                     r"([\d.]+)%\)", result.stdout)
    assert last and last.group(1) == last.group(2), result.stdout
    for momentum in ("0.9", "0.99"):
        assert re.search(rf"EMA {momentum}: test top-1 [\d.]+%", result.stdout), result.stdout
    bad = run_module("benchmarks.weight_ema", "--momenta", 1.5)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --momenta must be between 0 and 1"
    # the kept run is not deleted without --restart
    kept = run_module("benchmarks.weight_ema", "--preset", "tiny", "--data-dir", cifar10_tar,
                      "--output-dir", tmp_path / "run")
    assert kept.returncode == 2 and kept.stderr.startswith("error: --output-dir"), kept.stderr
    assert (tmp_path / "run" / "best.weights.npz").is_file()


def test_weight_ema_averages_after_every_step_with_the_warmup_decay():
    from benchmarks import weight_ema
    tracker = weight_ema.ema_tracker([0.5, 0.2])

    class Model:                    # weights 1, 2, 3 after steps 1, 2, 3
        step = 0

        def get_weights(self):
            return [np.full(2, float(self.step))]
    model = Model()
    tracker.set_model(model)
    for step in (1, 2, 3):
        model.step = step
        tracker.on_train_batch_end(step - 1)
    # momentum 0.5: the decay (1 + t) / (10 + t), 3/12 then 4/13, is the smaller
    slow = 3 / 12 * 1.0 + 9 / 12 * 2.0
    assert tracker.ema[0.5][0] == pytest.approx(np.full(2, 4 / 13 * slow + 9 / 13 * 3.0))
    # momentum 0.2: below the warmup's decay from step 2 on
    assert tracker.ema[0.2][0] == pytest.approx(np.full(2, 0.2 * (0.2 * 1 + 0.8 * 2) + 0.8 * 3))
    assert tracker.steps == 3
    tracker.on_train_end()
    assert tracker.last[0] == pytest.approx(np.full(2, 3.0))


def test_weight_ema_refuses_steps_it_cannot_see():
    bad = run_module("benchmarks.weight_ema", "--steps-per-execution", 4)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip() == ("error: weight_ema.py averages after every step: leave "
                                  "--steps-per-execution at 1")
