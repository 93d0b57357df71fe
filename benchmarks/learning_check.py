#!/usr/bin/env python3
"""Does training really learn? Trains the app on real images and prints the test accuracy.

CIFAR cannot be downloaded on machines without internet, so this packs Fashion-MNIST
(Debian: apt-get install dataset-fashion-mnist) into an archive with the official CIFAR-10
layout (28x28 grey images padded to 32x32 and repeated over 3 channels), then runs the real
entry point, train_cifar10.py, on it:

    python -m benchmarks.learning_check --preset tiny --epochs 5
    python -m benchmarks.learning_check --preset sample --epochs 5 --train-images 10000

Everything after `--` goes to train_cifar10.py unchanged (any training flag), e.g.
`-- --batch-size 128 --mixup-alpha 0.2`. Prints one line with the test top-1 of the run.

The run and its data are temporary unless kept: --keep DIR keeps the run directory, and
--keep-data DIR writes the Fashion-MNIST archive there, so that the kept run's config.json
points at data that still exist and `python evaluate.py DIR` (visualize.py, resuming)
works without --data-dir.
"""
import gzip
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from tests import archives  # the official-layout archive writer the tests use
from vitcifar.config.flags import Parser
from vitcifar.errors import UsageError, entry_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARCHIVE = "fashion-as-cifar-10.tar.gz"
NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat",
         "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def as_cifar(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) grey -> (N, 32, 32, 3): 2 black pixels of padding, grey in every channel."""
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2)])
    return np.repeat(padded[..., None], 3, axis=-1)


@entry_point
def main(argv=None) -> int:
    parser = Parser(
        description=__doc__.split("\n")[0],
        epilog="Flags after -- go to train_cifar10.py, e.g. -- --batch-size 128.")
    parser.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--train-images", type=int, default=10000,
                        help="training images taken from the 60,000 (first N)")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--keep", metavar="DIR", help="keep the run directory here")
    parser.add_argument("--keep-data", metavar="DIR",
                        help=f"write the data archive ({ARCHIVE}) into this folder and keep "
                             "it, so that a kept run can be evaluated and resumed later")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    def load(prefix, count):
        if not os.path.isfile(os.path.join(args.fashion_dir, f"{prefix}-images-idx3-ubyte.gz")):
            raise UsageError(f"no Fashion-MNIST in {args.fashion_dir}: apt-get install "
                             "dataset-fashion-mnist, or pass --fashion-dir")
        x = read_idx(os.path.join(args.fashion_dir, f"{prefix}-images-idx3-ubyte.gz"))[:count]
        y = read_idx(os.path.join(args.fashion_dir, f"{prefix}-labels-idx1-ubyte.gz"))[:count]
        return as_cifar(x), y.astype(np.int64)

    splits = {"train": load("train", args.train_images), "test": load("t10k", args.test_images)}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.keep_data or tmp
        os.makedirs(data_dir, exist_ok=True)
        archive = archives.write_tar(os.path.abspath(os.path.join(data_dir, ARCHIVE)),
                                     archives.files_from_arrays("cifar10", splits, NAMES))
        output_dir = os.path.abspath(args.keep) if args.keep else os.path.join(tmp, "run")
        command = [sys.executable, os.path.join(ROOT, "train_cifar10.py"), "--data-dir",
                   archive, "--output-dir", output_dir, "--preset", args.preset,
                   "--epochs", str(args.epochs), *extra]
        print("running:", " ".join(command[1:]), flush=True)
        if subprocess.call(command, cwd=ROOT) != 0:
            return 1
        with open(os.path.join(output_dir, "results.json"), encoding="utf-8") as handle:
            results = json.load(handle)
    print(f"Fashion-MNIST as CIFAR-10, preset {args.preset}, {args.train_images} training "
          f"images, {results['epochs_completed']} epochs: test top-1 "
          f"{results['test_top1']:.2%} on {args.test_images} test images "
          f"({results['train_seconds']:.0f} s of training on {results['device_name']})")
    if args.keep and not args.keep_data:
        print(f"The data were temporary: evaluate the kept run with python evaluate.py "
              f"{args.keep} --data-dir ARCHIVE, where ARCHIVE is one written by the same "
              f"command with --keep-data DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
