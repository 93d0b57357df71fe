"""The typed settings of a run and their validation.

A run has two parts, kept apart so that resuming compares only what decides the result:
  TrainConfig   the experiment: data split, model, optimisation, augmentation (one nested
                `Augmentation`), seed. Changing any of it makes a different run, except the
                few fields marked resumable (epochs, learning rate, patience, early stopping,
                validation images).
  RunOptions    how this machine runs it: paths, GPUs, distribution strategy, XLA,
                precision, steps per execution, TensorBoard. Any of it may change when a
                run is resumed.
Every field of both is a command-line flag, --field-name (flags.py generates them), and
config.json stores both (config_file.py). The presets are in presets.py, the rule of
regularisation "auto" in regularisation.py.

This module imports no TensorFlow: flags are parsed and checked, and the GPU is chosen,
before TensorFlow is imported (DML_VISIBLE_DEVICES is only read at import time).

"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Tuple

from vitcifar.config.datasets import (DATASET_NAMES, DATASETS, FOLDER_TEST_FRACTION, IMAGE_SIZE,
                                      IMAGES, IMAGES_DISPLAY_NAME)
from vitcifar.errors import UsageError

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
BACKENDS = ("tensorflow", "torch")    # RunOptions.backend: the Keras 3 backends the app runs on


def patch_grid_side(image_size: int, patch_size: int, patch_stride: int) -> int:
    """Patches per side of a square image: (S - P) // stride + 1; the model reads the square
    of this many patches. The one place this formula lives (model, FLOP count, figures)."""
    return (image_size - patch_size) // patch_stride + 1


def flag_name(name: str) -> str:
    """The command-line flag of a config field: learning_rate -> --learning-rate."""
    return "--" + name.replace("_", "-")


def _flag(help_text: str, **metadata) -> dict:
    """Field metadata: the flag's help, and optionally cli=False (not a flag), choices,
    resumable=True (an experiment field that may change when a run is resumed),
    optional=True (a config.json that lacks it gets its default, which is what such runs
    did) and folders=True (a flag of train_images.py only: CIFAR runs keep the default)."""
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

    dataset: str = field(default="cifar10", metadata=_flag(
        "cifar10, cifar100, or images (class folders, train_images.py)", cli=False))
    image_size: int = field(default=IMAGE_SIZE, metadata=_flag(   # S, pixels per side
        "side the images are resized to, in pixels; the patch grid follows", optional=True,
        folders=True))
    test_fraction: float = field(default=FOLDER_TEST_FRACTION, metadata=_flag(
        "share of each class held out for testing when DIR has no test/", optional=True,
        folders=True))
    folder_classes: int = field(default=0, metadata=_flag(      # train_images.py sets it
        "an images run's class folders (0: CIFAR's classes)", cli=False, optional=True))
    validation_fraction: float = field(default=0.15, metadata=_flag(
        "fraction of the training set held out for validation (the sample's 0.15 leaves "
        "42,500 CIFAR training images)"))
    validation_images: int = field(default=0, metadata=_flag(
        "validate each epoch on the first N images of the held-out split, a random subset "
        "(0: all of it); the rest stay held out, and the test set is always evaluated whole; "
        "a new value given when resuming applies from the next epoch", resumable=True,
        optional=True))
    # --- model: SxS image (S = image_size) -> ((S-patch)/stride+1)^2 patches ---------------
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
        "minutes for the whole command (0: off, --epochs decides): the run times its first "
        "steps on this machine and trains as many steps as end within them (whole epochs, "
        "the last cut short; re-planned from the steps' own times as it trains), the warmup "
        "the same share of the schedule as --warmup-epochs of --epochs; --epochs is then not "
        "used"))
    seed: int = field(default=42, metadata=_flag(
        "seed for the split, initial weights, shuffling and augmentation"))
    regularisation: str = field(default="off", metadata=_flag(
        "auto: crop padding, RandAugment, mixup, cutmix, random erasing, drop path and label "
        "smoothing follow the epochs the run trains (--epochs, or what --time-budget's "
        "calibration plans) and the training-set size, by the rule in config.py "
        "(regularisation_rule), chosen once when the run starts and kept when it is "
        "resumed; any of those flags given "
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
        return self.folder_classes if self.dataset == IMAGES else DATASETS[self.dataset].num_classes

    @property
    def display_name(self) -> str:
        spec = DATASETS.get(self.dataset)
        return spec.display_name if spec else IMAGES_DISPLAY_NAME

    @property
    def soft_labels(self) -> bool:
        """Training, validation and test labels are one-hot (the categorical loss and
        metrics) rather than class indices: mixup and cutmix make soft labels, and label
        smoothing needs one-hot targets (Keras 3's sparse loss has no label smoothing)."""
        return self.augmentation.mixes or self.label_smoothing > 0

    def validate(self) -> "TrainConfig":
        """Raises UsageError naming the flag to change; returns self when all is well."""
        self._check_values()
        self._check_schedule()
        self.augmentation.validate()
        self._check_model_and_rule()
        return self

    def _check_values(self) -> None:
        """Each setting on its own: the dataset, counts, rates and fractions in range."""
        if self.dataset not in DATASET_NAMES:
            raise UsageError(f"unknown dataset {self.dataset!r}; use one of "
                             f"{', '.join(DATASET_NAMES)}")
        if self.dataset != IMAGES and (self.image_size, self.test_fraction, self.folder_classes
                                       ) != (IMAGE_SIZE, FOLDER_TEST_FRACTION, 0):
            raise UsageError(f"{self.display_name} images are {IMAGE_SIZE}x{IMAGE_SIZE} with a "
                             "test set: --image-size and --test-fraction are train_images.py's")
        positive = ["image_size", "patch_size", "patch_stride", "num_layers", "embedding_dim",
                    "num_heads", "mlp_hidden_dim", "batch_size", "epochs", "patience"]
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

    def _check_schedule(self) -> None:
        """Settings that hold only together: optimizer, schedule, warmup and budget."""
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
        for name in ("validation_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 1:
                raise UsageError(f"{flag_name(name)} must be between 0 and 1, "
                                 f"got {getattr(self, name)}")
        for name in ("early_stopping", "validation_images"):
            if getattr(self, name) < 0:
                raise UsageError(f"{flag_name(name)} must be 0 or more, got "
                                 f"{getattr(self, name)}")

    def _check_model_and_rule(self) -> None:
        """The patch grid tiles the image, heads divide the width; the rule's own fields."""
        size = self.image_size                           # S: the image is S x S pixels
        if self.patch_size > size:
            raise UsageError(f"--patch-size {self.patch_size} is larger than the {size}x{size} "
                             f"image; use at most {size}, or a larger --image-size")
        if (size - self.patch_size) % self.patch_stride:
            fits = [s for s in range(1, self.patch_size + 1) if (size - self.patch_size) % s == 0]
            raise UsageError(
                f"--patch-size {self.patch_size} with --patch-stride {self.patch_stride} does not "
                f"tile the {size}x{size} image (the last "
                f"{(size - self.patch_size) % self.patch_stride} pixels would be dropped); "
                f"use a stride from {fits}, or an --image-size that is {self.patch_size} plus a "
                f"multiple of {self.patch_stride}")
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
    backend: Optional[str] = field(default=None, metadata=_flag(
        "the Keras backend, set before Keras starts: tensorflow, or torch (PyTorch: CUDA, "
        "Intel XPU, DirectML through torch-directml, Apple MPS or the CPU; needs Keras 3 and "
        "requirements-torch.txt); default: KERAS_BACKEND if set, else tensorflow"))
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
        if self.backend is not None and self.backend not in BACKENDS:
            raise UsageError(f"--backend {self.backend}: this app runs on Keras's "
                             f"{' or '.join(BACKENDS)} backend; use --backend tensorflow or "
                             "--backend torch")
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
