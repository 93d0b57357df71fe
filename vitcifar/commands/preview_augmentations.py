"""See what an augmentation setting does before training with it.

    python preview_augmentations.py out.png [--data-dir DIR] [--dataset cifar100]
                                    [--rows 8] [--versions 7] [any training flag]

writes a PNG grid of real training images, each followed by augmented versions made exactly
as training makes them with the same flags; with mixup or cutmix, each version's main class
and its weight are written under it.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from vitcifar.backend import devices
from vitcifar.config.datasets import DATASETS
from vitcifar.config.flags import Parser, parse_train_flags
from vitcifar.config.views import override
from vitcifar.errors import UsageError, entry_point


def save_preview(path: str, images, label_names: Sequence[str], labels, augment, seed: int,
                 versions: int) -> None:
    """A PNG grid: one row per image (uint8 (R, H, W, 3), labels (R,) class indices), the
    original first, then `versions` augmented copies made by the batch augment callback
    (images, labels, seed) -> (images, labels), in one batch so each copy draws its own.
    Mixed (soft) labels are written under each copy as its main class and its weight."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    rows = len(images)
    copies = tf.repeat(tf.constant(images), versions, axis=0)
    augmented, new_labels = augment(copies, tf.repeat(tf.constant(labels), versions, axis=0),
                                    tf.constant([seed, 0], tf.int64))
    augmented = augmented.numpy().reshape((rows, versions) + images.shape[1:])
    soft = new_labels.numpy().reshape(rows, versions, -1) if new_labels.shape.rank == 2 \
        else None                                        # mixup/cutmix: (R, versions, classes)
    figure, axes = plt.subplots(rows, versions + 1, figsize=(1.1 * (versions + 1), 1.2 * rows),
                                squeeze=False)
    for row in range(rows):
        for column, picture in enumerate([images[row], *augmented[row]]):
            axis = axes[row, column]
            axis.imshow(picture, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[row, 0].set_ylabel(label_names[labels[row]], fontsize=8)
        if soft is not None:                             # each copy's main class and weight
            for column, label in enumerate(soft[row], start=1):
                top = int(label.argmax())
                axes[row, column].set_xlabel(f"{label_names[top]} {label[top]:.2f}",
                                             fontsize=7)
    axes[0, 0].set_title("original", fontsize=8)
    for column in range(1, versions + 1):
        axes[0, column].set_title(f"augmented {column}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


@entry_point
def main(argv: Optional[List[str]] = None) -> int:
    parser = Parser(
        prog="preview_augmentations.py",
        description="Save a grid of real training images, each followed by augmented "
                    "versions, augmented as training would with the same flags.",
        epilog="Any training flag (train_cifar10.py --help) also applies, e.g. --data-dir DIR, "
               "--randaugment-magnitude 15, --mixup-alpha 0.4, --seed 1.")
    parser.add_argument("preview", metavar="PNG", help="image file to write")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="cifar10")
    parser.add_argument("--rows", type=int, default=8, help="training images shown")
    parser.add_argument("--versions", type=int, default=7, help="augmented copies of each")
    args, training_flags = parser.parse_known_args(argv)
    if args.rows <= 0 or args.versions <= 0:
        raise UsageError("--rows and --versions must be positive")
    config, options, train_args = parse_train_flags(args.dataset, training_flags)
    devices.prepare_environment(options.gpu, verbose=getattr(train_args, "verbose", False))
    import numpy as np

    from vitcifar.data import cifar, input_pipeline
    data = cifar.load(config.dataset, options.data_dir)
    if not config.augmentation.mixes:     # one-hot for label smoothing: nothing to show
        config = override(config, label_smoothing=0.0)
    chosen = np.random.default_rng(config.seed).choice(
        len(data.x_train), min(args.rows, len(data.x_train)), replace=False)
    augment = input_pipeline.make_augment(config.augmentation,
                                          input_pipeline.label_classes(config))
    save_preview(args.preview, data.x_train[chosen], data.label_names, data.y_train[chosen],
                 augment, config.seed, args.versions)
    print(f"Wrote {args.preview}: {len(chosen)} training images, each with {args.versions} "
          f"augmented versions")
    return 0
