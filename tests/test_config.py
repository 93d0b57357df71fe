"""config.py: the experiment and run options, presets, config.json, resume checks."""
import dataclasses
import json

import pytest

from vitcifar.config import config_file, views
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import Augmentation, RunOptions, TrainConfig
from vitcifar.config.views import override
from vitcifar.errors import UsageError


def test_override_reaches_the_nested_augmentation_and_refuses_unknown_names():
    tiny = override(PRESETS["tiny"], epochs=2, mixup_alpha=0.2, crop_padding=0)
    assert tiny.epochs == 2 and tiny.num_layers == PRESETS["tiny"].num_layers
    assert tiny.augmentation == Augmentation(mixup_alpha=0.2, crop_padding=0)
    assert tiny.soft_labels and not PRESETS["tiny"].soft_labels
    with pytest.raises(TypeError):
        override(tiny, no_such_setting=1)


def test_config_json_round_trips_both_parts():
    experiment = override(PRESETS["tiny"], head_units=(16, 8), randaugment_ops=("hue",),
                          randaugment_n=1)
    options = RunOptions(data_dir="d", output_dir="o", gpu="0,1", distribute="mirrored",
                         xla="off", tensorboard=False)
    text = json.dumps(config_file.to_json(experiment, options))
    assert config_file.from_json(json.loads(text)) == (experiment, options)


def test_a_config_json_of_another_format_is_refused_and_run_options_may_be_missing():
    """A flat dict (no "format") or another format number is refused with what to do; a
    missing run option gets its default, as any run option may change on resuming."""
    flat_values = {k: list(v) if isinstance(v, tuple) else v
                   for k, v in views.flat(PRESETS["tiny"]).items()}
    with pytest.raises(UsageError, match=r"config.json has no format; this version of the "
                                         r"app reads format 2 only"):
        config_file.from_json(flat_values)
    values = config_file.to_json(PRESETS["tiny"], RunOptions(gpu="1"))
    del values["run"]["distribute"]
    experiment, options = config_file.from_json(json.loads(json.dumps(values)))
    assert experiment == PRESETS["tiny"]
    assert options == RunOptions(gpu="1", distribute="auto")
    values["run"]["gpu"] = 1
    with pytest.raises(UsageError, match=r"--gpu must be a GPU index 0 or more.*got 1$"):
        config_file.from_json(values)


def test_unknown_and_missing_keys_are_named_all_at_once():
    values = config_file.to_json(PRESETS["sample"], RunOptions())
    values["experiment"]["warp_speed"] = 9
    values["run"]["colour"] = "red"
    del values["experiment"]["seed"]
    with pytest.raises(UsageError, match=r"unknown keys colour, warp_speed and missing keys "
                                         r"seed: it was not written by this version"):
        config_file.from_json(values, "config.json")
    with pytest.raises(UsageError, match="format 7"):
        config_file.from_json({**values, "format": 7})


def test_resume_differences_leave_out_the_resumable_settings_and_list_every_other():
    saved = PRESETS["sample"]
    wanted = override(saved, epochs=200, learning_rate=1e-4, patience=3, num_layers=4,
                      flip=False)
    assert views.differences_that_block_resume(saved, wanted) == [
        ("num_layers", 8, 4), ("flip", True, False)]


def test_presets_are_valid_and_the_sample_preset_is_the_seed_sample():
    for preset in PRESETS.values():
        preset.validate()
    sample = PRESETS["sample"]
    assert (sample.patch_size, sample.num_layers, sample.embedding_dim, sample.num_heads,
            sample.mlp_hidden_dim, sample.learning_rate, sample.batch_size, sample.epochs,
            sample.patience) == (4, 8, 64, 8, 256, 1e-3, 512, 100, 10)
    assert sample == TrainConfig()


def test_run_options_are_checked():
    for bad in (-1, 2, "0,x", "0,0", "1,", ""):
        with pytest.raises(UsageError, match="--gpu must be a GPU index 0 or more, or "
                                             "distinct indices separated by commas"):
            RunOptions(gpu=bad).validate()
    assert RunOptions(gpu="0, 1").validate().gpu == "0,1" and RunOptions().gpu is None
    with pytest.raises(UsageError, match="--distribute must be one of auto, none, mirrored"):
        RunOptions(distribute="horovod").validate()
    with pytest.raises(UsageError, match="--steps-per-execution must be a positive"):
        dataclasses.replace(RunOptions(), steps_per_execution=0).validate()
