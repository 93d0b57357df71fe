"""The start-up order of the training command and of the tools built on its flags.

Order matters: flags are parsed and checked with no TensorFlow loaded (a bad flag fails in
well under a second), then the GPU and Keras variables are set, then TensorFlow is imported
(by devices.detect and by training, which is imported only then, for that reason), then the
tf.distribute strategy is created, before TensorFlow does anything else.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import devices
import distribution
from config import RunOptions, TrainConfig
from errors import entry_point
from flags import parse_train_flags


def start_tool(parse: Callable, argv: Optional[List[str]]
               ) -> Tuple[TrainConfig, RunOptions, object, devices.Device]:
    """For the benchmark scripts built on the training flags: `parse(argv)` -> (config,
    options, args), then the GPU chosen before TensorFlow starts, then the device, checked
    against --xla / --mixed-precision. Returns (config, options, args, device)."""
    config, options, args = parse(argv)
    devices.prepare_environment(options.gpu)
    device = devices.detect()
    devices.use_xla(options.xla, device)                 # raise where impossible
    devices.use_mixed_precision(options.mixed_precision, device)
    return config, options, args, device


@entry_point
def main(dataset: str, argv: Optional[List[str]] = None) -> int:
    """Runs the training app; returns the exit code (2 for bad input, with a one-line
    message)."""
    config, options, args = parse_train_flags(dataset, argv)
    devices.prepare_environment(options.gpu, options.distribute)
    if options.distribute == "multi-worker":
        distribution.read_tf_config()                  # a bad TF_CONFIG fails before TF
    if getattr(args, "list_devices", False):
        print(devices.list_devices())
        return 0
    device = devices.detect()
    plan = distribution.create(options, device)       # before any other TensorFlow work
    print(banner(config, options, device, plan))
    for warning in (device.warning, distribution.warning(options)):
        if warning:
            print(f"warning: {warning}")
    import cifar_data
    import training
    data = cifar_data.load(config.dataset, options.data_dir)
    training.run(config, options, data, device, restart=getattr(args, "restart", False),
                 plan=plan)
    return 0


def banner(config: TrainConfig, options: RunOptions, device: devices.Device,
           plan: "distribution.Plan | None" = None) -> str:
    v = devices.versions()
    xla = "on" if devices.use_xla(options.xla, device) else "off"
    precision = ("mixed float16" if devices.use_mixed_precision(options.mixed_precision, device)
                 else "float32")
    plan = plan or distribution.single_device()
    return (f"ViT on {config.display_name} | TensorFlow {v['tensorflow_version']}, Keras "
            f"{v['keras_version']}, Python {v['python_version']} | training on "
            f"{device.describe()}, XLA {xla}, {precision} | {plan.describe(config.batch_size)}")
