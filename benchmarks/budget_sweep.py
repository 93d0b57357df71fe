"""Test top-1 against the epochs a run trains, with the regularisation rule and without it.

A GPU's few minutes are tens of epochs of CIFAR, which a CPU cannot reach; a small subset of
Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist; packed as CIFAR-10 as
learning_check.py does) makes the same number of epochs affordable. For each epoch count and
seed, this trains the real train_cifar10.py (`--preset fast --time-budget 0 --epochs N`) once
per arm, by default the rule (`--regularisation auto`) and no rule (`--regularisation off`,
fast's own flips and label smoothing), and prints the test top-1 of each run's best
checkpoint, then a table of the median and range per epoch count, and draws the curves:

    python -m benchmarks.budget_sweep --train-images 1000 --epochs 5 20 80 --seeds 2

--train-images counts the images the app splits into training and validation (15% of them
validation, the app's default). The epoch counts decide the result, not the time, so other
jobs on the machine slow a sweep down without biasing it. --arm LABEL="FLAGS" replaces the
default arms (any training flags, e.g. --arm mix="--mixup-alpha 0.8 --cutmix-alpha 1"); the
arm named by --baseline is the one the others are compared with. Flags after `--` go to
every run. With --keep DIR the archive, the runs and sweep.json stay there, and a run whose
folder already holds its results for the same settings is read, not trained again (unless
the rule in config.py now chooses otherwise for it).
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

from benchmarks.time_to_accuracy import fashion_archive, one_run, summary
from vitcifar.config.flags import Parser
from vitcifar.config.presets import PRESETS
from vitcifar.config.regularisation import regularisation_rule
from vitcifar.errors import UsageError, entry_point

DEFAULT_ARMS = ("rule=--regularisation auto", "off=--regularisation off")
SWEEP_FILE = "sweep.json"     # in a kept run's folder: the settings its results belong to


def parse_arm(text: str) -> tuple:
    label, _, flags = text.partition("=")
    if not label or not _:
        raise UsageError(f'--arm takes LABEL="FLAGS", got {text!r}')
    return label, shlex.split(flags)


def run_once(archive: str, data: list, folder: str, preset: str, seed: int,
             flags: list) -> dict:
    """One training run (time_to_accuracy.one_run), or the kept one trained on the same
    `data` (image counts) with the same flags; returns the run's results.json with its
    history."""
    key = {"data": data, "preset": preset, "seed": seed, "flags": flags}
    record = os.path.join(folder, SWEEP_FILE)
    if os.path.exists(record):
        with open(record, encoding="utf-8") as handle:
            kept = json.load(handle)
        if kept["key"] == key and not stale(kept["results"]):
            print(f"kept: {folder}", flush=True)
            return kept["results"]
    results = one_run(archive, folder, preset, seed, flags)
    with open(record, "w", encoding="utf-8") as handle:
        json.dump({"key": key, "results": results}, handle)
    return results


def stale(results: dict) -> bool:
    """Whether a kept run's regularisation "auto" chose other settings than the rule in
    config.py chooses now for the same epochs and training images (the rule was changed)."""
    record = results.get("regularisation")
    if not record:
        return False
    train_images = results["images_seen"] // results["epochs_completed"]
    patch_size = results["config"]["experiment"]["patch_size"]
    now = regularisation_rule(record["epochs"], train_images, patch_size)
    return any(record["settings"][name] != value for name, value in now.items()
               if name not in record["given_as_flags"])


def table(runs: dict, arms: list, epochs: list, baseline: str) -> str:
    """Markdown: per epoch count, each arm's test top-1 median (range), each arm's median
    minus the baseline's, and the baseline's train top-1 at its last epoch."""
    others = [a for a in arms if a != baseline]
    header = (["epochs"] + [f"{a}: test top-1" for a in arms]
              + [f"{a} - {baseline}" for a in others] + [f"{baseline}: train top-1 at the end"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for count in epochs:
        tops = {a: [r["test_top1"] for r in runs[a, count]] for a in arms}
        train = [r["history"][-1]["top1"] for r in runs[baseline, count]]
        cells = ([str(count)] + [summary(tops[a], "%", 100) for a in arms]
                 + [f"{100 * (statistics.median(tops[a]) - statistics.median(tops[baseline])):+.1f}"
                    for a in others]
                 + [f"{100 * statistics.median(train):.1f}%"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def draw(path: str, runs: dict, arms: list, epochs: list, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for arm in arms:
        tops = [[100 * r["test_top1"] for r in runs[arm, count]] for count in epochs]
        line, = axes.plot(epochs, [statistics.median(t) for t in tops], marker="o", label=arm)
        axes.fill_between(epochs, [min(t) for t in tops], [max(t) for t in tops],
                          color=line.get_color(), alpha=0.2, linewidth=0)
    axes.set_xscale("log")
    axes.set_xticks(epochs, [str(e) for e in epochs])
    axes.minorticks_off()
    axes.set_xlabel("epochs trained")
    axes.set_ylabel("test top-1 (%), median and range over seeds")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


@entry_point
def parse(argv):
    """(args, arms, extra training flags), checked."""
    parser = Parser(prog="budget_sweep.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=2000,
                        help="Fashion-MNIST training images used, validation included (first N)")
    parser.add_argument("--test-images", type=int, default=5000,
                        help="test images (first N of the 10,000)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[5, 15, 45])
    parser.add_argument("--seeds", type=int, default=2, help="runs per point, seeds 0..N-1")
    parser.add_argument("--preset", default="fast", choices=sorted(PRESETS))
    parser.add_argument("--arm", action="append", metavar='LABEL="FLAGS"',
                        help=f"an arm: a label and its training flags (default: "
                             f"{' and '.join(repr(a) for a in DEFAULT_ARMS)})")
    parser.add_argument("--baseline", default="off", help="the arm the others are compared with")
    parser.add_argument("--figure", default="budget_sweep.png", help="the PNG to draw")
    parser.add_argument("--fashion-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--keep", metavar="DIR", help="keep the archive, runs and sweep.json")
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    arms = dict(parse_arm(a) for a in (args.arm or DEFAULT_ARMS))
    if args.baseline not in arms:
        raise UsageError(f"--baseline {args.baseline} is not an arm ({', '.join(arms)})")
    if args.seeds < 1 or min(args.epochs) < 1 or not 20 <= args.train_images <= 60000 \
            or not 1 <= args.test_images <= 10000:
        raise UsageError("--seeds and --epochs must be 1 or more, --train-images 20 to "
                         "60000, --test-images 1 to 10000")
    return args, arms, extra


def main(argv=None) -> int:
    args, arms, extra = parse(argv)
    epochs = sorted(set(args.epochs))
    started = time.time()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    runs = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or scratch
        os.makedirs(folder, exist_ok=True)
        archive = fashion_archive(folder, args.fashion_dir, args.train_images,
                                  args.test_images)
        for count in epochs:            # arms interleaved: any drift in load hits all alike
            for seed in range(args.seeds):
                for arm, flags in arms.items():
                    result = run_once(archive, [args.train_images, args.test_images],
                                      os.path.join(folder, f"{arm}-e{count}-s{seed}"),
                                      args.preset, seed,
                                      ["--time-budget", "0", "--epochs", str(count),
                                       "--no-tensorboard", *flags, *extra])
                    runs.setdefault((arm, count), []).append(result)
                    print(f"  {arm}, {count} epochs, seed {seed}: test top-1 "
                          f"{result['test_top1']:.2%} (best epoch {result['best_epoch']}, "
                          f"train top-1 at the end {result['history'][-1]['top1']:.1%})",
                          flush=True)
        if args.keep:
            with open(os.path.join(folder, SWEEP_FILE), "w", encoding="utf-8") as handle:
                json.dump({f"{arm} {count}": r for (arm, count), r in runs.items()}, handle)
    train = int(args.train_images * (1 - PRESETS[args.preset].validation_fraction))
    title = (f"{args.preset}, Fashion-MNIST: {train:,} training images, {args.test_images:,} "
             f"test, {args.seeds} seed(s)")
    draw(args.figure, runs, list(arms), epochs, title)
    device = runs[next(iter(arms)), epochs[0]][0]["device_name"]
    print(f"\n{title}; {device}, {platform.machine()}, {os.cpu_count()} cores; "
          f"{(time.time() - started) / 60:.0f} min, load average {load:.1f} at the start")
    for arm, flags in arms.items():
        print(f"  {arm}: {' '.join(flags) or '(preset as is)'}")
    print(table(runs, list(arms), epochs, args.baseline))
    print(f"figure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
