"""regularisation "auto": the rule in config.py, flags that win over it, where training applies
it, and a resumed run keeping what it chose."""
import dataclasses
import json
import os

import pytest

from helpers import run_app
from tests import archives
from vitcifar.config import flags
from vitcifar.config.config_file import to_json
from vitcifar.config.presets import PRESETS
from vitcifar.config.regularisation import regularisation_rule, regularisation_strength, regularised
from vitcifar.config.settings import RULE_SETTINGS, RunOptions
from vitcifar.config.views import flat, override
from vitcifar.errors import UsageError
from vitcifar.runs import resume

FAST = dataclasses.replace(PRESETS["fast"], dataset="cifar10")


def test_the_rule_for_a_few_epoch_counts_and_set_sizes():
    # fast's 3 minutes on a CPU: 5-8 epochs of the full proxy or of CIFAR, nothing added
    for epochs in (5, 8):
        for images in (42_500, 51_000):
            assert regularisation_rule(epochs, images, 8) == {
                **{name: 0 for name in RULE_SETTINGS}, "label_smoothing": 0.1}
    # the 850 images x 100 epochs: mixing nearly at the published strength, and
    # with 8x8 patches no crops, RandAugment, erasing or drop path (the proxy measured them)
    assert regularisation_rule(100, 850, 8) == {
        "crop_padding": 0, "randaugment_n": 0, "randaugment_magnitude": 0.0,
        "mixup_alpha": 0.69, "cutmix_alpha": 0.87, "erasing_prob": 0.0, "drop_path": 0.0,
        "label_smoothing": 0.1}
    # a long CIFAR run with 4x4 patches: the whole published recipe
    assert regularisation_rule(200, 42_500, 4) == {
        "crop_padding": 4, "randaugment_n": 2, "randaugment_magnitude": 9.0,
        "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "erasing_prob": 0.25, "drop_path": 0.1,
        "label_smoothing": 0.1}
    # half way (40 epochs of CIFAR, a GPU's few minutes): mixing, crops and RandAugment only
    half = regularisation_rule(40, 42_500, 4)
    assert half["crop_padding"] == 4 and half["randaugment_n"] == 2
    assert 0 < half["mixup_alpha"] < 0.8 and half["erasing_prob"] == half["drop_path"] == 0
    # sets so small that the epochs do not fit them: an underfit model gets nothing
    assert regularisation_strength(40, 255) == regularisation_strength(20, 850) == 0


@pytest.mark.parametrize("images", [200, 850, 4_250, 42_500, 51_000])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_no_setting_weakens_as_the_epochs_grow(images, patch):
    previous = regularisation_rule(1, images, patch)
    for epochs in range(2, 400):
        rule = regularisation_rule(epochs, images, patch)
        assert all(rule[name] >= previous[name] for name in RULE_SETTINGS), (epochs, rule)
        previous = rule
    assert regularisation_strength(399, images) >= regularisation_strength(1, images)


def test_a_budget_run_keeps_its_calibrated_model_unless_the_choice_changes_model_or_labels():
    from vitcifar.training.trainer import keeps_model
    for epochs in (1, 2, 4):       # fast on a CPU: only RandAugment's unused magnitude moves
        chosen = regularised(FAST, epochs, 51_000)
        assert chosen != FAST and keeps_model(FAST, chosen)
    mixing = regularised(FAST, 300, 42_500)    # a new augmentation; labels already one-hot
    assert mixing.augmentation.mixes and keeps_model(FAST, mixing)
    hard = override(PRESETS["tiny"], regularisation="auto")   # label smoothing 0 -> 0.1
    assert not keeps_model(hard, regularised(hard, 3, 1_700))
    # label smoothing 0 given as a flag: the same loss settings, but mixup makes the
    # labels one-hot, so only the encoding tells the models apart
    indices = override(PRESETS["tiny"], regularisation="auto",
                       regularisation_given=("label_smoothing",))
    mixed = regularised(indices, 300, 42_500)
    assert mixed.augmentation.mixes and mixed.label_smoothing == 0
    assert not keeps_model(indices, mixed)
    small = override(PRESETS["vit_lite"], regularisation="auto", drop_path=0.0)
    assert small.patch_size <= 4 and not keeps_model(small, regularised(small, 300, 42_500))


