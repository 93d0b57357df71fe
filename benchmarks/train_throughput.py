#!/usr/bin/env python3
"""Training images per second of the app's own training path, on whatever stack and device
this Python has.

    python -m benchmarks.train_throughput                      # sample preset, batch 128
    python -m benchmarks.train_throughput --preset tiny --steps 10
    python -m benchmarks.train_throughput --model-only         # one fixed batch, no tf.data

What runs is what `train_cifar10.py` runs: synthetic uint8 CIFAR-shaped images (42,500 by
default, like the sample's training split) go through `input_pipeline.train_dataset` with
`input_pipeline.make_augment`, into the model from `build_model(config)` compiled by
`training.compile_model` (loss, optimizer, top-1/top-5 metrics, XLA choice, steps per
execution),
trained by `model.fit`. Only the data are synthetic and there is no validation pass.
`--model-only` feeds one fixed uint8 batch over and over instead of the pipeline, to compare
with benchmarks that time fixed random batches (../shared/peers).

After `--warmup` untimed steps (tracing, filling the shuffle buffer), `--windows` windows of
`--steps` steps each are timed. Printed: the median images/s of the windows with their
spread, the rate over all timed steps, peak memory, FLOPs per image (flops.py) with the
FLOP/s they give, and that as a share of this machine's float32 matrix-multiply peak,
measured in the same run (a 4096x4096 tf.matmul, --peak-size). Every flag of
train_cifar10.py (preset, model size, --xla, --steps-per-execution, ...) works here too.

    python -m benchmarks.train_throughput --all-presets          # one line per preset

runs the benchmark once per preset (each in its own process, the preset's own batch size
unless --batch-size is given) and prints a table.
"""
from __future__ import annotations

import os
import resource
import statistics
import sys
import time

import cli
import flags
import flops
from config import flag_name
from datasets import DATASETS, IMAGE_SIZE
from errors import UsageError, entry_point

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
    parser = flags.build_train_parser("cifar10")
    parser.prog = "train_throughput.py"
    parser.description = ("Training throughput of the app's training path (tf.data pipeline, "
                          "compile_model, model.fit) on synthetic data.")
    group = parser.add_argument_group("benchmark")
    group.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10",
                       help="number of classes of the model (default: cifar10)")
    group.add_argument("--steps", type=int, default=20, help="steps per timed window (20)")
    group.add_argument("--windows", type=int, default=5, help="timed windows (5)")
    group.add_argument("--warmup", type=int, default=5, help="untimed steps first (5)")
    group.add_argument("--images", type=int, default=42_500,
                       help="synthetic training images in the pipeline (42,500)")
    group.add_argument("--model-only", action="store_true", default=False,
                       help="train on one fixed batch, without the input pipeline")
    group.add_argument("--peak-size", type=int, default=4096,
                       help="side of the square float32 matmul timed for the peak (4096)")
    group.add_argument("--all-presets", action="store_true", default=False,
                       help="benchmark every preset, each in its own process")
    args = parser.parse_args(argv)
    if "batch_size" not in vars(args) and not args.all_presets:
        args.batch_size = 128            # the reference figures use batch 128
    config, options = flags.configs_from_args(args.dataset, args)
    step = options.steps_per_execution
    for name in ("steps", "windows", "warmup", "images", "peak_size"):
        if getattr(args, name) <= 0:
            raise UsageError(f"{flag_name(name)} must be positive")
    if args.steps % step or args.warmup % step:
        raise UsageError(f"--steps and --warmup must be multiples of --steps-per-execution {step}")
    return config, options, args


