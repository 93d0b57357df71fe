"""benchmarks/: each benchmark runs on tiny settings and prints its figures (no timing is
asserted: speed is measured, never tested)."""
import math
import re

import pytest

from conftest import run_app


@pytest.mark.slow
def test_train_throughput_benchmark_prints_its_figures():
    result = run_app("benchmarks/train_throughput.py", "--preset", "tiny", "--steps", 2,
                     "--windows", 2, "--warmup", 1, "--images", 256, "--batch-size", 32,
                     "--peak-size", 256)
    assert result.returncode == 0, result.stderr[-2000:]
    rate = re.search(r"train throughput: ([\d.]+) images/s \(median of 2 windows", result.stdout)
    assert rate and float(rate.group(1)) > 0, result.stdout
    assert "input pipeline with augmentation, 256 synthetic uint8 images" in result.stdout
    assert re.search(r"peak memory: \d+ MiB", result.stdout)
    assert re.search(r"FLOPs: [\d.]+ MFLOP per image per training step; [\d.]+ GFLOP/s at the "
                     r"median rate, [\d.]+% of this machine's float32 matmul peak "
                     r"\([\d.]+ GFLOP/s, 256x256", result.stdout), result.stdout


@pytest.mark.slow
def test_profile_benchmark_lists_op_types_and_rejects_bad_counts():
    result = run_app("benchmarks/profile_step.py", "--preset", "tiny", "--steps", 1,
                     "--batch-size", 16, "--top", 50)
    assert result.returncode == 0, result.stderr[-2000:]
    shares = dict(re.findall(r"^  (\S+) +[\d.]+ ms/step +([\d.]+)%$", result.stdout, re.M))
    assert any("MatMul" in op for op in shares), result.stdout       # the model's Dense layers
    assert any(op.endswith("Softmax") and "Sparse" not in op for op in shares)
    assert 99.0 <= sum(map(float, shares.values())) <= 100.5         # all op types listed
    bad = run_app("benchmarks/profile_step.py", "--steps", 0)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --steps")


@pytest.mark.slow
def test_benchmark_runs_and_reports_the_ratios():
    result = run_app("benchmarks/pipeline_throughput.py", "--images", 600, "--seconds", 0.05,
                     "--windows", 1, "--batch-size", 64, "--train-batch-sizes", 16,
                     "--preset", "tiny")
    assert result.returncode == 0, result.stderr[-2000:]
    for line in ["batched pipeline", "per-image pipeline", "train steps, batch 16",
                 "batched / per-image pipeline", "batched / train steps, batch 16"]:
        assert line in result.stdout
    assert math.isfinite(float(result.stdout.split("batched / per-image pipeline")[1]
                               .split("x")[0]))

