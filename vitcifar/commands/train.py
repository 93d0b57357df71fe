"""The start-up order of the training command and of the tools built on its flags.

Order matters: flags are parsed and checked with no TensorFlow loaded (a bad flag fails in
well under a second), then the GPU and Keras variables are set, then TensorFlow is imported
(by devices.detect and by training, which is imported only then, for that reason), then the
tf.distribute strategy is created, before TensorFlow does anything else.
"""
from __future__ import annotations

import argparse
from typing import Callable, List, Optional, Tuple

from vitcifar.backend import devices
from vitcifar.config.datasets import IMAGES
from vitcifar.config.flags import build_train_parser, configs_from_args, given_settings
from vitcifar.config.settings import RunOptions, TrainConfig, flag_name
from vitcifar.errors import entry_point
from vitcifar.runs import folder_run, init_from, resume
from vitcifar.training import distribution, precision
from vitcifar.training.wall_clock import WallClock


def start_tool(parse: Callable, argv: Optional[List[str]]
               ) -> Tuple[TrainConfig, RunOptions, object, devices.Device]:
    """For the benchmark scripts built on the training flags: `parse(argv)` -> (config,
    options, args), then the GPU chosen before TensorFlow starts, then the device, checked
    against --xla and --mixed-precision. Returns (config, options, args, device)."""
    config, options, args = parse(argv)
    devices.prepare_environment(options.gpu, verbose=getattr(args, "verbose", False),
                                backend=options.backend)
    device = devices.detect()
    devices.use_xla(options.xla, device)                 # raise where impossible
    precision.decide(options.mixed_precision, device, config)
    return config, options, args, device


@entry_point
def main(dataset: str, argv: Optional[List[str]] = None) -> int:
    """Runs the training app; returns the exit code (2 for bad input, with a one-line
    message). The wall clock starts here: the time budget counts the whole command."""
    clock = WallClock()
    args = build_train_parser(dataset).parse_args(argv)
    config, options = train_settings(dataset, args)
    init = (init_from.open_source(args.init_from, config)
            if getattr(args, "init_from", None) else None)
    data = None                      # an images run reads its folder now, before TensorFlow
    if dataset == IMAGES:
        with clock.phase("data loading"):
            config, data = folder_run.read(config, options, getattr(args, "restart", False))
    devices.prepare_environment(options.gpu, options.distribute,
                                verbose=getattr(args, "verbose", False),
                                backend=options.backend)
    if options.distribute == "multi-worker":
        distribution.read_tf_config()                  # a bad TF_CONFIG fails before TF
    if getattr(args, "list_devices", False):
        print(devices.list_devices())
        return 0
    device = devices.detect()                          # imports the framework
    cluster = distribution.create(options, device)    # before any other TensorFlow work
    clock.add("start-up", clock.elapsed() - sum(clock.seconds.values()))   # flags, framework
    with clock.phase("precision"):                     # auto may measure (once per shape)
        print(banner(config, options, device, cluster))
    for warning in (device.warning, distribution.warning(options)):
        if warning:
            print(f"warning: {warning}")
    from vitcifar.data import cifar
    from vitcifar.training import trainer
    with clock.phase("data loading"):
        data = data if data is not None else cifar.load(config.dataset, options.data_dir)
    trainer.run(config, options, data, device, restart=getattr(args, "restart", False),
                cluster=cluster, init=init, clock=clock)
    return 0


def train_settings(dataset: str, args: argparse.Namespace) -> Tuple[TrainConfig, RunOptions]:
    """The settings to train with: those of the run in --output-dir (its config.json) with
    the flags given on top, when it holds one and --restart is not given
    (resume.resume_settings says what may change); else the preset with the flags."""
    if not getattr(args, "restart", False) and not getattr(args, "list_devices", False):
        resumed = resume.resume_settings(dataset, getattr(args, "output_dir", None),
                                         given_settings(args), getattr(args, "preset", None))
        if resumed is not None:
            return resumed
    return configs_from_args(dataset, args)


def banner(config: TrainConfig, options: RunOptions, device: devices.Device,
           plan: "distribution.Plan | None" = None) -> str:
    xla = "on" if devices.use_xla(options.xla, device) else "off"
    engine = f"XLA {xla}" if device.backend == "tensorflow" else "eager"   # torch: no XLA
    budget = (f" | time budget {config.time_budget:g} min (epochs set by timing the first "
              "steps)" if config.time_budget else "")
    if config.regularisation == "auto" and not config.regularisation_epochs:
        given = " ".join(flag_name(name) for name in config.regularisation_given)
        budget += (" | regularisation auto: set by the epochs trained"
                   + (f" (given, so kept: {given})" if given else ""))
    plan = plan or distribution.single_device()
    chosen = precision.decide(options.mixed_precision, device, config, plan.workers)
    return (f"ViT on {config.display_name} | {devices.describe_versions(devices.versions())} "
            f"| training on "
            f"{device.describe()}, {engine}, {chosen.describe()} | "
            f"{plan.describe(config.batch_size)}{budget}")
