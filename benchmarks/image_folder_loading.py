"""How fast image_folders.load decodes a folder of images, by decoding threads.

    python -m benchmarks.image_folder_loading                          # 50,000 32x32 PNGs
    python -m benchmarks.image_folder_loading --images 5000 --source-size 256 --format jpeg

Writes `--images` images (10 classes, noise with a class pattern, `--source-size` pixels
square, PNG or JPEG) into DIR/train/CLASS/ in a temporary folder, then times
image_folders.load(DIR) (listing, decoding to `--image-size`, the seeded hold-out) `--runs`
times for each thread count of `--workers`, interleaved so that each count sees the same
machine load, and prints images decoded per second: the median of the runs and their range.
The files are read from the page cache after the first run (a cold disk adds its own time).

For comparison it prints what one training epoch on as many images costs at a training rate:
`--train-rate` images/s if given, else the command that measures it
(benchmarks/train_throughput.py, the app's own training path). No TensorFlow here.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from vitcifar.data import image_folders
from vitcifar.errors import UsageError, entry_point

CLASSES = 10


def write_images(root: str, count: int, size: int, kind: str) -> float:
    """Writes `count` size x size images into root/train/class_K/; returns the seconds."""
    from PIL import Image
    started = time.perf_counter()
    for label in range(CLASSES):
        os.makedirs(os.path.join(root, "train", f"class_{label}"))

    def write(index: int) -> None:
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 60, (size, size, 3), np.uint8)      # (S, S, 3) uint8
        label = index % CLASSES
        step = max(1, size // 4)
        row, col = divmod(label % 16, 4)
        pixels[row * step:(row + 1) * step, col * step:(col + 1) * step, label % 3] = 250
        suffix = "png" if kind == "png" else "jpg"
        Image.fromarray(pixels).save(os.path.join(
            root, "train", f"class_{label}", f"{index:06d}.{suffix}"), quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write, range(count)))
    return time.perf_counter() - started


def time_load(root: str, image_size: int, workers: int) -> float:
    """Images per second of one image_folders.load."""
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):          # no progress line
        data = image_folders.load(root, image_size=image_size, workers=workers)
    elapsed = time.perf_counter() - started
    return (len(data.y_train) + len(data.y_test)) / elapsed


def epoch_line(count: int, train_rate: float) -> str:
    if train_rate:
        return (f"for comparison: one training epoch of {count:,} images at {train_rate:,.0f} "
                f"images/s takes {count / train_rate:,.1f} s")
    return ("for comparison: a training epoch of as many images takes images / rate seconds; "
            "measure the rate with `python -m benchmarks.train_throughput --preset fast` "
            "(its 'train throughput: N images/s'), and pass it as --train-rate")


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000, help="images written")
    parser.add_argument("--source-size", type=int, default=32,
                        help="side of the written images, pixels")
    parser.add_argument("--format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--image-size", type=int, default=32, help="side after loading")
    parser.add_argument("--runs", type=int, default=3, help="timed loads per thread count")
    parser.add_argument("--workers", type=int, nargs="+",
                        default=sorted({1, 2, image_folders.default_workers()}),
                        help="decoding thread counts to compare")
    parser.add_argument("--train-rate", type=float, default=0.0,
                        help="training images/s (benchmarks/train_throughput.py) for the "
                             "epoch comparison")
    args = parser.parse_args(argv)
    if args.images < 2 * CLASSES or args.runs < 1 or min(args.workers) < 1:
        raise UsageError(f"--images must be {2 * CLASSES} or more, --runs and --workers 1 "
                         "or more")
    with tempfile.TemporaryDirectory(prefix="image_folders_") as root:
        seconds = write_images(root, args.images, args.source_size, args.format)
        print(f"{os.cpu_count()} CPUs | {args.images:,} {args.source_size}x{args.source_size} "
              f"{args.format.upper()} files, {CLASSES} classes, written in {seconds:.1f} s | "
              f"loaded at {args.image_size}x{args.image_size}, {args.runs} runs per thread "
              "count, interleaved")
        time_load(root, args.image_size, max(args.workers))          # warm the page cache
        rates = {workers: [] for workers in args.workers}
        for _ in range(args.runs):
            for workers in args.workers:
                rates[workers].append(time_load(root, args.image_size, workers))
    print(f"\n{'images decoded per second':28s}{'median':>10s}  (range)")
    for workers, values in rates.items():
        name = f"{workers} thread" + ("s" if workers > 1 else "")
        print(f"{name:28s}{statistics.median(values):10,.0f}  "
              f"({min(values):,.0f} - {max(values):,.0f})")
    best = max(rates, key=lambda w: statistics.median(rates[w]))
    print(f"\nfastest: {best} threads, {args.images / statistics.median(rates[best]):.1f} s "
          f"for the {args.images:,} images")
    print(epoch_line(args.images, args.train_rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