def test_fast_uses_the_rule_sample_never_and_off_changes_nothing():
    assert FAST.regularisation == "auto"
    assert PRESETS["sample"].regularisation == "off"
    assert regularised(PRESETS["sample"], 300, 42_500) is PRESETS["sample"]
    off = override(FAST, regularisation="off")
    assert regularised(off, 300, 42_500) is off
    chosen = regularised(FAST, 300, 42_500)
    assert chosen.regularisation_epochs == 300
    assert chosen.augmentation.mixup_alpha == 0.8 and chosen.augmentation.crop_padding == 0
    # the rule has chosen: more epochs later change nothing
    assert regularised(override(chosen, epochs=900), 900, 42_500) == override(chosen,
                                                                               epochs=900)


def test_a_flag_given_explicitly_wins_over_the_rule():
    config, _, _ = flags.parse_train_flags("cifar10", [
        "--preset", "fast", "--mixup-alpha", "0.2", "--drop-path", "0"])
    assert config.regularisation_given == ("mixup_alpha", "drop_path")
    chosen = regularised(config, 300, 42_500)
    assert chosen.augmentation.mixup_alpha == 0.2          # given
    assert chosen.augmentation.cutmix_alpha == 1.0         # the rule's
    # a flag equal to the preset's value is given all the same
    config, _, _ = flags.parse_train_flags("cifar10", ["--preset", "fast",
                                                       "--cutmix-alpha", "0"])
    assert regularised(config, 300, 42_500).augmentation.cutmix_alpha == 0


def test_out_of_range_values_are_one_error_line():
    for argv, message in ((["--regularisation", "more"], "--regularisation: invalid choice"),
                          (["--mixup-alpha", "-1"], "--mixup-alpha must be 0"),
                          (["--label-smoothing", "1.5"], "--label-smoothing must be in")):
        with pytest.raises(UsageError, match=message):
            flags.parse_train_flags("cifar10", ["--preset", "fast", *argv])


