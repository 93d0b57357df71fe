"""config.json: the layout that stores a run's TrainConfig and RunOptions, and reading it back
with every unknown or missing key named. No TensorFlow."""
from __future__ import annotations

import dataclasses
from typing import Tuple

from vitcifar.config.settings import CONFIG_FORMAT, RunOptions, TrainConfig
from vitcifar.config.views import leaf_fields, override
from vitcifar.errors import UsageError


def to_json(config: TrainConfig, options: RunOptions) -> dict:
    return {"format": CONFIG_FORMAT, "experiment": dataclasses.asdict(config),
            "run": dataclasses.asdict(options)}


def from_json(values: dict, where: str = "config.json") -> Tuple[TrainConfig, RunOptions]:
    """The (TrainConfig, RunOptions) of a config.json's contents; raises UsageError for a file
    of another format, naming every unknown key or missing experiment setting. A missing run
    option gets its default: any run option may change when a run resumes."""
    if not isinstance(values, dict):
        raise UsageError(f"{where} is not a JSON object")
    if values.get("format") != CONFIG_FORMAT:
        found = f"format {values['format']!r}" if "format" in values else "no format"
        raise UsageError(f"{where} has {found}; this version of the app reads format "
                         f"{CONFIG_FORMAT} only: train the run again with this version, or "
                         "open it with the version that wrote it")
    run_names = {f.name for f in dataclasses.fields(RunOptions)}
    experiment = dict(values.get("experiment") or {})
    run = dict(values.get("run") or {})
    experiment.update(experiment.pop("augmentation", None) or {})
    leaf = {f.name for f in leaf_fields()}
    unknown = sorted((set(values) - {"format", "experiment", "run"}) |
                     (set(experiment) - leaf) | (set(run) - run_names))
    optional = {f.name for f in leaf_fields() if f.metadata.get("optional")}
    missing = sorted(leaf - optional - set(experiment))
    if unknown or missing:
        said = ([f"unknown keys {', '.join(unknown)}"] if unknown else []) + \
               ([f"missing keys {', '.join(missing)}"] if missing else [])
        raise UsageError(f"{where} has {' and '.join(said)}: it was not written by this "
                         "version of the app")

    def tuples(d):                                         # JSON lists -> tuples
        return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:       # validate: a value of the wrong type fails a comparison with a TypeError
        return (override(TrainConfig(), **tuples(experiment)).validate(),
                RunOptions(**tuples(run)).validate())
    except TypeError as error:
        raise UsageError(f"{where} is damaged ({error})") from None
