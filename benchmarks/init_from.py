"""Fine-tuning from a trained run against training from scratch, on few images of your own;
and class folders against the CIFAR-archive path on the same images. Prints figures, asserts
nothing.

    python -m benchmarks.init_from                      # about 10-15 minutes on 2 CPU cores
    python -m benchmarks.init_from --seeds 3 --target-per-class 100

From Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist; 28x28 grey padded to
32x32 over 3 channels, as learning_check.py does), written as 32x32 PNG class folders:
  1. source: train_images.py on classes 0-4 (--source-per-class images each), once;
  2. target: classes 5-9 with --target-per-class images each (a few dozen), trained from
     scratch and with --init-from the source (new classifier, the rest taken), --seeds
     seeds each; test top-1 on --test-per-class test images per class;
  3. the same images both ways: all 10 classes (--target-per-class each) as folders through
     train_images.py and as a CIFAR-10 archive through train_cifar10.py, --seeds seeds each.
Every run uses --preset (default tiny) with the epochs and batch size given here, and the
same seeds across arms; figures are median (range) over the seeds.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Sequence

import numpy as np

from benchmarks.learning_check import NAMES, as_cifar, read_idx
from tests import archives  # the official-layout archive writer the tests use
from vitcifar.config.flags import Parser
from vitcifar.config.presets import PRESETS
from vitcifar.errors import RunStopped, UsageError, entry_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE_CLASSES, TARGET_CLASSES = range(0, 5), range(5, 10)
CLASS_NAMES = [f"{label}_{name}" for label, name in enumerate(NAMES)]  # sorted = label order


def fashion(fashion_dir: str, prefix: str):
    """(images (N, 32, 32, 3) uint8, labels (N,) int64) of one Fashion-MNIST split."""
    if not os.path.isdir(fashion_dir):
        raise UsageError(f"no Fashion-MNIST in {fashion_dir}: apt-get install "
                         "dataset-fashion-mnist, or pass --fashion-dir")
    x = read_idx(os.path.join(fashion_dir, f"{prefix}-images-idx3-ubyte.gz"))
    y = read_idx(os.path.join(fashion_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    return as_cifar(x), y.astype(np.int64)


def take(images, labels, classes: Sequence[int], per_class: int):
    """The first per_class images of each class, class by class (the folder order)."""
    chosen = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in classes])
    return images[chosen], labels[chosen]


def write_folders(root: str, splits: Dict[str, tuple]) -> str:
    """DIR/{train,test}/LABEL_NAME/NNNNN.png; returns DIR."""
    from PIL import Image
    for split, (images, labels) in splits.items():
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = os.path.join(root, split, CLASS_NAMES[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.png"))
    return root


def train(script: str, data: List[str], output_dir: str, seed: int, preset: str,
          epochs: int, batch_size: int, extra: Sequence[str] = ()) -> float:
    """Runs one training command; returns its test top-1 from results.json."""
    command = [sys.executable, os.path.join(ROOT, script), *data, "--output-dir", output_dir,
               "--preset", preset, "--seed", str(seed), "--epochs", str(epochs),
               "--batch-size", str(batch_size), "--restart", "--no-tensorboard", *extra]
    print("running:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    if subprocess.call(command, cwd=ROOT, stdout=subprocess.DEVNULL) != 0:
        raise RunStopped(f"{script} failed for seed {seed}; rerun its command above to see why")
    with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as handle:
        top1 = json.load(handle)["test_top1"]
    print(f"  test top-1 {top1:.2%} ({time.perf_counter() - started:.0f} s)", flush=True)
    return top1


def summary(values: Sequence[float]) -> str:
    return (f"{statistics.median(values):.1%} ({min(values):.1%}-{max(values):.1%}) "
            f"over {len(values)} seeds")


def parse(argv):
    parser = Parser(prog="python -m benchmarks.init_from", description=__doc__.split("\n")[0])
    parser.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--source-per-class", type=int, default=1000)
    parser.add_argument("--source-epochs", type=int, default=15)
    parser.add_argument("--target-per-class", type=int, default=40)
    parser.add_argument("--target-epochs", type=int, default=30)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    if min(args.seeds, args.source_per_class, args.target_per_class, args.test_per_class,
           args.source_epochs, args.target_epochs, args.batch_size) < 1:
        raise UsageError("--seeds, the per-class counts, the epochs and --batch-size must be "
                         "1 or more")
    return args


@entry_point
def main(argv=None) -> int:
    args = parse(argv)
    train_set, test_set = (fashion(args.fashion_dir, p) for p in ("train", "t10k"))
    seeds = range(args.seeds)
    settings = (args.preset, args.target_epochs, args.batch_size)
    with tempfile.TemporaryDirectory(prefix="init_from_") as work:
        def folders(name, classes, per_class):
            return write_folders(os.path.join(work, name), {
                "train": take(*train_set, classes, per_class),
                "test": take(*test_set, classes, args.test_per_class)})
        source = folders("source", SOURCE_CLASSES, args.source_per_class)
        target = folders("target", TARGET_CLASSES, args.target_per_class)
        source_run = os.path.join(work, "source-run")
        source_top1 = train("train_images.py", [source], source_run, 0, args.preset,
                            args.source_epochs, args.batch_size)
        scratch = [train("train_images.py", [target], os.path.join(work, f"scratch-{s}"), s,
                         *settings) for s in seeds]
        tuned = [train("train_images.py", [target], os.path.join(work, f"init-{s}"), s,
                       *settings, ["--init-from", source_run]) for s in seeds]
        same = {"train": take(*train_set, range(10), args.target_per_class),
                "test": take(*test_set, range(10), args.test_per_class)}
        both = write_folders(os.path.join(work, "all"), same)
        archive = archives.write_tar(os.path.join(work, "fashion-as-cifar-10.tar.gz"),
                                     archives.files_from_arrays("cifar10", same, CLASS_NAMES))
        from_folders = [train("train_images.py", [both], os.path.join(work, f"folders-{s}"),
                              s, *settings) for s in seeds]
        from_archive = [train("train_cifar10.py", ["--data-dir", archive],
                              os.path.join(work, f"archive-{s}"), s, *settings) for s in seeds]
    print(f"\nFashion-MNIST, preset {args.preset}, batch {args.batch_size}, test "
          f"{args.test_per_class} images per class")
    print(f"source: classes 0-4, {args.source_per_class} images each, {args.source_epochs} "
          f"epochs: test top-1 {source_top1:.1%}")
    print(f"target: classes 5-9, {args.target_per_class} images each, {args.target_epochs} "
          "epochs:")
    print(f"  from scratch          {summary(scratch)}")
    print(f"  --init-from source    {summary(tuned)}")
    print(f"  gain, per seed        {', '.join(f'{t - s:+.1%}' for s, t in zip(scratch, tuned))}")
    print(f"same images, 10 classes, {args.target_per_class} each, from scratch:")
    print(f"  class folders         {summary(from_folders)}")
    print(f"  CIFAR-10 archive      {summary(from_archive)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
