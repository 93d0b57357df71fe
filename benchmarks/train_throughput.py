#!/usr/bin/env python3
"""Training images per second of the app's own training path, on whatever stack and device
this Python has.

    python -m benchmarks.train_throughput                      # sample preset, batch 128
    python -m benchmarks.train_throughput --preset tiny --steps 10
    python -m benchmarks.train_throughput --model-only         # one fixed batch, no tf.data
    python -m benchmarks.train_throughput --preset fast --compare-precisions

What runs is what `train_cifar10.py` runs: synthetic uint8 CIFAR-shaped images (42,500 by
default, like the sample's training split) go through `input_pipeline.train_dataset` with
`input_pipeline.make_augment`, into the model from `build_model(config)` compiled by
`compiled.compile_model` (loss, optimizer, top-1/top-5 metrics, XLA choice, steps per
execution), in the precision `--mixed-precision` gives (precision.py), trained by
`model.fit`. Only the data are synthetic and there is no validation pass. `--model-only`
feeds one fixed uint8 batch, with labels encoded as the pipeline encodes them, over and over
instead of the pipeline, to compare with benchmarks that time fixed random batches
(../shared/peers).

After `--warmup` untimed steps (tracing, warm caches), `--windows` windows of `--steps`
steps each are timed, each window a model.fit call whose first step is not timed. Printed:
the precision and why, the median images/s of the windows with their spread, peak memory,
FLOPs per image (flops.py) with the FLOP/s they give, and that as a share of this machine's
matrix-multiply peak in the same number format, measured in the same run (a 4096x4096
tf.matmul, --peak-size; the bfloat16 peak beside the float32 one where the CPU has bfloat16
arithmetic). Every flag of train_cifar10.py (preset, model size, --xla,
--steps-per-execution, ...) works here too.

    python -m benchmarks.train_throughput --compare-precisions

builds the model once per precision this device runs (float32, bfloat16 where possible,
float16 on CUDA) in this process and times their windows in turn, so that the ratios are
measured under the same load; prints a table, and what --mixed-precision auto picks here.

    python -m benchmarks.train_throughput --all-presets          # one line per preset

runs the benchmark once per preset (each in its own process, the preset's own batch size
unless --batch-size is given) and prints a table (with --compare-precisions: a table per
preset).
"""
from __future__ import annotations

import os
import re
import resource
import statistics
import subprocess
import sys
import time

from vitcifar.analysis import flops
from vitcifar.commands import train as train_command
from vitcifar.config import flags
from vitcifar.config.datasets import DATASETS, IMAGE_SIZE
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import flag_name
from vitcifar.errors import UsageError, entry_point
from vitcifar.training import precision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
    parser, group = flags.build_tool_parser(
        "train_throughput.py", "Training throughput of the app's training path (tf.data "
        "pipeline, compile_model, model.fit) on synthetic data.")
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
                       help="side of the square matmul timed for each format's peak (4096)")
    group.add_argument("--compare-precisions", action="store_true", default=False,
                       help="time every precision this device runs, window by window in "
                            "turn, and print a table")
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


PEAK_DTYPES = {precision.FLOAT32: "float32", precision.FLOAT16: "float16",
               precision.BFLOAT16: "bfloat16"}


