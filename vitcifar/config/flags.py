"""Command-line flags: the one-line-error parser every command uses, and the training flags,
generated from the fields of config.TrainConfig (the augmentation's included) and
config.RunOptions. No TensorFlow: a bad flag fails in well under a second.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
import typing
from typing import Dict, List, Optional, Tuple

from vitcifar.config.datasets import DATASETS, IMAGES
from vitcifar.config.presets import PRESETS
from vitcifar.config.regularisation import noting_given
from vitcifar.config.settings import Augmentation, RunOptions, TrainConfig, flag_name
from vitcifar.config.views import flat, leaf_fields, override
from vitcifar.errors import UsageError


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a UsageError (one line, exit code 2), that takes
    no abbreviations (--batch 0 is not silently --batch-size 0), and that suggests the
    nearest flag for an unknown one."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, not the usage block
        unknown = re.match(r"unrecognized arguments: (\S+)", message)
        if unknown:
            flag = unknown.group(1).split("=")[0]
            near = difflib.get_close_matches(flag, self._option_string_actions, n=1)
            if near:
                message += f"; did you mean {near[0]}?"
        raise UsageError(f"{message} (see --help)")


def _argument_type(hint):
    """(argparse type, nargs) for a field's type hint."""
    if typing.get_origin(hint) is typing.Union:          # Optional[X]
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:                  # Tuple[int, ...], may be empty
        return typing.get_args(hint)[0], "*"
    return hint, None


def _type_hints() -> dict:
    hints = {}
    for cls in (TrainConfig, Augmentation, RunOptions):
        hints.update(typing.get_type_hints(cls))
    return hints


def setting_fields(dataset: str) -> List[dataclasses.Field]:
    """Every field that is a training flag of `dataset`'s command: the experiment's leaves,
    then the run options. A CIFAR command has not the folder's settings (folders=True);
    train_images.py has no --data-dir: its DIR argument is the data."""
    every = [f for f in leaf_fields(TrainConfig) + list(dataclasses.fields(RunOptions))
             if f.metadata.get("cli", True)]
    if dataset == IMAGES:
        return [f for f in every if f.name != "data_dir"]
    return [f for f in every if not f.metadata.get("folders")]


def build_train_parser(dataset: str) -> Parser:
    if dataset == IMAGES:
        parser = Parser(
            prog="train_images.py", argument_default=argparse.SUPPRESS,
            description="Train a Vision Transformer on your own images, DIR/train/CLASS/ (and "
                        "DIR/test/CLASS/), on a DirectML or CUDA GPU or the CPU. Each flag "
                        "overrides the chosen preset.")
        parser.add_argument("data_dir", metavar="DIR", help="the folder of class folders: "
                            "DIR/train/CLASS/*.jpg|png|gif|bmp, optionally DIR/test/CLASS/")
    else:
        parser = Parser(
            prog=f"train_{dataset}.py", argument_default=argparse.SUPPRESS,
            description=f"Train a Vision Transformer from scratch on "
                        f"{DATASETS[dataset].display_name}, on a DirectML or CUDA GPU or the "
                        "CPU. Each flag overrides the chosen preset.")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="named starting configuration (default: sample, the seed "
                             "sample's model and schedule); with an --output-dir that holds "
                             "a run, only checked against it: the run keeps its settings")
    parser.add_argument("--list-devices", action="store_true",
                        help="print the devices TensorFlow sees and exit")
    parser.add_argument("--restart", action="store_true",
                        help="start the run in --output-dir over, with the preset and the "
                             "flags given, instead of resuming it")
    parser.add_argument("--init-from", metavar="RUN_DIR",
                        help="start from that run's best weights (all but the classifier when "
                             "the classes differ; the position table resized when the patch "
                             "grid differs); a resumed run keeps its own weights")
    add_verbose_flag(parser)
    add_setting_flags(parser, dataset)
    return parser


def build_tool_parser(prog: str, description: str, group: str = "benchmark"
                      ) -> Tuple[Parser, argparse._ArgumentGroup]:
    """train_cifar10.py's flags under a benchmark's name, and an argument group for the
    tool's own flags: a tool that trains as the app does takes the app's flags."""
    parser = build_train_parser("cifar10")
    parser.prog, parser.description = prog, description
    return parser, parser.add_argument_group(group)


