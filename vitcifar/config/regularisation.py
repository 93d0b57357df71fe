"""Regularisation "auto": the rule that sets augmentation and regularisation from the epochs a
run trains, its training-set size and patch size, and how a run keeps what it chose. No
TensorFlow."""
from __future__ import annotations

import dataclasses
import math
from typing import Dict

from vitcifar.config.settings import RULE_SETTINGS, TrainConfig, flag_name
from vitcifar.config.views import flat, override

# The longer a ViT trains on little data, the more augmentation and regularisation pay; at a
# few epochs they cost more than they bring (Steiner et al. 2021, "How to train your ViT?",
# the AugReg study: light AugReg wins on short schedules, heavier on long ones; Lee et al.
# 2021 and Hassani et al. 2021 train 100-300 epochs of CIFAR with the full recipe below).
RULE_EPOCHS = (10, 100)        # strength 0 at or below the first, 1 from the second on
RULE_IMAGES_SEEN = (30_000, 100_000)   # the same for epochs x training images


def _log_ramp(value: float, low: float, high: float) -> float:
    """0 at or below `low`, 1 at or above `high`, linear in log(value) between."""
    if value <= low:
        return 0.0
    return min(1.0, math.log(value / low) / math.log(high / low))


def regularisation_strength(epochs: int, train_images: int) -> float:
    """0 to 1, non-decreasing in epochs: the lesser of a ramp in epochs (how often each
    image is seen: what lets a model memorise it) and a ramp in images seen (whether the
    run fits its data at all: a small set's epoch is a few steps, and an underfit model
    only loses by regularisation). On the Fashion-MNIST proxy (issue 20) the unregularised
    fast model overfit 850 images in 100 epochs (85,000 seen: 99.9% train top-1) and 4,250
    from about epoch 16 (68,000 seen), and did not overfit 51,000 images at its 5-8 epochs;
    it still underfit 850 images in 20 epochs (17,000 seen: 74% train top-1), where mixing
    at strength 0.23 cost 8.7 points of test top-1 (benchmarks/budget_sweep.py, with the
    ramps at 8-80 epochs and 10,000-100,000 images seen), and 255 images in 40 epochs
    (10,200 seen: 55%). The published recipes' 100-300 CIFAR epochs are strength 1; on the
    CPU, fast's 3 minutes of the full proxy (7-8 epochs) are strength 0."""
    return min(_log_ramp(epochs, *RULE_EPOCHS),
               _log_ramp(epochs * train_images, *RULE_IMAGES_SEEN))


def regularisation_rule(epochs: int, train_images: int, patch_size: int) -> Dict[str, object]:
    """{setting: value} for each of RULE_SETTINGS, for a run of `epochs` epochs over
    `train_images` images with patch_size-pixel patches. Strength s (regularisation_strength)
    is non-decreasing in epochs, and so is every value below. At s = 0 (fast's 5-8 epochs of
    a full training set) it is fast's own: flips only (not set here) and label smoothing 0.1.

    step                               value                  source
    label smoothing, always            0.1                    all three papers use 0.1
    mixup / cutmix alpha, from s > 0   0.8 s / 1.0 s          Hassani et al. (0.8 / 1.0);
        the one regulariser that paid on the proxy: +4.0 points (79.0% vs 75.0% test top-1,
        850 images x 100 epochs, issue 20); alpha scaled by s: Beta(a, a) with small a
        mixes little
    the rest only with patches of 4x4 pixels or less (the published CIFAR recipes' size);
    with 8x8 patches the proxy measured random crops costing 5.8 points (850 x 100) and
    8.7 (4,250 x 30, with drop path 0.1), and drop path no gain (74.8% vs 75.0%):
    crop padding, from s >= 0.5        4 pixels               all three (CIFAR's standard)
    RandAugment, from s >= 0.5         2 ops, magnitude 9 s   Hassani, AugReg (2 / 9-10);
                                                                Lee use AutoAugment
    random erasing, from s >= 0.75     0.25                   Lee, Hassani
    drop path, at s = 1                0.1                    Lee, Hassani
    RandAugment's geometric operations shift the image as crops do, so they share crops'
    condition."""
    s = regularisation_strength(epochs, train_images)
    small_patches = patch_size <= 4
    return {
        "crop_padding": 4 if small_patches and s >= 0.5 else 0,
        "randaugment_n": 2 if small_patches and s >= 0.5 else 0,
        "randaugment_magnitude": round(9.0 * s, 1) if small_patches and s >= 0.5 else 0.0,
        "mixup_alpha": round(0.8 * s, 2),
        "cutmix_alpha": round(1.0 * s, 2),
        "erasing_prob": 0.25 if small_patches and s >= 0.75 else 0.0,
        "drop_path": 0.1 if small_patches and s >= 1.0 else 0.0,
        "label_smoothing": 0.1,
    }


def regularised(config: TrainConfig, epochs: int, train_images: int) -> TrainConfig:
    """`config` with the rule's settings for `epochs` epochs of `train_images` images, those
    given as flags (regularisation_given) left as they are; `config` itself when
    regularisation is off or the rule has already chosen (a resumed run keeps its choice,
    even when epochs are added)."""
    if config.regularisation != "auto" or config.regularisation_epochs:
        return config
    chosen = {name: value for name, value in
              regularisation_rule(epochs, train_images, config.patch_size).items()
              if name not in config.regularisation_given}
    return override(config, regularisation_epochs=epochs, **chosen).validate()


def noting_given(config: TrainConfig, given) -> TrainConfig:
    """`config` with the rule's settings among `given` (names of settings given as flags)
    in regularisation_given: the rule leaves them as given."""
    return dataclasses.replace(config, regularisation_given=tuple(
        name for name in RULE_SETTINGS if name in given))


def with_choice_of(saved: TrainConfig, wanted: TrainConfig) -> TrainConfig:
    """`wanted` with what regularisation "auto" chose when the run `saved` started (the
    settings wanted.regularisation_given names excepted): a resumed run keeps its choice,
    whatever epochs it is now given. `wanted` itself unless both are "auto" and `saved` has
    chosen."""
    if not (saved.regularisation == wanted.regularisation == "auto"
            and saved.regularisation_epochs):
        return wanted
    values = flat(saved)
    return override(wanted, regularisation_epochs=saved.regularisation_epochs,
                    **{name: values[name] for name in RULE_SETTINGS
                       if name not in wanted.regularisation_given})


def describe_regularisation(config: TrainConfig) -> str:
    """One line: what regularisation "auto" chose, and which flags won over it."""
    values = flat(config)
    chosen = ", ".join(f"{flag_name(name)[2:]} {values[name]:g}" for name in RULE_SETTINGS)
    given = (f"; given as flags, so kept: "
             f"{' '.join(flag_name(n) for n in config.regularisation_given)}"
             if config.regularisation_given else "")
    return (f"Regularisation auto, for {config.regularisation_epochs} epochs: {chosen}"
            f"{given}")
