"""flags.py: training flags generated from the config, one-line errors, no abbreviations."""
import pytest

from helpers import run_app
from vitcifar.config import flags
from vitcifar.config.presets import PRESETS
from vitcifar.config.settings import RunOptions, TrainConfig
from vitcifar.config.views import override
from vitcifar.errors import UsageError


def test_flags_override_the_preset_and_cover_every_field():
    config, options, _ = flags.parse_train_flags(
        "cifar100", ["--epochs", "3", "--head-units", "32", "16", "--no-flip",
                     "--learning-rate", "0.01", "--data-dir", "data", "--no-tensorboard"])
    assert config == override(TrainConfig(dataset="cifar100", epochs=3, head_units=(32, 16),
                                          learning_rate=0.01), flip=False)
    assert options == RunOptions(data_dir="data", tensorboard=False)
    augmented, _, _ = flags.parse_train_flags(
        "cifar10", ["--randaugment-ops", "hue", "rotation", "--randaugment-n", "1",
                    "--mixup-alpha", "0.2", "--vertical-flip"])
    assert augmented.augmentation.randaugment_ops == ("hue", "rotation")
    assert augmented.augmentation.randaugment_n == 1 and augmented.augmentation.vertical_flip
    assert augmented.soft_labels and not TrainConfig().soft_labels
    tiny, _, _ = flags.parse_train_flags("cifar10", ["--preset", "tiny", "--num-layers", "3"])
    assert tiny.num_layers == 3 and tiny.embedding_dim == 32
    help_text = flags.build_train_parser("cifar10").format_help()
    for flag in ["--data-dir", "--output-dir", "--epochs", "--batch-size", "--learning-rate",
                 "--patch-size", "--patch-stride", "--num-layers", "--embedding-dim",
                 "--num-heads", "--mlp-hidden-dim", "--patience", "--seed", "--gpu",
                 "--list-devices", "--crop-padding", "--flip", "--vertical-flip",
                 "--randaugment-ops", "--randaugment-n", "--randaugment-magnitude",
                 "--randaugment-prob", "--erasing-prob", "--erasing-max-area",
                 "--mixup-alpha", "--cutmix-alpha"]:
        assert flag in help_text


@pytest.mark.parametrize("args, message", [
    (["--patch-size", "5"], "does not tile the 32x32 image"),
    (["--patch-size", "40"], "larger than the 32x32 image"),
    (["--embedding-dim", "60", "--num-heads", "8"], "not divisible by --num-heads"),
    (["--epochs", "0"], "--epochs must be a positive"),
    (["--batch-size", "-5"], "--batch-size must be a positive"),
    (["--learning-rate", "0"], "--learning-rate must be positive"),
    (["--num-layers", "0"], "--num-layers must be a positive"),
    (["--epochs", "many"], "invalid int value"),
    (["--seed", "-1"], "--seed must be 0 to 4294967295"),
    (["--randaugment-n", "9"], "--randaugment-n must be 0 to 8"),
    (["--randaugment-ops", "hue", "--randaugment-n", "2"], "--randaugment-n must be 0 to 1"),
    (["--randaugment-ops", "hue", "hue"], "--randaugment-ops must name distinct"),
    (["--randaugment-ops", "blur"], "invalid choice: 'blur'"),
    (["--randaugment-magnitude", "31"], "--randaugment-magnitude must be 0 to 30"),
    (["--erasing-prob", "1.5"], "--erasing-prob must be 0 to 1"),
    (["--mixup-alpha", "-0.1"], r"--mixup-alpha must be 0 \(off\) or more"),
    (["--validation-images", "-1"], "--validation-images must be 0 or more, got -1"),
])
def test_bad_flags_get_one_line_and_exit_code_2(args, message):
    with pytest.raises(UsageError, match=message):
        flags.parse_train_flags("cifar10", args)


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--patch-size", "5"], "does not tile the 32x32 image"),
    (["--epochs", "many"], "invalid int value"),
])
def test_bad_flags_through_the_entry_point_are_one_line_and_exit_code_2(args, message):
    result = run_app("train_cifar10.py", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_abbreviated_flags_are_refused_and_unknown_ones_get_the_nearest_name():
    with pytest.raises(UsageError, match=r"unrecognized arguments: --batch 0; did you mean "
                                         r"--batch-size\?"):
        flags.parse_train_flags("cifar10", ["--batch", "0"])
    with pytest.raises(UsageError, match="did you mean --epochs"):
        flags.parse_train_flags("cifar10", ["--epoch", "3"])
    with pytest.raises(UsageError, match=r"unrecognized arguments: --zzzz \(see --help\)"):
        flags.parse_train_flags("cifar10", ["--zzzz"])


def test_every_setting_of_the_experiment_and_the_run_options_is_a_flag():
    import dataclasses

    from vitcifar.config.views import leaf_fields
    names = [f.name for f in leaf_fields() + list(dataclasses.fields(RunOptions))
             if f.metadata.get("cli", True)]
    assert len(names) > 40 and "regularisation" in names
    folders_only = {"image_size", "test_fraction"}
    for dataset in ("cifar10", "images"):
        help_text = flags.build_train_parser(dataset).format_help()
        for name in names:
            flag = "--" + name.replace("_", "-")
            shown = (name in folders_only) == (dataset == "images") or name not in folders_only
            if name == "data_dir" and dataset == "images":     # DIR, the positional argument
                assert flag not in help_text and "DIR" in help_text
            else:
                assert (flag in help_text) == shown, (dataset, name)
        assert "--init-from" in help_text


def test_steps_per_execution_is_a_flag_and_must_be_positive():
    _, options, _ = flags.parse_train_flags("cifar10", ["--steps-per-execution", "8"])
    assert options.steps_per_execution == 8
    with pytest.raises(UsageError, match="--steps-per-execution must be a positive"):
        flags.parse_train_flags("cifar10", ["--steps-per-execution", "0"])



def test_help_says_an_archive_itself_may_be_passed_and_preset_is_only_given_when_given():
    help_text = " ".join(flags.build_train_parser("cifar10").format_help().split())
    assert "or the archive file itself" in help_text and "--verbose" in help_text
    args = flags.build_train_parser("cifar10").parse_args(["--epochs", "3"])
    assert not hasattr(args, "preset") and not hasattr(args, "verbose")   # not given
    assert flags.configs_from_args("cifar10", args)[0] == override(PRESETS["sample"], epochs=3)
    assert flags.build_train_parser("cifar10").parse_args(["--preset", "tiny"]).preset == "tiny"
    assert flags.verbose_requested(["run", "--verbose"])
    assert not flags.verbose_requested(["run", "--", "--verbose"])