def add_verbose_flag(parser: argparse.ArgumentParser) -> None:
    """--verbose: show TensorFlow's C++ start-up logs, which devices.prepare_environment
    hides by default."""
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's C++ log lines (start-up notices, warnings), "
                             "hidden by default unless TF_CPP_MIN_LOG_LEVEL is set")


def add_saved_run_arguments(parser: argparse.ArgumentParser) -> None:
    """RUN_DIR and --data-dir, for the commands that read a saved run and the test set."""
    parser.add_argument("run_dir", help="a run directory written by train_cifar10.py, "
                                        "train_cifar100.py or train_images.py")
    parser.add_argument("--data-dir", help="where the test set is: a folder holding the "
                                           "CIFAR archive or its extracted folder, or the "
                                           "archive file itself; for a train_images.py run, "
                                           "its DIR (default: where the run read its data)")


def add_backend_flag(parser: argparse.ArgumentParser) -> None:
    """--backend, for the commands that open a saved run (run_command reads it from argv
    before the parser runs: Keras must not be imported yet)."""
    field = next(f for f in dataclasses.fields(RunOptions) if f.name == "backend")
    parser.add_argument("--backend", help=field.metadata["help"])


def backend_requested(argv: List[str]) -> Optional[str]:
    """The value of --backend X (or --backend=X) in argv before any `--`; None without it:
    for commands that must prepare the environment before they parse their flags."""
    argv = argv[:argv.index("--")] if "--" in argv else argv
    for index, arg in enumerate(argv):
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
        if arg == "--backend" and index + 1 < len(argv):
            return argv[index + 1]
    return None


def verbose_requested(argv: List[str]) -> bool:
    """Whether argv (before any `--`) has --verbose: for commands that must prepare the
    environment before they parse their flags."""
    return "--verbose" in (argv[:argv.index("--")] if "--" in argv else argv)


def add_setting_flags(parser: argparse.ArgumentParser, dataset: str) -> None:
    """One flag per setting of `dataset`'s command, its help ending with the sample
    preset's value."""
    hints = _type_hints()
    shown_defaults = {**flat(PRESETS["sample"]), **dataclasses.asdict(RunOptions())}
    for field in setting_fields(dataset):
        default = shown_defaults[field.name]
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{field.metadata['help']} (sample: {shown})"
        kind, nargs = _argument_type(hints[field.name])
        if kind is bool:
            parser.add_argument(flag_name(field.name), action=argparse.BooleanOptionalAction,
                                help=help_text)
        else:
            parser.add_argument(flag_name(field.name), type=kind, nargs=nargs, help=help_text,
                                choices=field.metadata.get("choices"),
                                metavar=field.name.upper())


def given_settings(args: argparse.Namespace) -> Dict[str, object]:
    """{setting: value} of the setting flags given on the command line (nargs lists as
    tuples); flags not given are absent (the parser suppresses their defaults)."""
    names = {f.name for dataset in (IMAGES, *DATASETS) for f in setting_fields(dataset)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
            if k in names}


def split_settings(settings: Dict[str, object]) -> Tuple[dict, dict]:
    """({experiment leaf: value}, {run option: value}) of a flat settings dict."""
    run_names = {f.name for f in dataclasses.fields(RunOptions)}
    return ({k: v for k, v in settings.items() if k not in run_names},
            {k: v for k, v in settings.items() if k in run_names})


def apply_settings(config: TrainConfig, options: RunOptions,
                   settings: Dict[str, object]) -> Tuple[TrainConfig, RunOptions]:
    """config and options with `settings` (flat, as given_settings returns) applied, both
    validated."""
    experiment, run = split_settings(settings)
    return (override(config, **experiment).validate(),
            dataclasses.replace(options, **run).validate())


def parse_train_flags(dataset: str, argv: Optional[List[str]]
                      ) -> Tuple[TrainConfig, RunOptions, argparse.Namespace]:
    """The validated experiment (the preset, overridden by every setting flag given) and run
    options these flags describe, and the parsed flags."""
    args = build_train_parser(dataset).parse_args(argv)
    return (*configs_from_args(dataset, args), args)


def configs_from_args(dataset: str, args: argparse.Namespace
                      ) -> Tuple[TrainConfig, RunOptions]:
    """The validated experiment and run options of flags parsed by a parser from
    build_train_parser (other attributes of `args` are ignored)."""
    given = given_settings(args)
    preset = noting_given(dataclasses.replace(PRESETS[getattr(args, "preset", "sample")],
                                              dataset=dataset), given)
    return apply_settings(preset, RunOptions(), given)
