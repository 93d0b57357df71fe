#!/usr/bin/env python3
"""Where a training step's time goes: the TensorFlow profiler over a few steps of the app's
model on one fixed batch (as `train_throughput.py --model-only`), summed by op type.

    python -m benchmarks.profile_step                  # sample preset, batch 128
    python -m benchmarks.profile_step --steps 5 --top 30

Prints, per op type, the milliseconds per step and the share of all op time. Times are
summed over TensorFlow's threads, so they add up to more than the wall time of a step; read
them as shares. Dropout's mask ops are also totalled on their own line, found by op name.
Every flag of train_cifar10.py (preset, model size, ...) works here too.
"""
from __future__ import annotations

import collections
import glob
import os
import sys
import tempfile

from vitcifar.commands import train as train_command
from vitcifar.config import flags
from vitcifar.config.datasets import IMAGE_SIZE
from vitcifar.errors import UsageError, entry_point
from vitcifar.training import precision


def parse(argv):
    parser, group = flags.build_tool_parser(
        "profile_step.py", "Op-type profile of the app's training step on one fixed batch.",
        group="profile")
    group.add_argument("--steps", type=int, default=3, help="profiled steps (3)")
    group.add_argument("--top", type=int, default=20, help="op types listed (20)")
    args = parser.parse_args(argv)
    if "batch_size" not in vars(args):
        args.batch_size = 128
    if args.steps <= 0 or args.top <= 0:
        raise UsageError("--steps and --top must be positive")
    return (*flags.configs_from_args("cifar10", args), args)


def op_times(logdir: str):
    """{op type: summed milliseconds} and {op name: summed milliseconds} from the trace."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2  # TF >= 2.12
    except ImportError:
        from tensorflow.core.profiler.protobuf import xplane_pb2  # TF 2.10
    by_type, by_name = collections.Counter(), collections.Counter()
    for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            for line in plane.lines:
                for event in line.events:
                    name = plane.event_metadata[event.metadata_id].name
                    # kernels are "scope/op:Type"; skip runtime events ("Executor::Run", ...)
                    if ":" not in name or "::" in name or ": " in name:
                        continue
                    op_name, op_type = name.rsplit(":", 1)
                    by_type[op_type] += event.duration_ps / 1e9
                    by_name[op_name] += event.duration_ps / 1e9
    return by_type, by_name


@entry_point
def main(argv=None) -> int:
    config, options, args, device = train_command.start_tool(parse, argv)
    import numpy as np
    import tensorflow as tf

    from vit_model import build_model
    from vitcifar.backend import devices
    from vitcifar.training import compiled

    tf.keras.utils.set_random_seed(config.seed)
    precision.set_policy(options.mixed_precision, device, config)
    rng = np.random.default_rng(config.seed)
    x = rng.integers(0, 256, (config.batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    y = rng.integers(0, config.num_classes, config.batch_size)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model = build_model(config)
    compiled.compile_model(model, config, jit_compile=devices.use_xla(options.xla, device),
                           steps_per_execution=options.steps_per_execution)
    model.fit(data, steps_per_epoch=5, epochs=1, verbose=0, shuffle=False)     # trace, warm up
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(data, steps_per_epoch=args.steps, epochs=1, verbose=0, shuffle=False)
        tf.profiler.experimental.stop()
        by_type, by_name = op_times(logdir)

    total = sum(by_type.values())
    print(f"{device.describe()} | TensorFlow {tf.__version__} | batch {config.batch_size}, "
          f"{args.steps} steps; op time summed over threads: {total / args.steps:.1f} ms/step")
    for op_type, ms in by_type.most_common(args.top):
        print(f"  {op_type:32s} {ms / args.steps:8.1f} ms/step  {ms / total:6.1%}")
    dropout = sum(ms for name, ms in by_name.items() if "dropout" in name.lower())
    print(f"  {'(all ops named *dropout*)':32s} {dropout / args.steps:8.1f} ms/step  "
          f"{dropout / total:6.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
