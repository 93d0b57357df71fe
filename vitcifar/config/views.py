"""Flat views of a run's settings: flags, config.json and messages name the augmentation's
fields without a prefix, as if TrainConfig had no nested Augmentation. No TensorFlow."""
from __future__ import annotations

import dataclasses
from typing import Dict, List

from vitcifar.config.settings import Augmentation, TrainConfig, flag_name


def leaf_fields(cls=TrainConfig) -> List[dataclasses.Field]:
    """The fields of `cls` with the nested dataclass fields (augmentation) replaced by
    theirs: the flat list of settings that flags and messages name."""
    fields = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("nested"):
            fields.extend(leaf_fields(f.default_factory))
        else:
            fields.append(f)
    return fields


def flat(config: TrainConfig) -> Dict[str, object]:
    """{leaf field: value} of the experiment, the augmentation's fields included."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if not f.metadata.get("nested")}
    values.update({f.name: getattr(config.augmentation, f.name)
                   for f in dataclasses.fields(Augmentation)})
    return values


def override(config: TrainConfig, **values) -> TrainConfig:
    """`config` with leaf fields replaced, the augmentation's by their own names:
    override(PRESETS["tiny"], epochs=2, mixup_alpha=0.2). Unknown names raise TypeError."""
    augmentation_names = {f.name for f in dataclasses.fields(Augmentation)}
    augmentation = {k: v for k, v in values.items() if k in augmentation_names}
    top = {k: v for k, v in values.items() if k not in augmentation_names}
    return dataclasses.replace(config, **top, augmentation=dataclasses.replace(
        config.augmentation, **augmentation))


def listed_differences(differences) -> str:
    """(field, value, other value) triples as one message's list: "--num-layers 8, not 4,
    --head-units 512 256, not 64"."""
    def shown(value):
        return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return ", ".join(f"{flag_name(name)} {shown(value)}, not {shown(other)}"
                     for name, value, other in differences)


def differences_that_block_resume(saved: TrainConfig, wanted: TrainConfig) -> list:
    """(field, saved value, wanted value) for every experiment setting that differs and would
    make a resumed run a different run (all but the resumable ones), in field order."""
    old, new = flat(saved), flat(wanted)
    return [(f.name, old[f.name], new[f.name]) for f in leaf_fields()
            if not f.metadata.get("resumable") and old[f.name] != new[f.name]]
