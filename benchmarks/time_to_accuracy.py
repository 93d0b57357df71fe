#!/usr/bin/env python3
"""Accuracy against time: trains the real train_cifar10.py on real images and prints test
top-1, training seconds, images seen and the validation curve against seconds; median and
range over --seeds runs.

With no --data-dir it packs the full Fashion-MNIST set (Debian: apt-get install
dataset-fashion-mnist; 60,000 training and 10,000 test images, 28x28 grey padded to 32x32
over 3 channels) as a CIFAR-10 archive, as learning_check.py does: with the default
validation fraction that is 51,000 training, 9,000 validation and 10,000 test images.

    python -m benchmarks.time_to_accuracy --preset fast --seeds 2
    python -m benchmarks.time_to_accuracy --preset sample --seeds 1 -- --time-budget 15
    python -m benchmarks.time_to_accuracy --data-dir cifar-10-python.tar.gz --preset fast

Flags after `--` go to train_cifar10.py (--mixed-precision among them; each run's
precision and its reason are printed from its results.json). It is a proxy for CIFAR, not CIFAR: clothes on a
black ground are far easier than photos, so its accuracies are no CIFAR figures.
"""
from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
import tempfile
from typing import Optional

import numpy as np

from benchmarks.learning_check import NAMES, as_cifar, read_idx
from tests import archives  # the official-layout archive writer the tests use
from vitcifar.config.flags import Parser
from vitcifar.config.presets import PRESETS
from vitcifar.errors import RunStopped, UsageError, entry_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fashion_archive(folder: str, fashion_dir: str, train_images: Optional[int] = None,
                    test_images: Optional[int] = None) -> str:
    """Fashion-MNIST as a CIFAR-10 archive in `folder` (the first train_images and
    test_images of each split; None: all of it); returns its path."""
    def load(prefix, count):
        x = read_idx(os.path.join(fashion_dir, f"{prefix}-images-idx3-ubyte.gz"))[:count]
        y = read_idx(os.path.join(fashion_dir, f"{prefix}-labels-idx1-ubyte.gz"))[:count]
        return as_cifar(x), y.astype(np.int64)

    if not os.path.isdir(fashion_dir):
        raise UsageError(f"no Fashion-MNIST in {fashion_dir}: apt-get install "
                         "dataset-fashion-mnist, or pass --data-dir ARCHIVE")
    splits = {"train": load("train", train_images), "test": load("t10k", test_images)}
    return archives.write_tar(os.path.join(folder, "fashion-as-cifar-10.tar.gz"),
                              archives.files_from_arrays("cifar10", splits, NAMES))


def summary(values, unit="", scale=1.0, digits=1) -> str:
    values = [v * scale for v in values]
    return (f"{statistics.median(values):.{digits}f}{unit} (range {min(values):.{digits}f}-"
            f"{max(values):.{digits}f}{unit})")


def one_run(archive: str, output_dir: str, preset: str, seed: int, extra) -> dict:
    command = [sys.executable, os.path.join(ROOT, "train_cifar10.py"), "--data-dir", archive,
               "--output-dir", output_dir, "--restart", "--preset", preset, "--seed",
               str(seed), *extra]
    print("running:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    if subprocess.call(command, cwd=ROOT, stdout=subprocess.DEVNULL) != 0:
        raise RunStopped(f"train_cifar10.py failed for seed {seed}; rerun its command above "
                         "to see why")
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as handle:
        results = json.load(handle)
    results["command_seconds"] = time.perf_counter() - started       # the process, end to end
    with open(os.path.join(output_dir, "history.csv"), newline="", encoding="utf-8") as handle:
        results["history"] = [{k: float(v) for k, v in row.items()}
                              for row in csv.DictReader(handle)]
    results["curve"] = [(r["train_seconds"], r["val_top1"]) for r in results["history"]]
    return results


@entry_point
def main(argv=None) -> int:
    parser = Parser(prog="time_to_accuracy.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    parser.add_argument("--seeds", type=int, default=2, help="runs, seeds 0..N-1 (2)")
    parser.add_argument("--data-dir", help="a CIFAR-10-layout archive to train on instead")
    parser.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--keep", metavar="DIR", help="keep the archive and runs here")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    if args.seeds < 1:
        raise UsageError("--seeds must be 1 or more")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or scratch
        os.makedirs(folder, exist_ok=True)
        archive = args.data_dir or fashion_archive(folder, args.fashion_dir)
        runs = [one_run(archive, os.path.join(folder, f"run-{args.preset}-seed{seed}"),
                        args.preset, seed, extra) for seed in range(args.seeds)]
    for seed, r in enumerate(runs):
        curve = ", ".join(f"{s:.0f}s {v:.1%}" for s, v in r["curve"])
        print(f"seed {seed}: test top-1 {r['test_top1']:.2%} after {r['epochs_completed']} "
              f"epochs, {r['train_seconds']:.0f} s of training; validation top-1 by "
              f"seconds: {curve}")
    print(f"preset {args.preset}, {len(runs)} run(s), {runs[0]['device_name']}: test top-1 "
          f"{summary([r['test_top1'] for r in runs], '%', 100)}, training "
          f"{summary([r['train_seconds'] for r in runs], ' s', digits=0)}, images seen "
          f"{summary([r['images_seen'] for r in runs], digits=0)}")
    for seed, r in enumerate(runs):          # where each command's wall time went
        wall = r["wall_time"]
        phases = ", ".join(f"{name} {seconds:.0f}" for name, seconds in
                           sorted(wall["phases"].items(), key=lambda item: -item[1]))
        print(f"seed {seed} wall time: {r['command_seconds']:.0f} s for the whole command "
              f"({wall['total_seconds']:.0f} s from its main); steady rate "
              f"{wall['steady_images_per_second']} images/s, "
              f"{wall.get('budget_share_at_steady_rate', 0):.0%} of the budget trained at it; "
              f"seconds by phase: {phases}")
    for seed, r in enumerate(runs):          # train_cifar10.py's --mixed-precision decision
        print(f"seed {seed} precision: {r['precision']['policy']} ({r['precision']['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