def matmul_peak(tf, size: int, dtype: str = "float32", repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` (size x size) @ (size x size) products in `dtype`."""
    a = tf.cast(tf.random.uniform((size, size)), dtype)
    b = tf.cast(tf.random.uniform((size, size)), dtype)
    product = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y), tf.float32)))
    product(a, b).numpy()                                       # trace and warm up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product(a, b).numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


def all_presets(argv) -> int:
    """--all-presets: this script once per preset, in a process each; a table of the lines,
    or with --compare-precisions each preset's own table."""
    rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--all-presets"]
    compare = "--compare-precisions" in rest
    if not compare:
        print(f"{'preset':16s} {'batch':>5s} {'precision':>15s} {'images/s':>9s} "
              f"{'MFLOP/image':>12s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name in PRESETS:
        out = subprocess.run([sys.executable, "-m", __spec__.name, "--preset", name,
                              *rest], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            print(f"{name:16s} failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        if compare:
            print(f"\n== {name} ==\n{out.stdout.strip()}", flush=True)
            continue
        rate = re.search(r"train throughput: ([\d.]+) images/s", out.stdout).group(1)
        flop = re.search(r"FLOPs: ([\d.]+) MFLOP per image per training step; ([\d.]+) "
                         r"GFLOP/s at the median rate, ([\d.]+)% of", out.stdout)
        batch = re.search(r"preset, batch (\d+)", out.stdout).group(1)
        chosen = re.search(r"precision: (float32|mixed \w+)", out.stdout).group(1)
        print(f"{name:16s} {batch:>5s} {chosen:>15s} {float(rate):9.1f} {flop.group(1):>12s} "
              f"{flop.group(2):>8s} {flop.group(3) + '%':>8s}", flush=True)
    return 0


def compared_policies(device) -> list:
    """float32 first, then each mixed precision `device` runs (precision.check)."""
    runnable = [precision.FLOAT32]
    for name in (precision.BFLOAT16, precision.FLOAT16):
        if name == precision.FLOAT16 and device.kind != "CUDA":
            continue                      # a CPU emulates float16: no contender
        try:
            precision.check(name, device)
        except UsageError:
            continue
        runnable.append(name)
    return runnable


def spread(values, digits: int = 1, unit: str = "") -> str:
    """"median (min-max)" of `values`."""
    return (f"{statistics.median(values):.{digits}f}{unit} ({min(values):.{digits}f}-"
            f"{max(values):.{digits}f}{unit})")


@entry_point
def timing_data(config, options, args):
    """(the batches to time, a description): one fixed uint8 batch (--model-only), or the
    input pipeline with augmentation over synthetic uint8 images, whole batches only."""
    import numpy as np
    import tensorflow as tf

    from vitcifar.data import input_pipeline
    batch, shape = config.batch_size, (IMAGE_SIZE, IMAGE_SIZE, 3)
    rng = np.random.default_rng(config.seed)
    one_hot = input_pipeline.label_classes(config)
    longest = max(args.warmup, args.steps + options.steps_per_execution)   # one fit call
    if args.model_only:
        x = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
        y = input_pipeline.encode_labels(rng.integers(0, config.num_classes, batch), one_hot)
        return (tf.data.Dataset.from_tensors((x, y)).repeat(),
                "one fixed uint8 batch (no input pipeline)")
    # whole batches only: an epoch's short last batch would land in a timed window
    count = max(batch, args.images - args.images % batch)
    x = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
    y = rng.integers(0, config.num_classes, count)
    epochs = -(-longest // input_pipeline.steps_per_epoch(count, batch))
    augment = input_pipeline.make_augment(config.augmentation, one_hot)
    return (input_pipeline.train_dataset(x, y, batch, augment, config.seed, 0, epochs),
            f"input pipeline with augmentation, {count:,} synthetic uint8 images")


def measure(models: dict, data, args, batch: int, per_call: int) -> dict:
    """{policy: [images/s per window]}: every model warmed up, then the windows timed with
    the order of the models alternating window by window."""
    from vitcifar.training import fit_loop

    def fit(model, steps):
        timer = fit_loop.StepTimer()
        model.fit(data, steps_per_epoch=steps, epochs=1, callbacks=[timer], shuffle=False,
                  verbose=0)
        return timer.at

    policies = list(models)
    for model in models.values():
        fit(model, args.warmup)
    rates = {name: [] for name in policies}
    for window in range(args.windows):
        for name in (policies if window % 2 == 0 else policies[::-1]):
            at = fit(models[name], args.steps + per_call)     # the first execution untimed
            rates[name].append(batch * args.steps /
                               (at[args.steps + per_call - 1] - at[per_call - 1]))
    return rates


def report(config, options, args, device, chosen, rates: dict, path: str, xla: bool) -> None:
    """Prints the setting, the rates per precision, FLOP/s against the matmul peaks."""
    import tensorflow as tf

    from vitcifar.backend import devices
    policies, batch, per_call = list(rates), config.batch_size, options.steps_per_execution
    v = devices.versions()
    preset = getattr(args, "preset", "sample")
    shown = chosen.describe() if not args.compare_precisions else \
        ", ".join(precision.NAMES[name] for name in policies) + " compared"
    print(f"ViT {preset} preset, batch {batch}, {config.num_classes} classes | "
          f"{devices.describe_versions(v)} | {device.describe()}, XLA {'on' if xla else 'off'}, "
          f"steps_per_execution {per_call}")
    print(f"precision: {shown}")
    print(f"path: {path} -> compile_model -> model.fit; {args.warmup} warm-up steps, "
          f"{args.windows} windows of {args.steps} steps")
    print(f"peak memory: {peak_memory(tf)}")
    formats = list(dict.fromkeys([precision.FLOAT32, *policies]))
    if device.kind == "CPU" and precision.cpu_bf16_features():
        formats = list(dict.fromkeys([*formats, precision.BFLOAT16]))  # beside float32's
    peaks = {name: matmul_peak(tf, args.peak_size, PEAK_DTYPES[name]) for name in formats}
    peaks_said = ", ".join(f"{PEAK_DTYPES[name]} {value:.0f} GFLOP/s"
                           for name, value in peaks.items())
    flop = flops.train_flops_per_image(config)
    for name in policies:
        median = statistics.median(rates[name])
        spread_share = (max(rates[name]) - min(rates[name])) / 2 / median
        if len(policies) > 1:
            print(f"-- {precision.NAMES[name]}")
        print(f"train throughput: {median:.1f} images/s (median of {args.windows} windows; "
              f"min {min(rates[name]):.1f}, max {max(rates[name]):.1f}, spread "
              f"+-{spread_share:.1%}); overall "
              f"{len(rates[name]) / sum(1 / rate for rate in rates[name]):.1f} images/s "
              "over all timed steps")
        print(f"FLOPs: {flop / 1e6:.1f} MFLOP per image per training step; "
              f"{median * flop / 1e9:.1f} GFLOP/s at the median rate, "
              f"{median * flop / 1e9 / peaks[name]:.1%} of this machine's {PEAK_DTYPES[name]} "
              f"matmul peak ({peaks[name]:.0f} GFLOP/s, {args.peak_size}x{args.peak_size} "
              "tf.matmul; FLOPs: matmuls only, a step = 3x forward)")
    print(f"matmul peaks, {args.peak_size}x{args.peak_size}: {peaks_said}")
    if args.compare_precisions:
        print(comparison_table(policies, rates, flop, peaks))
        automatic = chosen if options.mixed_precision == "auto" else \
            precision.decide("auto", device, config)
        print(f"--mixed-precision auto picks here: {automatic.describe()}")


def main(argv=None) -> int:
    if "--all-presets" in (argv if argv is not None else sys.argv[1:]):
        return all_presets(argv)
    config, options, args, device = train_command.start_tool(parse, argv)
    from vit_model import build_model
    from vitcifar.backend import devices
    from vitcifar.backend.keras_compat import keras      # on --backend torch too
    from vitcifar.training import compiled

    batch = config.batch_size
    chosen = precision.decide(options.mixed_precision, device, config)   # before seeding
    policies = compared_policies(device) if args.compare_precisions else [chosen.policy]
    keras.utils.set_random_seed(config.seed)
    data, path = timing_data(config, options, args)
    xla = devices.use_xla(options.xla, device)
    models = {}
    for name in policies:
        with precision.policy(name):
            models[name] = build_model(config)
            compiled.compile_model(models[name], config, jit_compile=xla,
                                   steps_per_execution=options.steps_per_execution)
    rates = measure(models, data, args, batch, options.steps_per_execution)
    report(config, options, args, device, chosen, rates, path, xla)
    return 0


def comparison_table(policies, rates, flop: float, peaks: dict) -> str:
    """One row per precision: images/s, GFLOP/s and share of its own matmul peak, and its
    speed against float32's as the median (range) of the windows' ratios."""
    lines = [f"{'precision':16s} {'images/s median (range)':>26s} {'GFLOP/s':>8s} "
             f"{'of its peak':>12s} {'x float32, per window':>24s}"]
    base = rates[precision.FLOAT32]
    for name in policies:
        median = statistics.median(rates[name])
        ratios = [rate / float32 for rate, float32 in zip(rates[name], base)]
        lines.append(f"{precision.NAMES[name]:16s} {spread(rates[name]):>26s} "
                     f"{median * flop / 1e9:8.1f} {median * flop / 1e9 / peaks[name]:12.1%} "
                     f"{spread(ratios, 2, 'x'):>24s}")
    return "\n".join(lines)


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