def test_a_resumed_run_keeps_what_the_rule_chose_when_epochs_are_added(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    chosen = regularised(override(FAST, epochs=60, time_budget=0.0), 60, 850)
    options = RunOptions(output_dir=str(folder), tensorboard=False)
    (folder / "config.json").write_text(json.dumps(to_json(chosen, options)))
    for preset in (None, "fast"):        # the command that started it resumes it too
        resumed, _ = resume.resume_settings("cifar10", str(folder),
                                            {"epochs": 300, "time_budget": 0.0}, preset)
        assert resumed == override(chosen, epochs=300)
        assert regularised(resumed, 300, 850) == resumed
    assert regularisation_rule(300, 850, 8) != {n: flat(chosen)[n] for n in RULE_SETTINGS}
    with pytest.raises(UsageError, match="--mixup-alpha 0.35, not 0.1"):
        resume.resume_settings("cifar10", str(folder), {"mixup_alpha": 0.1}, "fast")


@pytest.mark.slow
def test_training_applies_the_rule_once_records_it_and_keeps_it_on_resume(tmp_path):
    files, _ = archives.archive_files("cifar10", per_batch=400, seed=3)   # 2,000 images
    tar = archives.write_tar(str(tmp_path / "c10.tar.gz"), files)
    out = str(tmp_path / "run")
    common = ["--preset", "tiny", "--data-dir", tar, "--output-dir", out,
              "--regularisation", "auto", "--no-tensorboard"]
    first = run_app("train_cifar10.py", *common, "--epochs", 20, "--cutmix-alpha", 0)
    assert first.returncode == 0, first.stderr
    assert "regularisation auto: set by the epochs trained (given, so kept: " \
           "--cutmix-alpha)" in first.stdout
    expected = regularisation_rule(20, 1_700, 8)
    assert 0 < expected["mixup_alpha"] < 0.1           # 34,000 images seen: a little
    line = ("Regularisation auto, for 20 epochs: crop-padding 0, randaugment-n 0, "
            f"randaugment-magnitude 0, mixup-alpha {expected['mixup_alpha']:g}, cutmix-alpha "
            "0, erasing-prob 0, drop-path 0, label-smoothing 0.1; given as flags, so kept: "
            "--cutmix-alpha")
    assert line in first.stdout

    def recorded():
        with open(os.path.join(out, "results.json")) as handle:
            return json.load(handle)["regularisation"]
    assert recorded() == {"epochs": 20, "given_as_flags": ["cutmix_alpha"],
                          "settings": {**expected, "cutmix_alpha": 0}}
    again = run_app("train_cifar10.py", *common, "--epochs", 24, "--cutmix-alpha", 0)
    assert again.returncode == 0, again.stderr
    assert line in again.stdout and "24 epochs" not in again.stdout.split("Regularisation")[1]
    assert recorded()["epochs"] == 20
    assert regularisation_rule(24, 1_700, 8)["mixup_alpha"] != expected["mixup_alpha"]


@pytest.mark.slow
@pytest.mark.parametrize("label_smoothing, builds", [(0.0, 2), (0.1, 1)])
def test_a_time_budget_run_chooses_for_its_planned_epochs(tmp_path, cifar10_tar, monkeypatch,
                                                          label_smoothing, builds):
    """tiny's label smoothing 0 becomes the rule's 0.1 (one-hot labels: a new model after the
    calibration); given 0.1, only the augmentation changes, and the calibrated model trains."""
    import contextlib
    import io

    from vitcifar.backend import devices
    from vitcifar.data import cifar
    from vitcifar.runs import time_budget
    from vitcifar.runs.run_dir import read_config
    from vitcifar.training import fit_loop, trainer
    config = override(PRESETS["tiny"], batch_size=32, epochs=50, lr_schedule="cosine",
                      warmup_epochs=5, time_budget=0.25, regularisation="auto",
                      label_smoothing=label_smoothing)
    options = RunOptions(output_dir=str(tmp_path / "run"), tensorboard=False)
    data = cifar.load("cifar10", cifar10_tar)
    calls = {}

    def recorded(owner, name):          # each call's first argument and result, kept
        real, calls[name] = getattr(owner, name), []

        def call(*args):
            calls[name].append((args[0], real(*args)))
            return calls[name][-1][1]
        monkeypatch.setattr(owner, name, call)
    recorded(trainer, "build")
    recorded(trainer, "batch_augment")
    recorded(fit_loop, "calibrate")
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        results = trainer.run(config, options, data, devices.detect())
    assert len(calls["build"]) == builds
    # the calibrated model's augmentation, then the chosen one, whether the model was built
    # again or kept
    saved, _ = read_config(options.output_dir)
    augmented = [given.augmentation for given, _ in calls["batch_augment"]]
    assert len(augmented) == 2 and augmented[1] == saved.augmentation != augmented[0]
    # chosen for the calibration's plan; training's re-plans may then move its epochs
    planned = calls["calibrate"][0][1].epochs
    assert results["time_budget_plan"]["epochs"] <= time_budget.most_epochs(planned)
    assert f"Regularisation auto, for {planned} epochs" in printed.getvalue()
    assert results["regularisation"] == {"epochs": planned, "given_as_flags": [],
                                         "settings": regularisation_rule(planned, 170, 8)}
    assert saved.regularisation_epochs == planned and saved.label_smoothing == 0.1
    with contextlib.redirect_stdout(io.StringIO()):
        again = trainer.run(override(config, epochs=80), options, data, devices.detect())
    assert again["regularisation"] == results["regularisation"]