def matmul_peak(tf, size: int, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` float32 (size x size) @ (size x size) products."""
    a = tf.random.uniform((size, size))
    b = tf.random.uniform((size, size))
    product = tf.function(lambda x, y: tf.reduce_sum(tf.matmul(x, y)))
    product(a, b).numpy()                                       # trace and warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def all_presets(argv) -> int:
    """--all-presets: this script once per preset, in a process each; a table of the lines."""
    import re
    import subprocess
    from config import PRESETS
    rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--all-presets"]
    print(f"{'preset':16s} {'batch':>5s} {'images/s':>9s} {'MFLOP/image':>12s} "
          f"{'GFLOP/s':>8s} {'of peak':>8s}")
    for name in PRESETS:
        out = subprocess.run([sys.executable, "-m", __spec__.name, "--preset", name,
                              *rest], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(f"{name:16s} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        rate = re.search(r"train throughput: ([\d.]+) images/s", out.stdout).group(1)
        flop = re.search(r"FLOPs: ([\d.]+) MFLOP per image per training step; ([\d.]+) "
                         r"GFLOP/s at the median rate, ([\d.]+)% of", out.stdout)
        batch = re.search(r"preset, batch (\d+)", out.stdout).group(1)
        print(f"{name:16s} {batch:>5s} {float(rate):9.1f} {flop.group(1):>12s} "
              f"{flop.group(2):>8s} {flop.group(3) + '%':>8s}")
    return 0


@entry_point
def main(argv=None) -> int:
    if "--all-presets" in (argv if argv is not None else sys.argv[1:]):
        return all_presets(argv)
    config, options, args, device = cli.start_tool(parse, argv)
    import devices
    import numpy as np
    import tensorflow as tf
    import input_pipeline
    import fit_loop
    import training
    from vit_model import build_model
    keras = tf.keras

    batch = config.batch_size
    total = args.warmup + args.windows * args.steps
    keras.utils.set_random_seed(config.seed)
    training.set_precision_policy(options, device)
    rng = np.random.default_rng(config.seed)
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if args.model_only:
        x = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
        y = rng.integers(0, config.num_classes, batch)
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
        path = "one fixed uint8 batch (no input pipeline)"
    else:
        # whole batches only: an epoch's short last batch would land in a timed window
        count = max(batch, args.images - args.images % batch)
        x = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        y = rng.integers(0, config.num_classes, count)
        epochs = -(-total // input_pipeline.steps_per_epoch(count, batch))
        augment = input_pipeline.make_augment(config.augmentation,
                                              input_pipeline.label_classes(config))
        data = input_pipeline.train_dataset(x, y, batch, augment, config.seed, 0, epochs)
        path = f"input pipeline with augmentation, {count:,} synthetic uint8 images"

    model = build_model(config)
    xla = devices.use_xla(options.xla, device)
    training.compile_model(model, config, jit_compile=xla,
                           steps_per_execution=options.steps_per_execution)
    timer = fit_loop.StepTimer()
    model.fit(data, steps_per_epoch=total, epochs=1, callbacks=[timer], shuffle=False,
              verbose=0)

    bounds = [args.warmup + i * args.steps - 1 for i in range(args.windows + 1)]
    times = [timer.at[b] for b in bounds]
    rates = [batch * args.steps / (b - a) for a, b in zip(times, times[1:])]
    median = statistics.median(rates)
    overall = batch * args.steps * args.windows / (times[-1] - times[0])
    spread = (max(rates) - min(rates)) / 2 / median
    flop = flops.train_flops_per_image(config)

    v = devices.versions()
    preset = getattr(args, "preset", "sample")
    print(f"ViT {preset} preset, batch {batch}, {config.num_classes} classes | TensorFlow "
          f"{v['tensorflow_version']}, Keras {v['keras_version']}, Python "
          f"{v['python_version']} | {device.describe()}, XLA {'on' if xla else 'off'}, "
          f"{keras.mixed_precision.global_policy().name}, "
          f"steps_per_execution {options.steps_per_execution}")
    print(f"path: {path} -> compile_model -> model.fit; {args.warmup} warm-up steps, "
          f"{args.windows} windows of {args.steps} steps")
    print(f"train throughput: {median:.1f} images/s (median of {args.windows} windows; "
          f"min {min(rates):.1f}, max {max(rates):.1f}, spread +-{spread:.1%}); "
          f"overall {overall:.1f} images/s")
    print(f"peak memory: {peak_memory(tf)}")
    peak = matmul_peak(tf, args.peak_size)
    print(f"FLOPs: {flop / 1e6:.1f} MFLOP per image per training step; "
          f"{median * flop / 1e9:.1f} GFLOP/s at the median rate, "
          f"{median * flop / 1e9 / peak:.1%} of this machine's float32 matmul peak "
          f"({peak:.0f} GFLOP/s, {args.peak_size}x{args.peak_size} tf.matmul; FLOPs: "
          "matmuls only, a step = 3x forward)")
    return 0


def peak_memory(tf) -> str:
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss     # KiB on Linux
    text = f"{rss_kib / 1024:.0f} MiB resident (process peak, data included)"
    for gpu in tf.config.list_logical_devices("GPU")[:1]:
        try:
            info = tf.config.experimental.get_memory_info(gpu.name)
            text += f"; {info['peak'] / 2 ** 20:.0f} MiB peak on {gpu.name}"
        except (ValueError, RuntimeError, tf.errors.OpError):
            pass
    return text


if __name__ == "__main__":
    sys.exit(main())
