"""The typed configuration of a run, its named presets, and their validation.

A run has two parts, kept apart so that resuming compares only what decides the result:
  TrainConfig   the experiment: data split, model, optimisation, augmentation (one nested
                `Augmentation`), seed. Changing any of it makes a different run, except the
                few fields marked resumable (epochs, learning rate, patience, early stopping).
  RunOptions    how this machine runs it: paths, GPUs, distribution strategy, XLA,
                precision, steps per execution, TensorBoard. Any of it may change when a
                run is resumed.
Every field of both is a command-line flag, --field-name (flags.py generates them), and
config.json stores both (`to_json` / `from_json`).

This module imports no TensorFlow: flags are parsed and checked, and the GPU is chosen,
before TensorFlow is imported (DML_VISIBLE_DEVICES is only read at import time).

Presets
-------
Each preset is a TrainConfig; every flag given on top overrides it. CIFAR accuracies below
are the sources' own: CIFAR cannot be downloaded on this project's machines, so none of them
has been reproduced here (benchmarks/README.md has what was measured, on what).

``sample`` (the default): the seed sample's model and schedule::

    python train_cifar10.py                      # = --preset sample

  A 0.6 M-parameter ViT (4x4 patches -> 64 tokens + a class token, 8 blocks of width 64,
  MLP head 512-256), Adam 1e-3 halved after 10 epochs without a better validation top-1,
  batch 512, up to 100 epochs; crop, flip and RandAugment 2/9. No published accuracy.

``fast``: the best accuracy in a short, fixed time that benchmarks/time_to_accuracy.py
found on this project's 2-core CPU (Fashion-MNIST packed as CIFAR-10, the only real images
here; figures in benchmarks/README.md)::

    python train_cifar10.py --preset fast         # 3 minutes of training
    python train_cifar10.py --preset fast --time-budget 15

  Measured: 87.1% test top-1 (range 87.0-87.2%) after 179 s (172-187 s) of training,
  2 seeds, `python -m benchmarks.time_to_accuracy --preset fast --seeds 2` (current stack,
  2-core x86_64 CPU, the Fashion-MNIST proxy: no CIFAR figure). The sample preset, given the
  same 3 minutes, reached 63.1% there (one run). With --mixed-precision auto (bfloat16
  here) on a slower day: 86.3% and 86.7% (medians of 2 seeds each; float32 that day 85.3%).

  --time-budget 3: the run times its first steps and fits as many steps as end within 3
  minutes (the last epoch cut short), warming up over 6% of them, then cosine decay to the
  last. 8x8 patches (16 tokens: attention is cheap, and the wider matrix products run at a
  larger share of a CPU's peak than the sample's), 6 blocks of width 192, 6 heads, MLP 384, mean pooling into a linear classifier, no dropout; AdamW 2e-3,
  weight decay 0.05, batch 128, label smoothing 0.1; horizontal flips only (at a few epochs
  stronger augmentation costs more than it brings), and regularisation "auto": mixing from
  10 epochs on, growing with the epochs (regularisation_rule). 16 tokens cap its CIFAR accuracy well
  below the 4x4-patch recipes': it is for a good model soon, not the best one.

``vit_lite``: ViT-Lite-7/4 of Hassani et al. 2021, "Escaping the Big Data Paradigm with
Compact Transformers" (settings from the authors' SHI-Labs/Compact-Transformers: src/vit.py,
configs/datasets/cifar10.yml); reported 91.4% CIFAR-10 / 69.8% CIFAR-100 top-1::

    python train_cifar10.py --preset vit_lite

  4x4 patches, 7 blocks of width 256, 4 heads, MLP 512, class token into a linear
  classifier, attention dropout 0.1, stochastic depth 0.1; AdamW 5.5e-4, weight decay 0.06,
  batch 128, 10 warmup epochs then cosine to 1e-5, 200 epochs (the paper's table; the repo's
  config runs 300); label smoothing 0.1, mixup 0.8, cutmix 1.0, random erasing 0.25,
  RandAugment 2/9 over all operations. Where this app differs: random crops of a 4-pixel
  padding instead of random-resized crops of 80-100% of the image, RandAugment's magnitude
  drawn uniformly up to 9 instead of timm's normal(9, 0.5), mixing on every image instead of
  every batch, no warmup from 1e-5, no 10 cooldown epochs, on a CPU float32 unless bfloat16
  is measured faster (--mixed-precision auto).

``vit_small_data``: the ViT baseline of Lee et al. 2021, "Vision Transformer for Small-Size
Datasets" (settings from the authors' aanna0701/SPT_LSA_ViT main.py); reported 93.58%
CIFAR-10 / 73.81% CIFAR-100 top-1 after 100 epochs with repeated augmentation x3::

    python train_cifar10.py --preset vit_small_data

  4x4 patches, 9 blocks of width 192, 12 heads of 16, MLP 384 (ratio 2), class token into a
  linear classifier, stochastic depth 0.1; AdamW 1e-3, weight decay 0.05, batch 128, 10
  warmup epochs then cosine, 100 epochs; label smoothing 0.1, mixup and cutmix with alpha 1,
  random erasing 0.25 of up to 40% of the image. Where this app differs: no repeated
  augmentation (each image once per epoch, so the same 100 epochs see a third of the
  augmented copies), RandAugment 2/9 over all operations in place of the AutoAugment CIFAR
  policy, mixup or cutmix on every image instead of on half the batches, cosine to 1e-5.

``tiny``: a seconds-long smoke run for checking an install::

    python train_cifar10.py --preset tiny --data-dir DIR
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from datasets import DATASETS, IMAGE_SIZE
from errors import UsageError

# RandAugment's operations, each with its bound at magnitude MAX_MAGNITUDE in the units of
# its function in data_augmentations.py; bounds scale linearly with the magnitude (the
# default 9 of 30: rotations up to 13.5 degrees, shifts up to 15% of the image, ...). Here,
# not beside the functions, because flags are checked before TensorFlow is imported.
# Adding an operation: one entry here and its function in data_augmentations.py.
# The pixel operations of the published CIFAR AutoAugment/RandAugment policies (Cubuk et al.
# 2019, 2020) come last; their bound is a level in [0, 1] (autocontrast and equalize: applied
# or not; posterize: up to 4 bits dropped; solarize: threshold down to 0; sharpness: factor
# 1 +- 0.9, AutoAugment's 0.1..1.9).
MAX_MAGNITUDE = 30.0
RANDAUGMENT_STRENGTH = {"rotation": 45.0, "shear": 0.5, "zoom": 0.5, "translation": 0.5,
                        "hue": 0.5, "saturation": 1.0, "brightness": 0.5, "contrast": 1.0,
                        "autocontrast": 1.0, "equalize": 1.0, "posterize": 1.0,
                        "solarize": 1.0, "sharpness": 0.9}
RANDAUGMENT_OPS = tuple(RANDAUGMENT_STRENGTH)
# The sample preset's operations: the geometric and colour ones, without the pixel ones.
DEFAULT_RANDAUGMENT_OPS = RANDAUGMENT_OPS[:8]
POOLINGS = ("class_token", "mean")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("plateau", "cosine")
CONFIG_FORMAT = 2        # config.json's "format": the layout to_json writes
REGULARISATIONS = ("auto", "off")     # TrainConfig.regularisation
# The settings regularisation "auto" sets (regularisation_rule), by their leaf names.
RULE_SETTINGS = ("crop_padding", "randaugment_n", "randaugment_magnitude", "mixup_alpha",
                 "cutmix_alpha", "erasing_prob", "drop_path", "label_smoothing")
DISTRIBUTE_CHOICES = ("auto", "none", "mirrored", "multi-worker")
PRECISION_CHOICES = ("auto", "off", "float16", "bfloat16", "on")    # precision.py decides


def patch_grid_side(image_size: int, patch_size: int, patch_stride: int) -> int:
    """Patches per side of a square image: (S - P) // stride + 1; the model reads the square
    of this many patches. The one place this formula lives (model, FLOP count, figures)."""
    return (image_size - patch_size) // patch_stride + 1


def flag_name(name: str) -> str:
    """The command-line flag of a config field: learning_rate -> --learning-rate."""
    return "--" + name.replace("_", "-")


def _flag(help_text: str, **metadata) -> dict:
    """Field metadata: the flag's help, and optionally cli=False (not a flag), choices,
    resumable=True (an experiment field that may change when a run is resumed) and
    optional=True (a config.json that lacks it gets its default, which is what such runs
    did)."""
    return {"help": help_text, **metadata}


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation (data_augmentations.augment_batch), in the order applied.

    Defaults: crop + flip as the seed sample, plus RandAugment N=2, M=9 (of 30). A ViT has
    no convolutional prior and overfits CIFAR's 42,500 training images within tens of
    epochs; moderate per-image RandAugment is the usual cure for small ViTs on CIFAR.
    Erasing, mixup and cutmix stay off: a 0.6 M-parameter model trained for 100 epochs has
    little capacity to spare, and stacking them (the DeiT recipe is for 300 epochs and
    5 M+ parameters) risks underfitting. These are judgements from the literature, not
    measured here (no CIFAR or GPU on this project's machines)."""

    crop_padding: int = field(default=4, metadata=_flag(
        "random crops after padding by this many pixels per side (0: off)"))
    flip: bool = field(default=True, metadata=_flag("random horizontal flips"))
    vertical_flip: bool = field(default=False, metadata=_flag(
        "random vertical flips (off: upside-down photos are not natural CIFAR images)"))
    randaugment_ops: Tuple[str, ...] = field(default=DEFAULT_RANDAUGMENT_OPS, metadata=_flag(
        "the operations RandAugment picks from, per image", choices=RANDAUGMENT_OPS))
    randaugment_n: int = field(default=2, metadata=_flag(
        "RandAugment: distinct operations per image (0: off)"))
    randaugment_magnitude: float = field(default=9.0, metadata=_flag(
        f"RandAugment magnitude, 0 (identity) to {MAX_MAGNITUDE:g} (e.g. rotations up to "
        f"+-45 degrees); each image draws its parameters uniformly within it"))
    randaugment_prob: float = field(default=1.0, metadata=_flag(
        "RandAugment: probability that each chosen operation is applied"))
    erasing_prob: float = field(default=0.0, metadata=_flag(
        "random erasing (cutout): probability per image of replacing a rectangle by noise"))
    erasing_max_area: float = field(default=0.4, metadata=_flag(
        "random erasing: largest rectangle, as a fraction of the image area"))
    mixup_alpha: float = field(default=0.0, metadata=_flag(
        "mixup: Beta(alpha, alpha) mixing ratio per image (0: off; 0.2-1 is typical); "
        "labels become soft"))
    cutmix_alpha: float = field(default=0.0, metadata=_flag(
        "cutmix: Beta(alpha, alpha) ratio per image (0: off; 1 is typical); with mixup too, "
        "each image gets one of the two; labels become soft"))

    @property
    def mixes(self) -> bool:
        """mixup or cutmix: labels become soft (one-hot, then mixed)."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def validate(self) -> None:
        ops = self.randaugment_ops
        unknown = [op for op in ops if op not in RANDAUGMENT_OPS]
        if unknown or len(set(ops)) != len(ops) or not ops:
            raise UsageError(f"--randaugment-ops must name distinct operations from "
                             f"{' '.join(RANDAUGMENT_OPS)}, got {' '.join(ops) or 'none'}")
        if not 0 <= self.randaugment_n <= len(ops):
            raise UsageError(f"--randaugment-n must be 0 to {len(ops)} (the number of "
                             f"--randaugment-ops), got {self.randaugment_n}")
        if not 0 <= self.randaugment_magnitude <= MAX_MAGNITUDE:
            raise UsageError(f"--randaugment-magnitude must be 0 to {MAX_MAGNITUDE:g}, "
                             f"got {self.randaugment_magnitude}")
        if self.crop_padding < 0:
            raise UsageError(f"--crop-padding must be 0 or more, got {self.crop_padding}")
        for name in ("randaugment_prob", "erasing_prob", "erasing_max_area"):
            if not 0 <= getattr(self, name) <= 1:
                raise UsageError(f"{flag_name(name)} must be 0 to 1, got {getattr(self, name)}")
        for name in ("mixup_alpha", "cutmix_alpha"):
            if getattr(self, name) < 0:
                raise UsageError(f"{flag_name(name)} must be 0 (off) or more, "
                                 f"got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    """The experiment: everything that decides what a run learns. Flags: --field-name, and
    the augmentation's fields under their own names (--crop-padding, ...)."""

    dataset: str = field(default="cifar10", metadata=_flag("cifar10 or cifar100", cli=False))
    validation_fraction: float = field(default=0.15, metadata=_flag(
        "fraction of the training set held out for validation (the sample's 0.15 leaves "
        "42,500 CIFAR training images)"))
    # --- model: 32x32 image -> (32-patch)/stride+1 squared patches -------------------------
    patch_size: int = field(default=4, metadata=_flag("patch side in pixels"))
    patch_stride: int = field(default=4, metadata=_flag(
        "step between patches in pixels; smaller than --patch-size gives overlapping patches"))
    num_layers: int = field(default=8, metadata=_flag("number of transformer blocks"))
    embedding_dim: int = field(default=64, metadata=_flag("token width"))
    num_heads: int = field(default=8, metadata=_flag(
        "attention heads; must divide --embedding-dim"))
    mlp_hidden_dim: int = field(default=256, metadata=_flag("hidden width of each block's MLP"))
    head_units: Tuple[int, ...] = field(default=(512, 256), metadata=_flag(
        "hidden widths of the classifier MLP on the pooled token (none given: a plain "
        "linear classifier)"))
    dropout: float = field(default=0.2, metadata=_flag("dropout rate in blocks and classifier"))
    attention_dropout: float = field(default=0.0, metadata=_flag(
        "dropout on the attention weights"))
    drop_path: float = field(default=0.0, metadata=_flag(
        "stochastic depth: the rate at which the last block's residual branches are dropped "
        "per sample, rising linearly from 0 at the first block"))
    pooling: str = field(default="class_token", metadata=_flag(
        "what the classifier reads: class_token, or mean (the mean of the patch tokens; "
        "the model then has no class token)", choices=POOLINGS))
    # --- optimisation -----------------------------------------------------------------------
    optimizer: str = field(default="adam", metadata=_flag(
        "adam, or adamw (decoupled weight decay, none on biases, LayerNorm weights, position "
        "embedding and class token)", choices=OPTIMIZERS))
    weight_decay: float = field(default=0.0, metadata=_flag(
        "AdamW's decoupled weight decay per step, times the learning rate"))
    learning_rate: float = field(default=1e-3, metadata=_flag(
        "learning rate (with --lr-schedule cosine: its peak); a new value given when "
        "resuming replaces the current rate", resumable=True))
    lr_schedule: str = field(default="plateau", metadata=_flag(
        "plateau: constant, halved after --patience epochs without a better validation "
        "top-1; cosine: linear warmup over --warmup-epochs, then cosine decay to "
        "--min-learning-rate at the last step of --epochs (a run extended past it stays "
        "there)", choices=LR_SCHEDULES))
    warmup_epochs: float = field(default=0.0, metadata=_flag(
        "cosine schedule: epochs of linear warmup (fractions allowed)"))
    min_learning_rate: float = field(default=1e-6, metadata=_flag(
        "floor of the learning rate: plateau halving stops there, cosine decay ends there"))
    label_smoothing: float = field(default=0.0, metadata=_flag(
        "label smoothing eps: targets (1 - eps) * label + eps / classes (with mixup/cutmix "
        "too)"))
    clip_norm: float = field(default=0.0, metadata=_flag(
        "clip the gradients' global norm to this (0: off)"))
    batch_size: int = field(default=512, metadata=_flag("images per training step"))
    epochs: int = field(default=100, metadata=_flag("maximum number of epochs", resumable=True))
    patience: int = field(default=10, metadata=_flag(
        "epochs without a better validation top-1 before the learning rate is halved",
        resumable=True))
    early_stopping: int = field(default=0, metadata=_flag(
        "stop after this many epochs without a better validation top-1 (0: never)",
        resumable=True))
    time_budget: float = field(default=0.0, metadata=_flag(
        "minutes of training (0: off, --epochs decides): the run times its first steps on "
        "this machine and trains as many steps as end within them (whole epochs, the last "
        "cut short), the warmup the same share of the schedule as --warmup-epochs of "
        "--epochs; --epochs is then not used"))
    seed: int = field(default=42, metadata=_flag(
        "seed for the split, initial weights, shuffling and augmentation"))
    regularisation: str = field(default="off", metadata=_flag(
        "auto: crop padding, RandAugment, mixup, cutmix, random erasing, drop path and label "
        "smoothing follow the epochs the run trains (--epochs, or what --time-budget plans) "
        "and the training-set size, by the rule in config.py (regularisation_rule), chosen "
        "once when the run starts and kept when it is resumed; any of those flags given "
        "explicitly wins; off: the preset's values", choices=REGULARISATIONS, optional=True))
    augmentation: Augmentation = field(default_factory=Augmentation, metadata=_flag(
        "the training augmentation", nested=True))
    # Set when a run starts (flags.configs_from_args, regularised): the rule's settings given
    # as flags, which it leaves as given; the epochs it chose for (0: not chosen yet).
    regularisation_given: Tuple[str, ...] = field(default=(), metadata=_flag(
        "the rule's settings given as flags", cli=False, resumable=True, optional=True))
    regularisation_epochs: int = field(default=0, metadata=_flag(
        "the epochs the rule chose for", cli=False, resumable=True, optional=True))

    # Derived facts, in one place so that model, data and checks agree.
    @property
    def num_classes(self) -> int:
        return DATASETS[self.dataset].num_classes

    @property
    def display_name(self) -> str:
        return DATASETS[self.dataset].display_name

    @property
    def soft_labels(self) -> bool:
        """Training, validation and test labels are one-hot (the categorical loss and
        metrics) rather than class indices: mixup and cutmix make soft labels, and label
        smoothing needs one-hot targets (Keras 3's sparse loss has no label smoothing)."""
        return self.augmentation.mixes or self.label_smoothing > 0

    def validate(self) -> "TrainConfig":
        """Raises UsageError naming the flag to change; returns self when all is well."""
        if self.dataset not in DATASETS:
            raise UsageError(f"unknown dataset {self.dataset!r}; use one of {', '.join(DATASETS)}")
        positive = ["patch_size", "patch_stride", "num_layers", "embedding_dim", "num_heads",
                    "mlp_hidden_dim", "batch_size", "epochs", "patience"]
        for name in positive:
            _check_positive(self, name)
        if any(units <= 0 for units in self.head_units):
            raise UsageError(f"--head-units must all be positive, got {list(self.head_units)}")
        if not self.learning_rate > 0:
            raise UsageError(f"--learning-rate must be positive, got {self.learning_rate}")
        if not 0 < self.min_learning_rate <= self.learning_rate:
            raise UsageError(f"--min-learning-rate must be positive and at most "
                             f"--learning-rate {self.learning_rate:g}, got "
                             f"{self.min_learning_rate:g}")
        for name in ("dropout", "attention_dropout", "drop_path", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"{flag_name(name)} must be in [0, 1), got "
                                 f"{getattr(self, name)}")
        for name in ("weight_decay", "clip_norm", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise UsageError(f"{flag_name(name)} must be 0 or more, got "
                                 f"{getattr(self, name)}")
        if self.weight_decay and self.optimizer != "adamw":
            raise UsageError("--weight-decay needs --optimizer adamw (Adam's L2 penalty is "
                             "not decoupled weight decay)")
        if self.warmup_epochs and self.lr_schedule != "cosine":
            raise UsageError("--warmup-epochs needs --lr-schedule cosine (the plateau schedule "
                             "has no warmup)")
        if self.warmup_epochs >= self.epochs > 0 and self.lr_schedule == "cosine":
            raise UsageError(f"--warmup-epochs {self.warmup_epochs:g} leaves no epochs of "
                             f"--epochs {self.epochs} for the cosine decay; lower it")
        if self.time_budget < 0:
            raise UsageError(f"--time-budget must be 0 (off) or positive minutes, got "
                             f"{self.time_budget}")
        if not 0 < self.validation_fraction < 1:
            raise UsageError("--validation-fraction must be between 0 and 1, "
                             f"got {self.validation_fraction}")
        if self.early_stopping < 0:
            raise UsageError(f"--early-stopping must be 0 or more, got {self.early_stopping}")
        self.augmentation.validate()
        if self.patch_size > IMAGE_SIZE:
            raise UsageError(f"--patch-size {self.patch_size} is larger than the "
                             f"{IMAGE_SIZE}x{IMAGE_SIZE} image; use at most {IMAGE_SIZE}")
        if (IMAGE_SIZE - self.patch_size) % self.patch_stride:
            fits = [s for s in range(1, self.patch_size + 1)
                    if (IMAGE_SIZE - self.patch_size) % s == 0]
            raise UsageError(
                f"--patch-size {self.patch_size} with --patch-stride {self.patch_stride} does not "
                f"tile the {IMAGE_SIZE}x{IMAGE_SIZE} image (the last "
                f"{(IMAGE_SIZE - self.patch_size) % self.patch_stride} pixels would be dropped); "
                f"use a stride from {fits}")
        if self.embedding_dim % self.num_heads:
            raise UsageError(f"--embedding-dim {self.embedding_dim} is not divisible by "
                             f"--num-heads {self.num_heads}; pick heads that divide it")
        if not 0 <= self.seed < 2 ** 32:       # numpy's seed range
            raise UsageError(f"--seed must be 0 to {2 ** 32 - 1}, got {self.seed}")
        if self.regularisation not in REGULARISATIONS:
            raise UsageError(f"--regularisation must be one of {', '.join(REGULARISATIONS)}, "
                             f"got {self.regularisation}")
        unknown = set(self.regularisation_given) - set(RULE_SETTINGS)
        if unknown or self.regularisation_epochs < 0:
            raise UsageError(f"regularisation_given {' '.join(sorted(unknown))} or "
                             f"regularisation_epochs {self.regularisation_epochs} is not a "
                             "setting of the rule")
        return self


@dataclass(frozen=True)
class RunOptions:
    """How this machine runs the experiment; none of it changes what the run learns beyond
    float rounding, so all of it may differ when a run is resumed."""

    data_dir: Optional[str] = field(default=None, metadata=_flag(
        "folder holding cifar-10-python.tar.gz / cifar-100-python.tar.gz (or one CIFAR "
        "archive under another name) or their extracted folders, or the archive file "
        "itself, for machines without internet; default: download through keras.datasets"))
    output_dir: Optional[str] = field(default=None, metadata=_flag(
        "run directory for the checkpoint, metrics and results (default: runs/DATASET-TIME); "
        "rerunning with an existing one resumes it"))
    gpu: Optional[str] = field(default=None, metadata=_flag(
        "GPU index, or indices separated by commas (0,1) to train on several (--distribute "
        "auto or mirrored); sets DML_VISIBLE_DEVICES and CUDA_VISIBLE_DEVICES before "
        "TensorFlow starts (default: the variables as set, else every GPU; --distribute "
        "none trains on the first)"))
    distribute: str = field(default="auto", metadata=_flag(
        "tf.distribute strategy: auto (mirrored when TensorFlow sees more than one CUDA GPU, "
        "else none), none (one device), mirrored (every visible GPU of this machine), "
        "multi-worker (several machines, from the TF_CONFIG variable; needs Keras 2: "
        "TF 2.10, or requirements-multiworker.txt)", choices=DISTRIBUTE_CHOICES))
    steps_per_execution: int = field(default=1, metadata=_flag(
        "training steps run per call into TensorFlow (model.compile's steps_per_execution): "
        "less Python work per step; the progress bar and batch callbacks update this often"))
    xla: str = field(default="auto", metadata=_flag(
        "XLA compilation: auto (on for CUDA only; DirectML has no XLA and it is slower on "
        "CPU), on, off", choices=("auto", "on", "off")))
    mixed_precision: str = field(default="auto", metadata=_flag(
        "the number format of the model's arithmetic; weights, optimizer, loss, softmax and "
        "LayerNorm stay float32: auto (bfloat16 on CUDA GPUs of compute capability 8.0+, "
        "float16 on 7.x; on a CPU with bfloat16 arithmetic (AMX, AVX512-BF16), bfloat16 when "
        "a few seconds' measurement finds it faster for this model; else float32), off "
        "(float32), float16, bfloat16, on (= float16)", choices=PRECISION_CHOICES))
    tensorboard: bool = field(default=True, metadata=_flag(
        "write TensorBoard logs into OUTPUT_DIR/tensorboard (view: tensorboard --logdir runs)"))

    def __post_init__(self):
        # "0, 1" is kept as "0,1", the form the GPU variables take.
        if isinstance(self.gpu, str):
            object.__setattr__(self, "gpu", self.gpu.replace(" ", ""))

    def validate(self) -> "RunOptions":
        _check_positive(self, "steps_per_execution")
        if self.gpu is not None:
            indices = self.gpu.split(",") if isinstance(self.gpu, str) else [""]
            if not all(index.isdigit() for index in indices) or \
                    len(set(map(int, indices))) != len(indices):
                raise UsageError(f"--gpu must be a GPU index 0 or more, or distinct indices "
                                 f"separated by commas (0,1), got {self.gpu}")
        if self.mixed_precision not in PRECISION_CHOICES:
            raise UsageError(f"--mixed-precision must be one of "
                             f"{', '.join(PRECISION_CHOICES)}, got {self.mixed_precision}")
        if self.distribute not in DISTRIBUTE_CHOICES:
            raise UsageError(f"--distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}, "
                             f"got {self.distribute}")
        return self


def _check_positive(settings, name: str) -> None:
    if getattr(settings, name) <= 0:
        raise UsageError(f"{flag_name(name)} must be a positive whole number, "
                         f"got {getattr(settings, name)}")


# --- flat views: flags and config.json name the augmentation's fields without a prefix -------

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


# --- config.json -------------------------------------------------------------------------------

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

# --- regularisation "auto": the rule -----------------------------------------------------------
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
    CPU, fast's 3 minutes of the full proxy (up to 10 epochs with bfloat16) are strength 0."""
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


def _preset(**values) -> TrainConfig:
    return override(TrainConfig(), **values)


PRESETS = {
    # The seed sample: the dataclass defaults.
    "sample": TrainConfig(),
    # Seconds per epoch on a laptop CPU; for checking an installation, not for accuracy.
    "tiny": TrainConfig(patch_size=8, patch_stride=8, num_layers=2, embedding_dim=32,
                        num_heads=4, mlp_hidden_dim=64, head_units=(64,), batch_size=128,
                        epochs=3, patience=2),
    # The best accuracy for a short budget found with benchmarks/time_to_accuracy.py (see the
    # module docstring, "fast").
    "fast": _preset(
        patch_size=8, patch_stride=8, num_layers=6, embedding_dim=192, num_heads=6,
        mlp_hidden_dim=384, head_units=(), dropout=0.0, pooling="mean",
        optimizer="adamw", learning_rate=2e-3, weight_decay=0.05, lr_schedule="cosine",
        warmup_epochs=0.3, min_learning_rate=1e-5, epochs=5, batch_size=128,
        label_smoothing=0.1, time_budget=3.0, crop_padding=0, randaugment_n=0,
        regularisation="auto"),
    # ViT-Lite-7/4 of Hassani et al. 2021 (see the module docstring, "vit_lite").
    "vit_lite": _preset(
        patch_size=4, patch_stride=4, num_layers=7, embedding_dim=256, num_heads=4,
        mlp_hidden_dim=512, head_units=(), dropout=0.0, attention_dropout=0.1, drop_path=0.1,
        optimizer="adamw", learning_rate=5.5e-4, weight_decay=0.06, lr_schedule="cosine",
        warmup_epochs=10, min_learning_rate=1e-5, epochs=200, batch_size=128,
        label_smoothing=0.1, randaugment_ops=RANDAUGMENT_OPS, randaugment_n=2,
        randaugment_magnitude=9.0, erasing_prob=0.25, mixup_alpha=0.8, cutmix_alpha=1.0),
    # The ViT of Lee et al. 2021 (see the module docstring, "vit_small_data").
    "vit_small_data": _preset(
        patch_size=4, patch_stride=4, num_layers=9, embedding_dim=192, num_heads=12,
        mlp_hidden_dim=384, head_units=(), dropout=0.0, drop_path=0.1,
        optimizer="adamw", learning_rate=1e-3, weight_decay=0.05, lr_schedule="cosine",
        warmup_epochs=10, min_learning_rate=1e-5, epochs=100, batch_size=128,
        label_smoothing=0.1, randaugment_ops=RANDAUGMENT_OPS, randaugment_n=2,
        randaugment_magnitude=9.0, erasing_prob=0.25, erasing_max_area=0.4,
        mixup_alpha=1.0, cutmix_alpha=1.0),
}
