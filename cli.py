"""The command line shared by train_cifar10.py and train_cifar100.py.

Order matters: flags are parsed and checked with no TensorFlow loaded (a bad flag fails in
well under a second), then the GPU variables are set, then TensorFlow is imported.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from typing import List, Optional, Tuple

from checkpointing import RunStopped
from config import DATASETS, PRESETS, TrainConfig, UsageError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a UsageError: one line and exit code 2."""

    def error(self, message):  # one line, not the usage block
        raise UsageError(f"{message} (see --help)")


def _argument_type(hint):
    """(argparse type, nargs) for a TrainConfig field's type hint."""
    if typing.get_origin(hint) is typing.Union:          # Optional[X]
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:                  # Tuple[int, ...]
        return typing.get_args(hint)[0], "+"
    return hint, None


def build_parser(dataset: str) -> argparse.ArgumentParser:
    name = DATASETS[dataset][0]
    parser = Parser(
        prog=f"train_{dataset}.py",
        description=f"Train a Vision Transformer from scratch on {name}, on a DirectML or "
                    "CUDA GPU or the CPU. Each flag overrides the chosen preset.",
        argument_default=argparse.SUPPRESS)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sample",
                        help="named starting configuration (default: sample, the seed "
                             "sample's model and schedule)")
    parser.add_argument("--list-devices", action="store_true",
                        help="print the devices TensorFlow sees and exit")
    parser.add_argument("--restart", action="store_true",
                        help="start the run in --output-dir over instead of resuming it")
    hints = typing.get_type_hints(TrainConfig)
    defaults = PRESETS["sample"]
    for field in dataclasses.fields(TrainConfig):
        if not field.metadata.get("cli", True):
            continue
        flag = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{field.metadata['help']} (sample: {shown})"
        kind, nargs = _argument_type(hints[field.name])
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, type=kind, nargs=nargs, help=help_text,
                                choices=field.metadata.get("choices"),
                                metavar=field.name.upper())
    return parser


def parse(dataset: str, argv: Optional[List[str]]) -> Tuple[TrainConfig, argparse.Namespace]:
    """The validated TrainConfig these flags describe, and the parsed flags."""
    args = build_parser(dataset).parse_args(argv)
    return config_from_args(dataset, args), args


def config_from_args(dataset: str, args: argparse.Namespace) -> TrainConfig:
    """The validated TrainConfig of parsed flags: the preset, overridden by every config flag
    given (other attributes of `args` are ignored)."""
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    overrides = {k: tuple(v) if isinstance(v, list) else v          # nargs "+" -> tuples
                 for k, v in vars(args).items() if k in fields and k != "dataset"}
    config = dataclasses.replace(PRESETS[args.preset], dataset=dataset, **overrides)
    return config.validate()


def start_tool(parse, argv: Optional[List[str]]):
    """For the benchmark scripts built on the training flags: `parse(argv)` -> (config, args),
    then the GPU chosen before TensorFlow starts. Returns (config, args, device); bad flags
    end the process with the one-line error and exit code 2."""
    import devices
    try:
        config, args = parse(argv)
        devices.prepare_environment(config.gpu)
        device = devices.detect()
        devices.use_xla(config.xla, device)                   # --xla / --mixed-precision on
        devices.use_mixed_precision(config.mixed_precision, device)   # where impossible
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return config, args, device


def main(dataset: str, argv: Optional[List[str]] = None) -> int:
    """Runs the app; returns the exit code (2 for bad input, with a one-line message)."""
    try:
        config, args = parse(dataset, argv)
        import devices
        devices.prepare_environment(config.gpu)
        if getattr(args, "list_devices", False):
            print(devices.list_devices())
            return 0
        device = devices.detect()
        print(banner(config, device))
        if device.warning:
            print(f"warning: {device.warning}")
        import cifar_data
        import training
        data = cifar_data.load(config.dataset, config.data_dir)
        training.run(config, data, device, restart=getattr(args, "restart", False))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:          # before training started: nothing to save
        print("\nstopped by Ctrl-C before training started", file=sys.stderr)
        return 130
    except RunStopped as error:       # NaN loss, disk full, Ctrl-C: what was saved stays
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


def banner(config: TrainConfig, device) -> str:
    import devices
    v = devices.versions()
    xla = "on" if devices.use_xla(config.xla, device) else "off"
    precision = ("mixed float16" if devices.use_mixed_precision(config.mixed_precision, device)
                 else "float32")
    return (f"ViT on {config.display_name} | TensorFlow {v['tensorflow_version']}, Keras "
            f"{v['keras_version']}, Python {v['python_version']} | training on "
            f"{device.describe()}, XLA {xla}, {precision}")
